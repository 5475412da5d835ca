//! Microdata release: a k-anonymous extract of a study's view (Mondrian
//! with the study's hierarchies, l-diversity when asked), measured again
//! before it leaves, written as Parquet with its information-loss report,
//! and recorded on the ledger (its hash) and in the audit log. Only a study
//! whose stewards approved microdata may release one; the extract never
//! carries the study's pseudonyms.
//!
//! An extract is not covered by ε: it is the records themselves,
//! generalized until every row hides among at least k. What protects the
//! patients is k (at least the study's `min_k`, on chain), l, and how many
//! extracts there are: the study's `max_extracts` (on chain), and one
//! extract per consenting set. Asking again while the consenting set is
//! unchanged returns the stored extract, whatever k and l are asked for,
//! so that extracts of the same rows with different parameters cannot be
//! laid over one another. Two extracts of sets that differ in a few
//! patients still can be compared (a withdrawal between them, say): that is
//! what `max_extracts` limits, and what a steward weighs before approving
//! more than one.

use std::path::{Path, PathBuf};

use cohort_anonymizer::hierarchy::Hierarchies;
use cohort_anonymizer::mondrian::{self, Mode, Params, Report, Request};
use cohort_anonymizer::privacy_model::LDiversity;
use cohort_ledger_bridge::alloy::primitives::B256;
use rusqlite::{OptionalExtension, params};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::Session;
use crate::{Error, Result, audit};

/// What `cohort release` returns.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Released {
    /// The study.
    pub study_id: u64,
    /// The Parquet file.
    pub path: PathBuf,
    /// Its report (JSON), beside it.
    pub report_path: PathBuf,
    /// SHA-256 of the file's bytes, recorded on chain.
    pub extract_hash: String,
    /// The k asked for.
    pub k: usize,
    /// The l asked for (0: none).
    pub l: usize,
    /// k and l as measured on the written rows.
    pub measured_k: usize,
    /// Distinct sensitive values in the smallest class.
    pub measured_l: Option<usize>,
    /// Information loss and suppression.
    pub report: Report,
    /// Whether this is the stored extract of an unchanged consenting set.
    #[serde(default)]
    pub replayed: bool,
}

