//! `cohort demo`: the research path end to end on embedded defaults, over a
//! synthetic cohort: generate, ingest, deploy, propose a diabetes study,
//! approve it 2 of 3, consent, three private queries, a k = 10 extract,
//! compensation, a withdrawal the next query honours, and both chains
//! (audit log and ledger) verified.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Instant;

use cohort_engine::records::vault::Access;
use cohort_engine::research::query::{QueryOutcome, QueryRequest};
use cohort_engine::research::{self, Session, StudyFile, Viewer};
use cohort_engine::{
    DataDir, audit, chain, keys::accounts, records::generate, records::ingest, records::projection,
};
use cohort_ledger_bridge::Role;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use serde::Serialize;

use super::{Cli, counts_text, ingest_text, unlock, verify_text};
use crate::cli_common::{at_once, joined};
use crate::research_cli::{outcome_text, release_text};

/// The demo's study file, written into the data directory.
fn study_file(year: i32) -> String {
    format!(
        r#"# The demo's study: glycaemic control and blood pressure in type 2 diabetes.
privacy_unit = "patient_id"

[study]
title = "Glycaemic control in type 2 diabetes"
purpose = "How HbA1c and blood pressure vary with age and sex, for a diabetes care programme"
purposes = ["research"]
duration_days = 365
escrow = "1 ether"
# A query's fee: 0.14 ether per ε it charges, shared equally by every
# consenting patient (everyone in the data bears its privacy loss).
fee_per_epsilon = "0.14 ether"
microdata = true

[budget]
epsilon = "3"

[release]
table = "patients"
quasi_identifiers = ["birth_date", "gender", "zip"]
sensitive = "race"
suppression = 0.02
min_k = 10                 # no extract with a smaller k (on chain)
max_extracts = 2           # at most two extracts ever (on chain)

[query]
epsilon = "0.5"
max_epsilon = "1"

[contribution]
max_rows = 3

# Every outcome is released at a deadline computed before the query runs,
# from the plan and the public number of consenting patients: 1.5 s, plus
# 50 µs per consenting patient and study table (2.2 s for 7,000 patients;
# the first query, which builds the view, has taken 0.7 s to more than
# 1.5 s of it on two cores, depending on the machine's disk). The
# encrypted work's estimate comes from benchmarks on a faster machine than
# some the demo runs on: twice the default factor, so a loaded two-core
# machine still answers the tfhe count before its deadline.
[execution]
deadline_ms = 1500
per_patient_us = 50
encrypted_factor = 6

[tables.patients]
rows_per_unit = 1
[tables.patients.columns]
patient_id = {{ identifier = true }}
birth_date = {{ lower = {low}, upper = {year} }}
gender = {{ domain = ["female", "male"] }}
race = {{}}
zip = {{}}
# Shared by patients only encrypted: a flag summed under ElGamal, a value
# compared under tfhe. The bounds are the plaintext's.
hiv = {{ encrypted = "elgamal", lower = 0, upper = 1 }}
hba1c_mmol = {{ encrypted = "tfhe", lower = 20, upper = 200 }}

[tables.observations.columns]
patient_id = {{ identifier = true }}
loinc = {{}}
value = {{ lower = 0, upper = 300 }}
"#,
        low = year - 90,
    )
}

