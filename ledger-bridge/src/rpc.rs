//! `RpcLedger`: any Ethereum JSON-RPC node, through an alloy provider over
//! HTTP (anvil in the tests; Besu or geth in production).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alloy::eips::BlockNumberOrTag;
use alloy::network::TransactionBuilder;
use alloy::primitives::{Address, B256, Bytes, U256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::rpc::types::{Filter, TransactionRequest};
use alloy::transports::{RpcError, TransportErrorKind};
use async_trait::async_trait;

use crate::contracts::decode_revert;
use crate::error::{Error, Result};
use crate::ledger::{Account, Backend, ChainLog, Ledger, LogQuery, Receipt, Tx};

/// How long [`RpcLedger::send`] waits for a transaction to be mined unless
/// told otherwise.
pub const DEFAULT_RECEIPT_TIMEOUT: Duration = Duration::from_secs(120);

/// A chain behind a JSON-RPC endpoint.
#[derive(Clone)]
pub struct RpcLedger {
    url: String,
    reader: DynProvider,
    senders: Arc<Mutex<HashMap<Address, Sender>>>,
    receipt_timeout: Duration,
}

/// One account's provider (its wallet signs) and the lock that keeps its
/// nonces in order across concurrent sends.
#[derive(Clone)]
struct Sender {
    provider: DynProvider,
    nonce_lock: Arc<tokio::sync::Mutex<()>>,
}

impl RpcLedger {
    /// A ledger on the node at `url` (`http://host:port`). Nothing is sent
    /// until the first call.
    pub fn connect(url: &str) -> Result<RpcLedger> {
        let parsed: alloy::transports::http::reqwest::Url = url
            .parse()
            .map_err(|e| Error::Config(format!("`{url}` is not a URL: {e}")))?;
        if parsed.scheme() != "http" {
            return Err(Error::Config(format!(
                "`{url}`: only http:// node URLs are supported by this build (put a TLS-terminating \
                 proxy in front of an https node, or reach it over a private network)"
            )));
        }
        let reader = ProviderBuilder::new()
            .disable_recommended_fillers()
            .connect_http(parsed)
            .erased();
        Ok(RpcLedger {
            url: url.to_string(),
            reader,
            senders: Arc::new(Mutex::new(HashMap::new())),
            receipt_timeout: DEFAULT_RECEIPT_TIMEOUT,
        })
    }

    /// Waits at most `timeout` for each sent transaction to be mined.
    pub fn with_receipt_timeout(mut self, timeout: Duration) -> RpcLedger {
        self.receipt_timeout = timeout;
        self
    }

    fn sender(&self, account: &Account) -> Result<Sender> {
        let mut senders = self.senders.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(sender) = senders.get(&account.address()) {
            return Ok(sender.clone());
        }
        let url = self
            .url
            .parse()
            .map_err(|e| Error::Config(format!("{e}")))?;
        let provider = ProviderBuilder::new()
            .wallet(account.signer().clone())
            .connect_http(url)
            .erased();
        let sender = Sender {
            provider,
            nonce_lock: Arc::new(tokio::sync::Mutex::new(())),
        };
        senders.insert(account.address(), sender.clone());
        Ok(sender)
    }

    async fn dev_request(
        &self,
        operation: &'static str,
        method: &'static str,
        params: serde_json::Value,
    ) -> Result<()> {
        self.reader
            .raw_request::<_, serde_json::Value>(method.into(), params)
            .await
            .map(|_| ())
            .map_err(|e| match e {
                RpcError::ErrorResp(ref payload)
                    if payload.code == -32601 || payload.code == -32600 =>
                {
                    Error::Unsupported {
                        operation,
                        backend: self.backend().to_string(),
                    }
                }
                other => rpc_error(other),
            })
    }
}

/// Maps a transport error to ours, decoding a contract's revert data.
fn rpc_error(error: RpcError<TransportErrorKind>) -> Error {
    if let Some(data) = error
        .as_error_resp()
        .and_then(|payload| payload.as_revert_data())
    {
        return Error::Reverted(decode_revert(&data));
    }
    match error {
        RpcError::ErrorResp(payload) => Error::Rejected(payload.message.to_string()),
        other => Error::Rpc(other.to_string()),
    }
}

#[async_trait]
impl Ledger for RpcLedger {
    fn backend(&self) -> Backend {
        Backend::Rpc {
            url: self.url.clone(),
        }
    }

    async fn chain_id(&self) -> Result<u64> {
        self.reader.get_chain_id().await.map_err(rpc_error)
    }

    async fn block_number(&self) -> Result<u64> {
        self.reader.get_block_number().await.map_err(rpc_error)
    }

    async fn block_hash(&self, number: u64) -> Result<Option<B256>> {
        let block = self
            .reader
            .get_block_by_number(BlockNumberOrTag::Number(number))
            .await
            .map_err(rpc_error)?;
        Ok(block.map(|b| b.header.hash))
    }

    async fn timestamp(&self) -> Result<u64> {
        let block = self
            .reader
            .get_block_by_number(BlockNumberOrTag::Latest)
            .await
            .map_err(rpc_error)?
            .ok_or_else(|| Error::Rpc("the node has no latest block".into()))?;
        Ok(block.header.timestamp)
    }

    async fn balance(&self, address: Address) -> Result<U256> {
        self.reader.get_balance(address).await.map_err(rpc_error)
    }

    async fn send(&self, from: &Account, tx: Tx) -> Result<Receipt> {
        let sender = self.sender(from)?;
        let mut request = TransactionRequest::default()
            .with_from(from.address())
            .with_value(tx.value);
        request = match tx.to {
            Some(to) => request.with_to(to).with_input(tx.input),
            None => request.with_deploy_code(tx.input),
        };
        let hash = {
            // One transaction of an account in flight to the pool at a time,
            // with the nonce read under the lock: concurrent sends never
            // share a nonce, and a refused one consumes none.
            let _guard = sender.nonce_lock.lock().await;
            let nonce = sender
                .provider
                .get_transaction_count(from.address())
                .pending()
                .await
                .map_err(rpc_error)?;
            let pending = sender
                .provider
                .send_transaction(request.with_nonce(nonce))
                .await
                .map_err(rpc_error)?;
            *pending.tx_hash()
        };
        let started = Instant::now();
        let mut wait = Duration::from_millis(5);
        let receipt = loop {
            if let Some(receipt) = self
                .reader
                .get_transaction_receipt(hash)
                .await
                .map_err(rpc_error)?
            {
                break receipt;
            }
            if started.elapsed() > self.receipt_timeout {
                return Err(Error::Rpc(format!(
                    "transaction {hash} was not mined within {:?}",
                    self.receipt_timeout
                )));
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_millis(500));
        };
        if !receipt.status() {
            return Err(Error::Rejected(format!(
                "transaction {hash} was mined but failed (out of gas, or a revert the estimate missed)"
            )));
        }
        let block_number = receipt
            .block_number
            .ok_or_else(|| Error::Rpc(format!("receipt of {hash} has no block number")))?;
        let logs = receipt
            .inner
            .logs()
            .iter()
            .map(|log| ChainLog {
                block_number,
                tx_hash: hash,
                log_index: log.log_index.unwrap_or_default(),
                log: log.inner.clone(),
            })
            .collect();
        Ok(Receipt {
            tx_hash: hash,
            block_number,
            gas_used: receipt.gas_used,
            contract_address: receipt.contract_address,
            logs,
        })
    }

    async fn call(&self, from: Address, to: Address, input: Bytes) -> Result<Bytes> {
        let request = TransactionRequest::default()
            .with_from(from)
            .with_to(to)
            .with_input(input);
        self.reader
            .call(request)
            .block(BlockNumberOrTag::Latest.into())
            .await
            .map_err(rpc_error)
    }

    async fn logs(&self, query: &LogQuery) -> Result<Vec<ChainLog>> {
        let mut filter = Filter::new()
            .from_block(query.from_block)
            .to_block(query.to_block);
        if !query.addresses.is_empty() {
            filter = filter.address(query.addresses.clone());
        }
        let logs = self.reader.get_logs(&filter).await.map_err(rpc_error)?;
        logs.into_iter()
            .map(|log| {
                let missing =
                    |what| Error::Rpc(format!("the node returned a log without its {what}"));
                Ok(ChainLog {
                    block_number: log.block_number.ok_or_else(|| missing("block number"))?,
                    tx_hash: log
                        .transaction_hash
                        .ok_or_else(|| missing("transaction hash"))?,
                    log_index: log.log_index.ok_or_else(|| missing("index"))?,
                    log: log.inner,
                })
            })
            .collect()
    }

    async fn set_balance(&self, address: Address, wei: U256) -> Result<()> {
        self.dev_request(
            "setting a balance",
            "anvil_setBalance",
            serde_json::json!([address, wei]),
        )
        .await
    }

    async fn increase_time(&self, seconds: u64) -> Result<()> {
        self.dev_request(
            "moving the clock",
            "evm_increaseTime",
            serde_json::json!([seconds]),
        )
        .await?;
        self.mine().await.map(|_| ())
    }

    async fn mine(&self) -> Result<u64> {
        self.dev_request("mining a block", "evm_mine", serde_json::json!([]))
            .await?;
        self.block_number().await
    }
}
