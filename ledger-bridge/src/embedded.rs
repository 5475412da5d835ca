//! `EmbeddedLedger`: revm in process, with the whole chain (blocks,
//! signed transactions, logs, accounts, code and storage) in one SQLite
//! file, so a restart keeps everything.
//!
//! Each sent transaction is signed (EIP-1559) by its account's key and
//! stored raw, so anyone can check its sender from the signature
//! ([`EmbeddedLedger::verify`]); it is executed by revm against the
//! persisted state and, when it succeeds, written with its block in one
//! SQLite transaction: a crash leaves the chain at the previous block or
//! the next, never between. A transaction a contract reverts is refused
//! before it is mined, as a node's gas estimation refuses it.
//!
//! Transactions sent concurrently share a block (group commit): one miner
//! thread mines everything queued by the time it gets to it, in the order
//! it was sent, and one fsync makes the whole block durable. A
//! block that would pass the block gas limit is split into consecutive
//! blocks within the same SQLite transaction.
//!
//! Gas is metered (a transaction may use at most the 2^24 gas that Osaka
//! allows) but free: base fee and gas price are zero, as on a permissioned
//! chain, so accounts need ether only for the value they send.
//!
//! Block hashes are keccak-256 of an RLP header whose transactions root is
//! the real ordered-trie root; its state root is a running keccak-256 of
//! every state change, not a Merkle-Patricia root (nothing here needs
//! state proofs).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use alloy::consensus::{Header, SignableTransaction, TxEip1559, TxEnvelope, proofs};
use alloy::eips::eip2718::{Decodable2718, Encodable2718};
use alloy::network::TxSignerSync;
use alloy::primitives::{Address, B256, Bytes, Log, LogData, TxKind, U256, keccak256};
use async_trait::async_trait;
use revm::bytecode::Bytecode;
use revm::context::result::{EVMError, ExecutionResult, Output};
use revm::context::{BlockEnv, TxEnv};
use revm::database::{AccountState, Cache, CacheDB};
use revm::database_interface::{
    DBErrorMarker, Database, DatabaseCommit, DatabaseRef, WrapDatabaseRef,
};
use revm::primitives::KECCAK_EMPTY;
use revm::state::{AccountInfo, EvmState};
use revm::{Context, ExecuteEvm, MainBuilder, MainContext};
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;

use crate::contracts::decode_revert;
use crate::error::{Error, Result};
use crate::ledger::{Account, Backend, ChainLog, Ledger, LogQuery, Receipt, Tx};

/// The chain id of an embedded chain unless told otherwise (distinct from
/// public networks and from anvil's 31337).
pub const DEFAULT_CHAIN_ID: u64 = 1_337_001;

/// The block gas limit.
pub const BLOCK_GAS_LIMIT: u64 = 30_000_000;