pub(crate) fn demo(cli: &Cli, dir: &DataDir, patients: u64, seed: u64) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let json = cli.json;
    let say = |s: &str| {
        if !json {
            out!("{s}");
        }
    };
    let mut record: Vec<serde_json::Value> = Vec::new();
    let mut keep = |step: &'static str, v: serde_json::Value| {
        record.push(serde_json::json!({ "step": step, "value": v }))
    };
    let progress = !json && std::io::stderr().is_terminal();
    say(&format!(
        "cohort demo: data directory {}",
        dir.root().display()
    ));

    // 1. Generate and ingest.
    let bundles = dir.root().join("demo").join("bundles");
    say(&format!(
        "\n1. Generating {patients} synthetic patients (seed {seed}) as FHIR R4 bundles"
    ));
    let generated = generate::generate(&generate::Options {
        progress,
        ..generate::Options::new(patients, seed, &bundles)
    })?;
    say(&format!(
        "   {} resources in {} bundles ({:.1} s)",
        generated.resources, generated.bundles, generated.seconds
    ));
    keep("generate", serde_json::to_value(&generated)?);

    say(
        "\n2. Ingesting: each resource encrypted with its patient's key, stored under its IPFS CID",
    );
    let vault = unlock(cli, dir, Some("cohort-demo"))?;
    // The deployment's tfhe key set, which the study's approval (step 4)
    // needs, is made beside ingest, which leaves a core mostly idle; the
    // approval waits for it only if it is not done by then.
    let tfhe_keys = {
        let (keys, root) = (vault.shared_keys(), dir.root().to_path_buf());
        std::thread::spawn(move || research::encryption::prepare_tfhe_keys(keys.as_ref(), &root))
    };
    let report = ingest::ingest_paths(
        &vault,
        &Access::new(&cli.actor, "demo ingest"),
        &[bundles],
        progress,
    )?;
    say(&format!(
        "   {}",
        ingest_text(&report).replace('\n', "\n   ")
    ));
    let counts = projection::counts(vault.conn())?;
    say(&format!(
        "   {}",
        counts_text(&counts).replace('\n', "\n   ")
    ));
    keep("ingest", serde_json::to_value(&report)?);

    // 2. The ledger and the actors.
    say("\n3. The ledger: contracts on the embedded EVM; a researcher and three stewards");
    let rt = super::runtime()?;
    if chain::load(dir)?.is_none() {
        rt.block_on(chain::deploy(
            dir,
            vault.conn(),
            vault.keys(),
            &chain::DeployRequest {
                rpc_url: None,
                approvals: 2,
                confirmations: None,
                admin: cli.actor.clone(),
                redeploy: false,
            },
        ))?;
    }
    let (config, client) = rt.block_on(chain::client(dir))?;
    let admin = accounts::get_or_create(vault.conn(), vault.keys(), &config.admin)?;
    let researcher = accounts::get_or_create(vault.conn(), vault.keys(), "researcher")?;
    let stewards: Vec<_> = (1..=3)
        .map(|i| accounts::get_or_create(vault.conn(), vault.keys(), &format!("steward-{i}")))
        .collect::<Result<_, _>>()?;
    rt.block_on(client.grant_role(&admin, Role::Researcher, researcher.address()))?;
    // The escrows' ether (the diabetes study's and the OMOP study's): minted
    // on the embedded chain, standing in for a payment.
    let balance = rt.block_on(client.ledger().balance(researcher.address()))?;
    rt.block_on(client.ledger().set_balance(
        researcher.address(),
        balance + cohort_engine::research::study::parse_wei("escrow", "2 ether")?,
    ))?;
    for s in &stewards {
        rt.block_on(client.grant_role(&admin, Role::Steward, s.address()))?;
    }
    say(&format!(
        "   chain {}, ResearchStudy at {:#x}; {} stewards of 3 must approve a study",
        config.chain_id, config.contracts.study, config.required_approvals
    ));
    let session = rt.block_on(Session::open(dir, &vault))?;
    let engine = accounts::get(vault.conn(), vault.keys(), &config.engine)?;
    if let Some(a) = rt.block_on(cohort_engine::records::anchor::anchor_pending(
        vault.conn(),
        &client,
        &engine,
    ))? {
        say(&format!(
            "   {} record versions anchored on chain in one transaction (batch {}, Merkle root {})",
            a.count,
            a.batch,
            &a.root[..18]
        ));
    }

    // 3. Propose and approve.
    let year = chrono::Utc::now()
        .date_naive()
        .format("%Y")
        .to_string()
        .parse::<i32>()?;
    let text = study_file(year);
    let study_path = dir.root().join("demo").join("diabetes-study.toml");
    std::fs::write(&study_path, &text)?;
    let file = StudyFile::parse(&text)?;
    say(&format!(
        "\n4. The researcher proposes \"{}\" ({}), ε budget 3, 0.5 per query, 1 ether escrow",
        file.terms.title,
        study_path.display()
    ));
    let proposed = rt.block_on(session.propose(vault.conn(), &researcher, &file))?;
    let id = proposed.study_id;
    say(&format!(
        "   study {id} proposed; scope hash {}",
        proposed.scope_hash
    ));
    for s in &stewards[..2] {
        let a = rt.block_on(session.approve(vault.conn(), s, id))?;
        say(&format!(
            "   {} approves: {} of {}{}",
            s.name(),
            a.approvals,
            a.required,
            if a.approved { ", approved" } else { "" }
        ));
    }

    tfhe_keys
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;

    // 4. Consent.
    let mut ids = projection::patient_ids(vault.conn())?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    ids.shuffle(&mut rng);
    ids.truncate(ids.len() * 7 / 10);
    ids.sort();
    say(&format!(
        "\n5. {} patients (70%) consent, each from their own account",
        ids.len()
    ));
    let t = Instant::now();
    let linked = {
        let tx = vault.conn().unchecked_transaction()?;
        let mut linked = Vec::with_capacity(ids.len());
        for (i, pid) in ids.iter().enumerate() {
            linked.push(research::link_patient(
                &tx,
                &vault,
                &format!("patient-{i:05}"),
                pid,
            )?);
        }
        tx.commit()?;
        linked
    };
    let results = rt.block_on(session.consent_all(vault.conn(), &linked, id, None, 365))?;
    let failed = results.iter().filter(|r| r.is_err()).count();
    if failed > 0 {
        anyhow::bail!("{failed} consents failed");
    }
    say(&format!(
        "   {} consents on chain in {:.1} s",
        results.len(),
        t.elapsed().as_secs_f64()
    ));

    say("\n5b. Clinical records: the chain decides every read");
    let clinical = crate::demo_clinical::clinical(&rt, &vault, &client, &admin, &linked[0], &say)?;
    keep("clinical", clinical);

    say("\n5b'. Key recovery: guardians restore a lost key, the grants follow the patient");
    let recovered = crate::demo_recovery::recovery(&rt, &vault, &client, &say)?;
    keep("recovery", recovered);

    say(
        "\n5c. Appointments: booked and paid into escrow, confirmed, reminded, completed; a no-show",
    );
    let appointments =
        crate::demo_appointments::appointments(&rt, dir, &vault, &client, &admin, &linked, &say)?;
    keep("appointments", appointments);

    // 5. Three private queries, asked at once as a server's clients would:
    // each waits for its own deadline, so their waits overlap.
    say(
        "\n6. Three differentially private queries, asked at once: each reserved, run, committed, then answered at its own deadline",
    );
    let ask = |sql: String, query_id: &str| -> anyhow::Result<QueryOutcome> {
        Ok(rt.block_on(session.query(
            researcher.name(),
            id,
            &QueryRequest {
                sql,
                query_id: Some(format!("demo-{query_id}")),
                ..Default::default()
            },
        ))?)
    };
    let queries = [
        ("age-bands", format!("SELECT FLOOR(({year} - birth_date) / 10) * 10 AS age_band, COUNT(*) AS patients FROM patients GROUP BY age_band ORDER BY age_band")),
        ("hba1c-by-sex", "SELECT p.gender, AVG(LEAST(GREATEST(o.value, 3), 15)) AS mean_hba1c FROM patients p JOIN observations o ON o.patient_id = p.patient_id WHERE o.loinc = '4548-4' GROUP BY p.gender ORDER BY p.gender".to_string()),
        ("median-systolic", "SELECT MEDIAN(LEAST(GREATEST(value, 80), 200)) AS median_systolic FROM observations WHERE loinc = '8480-6'".to_string()),
    ];
    let outcomes = at_once(&queries, |(name, sql)| ask(sql.clone(), name));
    let mut first_members = 0;
    for (i, ((_, sql), outcome)) in queries.iter().zip(outcomes).enumerate() {
        let outcome = outcome?;
        if i == 0 {
            first_members = outcome.answer.as_ref().map_or(0, |a| a.members);
        }
        say(&format!("\n   {sql}"));
        say(&format!(
            "   {}",
            outcome_text(&outcome).replace('\n', "\n   ")
        ));
        keep("query", serde_json::to_value(&outcome)?);
    }
    say("   (each shows the budget left when it was answered; the three were asked at once)");

    // The OMOP study (6c) runs beside 6b on its own connection: a second
    // study whose answers wait for their deadlines while 6b computes.
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let omop = scope.spawn(|| -> anyhow::Result<(serde_json::Value, Vec<String>)> {
            let lines = std::sync::Mutex::new(Vec::new());
            let buffered = |line: &str| {
                lines
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(line.to_string())
            };
            let value = crate::demo_omop::omop_study(
                &rt,
                &session.vault()?,
                &session,
                &researcher,
                &stewards,
                &linked,
                &buffered,
            )?;
            Ok((
                value,
                lines
                    .into_inner()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            ))
        });
        // 5b. Encrypted aggregates.
        say(
            "\n6b. Values patients share only encrypted: an HIV flag (ElGamal) and an exact HbA1c (tfhe)",
        );
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x0e1c);
        let flagged: Vec<(cohort_ledger_bridge::Account, i64)> = linked
            .iter()
            .take(2_000)
            .map(|a| (a.clone(), i64::from(rng.random_bool(0.05))))
            .collect();
        let flags = rt.block_on(session.encrypt_fields(vault.conn(), id, "hiv", &flagged))?;
        say(&format!(
            "   {} patients encrypted their flag with a range proof; checked and stored in {:.1} s",
            flags.values, flags.seconds
        ));
        let exact: Vec<(cohort_ledger_bridge::Account, i64)> = linked
            .iter()
            .skip(2_000.min(linked.len().saturating_sub(4)))
            .take(4)
            .map(|a| (a.clone(), rng.random_range(30..=90)))
            .collect();
        let values = rt.block_on(session.encrypt_fields(vault.conn(), id, "hba1c_mmol", &exact))?;
        say(&format!(
            "   {} patients encrypted their HbA1c under tfhe with a zero-knowledge proof in {:.1} s",
            values.values, values.seconds
        ));
        let encrypted_queries = [
            (
                "hiv-by-sex",
                "SELECT gender, SUM(hiv) AS hiv_positive FROM patients GROUP BY gender ORDER BY gender",
                "elgamal",
            ),
            (
                "hba1c-over-48",
                "SELECT COUNT(*) AS above_48 FROM patients WHERE hba1c_mmol >= 48",
                "tfhe",
            ),
        ];
        // Asked at once, as the step-6 queries: each is released at its own
        // deadline, and their waits overlap.
        let epsilon: cohort_anonymizer::accountant::Amount = "0.25".parse()?;
        let answered = at_once(
            &encrypted_queries,
            |(name, sql, _)| -> anyhow::Result<(QueryOutcome, f64)> {
                let t = Instant::now();
                let outcome = rt.block_on(session.query(
                    researcher.name(),
                    id,
                    &QueryRequest {
                        sql: sql.to_string(),
                        query_id: Some(format!("demo-{name}")),
                        epsilon: Some(epsilon),
                        ..Default::default()
                    },
                ))?;
                Ok((outcome, t.elapsed().as_secs_f64()))
            },
        );
        for ((_, sql, layer), answer) in encrypted_queries.iter().zip(answered) {
            let (outcome, seconds) = answer?;
            say(&format!("\n   {sql}"));
            say(&format!(
                "   answered by the {layer} layer in {seconds:.1} s (noise added under encryption, decrypted only after the debit was committed)"
            ));
            say(&format!(
                "   {}",
                outcome_text(&outcome).replace('\n', "\n   ")
            ));
            keep(
                "encrypted",
                serde_json::json!({ "layer": layer, "seconds": seconds, "outcome": outcome }),
            );
        }

        say(
            "\n6c. The same patients as OMOP CDM 5.4: a second study, OHDSI's SQL, the vocabulary joined (asked beside 6b)",
        );
        let (omop, lines) = joined(omop)?;
        for line in &lines {
            say(line);
        }
        keep("omop", omop);
        Ok(())
    })?;

    // 6. The extract.
    say("\n7. A k = 10 anonymous extract (Mondrian, l = 2 on race), recorded on the ledger");
    let released = rt.block_on(session.release(researcher.name(), id, 10, Some(2), None))?;
    say(&format!(
        "   {}",
        release_text(&released).replace('\n', "\n   ")
    ));
    keep("release", serde_json::to_value(&released)?);

    // 7. Compensation.
    let patient = &linked[0];
    say(&format!(
        "\n8. Compensation: {} sees and claims their share (every consenting patient earns the same \
         share of each query's fee, priced by the ε it charged)",
        patient.name()
    ));
    let earnings = rt.block_on(session.earnings(patient.address(), Some(id)))?;
    say(&format!(
        "   earned {} over {} queries",
        earnings.earned,
        earnings.shares.len()
    ));
    let claimed = rt.block_on(session.claim(patient, Some(id)))?;
    say(&format!(
        "   claimed {} to {}",
        claimed.paid_text, claimed.address
    ));
    keep("claim", serde_json::to_value(&claimed)?);

    // 8. Withdrawal.
    let leaving = &linked[1];
    say(&format!(
        "\n9. {} withdraws; the next query leaves them out (and no longer pays them)",
        leaving.name()
    ));
    rt.block_on(session.withdraw(vault.conn(), leaving, id))?;
    let after = ask(
        "SELECT COUNT(*) AS patients FROM patients".into(),
        "after-withdrawal",
    )?;
    let after_members = after.answer.as_ref().map_or(0, |a| a.members);
    say(&format!(
        "   {}",
        outcome_text(&after).replace('\n', "\n   ")
    ));
    say(&format!(
        "   consenting set: {first_members} before the withdrawal, {after_members} after"
    ));
    keep("query", serde_json::to_value(&after)?);

    // 9. Verify.
    say("\n10. Verifying the audit log's hash chain, the vault's index and the ledger's blocks");
    let verification = audit::verify(vault.conn())?;
    say(&format!("   {}", verify_text(&verification)));
    let audit_key = vault.audit_key()?;
    let engine_account = accounts::get(vault.conn(), vault.keys(), &config.engine)?;
    let both = rt.block_on(cohort_engine::records::index_anchor::anchor_both(
        &vault,
        &client,
        &engine_account,
    ))?;
    if let Some(a) = both.audit {
        rt.block_on(chain::sync(dir, &mut dir.connect()?))?;
        let keyed = audit::anchor::verify_keyed(
            vault.conn(),
            audit_key.expose(),
            &audit::anchor::anchors(vault.conn())?,
        )?;
        say(&format!(
            "   audit log sealed (HMAC under the audit key) and its keyed head anchored on chain after {} entries; keyed check: {} seals and {} anchor(s) match",
            a.entries, keyed.sealed_checked, keyed.anchors_checked
        ));
    }
    if let Some(a) = both.index {
        let index = cohort_engine::records::index_anchor::verify(
            vault.conn(),
            audit_key.expose(),
            &audit::anchor::anchors_of(
                vault.conn(),
                cohort_engine::records::index_anchor::VAULT_INDEX,
            )?,
        )?;
        say(&format!(
            "   vault index sealed and its keyed head anchored on chain after {} record versions; keyed check: {} seals and {} anchor(s) match",
            a.entries, index.sealed_checked, index.anchors_checked
        ));
    }
    let verified = chain::verify(dir)?;
    say(&format!(
        "   ledger: {} blocks and {} transactions verified",
        verified.blocks, verified.transactions
    ));
    // 11. The patient's rights and the operator's report.
    say(
        "\n11. A patient's copy of their records and accounting of disclosures; the operator's regulatory report",
    );
    let owner = cohort_engine::access::Actor::from_account(linked[0].clone());
    let clinic = cohort_engine::records::clinical::Clinic::new(&vault, &client);
    let bundle = rt.block_on(clinic.export_bundle(
        &owner,
        owner.name(),
        cohort_engine::access::scope::Purpose::Treatment,
    ))?;
    let exported = dir
        .root()
        .join("exports")
        .join(format!("{}.json", owner.name()));
    std::fs::create_dir_all(exported.parent().expect("a folder"))?;
    cohort_engine::storage::fsutil::write_atomic(&exported, &serde_json::to_vec_pretty(&bundle)?)?;
    say(&format!(
        "   {} exported {} record(s) as a FHIR Bundle (GDPR art. 15 and 20) to {}",
        owner.name(),
        bundle["entry"].as_array().map_or(0, Vec::len),
        exported.display()
    ));
    rt.block_on(chain::sync(dir, &mut dir.connect()?))?;
    let compliance = cohort_engine::compliance::Compliance::new(&vault, &client);
    let accounting = rt.block_on(compliance.disclosures(&owner, owner.name(), None))?;
    let basis = |b: &str| {
        accounting
            .disclosures
            .iter()
            .filter(|d| d.basis == b)
            .count()
    };
    say(&format!(
        "   their accounting of disclosures (HIPAA §164.528): {} in all: {} read(s) under a grant, {} under an emergency override, {} research answer(s) and release(s) under their consent",
        accounting.disclosures.len(),
        basis("grant"),
        basis("emergency"),
        basis("consent")
    ));
    let operator = cohort_engine::access::Actor::from_account(admin.clone());
    let today = chrono::Utc::now();
    let regulatory = rt.block_on(compliance.report(
        dir,
        &operator,
        today - chrono::Duration::days(1),
        today + chrono::Duration::days(1),
        // The blocks were checked by the ingest's anchors; `cohort report`
        // re-hashes them all.
        cohort_engine::compliance::report::Checks {
            keyed: true,
            blocks: false,
        },
    ))?;
    let page = dir.root().join("exports").join("regulatory-report.html");
    cohort_engine::storage::fsutil::write_atomic(
        &page,
        cohort_engine::compliance::report::html(&regulatory).as_bytes(),
    )?;
    say(&format!(
        "   regulatory report: {} record read(s), {} under an emergency override, {} refused; audit seals and anchors checked; {}; printable at {}",
        regulatory.accesses.reads_by_purpose.values().sum::<i64>(),
        regulatory.accesses.emergency_reads,
        regulatory.accesses.refused,
        if regulatory.integrity.clean {
            "verification found nothing wrong"
        } else {
            "VERIFICATION FOUND A PROBLEM"
        },
        page.display()
    ));
    let shown = rt.block_on(session.show(vault.conn(), id, Viewer::Operator))?;
    if let Some(b) = &shown.books {
        say(&format!(
            "   study {id}: remaining {}, {} queries answered, {} owed to patients",
            b.remaining, b.queries, b.owed
        ));
    }
    let seconds = started.elapsed().as_secs_f64();
    say(&format!("\ndone in {seconds:.1} s"));
    if json {
        #[derive(Serialize)]
        struct Summary<'a> {
            steps: &'a [serde_json::Value],
            study: &'a research::StudySummary,
            audit: &'a audit::Verification,
            ledger: &'a cohort_ledger_bridge::Verified,
            members_before_withdrawal: usize,
            members_after_withdrawal: usize,
            seconds: f64,
        }
        out!(
            "{}",
            serde_json::to_string(&Summary {
                steps: &record,
                study: &shown,
                audit: &verification,
                ledger: &verified,
                members_before_withdrawal: first_members,
                members_after_withdrawal: after_members,
                seconds,
            })?
        );
    }
    let ok = verification.is_intact()
        && report.rejected.is_empty()
        && regulatory.integrity.clean
        && after_members + 1 == first_members;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
