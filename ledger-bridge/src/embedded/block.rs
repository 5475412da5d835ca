//! Signing, executing and mining: a batch of transactions into blocks.

use super::*;

/// A signed transaction with the sender its signature recovers to.
pub(super) struct Signed {
    pub(super) envelope: TxEnvelope,
    pub(super) hash: B256,
    pub(super) sender: Address,
}

/// Signs `tx` with the sender's key at `nonce` (its next, as the batch's
/// state has it).
pub(super) fn sign(chain_id: u64, nonce: u64, from: &Account, tx: &Tx) -> Result<Signed> {
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
pub(super) struct Run {
    pub(super) gas_used: u64,
    pub(super) logs: Vec<Log>,
    pub(super) contract_address: Option<Address>,
    pub(super) state: EvmState,
}

/// Executes a signed transaction against `db` in `block`; a revert or a
/// halt is an error and changes nothing.
pub(super) fn execute_signed(
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

pub(super) fn execute(
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
pub(super) struct OpenBlock {
    pub(super) parent: Head,
    pub(super) env: BlockEnv,
    pub(super) gas_used: u64,
    pub(super) state_root: B256,
    pub(super) transactions: Vec<TxEnvelope>,
    pub(super) logs: u64,
}

impl OpenBlock {
    pub(super) fn after(parent: Head, env: BlockEnv) -> OpenBlock {
        OpenBlock {
            state_root: parent.state_root,
            parent,
            env,
            gas_used: 0,
            transactions: Vec::new(),
            logs: 0,
        }
    }

    pub(super) fn number(&self) -> u64 {
        self.parent.number + 1
    }

    /// Writes the transaction's row and its logs (its state changes are
    /// written with the batch's).
    pub(super) fn include(
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
    pub(super) fn seal(self, db: &rusqlite::Transaction<'_>) -> Result<OpenBlock> {
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

pub(super) fn dropped() -> Error {
    Error::Config("the chain's worker dropped a transaction unanswered".to_owned())
}

pub(super) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub(super) fn header(
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
pub(super) fn state_commitment(parent: B256, state: &EvmState) -> B256 {
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