/// The most gas one transaction may use (EIP-7825's cap).
pub const TX_GAS_LIMIT: u64 = 1 << 24;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS accounts (
    address BLOB PRIMARY KEY, balance BLOB NOT NULL, nonce INTEGER NOT NULL, code_hash BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS code (hash BLOB PRIMARY KEY, bytecode BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS storage (
    address BLOB NOT NULL, slot BLOB NOT NULL, value BLOB NOT NULL, PRIMARY KEY (address, slot)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS blocks (
    number INTEGER PRIMARY KEY, hash BLOB NOT NULL UNIQUE, parent_hash BLOB NOT NULL,
    timestamp INTEGER NOT NULL, gas_used INTEGER NOT NULL, state_root BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS transactions (
    block_number INTEGER NOT NULL, tx_index INTEGER NOT NULL, hash BLOB NOT NULL,
    sender BLOB NOT NULL, recipient BLOB, contract_address BLOB, gas_used INTEGER NOT NULL,
    raw BLOB NOT NULL,
    PRIMARY KEY (block_number, tx_index)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS logs (
    block_number INTEGER NOT NULL, log_index INTEGER NOT NULL, tx_hash BLOB NOT NULL,
    address BLOB NOT NULL, topics BLOB NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (block_number, log_index)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS logs_by_address ON logs (address, block_number);
";

/// What [`EmbeddedLedger::verify`] checked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Verified {
    /// Blocks, the genesis block included.
    pub blocks: u64,
    /// Transactions.
    pub transactions: u64,
}

/// An in-process chain persisted in a SQLite file.
///
/// **One owner per chain.** The process that writes a chain holds an
/// exclusive lock on `<chain file>.owner` for as long as it keeps the chain
/// open, with its pid and command written in the file: one process at a
/// time mines, so block numbers and nonces cannot collide between
/// processes. A second writer waits for the lock (a bounded, announced
/// wait), or, when the owner is a long-lived `cohort serve`, is refused at
/// once with the owner's pid and what to do. A process that only reads
/// opens the chain as a [reader](EmbeddedLedger::open_reader), without the
/// lock. Every read (a view call, the head, a balance, logs) sees one
/// consistent snapshot, and a block is mined inside an `IMMEDIATE` write
/// transaction that reads the head it builds on.
#[derive(Clone)]
pub struct EmbeddedLedger {
    path: PathBuf,
    chain_id: u64,
    chain: Arc<Mutex<Chain>>,
    queue: Arc<Mutex<Queue>>,
    /// Held while the chain is open for writing; `None` for a reader.
    owner: Option<Arc<OwnerLock>>,
}

/// How long a second writer waits for the chain by default
/// (`COHORT_CHAIN_WAIT_SECS` overrides it).
pub const DEFAULT_OWNER_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// The exclusive lock on a chain, held by the process that writes it.
struct OwnerLock {
    _file: std::fs::File,
}

/// How the owner file names a server (which is not waited for).
const SERVER: &str = "a cohort server";

/// The owner locks this process holds, by chain file: a second open of a
/// chain in the process that owns it shares the lock (an `flock` is per
/// open file, so taking it again would wait for ourselves).
static HELD: Mutex<Vec<(PathBuf, std::sync::Weak<OwnerLock>)>> = Mutex::new(Vec::new());

impl OwnerLock {
    /// This process's lock on `path`'s chain, taken if no open ledger in
    /// the process holds it yet.
    fn shared(
        path: &Path,
        wait: std::time::Duration,
        waiting: &dyn Fn(&str),
    ) -> Result<Arc<OwnerLock>> {
        let key = std::fs::canonicalize(path.parent().unwrap_or(Path::new(".")))
            .map(|dir| dir.join(path.file_name().unwrap_or_default()))
            .unwrap_or_else(|_| path.to_owned());
        let mut held = HELD.lock().unwrap_or_else(PoisonError::into_inner);
        held.retain(|(_, lock)| lock.strong_count() > 0);
        if let Some(lock) = held
            .iter()
            .find(|(p, _)| *p == key)
            .and_then(|(_, lock)| lock.upgrade())
        {
            return Ok(lock);
        }
        let lock = Arc::new(OwnerLock::acquire(path, wait, waiting)?);
        held.push((key, Arc::downgrade(&lock)));
        Ok(lock)
    }

    /// Takes the lock of `path`'s chain, waiting at most `wait` for a
    /// short-lived owner (announced once through `waiting`); an owner that
    /// is a server is not waited for.
    fn acquire(
        path: &Path,
        wait: std::time::Duration,
        waiting: &dyn Fn(&str),
    ) -> Result<OwnerLock> {
        use std::io::{Read, Seek, Write};
        let mut name = path.as_os_str().to_owned();
        name.push(".owner");
        let lock_path = PathBuf::from(name);
        let mut file = std::fs::File::options()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::Config(format!("cannot open {}: {e}", lock_path.display())))?;
        let started = std::time::Instant::now();
        let mut announced = false;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) => {
                    let mut owner = String::new();
                    let _ = (&file).read_to_string(&mut owner);
                    let _ = file.rewind();
                    let owner = owner.trim().to_string();
                    let owner = if owner.is_empty() {
                        "another process".to_string()
                    } else {
                        owner
                    };
                    let busy = |waited: String, advice: &str| Error::ChainBusy {
                        path: path.display().to_string(),
                        owner: owner.clone(),
                        waited,
                        advice: advice.to_string(),
                    };
                    if owner.ends_with(SERVER) {
                        return Err(busy(
                            String::new(),
                            "a server owns its chain for as long as it runs; use its APIs \
                             (Flight SQL, the gRPC study API, the web page) or stop it first \
                             (reading commands work beside it)",
                        ));
                    }
                    if started.elapsed() >= wait {
                        return Err(busy(
                            format!(" (waited {} s)", wait.as_secs()),
                            "try again when it has finished, or raise COHORT_CHAIN_WAIT_SECS",
                        ));
                    }
                    if !announced {
                        waiting(&format!(
                            "waiting for the embedded chain, owned by {owner} (at most {} s)",
                            wait.as_secs()
                        ));
                        announced = true;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(25));
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(Error::Config(format!(
                        "cannot lock {}: {e}",
                        lock_path.display()
                    )));
                }
            }
        }
        // Say who owns it, for the next process that asks.
        let role = if std::env::args().skip(1).any(|a| a == "serve") {
            SERVER
        } else {
            "a cohort command"
        };
        let me = format!("pid {}, {role}", std::process::id());
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(me.as_bytes()))
            .and_then(|()| file.flush())
            .map_err(|e| Error::Config(format!("cannot write {}: {e}", lock_path.display())))?;
        Ok(OwnerLock { _file: file })
    }
}

/// The wait for a busy chain: `COHORT_CHAIN_WAIT_SECS`, else the default.
pub fn owner_wait() -> std::time::Duration {
    std::env::var("COHORT_CHAIN_WAIT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(DEFAULT_OWNER_WAIT, std::time::Duration::from_secs)
}

/// Transactions waiting for the next block, and whether the miner runs.
#[derive(Default)]
struct Queue {
    pending: Vec<Pending>,
    mining: bool,
}

/// The running miner. Should it unwind, the transactions it left queued
/// are answered (their senders see them dropped) and the next send starts
/// a new miner.
struct Miner(Arc<Mutex<Queue>>);

impl Drop for Miner {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut queue = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            queue.pending.clear();
            queue.mining = false;
        }
    }
}

/// A transaction waiting for the next block, and where its receipt goes.
struct Pending {
    from: Account,
    tx: Tx,
    reply: oneshot::Sender<Result<Receipt>>,
}

struct Chain {
    conn: Connection,
    chain_id: u64,
}

/// The latest block, as the next one needs it.
#[derive(Debug, Clone, Copy)]
struct Head {
    number: u64,
    hash: B256,
    timestamp: u64,
    state_root: B256,
}

impl EmbeddedLedger {
    /// Opens the chain in `path` for writing, as its one owner (see the
    /// type's docs), waiting for another owner at most [`owner_wait`] and
    /// saying so on stderr; creates it (with its genesis block) on first
    /// use with `chain_id`. An existing chain keeps its own id; a different
    /// `chain_id` for it is refused.
    pub fn open(path: &Path, chain_id: u64) -> Result<EmbeddedLedger> {
        EmbeddedLedger::open_owner(path, chain_id, owner_wait(), &|m| eprintln!("{m}"))
    }

    /// Opens the chain for reading only, beside its owner: no lock is taken,
    /// every read sees one consistent snapshot, and a transaction is refused
    /// with the owner's name.
    pub fn open_reader(path: &Path) -> Result<EmbeddedLedger> {
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_URI,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        let bytes: Vec<u8> = conn
            .query_row("SELECT value FROM meta WHERE key = 'chain_id'", [], |r| {
                r.get(0)
            })
            .map_err(|e| {
                Error::Config(format!(
                    "cannot read the chain in {}: {e} (is it deployed?)",
                    path.display()
                ))
            })?;
        let chain_id = u64::from_be_bytes(
            bytes
                .try_into()
                .map_err(|_| Error::decode("the stored chain id", "not 8 bytes"))?,
        );
        Ok(EmbeddedLedger {
            path: path.to_owned(),
            chain_id,
            chain: Arc::new(Mutex::new(Chain { conn, chain_id })),
            queue: Arc::default(),
            owner: None,
        })
    }

