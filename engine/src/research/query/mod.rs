//! A budgeted query, under the privacy invariant: what the researcher
//! observes depends only on noisy values and public facts.
//!
//! 1. **Plan, for free.** The query is planned and costed over the view's
//!    schema alone (no row is read), with the public sizes it needs: the
//!    consenting set (on chain) and, per encrypted column, how many of them
//!    shared a value (on chain). A refusal, or `EXPLAIN PRIVACY`, spends
//!    nothing and takes no data-dependent time.
//! 2. **Reserve.** The cost is reserved on the ledger under the query id,
//!    which holds the query's fee (its price per ε times its cost) out of
//!    the escrow, after the journal records the intent and the consenting
//!    set whose members will share the fee.
//! 3. **Execute, charged whatever happens.** The journal says `executing`
//!    before the first row is read. The view is loaded, the plan runs on a
//!    task of its own against the deadline computed in step 1 from public
//!    sizes ([`crate::deadline`]), counted from the start of execution
//!    (what comes before reads no row of the view, so its time is not the
//!    data's). The plan's exact part runs here, or on the session's
//!    remote engine (a Ballista cluster, `Session::with_remote_engine`),
//!    the view travelling inside the plan; the noise is drawn here either
//!    way. Its ending is an answer or the fixed
//!    failure: an error, a resource limit, a panic, a cancellation or an
//!    overrun all end the same way, and a process killed meanwhile is
//!    recorded the same way by the next one ([`Session::recover`]).
//! 4. **Commit.** The outcome is stored, then the debit committed with a
//!    salted commitment to it (`keccak256(salt ‖ stored text)`), the
//!    consenting set's Merkle root and its size.
//! 5. **Release at the deadline.** Only then, and not before the deadline,
//!    is the answer decrypted (encrypted columns) and handed over; a failed
//!    query is told that it was charged, and nothing else.
//!
//! A repeated query id is answered from the journal, never run again.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use cohort_anonymizer::accountant::{Amount, Charge};
use cohort_anonymizer::deid::PseudonymKey;
use cohort_ledger_bridge::Cost;
use cohort_ledger_bridge::alloy::primitives::{Address, B256, U256, keccak256};
use cohort_ledger_bridge::contracts::ResearchStudy;
use cohort_ledger_bridge::merkle::MemberTree;
use cohort_query_planner::distributed::RemoteEngine;
use cohort_query_planner::{PlannedAggregate, PrivateAnswer, QueryOptions};
use rusqlite::Connection;
use serde::{Deserialize, Serialize};

pub use super::answer::Answer;
use super::answer::commitment;
use super::consenting::Consenting;
use super::journal::{self, Intent, QueryLock};
use super::study::StudyFile;
use super::view::{self, View};
use super::{Session, ledger_query_id};

mod recovery;
mod replay;
mod steps;

use crate::deadline::{self, Failure};
use crate::{DataDir, Error, Result, audit};
pub use recovery::Recovery;
use replay::{CHARGED, Charged};
pub(crate) use steps::to_cost;
use steps::{
    check_query_id, crash_point, fresh_salt, hex, parse_b256, pause_point, remaining_charge,
    share_of,
};

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

/// What `cohort query <study>` prints.
#[derive(Debug, Clone, Serialize)]
pub struct QueryOutcome {
    /// The answer (absent for `--explain`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answer: Option<Answer>,
    /// keccak256(salt ‖ the stored answer's JSON), committed on chain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result_hash: Option<String>,
    /// The commitment's salt: with it the researcher checks the hash
    /// (nobody else can test a guess of the answer against it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub salt: Option<String>,
    /// The Merkle root of the consenting set, committed on chain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub members_root: Option<String>,
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
    /// When the outcome is released, in milliseconds after its execution
    /// started (absent when the study releases immediately). Everything
    /// before it (planning, the reservation) reads no row of the view.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
}

/// A fresh query id.
pub fn new_query_id() -> String {
    crate::budget::new_query_id()
}

/// What the private run needs, owned: it runs on a task of its own.
struct Run {
    dir: DataDir,
    study: u64,
    file: StudyFile,
    master: zeroize::Zeroizing<[u8; 32]>,
    contract: Address,
    consenting: Vec<Consenting>,
    /// The consenting patients' geographic restrictions (`None`: no
    /// geography policy); the view's members are chosen inside the run.
    restrictions: Option<HashMap<Address, u8>>,
    /// The engine's account: the view holds only patients whose key it holds.
    engine: Address,
    views: Arc<Mutex<HashMap<u64, Arc<View>>>>,
    building: Arc<Mutex<()>>,
    /// The encrypted columns' executor, loaded (keys and all) before the
    /// reservation: loading it reads no patient's row.
    executor: Option<Arc<super::encryption::Executor>>,
    /// Where the plan's exact part runs (else here).
    remote: Option<Arc<dyn RemoteEngine>>,
    sql: String,
    options: QueryOptions,
    cost: Charge,
}

