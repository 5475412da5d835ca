//! The query journal: each budgeted query's progress, written before each
//! step it records, so that a process killed at any point leaves enough to
//! finish or undo the step on restart.
//!
//! ```text
//! reserving -> reserved -> answered -> committed -> delivered
//!          \-> (refused: the row is removed)   \-> released
//! ```
//!
//! `answered` holds the noisy answer and its contributors' shares before the
//! debit is committed, so a restart commits exactly that answer; a repeated
//! query id is answered from the journal, never with fresh noise. A query in
//! flight holds an exclusive `flock` on its lock file; recovery touches only
//! queries whose lock it can take, i.e. whose process is gone.

use std::fs::File;
use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};

use crate::{Error, Result};

pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS research_studies (
    study_id INTEGER NOT NULL, contract TEXT NOT NULL, title TEXT NOT NULL, file TEXT NOT NULL,
    researcher TEXT NOT NULL, proposed_at TEXT NOT NULL,
    PRIMARY KEY (contract, study_id)
);
CREATE TABLE IF NOT EXISTS research_patients (
    patient_id TEXT PRIMARY KEY, account TEXT NOT NULL UNIQUE, address TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS research_queries (
    ledger_id TEXT PRIMARY KEY, study_id INTEGER NOT NULL, query_id TEXT NOT NULL,
    actor TEXT NOT NULL, sql TEXT NOT NULL, state TEXT NOT NULL, cost TEXT NOT NULL,
    primary_units TEXT NOT NULL, delta_units TEXT NOT NULL,
    answer TEXT, result_hash TEXT, contributors_root TEXT, fee TEXT,
    created_at TEXT NOT NULL, updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS research_queries_state ON research_queries (state);
CREATE TABLE IF NOT EXISTS research_shares (
    ledger_id TEXT NOT NULL, address TEXT NOT NULL, amount TEXT NOT NULL,
    PRIMARY KEY (ledger_id, address)
);
CREATE INDEX IF NOT EXISTS research_shares_address ON research_shares (address);
CREATE TABLE IF NOT EXISTS research_releases (
    extract_hash TEXT PRIMARY KEY, study_id INTEGER NOT NULL, path TEXT NOT NULL,
    k INTEGER NOT NULL, l INTEGER NOT NULL, rows INTEGER NOT NULL, report TEXT NOT NULL,
    actor TEXT NOT NULL, created_at TEXT NOT NULL
);
";

/// One journal row.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub ledger_id: String,
    pub study_id: u64,
    pub query_id: String,
    pub sql: String,
    pub state: String,
    pub answer: Option<String>,
    pub result_hash: Option<String>,
    pub contributors_root: Option<String>,
    pub fee: Option<String>,
}

const COLUMNS: &str =
    "ledger_id, study_id, query_id, sql, state, answer, result_hash, contributors_root, fee";

fn entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<Entry> {
    Ok(Entry {
        ledger_id: r.get(0)?,
        study_id: r.get::<_, i64>(1)? as u64,
        query_id: r.get(2)?,
        sql: r.get(3)?,
        state: r.get(4)?,
        answer: r.get(5)?,
        result_hash: r.get(6)?,
        contributors_root: r.get(7)?,
        fee: r.get(8)?,
    })
}

pub(crate) fn get(conn: &Connection, ledger_id: &str) -> Result<Option<Entry>> {
    Ok(conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM research_queries WHERE ledger_id = ?1"),
            [ledger_id],
            entry,
        )
        .optional()?)
}

/// Entries a crash may have left part-way.
pub(crate) fn unfinished(conn: &Connection) -> Result<Vec<Entry>> {
    let mut s = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM research_queries WHERE state IN ('reserving', 'reserved', 'answered')"
    ))?;
    let rows = s.query_map([], entry)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Records the intent to reserve, before the reservation is sent.
#[allow(clippy::too_many_arguments)]
pub(crate) fn begin(
    conn: &Connection,
    ledger_id: &str,
    study_id: u64,
    query_id: &str,
    actor: &str,
    sql: &str,
    cost: &str,
    primary_units: u128,
    delta_units: u128,
) -> Result<()> {
    let now = crate::store::now();
    conn.execute(
        "INSERT INTO research_queries (ledger_id, study_id, query_id, actor, sql, state, cost,
            primary_units, delta_units, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, 'reserving', ?6, ?7, ?8, ?9, ?9)",
        params![
            ledger_id,
            study_id as i64,
            query_id,
            actor,
            sql,
            cost,
            primary_units.to_string(),
            delta_units.to_string(),
            now
        ],
    )?;
    Ok(())
}

pub(crate) fn set_state(conn: &Connection, ledger_id: &str, state: &str) -> Result<()> {
    conn.execute(
        "UPDATE research_queries SET state = ?2, updated_at = ?3 WHERE ledger_id = ?1",
        params![ledger_id, state, crate::store::now()],
    )?;
    Ok(())
}

pub(crate) fn remove(conn: &Connection, ledger_id: &str) -> Result<()> {
    conn.execute(
        "DELETE FROM research_queries WHERE ledger_id = ?1",
        [ledger_id],
    )?;
    Ok(())
}

/// Stores the answer and the contributors' shares, in one transaction,
/// before the debit is committed.
pub(crate) fn answered(
    conn: &Connection,
    ledger_id: &str,
    answer: &str,
    result_hash: &str,
    root: &str,
    fee: &str,
    shares: &[(String, String)],
) -> Result<()> {
    let tx = conn.unchecked_transaction()?;
    tx.execute(
        "UPDATE research_queries SET state = 'answered', answer = ?2, result_hash = ?3,
            contributors_root = ?4, fee = ?5, updated_at = ?6 WHERE ledger_id = ?1",
        params![
            ledger_id,
            answer,
            result_hash,
            root,
            fee,
            crate::store::now()
        ],
    )?;
    {
        let mut insert = tx.prepare(
            "INSERT OR REPLACE INTO research_shares (ledger_id, address, amount) VALUES (?1, ?2, ?3)",
        )?;
        for (address, amount) in shares {
            insert.execute(params![ledger_id, address, amount])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// The shares of a query: (address, wei).
pub(crate) fn shares(conn: &Connection, ledger_id: &str) -> Result<Vec<(String, String)>> {
    let mut s = conn.prepare("SELECT address, amount FROM research_shares WHERE ledger_id = ?1")?;
    let rows = s.query_map([ledger_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// An exclusive lock on one query, held while it is in flight.
pub(crate) struct QueryLock {
    _file: File,
}

impl QueryLock {
    /// The lock, or `None` when another live process (or task) holds it.
    pub(crate) fn try_acquire(root: &Path, ledger_id: &str) -> Result<Option<QueryLock>> {
        let dir = root.join("research").join("locks");
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("creating", &dir, e))?;
        let path = dir.join(format!("{}.lock", ledger_id.trim_start_matches("0x")));
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io("opening", &path, e))?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(Some(QueryLock { _file: file })),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
            Err(e) => Err(Error::io("locking", &path, e.into())),
        }
    }
}
