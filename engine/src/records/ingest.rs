//! `cohort ingest`: FHIR bundles into the vault and the projection.
//!
//! Each bundle is validated whole before anything is written, then stored
//! inside its own savepoint: its records, its projection rows and its audit
//! entry land together or not at all. A rejected bundle is reported with its
//! reason and the others go on. Several bundles share one commit (a few
//! thousand resources), so a crash loses at most the bundles not yet
//! reported, and ingesting them again stores them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rusqlite::TransactionBehavior;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::audit::{self, Event};
use crate::records::fhir::{self, Bundle};
use crate::records::projection;
use crate::records::vault::{
    Access, KeyCache, NewRecord, PatientState, PutOutcome, Vault, patient_state,
};
use crate::{Error, Result};

/// What one ingest run did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Report {
    /// Bundles stored.
    pub bundles: usize,
    /// Resources in the stored bundles.
    pub resources: usize,
    /// Records created.
    pub created: usize,
    /// Records given a new version.
    pub updated: usize,
    /// Records whose content was already current.
    pub unchanged: usize,
    /// Resources of unsupported types, by type, not stored.
    pub skipped: BTreeMap<String, usize>,
    /// Bundles refused, with the reason; nothing of them was stored.
    pub rejected: Vec<Rejected>,
    /// Wall time in seconds.
    pub seconds: f64,
    /// Resources stored per second.
    pub resources_per_second: f64,
}

/// A bundle that was refused.
#[derive(Debug, Clone, Serialize)]
pub struct Rejected {
    /// The file.
    pub source: String,
    /// Why, naming the entry and field.
    pub reason: String,
}

/// Outcome of storing one bundle.
#[derive(Debug, Default, Clone, Copy)]
pub struct BundleOutcome {
    /// Records created.
    pub created: usize,
    /// Records updated.
    pub updated: usize,
    /// Records unchanged.
    pub unchanged: usize,
}

/// The bundle files under `paths`: files as given, directories' `*.json`
/// files (not recursive), each list sorted by name.
pub fn bundle_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p).map_err(|e| Error::io("reading", p, e))?;
        if meta.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| Error::io("listing", p, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.extension().is_some_and(|x| x == "json") && f.is_file())
                .collect();
            files.sort();
            out.extend(files);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

/// Ingests every bundle under `paths`, in order: each is parsed while the
/// one before it is stored, and stored in a savepoint of a transaction that
/// commits every [`GROUP_RESOURCES`] resources.
pub fn ingest_paths(
    vault: &Vault,
    access: &Access,
    paths: &[PathBuf],
    progress: bool,
) -> Result<Report> {
    let started = Instant::now();
    let files = bundle_files(paths)?;
    let bar = if progress {
        indicatif::ProgressBar::new(files.len() as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "ingest {bar:40} {pos}/{len} bundles {per_sec} eta {eta}",
        )
        .expect("valid template"),
    );
    let mut report = Report::default();
    // The next bundles are parsed on a thread of their own while this one
    // is stored: storing is mostly one thread (SQLite) and seals its blocks
    // on rayon's pool, which a parse there would hold up.
    let (parsed_tx, parsed_rx) = std::sync::mpsc::sync_channel(2);
    let files = &files;
    std::thread::scope(|scope| {
        scope.spawn(move || {
            for f in files {
                if parsed_tx
                    .send((f.display().to_string(), read_bundle(f)))
                    .is_err()
                {
                    return;
                }
            }
        });
        let mut group = Group::default();
        for (name, res) in parsed_rx {
            if let Err(e) = group.store(vault, access, name, res) {
                group.fail(vault, &mut report, &e);
            }
            if group.resources >= GROUP_RESOURCES
                && let Err(e) = group.commit(vault, &mut report)
            {
                group.fail(vault, &mut report, &e);
            }
            bar.inc(1);
        }
        if let Err(e) = group.commit(vault, &mut report) {
            group.fail(vault, &mut report, &e);
        }
    });
    bar.finish_and_clear();
    report.seconds = started.elapsed().as_secs_f64();
    report.resources_per_second = report.resources as f64 / report.seconds.max(1e-9);
    Ok(report)
}

