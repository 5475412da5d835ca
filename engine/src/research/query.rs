//! A budgeted query: plan and cost, reserve on the ledger, execute with
//! noise, store the answer, commit the debit with the result hash and the
//! contributors' root, and only then answer. A failure after the
//! reservation releases it; a crash is finished or undone by
//! [`Session::recover`]; a repeated query id is answered from the journal.

use std::collections::BTreeMap;
use std::sync::Arc;

use cohort_anonymizer::accountant::{Amount, Charge};
use cohort_ledger_bridge::alloy::primitives::{Address, B256, U256, keccak256};
use cohort_ledger_bridge::contracts::ResearchStudy;
use cohort_ledger_bridge::merkle::ContributorTree;
use cohort_ledger_bridge::{Cost, Target};
use cohort_query_planner::{PlannedAggregate, Planner, QueryOptions};
use rusqlite::Connection;
use serde::{Deserialize, Serialize};

use super::journal::{self, QueryLock};
use super::{Session, ledger_query_id};
use crate::{Error, Result, audit};

/// What a researcher asks.
#[derive(Debug, Clone, Default)]
pub struct QueryRequest {
    /// The SQL (or `EXPLAIN PRIVACY ...`).
    pub sql: String,
    /// The query's id: a retry with the same id is answered from the
    /// journal, never run again. A fresh one is drawn when absent.
    pub query_id: Option<String>,
    /// ε of this query (else the study's default).
    pub epsilon: Option<Amount>,
    /// ρ of this query.
    pub rho: Option<Amount>,
    /// δ for key selection.
    pub delta: Option<Amount>,
    /// Split weights.
    pub weights: BTreeMap<String, u32>,
    /// Only plan and cost.
    pub explain: bool,
}

/// The answer as stored and hashed: exactly what the researcher receives.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Answer {
    /// The study.
    pub study_id: u64,
    /// The query's id.
    pub query_id: String,
    /// Its id on the ledger.
    pub ledger_id: String,
    /// The SQL.
    pub sql: String,
    /// The answer's columns.
    pub columns: Vec<String>,
    /// The answer's rows.
    pub rows: Vec<Vec<serde_json::Value>>,
    /// Every noisy release with its 95% error.
    pub releases: serde_json::Value,
    /// What it cost.
    pub cost: String,
    /// Patients whose rows contributed.
    pub contributors: usize,
    /// The fee shared by them (wei).
    pub fee: String,
    /// The columns computed under encryption. In the stored (hashed) answer
    /// their cells are sealed results; they are decrypted after the debit
    /// is committed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub encrypted: Vec<super::encryption::EncryptedOutput>,
}

/// What `cohort query <study>` prints.
#[derive(Debug, Clone, Serialize)]
pub struct QueryOutcome {
    /// The answer (absent for `--explain`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answer: Option<Answer>,
    /// keccak256 of the answer's JSON, committed on chain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result_hash: Option<String>,
    /// The Merkle root of the contributors' shares, committed on chain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contributors_root: Option<String>,
    /// The private plan.
    pub plan: Vec<PlannedAggregate>,
    /// The plan's cost.
    pub cost: String,
    /// The study's budget left after this query.
    pub remaining: String,
    /// Whether the answer came from the journal (a repeated query id).
    pub replayed: bool,
    /// `EXPLAIN PRIVACY` text, when only the plan was asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub explain: Option<String>,
}

/// What [`Session::recover`] did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Recovery {
    /// Queries whose stored answer was committed.
    pub committed: Vec<String>,
    /// Queries whose reservation was released.
    pub released: Vec<String>,
}

/// A fresh query id.
pub fn new_query_id() -> String {
    crate::release::new_query_id()
}

/// Test hook: with `COHORT_TEST_PAUSE_AT` naming a step, the process says
/// so on stderr and stops there for good, so that a test can SIGKILL it at
/// exactly that point and show what the crash leaves. Steps: `reserved`
/// (before the plan runs), `answered` (answer stored, before the commit),
/// `committed` (before the answer is delivered).
fn crash_point(step: &str) {
    if std::env::var("COHORT_TEST_PAUSE_AT").is_ok_and(|v| v == step) {
        use std::io::Write;
        let mut err = std::io::stderr();
        let _ = writeln!(err, "paused at {step}");
        let _ = err.flush();
        loop {
            std::thread::park();
        }
    }
}