    /// [`EmbeddedLedger::open`] with the wait and its announcement given.
    pub fn open_owner(
        path: &Path,
        chain_id: u64,
        wait: std::time::Duration,
        waiting: &dyn Fn(&str),
    ) -> Result<EmbeddedLedger> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|e| {
                Error::Config(format!(
                    "cannot create {} for the chain: {e}",
                    dir.display()
                ))
            })?;
        }
        let owner = OwnerLock::shared(path, wait, waiting)?;
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        // Reads of state come from memory rather than a read() per page:
        // a 64 MiB page cache and the file mapped (reading only).
        conn.pragma_update(None, "cache_size", -65_536)?;
        conn.pragma_update(None, "mmap_size", 1i64 << 30)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.execute_batch(SCHEMA)?;
        // Transactions are keyed by their place in the chain (appended in
        // order, and the order a block's hash commits to); a chain written
        // before they were has no order within a block to recover.
        let ordered: bool = conn.query_row(
            "SELECT COUNT(*) > 0 FROM pragma_table_info('transactions') WHERE name = 'tx_index'",
            [],
            |r| r.get(0),
        )?;
        if !ordered {
            return Err(Error::Config(format!(
                "the chain in {} was written by an earlier cohort that did not record the \
                 order of transactions within a block; keep it for reference and start a new \
                 chain file",
                path.display()
            )));
        }
        let stored: Option<Vec<u8>> = conn
            .query_row("SELECT value FROM meta WHERE key = 'chain_id'", [], |r| {
                r.get(0)
            })
            .optional()?;
        let chain_id = match stored {
            Some(bytes) => {
                let stored = u64::from_be_bytes(
                    bytes
                        .try_into()
                        .map_err(|_| Error::decode("the stored chain id", "not 8 bytes"))?,
                );
                if stored != chain_id {
                    return Err(Error::Config(format!(
                        "the chain in {} has chain id {stored}, not {chain_id}",
                        path.display()
                    )));
                }
                stored
            }
            None => {
                let tx = conn.unchecked_transaction()?;
                tx.execute(
                    "INSERT INTO meta (key, value) VALUES ('chain_id', ?1)",
                    params![chain_id.to_be_bytes().to_vec()],
                )?;
                tx.execute(
                    "INSERT INTO meta (key, value) VALUES ('time_offset', ?1)",
                    params![0u64.to_be_bytes().to_vec()],
                )?;
                let genesis = header(B256::ZERO, 0, unix_now(), 0, &[], B256::ZERO);
                tx.execute(
                    "INSERT INTO blocks (number, hash, parent_hash, timestamp, gas_used, state_root)
                     VALUES (0, ?1, ?2, ?3, 0, ?4)",
                    params![
                        genesis.hash_slow().as_slice(),
                        B256::ZERO.as_slice(),
                        genesis.timestamp as i64,
                        B256::ZERO.as_slice()
                    ],
                )?;
                tx.commit()?;
                chain_id
            }
        };
        Ok(EmbeddedLedger {
            path: path.to_owned(),
            chain_id,
            chain: Arc::new(Mutex::new(Chain { conn, chain_id })),
            queue: Arc::default(),
            owner: Some(owner),
        })
    }

    /// Refuses a change through a reader.
    fn writable(&self) -> Result<()> {
        if self.owner.is_some() {
            return Ok(());
        }
        let mut name = self.path.as_os_str().to_owned();
        name.push(".owner");
        let owner = std::fs::read_to_string(PathBuf::from(name)).unwrap_or_default();
        Err(Error::ChainBusy {
            path: self.path.display().to_string(),
            owner: if owner.trim().is_empty() {
                "no one".into()
            } else {
                owner.trim().to_string()
            },
            waited: String::new(),
            advice: "this process opened it to read only; a command that changes the chain \
                     opens it as its owner"
                .into(),
        })
    }

    /// The chain's id (what `Ledger::chain_id` answers, without a runtime).
    pub fn id(&self) -> u64 {
        self.chain_id
    }

    /// The chain's database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Checks the whole stored chain: every block's hash against its
    /// header (parent link, number, timestamp, gas used, state root and the
    /// transactions root of its transactions in their stored order), and
    /// every transaction's hash, chain id and signature, whose recovered
    /// sender must be the recorded one. Stops at the first mismatch.
    pub fn verify(&self) -> Result<Verified> {
        let chain = self.lock();
        let mut blocks = chain.conn.prepare(
            "SELECT number, hash, parent_hash, timestamp, gas_used, state_root FROM blocks
             ORDER BY number",
        )?;
        let mut transactions = chain.conn.prepare(
            "SELECT hash, sender, raw FROM transactions WHERE block_number = ?1 ORDER BY tx_index",
        )?;
        let rows = blocks.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)? as u64,
                B256::from(r.get::<_, [u8; 32]>(1)?),
                B256::from(r.get::<_, [u8; 32]>(2)?),
                r.get::<_, i64>(3)? as u64,
                r.get::<_, i64>(4)? as u64,
                B256::from(r.get::<_, [u8; 32]>(5)?),
            ))
        })?;
        let mut verified = Verified::default();
        let mut previous: Option<(u64, B256)> = None;
        for row in rows {
            let (number, hash, parent_hash, timestamp, gas_used, state_root) = row?;
            let bad_block =
                |why: String| Error::decode("a stored block", format!("block {number}: {why}"));
            let expected = previous.map_or((0, B256::ZERO), |(n, h)| (n + 1, h));
            if (number, parent_hash) != expected {
                return Err(bad_block(format!(
                    "it follows block {} ({parent_hash}), not block {} ({})",
                    number.wrapping_sub(1),
                    expected.0.wrapping_sub(1),
                    expected.1
                )));
            }
            let mut envelopes = Vec::new();
            let stored = transactions.query_map(params![number as i64], |r| {
                Ok((
                    B256::from(r.get::<_, [u8; 32]>(0)?),
                    Address::from(r.get::<_, [u8; 20]>(1)?),
                    r.get::<_, Vec<u8>>(2)?,
                ))
            })?;
            for transaction in stored {
                let (hash, sender, raw) = transaction?;
                envelopes.push(self.verify_transaction(hash, sender, &raw)?);
            }
            let header = header(
                parent_hash,
                number,
                timestamp,
                gas_used,
                &envelopes,
                state_root,
            );
            if header.hash_slow() != hash {
                return Err(bad_block(format!(
                    "its header and {} transactions hash to {}, recorded as {hash}",
                    envelopes.len(),
                    header.hash_slow()
                )));
            }
            verified.blocks += 1;
            verified.transactions += envelopes.len() as u64;
            previous = Some((number, hash));
        }
        Ok(verified)
    }

    /// Decodes a stored transaction and checks its hash, chain id and
    /// signature against what was recorded with it.
    fn verify_transaction(&self, hash: B256, sender: Address, raw: &[u8]) -> Result<TxEnvelope> {
        let bad = |why: String| Error::decode("a stored transaction", format!("{hash}: {why}"));
        let envelope = TxEnvelope::decode_2718(&mut &raw[..]).map_err(|e| bad(e.to_string()))?;
        let signed = envelope
            .as_eip1559()
            .ok_or_else(|| bad("not EIP-1559".to_owned()))?;
        let recovered = signed
            .signature()
            .recover_address_from_prehash(&signed.signature_hash())
            .map_err(|e| bad(e.to_string()))?;
        if *signed.hash() != hash || recovered != sender || signed.tx().chain_id != self.chain_id {
            return Err(bad(format!(
                "it hashes to {} and its signature recovers to {recovered} on chain {}, \
                 recorded as sent by {sender} on chain {}",
                signed.hash(),
                signed.tx().chain_id,
                self.chain_id
            )));
        }
        Ok(envelope)
    }

    fn lock(&self) -> MutexGuard<'_, Chain> {
        // A panic while holding the lock cannot leave SQLite half-written
        // (every change is one transaction), so a poisoned lock is usable.
        self.chain.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues transactions for the next block, in order, under one lock,
    /// and starts the miner unless it is running: it will take these.
    fn enqueue(&self, txs: Vec<(Account, Tx)>) -> Vec<oneshot::Receiver<Result<Receipt>>> {
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        let receipts = txs
            .into_iter()
            .map(|(from, tx)| {
                let (reply, receipt) = oneshot::channel();
                queue.pending.push(Pending { from, tx, reply });
                receipt
            })
            .collect();
        if !queue.mining {
            queue.mining = true;
            drop(queue);
            self.start_miner();
        }
        receipts
    }

    /// The miner: one blocking thread that mines whatever is queued, one
    /// batch after another, until the queue is empty. What arrives while a
    /// batch is being mined waits for the next, so concurrent senders
    /// share blocks and fsyncs, and only one thread ever waits for the
    /// chain.
    fn start_miner(&self) {
        let chain = Arc::clone(&self.chain);
        let queue = Arc::clone(&self.queue);
        tokio::task::spawn_blocking(move || {
            let miner = Miner(queue);
            loop {
                let batch = {
                    let mut queue = miner.0.lock().unwrap_or_else(PoisonError::into_inner);
                    if queue.pending.is_empty() {
                        queue.mining = false;
                        return;
                    }
                    std::mem::take(&mut queue.pending)
                };
                chain
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .mine(batch);
            }
        });
    }

    /// Runs `f` on the chain on a blocking thread (SQLite commits fsync).
    async fn with_chain<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Chain) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let chain = Arc::clone(&self.chain);
        tokio::task::spawn_blocking(move || {
            let mut guard = chain.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard)
        })
        .await
        .map_err(|e| Error::Config(format!("the chain's worker thread failed: {e}")))?
    }
}

