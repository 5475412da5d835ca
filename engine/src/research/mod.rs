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
mod consents;
pub mod encryption;
mod journal;
pub mod microdata;
pub mod omop;
mod oversight;
pub mod query;
mod studies;
pub mod study;
pub mod view;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cohort_anonymizer::deid::PseudonymKey;
use cohort_ledger_bridge::alloy::primitives::{Address, B256, U256, keccak256};
use cohort_ledger_bridge::contracts::ResearchStudy;
use cohort_ledger_bridge::{Account, Client, Follower, Role};
use cohort_query_planner::distributed::RemoteEngine;
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use crate::chain::{self, LedgerConfig};
use crate::records::vault::Vault;
use crate::{DataDir, Error, Result, audit, keys::accounts};
use consenting::Consenting;
pub use consents::{ConsentChange, ConsentInfo, erase, link_patient};
pub use oversight::AUDIT_READERS;
pub use studies::{Approval, Proposed, StudyBooks, StudySummary, Viewer};
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
    /// Where the exact part of a query's private plan runs: a cluster
    /// (`[engine]`, docs/BALLISTA.md), else this process.
    remote: Option<Arc<dyn RemoteEngine>>,
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

impl Session {
    /// Whether `address` holds `role` on the ledger now (read, never
    /// taken from a client).
    pub async fn has_role(&self, role: Role, address: Address) -> Result<bool> {
        Ok(self.client.has_role(role, address).await?)
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
            remote: None,
        };
        Ok(session)
    }

    /// The engine's account (it sends the research path's transactions and
    /// the appointment scheduler's settlements).
    pub fn engine_account(&self) -> &Account {
        &self.engine
    }

    /// The ledger client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// A vault over this session's data directory and keystore: a server
    /// opens one per call (its connection is not shared across threads).
    pub fn vault(&self) -> Result<Vault> {
        Ok(Vault::new(
            self.dir.connect()?,
            Arc::new(self.dir.block_store()?),
            Arc::clone(&self.keys),
        ))
    }

    fn contract(&self) -> Address {
        self.client.contracts().study
    }

    /// The session measuring deadlines on `clock` (tests inject one).
    pub fn with_clock(mut self, clock: Arc<dyn crate::deadline::Clock>) -> Session {
        self.clock = clock;
        self
    }

    /// The session running the exact part of its private plans on
    /// `remote` (a Ballista cluster) instead of in this process. The view,
    /// the noise, the deadline and every charged ending stay here.
    pub fn with_remote_engine(mut self, remote: Arc<dyn RemoteEngine>) -> Session {
        self.remote = Some(remote);
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
        let members = self.in_view(conn, file, consenting).await?;
        view::obtain(
            conn,
            &self.dir,
            id,
            file,
            &self.key(id),
            &members,
            self.engine.address(),
            &self.views,
            &self.building,
        )
    }
}

impl Session {
    /// The consenting patients a study's view holds: all of them, unless
    /// the deployment has a geography policy (`access::geo`); then those
    /// all of whose records the policy lets into a study of the study's
    /// jurisdiction and who have not refused cross-border research (their
    /// own transaction on chain). Like a consent, a patient left out is
    /// simply not in the view: the consenting set (public) still sets the
    /// deadline, the encrypted padding, the fee's sharing and the Merkle
    /// root, so nothing a researcher observes counts who was left out.
    pub(crate) async fn in_view(
        &self,
        conn: &Connection,
        file: &StudyFile,
        consenting: Vec<Consenting>,
    ) -> Result<Vec<Consenting>> {
        let restrictions = self.geo_restrictions(conn, &consenting).await?;
        geo_members(conn, file, consenting, restrictions.as_ref())
    }

    /// Every consenting patient's geographic restriction (public: each
    /// is their own transaction), read for all of them whatever their
    /// records' jurisdictions, so the time it takes depends only on the
    /// public consenting set. `None` without a geography policy.
    pub(crate) async fn geo_restrictions(
        &self,
        conn: &Connection,
        consenting: &[Consenting],
    ) -> Result<Option<HashMap<Address, u8>>> {
        if crate::access::geo::policy(conn)?.is_none() {
            return Ok(None);
        }
        let mut out = HashMap::with_capacity(consenting.len());
        for c in consenting {
            out.insert(
                c.address,
                crate::access::geo::restriction_of(&self.client, c.address).await?,
            );
        }
        Ok(Some(out))
    }

    /// How many consenting patients study `id`'s view leaves out under the
    /// geography policy: for its stewards and auditors, never its researcher.
    pub(crate) async fn geo_excluded(
        &self,
        conn: &Connection,
        id: u64,
        file: &StudyFile,
        s: &ResearchStudy::Study,
    ) -> Result<usize> {
        let consenting = self.consenting(conn, id, s).await?;
        let all = consenting.len();
        Ok(all - self.in_view(conn, file, consenting).await?.len())
    }
}

