//! The research path (ARCHITECTURE.md, "The research path"): a researcher
//! proposes a study on the ledger, stewards approve it m of n, patients
//! consent and may withdraw, and every query is planned, reserved on the
//! ledger, run over the study's view, committed with a salted commitment to
//! its outcome, and only then answered, at a deadline fixed before it ran
//! ([`query`]). Each query's fee is priced by the privacy loss it charged
//! and shared equally by every patient of the consenting set, who claim it
//! with Merkle proofs ([`compensation`]); approved studies may release
//! k-anonymous extracts, recorded on the ledger.
//!
//! A [`Session`] is the engine's side: it holds the ledger client, the
//! engine's account and the pseudonym master, and opens its own SQLite
//! connection per call, so that many queries may run at once.

pub mod answer;
pub mod compensation;
pub mod consenting;
pub mod encryption;
mod journal;
pub mod microdata;
pub mod query;
pub mod study;
pub mod view;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cohort_anonymizer::deid::PseudonymKey;
use cohort_ledger_bridge::alloy::primitives::{Address, B256, U256, keccak256};
use cohort_ledger_bridge::contracts::ResearchStudy;
use cohort_ledger_bridge::{Account, Client, Follower, Role};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use crate::chain::{self, LedgerConfig};
use crate::records::vault::Vault;
use crate::{DataDir, Error, Result, audit, keys::accounts};
use consenting::Consenting;
pub use study::StudyFile;
use view::View;

/// Creates the research tables.
pub fn install(conn: &Connection) -> Result<()> {
    conn.execute_batch(journal::SCHEMA)?;
    journal::migrate(conn)?;
    conn.execute_batch(encryption::SCHEMA)?;
    Ok(())
}

/// The engine's side of the research path.
pub struct Session {
    dir: DataDir,
    config: LedgerConfig,
    client: Client,
    engine: Account,
    master: zeroize::Zeroizing<[u8; 32]>,
    keys: Arc<dyn crate::keys::keystore::KeyStore>,
    /// The homomorphic job of the query running now: its progress, and its
    /// cancellation.
    job: Mutex<Arc<cohort_fhe::Job>>,
    /// Notified to cancel the query running now (it is charged).
    cancelled: tokio::sync::Notify,
    /// Follower syncs, one at a time.
    sync: tokio::sync::Mutex<()>,
    /// Each study's view at its last consenting set, and one build at a time.
    views: Arc<Mutex<HashMap<u64, Arc<View>>>>,
    building: Arc<Mutex<()>>,
    /// Where deadlines are measured (a manual clock in tests).
    clock: Arc<dyn crate::deadline::Clock>,
    /// Each study's last consenting set (its digest) and its members' root.
    member_roots: Mutex<HashMap<u64, (B256, B256)>>,
}

/// What `cohort study propose` returns.
#[derive(Debug, Clone, Serialize)]
pub struct Proposed {
    /// The study's id on chain.
    pub study_id: u64,
    /// Its title.
    pub title: String,
    /// The hash of the study file, committed on chain.
    pub scope_hash: String,
    /// The escrow sent with it.
    pub escrow: String,
}

/// What `cohort study approve` returns.
#[derive(Debug, Clone, Serialize)]
pub struct Approval {
    /// The study.
    pub study_id: u64,
    /// Approvals so far.
    pub approvals: u8,
    /// Approvals needed.
    pub required: u8,
    /// Whether the study is now approved.
    pub approved: bool,
    /// Patients in the view, when approved.
    pub view_patients: Option<usize>,
}

/// A study as `cohort study list` and `show` describe it.
#[derive(Debug, Clone, Serialize)]
pub struct StudySummary {
    /// Its id.
    pub study_id: u64,
    /// Its title.
    pub title: String,
    /// Its purpose.
    pub purpose: String,
    /// proposed, approved or closed.
    pub status: String,
    /// Approvals given.
    pub approvals: u8,
    /// The researcher's address.
    pub researcher: String,
    /// The budget.
    pub budget: String,
    /// Patients whose consent covers the study now.
    pub consenting: usize,
    /// Whether microdata may be released.
    pub microdata: bool,
    /// When queries stop (unix seconds), once approved.
    pub ends_at: Option<u64>,
    /// The study's books, for those who may see them (see [`Viewer`]).
    #[serde(flatten)]
    pub books: Option<StudyBooks>,
}

