//! The metadata database: one SQLite file per data directory, in WAL mode.
//!
//! It holds the wrapped data keys, the record versions (CIDs, never
//! plaintext), the hash-chained audit log and the columnar projection that
//! research reads. Writes that must land together (a bundle's records, its
//! projection rows and its audit entry) share one transaction.

use std::path::Path;

use rusqlite::Connection;

use crate::Result;

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- One data key per patient, stored only wrapped by the keystore's KEK.
-- Erasure (crypto-shredding) sets wrapped_key to NULL; secure_delete zeroes
-- the freed bytes on disk.
CREATE TABLE IF NOT EXISTS patients (
    patient_id  TEXT PRIMARY KEY,
    wrapped_key BLOB,
    kek_id      TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    erased_at   TEXT
);

-- Every version of every record; the content is the encrypted block `cid`.
CREATE TABLE IF NOT EXISTS records (
    record_id     TEXT NOT NULL,
    version       INTEGER NOT NULL,
    patient_id    TEXT NOT NULL REFERENCES patients(patient_id),
    resource_type TEXT NOT NULL,
    cid           TEXT NOT NULL,
    prev_cid      TEXT,
    content_mac   BLOB NOT NULL,
    size          INTEGER NOT NULL,
    created_at    TEXT NOT NULL,
    PRIMARY KEY (record_id, version)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS records_by_patient ON records(patient_id);
-- Each stored version's anchor: the SHA-256 of its encrypted block, and
-- the custodian's batch (Merkle root on chain) or the update transaction
-- that anchored it; both NULL while it waits to be anchored.
CREATE TABLE IF NOT EXISTS record_anchors (
    record_id TEXT NOT NULL,
    version   INTEGER NOT NULL,
    data_hash BLOB NOT NULL,
    batch     INTEGER,
    tx_hash   TEXT,
    PRIMARY KEY (record_id, version)
);
CREATE INDEX IF NOT EXISTS record_anchors_batch ON record_anchors (batch);

-- Append-only, hash-chained audit log.
CREATE TABLE IF NOT EXISTS audit (
    seq       INTEGER PRIMARY KEY,
    at        TEXT NOT NULL,
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    target    TEXT NOT NULL,
    purpose   TEXT NOT NULL,
    detail    TEXT NOT NULL,
    prev_hash BLOB NOT NULL,
    hash      BLOB NOT NULL
);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;

-- Named Ethereum accounts (secp256k1): the key only wrapped by the keystore.
CREATE TABLE IF NOT EXISTS accounts (
    name        TEXT PRIMARY KEY,
    address     TEXT NOT NULL UNIQUE,
    wrapped_key BLOB NOT NULL,
    kek_id      TEXT NOT NULL,
    created_at  TEXT NOT NULL
);

-- A steward's or administrator's TOTP secret (RFC 6238), wrapped by the
-- keystore like the account key; last_step is the last time step accepted,
-- so that a code is never accepted twice.
CREATE TABLE IF NOT EXISTS second_factors (
    account        TEXT PRIMARY KEY REFERENCES accounts(name),
    wrapped_secret BLOB NOT NULL,
    kek_id         TEXT NOT NULL,
    enrolled_at    TEXT NOT NULL,
    last_step      INTEGER NOT NULL DEFAULT 0
);

-- The columnar projection: the current version of each resource, flattened.
CREATE TABLE IF NOT EXISTS proj_patients (
    patient_id   TEXT PRIMARY KEY,
    family_name  TEXT,
    given_name   TEXT,
    birth_date   INTEGER,
    gender       TEXT,
    race         TEXT,
    ethnicity    TEXT,
    address_line TEXT,
    city         TEXT,
    state        TEXT,
    zip          TEXT,
    phone        TEXT,
    email        TEXT,
    ssn          TEXT,
    mrn          TEXT
);
CREATE TABLE IF NOT EXISTS proj_observations (
    id           TEXT PRIMARY KEY,
    patient_id   TEXT NOT NULL,
    encounter_id TEXT,
    loinc        TEXT NOT NULL,
    display      TEXT,
    value        REAL,
    unit         TEXT,
    effective    INTEGER
);
CREATE INDEX IF NOT EXISTS proj_observations_by_patient ON proj_observations(patient_id);
CREATE TABLE IF NOT EXISTS proj_conditions (
    id              TEXT PRIMARY KEY,
    patient_id      TEXT NOT NULL,
    encounter_id    TEXT,
    icd10           TEXT NOT NULL,
    display         TEXT,
    clinical_status TEXT,
    onset           INTEGER
);
CREATE INDEX IF NOT EXISTS proj_conditions_by_patient ON proj_conditions(patient_id);
CREATE TABLE IF NOT EXISTS proj_encounters (
    id         TEXT PRIMARY KEY,
    patient_id TEXT NOT NULL,
    class      TEXT NOT NULL,
    type_code  TEXT,
    type_display TEXT,
    status     TEXT NOT NULL,
    start      INTEGER,
    "end"      INTEGER
);
CREATE INDEX IF NOT EXISTS proj_encounters_by_patient ON proj_encounters(patient_id);
CREATE TABLE IF NOT EXISTS proj_medications (
    id           TEXT PRIMARY KEY,
    patient_id   TEXT NOT NULL,
    encounter_id TEXT,
    rxnorm       TEXT NOT NULL,
    display      TEXT,
    status       TEXT NOT NULL,
    authored_on  INTEGER
);
CREATE INDEX IF NOT EXISTS proj_medications_by_patient ON proj_medications(patient_id);
"#;

/// Opens (creating if needed) the metadata database at `path`.
pub fn open(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: a committed audit entry or debit survives power loss.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Freed pages are zeroed: a shredded data key leaves no copy in the file.
    conn.pragma_update(None, "secure_delete", "ON")?;
    conn.execute_batch(SCHEMA)?;
    let version: Option<String> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .ok();
    match version {
        None => {
            conn.execute(
                "INSERT INTO meta(key, value) VALUES ('schema_version', ?1)",
                [SCHEMA_VERSION.to_string()],
            )?;
        }
        Some(v) if v == SCHEMA_VERSION.to_string() => {}
        Some(v) => {
            return Err(crate::Error::Invalid(format!(
                "{} has schema version {v}; this build of cohort reads version {SCHEMA_VERSION}",
                path.display()
            )));
        }
    }
    Ok(conn)
}

/// Now, as the RFC 3339 UTC text every table stores.
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}