/// Bundles share one commit until they hold this many resources: each
/// commit syncs the pack file, the block index and the database (and often
/// checkpoints the WAL), about 20 ms each on a slow disk.
const GROUP_RESOURCES: usize = 8_000;

/// Bundles stored in the open transaction, each inside its own savepoint
/// (a rejected one rolls back alone); they count in the report only once
/// their commit succeeded.
#[derive(Default)]
struct Group {
    open: bool,
    stored: Vec<(String, Bundle, BundleOutcome)>,
    rejected: Vec<Rejected>,
    resources: usize,
}

impl Group {
    /// Stores one parsed bundle in the group's transaction, or records why
    /// it was rejected; an error is one the group cannot go on after.
    fn store(
        &mut self,
        vault: &Vault,
        access: &Access,
        name: String,
        parsed: Result<(Bundle, String)>,
    ) -> Result<()> {
        // A failure of the transaction itself still names this bundle.
        let begun = (|| {
            if !self.open {
                vault.conn().execute_batch("BEGIN IMMEDIATE")?;
                self.open = true;
            }
            vault.conn().execute_batch("SAVEPOINT bundle")
        })();
        if let Err(e) = begun {
            self.rejected.push(Rejected {
                source: name,
                reason: format!("not stored: {e}"),
            });
            return Err(e.into());
        }
        let stored = parsed.and_then(|(bundle, digest)| {
            store_bundle_in(vault.conn(), vault, access, &bundle, &digest).map(|o| (bundle, o))
        });
        match stored {
            Ok((bundle, o)) => {
                self.resources += bundle.resources.len();
                self.stored.push((name, bundle, o));
                vault.conn().execute_batch("RELEASE bundle")?;
            }
            Err(e) => {
                self.rejected.push(Rejected {
                    source: name,
                    reason: e.to_string(),
                });
                vault
                    .conn()
                    .execute_batch("ROLLBACK TO bundle; RELEASE bundle")?;
            }
        }
        Ok(())
    }

    /// Makes the group's blocks durable, then commits it, then counts it.
    fn commit(&mut self, vault: &Vault, report: &mut Report) -> Result<()> {
        if self.open {
            vault.blocks().flush()?;
            vault.conn().execute_batch("COMMIT")?;
            self.open = false;
        }
        report.rejected.append(&mut self.rejected);
        for (_, bundle, o) in self.stored.drain(..) {
            report.bundles += 1;
            report.resources += bundle.resources.len();
            report.created += o.created;
            report.updated += o.updated;
            report.unchanged += o.unchanged;
            for (t, n) in bundle.skipped {
                *report.skipped.entry(t).or_insert(0) += n;
            }
        }
        self.resources = 0;
        Ok(())
    }

    /// The group's transaction failed (a full disk, a lost lock): none of
    /// its bundles was stored, and each is reported rejected with the cause.
    fn fail(&mut self, vault: &Vault, report: &mut Report, e: &Error) {
        if self.open {
            // A rollback that fails too leaves the transaction to SQLite,
            // which rolls it back when the connection closes.
            let _ = vault.conn().execute_batch("ROLLBACK");
            self.open = false;
        }
        report.rejected.append(&mut self.rejected);
        for (source, _, _) in self.stored.drain(..) {
            report.rejected.push(Rejected {
                source,
                reason: format!("not stored: {e}"),
            });
        }
        self.resources = 0;
    }
}

/// Ingests one bundle file; errors if it is rejected.
pub fn ingest_file(vault: &Vault, access: &Access, path: &Path) -> Result<BundleOutcome> {
    let (bundle, digest) = read_bundle(path)?;
    store_bundle(vault, access, &bundle, &digest)
}

