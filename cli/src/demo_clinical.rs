//! The demo's clinical step: a provider refused, granted, reading; the
//! grant revoked; an emergency opened with the patient's notification, and
//! its review. Every decision is the chain's.

use cohort_engine::access::{Actor, emergency, grants, notifications, scope};
use cohort_engine::keys::accounts;
use cohort_engine::records::clinical::Clinic;
use cohort_engine::records::vault::Vault;
use cohort_ledger_bridge::{Account, Client, Role};

/// Runs the step; `say` prints a line.
pub(crate) fn clinical(
    rt: &tokio::runtime::Runtime,
    vault: &Vault,
    client: &Client,
    admin: &Account,
    patient: &Account,
    say: &dyn Fn(&str),
) -> anyhow::Result<serde_json::Value> {
    let conn = vault.conn();
    let get = |name: &str| accounts::get_or_create(conn, vault.keys(), name);
    let (provider, issuer, auditor) = (get("dr-demo")?, get("issuer")?, get("auditor")?);
    for (account, role) in [
        (&provider, Role::Provider),
        (&provider, Role::Emergency),
        (&issuer, Role::Issuer),
        (&auditor, Role::Auditor),
    ] {
        rt.block_on(client.grant_role(admin, role, account.address()))?;
    }
    let (provider, issuer, auditor, patient) = (
        Actor::from_account(provider),
        Actor::from_account(issuer),
        Actor::from_account(auditor),
        Actor::from_account(patient.clone()),
    );
    let now = rt.block_on(client.ledger().timestamp())?;
    rt.block_on(grants::attest_credential(
        conn,
        client,
        &issuer,
        provider.name(),
        "MD-0001",
        now + 365 * 86_400,
    ))?;
    let record: String = conn.query_row(
        "SELECT r.record_id FROM records r JOIN research_patients p ON p.patient_id = r.patient_id
         WHERE p.account = ?1 AND r.resource_type = 'Observation' LIMIT 1",
        [patient.name()],
        |r| r.get(0),
    )?;
    let clinic = Clinic::new(vault, client);
    let treatment = scope::Purpose::Treatment;
    let refused = rt
        .block_on(clinic.read(&provider, &record, None, treatment))
        .expect_err("no grant yet");
    say(&format!(
        "   {} (credentialed) asks for {record}: refused: {refused}",
        provider.name()
    ));
    let req = grants::GrantRequest {
        provider: provider.name().into(),
        level: scope::Level::Read,
        purposes: treatment.bit(),
        kinds: scope::ALL_KINDS,
        duration_secs: 7 * 86_400,
        on_behalf_of: None,
    };
    rt.block_on(grants::grant(conn, vault.keys(), client, &patient, &req))?;
    let read = rt.block_on(clinic.read(&provider, &record, None, treatment))?;
    say(&format!(
        "   {} grants read access for treatment, 7 days: {} reads {record} v{} ({} bytes), traced on chain",
        patient.name(),
        provider.name(),
        read.version.version,
        read.content.len()
    ));
    rt.block_on(grants::revoke(
        conn,
        vault.keys(),
        client,
        &patient,
        provider.name(),
        None,
    ))?;
    let after = rt
        .block_on(clinic.read(&provider, &record, None, treatment))
        .expect_err("revoked");
    say(&format!(
        "   {} revokes it; the next read is refused: {after}",
        patient.name()
    ));
    let opened = rt.block_on(emergency::trigger(
        conn,
        vault.keys(),
        client,
        &provider,
        patient.name(),
        "unconscious on arrival at the emergency department",
    ))?;
    let read = rt.block_on(clinic.read(&provider, &record, None, treatment))?;
    let inbox = notifications::list(conn, patient.address(), true, 10)?;
    say(&format!(
        "   emergency {}: {} reads under the override (emergency: {}); {} has {} unread notification(s): {}",
        opened.id,
        provider.name(),
        read.emergency,
        patient.name(),
        inbox.len(),
        inbox.first().map_or("", |n| n.kind.as_str())
    ));
    let reviewed = rt.block_on(emergency::review(
        conn,
        client,
        &auditor,
        opened.id,
        true,
        "justified: the patient could not consent",
    ))?;
    rt.block_on(emergency::end(
        conn,
        vault.keys(),
        client,
        &patient,
        opened.id,
    ))?;
    let ended = rt
        .block_on(clinic.read(&provider, &record, None, treatment))
        .expect_err("ended");
    say(&format!(
        "   {} reviews it ({}); {} ends it: {ended}",
        auditor.name(),
        reviewed.action,
        patient.name()
    ));
    Ok(serde_json::json!({
        "record": record,
        "emergency": opened.id,
        "notifications": inbox.len(),
    }))
}
