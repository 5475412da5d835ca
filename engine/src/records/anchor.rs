//! Records anchored on chain. Every stored version's anchor is the SHA-256
//! of its encrypted block (`record_anchors`, written with the version).
//! Ingested versions are anchored by the custodian (the ENGINE account) in
//! batches: one `anchorRecords(root, count)` transaction per batch,
//! whatever its size, the root of a Merkle tree whose leaves are
//! `record_leaf(keccak256(record id), version, block hash)`. A provider's
//! update is anchored on its own by `updateHealthRecords`, signed by the
//! provider. `records verify` re-hashes a version's block and proves it
//! against the root (or the update's on-chain version) the chain holds.

use cohort_ledger_bridge::alloy::primitives::{B256, U256, keccak256};
use cohort_ledger_bridge::contracts::PatientRecords;
use cohort_ledger_bridge::merkle::{LeafTree, record_leaf, verify as verify_proof};
use cohort_ledger_bridge::{Account, Client, Target};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use sha2::Digest;

use super::vault::Vault;
use crate::{Error, Result};

/// The on-chain id of a vault record: `keccak256(record id)`.
pub fn record_key(record_id: &str) -> B256 {
    keccak256(record_id.as_bytes())
}

/// A batch anchored.
#[derive(Debug, Clone, Serialize)]
pub struct Anchored {
    /// The batch's number on chain.
    pub batch: u64,
    /// Versions in it.
    pub count: usize,
    /// Its Merkle root.
    pub root: String,
    /// The transaction.
    pub tx_hash: String,
}

/// Versions waiting to be anchored.
pub fn pending(conn: &Connection) -> Result<u64> {
    Ok(conn.query_row(
        "SELECT COUNT(*) FROM record_anchors WHERE (batch IS NULL OR batch = -1) AND tx_hash IS NULL",
        [],
        |r| r.get::<_, i64>(0),
    )? as u64)
}

fn leaf_of(record_id: &str, version: i64, hash: &[u8]) -> Result<B256> {
    let hash: [u8; 32] = hash
        .try_into()
        .map_err(|_| Error::Invalid(format!("{record_id} v{version} has a bad anchor hash")))?;
    Ok(record_leaf(
        record_key(record_id),
        version as u64,
        B256::from(hash),
    ))
}

/// Anchors every waiting version in one batch, as the custodian `engine`;
/// `None` when nothing waits. A failure leaves them waiting.
pub async fn anchor_pending(
    conn: &Connection,
    client: &Client,
    engine: &Account,
) -> Result<Option<Anchored>> {
    // Claim the waiting versions (batch -1) in one statement, so a version
    // stored meanwhile waits for the next batch; a claim a crash left
    // behind is waiting again.
    {
        let tx = conn.unchecked_transaction()?;
        tx.execute(
            "UPDATE record_anchors SET batch = NULL WHERE batch = -1",
            [],
        )?;
        tx.execute(
            "UPDATE record_anchors SET batch = -1 WHERE batch IS NULL AND tx_hash IS NULL",
            [],
        )?;
        tx.commit()?;
    }
    let rows: Vec<(String, i64, Vec<u8>)> = conn
        .prepare("SELECT record_id, version, data_hash FROM record_anchors WHERE batch = -1")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    if rows.is_empty() {
        return Ok(None);
    }
    let leaves = rows
        .iter()
        .map(|(id, v, h)| leaf_of(id, *v, h))
        .collect::<Result<Vec<_>>>()?;
    let tree = LeafTree::new(leaves)?;
    let sent = client
        .send(
            engine,
            Target::Records,
            PatientRecords::anchorRecordsCall {
                root: tree.root(),
                count: rows.len() as u32,
            },
        )
        .await;
    let receipt = match sent {
        Ok(r) => r,
        Err(e) => {
            // Not anchored: the versions wait again.
            conn.execute(
                "UPDATE record_anchors SET batch = NULL WHERE batch = -1",
                [],
            )?;
            return Err(e.into());
        }
    };
    let batch = receipt
        .logs
        .iter()
        .find_map(|l| {
            use cohort_ledger_bridge::alloy::sol_types::SolEvent;
            PatientRecords::RecordsAnchored::decode_log(&l.log).ok()
        })
        .ok_or_else(|| {
            Error::Invalid("the anchor's transaction has no RecordsAnchored event".into())
        })?
        .data
        .batch
        .to::<u64>();
    let tx = conn.unchecked_transaction()?;
    tx.execute(
        "UPDATE record_anchors SET batch = ?1 WHERE batch = -1",
        [batch as i64],
    )?;
    crate::audit::append(
        &tx,
        &crate::audit::Event {
            actor: engine.name(),
            action: "records.anchor",
            target: &format!("anchor/{batch}"),
            purpose: "operations",
            detail: serde_json::json!({ "versions": rows.len(), "root": format!("{:#x}", tree.root()) }),
        },
    )?;
    tx.commit()?;
    Ok(Some(Anchored {
        batch,
        count: rows.len(),
        root: format!("{:#x}", tree.root()),
        tx_hash: format!("{:#x}", receipt.tx_hash),
    }))
}

