//! Consent: a patient's account linked to their records, consent given
//! and withdrawn on chain, erasure's withdrawals, and the consenting set
//! a query counts.

use super::*;

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
    // The patient's own copy of their data key (`keys::data_keys`).
    crate::keys::data_keys::seal_for_holder(
        conn,
        vault.keys(),
        name,
        patient_id,
        &crate::keys::data_keys::Holder::of(&account)?,
        crate::keys::data_keys::Role::Patient,
    )?;
    Ok(account)
}

pub(super) fn linked_account(conn: &Connection, patient_id: &str) -> Result<Option<String>> {
    Ok(conn
        .query_row(
            "SELECT account FROM research_patients WHERE patient_id = ?1",
            [patient_id],
            |r| r.get(0),
        )
        .optional()?)
}

impl Session {
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
        // A consent is also a key: the patient's data key sealed to the
        // engine's account, which the study's view requires.
        let vault = self.vault()?;
        let engine = crate::keys::data_keys::Holder::of(&self.engine)?;
        for (p, outcome) in patients.iter().zip(&out) {
            if outcome.is_ok() {
                let patient_id = self.patient_of(conn, p)?;
                crate::keys::data_keys::seal_for_holder(
                    vault.conn(),
                    vault.keys(),
                    p.name(),
                    &patient_id,
                    &engine,
                    crate::keys::data_keys::Role::Research,
                )?;
            }
        }
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
        let patient_id = self.patient_of(conn, patient)?;
        let receipt = self.client.withdraw(patient, id).await?;
        self.withdraw_key(conn, patient, &patient_id, id).await?;
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

    /// After a withdrawal from study `id`: the engine's copies of the
    /// patient's data key are deleted and the key rotated; if the patient
    /// still consents to another study, the new key is sealed to the engine
    /// again. Running it again is harmless (a crash between the chain's
    /// withdrawal and this step is repaired by withdrawing again, or by the
    /// next consent).
    async fn withdraw_key(
        &self,
        conn: &Connection,
        patient: &Account,
        patient_id: &str,
        id: u64,
    ) -> Result<()> {
        let vault = self.vault()?;
        let engine = crate::keys::data_keys::Holder::of(&self.engine)?;
        crate::keys::data_keys::revoke_holder(
            vault.conn(),
            vault.keys(),
            patient.name(),
            patient_id,
            &engine.address,
            &format!("withdraw study {id}"),
        )?;
        self.sync().await?;
        let others: bool = conn
            .prepare(
                "SELECT 1 FROM ledger_consents WHERE patient = ?1 AND active = 1 AND study_id <> ?2",
            )?
            .exists(params![format!("{:#x}", patient.address()), id as i64])?;
        if others {
            crate::keys::data_keys::seal_for_holder(
                vault.conn(),
                vault.keys(),
                patient.name(),
                patient_id,
                &engine,
                crate::keys::data_keys::Role::Research,
            )?;
        }
        Ok(())
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
                .query_map(
                    [format!(
                        "{:#x}",
                        crate::access::patients::require(&conn, patient_id)?.address
                    )],
                    |r| r.get(0),
                )?
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
}

/// Erases `patient_id` wherever they are: with a ledger deployed, through a
/// [`Session`] ([`Session::erase`]: their consents are withdrawn on chain
/// first); without one, in the vault alone.
pub async fn erase(
    dir: &DataDir,
    vault: &Vault,
    access: &crate::records::vault::Access,
    patient_id: &str,
) -> Result<crate::records::vault::Erasure> {
    if chain::load(dir)?.is_none() {
        return vault.erase_patient(access, patient_id);
    }
    let session = Session::open(dir, vault).await?;
    session.erase(vault, access, patient_id).await
}
