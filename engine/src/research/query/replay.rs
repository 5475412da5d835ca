//! Stored outcomes: the fixed failure every query without an answer
//! gets, and the replay of a query id already answered (never fresh
//! noise).

use super::*;

/// The stored outcome of a query that ended without an answer: the same
/// for every way of ending so, and carrying nothing from the data.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Charged {
    pub(super) study_id: u64,
    pub(super) query_id: String,
    pub(super) ledger_id: String,
    pub(super) sql: String,
    pub(super) cost: String,
    pub(super) fee: String,
    pub(super) members: usize,
    pub(super) outcome: String,
}

/// What every query without an answer is told it was.
pub(super) const CHARGED: &str = "charged without an answer";

pub(super) fn interrupted(query_id: &str) -> Error {
    Error::Invalid(format!(
        "query `{query_id}` was interrupted before it ran and its reservation released \
         (nothing was read or spent); ask again with a new query id"
    ))
}

impl Session {
    /// The answer as stored and committed to.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn stored_answer(
        &self,
        id: u64,
        query_id: &str,
        ledger_hex: &str,
        request: &QueryRequest,
        aggregates: &[PlannedAggregate],
        answer: PrivateAnswer,
        fee: U256,
        members: usize,
    ) -> Result<Answer> {
        let (columns, rows) = crate::sql::table(&answer.batches)?;
        Ok(Answer {
            study_id: id,
            query_id: query_id.to_string(),
            ledger_id: ledger_hex.to_string(),
            sql: request.sql.clone(),
            columns,
            rows,
            releases: serde_json::to_value(&answer.releases).expect("releases serialise"),
            cost: answer.cost.to_string(),
            fee: fee.to_string(),
            share: share_of(fee, members).to_string(),
            members,
            encrypted: aggregates
                .iter()
                .flat_map(|a| &a.outputs)
                .filter_map(|o| {
                    let e = o.encrypted.as_ref()?;
                    Some(crate::research::answer::EncryptedOutput {
                        output: o.output.clone(),
                        column: e.column.clone(),
                        layer: e.layer,
                    })
                })
                .collect(),
        })
    }

    /// A query id seen before: its stored outcome, never a new run.
    pub(super) async fn replay(
        &self,
        conn: &Connection,
        file: &StudyFile,
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
        let mut entry = journal::get(conn, &entry.ledger_id)?.expect("seen above");
        match entry.state.as_str() {
            "executing" => {
                entry = self.store_failure(conn, &entry, Failure::Killed, None)?;
                self.commit_stored(conn, &entry).await?;
            }
            "answered" | "failed" => self.commit_stored(conn, &entry).await?,
            "committed" | "delivered" => {}
            "reserving" | "reserved" => {
                self.release_reservation(conn, &entry).await?;
                return Err(interrupted(&entry.query_id));
            }
            _ => return Err(interrupted(&entry.query_id)),
        }
        let entry = journal::get(conn, &entry.ledger_id)?.expect("seen above");
        journal::set_state(conn, &entry.ledger_id, "delivered")?;
        if entry.failure.is_some() {
            return Err(Error::Charged {
                query_id: entry.query_id.clone(),
                cost: entry.cost.clone(),
            });
        }
        let text = entry.answer.as_deref().unwrap_or_default();
        let salt = entry.salt.clone().unwrap_or_default();
        let mut answer: Answer = serde_json::from_str(text)
            .map_err(|e| Error::Invalid(format!("the journal's answer: {e}")))?;
        // Sealed results are decrypted again: threshold decryption of the
        // same ciphertexts gives the same values.
        crate::research::encryption::decrypt_answer(
            conn,
            self.keys.as_ref(),
            self.dir.root(),
            &self.client,
            file,
            &mut answer,
            &salt,
            text,
        )
        .await?;
        let members_root: Option<String> = conn.query_row(
            "SELECT members_root FROM research_queries WHERE ledger_id = ?1",
            [&entry.ledger_id],
            |r| r.get(0),
        )?;
        let left = self.client.remaining(entry.study_id).await?;
        Ok(QueryOutcome {
            cost: answer.cost.clone(),
            answer: Some(answer),
            result_hash: entry.result_hash.clone(),
            salt: Some(salt),
            members_root,
            plan: vec![],
            remaining: crate::research::budget_text(s.terms.kind, left.primary, left.delta),
            replayed: true,
            explain: None,
            deadline_ms: entry.deadline_ms,
        })
    }
}