/// What `records verify` found for one version.
#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    /// `ResourceType/id`.
    pub record_id: String,
    /// The version.
    pub version: i64,
    /// Its block.
    pub cid: String,
    /// The SHA-256 of the block's bytes now.
    pub block_hash: String,
    /// How it is anchored: `batch N`, `update tx 0x…`, or `not anchored yet`.
    pub anchor: String,
    /// Whether the block's bytes match what the chain holds.
    pub verified: bool,
    /// Why not, when not.
    pub problem: Option<String>,
}

/// Checks that a version's block bytes hash to what the chain holds: the
/// batch root (by a Merkle proof) or the update's on-chain version. Reads
/// no plaintext (the anchored hash is of the encrypted block).
pub async fn verify(
    vault: &Vault,
    client: &Client,
    record_id: &str,
    version: Option<i64>,
) -> Result<Verification> {
    let history = vault.history(record_id)?;
    let rv = match version {
        Some(v) => history
            .into_iter()
            .find(|r| r.version == v)
            .ok_or_else(|| Error::NotFound(format!("{record_id} has no version {v}")))?,
        None => history.into_iter().last().expect("history is never empty"),
    };
    let conn = vault.conn();
    let anchor: Option<(Vec<u8>, Option<i64>, Option<String>)> = conn
        .query_row(
            "SELECT data_hash, batch, tx_hash FROM record_anchors WHERE record_id = ?1 AND version = ?2",
            params![record_id, rv.version],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    let (block_hash, problem_reading) = match vault.blocks().get(&rv.cid) {
        Ok(bytes) => (sha2::Sha256::digest(&bytes).to_vec(), None),
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    let mut out = Verification {
        record_id: record_id.to_string(),
        version: rv.version,
        cid: rv.cid.clone(),
        block_hash: data_encoding::HEXLOWER.encode(&block_hash),
        anchor: "not anchored yet".into(),
        verified: false,
        problem: problem_reading,
    };
    let Some((stored_hash, batch, tx_hash)) = anchor else {
        out.problem
            .get_or_insert_with(|| "this version was stored before records were anchored".into());
        return Ok(out);
    };
    if out.problem.is_some() {
        return Ok(out);
    }
    let leaf = leaf_of(record_id, rv.version, &block_hash)?;
    match (batch.filter(|b| *b >= 0), tx_hash) {
        (Some(batch), _) => {
            out.anchor = format!("batch {batch}");
            let members: Vec<(String, i64, Vec<u8>)> = conn
                .prepare(
                    "SELECT record_id, version, data_hash FROM record_anchors WHERE batch = ?1",
                )?
                .query_map([batch], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<rusqlite::Result<_>>()?;
            let leaves = members
                .iter()
                .map(|(id, v, h)| leaf_of(id, *v, h))
                .collect::<Result<Vec<_>>>()?;
            let tree = LeafTree::new(leaves)?;
            let on_chain = client
                .view(
                    Target::Records,
                    PatientRecords::anchorOfCall {
                        batch: U256::from(batch as u64),
                    },
                )
                .await?;
            let stored_leaf = leaf_of(record_id, rv.version, &stored_hash)?;
            let proof = tree.proof(stored_leaf).unwrap_or_default();
            out.verified =
                on_chain.root == tree.root() && verify_proof(on_chain.root, leaf, &proof);
            if !out.verified {
                out.problem = Some(if stored_hash != block_hash {
                    "the block's bytes differ from the bytes anchored on chain".into()
                } else {
                    "the batch's leaves do not prove to the root on chain".into()
                });
            }
        }
        (None, Some(tx)) => {
            out.anchor = format!("update tx {tx}");
            let versions = client
                .view(
                    Target::Records,
                    PatientRecords::versionsOfCall {
                        recordId: record_key(record_id),
                    },
                )
                .await?;
            let hash = B256::from_slice(&block_hash);
            out.verified = versions.iter().any(|v| v.dataHash == hash);
            if !out.verified {
                out.problem =
                    Some("no on-chain version of this record has the block's hash".into());
            }
        }
        (None, None) => {
            out.problem = Some("waiting for the custodian's next anchor batch".into());
        }
    }
    Ok(out)
}