fn to_cost(charge: &Charge) -> Cost {
    match *charge {
        Charge::Pure { epsilon } => Cost {
            primary: epsilon.units(),
            delta: 0,
        },
        Charge::Approx { epsilon, delta } => Cost {
            primary: epsilon.units(),
            delta: delta.units(),
        },
        Charge::Zcdp { rho } => Cost {
            primary: rho.units(),
            delta: 0,
        },
    }
}

fn remaining_charge(kind: u8, left: Cost) -> Charge {
    match kind {
        0 => Charge::Pure {
            epsilon: Amount::from_units(left.primary),
        },
        1 => Charge::Approx {
            epsilon: Amount::from_units(left.primary),
            delta: Amount::from_units(left.delta),
        },
        _ => Charge::Zcdp {
            rho: Amount::from_units(left.primary),
        },
    }
}

fn check_query_id(id: &str) -> Result<()> {
    let ok = !id.is_empty() && id.len() <= 128 && id.chars().all(|c| c.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "query id `{id}`: use 1 to 128 printable ASCII characters without spaces"
        )))
    }
}

fn parse_b256(text: Option<&str>, what: &str) -> Result<B256> {
    text.and_then(|t| t.parse().ok())
        .ok_or_else(|| Error::Invalid(format!("the journal's {what} is missing or malformed")))
}

impl Session {
    /// Finishes or undoes what crashed queries left: a stored answer is
    /// committed (and is then what its query id returns); a reservation
    /// without one is released. Queries still in flight are left alone.
    pub async fn recover(&self, conn: &Connection) -> Result<Recovery> {
        let mut report = Recovery::default();
        for entry in journal::unfinished(conn)? {
            let Some(_lock) = QueryLock::try_acquire(self.dir.root(), &entry.ledger_id)? else {
                continue;
            };
            // Re-read under the lock: the owner may have finished meanwhile.
            let Some(entry) = journal::get(conn, &entry.ledger_id)? else {
                continue;
            };
            match entry.state.as_str() {
                "answered" => match self.commit_stored(conn, &entry).await {
                    Ok(()) => report.committed.push(entry.query_id.clone()),
                    Err(_) => {
                        self.release_reservation(conn, &entry).await?;
                        report.released.push(entry.query_id.clone());
                    }
                },
                "reserving" | "reserved" => {
                    self.release_reservation(conn, &entry).await?;
                    report.released.push(entry.query_id.clone());
                }
                _ => {}
            }
        }
        Ok(report)
    }

    /// Releases `entry`'s reservation if the ledger holds one.
    async fn release_reservation(&self, conn: &Connection, entry: &journal::Entry) -> Result<()> {
        let id: B256 = entry
            .ledger_id
            .parse()
            .map_err(|_| Error::Invalid("a malformed ledger id in the journal".into()))?;
        let q = self
            .client
            .view(Target::Study, ResearchStudy::queryOfCall { queryId: id })
            .await?;
        if q.state == 1 {
            self.client
                .release(&self.engine, entry.study_id, id)
                .await?;
        }
        journal::set_state(conn, &entry.ledger_id, "released")
    }