/// What a study has spent and owes: its researcher's business, its
/// stewards' and auditors' oversight, nobody else's (a patient deciding
/// whether to consent sees the terms above, not these).
#[derive(Debug, Clone, Serialize)]
pub struct StudyBooks {
    /// What is left of the budget (ε or ρ, and δ for an (ε, δ) budget).
    pub remaining: String,
    /// Escrow not yet allocated to any query.
    pub escrow: String,
    /// Fees allocated to contributors and not yet claimed.
    pub owed: String,
    /// Queries answered.
    pub queries: usize,
    /// Extracts released.
    pub releases: usize,
}

/// Who asks to see a study.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Viewer {
    /// The data directory's operator: the CLI, which holds the passphrase
    /// and so every key; sees everything.
    Operator,
    /// A signed-in account (the server): sees a study's books only as its
    /// researcher or while holding the steward or auditor role on chain,
    /// read at the call.
    Account(Address),
}

/// A patient's consent as `cohort consent list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ConsentInfo {
    /// The study.
    pub study_id: u64,
    /// Its title, when known here.
    pub title: Option<String>,
    /// Purposes covered.
    pub purposes: Vec<String>,
    /// When it lapses (unix seconds).
    pub expires_at: u64,
    /// Whether it is in force (not withdrawn).
    pub active: bool,
}

/// What a consent or withdrawal did.
#[derive(Debug, Clone, Serialize)]
pub struct ConsentChange {
    /// The study.
    pub study_id: u64,
    /// The patient's account.
    pub account: String,
    /// given or withdrawn.
    pub change: &'static str,
    /// The transaction.
    pub tx_hash: String,
}

fn budget_text(kind: u8, primary: u128, delta: u128) -> String {
    use cohort_anonymizer::accountant::Amount;
    let a = |u: u128| Amount::from_units(u).to_string();
    match kind {
        0 => format!("ε {}", a(primary)),
        1 => format!("ε {}, δ {}", a(primary), a(delta)),
        _ => format!("ρ {}", a(primary)),
    }
}

/// Links an account to a patient of the vault (so that it may consent and
/// be paid for that patient's records), creating the account if needed.
pub fn link_patient(
    conn: &Connection,
    vault: &Vault,
    name: &str,
    patient_id: &str,
) -> Result<Account> {
    install(conn)?;
    let known: Option<String> = conn
        .query_row(
            "SELECT patient_id FROM proj_patients WHERE patient_id = ?1",
            [patient_id],
            |r| r.get(0),
        )
        .optional()?;
    if known.is_none() {
        return Err(Error::NotFound(format!(
            "no patient `{patient_id}` in the vault (`cohort records list` shows them)"
        )));
    }
    if let Some(linked) = linked_account(conn, patient_id)?
        && linked != name
    {
        return Err(Error::Invalid(format!(
            "patient `{patient_id}` is already linked to account `{linked}`"
        )));
    }
    let account = accounts::get_or_create(conn, vault.keys(), name)?;
    conn.execute(
        "INSERT INTO research_patients (patient_id, account, address) VALUES (?1, ?2, ?3)
         ON CONFLICT (patient_id) DO NOTHING",
        params![patient_id, name, format!("{:#x}", account.address())],
    )
    .map_err(|e| match e {
        rusqlite::Error::SqliteFailure(f, _)
            if f.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            Error::Invalid(format!(
                "account `{name}` is already linked to another patient"
            ))
        }
        other => other.into(),
    })?;
    Ok(account)
}

fn linked_account(conn: &Connection, patient_id: &str) -> Result<Option<String>> {
    Ok(conn
        .query_row(
            "SELECT account FROM research_patients WHERE patient_id = ?1",
            [patient_id],
            |r| r.get(0),
        )
        .optional()?)
}

impl Session {
    /// Whether `address` holds `role` on the ledger now (read, never
    /// taken from a client).
    pub async fn has_role(&self, role: Role, address: Address) -> Result<bool> {
        Ok(self.client.has_role(role, address).await?)
    }

    /// The keystore the session unwraps with (second factors, accounts).
    pub(crate) fn keystore(&self) -> &dyn crate::keys::keystore::KeyStore {
        self.keys.as_ref()
    }