#[async_trait]
impl Ledger for EmbeddedLedger {
    fn read_only(&self) -> bool {
        self.owner.is_none()
    }

    fn backend(&self) -> Backend {
        Backend::Embedded {
            path: self.path.display().to_string(),
        }
    }

    async fn chain_id(&self) -> Result<u64> {
        Ok(self.chain_id)
    }

    async fn block_number(&self) -> Result<u64> {
        self.lock().snapshot(|conn| Ok(head(conn)?.number))
    }

    async fn block_hash(&self, number: u64) -> Result<Option<B256>> {
        self.lock().block_hash(number)
    }

    async fn timestamp(&self) -> Result<u64> {
        self.lock().snapshot(|conn| Ok(head(conn)?.timestamp))
    }

    async fn balance(&self, address: Address) -> Result<U256> {
        self.lock().snapshot(|conn| {
            Ok(State(conn)
                .basic_ref(address)?
                .map_or(U256::ZERO, |a| a.balance))
        })
    }

    async fn send(&self, from: &Account, tx: Tx) -> Result<Receipt> {
        self.writable()?;
        let receipt = self
            .enqueue(vec![(from.clone(), tx)])
            .pop()
            .expect("one queued");
        receipt.await.map_err(|_| dropped())?
    }

    async fn send_all(&self, txs: Vec<(Account, Tx)>) -> Vec<Result<Receipt>> {
        if let Err(e) = self.writable() {
            let reason = e.to_string();
            return txs
                .iter()
                .map(|_| Err(Error::Config(reason.clone())))
                .collect();
        }
        let receipts = self.enqueue(txs);
        let mut outcomes = Vec::with_capacity(receipts.len());
        for receipt in receipts {
            outcomes.push(receipt.await.unwrap_or_else(|_| Err(dropped())));
        }
        outcomes
    }

    async fn call(&self, from: Address, to: Address, input: Bytes) -> Result<Bytes> {
        self.lock().call(from, to, input)
    }

    async fn logs(&self, query: &LogQuery) -> Result<Vec<ChainLog>> {
        self.lock().logs(query)
    }

    async fn set_balance(&self, address: Address, wei: U256) -> Result<()> {
        self.writable()?;
        self.with_chain(move |chain| chain.set_balance(address, wei))
            .await
    }

