//! Studies: proposal, m-of-n approval, and what each viewer may see of a
//! study (its terms to anyone signed in, its books to its researcher,
//! stewards and auditors).

use super::*;

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
    /// Where the study is conducted (its file's `jurisdiction`), if said.
    pub jurisdiction: Option<String>,
    /// Consenting patients its view leaves out under the geography policy:
    /// for stewards and auditors only (`None` for anyone else, the
    /// researcher included, and without a policy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub geo_excluded: Option<usize>,
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

impl Session {
    /// `researcher` proposes the study in `file`, sending its escrow.
    pub async fn propose(
        &self,
        conn: &Connection,
        researcher: &Account,
        file: &StudyFile,
    ) -> Result<Proposed> {
        // The view's columns must exist after Safe Harbor, and the policy
        // must fit their types: checked on the empty view before anything is sent.
        super::planner(file, view::schema_tables(conn, file)?)?;
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
    pub(super) async fn overseer(&self, viewer: Viewer) -> Result<bool> {
        Ok(match viewer {
            Viewer::Operator => true,
            Viewer::Account(a) => {
                self.has_role(Role::Steward, a).await? || self.has_role(Role::Auditor, a).await?
            }
        })
    }

    pub(super) async fn summary(
        &self,
        conn: &Connection,
        id: u64,
        viewer: Viewer,
        overseer: bool,
    ) -> Result<StudySummary> {
        let (file, s) = self.study(conn, id).await?;
        self.sync().await?;
        let consenting = self.consenting(conn, id, &s).await?.len();
        let geo_excluded = if overseer && crate::access::geo::policy(conn)?.is_some() {
            Some(self.geo_excluded(conn, id, &file, &s).await?)
        } else {
            None
        };
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
            jurisdiction: file.terms.jurisdiction.clone(),
            geo_excluded,
            books,
        })
    }
}
