//! The data directory's ledger: which chain it uses, where the contracts
//! are, and the follower that mirrors their events into `cohort.db`.
//!
//! ```text
//! <data-dir>/
//!   ledger.json      backend (embedded | rpc URL), chain id, contract addresses,
//!                    confirmations, the accounts that deployed and run the engine
//!   chain/chain.db   the embedded chain (revm state, blocks, logs), when embedded
//! ```
//!
//! Without `ledger.json` the ledger is the embedded chain, not yet
//! deployed; `cohort ledger deploy` deploys the contracts (to the embedded
//! chain, or to the node given by `--rpc-url`) and writes the file.

use std::path::PathBuf;
use std::sync::Arc;

use cohort_ledger_bridge::alloy::primitives::U256;
use cohort_ledger_bridge::{
    Account, Backend, Client, Contracts, EmbeddedLedger, Follower, Ledger, Position, Role,
    RpcLedger, SyncReport, Verified,
};
use serde::{Deserialize, Serialize};

use crate::keys::keystore::KeyStore;
use crate::{DataDir, Error, Result, keys::accounts};

/// The file describing the data directory's ledger.
pub const LEDGER_FILE: &str = "ledger.json";

/// The account that runs the engine on chain (holds the ENGINE role).
pub const ENGINE_ACCOUNT: &str = "engine";

/// Confirmations the follower waits for on an RPC node unless told.
pub const DEFAULT_RPC_CONFIRMATIONS: u64 = 2;

/// Stewards who must approve a study unless told.
pub const DEFAULT_APPROVALS: u8 = 2;

/// Which chain, as stored in `ledger.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum BackendConfig {
    /// The embedded revm chain under `chain/`.
    Embedded {
        /// Its chain id.
        chain_id: u64,
    },
    /// A JSON-RPC node.
    Rpc {
        /// Its URL.
        url: String,
    },
}

/// `ledger.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerConfig {
    /// The chain.
    pub backend: BackendConfig,
    /// Its chain id (checked against the chain at every open).
    pub chain_id: u64,
    /// The contracts.
    pub contracts: Contracts,
    /// Confirmations the follower waits for.
    pub confirmations: u64,
    /// Stewards who must approve a study.
    pub required_approvals: u8,
    /// The account that deployed the contracts (their admin).
    pub admin: String,
    /// The account holding the ENGINE role.
    pub engine: String,
}

/// What `cohort ledger deploy` is asked.
#[derive(Debug, Clone)]
pub struct DeployRequest {
    /// The node to deploy to; `None`: the embedded chain.
    pub rpc_url: Option<String>,
    /// Stewards who must approve a study.
    pub approvals: u8,
    /// Confirmations for the follower (default: 1 embedded, 2 RPC).
    pub confirmations: Option<u64>,
    /// The deploying account (the contracts' admin).
    pub admin: String,
    /// Deploy a new set even though one is recorded.
    pub redeploy: bool,
}

/// What `cohort ledger status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct LedgerStatus {
    /// The backend.
    pub backend: Backend,
    /// The chain id.
    pub chain_id: u64,
    /// The latest block.
    pub block: u64,
    /// The contracts, once deployed.
    pub contracts: Option<Contracts>,
    /// Confirmations the follower waits for.
    pub confirmations: Option<u64>,
    /// Stewards who must approve a study.
    pub required_approvals: Option<u8>,
    /// The follower's position in `cohort.db`.
    pub follower: Option<Position>,
    /// Blocks the follower has yet to apply (confirmed or not).
    pub follower_behind: Option<u64>,
}

fn config_path(dir: &DataDir) -> PathBuf {
    dir.root().join(LEDGER_FILE)
}

fn chain_path(dir: &DataDir) -> PathBuf {
    dir.root().join("chain").join("chain.db")
}

/// The recorded ledger, if the contracts were deployed.
pub fn load(dir: &DataDir) -> Result<Option<LedgerConfig>> {
    let path = config_path(dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("reading", path, e)),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))
}

fn save(dir: &DataDir, config: &LedgerConfig) -> Result<()> {
    let text = serde_json::to_string_pretty(config).expect("a config serialises");
    crate::storage::fsutil::write_atomic(&config_path(dir), text.as_bytes())
}

/// How a process opens the embedded chain: as its one owner (to send
/// transactions) or as a reader beside the owner (a node serves both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Sends transactions: holds the chain's owner lock.
    Owner,
    /// Reads one consistent snapshot per call; sends nothing.
    Reader,
    /// The owner if no other process holds the chain now (no wait), else a
    /// reader: a reading command that can also finish what a killed
    /// process left.
    OwnerIfFree,
}