    /// The session of `dir`'s deployed ledger, acting as its engine account.
    /// It owns the embedded chain (see `chain::client`) and, first, finishes
    /// or undoes what a killed process left.
    pub async fn open(dir: &DataDir, vault: &Vault) -> Result<Session> {
        let session = Session::open_as(dir, vault, chain::Mode::Owner).await?;
        // A restart finishes or undoes what a killed process left.
        session.recover(vault.conn()).await?;
        Ok(session)
    }

    /// A session for a command that only reads (listing studies, consents
    /// and compensation). When no other process owns the chain it owns it
    /// and recovers like [`Session::open`], so what it shows is current;
    /// beside an owner (a running server included) it reads, recovers
    /// nothing and sends nothing.
    pub async fn open_reader(dir: &DataDir, vault: &Vault) -> Result<Session> {
        let session = Session::open_as(dir, vault, chain::Mode::OwnerIfFree).await?;
        if !session.client.ledger().read_only() {
            session.recover(vault.conn()).await?;
        }
        Ok(session)
    }

    async fn open_as(dir: &DataDir, vault: &Vault, mode: chain::Mode) -> Result<Session> {
        install(vault.conn())?;
        let (config, client) = chain::client_as(dir, mode).await?;
        let engine = accounts::get(vault.conn(), vault.keys(), &config.engine)?;
        let master = zeroize::Zeroizing::new(*vault.pseudonym_master()?.expose());
        let session = Session {
            dir: dir.clone(),
            config,
            client,
            engine,
            master,
            keys: vault.shared_keys(),
            job: Mutex::new(Arc::new(cohort_fhe::Job::new())),
            cancelled: tokio::sync::Notify::new(),
            sync: tokio::sync::Mutex::new(()),
            views: Arc::new(Mutex::new(HashMap::new())),
            building: Arc::new(Mutex::new(())),
            clock: Arc::new(crate::deadline::SystemClock::new()),
            member_roots: Mutex::new(HashMap::new()),
        };
        Ok(session)
    }

