//! The metadata database: one SQLite file per data directory, in WAL mode.
//!
//! It holds the wrapped data keys, the record versions (CIDs, never
//! plaintext), the hash-chained audit log and the columnar projection that
//! research reads (its patients' direct identifiers sealed with their data
//! keys). Writes that must land together (a bundle's records, its
//! projection rows and its audit entry) share one transaction.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension};

use crate::Result;

/// The schema version this build writes and reads. Version 2 seals the
/// projection's patient identifiers; version 1 held them in plaintext.
pub const SCHEMA_VERSION: i64 = 2;

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
-- Retention (compliance::retention): how many years each resource type is
-- kept, the patients under legal hold, and the record versions purged (the
-- row stays, so the audit trail and the anchors still name what existed).
CREATE TABLE IF NOT EXISTS retention_policies (
    resource_type TEXT PRIMARY KEY,
    years         INTEGER NOT NULL CHECK (years > 0),
    set_by        TEXT NOT NULL,
    set_at        TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS legal_holds (
    patient_id TEXT PRIMARY KEY,
    reason     TEXT NOT NULL,
    set_by     TEXT NOT NULL,
    set_at     TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS retention_purges (
    record_id     TEXT NOT NULL,
    version       INTEGER NOT NULL,
    resource_type TEXT NOT NULL,
        cid           TEXT NOT NULL,
    purged_at     TEXT NOT NULL,
    -- 1 once the block file is deleted (a crash in between leaves 0).
    block_deleted INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (record_id, version)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS retention_purges_pending ON retention_purges (block_deleted) WHERE block_deleted = 0;

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

-- Record data keys by epoch (`records::data_keys`): epoch 1 is the key
-- in `patients.wrapped_key`; each rotation (a revocation, a withdrawal)
-- starts the next, its custodian copy wrapped by the keystore here.
CREATE TABLE IF NOT EXISTS data_key_epochs (
    patient_id  TEXT NOT NULL,
    epoch       INTEGER NOT NULL,
    wrapped_key BLOB,
    kek_id      TEXT,
    created_at  TEXT NOT NULL,
    reason      TEXT NOT NULL,
    PRIMARY KEY (patient_id, epoch)
);
-- The epoch whose key sealed a record version; no row: epoch 1. Kept
-- beside `records` so the index's MAC chain (`index_anchor`) is unchanged.
CREATE TABLE IF NOT EXISTS record_epochs (
    record_id TEXT NOT NULL,
    version   INTEGER NOT NULL,
    epoch     INTEGER NOT NULL,
    PRIMARY KEY (record_id, version)
) WITHOUT ROWID;
-- Each epoch's key sealed (ECIES, secp256k1) to each holder's public key:
-- the patient, their grantees and delegates, an emergency provider, the
-- research engine for a consent. No key bytes in clear.
CREATE TABLE IF NOT EXISTS wrapped_data_keys (
    patient_id     TEXT NOT NULL,
    epoch          INTEGER NOT NULL,
    holder_address TEXT NOT NULL,
    holder_name    TEXT,
    role           TEXT NOT NULL,
    public_key     BLOB NOT NULL,
    sealed         BLOB NOT NULL,
    created_at     TEXT NOT NULL,
    PRIMARY KEY (patient_id, epoch, holder_address)
);

-- Named Ethereum accounts (secp256k1): the key only wrapped by the keystore.
CREATE TABLE IF NOT EXISTS accounts (
    name        TEXT PRIMARY KEY,
    address     TEXT NOT NULL UNIQUE,
    wrapped_key BLOB NOT NULL,
    kek_id      TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    -- Its compressed SEC1 public key (hex), what data keys are sealed to;
    -- back-filled when an account of an older directory is loaded.
    public_key  TEXT
);

-- An account's TOTP secret (RFC 6238), wrapped by the
-- keystore like the account key; last_step is the last time step accepted,
-- so that a code is never accepted twice.
CREATE TABLE IF NOT EXISTS second_factors (
    account        TEXT PRIMARY KEY REFERENCES accounts(name),
    wrapped_secret BLOB NOT NULL,
    kek_id         TEXT NOT NULL,
    enrolled_at    TEXT NOT NULL,
    last_step      INTEGER NOT NULL DEFAULT 0
);

-- Passkeys (WebAuthn credentials) of the accounts that sign in on the web
-- page: the credential as the server's ceremony stored it (public key,
-- algorithm, signature counter; no secret), keys/passkeys.rs.
CREATE TABLE IF NOT EXISTS passkeys (
    credential_id TEXT PRIMARY KEY,
    account       TEXT NOT NULL REFERENCES accounts(name),
    credential    TEXT NOT NULL,
    label         TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    last_used_at  TEXT
);
CREATE INDEX IF NOT EXISTS passkeys_by_account ON passkeys (account);

-- The one-time code that authorises registering a passkey for an account:
-- only its SHA-256 digest, until expires_at (Unix seconds); used once.
CREATE TABLE IF NOT EXISTS passkey_invites (
    account     TEXT PRIMARY KEY REFERENCES accounts(name),
    code_digest BLOB NOT NULL,
    expires_at  INTEGER NOT NULL
);

-- The columnar projection: the current version of each resource, flattened.
-- A patient's direct identifiers (names, full birth date, street address,
-- city, full ZIP, phone, e-mail, SSN, MRN) are BLOBs, each sealed with the
-- patient's data key (records/projection/sealed.rs), so erasing the key
-- makes them unreadable too. What research reads stays plaintext: gender,
-- race, ethnicity, state, and the Safe Harbor generalizations birth_year
-- (ages over 89 collapsed) and zip3 (000 for the restricted prefixes).
CREATE TABLE IF NOT EXISTS proj_patients (
    patient_id   TEXT PRIMARY KEY,
    family_name  BLOB,
    given_name   BLOB,
    birth_date   BLOB,
    birth_year   INTEGER,
    gender       TEXT,
    race         TEXT,
    ethnicity    TEXT,
    address_line BLOB,
    city         BLOB,
    state        TEXT,
    zip          BLOB,
    zip3         TEXT,
    phone        BLOB,
    email        BLOB,
    ssn          BLOB,
    mrn          BLOB
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
-- Geography (engine/src/access/geo.rs): each record's jurisdiction, a side
-- table so the sealed index rows of `records` are unchanged (a record
-- without a row carries the deployment default), and the deployment's
-- public policy.
CREATE TABLE IF NOT EXISTS record_jurisdictions (
    record_id    TEXT PRIMARY KEY,
    jurisdiction TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS geo_policy (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    text TEXT NOT NULL
);
"#;

/// Opens (creating if needed) the metadata database at `path`. A database
/// of another schema version is refused before anything in it is changed.
pub fn open(path: &Path) -> Result<Connection> {
    let mut conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    // Every explicit transaction here writes: it takes the write lock when
    // it begins (waiting for it under the busy timeout), not at its first
    // write, where another connection's commit since its first read would
    // fail it at once with "database is locked" (WAL's stale snapshot).
    conn.set_transaction_behavior(rusqlite::TransactionBehavior::Immediate);
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: a committed audit entry or debit survives power loss.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Freed pages are zeroed: a shredded data key leaves no copy in the file.
    conn.pragma_update(None, "secure_delete", "ON")?;
    // A 64 MiB page cache (SQLite's default is 2 MiB): ingest's lookups
    // and the seal chains' verification walk a database of hundreds of MB,
    // and each page read past the cache is a `pread` (docs/BENCHMARKS.md,
    // "The demo under a minute"). Pages are allocated only as they are used.
    conn.pragma_update(None, "cache_size", -64 * 1024)?;
    if let Some(found) = schema_version(&conn)? {
        check_version(path, &found)?;
    }
    conn.execute_batch(SCHEMA)?;
    // Directories from before accounts had public keys.
    let has_public_key: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM pragma_table_info('accounts') WHERE name = 'public_key')",
        [],
        |r| r.get(0),
    )?;
    if !has_public_key {
        // Another process opening the same file may have added it first.
        match conn.execute("ALTER TABLE accounts ADD COLUMN public_key TEXT", []) {
            Err(e) if e.to_string().contains("duplicate column") => {}
            other => {
                other?;
            }
        }
    }
    // OR IGNORE: two processes may create the same new file at once.
    conn.execute(
        "INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?1)",
        [SCHEMA_VERSION.to_string()],
    )?;
    Ok(conn)
}

/// The version a database says it has; `None` for a new, empty one.
fn schema_version(conn: &Connection) -> Result<Option<String>> {
    let has_meta: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta')",
        [],
        |r| r.get(0),
    )?;
    if !has_meta {
        return Ok(None);
    }
    Ok(conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .optional()?)
}

