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

mod block;
mod chain;
mod owner;
mod state;

use block::{
    OpenBlock, dropped, execute, execute_signed, header, sign, state_commitment, unix_now,
};
use chain::head;
use owner::{OwnerLock, owner_wait};
use state::{State, StoreError, write_state};

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

/// How many transactions [`EmbeddedLedger::verify`] checks in parallel
/// at most (whole blocks: one block may exceed it alone).
const VERIFY_BATCH: usize = 4_096;

/// A block's row, as [`EmbeddedLedger::verify`] reads it.
struct StoredBlock {
    number: u64,
    hash: B256,
    parent_hash: B256,
    timestamp: u64,
    gas_used: u64,
    state_root: B256,
}

/// A transaction's row, as [`EmbeddedLedger::verify`] reads it.
struct StoredTransaction {
    hash: B256,
    sender: Address,
    raw: Vec<u8>,
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
    ///
    /// Recovering a sender is most of the work (an elliptic-curve
    /// recovery per transaction), so the transactions of up to
    /// [`VERIFY_BATCH`] consecutive blocks are checked in parallel; the
    /// mismatch reported is still the first in chain order.
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
            Ok(StoredBlock {
                number: r.get::<_, i64>(0)? as u64,
                hash: B256::from(r.get::<_, [u8; 32]>(1)?),
                parent_hash: B256::from(r.get::<_, [u8; 32]>(2)?),
                timestamp: r.get::<_, i64>(3)? as u64,
                gas_used: r.get::<_, i64>(4)? as u64,
                state_root: B256::from(r.get::<_, [u8; 32]>(5)?),
            })
        })?;
        let mut verified = Verified::default();
        let mut previous: Option<(u64, B256)> = None;
        let mut batch: Vec<(StoredBlock, Vec<StoredTransaction>)> = Vec::new();
        let mut batched = 0usize;
        for row in rows {
            let block = row?;
            let stored = transactions
                .query_map(params![block.number as i64], |r| {
                    Ok(StoredTransaction {
                        hash: B256::from(r.get::<_, [u8; 32]>(0)?),
                        sender: Address::from(r.get::<_, [u8; 20]>(1)?),
                        raw: r.get::<_, Vec<u8>>(2)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            batched += stored.len();
            batch.push((block, stored));
            if batched >= VERIFY_BATCH {
                self.verify_blocks(std::mem::take(&mut batch), &mut previous, &mut verified)?;
                batched = 0;
            }
        }
        self.verify_blocks(batch, &mut previous, &mut verified)?;
        Ok(verified)
    }

    /// Checks consecutive stored blocks following `previous`: their
    /// transactions in parallel, then each header in order.
    fn verify_blocks(
        &self,
        batch: Vec<(StoredBlock, Vec<StoredTransaction>)>,
        previous: &mut Option<(u64, B256)>,
        verified: &mut Verified,
    ) -> Result<()> {
        use rayon::prelude::*;
        let mut checked: Vec<Vec<Result<TxEnvelope>>> = batch
            .par_iter()
            .map(|(_, stored)| {
                stored
                    .par_iter()
                    .map(|t| self.verify_transaction(t.hash, t.sender, &t.raw))
                    .collect()
            })
            .collect();
        for ((block, _), envelopes) in batch.iter().zip(checked.iter_mut()) {
            let number = block.number;
            let bad_block =
                |why: String| Error::decode("a stored block", format!("block {number}: {why}"));
            let expected = previous.map_or((0, B256::ZERO), |(n, h)| (n + 1, h));
            if (number, block.parent_hash) != expected {
                return Err(bad_block(format!(
                    "it follows block {} ({}), not block {} ({})",
                    number.wrapping_sub(1),
                    block.parent_hash,
                    expected.0.wrapping_sub(1),
                    expected.1
                )));
            }
            let envelopes = std::mem::take(envelopes)
                .into_iter()
                .collect::<Result<Vec<_>>>()?;
            let header = header(
                block.parent_hash,
                number,
                block.timestamp,
                block.gas_used,
                &envelopes,
                block.state_root,
            );
            if header.hash_slow() != block.hash {
                return Err(bad_block(format!(
                    "its header and {} transactions hash to {}, recorded as {}",
                    envelopes.len(),
                    header.hash_slow(),
                    block.hash
                )));
            }
            verified.blocks += 1;
            verified.transactions += envelopes.len() as u64;
            *previous = Some((number, block.hash));
        }
        Ok(())
    }

    /// Decodes a stored transaction and checks its hash, chain id and
    /// signature against what was recorded with it. The sender is
    /// recovered by libsecp256k1 (revm's `ecrecover`, the precompile's
    /// own), about four times faster than the pure-Rust recovery; a
    /// signature with a high `s` (EIP-2) is refused before it.
    fn verify_transaction(&self, hash: B256, sender: Address, raw: &[u8]) -> Result<TxEnvelope> {
        let bad = |why: String| Error::decode("a stored transaction", format!("{hash}: {why}"));
        let envelope = TxEnvelope::decode_2718(&mut &raw[..]).map_err(|e| bad(e.to_string()))?;
        let signed = envelope
            .as_eip1559()
            .ok_or_else(|| bad("not EIP-1559".to_owned()))?;
        let signature = signed.signature();
        if signature.normalize_s().is_some() {
            return Err(bad(
                "its signature's s is in the upper half of the curve order (EIP-2)".to_owned(),
            ));
        }
        let mut rs = [0u8; 64];
        rs[..32].copy_from_slice(&signature.r().to_be_bytes::<32>());
        rs[32..].copy_from_slice(&signature.s().to_be_bytes::<32>());
        let recovered = revm::precompile::secp256k1::ecrecover(
            &rs.into(),
            u8::from(signature.v()),
            &signed.signature_hash(),
        )
        .map(Address::from_word)
        .map_err(|e| bad(format!("its signature recovers no key: {e}")))?;
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

    async fn now(&self) -> Result<u64> {
        self.lock().snapshot(|conn| {
            Ok((block::unix_now() + chain::time_offset(conn)?).max(head(conn)?.timestamp))
        })
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