    /// The ledger client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn contract(&self) -> Address {
        self.client.contracts().study
    }

    /// The session measuring deadlines on `clock` (tests inject one).
    pub fn with_clock(mut self, clock: Arc<dyn crate::deadline::Clock>) -> Session {
        self.clock = clock;
        self
    }

    /// The study's pseudonym key: pseudonyms of one study do not link to
    /// another's.
    fn key(&self, study_id: u64) -> PseudonymKey {
        PseudonymKey::derive(&self.master, &study_key_context(self.contract(), study_id))
    }

    /// Mirrors every confirmed block into `cohort.db`.
    pub async fn sync(&self) -> Result<()> {
        let _one = self.sync.lock().await;
        let mut conn = self.dir.connect()?;
        Follower::new(self.client.clone(), self.config.confirmations)?
            .sync(&mut conn)
            .await?;
        Ok(())
    }

    /// `researcher` proposes the study in `file`, sending its escrow.
    pub async fn propose(
        &self,
        conn: &Connection,
        researcher: &Account,
        file: &StudyFile,
    ) -> Result<Proposed> {
        // The view's columns must exist after Safe Harbor, and the policy
        // must fit their types: checked on the empty view before anything is sent.
        cohort_query_planner::Planner::new(file.scope.clone(), view::schema_tables(conn, file)?)?;
        if !self
            .client
            .has_role(Role::Researcher, researcher.address())
            .await?
        {
            return Err(Error::Invalid(format!(
                "account `{}` does not hold the researcher role: the admin grants it with \
                 `cohort account grant {} researcher`",
                researcher.name(),
                researcher.name()
            )));
        }
        let balance = self.client.ledger().balance(researcher.address()).await?;
        if balance < file.escrow() {
            return Err(Error::Invalid(format!(
                "account `{}` holds {} but the study's escrow is {}: fund it first \
                 (`cohort account fund {} \"{}\"` on the embedded chain)",
                researcher.name(),
                study::format_wei(balance),
                study::format_wei(file.escrow()),
                researcher.name(),
                study::format_wei(file.escrow())
            )));
        }
        let id = self
            .client
            .propose_study(researcher, file.proposal()?, file.escrow())
            .await?;
        conn.execute(
            "INSERT OR REPLACE INTO research_studies (study_id, contract, title, file, researcher, proposed_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                id as i64,
                format!("{:#x}", self.contract()),
                file.terms.title,
                file.text,
                researcher.name(),
                crate::storage::store::now()
            ],
        )?;
        audit::append(
            conn,
            &audit::Event {
                actor: researcher.name(),
                action: "study.propose",
                target: &format!("study/{id}"),
                purpose: "research",
                detail: serde_json::json!({
                    "title": file.terms.title,
                    "scope_hash": format!("{:#x}", file.scope_hash()),
                    "budget": file.budget.to_string(),
                    "escrow": file.terms.escrow,
                }),
            },
        )?;
        Ok(Proposed {
            study_id: id,
            title: file.terms.title.clone(),
            scope_hash: format!("{:#x}", file.scope_hash()),
            escrow: study::format_wei(file.escrow()),
        })
    }

    /// The study file of `id` and its state on chain; refused unless the
    /// file hashes to the scope the stewards approved.
    pub async fn study(
        &self,
        conn: &Connection,
        id: u64,
    ) -> Result<(StudyFile, ResearchStudy::Study)> {
        let text: Option<String> = conn
            .query_row(
                "SELECT file FROM research_studies WHERE study_id = ?1 AND contract = ?2",
                params![id as i64, format!("{:#x}", self.contract())],
                |r| r.get(0),
            )
            .optional()?;
        let text = text.ok_or_else(|| {
            Error::NotFound(format!(
                "no study {id} was proposed through this data directory (`cohort study list`)"
            ))
        })?;
        let file = StudyFile::parse(&text)?;
        let on_chain = self.client.study(id).await?;
        if on_chain.terms.scopeHash != file.scope_hash() {
            return Err(Error::Invalid(format!(
                "study {id}: the stored study file does not hash to the scope approved on chain"
            )));
        }
        Ok((file, on_chain))
    }

    /// A steward approves study `id`; the approval that reaches the
    /// threshold builds the study's view.
    pub async fn approve(&self, conn: &Connection, steward: &Account, id: u64) -> Result<Approval> {
        let (file, _) = self.study(conn, id).await?;
        self.client.approve_study(steward, id).await?;
        let on_chain = self.client.study(id).await?;
        let approved = on_chain.status == 2;
        audit::append(
            conn,
            &audit::Event {
                actor: steward.name(),
                action: "study.approve",
                target: &format!("study/{id}"),
                purpose: "oversight",
                detail: serde_json::json!({ "approvals": on_chain.approvals, "approved": approved }),
            },
        )?;
        let required = self
            .client
            .view(
                cohort_ledger_bridge::Target::Study,
                ResearchStudy::requiredApprovalsCall {},
            )
            .await?;
        let view_patients = if approved {
            if !encryption::columns(&file).is_empty() {
                // The study's keys: shared among every steward account here,
                // any `required` of them decrypting together.
                let mut stewards = Vec::new();
                for account in accounts::list(conn)? {
                    let address: Address = account
                        .address
                        .parse()
                        .map_err(|e| Error::Invalid(format!("account {}: {e}", account.name)))?;
                    if self.client.has_role(Role::Steward, address).await? {
                        stewards.push(account.name.clone());
                    }
                }
                let t = u32::from(required);
                encryption::set_up(
                    conn,
                    self.keys.as_ref(),
                    self.dir.root(),
                    id,
                    &file,
                    &stewards,
                    t,
                )?;
            }
            let view = self.view(conn, id, &file).await?;
            Some(view.accounts.len())
        } else {
            None
        };
        Ok(Approval {
            study_id: id,
            approvals: on_chain.approvals,
            required,
            approved,
            view_patients,
        })
    }

    /// Every study proposed here, with its state on chain, as `viewer`
    /// may see it.
    pub async fn list(&self, conn: &Connection, viewer: Viewer) -> Result<Vec<StudySummary>> {
        let ids: Vec<i64> = conn
            .prepare("SELECT study_id FROM research_studies WHERE contract = ?1 ORDER BY study_id")?
            .query_map([format!("{:#x}", self.contract())], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let overseer = self.overseer(viewer).await?;
        let mut out = Vec::new();
        for id in ids {
            out.push(self.summary(conn, id as u64, viewer, overseer).await?);
        }
        Ok(out)
    }

    /// One study: terms, status and, for those who may see them, its books.
    pub async fn show(&self, conn: &Connection, id: u64, viewer: Viewer) -> Result<StudySummary> {
        let overseer = self.overseer(viewer).await?;
        self.summary(conn, id, viewer, overseer).await
    }

    /// Whether `viewer` oversees every study: the operator, or an account
    /// holding the steward or auditor role now.
    async fn overseer(&self, viewer: Viewer) -> Result<bool> {
        Ok(match viewer {
            Viewer::Operator => true,
            Viewer::Account(a) => {
                self.has_role(Role::Steward, a).await? || self.has_role(Role::Auditor, a).await?
            }
        })
    }

    async fn summary(
        &self,
        conn: &Connection,
        id: u64,
        viewer: Viewer,
        overseer: bool,
    ) -> Result<StudySummary> {
        let (file, s) = self.study(conn, id).await?;
        self.sync().await?;
        let consenting = self.consenting(conn, id, &s).await?.len();
        let sees_books = overseer || viewer == Viewer::Account(s.researcher);
        let books = if sees_books {
            let left = self.client.remaining(id).await?;
            let count = |sql: &str| -> Result<usize> {
                Ok(conn.query_row(sql, [id as i64], |r| r.get::<_, i64>(0))? as usize)
            };
            Some(StudyBooks {
                remaining: budget_text(s.terms.kind, left.primary, left.delta),
                escrow: study::format_wei(s.escrow),
                owed: study::format_wei(s.owed),
                queries: count(
                    "SELECT COUNT(*) FROM research_queries WHERE study_id = ?1 AND state IN ('committed', 'delivered')",
                )?,
                releases: count("SELECT COUNT(*) FROM research_releases WHERE study_id = ?1")?,
            })
        } else {
            None
        };
        Ok(StudySummary {
            study_id: id,
            title: file.terms.title.clone(),
            purpose: file.terms.purpose.clone(),
            status: match s.status {
                1 => "proposed",
                2 => "approved",
                3 => "closed",
                _ => "unknown",
            }
            .into(),
            approvals: s.approvals,
            researcher: format!("{:#x}", s.researcher),
            budget: budget_text(s.terms.kind, s.terms.budget, s.terms.deltaBudget),
            consenting,
            microdata: s.terms.microdata,
            ends_at: (s.endsAt != 0).then_some(s.endsAt),
            books,
        })
    }

    /// The patient account's consent to study `id`, for the study's
    /// purposes (or `purposes`) for `days` days.
    pub async fn consent(
        &self,
        conn: &Connection,
        patient: &Account,
        id: u64,
        purposes: Option<&[String]>,
        days: u32,
    ) -> Result<ConsentChange> {
        let results = self
            .consent_all(conn, std::slice::from_ref(patient), id, purposes, days)
            .await?;
        results.into_iter().next().expect("one result per patient")
    }

    /// Many patients consent at once (their transactions share blocks).
    /// Each patient's outcome is its own.
    pub async fn consent_all(
        &self,
        conn: &Connection,
        patients: &[Account],
        id: u64,
        purposes: Option<&[String]>,
        days: u32,
    ) -> Result<Vec<Result<ConsentChange>>> {
        let (file, _) = self.study(conn, id).await?;
        if days == 0 {
            return Err(Error::Invalid("--days must be at least 1".into()));
        }
        let mask = match purposes {
            Some(p) => study::purpose_mask(p)?,
            None => study::purpose_mask(&file.terms.purposes)?,
        };
        for p in patients {
            self.patient_of(conn, p)?;
        }
        let now = self.client.ledger().timestamp().await?;
        let expires = now + u64::from(days) * 86_400;
        let ledger = self.client.ledger();
        // Registration is idempotent: every patient registers, in one batch.
        let register: Vec<_> = patients
            .iter()
            .map(|p| {
                (
                    p.clone(),
                    self.client.tx(
                        cohort_ledger_bridge::Target::Access,
                        cohort_ledger_bridge::contracts::CohortAccess::registerPatientCall {},
                    ),
                )
            })
            .collect();
        let consents: Vec<_> = patients
            .iter()
            .map(|p| {
                (
                    p.clone(),
                    self.client.tx(
                        cohort_ledger_bridge::Target::Study,
                        ResearchStudy::consentCall {
                            studyId: U256::from(id),
                            purposes: mask,
                            expiresAt: expires,
                        },
                    ),
                )
            })
            .collect();
        // A patient whose registration failed has that error as their outcome.
        let registered = ledger.send_all(register).await;
        let sent = ledger.send_all(consents).await;
        let tx = conn.unchecked_transaction()?;
        let mut out = Vec::with_capacity(patients.len());
        for ((p, registration), consent) in patients.iter().zip(registered).zip(sent) {
            let receipt = match registration.and(consent) {
                Ok(receipt) => receipt,
                Err(e) => {
                    out.push(Err(e.into()));
                    continue;
                }
            };
            audit::append(
                &tx,
                &audit::Event {
                    actor: p.name(),
                    action: "consent.give",
                    target: &format!("study/{id}"),
                    purpose: "research",
                    detail: serde_json::json!({
                        "purposes": study::purpose_names(mask),
                        "expires_at": expires,
                    }),
                },
            )?;
            out.push(Ok(ConsentChange {
                study_id: id,
                account: p.name().to_string(),
                change: "given",
                tx_hash: format!("{:#x}", receipt.tx_hash),
            }));
        }
        tx.commit()?;
        Ok(out)
    }

    /// The patient account withdraws from study `id`: every later query
    /// leaves their records out.
    pub async fn withdraw(
        &self,
        conn: &Connection,
        patient: &Account,
        id: u64,
    ) -> Result<ConsentChange> {
        self.study(conn, id).await?;
        self.patient_of(conn, patient)?;
        let receipt = self.client.withdraw(patient, id).await?;
        audit::append(
            conn,
            &audit::Event {
                actor: patient.name(),
                action: "consent.withdraw",
                target: &format!("study/{id}"),
                purpose: "research",
                detail: serde_json::json!({}),
            },
        )?;
        // The next query rebuilds the view without them.
        self.views.lock().expect("views lock").remove(&id);
        Ok(ConsentChange {
            study_id: id,
            account: patient.name().to_string(),
            change: "withdrawn",
            tx_hash: format!("{:#x}", receipt.tx_hash),
        })
    }

    /// Erases a patient for the research path as well as the vault: first
    /// every consent of their linked account is withdrawn on chain (so no
    /// later query counts or pays them), then the vault destroys their key,
    /// removes their projection rows, their encrypted submissions and their
    /// account link, in one transaction that also moves the projection's
    /// generation, so no cached view serves their rows again. A failure on
    /// chain stops before anything local is erased; erasing again resumes.
    /// What was released before (answers, extracts) cannot be recalled.
    pub async fn erase(
        &self,
        vault: &Vault,
        access: &crate::records::vault::Access,
        patient_id: &str,
    ) -> Result<crate::records::vault::Erasure> {
        self.sync().await?;
        let conn = self.dir.connect()?;
        let mut withdrawn = Vec::new();
        if let Some(name) = linked_account(&conn, patient_id)? {
            let account = accounts::get(&conn, vault.keys(), &name)?;
            let studies: Vec<i64> = conn
                .prepare(
                    "SELECT study_id FROM ledger_consents WHERE patient = ?1 AND active = 1
                     ORDER BY study_id",
                )?
                .query_map([format!("{:#x}", account.address())], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            for study in studies {
                let study = study as u64;
                self.client.withdraw(&account, study).await?;
                audit::append(
                    &conn,
                    &audit::Event {
                        actor: &access.actor,
                        action: "consent.withdraw",
                        target: &format!("study/{study}"),
                        purpose: "erasure",
                        detail: serde_json::json!({ "patient": patient_id, "reason": "erasure" }),
                    },
                )?;
                withdrawn.push(study);
                self.views.lock().expect("views lock").remove(&study);
            }
        }
        let mut erased = vault.erase_patient(access, patient_id)?;
        erased.consents_withdrawn = withdrawn;
        Ok(erased)
    }

    /// The consents of the account `address`.
    pub async fn consents_of(
        &self,
        conn: &Connection,
        address: Address,
    ) -> Result<Vec<ConsentInfo>> {
        self.sync().await?;
        let mut s = conn.prepare(
            "SELECT c.study_id, s.title, c.purposes, c.expires_at, c.active
             FROM ledger_consents c LEFT JOIN research_studies s ON s.study_id = c.study_id AND s.contract = ?2
             WHERE c.patient = ?1 ORDER BY c.study_id",
        )?;
        let rows = s.query_map(
            params![format!("{address:#x}"), format!("{:#x}", self.contract())],
            |r| {
                Ok(ConsentInfo {
                    study_id: r.get::<_, i64>(0)? as u64,
                    title: r.get(1)?,
                    purposes: study::purpose_names(
                        r.get::<_, String>(2)?.parse().unwrap_or(U256::ZERO),
                    ),
                    expires_at: r.get::<_, i64>(3)? as u64,
                    active: r.get::<_, i64>(4)? == 1,
                })
            },
        )?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The patient a linked account stands for.
    pub fn patient_of(&self, conn: &Connection, account: &Account) -> Result<String> {
        conn.query_row(
            "SELECT patient_id FROM research_patients WHERE account = ?1",
            [account.name()],
            |r| r.get(0),
        )
        .optional()?
        .ok_or_else(|| {
            Error::Invalid(format!(
                "account `{}` is not linked to a patient: `cohort account new {} --patient <patient id>`",
                account.name(),
                account.name()
            ))
        })
    }

    /// The patients whose consent covers study `id` now, from the mirror
    /// (call [`Session::sync`] first). This set is public: consents are
    /// transactions on chain.
    pub(crate) async fn consenting(
        &self,
        conn: &Connection,
        id: u64,
        s: &ResearchStudy::Study,
    ) -> Result<Vec<Consenting>> {
        let now = self.client.ledger().timestamp().await?;
        let needed = s.terms.purposes;
        let mut q = conn.prepare(
            "SELECT p.patient_id, p.address, c.purposes FROM ledger_consents c
             JOIN research_patients p ON p.address = c.patient
             WHERE c.study_id = ?1 AND c.active = 1 AND c.expires_at > ?2",
        )?;
        let rows = q.query_map(params![id as i64, now as i64], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (patient_id, address, purposes) = row?;
            let purposes: U256 = purposes.parse().unwrap_or(U256::ZERO);
            if needed == U256::ZERO || purposes & needed != needed {
                continue;
            }
            let address: Address = address
                .parse()
                .map_err(|_| Error::Invalid(format!("a stored address `{address}` is not one")))?;
            out.push(Consenting {
                patient_id,
                address,
            });
        }
        out.sort();
        Ok(out)
    }

    /// The study's view over the patients consenting now.
    pub(crate) async fn view(
        &self,
        conn: &Connection,
        id: u64,
        file: &StudyFile,
    ) -> Result<Arc<View>> {
        self.sync().await?;
        let s = self.client.study(id).await?;
        let consenting = self.consenting(conn, id, &s).await?;
        view::obtain(
            conn,
            &self.dir,
            id,
            file,
            &self.key(id),
            &consenting,
            &self.views,
            &self.building,
        )
    }
}

/// What a study's pseudonym key is derived for.
pub(crate) fn study_key_context(contract: Address, study_id: u64) -> String {
    format!("study/{contract:#x}/{study_id}")
}

impl Session {
    /// The homomorphic job of the query running now: poll it for progress
    /// (its total is a public size).
    pub fn job(&self) -> Arc<cohort_fhe::Job> {
        Arc::clone(&self.job.lock().expect("job lock"))
    }

    /// A fresh job for a query that starts now.
    fn new_job(&self) -> Arc<cohort_fhe::Job> {
        let job = Arc::new(cohort_fhe::Job::new());
        *self.job.lock().expect("job lock") = Arc::clone(&job);
        job
    }

    /// Cancels the query running now: it ends with the charged failure,
    /// released at its deadline (after the reservation every ending is
    /// charged, a cancellation too).
    pub fn cancel(&self) {
        self.job().cancel();
        self.cancelled.notify_waiters();
    }

    /// Refuses `actor` unless it is the account that proposed study `id`:
    /// only the study's researcher asks its questions and releases extracts.
    pub(crate) fn require_researcher(
        &self,
        conn: &Connection,
        actor: &str,
        s: &ResearchStudy::Study,
        id: u64,
    ) -> Result<()> {
        let address = accounts::address_of(conn, actor)?;
        if address.as_deref() != Some(format!("{:#x}", s.researcher).as_str()) {
            return Err(Error::Invalid(format!(
                "only study {id}'s researcher ({:#x}) asks its queries; `{actor}` is not that account",
                s.researcher
            )));
        }
        Ok(())
    }
}

/// The ledger's id of query `query_id` of study `study_id`.
pub(crate) fn ledger_query_id(
    contract: Address,
    study_id: u64,
    query_id: &str,
) -> cohort_ledger_bridge::alloy::primitives::B256 {
    let mut bytes = b"cohort/query/v1\0".to_vec();
    bytes.extend_from_slice(contract.as_slice());
    bytes.extend_from_slice(&study_id.to_be_bytes());
    bytes.extend_from_slice(query_id.as_bytes());
    keccak256(bytes)
}
