//! The chain's SQLite store: the head, blocks and logs, view calls on one
//! snapshot.

use super::*;

/// The latest block of the chain `conn` sees.
pub(super) fn head(conn: &Connection) -> Result<Head> {
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
pub(super) fn time_offset(conn: &Connection) -> Result<u64> {
    let bytes: Vec<u8> = conn
        .prepare_cached("SELECT value FROM meta WHERE key = 'time_offset'")?
        .query_row([], |r| r.get(0))?;
    Ok(u64::from_be_bytes(bytes.try_into().map_err(|_| {
        Error::decode("the stored time offset", "not 8 bytes")
    })?))
}

/// The environment of the block after `head`: now (plus the development
/// clock's offset), never before its parent.
pub(super) fn next_block(conn: &Connection, head: &Head) -> Result<BlockEnv> {
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
    pub(super) fn snapshot<T>(&self, read: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let tx = self.conn.unchecked_transaction()?;
        let out = read(&tx);
        drop(tx);
        out
    }

    pub(super) fn block_hash(&self, number: u64) -> Result<Option<B256>> {
        Ok(self
            .conn
            .prepare_cached("SELECT hash FROM blocks WHERE number = ?1")?
            .query_row(params![number as i64], |r| r.get::<_, [u8; 32]>(0))
            .optional()?
            .map(B256::from))
    }

    pub(super) fn time_offset(&self) -> Result<u64> {
        time_offset(&self.conn)
    }

    /// Mines `batch` in the order it was sent and answers each sender.
    /// One that fails alone (a revert, a bad nonce) is answered with its
    /// error and leaves no trace; a failure of the database fails them all
    /// and writes nothing.
    pub(super) fn mine(&mut self, batch: Vec<Pending>) {
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
    pub(super) fn mine_blocks(
        &mut self,
        batch: Vec<(Account, Tx)>,
    ) -> Result<Vec<Result<Receipt>>> {
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

    pub(super) fn call(&self, from: Address, to: Address, input: Bytes) -> Result<Bytes> {
        self.snapshot(|conn| call_in(conn, self.chain_id, from, to, input))
    }

    pub(super) fn logs(&self, query: &LogQuery) -> Result<Vec<ChainLog>> {
        self.snapshot(|conn| logs_in(conn, query))
    }

    pub(super) fn set_balance(&mut self, address: Address, wei: U256) -> Result<()> {
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

    pub(super) fn mine_empty(&mut self) -> Result<u64> {
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
pub(super) fn call_in(
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
pub(super) fn logs_in(conn: &Connection, query: &LogQuery) -> Result<Vec<ChainLog>> {
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