    async fn increase_time(&self, seconds: u64) -> Result<()> {
        self.writable()?;
        self.with_chain(move |chain| {
            let offset = chain.time_offset()?.saturating_add(seconds);
            chain.conn.execute(
                "UPDATE meta SET value = ?1 WHERE key = 'time_offset'",
                params![offset.to_be_bytes().to_vec()],
            )?;
            chain.mine_empty().map(|_| ())
        })
        .await
    }

    async fn mine(&self) -> Result<u64> {
        self.writable()?;
        self.with_chain(|chain| chain.mine_empty()).await
    }
}

/// The latest block of the chain `conn` sees.
fn head(conn: &Connection) -> Result<Head> {
    Ok(conn
        .prepare_cached(
            "SELECT number, hash, timestamp, state_root FROM blocks ORDER BY number DESC LIMIT 1",
        )?
        .query_row([], |r| {
            Ok(Head {
                number: r.get::<_, i64>(0)? as u64,
                hash: B256::from(r.get::<_, [u8; 32]>(1)?),
                timestamp: r.get::<_, i64>(2)? as u64,
                state_root: B256::from(r.get::<_, [u8; 32]>(3)?),
            })
        })?)
}

/// The development clock's offset, as `conn` sees it.
fn time_offset(conn: &Connection) -> Result<u64> {
    let bytes: Vec<u8> = conn
        .prepare_cached("SELECT value FROM meta WHERE key = 'time_offset'")?
        .query_row([], |r| r.get(0))?;
    Ok(u64::from_be_bytes(bytes.try_into().map_err(|_| {
        Error::decode("the stored time offset", "not 8 bytes")
    })?))
}

/// The environment of the block after `head`: now (plus the development
/// clock's offset), never before its parent.
fn next_block(conn: &Connection, head: &Head) -> Result<BlockEnv> {
    let timestamp = (unix_now() + time_offset(conn)?).max(head.timestamp);
    Ok(BlockEnv {
        number: U256::from(head.number + 1),
        timestamp: U256::from(timestamp),
        gas_limit: BLOCK_GAS_LIMIT,
        basefee: 0,
        ..Default::default()
    })
}

impl Chain {
    /// Runs `read` over one consistent snapshot of the chain (a read
    /// transaction: a block mined meanwhile by the owner is either wholly
    /// in it or not at all).
    fn snapshot<T>(&self, read: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let tx = self.conn.unchecked_transaction()?;
        let out = read(&tx);
        drop(tx);
        out
    }

    fn block_hash(&self, number: u64) -> Result<Option<B256>> {
        Ok(self
            .conn
            .prepare_cached("SELECT hash FROM blocks WHERE number = ?1")?
            .query_row(params![number as i64], |r| r.get::<_, [u8; 32]>(0))
            .optional()?
            .map(B256::from))
    }

    fn time_offset(&self) -> Result<u64> {
        time_offset(&self.conn)
    }

    /// Mines `batch` in the order it was sent and answers each sender.
    /// One that fails alone (a revert, a bad nonce) is answered with its
    /// error and leaves no trace; a failure of the database fails them all
    /// and writes nothing.
    fn mine(&mut self, batch: Vec<Pending>) {
        let (senders, replies): (Vec<_>, Vec<_>) =
            batch.into_iter().map(|p| ((p.from, p.tx), p.reply)).unzip();
        match self.mine_blocks(senders) {
            Ok(outcomes) => {
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    // A sender that stopped waiting no longer needs it.
                    let _ = reply.send(outcome);
                }
            }
            Err(e) => {
                let reason = e.to_string();
                for reply in replies {
                    let _ = reply.send(Err(Error::Config(format!(
                        "the block holding the transaction was not written: {reason}"
                    ))));
                }
            }
        }
    }

    /// Executes the transactions into as few blocks as the gas limit
    /// allows and writes them all in one SQLite transaction.
    fn mine_blocks(&mut self, batch: Vec<(Account, Tx)>) -> Result<Vec<Result<Receipt>>> {
        let chain_id = self.chain_id;
        // The head the blocks build on is read inside the write transaction.
        let db = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let head = head(&db)?;
        let env = next_block(&db, &head)?;
        // What the batch's transactions read and changed, over the
        // persisted state: each account and slot is read from SQLite once
        // and written once, when the batch ends, however many of its
        // transactions touched it (reserve and commit touch the same few
        // slots of a study).
        let mut state = CacheDB::new(State(&db));
        let mut block = OpenBlock::after(head, env);
        let mut outcomes = Vec::with_capacity(batch.len());
        for (from, tx) in &batch {
            let nonce = state.basic(from.address())?.map_or(0, |a| a.nonce);
            let signed = sign(chain_id, nonce, from, tx);
            let signed = match signed {
                Ok(signed) => signed,
                Err(e) => {
                    outcomes.push(Err(e));
                    continue;
                }
            };
            let mut executed = execute_signed(&mut state, chain_id, &block.env, &signed);
            if let Ok(run) = &executed
                && !block.transactions.is_empty()
                && block.gas_used + run.gas_used > BLOCK_GAS_LIMIT
            {
                // It does not fit: seal this block, run it in the next.
                block = block.seal(&db)?;
                executed = execute_signed(&mut state, chain_id, &block.env, &signed);
            }
            match executed {
                Ok(mut run) => {
                    let changes = std::mem::take(&mut run.state);
                    block.state_root = state_commitment(block.state_root, &changes);
                    state.commit(changes);
                    outcomes.push(Ok(block.include(&db, signed, run)?));
                }
                Err(Error::Store(e)) => return Err(Error::Store(e)),
                Err(e) => outcomes.push(Err(e)),
            }
        }
        if !block.transactions.is_empty() {
            block.seal(&db)?;
        }
        write_state(&db, state.cache)?;
        db.commit()?;
        Ok(outcomes)
    }

    fn call(&self, from: Address, to: Address, input: Bytes) -> Result<Bytes> {
        self.snapshot(|conn| call_in(conn, self.chain_id, from, to, input))
    }

    fn logs(&self, query: &LogQuery) -> Result<Vec<ChainLog>> {
        self.snapshot(|conn| logs_in(conn, query))
    }

    fn set_balance(&mut self, address: Address, wei: U256) -> Result<()> {
        self.conn.execute(
            "INSERT INTO accounts (address, balance, nonce, code_hash) VALUES (?1, ?2, 0, ?3)
             ON CONFLICT (address) DO UPDATE SET balance = excluded.balance",
            params![
                address.as_slice(),
                wei.to_be_bytes::<32>(),
                KECCAK_EMPTY.as_slice()
            ],
        )?;
        Ok(())
    }

    fn mine_empty(&mut self) -> Result<u64> {
        let db = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let head = head(&db)?;
        let block = next_block(&db, &head)?;
        let number = head.number + 1;
        let timestamp = block.timestamp.to::<u64>();
        let header = header(head.hash, number, timestamp, 0, &[], head.state_root);
        db.execute(
            "INSERT INTO blocks (number, hash, parent_hash, timestamp, gas_used, state_root)
             VALUES (?1, ?2, ?3, ?4, 0, ?5)",
            params![
                number as i64,
                header.hash_slow().as_slice(),
                head.hash.as_slice(),
                timestamp as i64,
                head.state_root.as_slice()
            ],
        )?;
        db.commit()?;
        Ok(number)
    }
}

