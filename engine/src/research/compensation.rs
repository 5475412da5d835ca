//! Compensation for privacy loss. In differential privacy every patient in
//! the data bears a query's privacy loss, whether or not their rows matched
//! its predicate; paying only those who matched would make the payment a
//! release. So a committed query's fee is its price per ε times the ε (or
//! ρ) it charged, and it is shared equally by every patient of the study's
//! consenting set at the time of the query (public already, through the
//! consent transactions): a Merkle tree over their accounts is committed
//! with the debit, and the contract pays each member `fee / members`. A
//! patient sees what they earned per study and query and claims it with a
//! proof of their leaf, which reveals only that they consented.

use cohort_ledger_bridge::Account;
use cohort_ledger_bridge::alloy::primitives::{Address, B256, U256};
use cohort_ledger_bridge::merkle::MemberTree;
use rusqlite::params;
use serde::Serialize;

use super::{Session, journal, study};
use crate::{Error, Result, audit};

/// One share of one query's fee.
#[derive(Debug, Clone, Serialize)]
pub struct Earning {
    /// The study.
    pub study_id: u64,
    /// The query's id.
    pub query_id: String,
    /// Its ledger id.
    pub ledger_id: String,
    /// The share (wei).
    pub amount: String,
    /// The share, for people.
    pub amount_text: String,
    /// Whether it was claimed.
    pub claimed: bool,
}

/// What a patient has earned.
#[derive(Debug, Clone, Serialize)]
pub struct Earnings {
    /// The account.
    pub address: String,
    /// Every share.
    pub shares: Vec<Earning>,
    /// All earned.
    pub earned: String,
    /// Claimed so far.
    pub claimed: String,
    /// Left to claim.
    pub claimable: String,
}

/// What a claim paid.
#[derive(Debug, Clone, Serialize)]
pub struct Claimed {
    /// The account paid.
    pub address: String,
    /// Queries paid for.
    pub queries: Vec<String>,
    /// The total paid (wei).
    pub paid: String,
    /// The total, for people.
    pub paid_text: String,
}

impl Session {
    /// What `address` earned, per study and query (optionally one study).
    pub async fn earnings(&self, address: Address, study_id: Option<u64>) -> Result<Earnings> {
        self.sync().await?;
        let conn = self.dir.connect()?;
        let mut s = conn.prepare(
            "SELECT q.study_id, q.query_id, q.ledger_id, q.share,
                EXISTS (SELECT 1 FROM ledger_claims c WHERE c.query_id = q.ledger_id AND c.patient = m.address)
             FROM research_member_sets m JOIN research_queries q ON q.members_root = m.members_root
             WHERE m.address = ?1 AND q.share IS NOT NULL AND q.share != '0'
               AND q.state IN ('committed', 'delivered') AND (?2 IS NULL OR q.study_id = ?2)
             ORDER BY q.study_id, q.created_at",
        )?;
        let rows = s.query_map(
            params![format!("{address:#x}"), study_id.map(|i| i as i64)],
            |r| {
                Ok((
                    r.get::<_, i64>(0)? as u64,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, bool>(4)?,
                ))
            },
        )?;
        let (mut earned, mut claimed) = (U256::ZERO, U256::ZERO);
        let mut shares = Vec::new();
        for row in rows {
            let (study_id, query_id, ledger_id, amount, was_claimed) = row?;
            let wei: U256 = amount.parse().unwrap_or(U256::ZERO);
            earned += wei;
            if was_claimed {
                claimed += wei;
            }
            shares.push(Earning {
                study_id,
                query_id,
                ledger_id,
                amount_text: study::format_wei(wei),
                amount,
                claimed: was_claimed,
            });
        }
        Ok(Earnings {
            address: format!("{address:#x}"),
            shares,
            earned: study::format_wei(earned),
            claimed: study::format_wei(claimed),
            claimable: study::format_wei(earned - claimed),
        })
    }

    /// Claims every unclaimed share of `patient` (optionally of one study),
    /// each with its Merkle proof.
    pub async fn claim(&self, patient: &Account, study_id: Option<u64>) -> Result<Claimed> {
        let conn = self.dir.connect()?;
        // The patient's identity (a recovered key claims the shares of the
        // identity it acts for; the contract pays the key).
        let identity = crate::access::patients::of_account(&conn, patient.name())?
            .map_or(patient.address(), |p| p.address);
        let earnings = self.earnings(identity, study_id).await?;
        let mut paid = U256::ZERO;
        let mut queries = Vec::new();
        for share in earnings.shares.iter().filter(|s| !s.claimed) {
            let all = journal::members(&conn, &share.ledger_id)?;
            let mut members = Vec::with_capacity(all.len());
            for a in &all {
                members.push(
                    a.parse::<Address>().map_err(|_| {
                        Error::Invalid(format!("a stored address `{a}` is not one"))
                    })?,
                );
            }
            let tree = MemberTree::new(members)?;
            let proof = tree.proof(identity).ok_or_else(|| {
                Error::Invalid(format!(
                    "{:#x} has no share of query {}",
                    identity, share.query_id
                ))
            })?;
            let amount: U256 = share.amount.parse().unwrap_or(U256::ZERO);
            let ledger_id: B256 = share
                .ledger_id
                .parse()
                .map_err(|_| Error::Invalid("a malformed ledger id in the journal".into()))?;
            self.client
                .claim(patient, share.study_id, ledger_id, proof)
                .await?;
            paid += amount;
            queries.push(share.query_id.clone());
        }
        if queries.is_empty() {
            return Err(Error::Invalid(format!(
                "account `{}` has nothing left to claim{}",
                patient.name(),
                study_id
                    .map(|i| format!(" in study {i}"))
                    .unwrap_or_default()
            )));
        }
        audit::append(
            &conn,
            &audit::Event {
                actor: patient.name(),
                action: "compensation.claim",
                target: &format!("{identity:#x}"),
                purpose: "compensation",
                detail: serde_json::json!({ "queries": queries, "paid": paid.to_string() }),
            },
        )?;
        Ok(Claimed {
            address: format!("{identity:#x}"),
            queries,
            paid: paid.to_string(),
            paid_text: study::format_wei(paid),
        })
    }
}