fn open_backend(dir: &DataDir, backend: &BackendConfig, mode: Mode) -> Result<Arc<dyn Ledger>> {
    Ok(match (backend, mode) {
        (BackendConfig::Embedded { chain_id }, Mode::Owner) => {
            Arc::new(EmbeddedLedger::open(&chain_path(dir), *chain_id)?)
        }
        (BackendConfig::Embedded { .. }, Mode::Reader) => {
            Arc::new(EmbeddedLedger::open_reader(&chain_path(dir))?)
        }
        (BackendConfig::Embedded { chain_id }, Mode::OwnerIfFree) => {
            let path = chain_path(dir);
            match EmbeddedLedger::open_owner(&path, *chain_id, std::time::Duration::ZERO, &|_| {}) {
                Ok(owner) => Arc::new(owner),
                Err(cohort_ledger_bridge::Error::ChainBusy { .. }) => {
                    Arc::new(EmbeddedLedger::open_reader(&path)?)
                }
                Err(e) => return Err(e.into()),
            }
        }
        (BackendConfig::Rpc { url }, _) => Arc::new(RpcLedger::connect(url)?),
    })
}

/// The deployed contracts on the recorded ledger, checked: the chain id
/// matches and code is at the addresses. The embedded chain is opened as
/// its owner (see `EmbeddedLedger`: a second writer waits for, or is
/// refused by, the owning process).
pub async fn client(dir: &DataDir) -> Result<(LedgerConfig, Client)> {
    client_as(dir, Mode::Owner).await
}

/// [`client`] for a process that only reads the chain: it works beside a
/// running server, and any transaction it tried would be refused.
pub async fn client_reader(dir: &DataDir) -> Result<(LedgerConfig, Client)> {
    client_as(dir, Mode::Reader).await
}

/// A client opened in `mode`.
pub async fn client_as(dir: &DataDir, mode: Mode) -> Result<(LedgerConfig, Client)> {
    let config = load(dir)?.ok_or_else(|| {
        Error::NotFound(
            "no contracts are deployed for this data directory: run `cohort ledger deploy`".into(),
        )
    })?;
    let ledger = open_backend(dir, &config.backend, mode)?;
    let chain_id = ledger.chain_id().await?;
    if chain_id != config.chain_id {
        return Err(Error::Invalid(format!(
            "{} records chain {}, but {} is chain {chain_id}",
            LEDGER_FILE,
            config.chain_id,
            ledger.backend()
        )));
    }
    let client = Client::new(ledger, config.contracts);
    client.verify_deployed().await?;
    Ok((config, client))
}

/// Checks the embedded chain file end to end: every block's hash against
/// its header and transactions, every transaction's signature against its
/// recorded sender (`EmbeddedLedger::verify`). A node checks its own chain,
/// so a data directory on the RPC backend is refused.
pub fn verify(dir: &DataDir) -> Result<Verified> {
    let chain_id = match load(dir)?.map(|config| config.backend) {
        Some(BackendConfig::Rpc { url }) => {
            return Err(Error::Invalid(format!(
                "this data directory's ledger is the node at {url}, which checks its own chain; \
                 `cohort ledger verify` checks the embedded chain"
            )));
        }
        Some(BackendConfig::Embedded { chain_id }) => chain_id,
        None => cohort_ledger_bridge::DEFAULT_CHAIN_ID,
    };
    let path = chain_path(dir);
    if !path.exists() {
        return Err(Error::NotFound(format!(
            "no embedded chain at {}: run `cohort ledger deploy`",
            path.display()
        )));
    }
    let chain = EmbeddedLedger::open_reader(&path)?;
    if chain.id() != chain_id {
        return Err(Error::Invalid(format!(
            "the chain in {} has chain id {}, not {chain_id}",
            path.display(),
            chain.id()
        )));
    }
    Ok(chain.verify()?)
}