impl Run {
    /// Loads (or builds) the view, plans again over its rows, and runs.
    async fn run(self) -> Result<PrivateAnswer> {
        let planner = {
            let conn = self.dir.connect()?;
            let key = PseudonymKey::derive(
                &self.master,
                &super::study_key_context(self.contract, self.study),
            );
            let members = super::geo_members(
                &conn,
                &self.file,
                self.consenting,
                self.restrictions.as_ref(),
            )?;
            let view = view::obtain(
                &conn,
                &self.dir,
                self.study,
                &self.file,
                &key,
                &members,
                self.engine,
                &self.views,
                &self.building,
            )?;
            let planner = super::planner(&self.file, view.tables.clone())?;
            match self.executor {
                Some(executor) => planner.with_encryption(executor),
                None => planner,
            }
        };
        let plan = planner.plan(&self.sql, &self.options).await?;
        if plan.cost() != self.cost {
            return Err(Error::Invalid(
                "the plan over the view costs other than the plan that was reserved".into(),
            ));
        }
        Ok(plan.execute_on(self.remote).await?)
    }
}

impl Session {
    /// The consenting set as the root of the tree its members claim with
    /// (computed once per set and study), and their addresses.
    fn members(&self, study: u64, consenting: &[Consenting]) -> Result<(B256, Vec<String>)> {
        if consenting.is_empty() {
            return Ok((B256::ZERO, vec![]));
        }
        let addresses: Vec<String> = consenting
            .iter()
            .map(|c| format!("{:#x}", c.address))
            .collect();
        let digest = keccak256(addresses.join(",").as_bytes());
        let mut roots = self.member_roots.lock().expect("member roots lock");
        if let Some((known, root)) = roots.get(&study)
            && *known == digest
        {
            return Ok((*root, addresses));
        }
        let root = MemberTree::new(consenting.iter().map(|c| c.address))?.root();
        roots.insert(study, (digest, root));
        Ok((root, addresses))
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

        // 1. Plan over the schema, with public sizes only.
        self.sync().await?;
        let consenting = self.consenting(&conn, id, &s).await?;
        let population = consenting.len() as u64;
        let planner = super::planner(&file, view::schema_tables(&conn, &file)?)?;
        let job = self.new_job();
        let executor = super::encryption::Executor::load(
            &conn,
            self.dir.root(),
            id,
            &file,
            &consenting,
            Arc::clone(&job),
        )?
        .map(Arc::new);
        let planner = match &executor {
            Some(executor) => planner.with_encryption(Arc::clone(executor) as _),
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
        let deadline = plan.deadline(population);
        let deadline_ms = deadline.map(|d| d.as_millis() as u64);
        let remaining_text = |c: Cost| super::budget_text(s.terms.kind, c.primary, c.delta);
        if request.explain || plan.is_explain() {
            let mut explain = plan.explain();
            if let Some(ms) = deadline_ms {
                explain.push_str(&format!(
                    "release:   {ms} ms after execution starts (a function of the plan and of the \
                     {population} consenting patients, never of the data)\n"
                ));
            }
            return Ok(QueryOutcome {
                answer: None,
                result_hash: None,
                salt: None,
                members_root: None,
                plan: aggregates,
                cost: plan.cost().to_string(),
                remaining: remaining_text(left),
                replayed: false,
                explain: Some(explain),
                deadline_ms,
            });
        }
        if aggregates.is_empty() && plan.cost() == Charge::zero(plan.cost().kind()) {
            // Public tables alone (an OMOP vocabulary): the planner typed
            // every relation public, so no patient's row is read. Nothing is
            // charged, reserved, journaled or paid; the answer is exact.
            let cost = plan.cost().to_string();
            let answer = plan.execute().await?;
            let stored = self.stored_answer(
                id,
                &query_id,
                &ledger_hex,
                request,
                &aggregates,
                answer,
                U256::ZERO,
                0,
            )?;
            return Ok(QueryOutcome {
                answer: Some(stored),
                result_hash: None,
                salt: None,
                members_root: None,
                plan: aggregates,
                cost,
                remaining: remaining_text(left),
                replayed: false,
                explain: None,
                deadline_ms: None,
            });
        }
        let charge = plan.cost();
        let cost = to_cost(&charge);
        let fee = cohort_ledger_bridge::query_fee(s.terms.feePerUnit, cost.primary);
        if s.escrow < fee {
            return Err(Error::Invalid(format!(
                "study {id}'s escrow ({}) cannot pay this query's fee ({} for {charge}): the \
                 researcher adds escrow first",
                super::study::format_wei(s.escrow),
                super::study::format_wei(fee)
            )));
        }
        let (root, addresses) = self.members(id, &consenting)?;
        // Public inputs of the view's geography filter, read for every
        // consenting patient before the reservation (a refusal is free).
        let restrictions = self.geo_restrictions(&conn, &consenting).await?;

        // 2. Reserve.
        let Some(_lock) = QueryLock::try_acquire(self.dir.root(), &ledger_hex)? else {
            return Err(Error::Invalid(format!(
                "query `{query_id}` is being answered by another process; wait for it and ask again with the same id"
            )));
        };
        journal::begin(
            &conn,
            &Intent {
                ledger_id: &ledger_hex,
                study_id: id,
                query_id: &query_id,
                actor,
                sql: &request.sql,
                cost: &charge.to_string(),
                primary_units: cost.primary,
                delta_units: cost.delta,
                fee: &fee.to_string(),
                share: &share_of(fee, addresses.len()).to_string(),
                members: &addresses,
                members_root: &format!("{root:#x}"),
                deadline_ms,
            },
        )?;
        if let Err(e) = self.client.reserve(&self.engine, id, ledger_id, cost).await {
            // A refusal reserved nothing; an unclear failure may have: ask.
            match self.client.query(ledger_id).await {
                Ok(q) if q.state == 0 => journal::remove(&conn, &ledger_hex)?,
                _ => {
                    if let Some(entry) = journal::get(&conn, &ledger_hex)? {
                        self.release_reservation(&conn, &entry).await?;
                    }
                }
            }
            // A race lost at the reservation reads as the planner's own
            // budget refusal: one wording, whichever check said no.
            if e.revert_name() == Some("BudgetExceeded") {
                let left = self.client.remaining(id).await?;
                return Err(cohort_query_planner::Error::OverBudget {
                    cost: charge,
                    limit: format!(
                        "the study has only {} left",
                        remaining_charge(s.terms.kind, left)
                    ),
                }
                .into());
            }
            return Err(e.into());
        }
        // A crash here leaves `reserving`, which recovery releases after
        // asking the ledger: nothing was read yet.
        crash_point("reserved");

        // 3. Execute: from here on, every ending is charged, and the
        // outcome waits for the deadline.
        journal::set_state(&conn, &ledger_hex, "executing")?;
        let started = self.clock.now();
        let run = Run {
            dir: self.dir.clone(),
            study: id,
            file: file.clone(),
            master: self.master.clone(),
            contract: self.contract(),
            consenting,
            restrictions,
            engine: self.engine.address(),
            views: Arc::clone(&self.views),
            building: Arc::clone(&self.building),
            executor,
            remote: self.remote.clone(),
            sql: request.sql.clone(),
            options,
            cost: charge,
        };
        let expires = deadline.map(|d| started + d);
        let ended = deadline::run_until(
            &self.clock,
            expires,
            &self.cancelled,
            move || job.cancel(),
            async move {
                pause_point("executing").await;
                run.run().await
            },
        )
        .await;
        // For the operator (never the researcher): how long the work took,
        // to size a study's deadline.
        let ran = Some(self.clock.now().saturating_sub(started));
        let entry = journal::get(&conn, &ledger_hex)?.expect("begun above");
        let (text, outcome) = match ended.and_then(|answer| {
            self.stored_answer(
                id,
                &query_id,
                &ledger_hex,
                request,
                &aggregates,
                answer,
                fee,
                addresses.len(),
            )
            .map_err(|_| Failure::Error)
        }) {
            Ok(stored) => {
                let text = serde_json::to_string(&stored).expect("an answer serialises");
                let salt = fresh_salt()?;
                let hash = commitment(&salt, &text);
                journal::outcome(
                    &conn,
                    &ledger_hex,
                    &text,
                    &hex(&salt),
                    &format!("{hash:#x}"),
                    None,
                    ran,
                )?;
                (text, Some(stored))
            }
            Err(how) => {
                let failed = self.store_failure(&conn, &entry, how, ran)?;
                (failed.answer.clone().unwrap_or_default(), None)
            }
        };
        crash_point("answered");

        // 4. Commit.
        let entry = journal::get(&conn, &ledger_hex)?.expect("stored above");
        self.commit_stored(&conn, &entry)
            .await
            .map_err(|e| Error::Uncommitted {
                query_id: query_id.clone(),
                source: Box::new(e),
            })?;
        crash_point("committed");

        // 5. Release at the deadline.
        if let Some(at) = expires {
            self.clock.release_at(at).await;
        }
        let Some(mut delivered) = outcome else {
            journal::set_state(&conn, &ledger_hex, "delivered")?;
            return Err(Error::Charged {
                query_id,
                cost: charge.to_string(),
            });
        };
        let salt = entry.salt.clone().unwrap_or_default();
        super::encryption::decrypt_answer(
            &conn,
            self.keys.as_ref(),
            self.dir.root(),
            &self.client,
            &file,
            &mut delivered,
            &salt,
            &text,
        )
        .await?;
        journal::set_state(&conn, &ledger_hex, "delivered")?;
        let left = self.client.remaining(id).await?;
        Ok(QueryOutcome {
            answer: Some(delivered),
            result_hash: entry.result_hash.clone(),
            salt: Some(salt),
            members_root: Some(format!("{root:#x}")),
            plan: aggregates,
            cost: charge.to_string(),
            remaining: remaining_text(left),
            replayed: false,
            explain: None,
            deadline_ms,
        })
    }
}
