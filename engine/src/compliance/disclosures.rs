//! The accounting of disclosures a patient may request (HIPAA §164.528):
//! every disclosure of their records for six years, saying who received
//! what, when and why.
//!
//! It lists more than the rule requires: reads for treatment, payment and
//! operations (exempt under §164.528(a)(1)(i), but HITECH §13405(c) asks
//! for them from electronic records) and research under the patient's own
//! consent (an authorization, exempt under (a)(1)(iv)) are included, each
//! marked with its basis. Sources, each authoritative for its part:
//! - the chain's read trace (`RecordsAccessed`, mirrored): who read, when,
//!   why, how many records, and whether an emergency override allowed it;
//! - the audit log's `read` entries: which records those reads returned
//!   (each names its trace's block); a trace with no audit entries is
//!   still listed, so a deleted audit entry shows;
//! - the research ledger: every answered query whose member set holds the
//!   patient, and every k-anonymous release made while their consent was
//!   live;
//! - the audit log: exports of their records by someone else, and reads of
//!   their appointment reasons.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, params};
use serde::Serialize;

use crate::Result;
use crate::access::patients::{self, PatientAccount};

/// How far back the accounting reaches by default (§164.528(a): six years).
pub const DEFAULT_YEARS: u32 = 6;

/// One disclosure.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Disclosure {
    /// When (unix seconds).
    pub at: i64,
    /// Who received it: an account name, else an address.
    pub recipient: String,
    /// What was disclosed, in words (no content).
    pub what: String,
    /// The records, where known (ids).
    pub records: Vec<String>,
    /// Why: the purpose of use, or the study.
    pub why: String,
    /// On what basis: `grant`, `emergency`, `consent`, `export`.
    pub basis: &'static str,
    /// Where it is recorded: a block, an audit entry, a query.
    pub evidence: String,
    /// For a cross-border read: the reader's and the record's
    /// jurisdictions and the geography rule that allowed it
    /// (`US -> DE by [[allow]] #1 ...`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cross_border: Option<String>,
}

/// A patient's accounting.
#[derive(Debug, Clone, Serialize)]
pub struct Accounting {
    /// The patient's account.
    pub patient: String,
    /// From when (unix seconds).
    pub since: i64,
    /// Newest first.
    pub disclosures: Vec<Disclosure>,
}

/// The accounting of `patient`'s disclosures since `since`.
pub fn account(
    conn: &Connection,
    patient: &PatientAccount,
    since: DateTime<Utc>,
) -> Result<Accounting> {
    cohort_ledger_bridge::Follower::install(conn)?;
    let since = since.timestamp();
    let mut out = reads(conn, patient, since)?;
    out.extend(research(conn, patient, since)?);
    out.extend(audited(conn, patient, since)?);
    out.sort_by(|a, b| b.at.cmp(&a.at).then_with(|| a.evidence.cmp(&b.evidence)));
    Ok(Accounting {
        patient: patient.name.clone(),
        since,
        disclosures: out,
    })
}

fn unix(rfc3339: &str) -> i64 {
    DateTime::parse_from_rfc3339(rfc3339).map_or(0, |t| t.timestamp())
}