    /// Commits a stored answer (idempotent on the ledger).
    async fn commit_stored(&self, conn: &Connection, entry: &journal::Entry) -> Result<()> {
        let id: B256 = parse_b256(Some(&entry.ledger_id), "ledger id")?;
        let hash = parse_b256(entry.result_hash.as_deref(), "result hash")?;
        let root = parse_b256(entry.contributors_root.as_deref(), "contributors root")?;
        let fee: U256 = entry
            .fee
            .as_deref()
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| Error::Invalid("the journal's fee is missing".into()))?;
        self.client
            .commit(&self.engine, entry.study_id, id, hash, root, fee)
            .await?;
        let answer: Answer = serde_json::from_str(entry.answer.as_deref().unwrap_or_default())
            .map_err(|e| Error::Invalid(format!("the journal's answer: {e}")))?;
        let tx = conn.unchecked_transaction()?;
        journal::set_state(&tx, &entry.ledger_id, "committed")?;
        audit::append(
            &tx,
            &audit::Event {
                actor: "engine",
                action: "research.query",
                target: &format!("study/{}/query/{}", entry.study_id, entry.query_id),
                purpose: "research",
                detail: serde_json::json!({
                    "ledger_id": entry.ledger_id,
                    "cost": answer.cost,
                    "result_hash": format!("{hash:#x}"),
                    "contributors_root": format!("{root:#x}"),
                    "contributors": answer.contributors,
                    "fee": answer.fee,
                }),
            },
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Answers `request` over study `id` for `actor`: see the module docs.
    pub async fn query(
        &self,
        actor: &str,
        id: u64,
        request: &QueryRequest,
    ) -> Result<QueryOutcome> {
        let conn = self.dir.connect()?;
        let (file, s) = self.study(&conn, id).await?;
        self.require_researcher(&conn, actor, &s, id)?;
        self.recover(&conn).await?;
        let query_id = request.query_id.clone().unwrap_or_else(new_query_id);
        check_query_id(&query_id)?;
        let ledger_id = ledger_query_id(self.contract(), id, &query_id);
        let ledger_hex = format!("{ledger_id:#x}");

        if !request.explain
            && let Some(entry) = journal::get(&conn, &ledger_hex)?
        {
            return self.replay(&conn, &file, &s, entry, &request.sql).await;
        }
        if s.status != 2 {
            return Err(Error::Invalid(format!(
                "study {id} is not approved ({} of the required approvals so far)",
                s.approvals
            )));
        }

        if s.escrow < file.fee_per_query() {
            return Err(Error::Invalid(format!(
                "study {id}'s escrow ({}) cannot pay a query's fee ({}): the researcher adds escrow first",
                super::study::format_wei(s.escrow),
                super::study::format_wei(file.fee_per_query())
            )));
        }
        let view = self.view(&conn, id, &file).await?;
        let planner = Planner::new(file.scope.clone(), view.tables.clone())?;
        let planner =
            match super::encryption::Executor::load(&conn, self.dir.root(), id, &file, self.job())?
            {
                Some(executor) => planner.with_encryption(Arc::new(executor)),
                None => planner,
            };
        let left = self.client.remaining(id).await?;
        let options = QueryOptions {
            remaining: remaining_charge(s.terms.kind, left),
            epsilon: request.epsilon,
            rho: request.rho,
            delta: request.delta,
            weights: request.weights.clone(),
        };
        let plan = planner.plan(&request.sql, &options).await?;
        let aggregates = plan.aggregates();
        let remaining_text = |c: Cost| super::budget_text(s.terms.kind, c.primary, c.delta);
        if request.explain || plan.is_explain() {
            return Ok(QueryOutcome {
                answer: None,
                result_hash: None,
                contributors_root: None,
                plan: aggregates,
                cost: plan.cost().to_string(),
                remaining: remaining_text(left),
                replayed: false,
                explain: Some(plan.explain()),
            });
        }

        let Some(_lock) = QueryLock::try_acquire(self.dir.root(), &ledger_hex)? else {
            return Err(Error::Invalid(format!(
                "query `{query_id}` is being answered by another process; wait for it and ask again with the same id"
            )));
        };
        let charge = plan.cost();
        let cost = to_cost(&charge);
        journal::begin(
            &conn,
            &ledger_hex,
            id,
            &query_id,
            actor,
            &request.sql,
            &charge.to_string(),
            cost.primary,
            cost.delta,
        )?;
        if let Err(e) = self.client.reserve(&self.engine, id, ledger_id, cost).await {
            // A refusal reserved nothing; an unclear failure may have: ask.
            let q = self
                .client
                .view(
                    Target::Study,
                    ResearchStudy::queryOfCall { queryId: ledger_id },
                )
                .await;
            match q {
                Ok(q) if q.state == 0 => journal::remove(&conn, &ledger_hex)?,
                _ => {
                    if let Some(entry) = journal::get(&conn, &ledger_hex)? {
                        self.release_reservation(&conn, &entry).await?;
                    }
                }
            }
            return Err(e.into());
        }
        journal::set_state(&conn, &ledger_hex, "reserved")?;
        crash_point("reserved");

        let answer = match plan.execute().await {
            Ok(answer) => answer,
            Err(e) => {
                let entry = journal::get(&conn, &ledger_hex)?.expect("begun above");
                self.release_reservation(&conn, &entry).await?;
                return Err(e.into());
            }
        };

        // Each contributor's share of the fee; the total is what the tree pays.
        let mut shares = Vec::with_capacity(answer.contributors.len());
        for pseudonym in &answer.contributors {
            let address = view.accounts.get(pseudonym).ok_or_else(|| {
                Error::Invalid(
                    "a contributor outside the consenting set (a view out of date)".into(),
                )
            })?;
            shares.push(*address);
        }
        let per_query = file.fee_per_query();
        let n = U256::from(shares.len());
        let share = if shares.is_empty() {
            U256::ZERO
        } else {
            per_query / n
        };
        let (root, fee, share_rows) = if share.is_zero() {
            (B256::ZERO, U256::ZERO, vec![])
        } else {
            let tree = ContributorTree::new(shares.iter().map(|a| (*a, share)))?;
            let rows: Vec<(String, String)> = shares
                .iter()
                .map(|a: &Address| (format!("{a:#x}"), share.to_string()))
                .collect();
            (tree.root(), tree.total(), rows)
        };
        let (columns, rows) = crate::sql::table(&answer.batches)?;
        let stored = Answer {
            study_id: id,
            query_id: query_id.clone(),
            ledger_id: ledger_hex.clone(),
            sql: request.sql.clone(),
            columns,
            rows,
            releases: serde_json::to_value(&answer.releases).expect("releases serialise"),
            cost: answer.cost.to_string(),
            contributors: answer.contributors.len(),
            fee: fee.to_string(),
            encrypted: aggregates
                .iter()
                .flat_map(|a| &a.outputs)
                .filter_map(|o| {
                    let e = o.encrypted.as_ref()?;
                    Some(super::encryption::EncryptedOutput {
                        output: o.output.clone(),
                        column: e.column.clone(),
                        layer: e.layer,
                    })
                })
                .collect(),
        };
        let text = serde_json::to_string(&stored).expect("an answer serialises");
        let hash = keccak256(text.as_bytes());
        journal::answered(
            &conn,
            &ledger_hex,
            &text,
            &format!("{hash:#x}"),
            &format!("{root:#x}"),
            &fee.to_string(),
            &share_rows,
        )?;
        crash_point("answered");

        let entry = journal::get(&conn, &ledger_hex)?.expect("stored above");
        if let Err(e) = self.commit_stored(&conn, &entry).await {
            self.release_reservation(&conn, &entry).await?;
            return Err(e);
        }
        crash_point("committed");
        let mut delivered = stored;
        super::encryption::decrypt_answer(
            &conn,
            self.keys.as_ref(),
            self.dir.root(),
            &self.client,
            &file,
            &mut delivered,
            &text,
        )
        .await?;
        journal::set_state(&conn, &ledger_hex, "delivered")?;
        let left = self.client.remaining(id).await?;
        Ok(QueryOutcome {
            answer: Some(delivered),
            result_hash: Some(format!("{hash:#x}")),
            contributors_root: Some(format!("{root:#x}")),
            plan: aggregates,
            cost: charge.to_string(),
            remaining: remaining_text(left),
            replayed: false,
            explain: None,
        })
    }

    /// A query id seen before: its stored answer, never a new run.
    async fn replay(
        &self,
        conn: &Connection,
        file: &super::study::StudyFile,
        s: &ResearchStudy::Study,
        entry: journal::Entry,
        sql: &str,
    ) -> Result<QueryOutcome> {
        if entry.sql != sql {
            return Err(Error::Invalid(format!(
                "query id `{}` was used for a different question; a query id names one question",
                entry.query_id
            )));
        }
        let Some(_lock) = QueryLock::try_acquire(self.dir.root(), &entry.ledger_id)? else {
            return Err(Error::Invalid(format!(
                "query `{}` is being answered by another process; wait for it and ask again with the same id",
                entry.query_id
            )));
        };
        let entry = journal::get(conn, &entry.ledger_id)?.expect("seen above");
        match entry.state.as_str() {
            "answered" => self.commit_stored(conn, &entry).await?,
            "committed" | "delivered" => {}
            "reserving" | "reserved" => {
                self.release_reservation(conn, &entry).await?;
                return Err(interrupted(&entry.query_id));
            }
            _ => return Err(interrupted(&entry.query_id)),
        }
        let text = entry.answer.as_deref().unwrap_or_default();
        let mut answer: Answer = serde_json::from_str(text)
            .map_err(|e| Error::Invalid(format!("the journal's answer: {e}")))?;
        // Sealed results are decrypted again: threshold decryption of the
        // same ciphertexts gives the same values.
        super::encryption::decrypt_answer(
            conn,
            self.keys.as_ref(),
            self.dir.root(),
            &self.client,
            file,
            &mut answer,
            text,
        )
        .await?;
        journal::set_state(conn, &entry.ledger_id, "delivered")?;
        let left = self.client.remaining(entry.study_id).await?;
        Ok(QueryOutcome {
            cost: answer.cost.clone(),
            answer: Some(answer),
            result_hash: entry.result_hash.clone(),
            contributors_root: entry.contributors_root.clone(),
            plan: vec![],
            remaining: super::budget_text(s.terms.kind, left.primary, left.delta),
            replayed: true,
            explain: None,
        })
    }
}

fn interrupted(query_id: &str) -> Error {
    Error::Invalid(format!(
        "query `{query_id}` was interrupted before it was answered and its reservation released \
         (nothing was spent or released); ask again with a new query id"
    ))
}