/// The members of a study's view among `consenting`, given their
/// restrictions (`None`: no geography policy, every one). Reads only this
/// data directory: run inside a query's charged, fixed-time execution.
pub(crate) fn geo_members(
    conn: &Connection,
    file: &StudyFile,
    consenting: Vec<Consenting>,
    restrictions: Option<&HashMap<Address, u8>>,
) -> Result<Vec<Consenting>> {
    use crate::access::geo;
    let (Some(restrictions), Some(policy)) = (restrictions, geo::policy(conn)?) else {
        return Ok(consenting);
    };
    let study = match &file.terms.jurisdiction {
        Some(j) => geo::Jurisdiction::parse(j)?,
        None => policy.default.clone(),
    };
    let mut out = Vec::with_capacity(consenting.len());
    for c in consenting {
        let bits = restrictions.get(&c.address).copied().unwrap_or(0);
        let records = geo::patient_jurisdictions(conn, &policy, &c.patient_id)?;
        if records
            .iter()
            .all(|r| policy.research_allows(r, &study, bits))
        {
            out.push(c);
        }
    }
    Ok(out)
}

/// The planner of a study over `tables` (its view, or the view's schema):
/// an OMOP study's queries also read the OMOP vocabulary, as public tables.
pub(crate) fn planner(
    file: &StudyFile,
    tables: HashMap<String, Arc<dyn cohort_query_planner::TableProvider>>,
) -> Result<cohort_query_planner::Planner> {
    let public = match file.terms.data_model {
        study::DataModel::Omop => omop::vocabulary::vocabulary()?.tables()?,
        study::DataModel::Cohort => Default::default(),
    };
    Ok(cohort_query_planner::Planner::with_public_tables(
        file.scope.clone(),
        tables,
        public,
    )?)
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

#[cfg(test)]
mod geo_tests {
    use super::*;

    const STUDY: &str = r#"
privacy_unit = "patient_id"
[study]
title = "t"
purpose = "p"
duration_days = 30
jurisdiction = "FR"
[budget]
epsilon = "2"
[query]
epsilon = "0.5"
max_epsilon = "1"
[tables.patients.columns]
patient_id = { identifier = true }
"#;

    fn member(i: u8) -> Consenting {
        Consenting {
            patient_id: format!("p{i}"),
            address: Address::repeat_byte(i),
        }
    }

    #[test]
    fn a_view_holds_whom_the_policy_and_the_patients_let_in() {
        let dir = tempfile::tempdir().unwrap();
        let conn = crate::storage::store::open(&dir.path().join("cohort.db")).unwrap();
        // p1: DE records (an EU rule lets them into a FR study); p2: the
        // same, but the patient refuses cross-border research; p3: US
        // records (no rule); p4: records of the default (FR), domestic.
        for (i, j) in [(1, Some("DE")), (2, Some("DE")), (3, Some("US")), (4, None)] {
            conn.execute(
                "INSERT INTO patients(patient_id, kek_id, created_at) VALUES (?1, 'k', 'now')",
                [format!("p{i}")],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO records(record_id, version, patient_id, resource_type, cid, content_mac, size, created_at)
                 VALUES (?1, 1, ?2, 'Observation', 'c', x'00', 1, 'now')",
                [format!("Observation/{i}"), format!("p{i}")],
            )
            .unwrap();
            if let Some(j) = j {
                crate::access::geo::remember(&conn, &format!("Observation/{i}"), j).unwrap();
            }
        }
        let file = StudyFile::parse(STUDY).unwrap();
        let all: Vec<Consenting> = (1..=4).map(member).collect();
        let restrictions: HashMap<Address, u8> = [(
            Address::repeat_byte(2),
            crate::access::geo::NO_CROSS_BORDER_RESEARCH,
        )]
        .into();
        // No policy: everyone consenting is in the view.
        let members = geo_members(&conn, &file, all.clone(), Some(&restrictions)).unwrap();
        assert_eq!(members, all);
        crate::access::geo::set_policy(
            &conn,
            "operator",
            "default = \"FR\"\n[groups]\nEU = [\"DE\", \"FR\"]\n[[research]]\nrecord = \"EU\"\nstudy = \"EU\"\n",
        )
        .unwrap();
        let members = geo_members(&conn, &file, all.clone(), Some(&restrictions)).unwrap();
        assert_eq!(members, vec![member(1), member(4)]);
        // A bad study jurisdiction is refused when the file is parsed.
        let bad = STUDY.replace("\"FR\"", "\"FX\"");
        let e = StudyFile::parse(&bad).unwrap_err().to_string();
        assert!(
            e.contains("[study] jurisdiction: `FX` is not a jurisdiction"),
            "{e}"
        );
    }
}
