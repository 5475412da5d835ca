//! The query journal: each budgeted query's progress, written before each
//! step it records, so that a process killed at any point leaves enough to
//! finish the step on restart.
//!
//! ```text
//! reserving -> reserved -> executing -> answered -> committed -> delivered
//!          \            \           \-> failed   -/
//!           \-> (refused: the row is removed)
//!                        \-> released (only before execution starts)
//! ```
//!
//! Before `executing` no row of the view has been read, so a reservation
//! left by a crash is released. From `executing` on, every ending is
//! charged: a stored answer (`answered`) or the fixed failure (`failed`,
//! also what recovery records for a query whose process died while it ran)
//! is committed with its salted result hash, never released. A repeated
//! query id is answered from the journal, never with fresh noise. A query
//! in flight holds an exclusive `flock` on its lock file; recovery touches
//! only queries whose lock it can take, i.e. whose process is gone.

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
    answer TEXT, result_hash TEXT, members_root TEXT, fee TEXT,
    created_at TEXT NOT NULL, updated_at TEXT NOT NULL,
    salt TEXT, members INTEGER, failure TEXT, deadline_ms INTEGER, ran_ms INTEGER, share TEXT
);
CREATE INDEX IF NOT EXISTS research_queries_state ON research_queries (state);
CREATE TABLE IF NOT EXISTS research_member_sets (
    members_root TEXT NOT NULL, address TEXT NOT NULL,
    PRIMARY KEY (members_root, address)
);
CREATE INDEX IF NOT EXISTS research_member_sets_address ON research_member_sets (address);
CREATE TABLE IF NOT EXISTS research_releases (
    extract_hash TEXT PRIMARY KEY, study_id INTEGER NOT NULL, path TEXT NOT NULL,
    k INTEGER NOT NULL, l INTEGER NOT NULL, rows INTEGER NOT NULL, report TEXT NOT NULL,
    actor TEXT NOT NULL, created_at TEXT NOT NULL, view_digest TEXT
);
";

/// Brings a journal written before queries were charged for every ending
/// (and before extracts were kept per consenting set) to this schema.
pub(crate) fn migrate(conn: &Connection) -> Result<()> {
    let columns = |table: &str| -> Result<Vec<String>> {
        let mut s = conn.prepare(&format!("PRAGMA table_info({table})"))?;
        let names = s.query_map([], |r| r.get::<_, String>(1))?;
        Ok(names.collect::<rusqlite::Result<_>>()?)
    };
    let queries = columns("research_queries")?;
    if queries.iter().any(|c| c == "contributors_root") {
        conn.execute_batch(
            "ALTER TABLE research_queries RENAME COLUMN contributors_root TO members_root",
        )?;
    }
    for (column, kind) in [
        ("salt", "TEXT"),
        ("members", "INTEGER"),
        ("failure", "TEXT"),
        ("deadline_ms", "INTEGER"),
        ("ran_ms", "INTEGER"),
        ("share", "TEXT"),
    ] {
        if !queries.iter().any(|c| c == column) {
            conn.execute_batch(&format!(
                "ALTER TABLE research_queries ADD COLUMN {column} {kind}"
            ))?;
        }
    }
    if !columns("research_releases")?
        .iter()
        .any(|c| c == "view_digest")
    {
        conn.execute_batch("ALTER TABLE research_releases ADD COLUMN view_digest TEXT")?;
    }
    Ok(())
}

/// One journal row.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub ledger_id: String,
    pub study_id: u64,
    pub query_id: String,
    pub sql: String,
    pub state: String,
    pub cost: String,
    pub answer: Option<String>,
    pub result_hash: Option<String>,
    pub salt: Option<String>,
    pub deadline_ms: Option<u64>,
    /// How a failed query ended (operator only); `None` for an answer.
    pub failure: Option<String>,
}

const COLUMNS: &str = "ledger_id, study_id, query_id, sql, state, cost, answer, result_hash, salt, \
     deadline_ms, failure";