/// Reads and validates a bundle file; returns it with the hex SHA-256 of its
/// bytes (the audit log's name for what was ingested).
fn read_bundle(path: &Path) -> Result<(Bundle, String)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io("reading", path, e))?;
    let digest = data_encoding::HEXLOWER.encode(&Sha256::digest(&bytes));
    Ok((
        fhir::parse_bundle(&path.display().to_string(), &bytes)?,
        digest,
    ))
}

/// Stores a validated bundle in one transaction: all of it, or none.
pub fn store_bundle(
    vault: &Vault,
    access: &Access,
    bundle: &Bundle,
    digest: &str,
) -> Result<BundleOutcome> {
    let tx = rusqlite::Transaction::new_unchecked(vault.conn(), TransactionBehavior::Immediate)?;
    let outcome = store_bundle_in(&tx, vault, access, bundle, digest)?;
    vault.blocks().flush()?;
    tx.commit()?;
    Ok(outcome)
}

/// [`store_bundle`] inside the caller's transaction (a provider's update
/// commits only once the chain has taken its anchor).
pub(crate) fn store_bundle_in(
    tx: &rusqlite::Connection,
    vault: &Vault,
    access: &Access,
    bundle: &Bundle,
    digest: &str,
) -> Result<BundleOutcome> {
    let reject = |entry: usize, record: &str, reason: String| Error::Fhir {
        source_name: bundle.source.clone(),
        message: format!("entry {entry} ({record}): {reason}"),
    };
    // Resources about patients outside the bundle need them in the vault already.
    for (entry, record, patient) in bundle.external_patients() {
        let reason = match patient_state(tx, &patient)? {
            PatientState::Active => continue,
            PatientState::Absent => format!(
                "field `subject`: patient {patient} is neither in this bundle nor in the vault"
            ),
            PatientState::Erased { at } => {
                format!("patient {patient} was erased on {at}; their records cannot be re-ingested")
            }
        };
        return Err(reject(entry, &record, reason));
    }
    let mut cache = KeyCache::default();
    let mut outcome = BundleOutcome::default();
    let ids: Vec<String> = bundle.resources.iter().map(|r| r.record_id()).collect();
    let records: Vec<NewRecord<'_>> = bundle
        .resources
        .iter()
        .zip(&ids)
        .map(|(r, record_id)| NewRecord {
            patient_id: &r.patient_id,
            record_id,
            resource_type: r.resource_type,
            content: &r.json,
        })
        .collect();
    let stored = vault
        .put_all_in(tx, &mut cache, &records, |i| {
            bundle.resources[i].resource_type == "Patient"
        })
        .map_err(|(i, e)| reject(bundle.resources[i].entry, &ids[i], e.to_string()))?;
    let mut changed = false;
    for (r, (o, _)) in bundle.resources.iter().zip(stored) {
        match o {
            PutOutcome::Created => outcome.created += 1,
            PutOutcome::Updated => outcome.updated += 1,
            PutOutcome::Unchanged => outcome.unchanged += 1,
        }
        if let Some(j) = &access.jurisdiction {
            crate::access::geo::remember(tx, &r.record_id(), j)?;
        }
        if o != PutOutcome::Unchanged {
            // put_all_in unwrapped this patient's key: the cache holds it.
            let key = vault.data_key(tx, &mut cache, &r.patient_id, false)?;
            projection::upsert(tx, &r.row, &key)?;
            changed = true;
        }
    }
    if changed {
        projection::touch(tx)?;
    }
    let target = format!(
        "Bundle/{}",
        bundle
            .id
            .clone()
            .unwrap_or_else(|| format!("sha256:{}", &digest[..16]))
    );
    audit::append(
        tx,
        &Event {
            actor: &access.actor,
            action: "ingest",
            target: &target,
            purpose: &access.purpose,
            detail: serde_json::json!({
                "sha256": digest,
                "resources": bundle.resources.len(),
                "created": outcome.created,
                "updated": outcome.updated,
                "unchanged": outcome.unchanged,
            }),
        },
    )?;
    Ok(outcome)
}