/// Runs a read-only call against the state `conn` sees, in the block
/// that would come next.
fn call_in(
    conn: &Connection,
    chain_id: u64,
    from: Address,
    to: Address,
    input: Bytes,
) -> Result<Bytes> {
    let head = head(conn)?;
    let block = next_block(conn, &head)?;
    let nonce = State(conn).basic_ref(from)?.map_or(0, |a| a.nonce);
    let env = TxEnv {
        tx_type: 2,
        caller: from,
        gas_limit: TX_GAS_LIMIT,
        gas_price: 0,
        gas_priority_fee: Some(0),
        kind: TxKind::Call(to),
        data: input,
        nonce,
        chain_id: Some(chain_id),
        ..Default::default()
    };
    match execute(WrapDatabaseRef(State(conn)), chain_id, block, env, true)?.result {
        ExecutionResult::Success { output, .. } => Ok(output.into_data()),
        ExecutionResult::Revert { output, .. } => Err(Error::Reverted(decode_revert(&output))),
        ExecutionResult::Halt { reason, .. } => {
            Err(Error::Rejected(format!("execution halted: {reason:?}")))
        }
    }
}

/// The logs `conn` holds that match `query`.
fn logs_in(conn: &Connection, query: &LogQuery) -> Result<Vec<ChainLog>> {
    let mut statement = conn.prepare_cached(
        "SELECT block_number, log_index, tx_hash, address, topics, data FROM logs
             WHERE block_number BETWEEN ?1 AND ?2 ORDER BY block_number, log_index",
    )?;
    let rows = statement.query_map(
        params![
            query.from_block as i64,
            query.to_block.min(i64::MAX as u64) as i64
        ],
        |r| {
            Ok((
                r.get::<_, i64>(0)? as u64,
                r.get::<_, i64>(1)? as u64,
                r.get::<_, [u8; 32]>(2)?,
                r.get::<_, [u8; 20]>(3)?,
                r.get::<_, Vec<u8>>(4)?,
                r.get::<_, Vec<u8>>(5)?,
            ))
        },
    )?;
    let mut logs = Vec::new();
    for row in rows {
        let (block_number, log_index, tx_hash, address, topics, data) = row?;
        let address = Address::from(address);
        if !query.addresses.is_empty() && !query.addresses.contains(&address) {
            continue;
        }
        let topics: Vec<B256> = topics.chunks_exact(32).map(B256::from_slice).collect();
        logs.push(ChainLog {
            block_number,
            tx_hash: B256::from(tx_hash),
            log_index,
            log: Log {
                address,
                data: LogData::new(topics, data.into())
                    .ok_or_else(|| Error::decode("a stored log", "more than 4 topics"))?,
            },
        });
    }
    Ok(logs)
}

/// A signed transaction with the sender its signature recovers to.
struct Signed {
    envelope: TxEnvelope,
    hash: B256,
    sender: Address,
}

/// Signs `tx` with the sender's key at `nonce` (its next, as the batch's
/// state has it).
fn sign(chain_id: u64, nonce: u64, from: &Account, tx: &Tx) -> Result<Signed> {
    let mut unsigned = TxEip1559 {
        chain_id,
        nonce,
        gas_limit: TX_GAS_LIMIT,
        max_fee_per_gas: 0,
        max_priority_fee_per_gas: 0,
        to: tx.to.map_or(TxKind::Create, TxKind::Call),
        value: tx.value,
        access_list: Default::default(),
        input: tx.input.clone(),
    };
    let signature = from
        .signer()
        .sign_transaction_sync(&mut unsigned)
        .map_err(|e| Error::Rejected(format!("signing failed: {e}")))?;
    let signed = unsigned.into_signed(signature);
    // The key is the sender's own, so its address is the sender: recovering
    // it here would double the cost of every transaction.
    // [`EmbeddedLedger::verify`] recovers every stored one.
    let sender = from.address();
    let hash = *signed.hash();
    Ok(Signed {
        envelope: TxEnvelope::Eip1559(signed),
        hash,
        sender,
    })
}

/// A successful execution, not yet written.
struct Run {
    gas_used: u64,
    logs: Vec<Log>,
    contract_address: Option<Address>,
    state: EvmState,
}

