//! A restart finishes or undoes what a killed process left: reservations
//! made before anything was read are released, everything after is
//! charged and committed.

use super::*;

/// What [`Session::recover`] did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Recovery {
    /// Queries whose outcome was committed (an answer, or the charged
    /// failure of a query whose process died while it ran).
    pub committed: Vec<String>,
    /// Queries whose reservation was released (nothing had been read).
    pub released: Vec<String>,
}

impl Session {
    /// Finishes what crashed queries left: a stored outcome is committed;
    /// a query whose process died while it ran is recorded as the charged
    /// failure and committed; a reservation made before anything was read
    /// is released. Queries still in flight are left alone.
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
                "executing" => {
                    let entry = self.store_failure(conn, &entry, Failure::Killed, None)?;
                    self.commit_stored(conn, &entry).await?;
                    report.committed.push(entry.query_id.clone());
                }
                "answered" | "failed" => {
                    self.commit_stored(conn, &entry).await?;
                    report.committed.push(entry.query_id.clone());
                }
                "reserving" | "reserved" => {
                    self.release_reservation(conn, &entry).await?;
                    report.released.push(entry.query_id.clone());
                }
                _ => {}
            }
        }
        Ok(report)
    }

    /// Releases `entry`'s reservation if the ledger holds one: only for a
    /// query that never started executing.
    pub(super) async fn release_reservation(
        &self,
        conn: &Connection,
        entry: &journal::Entry,
    ) -> Result<()> {
        let id: B256 = entry
            .ledger_id
            .parse()
            .map_err(|_| Error::Invalid("a malformed ledger id in the journal".into()))?;
        let q = self.client.query(id).await?;
        if q.state == 1 {
            self.client
                .release(&self.engine, entry.study_id, id)
                .await?;
        }
        journal::set_state(conn, &entry.ledger_id, "released")
    }

    /// Stores the fixed failure as `entry`'s outcome; `how` goes to the
    /// journal for the operator, never to the researcher.
    pub(super) fn store_failure(
        &self,
        conn: &Connection,
        entry: &journal::Entry,
        how: Failure,
        ran: Option<std::time::Duration>,
    ) -> Result<journal::Entry> {
        let (fee, members) = conn.query_row(
            "SELECT fee, members FROM research_queries WHERE ledger_id = ?1",
            [&entry.ledger_id],
            |r| Ok((r.get::<_, Option<String>>(0)?, r.get::<_, Option<i64>>(1)?)),
        )?;
        let charged = Charged {
            study_id: entry.study_id,
            query_id: entry.query_id.clone(),
            ledger_id: entry.ledger_id.clone(),
            sql: entry.sql.clone(),
            cost: entry.cost.clone(),
            fee: fee.unwrap_or_default(),
            members: members.unwrap_or(0) as usize,
            outcome: CHARGED.into(),
        };
        let text = serde_json::to_string(&charged).expect("a failure serialises");
        let salt = fresh_salt()?;
        let hash = commitment(&salt, &text);
        journal::outcome(
            conn,
            &entry.ledger_id,
            &text,
            &hex(&salt),
            &format!("{hash:#x}"),
            Some(how.as_str()),
            ran,
        )?;
        journal::get(conn, &entry.ledger_id)?
            .ok_or_else(|| Error::Invalid("a journal entry vanished".into()))
    }

    /// Commits a stored outcome (idempotent on the ledger) and audits it.
    pub(super) async fn commit_stored(
        &self,
        conn: &Connection,
        entry: &journal::Entry,
    ) -> Result<()> {
        let id: B256 = parse_b256(Some(&entry.ledger_id), "ledger id")?;
        let hash = parse_b256(entry.result_hash.as_deref(), "result hash")?;
        let (root, members) = journal::members_root(conn, &entry.ledger_id)?;
        let root = parse_b256(Some(&root), "members root")?;
        self.client
            .commit(&self.engine, entry.study_id, id, hash, root, members)
            .await?;
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
                    "cost": entry.cost,
                    "result_hash": format!("{hash:#x}"),
                    "members": members,
                    "outcome": if entry.failure.is_some() || entry.state == "failed" { CHARGED } else { "answered" },
                }),
            },
        )?;
        tx.commit()?;
        Ok(())
    }
}