/// Refuses any version but this build's. Version 1 cannot be converted
/// here: sealing its plaintext identifiers needs every patient's data key,
/// which only an unlocked vault has, so the operator re-ingests instead.
fn check_version(path: &Path, found: &str) -> Result<()> {
    if found == SCHEMA_VERSION.to_string() {
        return Ok(());
    }
    let why = if found == "1" {
        " (its projection holds patients' identifiers in plaintext; version 2 keeps them \
         encrypted and cannot convert the file in place): ingest the FHIR bundles again into \
         a new data directory (--data-dir), then wipe this one"
    } else {
        ": use the build of cohort that wrote it"
    };
    Err(crate::Error::Invalid(format!(
        "{} has schema version {found}; this build of cohort reads version {SCHEMA_VERSION}{why}",
        path.display()
    )))
}

/// Runs `f` holding the database's write lock: in a new `BEGIN IMMEDIATE`
/// transaction, or in the caller's if one is open. A key wrapped in `f`
/// and stored in `f` then cannot straddle a key rotation's switch of KEK,
/// which takes the same lock (`crate::rotation`).
pub fn with_write_lock<T>(conn: &Connection, f: impl FnOnce() -> Result<T>) -> Result<T> {
    if !conn.is_autocommit() {
        return f();
    }
    let tx = rusqlite::Transaction::new_unchecked(conn, rusqlite::TransactionBehavior::Immediate)?;
    let out = f()?;
    tx.commit()?;
    Ok(out)
}

