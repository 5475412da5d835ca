//! revm's view of the persisted state, and writing a batch's changes back.

use super::*;

/// Writes what a batch's transactions changed (revm's cache of it) into
/// the SQLite transaction; accounts the batch only read are left alone.
pub(super) fn write_state(db: &rusqlite::Transaction<'_>, cache: Cache) -> Result<()> {
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
pub(super) struct State<'a>(pub(super) &'a Connection);

/// How many contracts' analysed code the process keeps.
pub(super) const ANALYSED_CODE_CACHE: usize = 256;

/// Contract code as revm runs it (its jump table analysed), by code hash.
/// Code is immutable under its hash, so one cache serves every chain in
/// the process; analysing a contract on every call was 7% of a
/// transaction.
pub(super) fn analysed() -> MutexGuard<'static, HashMap<B256, Bytecode>> {
    static CODE: LazyLock<Mutex<HashMap<B256, Bytecode>>> = LazyLock::new(Default::default);
    CODE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A SQLite failure inside revm.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub(super) struct StoreError(#[from] pub(super) rusqlite::Error);

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
