//! The `Ledger` trait: what cohort needs of an Ethereum-compatible chain,
//! whichever backend runs it.

use std::fmt;

use alloy::primitives::{Address, B256, Bytes, Log, U256};
use alloy::signers::local::PrivateKeySigner;
use async_trait::async_trait;
use serde::Serialize;

use crate::error::{Error, Result};

/// A named account whose secp256k1 key signs its transactions.
///
/// The key comes from the engine's keystore; `Debug` shows the name and
/// address only.
#[derive(Clone)]
pub struct Account {
    name: String,
    signer: PrivateKeySigner,
}

impl Account {
    /// The account `name` with the secret key `secret`.
    pub fn from_secret(name: &str, secret: &[u8; 32]) -> Result<Account> {
        let signer = PrivateKeySigner::from_bytes(&B256::from(*secret)).map_err(|e| {
            Error::Config(format!(
                "the key of account `{name}` is not a valid secp256k1 key: {e}"
            ))
        })?;
        Ok(Account {
            name: name.to_string(),
            signer,
        })
    }

    /// The account's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The account's address.
    pub fn address(&self) -> Address {
        self.signer.address()
    }

    /// The account's secret key, for opening what was sealed to its public
    /// key (ECIES); zeroized when dropped.
    pub fn secret_bytes(&self) -> zeroize::Zeroizing<[u8; 32]> {
        zeroize::Zeroizing::new(self.signer.credential().to_bytes().into())
    }

    pub(crate) fn signer(&self) -> &PrivateKeySigner {
        &self.signer
    }

    /// Signs `message` as an EIP-191 personal message (what a wallet signs
    /// for an EIP-4361 sign-in): 65 bytes, r ‖ s ‖ v.
    pub fn sign_message(&self, message: &str) -> Result<[u8; 65]> {
        use alloy::signers::SignerSync;
        let signature = self
            .signer
            .sign_message_sync(message.as_bytes())
            .map_err(|e| Error::Config(format!("signing as `{}`: {e}", self.name)))?;
        Ok(signature.as_bytes())
    }
}

/// The account that signed `message` as an EIP-191 personal message.
pub fn message_signer(message: &str, signature: &[u8]) -> Result<Address> {
    let signature = alloy::primitives::Signature::from_raw(signature)
        .map_err(|e| Error::Config(format!("not a 65-byte secp256k1 signature: {e}")))?;
    signature
        .recover_address_from_msg(message.as_bytes())
        .map_err(|e| Error::Config(format!("the signature recovers no account: {e}")))
}

impl fmt::Debug for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Account")
            .field("name", &self.name)
            .field("address", &self.address())
            .finish_non_exhaustive()
    }
}

/// A transaction to send: a call (`to` set) or a deployment.
#[derive(Debug, Clone, Default)]
pub struct Tx {
    /// The contract called; `None` deploys `input` as init code.
    pub to: Option<Address>,
    /// Calldata, or init code.
    pub input: Bytes,
    /// Wei sent with it.
    pub value: U256,
}

impl Tx {
    /// The same transaction sending `value` wei.
    pub fn with_value(self, value: U256) -> Tx {
        Tx { value, ..self }
    }
}

/// A mined transaction.
#[derive(Debug, Clone)]
pub struct Receipt {
    /// The transaction's hash.
    pub tx_hash: B256,
    /// The block it is in.
    pub block_number: u64,
    /// Gas it used.
    pub gas_used: u64,
    /// The contract it created, for a deployment.
    pub contract_address: Option<Address>,
    /// The events it emitted.
    pub logs: Vec<ChainLog>,
}

/// An event log with where it sits on the chain.
#[derive(Debug, Clone)]
pub struct ChainLog {
    /// The block.
    pub block_number: u64,
    /// The transaction.
    pub tx_hash: B256,
    /// Its index in the block.
    pub log_index: u64,
    /// The emitting contract, topics and data.
    pub log: Log,
}

/// Which logs to read: an inclusive block range, from some contracts.
#[derive(Debug, Clone)]
pub struct LogQuery {
    /// First block.
    pub from_block: u64,
    /// Last block (inclusive).
    pub to_block: u64,
    /// Emitting contracts (none: any).
    pub addresses: Vec<Address>,
}

/// Which backend a ledger is, for status output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Backend {
    /// revm in process, its state in a SQLite file.
    Embedded {
        /// The chain's database file.
        path: String,
    },
    /// A JSON-RPC node.
    Rpc {
        /// The node's URL.
        url: String,
    },
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Backend::Embedded { path } => write!(f, "embedded revm ({path})"),
            Backend::Rpc { url } => write!(f, "JSON-RPC node at {url}"),
        }
    }
}

/// An Ethereum-compatible chain, as cohort uses it.
///
/// Sending returns once the transaction is mined (one confirmation); a
/// transaction a contract would revert is refused before it is mined, with
/// the contract's error decoded ([`Error::Reverted`]). Reads see the
/// latest state.
#[async_trait]
pub trait Ledger: Send + Sync {
    /// Which backend this is.
    fn backend(&self) -> Backend;

    /// Whether this handle only reads (an embedded chain opened beside its
    /// owner): it refuses every transaction.
    fn read_only(&self) -> bool {
        false
    }

    /// The chain id.
    async fn chain_id(&self) -> Result<u64>;

    /// The latest block's number.
    async fn block_number(&self) -> Result<u64>;

    /// The hash of block `number`, if the chain has it.
    async fn block_hash(&self, number: u64) -> Result<Option<B256>>;

    /// The latest block's timestamp (seconds since the epoch).
    async fn timestamp(&self) -> Result<u64>;

    /// The chain's clock now: the time the next block would carry. A node's
    /// is the later of this machine's clock and its latest block; the
    /// embedded chain adds its development offset (see `increase_time`),
    /// so a scheduler on the chain's clock follows a test's jumps.
    async fn now(&self) -> Result<u64> {
        let system = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Ok(system.max(self.timestamp().await?))
    }

    /// An account's balance in wei.
    async fn balance(&self, address: Address) -> Result<U256>;

    /// Signs `tx` with `from`'s key, sends it and waits until it is mined.
    async fn send(&self, from: &Account, tx: Tx) -> Result<Receipt>;

    /// Sends several transactions in order, each with its own outcome (one
    /// that fails does not stop the others). The embedded chain mines them
    /// into one block, one fsync; a node gets them one after another.
    async fn send_all(&self, txs: Vec<(Account, Tx)>) -> Vec<Result<Receipt>> {
        let mut outcomes = Vec::with_capacity(txs.len());
        for (from, tx) in txs {
            outcomes.push(self.send(&from, tx).await);
        }
        outcomes
    }

    /// Runs a call against the latest state without changing it.
    async fn call(&self, from: Address, to: Address, input: Bytes) -> Result<Bytes>;

    /// The logs in a block range.
    async fn logs(&self, query: &LogQuery) -> Result<Vec<ChainLog>>;

    /// Development chains only: sets an account's balance.
    async fn set_balance(&self, address: Address, wei: U256) -> Result<()>;

    /// Development chains only: moves the clock forward and mines a block.
    async fn increase_time(&self, seconds: u64) -> Result<()>;

    /// Development chains only: mines an empty block; returns its number.
    async fn mine(&self) -> Result<u64>;
}