/// Executes a signed transaction against `db` in `block`; a revert or a
/// halt is an error and changes nothing.
fn execute_signed(
    db: &mut CacheDB<State<'_>>,
    chain_id: u64,
    block: &BlockEnv,
    signed: &Signed,
) -> Result<Run> {
    let unsigned = signed
        .envelope
        .as_eip1559()
        .expect("built as EIP-1559")
        .tx();
    let env = TxEnv {
        tx_type: 2,
        caller: signed.sender,
        gas_limit: unsigned.gas_limit,
        gas_price: unsigned.max_fee_per_gas,
        gas_priority_fee: Some(unsigned.max_priority_fee_per_gas),
        kind: unsigned.to,
        value: unsigned.value,
        data: unsigned.input.clone(),
        nonce: unsigned.nonce,
        chain_id: Some(unsigned.chain_id),
        ..Default::default()
    };
    let outcome = execute(db, chain_id, block.clone(), env, false)?;
    match outcome.result {
        ExecutionResult::Success {
            gas, logs, output, ..
        } => Ok(Run {
            gas_used: gas.tx_gas_used(),
            logs,
            contract_address: match output {
                Output::Create(_, address) => address,
                Output::Call(_) => None,
            },
            state: outcome.state,
        }),
        ExecutionResult::Revert { output, .. } => Err(Error::Reverted(decode_revert(&output))),
        ExecutionResult::Halt { reason, .. } => {
            Err(Error::Rejected(format!("execution halted: {reason:?}")))
        }
    }
}

fn execute(
    db: impl Database<Error = StoreError>,
    chain_id: u64,
    block: BlockEnv,
    tx: TxEnv,
    read_only: bool,
) -> Result<revm::context::result::ResultAndState> {
    let mut evm = Context::mainnet()
        .modify_cfg_chained(|cfg| {
            cfg.chain_id = chain_id;
            cfg.disable_nonce_check = read_only;
        })
        .with_block(block)
        .with_db(db)
        .build_mainnet();
    evm.transact(tx).map_err(|e| match e {
        EVMError::Database(StoreError(e)) => Error::Store(e),
        EVMError::Transaction(invalid) => Error::Rejected(invalid.to_string()),
        other => Error::Rejected(other.to_string()),
    })
}

/// The block being filled: its transactions are written as they are
/// included, the block row when it is sealed.
struct OpenBlock {
    parent: Head,
    env: BlockEnv,
    gas_used: u64,
    state_root: B256,
    transactions: Vec<TxEnvelope>,
    logs: u64,
}

impl OpenBlock {
    fn after(parent: Head, env: BlockEnv) -> OpenBlock {
        OpenBlock {
            state_root: parent.state_root,
            parent,
            env,
            gas_used: 0,
            transactions: Vec::new(),
            logs: 0,
        }
    }

    fn number(&self) -> u64 {
        self.parent.number + 1
    }

    /// Writes the transaction's row and its logs (its state changes are
    /// written with the batch's).
    fn include(
        &mut self,
        db: &rusqlite::Transaction<'_>,
        signed: Signed,
        run: Run,
    ) -> Result<Receipt> {
        let number = self.number();
        let to = signed
            .envelope
            .as_eip1559()
            .expect("built as EIP-1559")
            .tx()
            .to;
        db.prepare_cached(
            "INSERT INTO transactions
                 (block_number, tx_index, hash, sender, recipient, contract_address, gas_used, raw)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?
        .execute(params![
            number as i64,
            self.transactions.len() as i64,
            signed.hash.as_slice(),
            signed.sender.as_slice(),
            to.to().map(|a| a.to_vec()),
            run.contract_address.map(|a| a.to_vec()),
            run.gas_used as i64,
            signed.envelope.encoded_2718()
        ])?;
        let mut logs = Vec::with_capacity(run.logs.len());
        for log in run.logs {
            let topics: Vec<u8> = log.topics().iter().flat_map(|t| t.0).collect();
            db.prepare_cached(
                "INSERT INTO logs (block_number, log_index, tx_hash, address, topics, data)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                number as i64,
                self.logs as i64,
                signed.hash.as_slice(),
                log.address.as_slice(),
                topics,
                log.data.data.as_ref()
            ])?;
            logs.push(ChainLog {
                block_number: number,
                tx_hash: signed.hash,
                log_index: self.logs,
                log,
            });
            self.logs += 1;
        }
        self.gas_used += run.gas_used;
        self.transactions.push(signed.envelope);
        Ok(Receipt {
            tx_hash: signed.hash,
            block_number: number,
            gas_used: run.gas_used,
            contract_address: run.contract_address,
            logs,
        })
    }

    /// Writes the block row and opens the next block at the same time.
    fn seal(self, db: &rusqlite::Transaction<'_>) -> Result<OpenBlock> {
        let number = self.number();
        let timestamp = self.env.timestamp.to::<u64>();
        let header = header(
            self.parent.hash,
            number,
            timestamp,
            self.gas_used,
            &self.transactions,
            self.state_root,
        );
        let hash = header.hash_slow();
        db.prepare_cached(
            "INSERT INTO blocks (number, hash, parent_hash, timestamp, gas_used, state_root)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![
            number as i64,
            hash.as_slice(),
            self.parent.hash.as_slice(),
            timestamp as i64,
            self.gas_used as i64,
            self.state_root.as_slice()
        ])?;
        let head = Head {
            number,
            hash,
            timestamp,
            state_root: self.state_root,
        };
        let env = BlockEnv {
            number: U256::from(number + 1),
            ..self.env
        };
        Ok(OpenBlock::after(head, env))
    }
}