impl Session {
    /// Releases a k-anonymous extract of study `id`, as `actor`.
    pub async fn release(
        &self,
        actor: &str,
        id: u64,
        k: usize,
        l: Option<usize>,
        out: Option<&Path>,
    ) -> Result<Released> {
        let conn = self.dir.connect()?;
        let (file, s) = self.study(&conn, id).await?;
        self.require_researcher(&conn, actor, &s, id)?;
        if !s.terms.microdata {
            return Err(Error::Invalid(format!(
                "study {id} was not approved for microdata: its stewards approved aggregate queries only"
            )));
        }
        if s.status != 2 {
            return Err(Error::Invalid(format!("study {id} is not approved")));
        }
        let spec = file.release.clone().ok_or_else(|| {
            Error::Invalid(format!(
                "study {id}'s file has no [release] table naming the extract's columns"
            ))
        })?;
        if k < spec.min_k as usize {
            return Err(Error::Invalid(format!(
                "--k {k}: study {id}'s extracts need k of at least {} (its `min_k`, approved on chain)",
                spec.min_k
            )));
        }
        if l == Some(0) || l == Some(1) {
            return Err(Error::Invalid(
                "--l must be at least 2 (leave it out for no l-diversity)".into(),
            ));
        }
        if l.is_some() && spec.sensitive.is_none() {
            return Err(Error::Invalid(
                "--l needs a sensitive column in the study's [release] table".into(),
            ));
        }
        let unit = &file.scope.privacy_unit;
        if spec.quasi_identifiers.contains(unit)
            || spec.keep.contains(unit)
            || spec.sensitive.as_ref() == Some(unit)
        {
            return Err(Error::Invalid(format!(
                "the extract may not carry `{unit}`: pseudonyms would link its rows"
            )));
        }
        if let Some(c) = super::encryption::columns(&file).into_iter().find(|c| {
            spec.quasi_identifiers.contains(&c.column)
                || spec.keep.contains(&c.column)
                || spec.sensitive.as_ref() == Some(&c.column)
        }) {
            return Err(Error::Invalid(format!(
                "the extract may not carry `{}`: it is encrypted, and only its aggregates are released",
                c.column
            )));
        }
        let hierarchies = match &spec.hierarchies {
            Some(t) => Hierarchies::from_toml(&toml::to_string(t).expect("a TOML table prints"))?,
            None => Hierarchies::default(),
        };
        let view = self.view(&conn, id, &file).await?;
        // One extract per consenting set: the same set gets the stored one.
        let stored: Option<String> = conn
            .query_row(
                "SELECT report FROM research_releases WHERE study_id = ?1 AND view_digest = ?2",
                params![id as i64, view.digest],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(report) = stored {
            let mut released: Released = serde_json::from_str(&report)
                .map_err(|e| Error::Invalid(format!("a stored extract's report: {e}")))?;
            released.replayed = true;
            return Ok(released);
        }
        let made: i64 = conn.query_row(
            "SELECT COUNT(*) FROM research_releases WHERE study_id = ?1",
            [id as i64],
            |r| r.get(0),
        )?;
        if made >= i64::from(spec.max_extracts) {
            return Err(Error::Invalid(format!(
                "study {id} has released the {} extract(s) its stewards approved (`max_extracts`)",
                spec.max_extracts
            )));
        }
        let batch = view
            .batches
            .get(&spec.table)
            .ok_or_else(|| Error::Invalid(format!("the view has no table `{}`", spec.table)))?;
        let request = Request {
            quasi_identifiers: spec.quasi_identifiers.clone(),
            sensitive: spec.sensitive.clone(),
            keep: spec.keep.clone(),
            hierarchies,
            params: Params {
                l_diversity: l.map(|l| LDiversity::Distinct { l }),
                suppression_limit: spec.suppression,
                mode: Mode::Relaxed,
                ..Params::k(k)
            },
        };
        // A failure says nothing about the rows (no count, no measure).
        let refused = || {
            Error::Invalid(format!(
                "no extract of study {id}'s view meets k = {k}{}: nothing was released",
                l.map(|l| format!(", l = {l}")).unwrap_or_default()
            ))
        };
        let extract = mondrian::anonymize(batch, &request).map_err(|_| refused())?;
        // Checked again on what leaves, whatever produced it.
        let m = mondrian::measure(
            &extract.batch,
            &spec.quasi_identifiers,
            spec.sensitive.as_deref(),
        )?;
        if extract.batch.num_rows() > 0
            && (m.k < k || l.is_some_and(|l| m.l_distinct.unwrap_or(0) < l))
        {
            return Err(refused());
        }

        let dir = self
            .dir
            .root()
            .join("research")
            .join("studies")
            .join(id.to_string())
            .join("releases");
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("creating", &dir, e))?;
        let staged = dir.join(format!(".staged-{}.parquet", crate::budget::new_query_id()));
        crate::storage::tabular::write(&staged, &extract.batch)?;
        let bytes = std::fs::read(&staged).map_err(|e| Error::io("reading", &staged, e))?;
        let hash = B256::from_slice(&Sha256::digest(&bytes));
        let hex = format!("{hash:#x}");
        let path = match out {
            Some(p) => p.to_path_buf(),
            None => dir.join(format!("{}.parquet", &hex[2..18])),
        };
        let rows = extract.batch.num_rows() as u64;
        self.client
            .record_release(
                &self.engine,
                id,
                hash,
                k as u32,
                l.unwrap_or(0) as u32,
                rows,
            )
            .await?;
        std::fs::rename(&staged, &path)
            .or_else(|_| {
                std::fs::copy(&staged, &path)
                    .map(|_| ())
                    .and_then(|_| std::fs::remove_file(&staged))
            })
            .map_err(|e| Error::io("writing", &path, e))?;
        let report_path = path.with_extension("report.json");
        let released = Released {
            study_id: id,
            path: path.clone(),
            report_path: report_path.clone(),
            extract_hash: hex.clone(),
            k,
            l: l.unwrap_or(0),
            measured_k: m.k,
            measured_l: m.l_distinct,
            report: extract.report,
            replayed: false,
        };
        let report_json = serde_json::to_string_pretty(&released).expect("a report serialises");
        crate::storage::fsutil::write_atomic(&report_path, report_json.as_bytes())?;
        let tx = conn.unchecked_transaction()?;
        tx.execute(
            "INSERT OR REPLACE INTO research_releases (extract_hash, study_id, path, k, l, rows, report, actor, created_at, view_digest)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                hex,
                id as i64,
                path.display().to_string(),
                k as i64,
                l.unwrap_or(0) as i64,
                rows as i64,
                report_json,
                actor,
                crate::storage::store::now(),
                view.digest
            ],
        )?;
        audit::append(
            &tx,
            &audit::Event {
                actor,
                action: "research.release",
                target: &format!("study/{id}/release/{hex}"),
                purpose: "research",
                detail: serde_json::json!({
                    "k": k, "l": l, "rows": rows,
                    "ncp": released.report.ncp,
                    "suppressed": released.report.suppressed,
                }),
            },
        )?;
        tx.commit()?;
        Ok(released)
    }
}
