//! The event follower: mirrors the contracts' roles, grants, emergencies,
//! studies, approvals, consents, budget moves (with the fee each query
//! held and paid, and the consenting set it was paid to), claims, shared
//! encrypted values and record accesses into SQLite tables (`ledger_*`),
//! so that the engine can read them without asking the chain.
//!
//! A mirror written by an earlier version, whose `ledger_budget_events`
//! still has `contributors_root` and no `members`, is migrated in place by
//! [`Follower::install`].
//!
//! Each batch of blocks is applied in one SQLite transaction together with
//! the follower's position, so a restart resumes exactly after the last
//! block applied: nothing is skipped and nothing applied twice. Only
//! blocks with the configured number of confirmations are read (1: the
//! head itself, right for the embedded chain; more on a network that can
//! reorganise). A processed block whose hash later changes is reported as
//! [`Error::Reorg`], never silently mirrored twice.

use alloy::primitives::{Address, B256, U256};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use crate::client::Client;
use crate::contracts::{
    AppointmentStatus, Appointments, CohortAccess, Event, PatientRecords, ResearchStudy, Role,
};
use crate::error::{Error, Result};
use crate::ledger::LogQuery;

/// Blocks read per batch.
pub const BATCH_BLOCKS: u64 = 2_000;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS ledger_follower (
    id INTEGER PRIMARY KEY CHECK (id = 1), chain_id INTEGER NOT NULL, contracts TEXT NOT NULL,
    block INTEGER NOT NULL, block_hash BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS ledger_roles (
    role TEXT NOT NULL, account TEXT NOT NULL, active INTEGER NOT NULL, block INTEGER NOT NULL,
    PRIMARY KEY (role, account)
);
CREATE TABLE IF NOT EXISTS ledger_grants (
    patient TEXT NOT NULL, provider TEXT NOT NULL, level INTEGER NOT NULL, expires_at INTEGER NOT NULL,
    granted_by TEXT NOT NULL, active INTEGER NOT NULL, block INTEGER NOT NULL,
    purposes INTEGER NOT NULL DEFAULT 1, kinds INTEGER NOT NULL DEFAULT 4294967295,
    PRIMARY KEY (patient, provider)
);
CREATE TABLE IF NOT EXISTS ledger_delegations (
    patient TEXT NOT NULL, delegate TEXT NOT NULL, max_level INTEGER NOT NULL, expires_at INTEGER NOT NULL,
    active INTEGER NOT NULL, block INTEGER NOT NULL,
    PRIMARY KEY (patient, delegate)
);
CREATE TABLE IF NOT EXISTS ledger_record_reads (
    block INTEGER NOT NULL, log_index INTEGER NOT NULL, patient TEXT NOT NULL, accessor TEXT NOT NULL,
    purpose INTEGER NOT NULL, emergency INTEGER NOT NULL, records INTEGER NOT NULL, at INTEGER,
    PRIMARY KEY (block, log_index)
);
CREATE TABLE IF NOT EXISTS ledger_anchors (
    batch INTEGER PRIMARY KEY, root TEXT NOT NULL, count INTEGER NOT NULL, by_account TEXT NOT NULL,
    block INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS ledger_emergencies (
    id INTEGER PRIMARY KEY, patient TEXT NOT NULL, provider TEXT NOT NULL, reason_hash TEXT NOT NULL,
    expires_at INTEGER NOT NULL, review TEXT NOT NULL, reviewer TEXT, block INTEGER NOT NULL,
    ended_by TEXT, started_block INTEGER
);
CREATE TABLE IF NOT EXISTS ledger_studies (
    study_id INTEGER PRIMARY KEY, researcher TEXT NOT NULL, purpose_hash TEXT NOT NULL,
    scope_hash TEXT NOT NULL, kind TEXT NOT NULL, budget TEXT NOT NULL, delta_budget TEXT NOT NULL,
    escrow TEXT NOT NULL, status TEXT NOT NULL, approvals INTEGER NOT NULL, ends_at INTEGER,
    block INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS ledger_approvals (
    study_id INTEGER NOT NULL, steward TEXT NOT NULL, approvals INTEGER NOT NULL, block INTEGER NOT NULL,
    PRIMARY KEY (study_id, steward)
);
CREATE TABLE IF NOT EXISTS ledger_consents (
    study_id INTEGER NOT NULL, patient TEXT NOT NULL, purposes TEXT NOT NULL, expires_at INTEGER NOT NULL,
    active INTEGER NOT NULL, given_block INTEGER NOT NULL, withdrawn_block INTEGER,
    PRIMARY KEY (study_id, patient)
);
CREATE TABLE IF NOT EXISTS ledger_budget_events (
    block INTEGER NOT NULL, log_index INTEGER NOT NULL, tx_hash TEXT NOT NULL, study_id INTEGER NOT NULL,
    query_id TEXT NOT NULL, kind TEXT NOT NULL, cost TEXT NOT NULL, delta_cost TEXT NOT NULL,
    result_hash TEXT, members_root TEXT, members INTEGER, fee TEXT,
    PRIMARY KEY (block, log_index)
);
CREATE TABLE IF NOT EXISTS ledger_shared_values (
    study_id INTEGER NOT NULL, column_hash TEXT NOT NULL, patient TEXT NOT NULL, value_hash TEXT NOT NULL,
    block INTEGER NOT NULL,
    PRIMARY KEY (study_id, column_hash, patient)
);
CREATE TABLE IF NOT EXISTS ledger_claims (
    block INTEGER NOT NULL, log_index INTEGER NOT NULL, study_id INTEGER NOT NULL, query_id TEXT NOT NULL,
    patient TEXT NOT NULL, amount TEXT NOT NULL,
    PRIMARY KEY (block, log_index)
);
CREATE TABLE IF NOT EXISTS ledger_releases (
    extract_hash TEXT PRIMARY KEY, study_id INTEGER NOT NULL, k INTEGER NOT NULL, l INTEGER NOT NULL,
    rows INTEGER NOT NULL, block INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS ledger_log_anchors (
    log INTEGER NOT NULL, entries INTEGER NOT NULL, head TEXT NOT NULL, by_account TEXT NOT NULL,
    block INTEGER NOT NULL, PRIMARY KEY (log, entries)
);
CREATE TABLE IF NOT EXISTS ledger_appointments (
    id INTEGER PRIMARY KEY, patient TEXT NOT NULL, provider TEXT NOT NULL, insurer TEXT,
    start INTEGER NOT NULL, booked_at INTEGER NOT NULL, confirm_by INTEGER NOT NULL,
    marked_at INTEGER, visit_type TEXT NOT NULL, reason_hash TEXT NOT NULL, fee TEXT NOT NULL,
    insurer_share TEXT NOT NULL, copay TEXT NOT NULL, deposit TEXT NOT NULL, paid TEXT NOT NULL,
    held TEXT NOT NULL, refunded TEXT NOT NULL, to_provider TEXT NOT NULL,
    insurer_returned TEXT NOT NULL, insurer_paid TEXT NOT NULL, policy_version INTEGER NOT NULL,
    status TEXT NOT NULL, block INTEGER NOT NULL, updated_block INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS ledger_appointments_provider ON ledger_appointments (provider, start);
CREATE INDEX IF NOT EXISTS ledger_appointments_patient ON ledger_appointments (patient, start);
CREATE INDEX IF NOT EXISTS ledger_appointments_status ON ledger_appointments (status, start);
CREATE TABLE IF NOT EXISTS ledger_appointment_events (
    block INTEGER NOT NULL, log_index INTEGER NOT NULL, id INTEGER NOT NULL, status TEXT NOT NULL,
    by_account TEXT NOT NULL, to_patient TEXT NOT NULL, to_provider TEXT NOT NULL,
    to_insurer TEXT NOT NULL, from_insurer TEXT NOT NULL, at INTEGER NOT NULL,
    PRIMARY KEY (block, log_index)
);
CREATE TABLE IF NOT EXISTS ledger_provider_hours (
    provider TEXT PRIMARY KEY, utc_offset INTEGER NOT NULL, slot_seconds INTEGER NOT NULL,
    opens TEXT NOT NULL, closes TEXT NOT NULL, block INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS ledger_closed_days (
    provider TEXT NOT NULL, day INTEGER NOT NULL, PRIMARY KEY (provider, day)
);
CREATE TABLE IF NOT EXISTS ledger_visit_types (
    provider TEXT NOT NULL, visit_type TEXT NOT NULL, fee TEXT NOT NULL, block INTEGER NOT NULL,
    PRIMARY KEY (provider, visit_type)
);
CREATE TABLE IF NOT EXISTS ledger_appointment_policies (
    provider TEXT NOT NULL, version INTEGER NOT NULL, policy TEXT NOT NULL, block INTEGER NOT NULL,
    PRIMARY KEY (provider, version)
);
CREATE TABLE IF NOT EXISTS ledger_coverage (
    patient TEXT NOT NULL, provider TEXT NOT NULL, visit_type TEXT NOT NULL, insurer TEXT NOT NULL,
    share_bps INTEGER NOT NULL, expires_at INTEGER NOT NULL, policy_hash TEXT NOT NULL,
    active INTEGER NOT NULL, block INTEGER NOT NULL,
    PRIMARY KEY (patient, provider, visit_type)
);
CREATE TABLE IF NOT EXISTS ledger_insurer_funds (
    insurer TEXT PRIMARY KEY, balance TEXT NOT NULL, block INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS ledger_record_access (
    block INTEGER NOT NULL, log_index INTEGER NOT NULL, record_id TEXT NOT NULL, patient TEXT NOT NULL,
    accessor TEXT NOT NULL, version INTEGER NOT NULL, emergency INTEGER NOT NULL,
    PRIMARY KEY (block, log_index)
);
";

/// Where the follower stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Position {
    /// The chain it follows.
    pub chain_id: u64,
    /// The last block applied.
    pub block: u64,
    /// That block's hash.
    pub block_hash: B256,
}

/// What one [`Follower::sync`] did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SyncReport {
    /// The first block read (none if already up to date).
    pub from_block: Option<u64>,
    /// The last block applied.
    pub to_block: Option<u64>,
    /// Events mirrored.
    pub events: usize,
    /// The chain's head when it started.
    pub head: u64,
    /// Blocks above the applied ones still waiting for confirmations.
    pub unconfirmed: u64,
}

/// Mirrors a deployment's events into SQLite.
pub struct Follower {
    client: Client,
    confirmations: u64,
}

impl Follower {
    /// A follower of `client`'s contracts that applies a block once it has
    /// `confirmations` (at least 1: the block itself).
    pub fn new(client: Client, confirmations: u64) -> Result<Follower> {
        if confirmations == 0 {
            return Err(Error::Config(
                "confirmations must be at least 1 (the block itself)".into(),
            ));
        }
        Ok(Follower {
            client,
            confirmations,
        })
    }

    /// Creates the mirror tables in `conn` if they are missing, and
    /// migrates tables an earlier version created.
    pub fn install(conn: &Connection) -> Result<()> {
        conn.execute_batch(SCHEMA)?;
        migrate_budget_events(conn)?;
        add_columns(
            conn,
            "ledger_grants",
            &[
                ("purposes", "INTEGER NOT NULL DEFAULT 1"),
                ("kinds", "INTEGER NOT NULL DEFAULT 4294967295"),
            ],
        )?;
        add_columns(
            conn,
            "ledger_emergencies",
            &[("ended_by", "TEXT"), ("started_block", "INTEGER")],
        )?;
        Ok(())
    }

    /// The follower's position in `conn`, if it has applied anything.
    pub fn position(conn: &Connection) -> Result<Option<Position>> {
        Follower::install(conn)?;
        Ok(conn
            .query_row(
                "SELECT chain_id, block, block_hash FROM ledger_follower WHERE id = 1",
                [],
                |r| {
                    Ok(Position {
                        chain_id: r.get::<_, i64>(0)? as u64,
                        block: r.get::<_, i64>(1)? as u64,
                        block_hash: B256::from(r.get::<_, [u8; 32]>(2)?),
                    })
                },
            )
            .optional()?)
    }

    /// Applies every confirmed block after the position.
    pub async fn sync(&self, conn: &mut Connection) -> Result<SyncReport> {
        Follower::install(conn)?;
        let ledger = self.client.ledger();
        let contracts = *self.client.contracts();
        let chain_id = ledger.chain_id().await?;
        let head = ledger.block_number().await?;
        let mut report = SyncReport {
            head,
            ..SyncReport::default()
        };
        let position = Follower::position(conn)?;
        let contracts_json = serde_json::to_string(&contracts).expect("addresses serialise");
        let mut next = match &position {
            Some(p) => {
                if p.chain_id != chain_id {
                    return Err(Error::Config(format!(
                        "the mirror follows chain {}, but the ledger is chain {chain_id}",
                        p.chain_id
                    )));
                }
                let stored: String = conn.query_row(
                    "SELECT contracts FROM ledger_follower WHERE id = 1",
                    [],
                    |r| r.get(0),
                )?;
                if stored != contracts_json {
                    return Err(Error::Config(
                        "the mirror follows another deployment of the contracts".into(),
                    ));
                }
                let found = ledger.block_hash(p.block).await?.unwrap_or(B256::ZERO);
                if found != p.block_hash {
                    return Err(Error::Reorg {
                        number: p.block,
                        stored: p.block_hash,
                        found,
                    });
                }
                p.block + 1
            }
            None => contracts.deployed_at,
        };
        let Some(safe) = (head + 1).checked_sub(self.confirmations) else {
            report.unconfirmed = head + 1;
            return Ok(report);
        };
        report.unconfirmed = head - safe;
        while next <= safe {
            let to = (next + BATCH_BLOCKS - 1).min(safe);
            let logs = ledger
                .logs(&LogQuery {
                    from_block: next,
                    to_block: to,
                    addresses: contracts.addresses(),
                })
                .await?;
            let hash = ledger
                .block_hash(to)
                .await?
                .ok_or_else(|| Error::Rpc(format!("the node has no block {to}")))?;
            // Another process may have applied these blocks meanwhile: the
            // position is read again inside the write transaction (taken
            // IMMEDIATE, so no two appliers interleave) and, if it moved,
            // the fetched logs are dropped and the loop resumes after it.
            let db = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let applied: Option<i64> = db
                .query_row("SELECT block FROM ledger_follower WHERE id = 1", [], |r| {
                    r.get(0)
                })
                .optional()?;
            let expected = position_before(next, contracts.deployed_at);
            if applied != expected {
                drop(db);
                next = applied.map_or(contracts.deployed_at, |b| b as u64 + 1);
                continue;
            }
            for log in &logs {
                if let Some(event) = contracts.decode_event(&log.log) {
                    apply(&db, log.block_number, log.log_index, log.tx_hash, event)?;
                    report.events += 1;
                }
            }
            db.execute(
                "INSERT INTO ledger_follower (id, chain_id, contracts, block, block_hash)
                 VALUES (1, ?1, ?2, ?3, ?4)
                 ON CONFLICT (id) DO UPDATE SET block = excluded.block, block_hash = excluded.block_hash",
                params![chain_id as i64, contracts_json, to as i64, hash.as_slice()],
            )?;
            db.commit()?;
            report.from_block.get_or_insert(next);
            report.to_block = Some(to);
            next = to + 1;
        }
        Ok(report)
    }
}

/// The stored position that applying from `next` expects: the block
/// before it, or none when `next` is the deployment's first block.
fn position_before(next: u64, deployed_at: u64) -> Option<i64> {
    (next > deployed_at).then(|| next as i64 - 1)
}

/// Brings `ledger_budget_events` from its first column set (a
/// `contributors_root` and no `members`) to the current one; a no-op on a
/// current table.
fn migrate_budget_events(conn: &Connection) -> Result<()> {
    let columns: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_info('ledger_budget_events')")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let has = |name: &str| columns.iter().any(|c| c == name);
    if has("contributors_root") && !has("members_root") {
        conn.execute_batch(
            "ALTER TABLE ledger_budget_events RENAME COLUMN contributors_root TO members_root",
        )?;
    }
    if !has("members") {
        conn.execute_batch("ALTER TABLE ledger_budget_events ADD COLUMN members INTEGER")?;
    }
    Ok(())
}

/// Adds the columns a later version gave `table` (a no-op on a current one).
fn add_columns(conn: &Connection, table: &str, columns: &[(&str, &str)]) -> Result<()> {
    let have: Vec<String> = conn
        .prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for (name, kind) in columns {
        if !have.iter().any(|c| c == name) {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {name} {kind}"))?;
        }
    }
    Ok(())
}

fn hex(address: Address) -> String {
    format!("{address:#x}")
}

fn word(value: B256) -> String {
    format!("{value:#x}")
}

fn kind_name(kind: u8) -> &'static str {
    match kind {
        0 => "pure",
        1 => "approx",
        2 => "zcdp",
        _ => "unknown",
    }
}

/// Applies one event to the mirror.
fn apply(
    db: &rusqlite::Transaction<'_>,
    block: u64,
    log_index: u64,
    tx_hash: B256,
    event: Event,
) -> Result<()> {
    let block = block as i64;
    let index = log_index as i64;
    match event {
        Event::Access(e) => match e {
            CohortAccess::CohortAccessEvents::RoleGranted(g) => {
                let role = Role::from_id(g.role).map_or_else(|| word(g.role), |r| r.name().into());
                db.execute(
                    "INSERT INTO ledger_roles (role, account, active, block) VALUES (?1, ?2, 1, ?3)
                     ON CONFLICT (role, account) DO UPDATE SET active = 1, block = excluded.block",
                    params![role, hex(g.account), block],
                )?;
            }
            CohortAccess::CohortAccessEvents::RoleRevoked(r) => {
                let role = Role::from_id(r.role).map_or_else(|| word(r.role), |r| r.name().into());
                db.execute(
                    "UPDATE ledger_roles SET active = 0, block = ?3 WHERE role = ?1 AND account = ?2",
                    params![role, hex(r.account), block],
                )?;
            }
            CohortAccess::CohortAccessEvents::AccessGranted(g) => {
                db.execute(
                    "INSERT INTO ledger_grants (patient, provider, level, expires_at, granted_by, active, block, purposes, kinds)
                     VALUES (?1, ?2, ?3, ?4, ?5, 1, ?6, ?7, ?8)
                     ON CONFLICT (patient, provider) DO UPDATE SET level = excluded.level,
                        expires_at = excluded.expires_at, granted_by = excluded.granted_by,
                        active = 1, block = excluded.block, purposes = excluded.purposes,
                        kinds = excluded.kinds",
                    params![
                        hex(g.patient),
                        hex(g.provider),
                        g.level,
                        g.expiresAt as i64,
                        hex(g.grantedBy),
                        block,
                        g.purposes,
                        g.kinds as i64
                    ],
                )?;
            }
            CohortAccess::CohortAccessEvents::AccessRevoked(r) => {
                db.execute(
                    "UPDATE ledger_grants SET active = 0, block = ?3 WHERE patient = ?1 AND provider = ?2",
                    params![hex(r.patient), hex(r.provider), block],
                )?;
            }
            CohortAccess::CohortAccessEvents::EmergencyAccessed(e) => {
                db.execute(
                    "INSERT OR REPLACE INTO ledger_emergencies
                     (id, patient, provider, reason_hash, expires_at, review, reviewer, block, started_block)
                     VALUES (?1, ?2, ?3, ?4, ?5, 'pending', NULL, ?6, ?6)",
                    params![
                        e.id.to::<u64>() as i64,
                        hex(e.patient),
                        hex(e.provider),
                        word(e.reasonHash),
                        e.expiresAt as i64,
                        block
                    ],
                )?;
            }
            CohortAccess::CohortAccessEvents::EmergencyReviewed(r) => {
                db.execute(
                    "UPDATE ledger_emergencies SET review = ?2, reviewer = ?3 WHERE id = ?1",
                    params![
                        r.id.to::<u64>() as i64,
                        if r.justified {
                            "justified"
                        } else {
                            "unjustified"
                        },
                        hex(r.reviewer)
                    ],
                )?;
            }
            CohortAccess::CohortAccessEvents::EmergencyEnded(e) => {
                db.execute(
                    "UPDATE ledger_emergencies SET ended_by = ?2, block = ?3 WHERE id = ?1",
                    params![e.id.to::<u64>() as i64, hex(e.by), block],
                )?;
            }
            CohortAccess::CohortAccessEvents::DelegateSet(d) => {
                db.execute(
                    "INSERT OR REPLACE INTO ledger_delegations (patient, delegate, max_level, expires_at, active, block)
                     VALUES (?1, ?2, ?3, ?4, 1, ?5)",
                    params![hex(d.patient), hex(d.delegate), d.maxLevel, d.expiresAt as i64, block],
                )?;
            }
            CohortAccess::CohortAccessEvents::DelegateRevoked(d) => {
                db.execute(
                    "UPDATE ledger_delegations SET active = 0, block = ?3 WHERE patient = ?1 AND delegate = ?2",
                    params![hex(d.patient), hex(d.delegate), block],
                )?;
            }
            _ => {}
        },
        Event::Study(e) => match e {
            ResearchStudy::ResearchStudyEvents::StudyProposed(p) => {
                db.execute(
                    "INSERT OR REPLACE INTO ledger_studies (study_id, researcher, purpose_hash, scope_hash,
                        kind, budget, delta_budget, escrow, status, approvals, ends_at, block)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'proposed', 0, NULL, ?9)",
                    params![
                        p.studyId.to::<u64>() as i64,
                        hex(p.researcher),
                        word(p.purposeHash),
                        word(p.scopeHash),
                        kind_name(p.kind),
                        p.budget.to_string(),
                        p.deltaBudget.to_string(),
                        p.escrow.to_string(),
                        block
                    ],
                )?;
            }
            ResearchStudy::ResearchStudyEvents::StudyApprovalGiven(a) => {
                let id = a.studyId.to::<u64>() as i64;
                db.execute(
                    "INSERT OR REPLACE INTO ledger_approvals (study_id, steward, approvals, block)
                     VALUES (?1, ?2, ?3, ?4)",
                    params![id, hex(a.steward), a.approvals, block],
                )?;
                db.execute(
                    "UPDATE ledger_studies SET approvals = ?2, block = ?3 WHERE study_id = ?1",
                    params![id, a.approvals, block],
                )?;
            }
            ResearchStudy::ResearchStudyEvents::StudyApproved(a) => {
                db.execute(
                    "UPDATE ledger_studies SET status = 'approved', ends_at = ?2, block = ?3 WHERE study_id = ?1",
                    params![a.studyId.to::<u64>() as i64, a.endsAt as i64, block],
                )?;
            }
            ResearchStudy::ResearchStudyEvents::EscrowAdded(a) => {
                db.execute(
                    "UPDATE ledger_studies SET escrow = ?2, block = ?3 WHERE study_id = ?1",
                    params![a.studyId.to::<u64>() as i64, a.escrow.to_string(), block],
                )?;
            }
            ResearchStudy::ResearchStudyEvents::StudyClosed(c) => {
                db.execute(
                    "UPDATE ledger_studies SET status = 'closed', escrow = '0', block = ?2 WHERE study_id = ?1",
                    params![c.studyId.to::<u64>() as i64, block],
                )?;
            }
            ResearchStudy::ResearchStudyEvents::ConsentGiven(c) => {
                db.execute(
                    "INSERT INTO ledger_consents (study_id, patient, purposes, expires_at, active, given_block, withdrawn_block)
                     VALUES (?1, ?2, ?3, ?4, 1, ?5, NULL)
                     ON CONFLICT (study_id, patient) DO UPDATE SET purposes = excluded.purposes,
                        expires_at = excluded.expires_at, active = 1, given_block = excluded.given_block,
                        withdrawn_block = NULL",
                    params![
                        c.studyId.to::<u64>() as i64,
                        hex(c.patient),
                        c.purposes.to_string(),
                        c.expiresAt as i64,
                        block
                    ],
                )?;
            }
            ResearchStudy::ResearchStudyEvents::ConsentWithdrawn(w) => {
                db.execute(
                    "UPDATE ledger_consents SET active = 0, withdrawn_block = ?3 WHERE study_id = ?1 AND patient = ?2",
                    params![w.studyId.to::<u64>() as i64, hex(w.patient), block],
                )?;
            }
            ResearchStudy::ResearchStudyEvents::BudgetReserved(r) => {
                budget_event(
                    db,
                    block,
                    index,
                    tx_hash,
                    r.studyId,
                    r.queryId,
                    "reserved",
                    r.cost,
                    r.deltaCost,
                    Some(r.fee),
                    None,
                )?;
            }
            ResearchStudy::ResearchStudyEvents::BudgetCommitted(c) => {
                budget_event(
                    db,
                    block,
                    index,
                    tx_hash,
                    c.studyId,
                    c.queryId,
                    "committed",
                    c.cost,
                    c.deltaCost,
                    Some(c.fee),
                    Some((c.resultHash, c.membersRoot, c.members)),
                )?;
            }
            ResearchStudy::ResearchStudyEvents::BudgetReleased(r) => {
                budget_event(
                    db,
                    block,
                    index,
                    tx_hash,
                    r.studyId,
                    r.queryId,
                    "released",
                    r.cost,
                    r.deltaCost,
                    None,
                    None,
                )?;
            }
            ResearchStudy::ResearchStudyEvents::MicrodataReleased(r) => {
                db.execute(
                    "INSERT OR REPLACE INTO ledger_releases (extract_hash, study_id, k, l, rows, block)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![
                        word(r.extractHash),
                        r.studyId.to::<u64>() as i64,
                        r.k,
                        r.l,
                        r.rows as i64,
                        block
                    ],
                )?;
            }
            ResearchStudy::ResearchStudyEvents::EncryptedValueShared(v) => {
                db.execute(
                    "INSERT INTO ledger_shared_values (study_id, column_hash, patient, value_hash, block)
                     VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (study_id, column_hash, patient) DO UPDATE SET
                        value_hash = excluded.value_hash, block = excluded.block",
                    params![
                        v.studyId.to::<u64>() as i64,
                        word(v.column),
                        hex(v.patient),
                        word(v.valueHash),
                        block
                    ],
                )?;
            }
            ResearchStudy::ResearchStudyEvents::CompensationClaimed(c) => {
                db.execute(
                    "INSERT OR REPLACE INTO ledger_claims (block, log_index, study_id, query_id, patient, amount)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![
                        block,
                        index,
                        c.studyId.to::<u64>() as i64,
                        word(c.queryId),
                        hex(c.patient),
                        c.amount.to_string()
                    ],
                )?;
            }
            _ => {}
        },
        Event::Records(PatientRecords::PatientRecordsEvents::RecordAccessed(a)) => {
            db.execute(
                "INSERT OR REPLACE INTO ledger_record_access
                 (block, log_index, record_id, patient, accessor, version, emergency)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    block,
                    index,
                    word(a.recordId),
                    hex(a.patient),
                    hex(a.accessor),
                    a.version.to::<u64>() as i64,
                    a.emergency
                ],
            )?;
        }
        Event::Records(PatientRecords::PatientRecordsEvents::RecordsAccessed(a)) => {
            db.execute(
                "INSERT OR REPLACE INTO ledger_record_reads
                 (block, log_index, patient, accessor, purpose, emergency, records, at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    block,
                    index,
                    hex(a.patient),
                    hex(a.accessor),
                    a.purpose,
                    a.emergency,
                    a.recordIds.len() as i64,
                    a.at as i64
                ],
            )?;
        }
        Event::Records(PatientRecords::PatientRecordsEvents::RecordsAnchored(a)) => {
            db.execute(
                "INSERT OR REPLACE INTO ledger_anchors (batch, root, count, by_account, block)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    a.batch.to::<u64>() as i64,
                    word(a.root),
                    a.count as i64,
                    hex(a.by),
                    block
                ],
            )?;
        }
        Event::Records(PatientRecords::PatientRecordsEvents::LogAnchored(a)) => {
            db.execute(
                "INSERT OR REPLACE INTO ledger_log_anchors (log, entries, head, by_account, block)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![a.log, a.entries as i64, word(a.head), hex(a.by), block],
            )?;
        }
        Event::Records(_) => {}
        Event::Appointments(e) => appointment_event(db, block, index, e)?,
    }
    Ok(())
}