fn entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<Entry> {
    Ok(Entry {
        ledger_id: r.get(0)?,
        study_id: r.get::<_, i64>(1)? as u64,
        query_id: r.get(2)?,
        sql: r.get(3)?,
        state: r.get(4)?,
        cost: r.get(5)?,
        answer: r.get(6)?,
        result_hash: r.get(7)?,
        salt: r.get(8)?,
        deadline_ms: r.get::<_, Option<i64>>(9)?.map(|d| d as u64),
        failure: r.get(10)?,
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
        "SELECT {COLUMNS} FROM research_queries
         WHERE state IN ('reserving', 'reserved', 'executing', 'answered', 'failed')"
    ))?;
    let rows = s.query_map([], entry)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// What a query commits to before it is reserved: its cost, and the
/// consenting set whose members share its fee (stored once per distinct
/// set, named by its Merkle root, however many queries it pays for).
pub(crate) struct Intent<'a> {
    pub ledger_id: &'a str,
    pub study_id: u64,
    pub query_id: &'a str,
    pub actor: &'a str,
    pub sql: &'a str,
    pub cost: &'a str,
    pub primary_units: u128,
    pub delta_units: u128,
    pub fee: &'a str,
    /// Each member's share (wei).
    pub share: &'a str,
    /// The members' addresses.
    pub members: &'a [String],
    pub members_root: &'a str,
    pub deadline_ms: Option<u64>,
}

/// Records the intent to reserve, before the reservation is sent.
pub(crate) fn begin(conn: &Connection, q: &Intent<'_>) -> Result<()> {
    let now = crate::storage::store::now();
    let tx = conn.unchecked_transaction()?;
    tx.execute(
        "INSERT INTO research_queries (ledger_id, study_id, query_id, actor, sql, state, cost,
            primary_units, delta_units, fee, members, members_root, deadline_ms, share, created_at,
            updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, 'reserving', ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?14)",
        params![
            q.ledger_id,
            q.study_id as i64,
            q.query_id,
            q.actor,
            q.sql,
            q.cost,
            q.primary_units.to_string(),
            q.delta_units.to_string(),
            q.fee,
            q.members.len() as i64,
            q.members_root,
            q.deadline_ms.map(|d| d as i64),
            q.share,
            now
        ],
    )?;
    let known: bool = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM research_member_sets WHERE members_root = ?1)",
        [q.members_root],
        |r| r.get(0),
    )?;
    if !known {
        let mut insert = tx.prepare(
            "INSERT OR IGNORE INTO research_member_sets (members_root, address) VALUES (?1, ?2)",
        )?;
        for address in q.members {
            insert.execute(params![q.members_root, address])?;
        }
    }
    tx.commit()?;
    Ok(())
}

pub(crate) fn set_state(conn: &Connection, ledger_id: &str, state: &str) -> Result<()> {
    conn.execute(
        "UPDATE research_queries SET state = ?2, updated_at = ?3 WHERE ledger_id = ?1",
        params![ledger_id, state, crate::storage::store::now()],
    )?;
    Ok(())
}

/// Removes a query the ledger refused to reserve (nothing was spent).
pub(crate) fn remove(conn: &Connection, ledger_id: &str) -> Result<()> {
    conn.execute(
        "DELETE FROM research_queries WHERE ledger_id = ?1",
        [ledger_id],
    )?;
    Ok(())
}

/// Stores the query's outcome (the answer, or the fixed failure, as the
/// exact text its salted hash commits to) before the debit is committed.
/// `failure` names how a failed query ended, and `ran` how long its work
/// took: the operator's, to size a study's deadline, never the researcher's.
pub(crate) fn outcome(
    conn: &Connection,
    ledger_id: &str,
    text: &str,
    salt: &str,
    result_hash: &str,
    failure: Option<&str>,
    ran: Option<std::time::Duration>,
) -> Result<()> {
    conn.execute(
        "UPDATE research_queries SET state = ?2, answer = ?3, salt = ?4, result_hash = ?5,
            failure = ?6, updated_at = ?7, ran_ms = COALESCE(?8, ran_ms) WHERE ledger_id = ?1",
        params![
            ledger_id,
            if failure.is_some() {
                "failed"
            } else {
                "answered"
            },
            text,
            salt,
            result_hash,
            failure,
            crate::storage::store::now(),
            ran.map(|r| r.as_millis() as i64)
        ],
    )?;
    Ok(())
}

/// The members of a query's consenting set.
pub(crate) fn members(conn: &Connection, ledger_id: &str) -> Result<Vec<String>> {
    let mut s = conn.prepare(
        "SELECT m.address FROM research_member_sets m
         JOIN research_queries q ON q.members_root = m.members_root WHERE q.ledger_id = ?1",
    )?;
    let rows = s.query_map([ledger_id], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The consenting set a query committed to: its Merkle root and its size.
pub(crate) fn members_root(conn: &Connection, ledger_id: &str) -> Result<(String, u64)> {
    Ok(conn.query_row(
        "SELECT COALESCE(members_root, ''), COALESCE(members, 0) FROM research_queries
         WHERE ledger_id = ?1",
        [ledger_id],
        |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)),
    )?)
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