/// Deploys the contracts and records them; grants the ENGINE role to the
/// engine's account; audits the deployment under `request.admin`. A
/// recorded deployment is kept unless `redeploy`.
pub async fn deploy(
    dir: &DataDir,
    conn: &rusqlite::Connection,
    keys: &dyn KeyStore,
    request: &DeployRequest,
) -> Result<LedgerConfig> {
    if let Some(existing) = load(dir)?
        && !request.redeploy
    {
        return Err(Error::Invalid(format!(
            "contracts are already deployed for this data directory (CohortAccess at {:#x} on chain {}); \
             pass --redeploy to deploy a new set (the mirrored ledger state is then rebuilt from the new contracts)",
            existing.contracts.access, existing.chain_id
        )));
    }
    if request.approvals == 0 {
        return Err(Error::Invalid("--approvals must be at least 1".into()));
    }
    let backend = match &request.rpc_url {
        Some(url) => BackendConfig::Rpc { url: url.clone() },
        None => BackendConfig::Embedded {
            chain_id: cohort_ledger_bridge::DEFAULT_CHAIN_ID,
        },
    };
    let confirmations = request.confirmations.unwrap_or(match backend {
        BackendConfig::Embedded { .. } => 1,
        BackendConfig::Rpc { .. } => DEFAULT_RPC_CONFIRMATIONS,
    });
    if confirmations == 0 {
        return Err(Error::Invalid("--confirmations must be at least 1".into()));
    }
    let ledger = open_backend(dir, &backend, Mode::Owner)?;
    let chain_id = ledger.chain_id().await?;
    let admin = accounts::get_or_create(conn, keys, &request.admin)?;
    let engine = accounts::get_or_create(conn, keys, ENGINE_ACCOUNT)?;
    if matches!(backend, BackendConfig::Rpc { .. }) {
        require_funds(&*ledger, &admin, chain_id).await?;
    }
    let client = Client::deploy(Arc::clone(&ledger), &admin, request.approvals).await?;
    client
        .grant_role(&admin, Role::Engine, engine.address())
        .await?;
    let config = LedgerConfig {
        backend,
        chain_id,
        contracts: *client.contracts(),
        confirmations,
        required_approvals: request.approvals,
        admin: request.admin.clone(),
        engine: ENGINE_ACCOUNT.into(),
    };
    // The mirror describes the previous contracts: start it afresh.
    clear_mirror(conn)?;
    save(dir, &config)?;
    crate::audit::append(
        conn,
        &crate::audit::Event {
            actor: &request.admin,
            action: "ledger.deploy",
            target: &format!("chain/{}", config.chain_id),
            purpose: "operations",
            detail: serde_json::to_value(config.contracts).expect("addresses serialise"),
        },
    )?;
    Ok(config)
}

async fn require_funds(ledger: &dyn Ledger, admin: &Account, chain_id: u64) -> Result<()> {
    let balance = ledger.balance(admin.address()).await?;
    if balance == U256::ZERO {
        return Err(Error::Invalid(format!(
            "account `{}` ({:#x}) has no ether on chain {chain_id} to pay for deploying the contracts; \
             fund it from the node's faucet or a funded account, then deploy again",
            admin.name(),
            admin.address()
        )));
    }
    Ok(())
}

fn clear_mirror(conn: &rusqlite::Connection) -> Result<()> {
    Follower::install(conn)?;
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'ledger\\_%' ESCAPE '\\'")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let tx = conn.unchecked_transaction()?;
    for table in tables {
        tx.execute(&format!("DELETE FROM \"{table}\""), [])?;
    }
    tx.commit()?;
    Ok(())
}

/// The ledger's state and the follower's position; needs no keys.
pub async fn status(dir: &DataDir, conn: &rusqlite::Connection) -> Result<LedgerStatus> {
    let config = load(dir)?;
    let backend = config.as_ref().map_or(
        BackendConfig::Embedded {
            chain_id: cohort_ledger_bridge::DEFAULT_CHAIN_ID,
        },
        |c| c.backend.clone(),
    );
    // Beside a running server the chain is read, not owned.
    let mode = if chain_path(dir).exists() {
        Mode::Reader
    } else {
        Mode::Owner
    };
    let ledger = open_backend(dir, &backend, mode)?;
    let block = ledger.block_number().await?;
    let follower = Follower::position(conn)?;
    let follower_behind = config.as_ref().map(|c| match &follower {
        Some(p) => block.saturating_sub(p.block),
        None => (block + 1).saturating_sub(c.contracts.deployed_at),
    });
    Ok(LedgerStatus {
        backend: ledger.backend(),
        chain_id: ledger.chain_id().await?,
        block,
        contracts: config.as_ref().map(|c| c.contracts),
        confirmations: config.as_ref().map(|c| c.confirmations),
        required_approvals: config.as_ref().map(|c| c.required_approvals),
        follower,
        follower_behind,
    })
}

/// Applies every confirmed block to the mirror in `conn`.
pub async fn sync(dir: &DataDir, conn: &mut rusqlite::Connection) -> Result<SyncReport> {
    let (config, client) = client_reader(dir).await?;
    Ok(Follower::new(client, config.confirmations)?
        .sync(conn)
        .await?)
}