fn dropped() -> Error {
    Error::Config("the chain's worker dropped a transaction unanswered".to_owned())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn header(
    parent_hash: B256,
    number: u64,
    timestamp: u64,
    gas_used: u64,
    transactions: &[TxEnvelope],
    state_root: B256,
) -> Header {
    Header {
        parent_hash,
        number,
        timestamp,
        gas_limit: BLOCK_GAS_LIMIT,
        gas_used,
        base_fee_per_gas: Some(0),
        transactions_root: proofs::calculate_transaction_root(transactions),
        state_root,
        ..Default::default()
    }
}

/// A running hash of every state change, in a canonical order.
fn state_commitment(parent: B256, state: &EvmState) -> B256 {
    let mut touched: Vec<_> = state.iter().filter(|(_, a)| a.is_touched()).collect();
    touched.sort_by_key(|(address, _)| **address);
    let mut bytes = parent.to_vec();
    for (address, account) in touched {
        bytes.extend_from_slice(address.as_slice());
        bytes.extend_from_slice(&account.info.balance.to_be_bytes::<32>());
        bytes.extend_from_slice(&account.info.nonce.to_be_bytes());
        bytes.extend_from_slice(account.info.code_hash.as_slice());
        let mut slots: Vec<_> = account
            .storage
            .iter()
            .filter(|(_, slot)| account.is_created() || slot.is_changed())
            .collect();
        slots.sort_by_key(|(slot, _)| **slot);
        for (slot, value) in slots {
            bytes.extend_from_slice(&slot.to_be_bytes::<32>());
            bytes.extend_from_slice(&value.present_value.to_be_bytes::<32>());
        }
    }
    keccak256(bytes)
}

/// Writes what a batch's transactions changed (revm's cache of it) into
/// the SQLite transaction; accounts the batch only read are left alone.
fn write_state(db: &rusqlite::Transaction<'_>, cache: Cache) -> Result<()> {
    for (hash, code) in &cache.contracts {
        if !code.is_empty() {
            db.prepare_cached("INSERT OR IGNORE INTO code (hash, bytecode) VALUES (?1, ?2)")?
                .execute(params![hash.as_slice(), code.original_byte_slice()])?;
        }
    }
    for (address, account) in &cache.accounts {
        let address = address.as_slice();
        match account.account_state {
            AccountState::None => continue,
            AccountState::NotExisting => {
                db.prepare_cached("DELETE FROM accounts WHERE address = ?1")?
                    .execute(params![address])?;
                db.prepare_cached("DELETE FROM storage WHERE address = ?1")?
                    .execute(params![address])?;
                continue;
            }
            AccountState::StorageCleared => {
                db.prepare_cached("DELETE FROM storage WHERE address = ?1")?
                    .execute(params![address])?;
            }
            AccountState::Touched => {}
        }
        db.prepare_cached(
            "INSERT INTO accounts (address, balance, nonce, code_hash) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (address) DO UPDATE SET
                 balance = excluded.balance, nonce = excluded.nonce, code_hash = excluded.code_hash",
        )?
        .execute(params![
            address,
            account.info.balance.to_be_bytes::<32>(),
            account.info.nonce as i64,
            account.info.code_hash.as_slice()
        ])?;
        for (slot, value) in &account.storage {
            if value.is_zero() {
                db.prepare_cached("DELETE FROM storage WHERE address = ?1 AND slot = ?2")?
                    .execute(params![address, slot.to_be_bytes::<32>()])?;
            } else {
                db.prepare_cached(
                    "INSERT OR REPLACE INTO storage (address, slot, value) VALUES (?1, ?2, ?3)",
                )?
                .execute(params![
                    address,
                    slot.to_be_bytes::<32>(),
                    value.to_be_bytes::<32>()
                ])?;
            }
        }
    }
    Ok(())
}

/// revm's view of the persisted state.
struct State<'a>(&'a Connection);

/// How many contracts' analysed code the process keeps.
const ANALYSED_CODE_CACHE: usize = 256;

/// Contract code as revm runs it (its jump table analysed), by code hash.
/// Code is immutable under its hash, so one cache serves every chain in
/// the process; analysing a contract on every call was 7% of a
/// transaction.
fn analysed() -> MutexGuard<'static, HashMap<B256, Bytecode>> {
    static CODE: LazyLock<Mutex<HashMap<B256, Bytecode>>> = LazyLock::new(Default::default);
    CODE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A SQLite failure inside revm.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
struct StoreError(#[from] rusqlite::Error);

impl DBErrorMarker for StoreError {}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Error {
        Error::Store(e.0)
    }
}

impl DatabaseRef for State<'_> {
    type Error = StoreError;

    fn basic_ref(&self, address: Address) -> Result<Option<AccountInfo>, StoreError> {
        Ok(self
            .0
            .prepare_cached("SELECT balance, nonce, code_hash FROM accounts WHERE address = ?1")?
            .query_row(params![address.as_slice()], |r| {
                Ok((
                    r.get::<_, [u8; 32]>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, [u8; 32]>(2)?,
                ))
            })
            .optional()?
            .map(|(balance, nonce, code_hash)| {
                AccountInfo::default()
                    .with_balance(U256::from_be_bytes(balance))
                    .with_nonce(nonce as u64)
                    .with_code_hash(B256::from(code_hash))
            }))
    }

    fn code_by_hash_ref(&self, code_hash: B256) -> Result<Bytecode, StoreError> {
        if code_hash == KECCAK_EMPTY || code_hash == B256::ZERO {
            return Ok(Bytecode::default());
        }
        if let Some(code) = analysed().get(&code_hash) {
            return Ok(code.clone());
        }
        let raw: Option<Vec<u8>> = self
            .0
            .prepare_cached("SELECT bytecode FROM code WHERE hash = ?1")?
            .query_row(params![code_hash.as_slice()], |r| r.get(0))
            .optional()?;
        // Code is only ever stored by revm after analysis, so it decodes;
        // a missing row is an account without code.
        let Some(code) = raw.and_then(|raw| Bytecode::new_raw_checked(Bytes::from(raw)).ok())
        else {
            return Ok(Bytecode::default());
        };
        let mut cache = analysed();
        if cache.len() >= ANALYSED_CODE_CACHE {
            cache.clear();
        }
        cache.insert(code_hash, code.clone());
        Ok(code)
    }

    fn storage_ref(&self, address: Address, index: U256) -> Result<U256, StoreError> {
        Ok(self
            .0
            .prepare_cached("SELECT value FROM storage WHERE address = ?1 AND slot = ?2")?
            .query_row(
                params![address.as_slice(), index.to_be_bytes::<32>()],
                |r| r.get::<_, [u8; 32]>(0),
            )
            .optional()?
            .map_or(U256::ZERO, U256::from_be_bytes))
    }

    fn block_hash_ref(&self, number: u64) -> Result<B256, StoreError> {
        Ok(self
            .0
            .prepare_cached("SELECT hash FROM blocks WHERE number = ?1")?
            .query_row(params![number as i64], |r| r.get::<_, [u8; 32]>(0))
            .optional()?
            .map_or(B256::ZERO, B256::from))
    }
}
