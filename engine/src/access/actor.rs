//! The acting account, authenticated by its key: an operation acts as an
//! account only when that account's key is unlocked (here, from the
//! keystore; against a server, by the token its signature earned). A name
//! that is not an account is an error, never a free label.

use cohort_ledger_bridge::Account;
use cohort_ledger_bridge::alloy::primitives::Address;
use rusqlite::Connection;

use crate::keys::{accounts, keystore::KeyStore};
use crate::{Error, Result};

/// An account whose key this process holds.
#[derive(Clone)]
pub struct Actor {
    account: Account,
}

impl std::fmt::Debug for Actor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Actor({} {:#x})",
            self.account.name(),
            self.account.address()
        )
    }
}

impl Actor {
    /// The account `name`, its key unwrapped from the keystore.
    pub fn authenticate(conn: &Connection, keys: &dyn KeyStore, name: &str) -> Result<Actor> {
        match accounts::get(conn, keys, name) {
            Ok(account) => Ok(Actor { account }),
            Err(Error::NotFound(_)) => Err(Error::Forbidden(format!(
                "`{name}` is not an account: an operation acts only as an account whose key it holds (`cohort account list`; `--as NAME`)"
            ))),
            Err(e) => Err(e),
        }
    }

    /// An actor from an account already unlocked (a server's signed-in caller).
    pub fn from_account(account: Account) -> Actor {
        Actor { account }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        self.account.name()
    }

    /// Its address.
    pub fn address(&self) -> Address {
        self.account.address()
    }

    /// Its key, to sign with.
    pub fn account(&self) -> &Account {
        &self.account
    }
}