/// Whether `conn` holds table `name` (tables a module creates on first use).
pub fn table_exists(conn: &Connection, name: &str) -> Result<bool> {
    Ok(conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1)",
        [name],
        |r| r.get(0),
    )?)
}

/// Now, as the RFC 3339 UTC text every table stores.
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transaction_holds_the_write_lock_from_its_start() {
        // Deferred, it would take the lock only at its first write, and a
        // commit by another connection after its first read would fail that
        // write at once (seen as "database is locked" under concurrency).
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("cohort.db");
        let (a, b) = (open(&path).unwrap(), open(&path).unwrap());
        b.busy_timeout(std::time::Duration::ZERO).unwrap();
        let tx = a.unchecked_transaction().unwrap();
        let _: i64 = tx
            .query_row("SELECT COUNT(*) FROM meta", [], |r| r.get(0))
            .unwrap();
        let refused = b.execute_batch("BEGIN IMMEDIATE").unwrap_err();
        assert!(refused.to_string().contains("locked"), "{refused}");
        tx.commit().unwrap();
        b.execute_batch("BEGIN IMMEDIATE; COMMIT").unwrap();
    }

    #[test]
    fn a_version_1_database_is_refused_untouched() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("cohort.db");
        {
            let old = Connection::open(&path).unwrap();
            old.execute_batch(
                "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
                 INSERT INTO meta VALUES ('schema_version', '1');
                 CREATE TABLE proj_patients (patient_id TEXT PRIMARY KEY, ssn TEXT);",
            )
            .unwrap();
        }
        let err = open(&path).unwrap_err().to_string();
        assert!(err.contains("schema version 1"), "{err}");
        assert!(err.contains("ingest the FHIR bundles again"), "{err}");
        let old = Connection::open(&path).unwrap();
        let tables: i64 = old
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(tables, 2, "nothing was added to the old file");
    }

    #[test]
    fn a_new_database_gets_this_version_and_reopens() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("cohort.db");
        drop(open(&path).unwrap());
        let conn = open(&path).unwrap();
        assert_eq!(
            schema_version(&conn).unwrap(),
            Some(SCHEMA_VERSION.to_string())
        );
    }
}
