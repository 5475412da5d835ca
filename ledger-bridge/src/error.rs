//! The crate's one error type.

use alloy::primitives::{B256, Bytes};

/// What went wrong talking to the chain.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A contract refused the call with one of its custom errors (or a
    /// revert string); nothing changed on chain.
    #[error("the contract refused: {0}")]
    Reverted(Revert),
    /// The chain refused the transaction before running it (nonce, funds,
    /// gas, chain id), or it failed without revert data.
    #[error("the chain refused the transaction: {0}")]
    Rejected(String),
    /// The JSON-RPC node could not be reached or answered with an error.
    #[error("JSON-RPC node: {0}")]
    Rpc(String),
    /// The embedded chain's or the follower's SQLite database failed.
    #[error("ledger database: {0}")]
    Store(#[from] rusqlite::Error),
    /// A development-chain operation (funding, moving time) on a backend
    /// that does not allow it.
    #[error("{operation} is only available on a development chain ({backend})")]
    Unsupported {
        /// What was asked.
        operation: &'static str,
        /// The backend that refused.
        backend: String,
    },
    /// Return data, a log or a stored value that does not decode.
    #[error("could not decode {what}: {reason}")]
    Decode {
        /// What was being decoded.
        what: &'static str,
        /// Why it failed.
        reason: String,
    },
    /// The chain no longer has a block the follower processed: a
    /// reorganisation deeper than the configured confirmations.
    #[error(
        "block {number} changed after the follower processed it (stored {stored}, chain has {found}); \
         it was reorganised deeper than the follower's confirmations: raise them and resynchronise"
    )]
    Reorg {
        /// The block number.
        number: u64,
        /// The hash the follower stored.
        stored: B256,
        /// The hash the chain has now (zero if the block is gone).
        found: B256,
    },
    /// A configuration or argument that cannot work, with what to do.
    #[error("{0}")]
    Config(String),
    /// Another process owns the embedded chain (one process writes a chain
    /// at a time).
    #[error("the embedded chain {path} is owned by {owner}{waited}: {advice}")]
    ChainBusy {
        /// The chain file.
        path: String,
        /// Who holds it (its pid and command).
        owner: String,
        /// How long this process waited, in words ("" when it did not).
        waited: String,
        /// What to do.
        advice: String,
    },
    /// A local node (anvil) could not be started or stopped.
    #[error("local node: {0}")]
    Node(String),
}

/// A contract's refusal, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revert {
    /// The contract error's name (`BudgetExceeded`), `Error` for a revert
    /// string, `Panic` for a Solidity panic, or `unknown`.
    pub name: String,
    /// The error with its arguments, for people.
    pub message: String,
    /// The raw revert data.
    pub data: Bytes,
}

impl std::fmt::Display for Revert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl Error {
    /// The contract error's name, if this is a contract's refusal.
    pub fn revert_name(&self) -> Option<&str> {
        match self {
            Error::Reverted(revert) => Some(&revert.name),
            _ => None,
        }
    }

    pub(crate) fn decode(what: &'static str, reason: impl std::fmt::Display) -> Error {
        Error::Decode {
            what,
            reason: reason.to_string(),
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
