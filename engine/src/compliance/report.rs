//! The operator's regulatory report: over a period, the accesses to
//! records, emergency uses and their reviews, studies and the privacy
//! budget they spent, erasures and retention purges, and whatever the
//! verifications find (a broken audit chain, a seal or anchor that differs,
//! a missing or altered block, a ledger that does not replay): the breaches
//! the operator must then assess and, where the rules say so, notify
//! (HIPAA §164.404-410, GDPR art. 33-34). As JSON and as a printable page.
//!
//! Counts and identifiers only: no record content, no reason texts.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{Connection, params};
use serde::Serialize;

use crate::datadir::DataDir;
use crate::records::vault::Vault;
use crate::{Result, audit};

/// Which verifications a report runs.
#[derive(Debug, Clone, Copy)]
pub struct Checks {
    /// The audit seals and anchors under the audit key (else the hash chain only).
    pub keyed: bool,
    /// Re-hash every stored block (a read of the whole vault).
    pub blocks: bool,
}

/// One report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// When it was made (RFC 3339).
    pub generated_at: String,
    /// The period's start (RFC 3339, inclusive).
    pub from: String,
    /// The period's end (RFC 3339, exclusive).
    pub to: String,
    /// Accesses to records in the period.
    pub accesses: Accesses,
    /// Emergency overrides.
    pub emergencies: Emergencies,
    /// Every study on the ledger and the budget it spent.
    pub studies: Vec<StudyLine>,
    /// Erasures and retention.
    pub erasure: Erasure,
    /// What the verifications found.
    pub integrity: Integrity,
}

/// Accesses in the period, from the audit log.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Accesses {
    /// Records read under a grant, by purpose.
    pub reads_by_purpose: BTreeMap<String, i64>,
    /// Records read under an emergency override.
    pub emergency_reads: i64,
    /// Refused reads, listings and exports.
    pub refused: i64,
    /// Records read across a border (the geography policy allowed it).
    pub cross_border_reads: i64,
    /// Reads and writes the geography policy refused.
    pub cross_border_refused: i64,
    /// Exports of a patient's records (FHIR Bundles).
    pub exports: i64,
    /// Appointment reasons read.
    pub appointment_reasons_read: i64,
}

/// Emergency overrides: those opened and reviewed in the period (audit),
/// and the review state of all of them (ledger).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Emergencies {
    /// Opened in the period.
    pub opened: i64,
    /// Reviewed in the period.
    pub reviewed: i64,
    /// All overrides by their review state on chain (pending, justified, unjustified).
    pub by_review: BTreeMap<String, i64>,
}

/// One study.
#[derive(Debug, Clone, Serialize)]
pub struct StudyLine {
    /// Its id.
    pub study_id: i64,
    /// Its title, where this directory proposed it.
    pub title: Option<String>,
    /// Its state on chain.
    pub status: String,
    /// Its total budget (ε, or ρ), in units of 10^-18.
    pub budget_units: String,
    /// What its committed queries and releases spent, in the same units.
    pub spent_units: String,
    /// Queries and releases committed in all.
    pub committed: i64,
}

/// Erasures and retention.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Erasure {
    /// Patients erased in the period.
    pub patients_erased: i64,
    /// Record versions purged by retention in the period.
    pub versions_purged: i64,
    /// The retention policies now (resource type → years).
    pub policies: BTreeMap<String, u32>,
    /// Patients under legal hold now.
    pub legal_holds: i64,
}

/// What the verifications found now.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Integrity {
    /// Audit entries checked along the hash chain.
    pub audit_entries: i64,
    /// The first audit entry that breaks the chain.
    pub audit_broken: Option<audit::Broken>,
    /// Sealed audit entries and anchors checked against the audit key.
    pub audit_sealed_checked: i64,
    /// The first entry that differs from its seal or an anchor on chain.
    pub audit_differs: Option<audit::Broken>,
    /// Sealed rows of the vault's index checked against the audit key.
    pub index_sealed_checked: i64,
    /// The first index row that differs from its seal or an anchor on chain.
    pub index_differs: Option<audit::Broken>,
    /// Whether the blocks were re-hashed at all.
    pub blocks_verified: bool,
    /// Record versions whose block was re-hashed.
    pub blocks_checked: i64,
    /// Blocks missing or altered (CIDs; at most 50 listed).
    pub blocks_bad: Vec<String>,
    /// Blocks missing or altered in all.
    pub blocks_bad_count: i64,
    /// Whether the embedded ledger replays (None: a node checks its own).
    pub ledger_verified: Option<bool>,
    /// Why the ledger did not verify.
    pub ledger_error: Option<String>,
    /// Whether nothing above was found wrong.
    pub clean: bool,
}

