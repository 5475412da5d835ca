//! The demo's recovery step: a patient names three guardians (their key
//! split into shares sealed to each), loses their key, and a fresh account
//! takes over through the five steps; the provider's grant follows the
//! patient, the old key is refused, and an auditor reviews the trail.

use cohort_engine::access::recovery::{self, GuardianSetup};
use cohort_engine::access::{Actor, grants, scope};
use cohort_engine::keys::accounts;
use cohort_engine::records::clinical::Clinic;
use cohort_engine::records::vault::Vault;
use cohort_ledger_bridge::Client;

/// Runs the step for a patient no account is linked to yet (so the demo
/// runs again on the same directory: each run recovers another patient),
/// with the provider `dr-demo` the clinical step credentialed; `say`
/// prints a line.
pub(crate) fn recovery(
    rt: &tokio::runtime::Runtime,
    vault: &Vault,
    client: &Client,
    say: &dyn Fn(&str),
) -> anyhow::Result<serde_json::Value> {
    let conn = vault.conn();
    let keys = vault.keys();
    let get = |name: &str| -> anyhow::Result<Actor> {
        Ok(Actor::from_account(accounts::get_or_create(
            conn, keys, name,
        )?))
    };
    let patient_id: String = conn.query_row(
        "SELECT DISTINCT r.patient_id FROM records r
         WHERE r.resource_type = 'Observation'
           AND NOT EXISTS (SELECT 1 FROM research_patients p WHERE p.patient_id = r.patient_id)
         ORDER BY r.patient_id LIMIT 1",
        [],
        |r| r.get(0),
    )?;
    let name = format!("patient-{}", &patient_id[..patient_id.len().min(8)]);
    let patient = Actor::from_account(cohort_engine::research::link_patient(
        conn,
        vault,
        &name,
        &patient_id,
    )?);
    let (provider, auditor) = (get("dr-demo")?, get("auditor")?);
    let guardians: Vec<Actor> = ["guardian-ada", "guardian-ben", "guardian-cat"]
        .iter()
        .map(|n| get(n))
        .collect::<anyhow::Result<_>>()?;
    let treatment = scope::Purpose::Treatment;
    rt.block_on(grants::grant(
        conn,
        keys,
        client,
        &patient,
        &grants::GrantRequest {
            provider: provider.name().into(),
            level: scope::Level::Read,
            purposes: treatment.bit(),
            kinds: scope::ALL_KINDS,
            duration_secs: 30 * 86_400,
            on_behalf_of: None,
        },
    ))?;
    let g = rt.block_on(recovery::set_guardians(
        conn,
        client,
        keys,
        &patient,
        &GuardianSetup {
            guardians: guardians.iter().map(|g| g.name().to_string()).collect(),
            threshold: 2,
            backup: None,
        },
    ))?;
    say(&format!(
        "   {} grants {} read access, then names 2 of 3 guardians; its key is split into {} shares, each sealed to one guardian (round {})",
        patient.name(),
        provider.name(),
        g.guardians.len(),
        g.round
    ));
    // The key is lost: a fresh account asks to take over.
    let new_key = get(&format!("{}-recovered", patient.name()))?;
    let opened = rt.block_on(recovery::open(conn, client, &new_key, patient.name()))?;
    let id = opened.id;
    let refused = rt
        .block_on(recovery::approve(
            conn,
            client,
            keys,
            &provider,
            id,
            "I am not a guardian",
        ))
        .expect_err("a non-guardian is refused");
    say(&format!(
        "   the key is lost; {} opens recovery {id}; {} (not a guardian) tries to approve: refused: {}",
        new_key.name(),
        provider.name(),
        first_line(&refused.to_string())
    ));
    for g in &guardians[..2] {
        rt.block_on(recovery::approve(
            conn,
            client,
            keys,
            g,
            id,
            "video call; compared the face with the photo ID on file",
        ))?;
    }
    rt.block_on(recovery::attest(
        conn,
        client,
        &provider,
        id,
        "in-person visit; checked the passport",
    ))?;
    say(&format!(
        "   {} and {} approve (each attesting the identity; their shares are released to {}); {} attests the identity on chain",
        guardians[0].name(),
        guardians[1].name(),
        new_key.name(),
        provider.name()
    ));
    let done = rt.block_on(recovery::complete(conn, client, keys, &new_key, id))?;
    let record: String = conn.query_row(
        "SELECT r.record_id FROM records r JOIN research_patients p ON p.patient_id = r.patient_id
         WHERE p.account = ?1 AND r.resource_type = 'Observation' LIMIT 1",
        [new_key.name()],
        |r| r.get(0),
    )?;
    let clinic = Clinic::new(vault, client);
    rt.block_on(clinic.read(&provider, &record, None, treatment))?;
    let old = rt
        .block_on(clinic.read(&patient, &record, None, treatment))
        .expect_err("the old key reads nothing");
    say(&format!(
        "   {} completes: the key rebuilt from 2 shares, control moved on chain; {}'s grant followed (it still reads {record}); the old key is refused: {}",
        new_key.name(),
        provider.name(),
        first_line(&old.to_string())
    ));
    let trail = rt.block_on(recovery::trail(conn, client, &auditor, id))?;
    let reviewed = rt.block_on(recovery::review(
        conn,
        client,
        &auditor,
        id,
        true,
        "two guardians and a provider verified the person; no sign of coercion",
    ))?;
    say(&format!(
        "   {} reads the trail ({} entries, chain and audit log) and finds it {}",
        auditor.name(),
        trail.entries.len(),
        reviewed.review
    ));
    Ok(serde_json::json!({
        "recovery": id,
        "patient_id": done.patient_id,
        "new_account": new_key.name(),
        "trail_entries": trail.entries.len(),
        "review": reviewed.review,
    }))
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}