/// Adds `amounts` (wei, as decimal text) to the named columns of
/// appointment `id` (a negative sign subtracts).
fn add_wei(db: &rusqlite::Transaction<'_>, id: i64, amounts: &[(&str, U256, bool)]) -> Result<()> {
    for (column, amount, add) in amounts {
        if amount.is_zero() {
            continue;
        }
        let current: String = db.query_row(
            &format!("SELECT {column} FROM ledger_appointments WHERE id = ?1"),
            [id],
            |r| r.get(0),
        )?;
        let current: U256 = current
            .parse()
            .map_err(|_| Error::decode("a mirrored amount", current.clone()))?;
        let next = if *add {
            current.saturating_add(*amount)
        } else {
            current.saturating_sub(*amount)
        };
        db.execute(
            &format!("UPDATE ledger_appointments SET {column} = ?2 WHERE id = ?1"),
            params![id, next.to_string()],
        )?;
    }
    Ok(())
}

fn appointment_event(
    db: &rusqlite::Transaction<'_>,
    block: i64,
    index: i64,
    event: Appointments::AppointmentsEvents,
) -> Result<()> {
    use Appointments::AppointmentsEvents as E;
    match event {
        E::HoursSet(set) => {
            let h = set.hours_;
            db.execute(
                "INSERT OR REPLACE INTO ledger_provider_hours
                 (provider, utc_offset, slot_seconds, opens, closes, block) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    hex(set.provider),
                    h.utcOffset,
                    h.slotSeconds,
                    serde_json::to_string(&h.opens).expect("numbers serialise"),
                    serde_json::to_string(&h.closes).expect("numbers serialise"),
                    block
                ],
            )?;
        }
        E::DaysClosed(d) => {
            for day in d.localDays {
                if d.closed {
                    db.execute(
                        "INSERT OR IGNORE INTO ledger_closed_days (provider, day) VALUES (?1, ?2)",
                        params![hex(d.provider), day],
                    )?;
                } else {
                    db.execute(
                        "DELETE FROM ledger_closed_days WHERE provider = ?1 AND day = ?2",
                        params![hex(d.provider), day],
                    )?;
                }
            }
        }
        E::VisitTypeSet(v) => {
            db.execute(
                "INSERT OR REPLACE INTO ledger_visit_types (provider, visit_type, fee, block)
                 VALUES (?1, ?2, ?3, ?4)",
                params![hex(v.provider), word(v.visitType), v.fee.to_string(), block],
            )?;
        }
        E::PolicySet(p) => {
            let policy = serde_json::json!({
                "deposit_bps": p.policy.depositBps,
                "no_show_threshold": p.policy.noShowThreshold,
                "threshold_deposit_bps": p.policy.thresholdDepositBps,
                "confirm_window": p.policy.confirmWindow,
                "no_show_grace": p.policy.noShowGrace,
                "notice": p.policy.notice,
                "refund_bps": p.policy.refundBps,
            });
            db.execute(
                "INSERT OR REPLACE INTO ledger_appointment_policies (provider, version, policy, block)
                 VALUES (?1, ?2, ?3, ?4)",
                params![hex(p.provider), p.version, policy.to_string(), block],
            )?;
        }
        E::CoverageVerified(c) => {
            db.execute(
                "INSERT OR REPLACE INTO ledger_coverage
                 (patient, provider, visit_type, insurer, share_bps, expires_at, policy_hash, active, block)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 1, ?8)",
                params![
                    hex(c.patient),
                    hex(c.provider),
                    word(c.visitType),
                    hex(c.insurer),
                    c.shareBps,
                    c.expiresAt as i64,
                    word(c.policyHash),
                    block
                ],
            )?;
        }
        E::CoverageRevoked(c) => {
            db.execute(
                "UPDATE ledger_coverage SET active = 0, block = ?4
                 WHERE patient = ?1 AND provider = ?2 AND visit_type = ?3",
                params![hex(c.patient), hex(c.provider), word(c.visitType), block],
            )?;
        }
        E::InsurerFunded(f) => {
            db.execute(
                "INSERT OR REPLACE INTO ledger_insurer_funds (insurer, balance, block) VALUES (?1, ?2, ?3)",
                params![hex(f.insurer), f.balance.to_string(), block],
            )?;
        }
        E::AppointmentBooked(b) => {
            let a = b.appointment;
            let insurer = (a.insurer != Address::ZERO).then(|| hex(a.insurer));
            db.execute(
                "INSERT OR REPLACE INTO ledger_appointments
                 (id, patient, provider, insurer, start, booked_at, confirm_by, marked_at, visit_type,
                  reason_hash, fee, insurer_share, copay, deposit, paid, held, refunded, to_provider,
                  insurer_returned, insurer_paid, policy_version, status, block, updated_block)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15,
                  '0', '0', '0', '0', ?16, 'booked', ?17, ?17)",
                params![
                    b.id.to::<u64>() as i64,
                    hex(a.patient),
                    hex(a.provider),
                    insurer,
                    a.start as i64,
                    a.bookedAt as i64,
                    a.confirmBy as i64,
                    word(a.visitType),
                    word(a.reasonHash),
                    a.fee.to_string(),
                    a.insurerShare.to_string(),
                    a.copay.to_string(),
                    a.deposit.to_string(),
                    a.paid.to_string(),
                    a.held.to_string(),
                    a.policyVersion,
                    block
                ],
            )?;
        }
        E::AppointmentSettled(s) => {
            let id = s.id.to::<u64>() as i64;
            let status = AppointmentStatus::from_code(s.status).name();
            db.execute(
                "INSERT OR REPLACE INTO ledger_appointment_events
                 (block, log_index, id, status, by_account, to_patient, to_provider, to_insurer, from_insurer, at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    block,
                    index,
                    id,
                    status,
                    hex(s.by),
                    s.toPatient.to_string(),
                    s.toProvider.to_string(),
                    s.toInsurer.to_string(),
                    s.fromInsurer.to_string(),
                    s.at as i64
                ],
            )?;
            db.execute(
                "UPDATE ledger_appointments SET status = ?2, updated_block = ?3,
                    marked_at = CASE WHEN ?2 = 'no-show' AND marked_at IS NULL THEN ?4 ELSE marked_at END
                 WHERE id = ?1",
                params![id, status, block, s.at as i64],
            )?;
            let (patient, provider) = (U256::from(s.toPatient), U256::from(s.toProvider));
            add_wei(
                db,
                id,
                &[
                    ("held", patient + provider, false),
                    ("refunded", patient, true),
                    ("to_provider", provider + U256::from(s.fromInsurer), true),
                    ("insurer_returned", U256::from(s.toInsurer), true),
                    ("insurer_paid", U256::from(s.fromInsurer), true),
                ],
            )?;
        }
        E::BalancePaid(p) => {
            let id = p.id.to::<u64>() as i64;
            db.execute(
                "UPDATE ledger_appointments SET paid = ?2, updated_block = ?3 WHERE id = ?1",
                params![id, p.paid.to_string(), block],
            )?;
            let (amount, provider) = (U256::from(p.amount), U256::from(p.toProvider));
            add_wei(
                db,
                id,
                &[
                    ("held", amount - provider, true),
                    ("to_provider", provider, true),
                ],
            )?;
        }
        _ => {}
    }
    Ok(())
}

/// One row of `ledger_budget_events`: `fee` is the fee held (reserved) or
/// paid (committed); `committed` the result hash, members' root and
/// member count of a commit.
#[allow(clippy::too_many_arguments)]
fn budget_event(
    db: &rusqlite::Transaction<'_>,
    block: i64,
    index: i64,
    tx_hash: B256,
    study: U256,
    query: B256,
    kind: &str,
    cost: u128,
    delta: u128,
    fee: Option<U256>,
    committed: Option<(B256, B256, u64)>,
) -> Result<()> {
    db.execute(
        "INSERT OR REPLACE INTO ledger_budget_events (block, log_index, tx_hash, study_id, query_id, kind,
            cost, delta_cost, result_hash, members_root, members, fee)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        params![
            block,
            index,
            word(tx_hash),
            study.to::<u64>() as i64,
            word(query),
            kind,
            cost.to_string(),
            delta.to_string(),
            committed.map(|c| word(c.0)),
            committed.map(|c| word(c.1)),
            committed.map(|c| c.2 as i64),
            fee.map(|f| f.to_string())
        ],
    )?;
    Ok(())
}