fn count(conn: &Connection, sql: &str, from: &str, to: &str) -> Result<i64> {
    Ok(conn.query_row(sql, params![from, to], |r| r.get(0))?)
}

/// The report over `[from, to)`; `audit_key` checks the seals and anchors
/// (None: the unkeyed chain only); `blocks` re-hashes every stored block.
pub fn build(
    dir: &DataDir,
    vault: &Vault,
    audit_key: Option<&[u8]>,
    blocks: bool,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Report> {
    let conn = vault.conn();
    cohort_ledger_bridge::Follower::install(conn)?;
    let f = from.to_rfc3339_opts(SecondsFormat::Micros, true);
    let t = to.to_rfc3339_opts(SecondsFormat::Micros, true);
    let in_period = "at >= ?1 AND at < ?2";

    let mut accesses = Accesses::default();
    for row in conn
        .prepare(&format!(
            "SELECT purpose, COUNT(*) FROM audit WHERE action = 'read' AND {in_period} GROUP BY purpose ORDER BY purpose"
        ))?
        .query_map(params![f, t], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
    {
        let (purpose, n) = row?;
        accesses.reads_by_purpose.insert(purpose, n);
    }
    accesses.emergency_reads = count(
        conn,
        &format!("SELECT COUNT(*) FROM audit WHERE action = 'read.emergency' AND {in_period}"),
        &f,
        &t,
    )?;
    accesses.refused = count(
        conn,
        &format!(
            "SELECT COUNT(*) FROM audit WHERE action IN ('read.refused', 'list.refused', 'records.export.patient.refused') AND {in_period}"
        ),
        &f,
        &t,
    )?;
    accesses.cross_border_reads = count(
        conn,
        &format!(
            "SELECT COUNT(*) FROM audit WHERE action IN ('read', 'read.emergency') AND json_extract(detail, '$.cross_border') AND {in_period}"
        ),
        &f,
        &t,
    )?;
    accesses.cross_border_refused = count(
        conn,
        &format!(
            "SELECT COUNT(*) FROM audit WHERE action LIKE '%.refused' AND json_extract(detail, '$.reason') = 'cross_border' AND {in_period}"
        ),
        &f,
        &t,
    )?;
    accesses.exports = count(
        conn,
        &format!(
            "SELECT COUNT(*) FROM audit WHERE action = 'records.export.patient' AND {in_period}"
        ),
        &f,
        &t,
    )?;
    accesses.appointment_reasons_read = count(
        conn,
        &format!(
            "SELECT COUNT(*) FROM audit WHERE action = 'appointment.reason.read' AND {in_period}"
        ),
        &f,
        &t,
    )?;

    let mut emergencies = Emergencies {
        opened: count(
            conn,
            &format!(
                "SELECT COUNT(*) FROM audit WHERE action = 'emergency.trigger' AND {in_period}"
            ),
            &f,
            &t,
        )?,
        reviewed: count(
            conn,
            &format!(
                "SELECT COUNT(*) FROM audit WHERE action = 'emergency.review' AND {in_period}"
            ),
            &f,
            &t,
        )?,
        ..Emergencies::default()
    };
    for row in conn
        .prepare("SELECT review, COUNT(*) FROM ledger_emergencies GROUP BY review ORDER BY review")?
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
    {
        let (review, n) = row?;
        emergencies.by_review.insert(review, n);
    }

    let studies = studies(conn)?;

    let mut erasure = Erasure {
        patients_erased: count(
            conn,
            &format!("SELECT COUNT(*) FROM audit WHERE action = 'erase' AND {in_period}"),
            &f,
            &t,
        )?,
        versions_purged: count(
            conn,
            "SELECT COUNT(*) FROM retention_purges WHERE purged_at >= ?1 AND purged_at < ?2",
            &f,
            &t,
        )?,
        legal_holds: conn.query_row("SELECT COUNT(*) FROM legal_holds", [], |r| r.get(0))?,
        ..Erasure::default()
    };
    for p in super::retention::policies(conn)? {
        erasure.policies.insert(p.resource_type, p.years);
    }

    let integrity = integrity(dir, vault, audit_key, blocks)?;
    Ok(Report {
        generated_at: Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true),
        from: from.to_rfc3339_opts(SecondsFormat::Secs, true),
        to: to.to_rfc3339_opts(SecondsFormat::Secs, true),
        accesses,
        emergencies,
        studies,
        erasure,
        integrity,
    })
}

fn studies(conn: &Connection) -> Result<Vec<StudyLine>> {
    let titles: BTreeMap<i64, String> =
        if crate::storage::store::table_exists(conn, "research_studies")? {
            conn.prepare("SELECT study_id, title FROM research_studies")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?
        } else {
            BTreeMap::new()
        };
    let rows: Vec<(i64, String, String)> = conn
        .prepare("SELECT study_id, status, budget FROM ledger_studies ORDER BY study_id")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut out = Vec::new();
    for (study_id, status, budget) in rows {
        let costs: Vec<String> = conn
            .prepare(
                "SELECT cost FROM ledger_budget_events WHERE study_id = ?1 AND kind = 'committed'",
            )?
            .query_map([study_id], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let spent: u128 = costs.iter().filter_map(|c| c.parse::<u128>().ok()).sum();
        out.push(StudyLine {
            study_id,
            title: titles.get(&study_id).cloned(),
            status,
            budget_units: budget,
            spent_units: spent.to_string(),
            committed: costs.len() as i64,
        });
    }
    Ok(out)
}

/// Blocks listed by CID at most.
const LISTED: usize = 50;

fn integrity(
    dir: &DataDir,
    vault: &Vault,
    audit_key: Option<&[u8]>,
    blocks: bool,
) -> Result<Integrity> {
    let conn = vault.conn();
    let chain = audit::verify(conn)?;
    let mut out = Integrity {
        audit_entries: chain.entries,
        audit_broken: chain.first_broken,
        ..Integrity::default()
    };
    if let Some(key) = audit_key {
        let keyed = audit::anchor::verify_keyed(conn, key, &audit::anchor::anchors(conn)?)?;
        out.audit_sealed_checked = keyed.sealed_checked;
        out.audit_differs = keyed.first_differing;
        let index = crate::records::index_anchor::verify(
            conn,
            key,
            &audit::anchor::anchors_of(conn, crate::records::index_anchor::VAULT_INDEX)?,
        )?;
        out.index_sealed_checked = index.sealed_checked;
        out.index_differs = index.first_differing;
    }
    // Every stored version of a patient not erased and not purged: its
    // block must be there and hash to its CID.
    out.blocks_verified = blocks;
    let cids: Vec<String> = if !blocks {
        Vec::new()
    } else {
        conn.prepare(
            "SELECT r.cid FROM records r JOIN patients p ON p.patient_id = r.patient_id
             WHERE p.erased_at IS NULL
               AND NOT EXISTS (SELECT 1 FROM retention_purges x
                               WHERE x.record_id = r.record_id AND x.version = r.version)",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?
    };
    for cid in cids {
        out.blocks_checked += 1;
        if vault.blocks().get(&cid).is_err() {
            out.blocks_bad_count += 1;
            if out.blocks_bad.len() < LISTED {
                out.blocks_bad.push(cid);
            }
        }
    }
    match crate::chain::load(dir)?.map(|c| c.backend) {
        Some(crate::chain::BackendConfig::Rpc { .. }) | None => {}
        Some(_) => match crate::chain::verify(dir) {
            Ok(_) => out.ledger_verified = Some(true),
            Err(e) => {
                out.ledger_verified = Some(false);
                out.ledger_error = Some(e.to_string());
            }
        },
    }
    out.clean = out.audit_broken.is_none()
        && out.audit_differs.is_none()
        && out.index_differs.is_none()
        && out.blocks_bad_count == 0
        && out.ledger_verified != Some(false);
    Ok(out)
}

fn esc(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The report as a self-contained page, laid out for printing.
pub fn html(report: &Report) -> String {
    let mut h = String::new();
    let row = |h: &mut String, k: &str, v: &str| {
        h.push_str(&format!(
            "<tr><th>{}</th><td>{}</td></tr>\n",
            esc(k),
            esc(v)
        ));
    };
    h.push_str("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n");
    h.push_str(&format!(
        "<title>cohort regulatory report {} to {}</title>\n",
        esc(&report.from),
        esc(&report.to)
    ));
    h.push_str(
        "<style>body{font:11pt system-ui,sans-serif;margin:2em;max-width:52em}\
         table{border-collapse:collapse;margin:.5em 0 1.5em;width:100%}\
         th,td{border:1px solid #999;padding:.25em .5em;text-align:left}\
         th{background:#eee;width:40%}.bad{color:#a00;font-weight:bold}.ok{color:#060}\
         @media print{body{margin:0}h2{page-break-after:avoid}table{page-break-inside:avoid}}</style>\n",
    );
    h.push_str("</head><body>\n<h1>Regulatory report</h1>\n");
    h.push_str(&format!(
        "<p>Period {} to {} (end excluded). Generated {}. Counts and identifiers only: no record content.</p>\n",
        esc(&report.from),
        esc(&report.to),
        esc(&report.generated_at)
    ));
    let i = &report.integrity;
    h.push_str("<h2>Integrity (breaches detected by verification)</h2>\n");
    h.push_str(&format!(
        "<p class=\"{}\">{}</p>\n<table>\n",
        if i.clean { "ok" } else { "bad" },
        if i.clean {
            "Nothing found wrong."
        } else {
            "Verification found a problem: assess it as a possible breach."
        }
    ));
    row(
        &mut h,
        "audit entries checked (hash chain)",
        &i.audit_entries.to_string(),
    );
    row(
        &mut h,
        "first broken audit entry",
        &i.audit_broken
            .as_ref()
            .map_or("none".into(), |b| format!("#{}: {}", b.seq, b.reason)),
    );
    row(
        &mut h,
        "sealed audit entries checked (audit key)",
        &i.audit_sealed_checked.to_string(),
    );
    row(
        &mut h,
        "first entry differing from its seal or anchor",
        &i.audit_differs
            .as_ref()
            .map_or("none".into(), |b| format!("#{}: {}", b.seq, b.reason)),
    );
    row(
        &mut h,
        "sealed rows of the vault's index checked (audit key)",
        &i.index_sealed_checked.to_string(),
    );
    row(
        &mut h,
        "first index row differing from its seal or anchor",
        &i.index_differs
            .as_ref()
            .map_or("none".into(), |b| format!("seal {}: {}", b.seq, b.reason)),
    );
    row(
        &mut h,
        "record blocks re-hashed",
        &if i.blocks_verified {
            i.blocks_checked.to_string()
        } else {
            "not checked in this report".into()
        },
    );
    row(
        &mut h,
        "blocks missing or altered",
        &i.blocks_bad_count.to_string(),
    );
    for cid in &i.blocks_bad {
        row(&mut h, "  block", cid);
    }
    row(
        &mut h,
        "ledger replay",
        &match (i.ledger_verified, &i.ledger_error) {
            (Some(true), _) => "verified".to_string(),
            (Some(false), e) => format!("FAILED: {}", e.as_deref().unwrap_or("")),
            (None, _) => "checked by the ledger's own node".to_string(),
        },
    );
    h.push_str("</table>\n<h2>Accesses to records</h2>\n<table>\n");
    for (purpose, n) in &report.accesses.reads_by_purpose {
        row(
            &mut h,
            &format!("records read for {purpose}"),
            &n.to_string(),
        );
    }
    row(
        &mut h,
        "records read under an emergency override",
        &report.accesses.emergency_reads.to_string(),
    );
    row(
        &mut h,
        "refused reads, listings and exports",
        &report.accesses.refused.to_string(),
    );
    row(
        &mut h,
        "records read across a border (geography policy)",
        &report.accesses.cross_border_reads.to_string(),
    );
    row(
        &mut h,
        "cross-border reads and writes refused",
        &report.accesses.cross_border_refused.to_string(),
    );
    row(
        &mut h,
        "exports of a patient's records",
        &report.accesses.exports.to_string(),
    );
    row(
        &mut h,
        "appointment reasons read",
        &report.accesses.appointment_reasons_read.to_string(),
    );
    h.push_str("</table>\n<h2>Emergency access</h2>\n<table>\n");
    row(
        &mut h,
        "overrides opened in the period",
        &report.emergencies.opened.to_string(),
    );
    row(
        &mut h,
        "reviews in the period",
        &report.emergencies.reviewed.to_string(),
    );
    for (review, n) in &report.emergencies.by_review {
        row(
            &mut h,
            &format!("all overrides, review {review}"),
            &n.to_string(),
        );
    }
    h.push_str("</table>\n<h2>Studies and privacy budgets</h2>\n<table>\n");
    h.push_str("<tr><th>study</th><td>status; budget spent / total (units of 10<sup>-18</sup>); committed queries and releases</td></tr>\n");
    for s in &report.studies {
        row(
            &mut h,
            &format!("{} {}", s.study_id, s.title.as_deref().unwrap_or("")),
            &format!(
                "{}; {} / {}; {}",
                s.status, s.spent_units, s.budget_units, s.committed
            ),
        );
    }
    h.push_str("</table>\n<h2>Erasure and retention</h2>\n<table>\n");
    row(
        &mut h,
        "patients erased in the period",
        &report.erasure.patients_erased.to_string(),
    );
    row(
        &mut h,
        "record versions purged in the period",
        &report.erasure.versions_purged.to_string(),
    );
    for (t, years) in &report.erasure.policies {
        row(
            &mut h,
            &format!("retention of {t}"),
            &format!("{years} years"),
        );
    }
    row(
        &mut h,
        "patients under legal hold",
        &report.erasure.legal_holds.to_string(),
    );
    h.push_str("</table>\n</body></html>\n");
    h
}