/// Reads on chain, each with the records its audit entries name (they
/// carry the trace's block).
fn reads(conn: &Connection, patient: &PatientAccount, since: i64) -> Result<Vec<Disclosure>> {
    let mut named: BTreeMap<(i64, String), Vec<String>> = BTreeMap::new();
    let mut crossed: BTreeMap<(i64, String), String> = BTreeMap::new();
    type Row = (Option<i64>, String, String, Option<String>);
    let rows: Vec<Row> = conn
        .prepare(
            "SELECT json_extract(a.detail, '$.block'), a.actor, a.target,
                    CASE WHEN json_extract(a.detail, '$.cross_border') THEN
                      json_extract(a.detail, '$.reader_jurisdiction') || ' -> ' ||
                      json_extract(a.detail, '$.record_jurisdiction') || ' by ' ||
                      json_extract(a.detail, '$.geo_rule') END
             FROM audit a
             WHERE a.action IN ('read', 'read.emergency')
               AND a.target IN (SELECT record_id FROM records WHERE patient_id = ?1)
             ORDER BY a.seq",
        )?
        .query_map([&patient.patient_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    for (block, actor, target, cross) in rows {
        if let Some(block) = block {
            if let Some(c) = cross {
                crossed.entry((block, actor.clone())).or_insert(c);
            }
            named.entry((block, actor)).or_default().push(target);
        }
    }
    let mut out = Vec::new();
    let own = format!("{:#x}", patient.address);
    for e in patients::read_log(conn, patient.address)? {
        // The patient's own reads (an export, the page) disclose nothing.
        if e.at < since || e.accessor.eq_ignore_ascii_case(&own) {
            continue;
        }
        let recipient = e
            .accessor_name
            .clone()
            .unwrap_or_else(|| e.accessor.clone());
        let records = named
            .remove(&(e.block, recipient.clone()))
            .unwrap_or_default();
        let cross_border = crossed.remove(&(e.block, recipient.clone()));
        let what = if records.is_empty() {
            format!(
                "{} record(s) traced on chain; the audit log names none of them",
                e.records
            )
        } else {
            format!("{} record(s): {}", records.len(), kinds(&records))
        };
        out.push(Disclosure {
            at: e.at,
            recipient,
            what,
            records,
            why: e.purpose.to_string(),
            basis: if e.emergency { "emergency" } else { "grant" },
            evidence: format!("chain block {}", e.block),
            cross_border,
        });
    }
    Ok(out)
}

/// `Observation ×3, Condition ×1`: what records were, by type.
fn kinds(records: &[String]) -> String {
    let mut by: BTreeMap<&str, usize> = BTreeMap::new();
    for r in records {
        *by.entry(r.split_once('/').map_or(r.as_str(), |(t, _)| t))
            .or_default() += 1;
    }
    by.iter()
        .map(|(t, n)| format!("{t} ×{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn study_title(conn: &Connection, study_id: i64) -> Result<String> {
    use rusqlite::OptionalExtension;
    if !crate::storage::store::table_exists(conn, "research_studies")? {
        return Ok(format!("study {study_id}"));
    }
    let title: Option<String> = conn
        .query_row(
            "SELECT title FROM research_studies WHERE study_id = ?1 LIMIT 1",
            [study_id],
            |r| r.get(0),
        )
        .optional()?;
    Ok(match title {
        Some(t) => format!("study {study_id} ({t})"),
        None => format!("study {study_id}"),
    })
}

/// Answered queries whose member set holds the patient, and releases made
/// while their consent was live.
fn research(conn: &Connection, patient: &PatientAccount, since: i64) -> Result<Vec<Disclosure>> {
    let mut out = Vec::new();
    let address = format!("{:#x}", patient.address);
    if crate::storage::store::table_exists(conn, "research_queries")?
        && crate::storage::store::table_exists(conn, "research_member_sets")?
    {
        let rows: Vec<(i64, String, String, String, String)> = conn
            .prepare(
                "SELECT q.study_id, q.query_id, q.actor, q.cost, q.updated_at FROM research_queries q
                 WHERE q.state = 'delivered' AND q.members_root IS NOT NULL
                   AND EXISTS (SELECT 1 FROM research_member_sets m
                               WHERE m.members_root = q.members_root AND lower(m.address) = ?1)
                 ORDER BY q.updated_at",
            )?
            .query_map([&address], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))?
            .collect::<rusqlite::Result<_>>()?;
        for (study, query, actor, cost, at) in rows {
            let at = unix(&at);
            if at < since {
                continue;
            }
            out.push(Disclosure {
                at,
                recipient: actor,
                what: format!(
                    "one differentially private aggregate answer ({cost}) that your records entered"
                ),
                records: vec![],
                why: study_title(conn, study)?,
                basis: "consent",
                evidence: format!("query {query}"),
                cross_border: None,
            });
        }
    }
    if crate::storage::store::table_exists(conn, "research_releases")? {
        let rows: Vec<(i64, String, String, i64, i64, String)> = conn
            .prepare(
                "SELECT r.study_id, r.extract_hash, r.actor, r.k, r.rows, r.created_at
                 FROM research_releases r
                 JOIN ledger_releases l ON l.extract_hash = r.extract_hash
                 JOIN ledger_consents c ON c.study_id = r.study_id AND lower(c.patient) = ?1
                 WHERE c.given_block <= l.block AND (c.withdrawn_block IS NULL OR c.withdrawn_block > l.block)
                 ORDER BY r.created_at",
            )?
            .query_map([&address], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
            })?
            .collect::<rusqlite::Result<_>>()?;
        for (study, hash, actor, k, rows, at) in rows {
            let at = unix(&at);
            if at < since {
                continue;
            }
            out.push(Disclosure {
                at,
                recipient: actor,
                what: format!(
                    "a de-identified, {k}-anonymous extract of {rows} rows released while your consent was live (your row may be among them)"
                ),
                records: vec![],
                why: study_title(conn, study)?,
                basis: "consent",
                evidence: format!("release {hash}"),
                cross_border: None,
            });
        }
    }
    Ok(out)
}

/// Exports of the patient's records by someone else, and reads of their
/// appointment reasons.
fn audited(conn: &Connection, patient: &PatientAccount, since: i64) -> Result<Vec<Disclosure>> {
    let mut out = Vec::new();
    let exports: Vec<(i64, String, String, String, String)> = conn
        .prepare(
            "SELECT seq, at, actor, purpose, detail FROM audit
             WHERE action = 'records.export.patient' AND target = ?1 AND actor <> ?2 ORDER BY seq",
        )?
        .query_map(
            params![format!("Patient/{}", patient.patient_id), patient.name],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )?
        .collect::<rusqlite::Result<_>>()?;
    for (seq, at, actor, purpose, detail) in exports {
        let at = unix(&at);
        if at < since {
            continue;
        }
        let n = serde_json::from_str::<serde_json::Value>(&detail)
            .ok()
            .and_then(|d| d["records"].as_u64())
            .unwrap_or(0);
        out.push(Disclosure {
            at,
            recipient: actor,
            what: format!("an export of {n} record(s) as a FHIR Bundle"),
            records: vec![],
            why: purpose,
            basis: "export",
            evidence: format!("audit entry {seq}"),
            cross_border: None,
        });
    }
    if crate::storage::store::table_exists(conn, "ledger_appointments")? {
        let reasons: Vec<(i64, String, String, String, String)> = conn
            .prepare(
                "SELECT a.seq, a.at, a.actor, a.purpose, a.target FROM audit a
                 JOIN ledger_appointments p ON CAST(p.id AS TEXT) = a.target
                 WHERE a.action = 'appointment.reason.read' AND lower(p.patient) = ?1 AND a.actor <> ?2
                 ORDER BY a.seq",
            )?
            .query_map(
                params![format!("{:#x}", patient.address), patient.name],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )?
            .collect::<rusqlite::Result<_>>()?;
        for (seq, at, actor, purpose, appointment) in reasons {
            let at = unix(&at);
            if at < since {
                continue;
            }
            out.push(Disclosure {
                at,
                recipient: actor,
                what: format!("the reason for appointment {appointment}"),
                records: vec![],
                why: purpose,
                basis: "grant",
                evidence: format!("audit entry {seq}"),
                cross_border: None,
            });
        }
    }
    Ok(out)
}
