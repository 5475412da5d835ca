//! Decryption behind the ledger: only a committed answer's results.

use super::*;

/// The decryptors' check of the ledger: the query's debit is committed,
/// and its result hash is the hash of the answer these results belong to.
#[derive(Debug)]
pub struct LedgerGate {
    ledger_id: String,
    digests: HashSet<[u8; 32]>,
}

impl LedgerGate {
    /// Asks the ledger about `ledger_id` and admits the sealed results of
    /// `answer_text` only if the chain holds a committed debit whose result
    /// hash is the salted commitment to it (`salt` in hex).
    pub async fn check(
        client: &cohort_ledger_bridge::Client,
        ledger_id: B256,
        salt: &str,
        answer_text: &str,
        sealed: &[Sealed],
    ) -> Result<LedgerGate> {
        let q = client
            .view(
                Target::Study,
                ResearchStudy::queryOfCall { queryId: ledger_id },
            )
            .await?;
        let hex = format!("{ledger_id:#x}");
        let refuse = |why: String| {
            Error::Invalid(
                FheError::NotAuthorized {
                    query_id: hex.clone(),
                    why,
                }
                .to_string(),
            )
        };
        if q.state != 2 {
            let state = match q.state {
                0 => "unknown to the ledger",
                1 => "reserved but not committed",
                3 => "released without a debit",
                _ => "in an unknown state",
            };
            return Err(refuse(format!("the query is {state}")));
        }
        let salt = data_encoding::HEXLOWER_PERMISSIVE
            .decode(salt.as_bytes())
            .map_err(|e| Error::Invalid(format!("a commitment's salt is not hex: {e}")))?;
        if q.resultHash != commitment(&salt, answer_text) {
            return Err(refuse(
                "the committed result hash is not the hash of this answer".into(),
            ));
        }
        Ok(LedgerGate {
            ledger_id: hex,
            digests: sealed.iter().map(|s| s.digest).collect(),
        })
    }
}

impl DecryptionGate for LedgerGate {
    fn authorize(&self, query_id: &str, digest: &[u8; 32]) -> cohort_fhe::Result<()> {
        if query_id != self.ledger_id {
            return Err(FheError::NotAuthorized {
                query_id: query_id.into(),
                why: "the committed debit is for another query".into(),
            });
        }
        if !self.digests.contains(digest) {
            return Err(FheError::NotAuthorized {
                query_id: query_id.into(),
                why: "this result is not part of the committed answer".into(),
            });
        }
        Ok(())
    }
}

/// Decrypts the sealed cells of a committed answer in place: ElGamal
/// results by t stewards (each gated, each proof checked), tfhe results by
/// the custodian (gated).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn decrypt_answer(
    conn: &Connection,
    keys: &dyn KeyStore,
    root: &std::path::Path,
    client: &cohort_ledger_bridge::Client,
    file: &StudyFile,
    answer: &mut Answer,
    salt: &str,
    answer_text: &str,
) -> Result<()> {
    if answer.encrypted.is_empty() {
        return Ok(());
    }
    let cols = columns(file);
    let mut targets = Vec::new();
    for out in &answer.encrypted {
        let index = answer
            .columns
            .iter()
            .position(|c| *c == out.output)
            .ok_or_else(|| Error::Invalid(format!("answer column `{}` is missing", out.output)))?;
        targets.push((index, out.clone()));
    }
    let mut sealed_cells = Vec::new();
    for row in &answer.rows {
        for (index, _) in &targets {
            let text = row[*index]
                .as_str()
                .ok_or_else(|| Error::Invalid("a sealed result is not text".into()))?;
            let bytes = data_encoding::HEXLOWER_PERMISSIVE
                .decode(text.as_bytes())
                .map_err(|e| Error::Invalid(format!("a sealed result is not hex: {e}")))?;
            sealed_cells.push(Sealed::from_bytes(&bytes).map_err(fhe_error)?);
        }
    }
    let ledger_id: B256 = answer
        .ledger_id
        .parse()
        .map_err(|e| Error::Invalid(format!("ledger id: {e}")))?;
    let gate = LedgerGate::check(client, ledger_id, salt, answer_text, &sealed_cells).await?;
    let study = answer.study_id;
    let key = custodian_key(conn, study)?;
    let stewards: Vec<Steward> = match &key {
        Some(k) => shares(conn, keys, study, k.threshold.t as usize)?
            .into_iter()
            .map(Steward::new)
            .collect(),
        None => vec![],
    };
    let custodian = if targets.iter().any(|(_, o)| o.layer == Layer::Tfhe) {
        Some(tfhe_custodian(keys, root)?)
    } else {
        None
    };
    let mut sealed = sealed_cells.into_iter();
    for row in answer.rows.iter_mut() {
        for (index, out) in &targets {
            let s = sealed.next().expect("one sealed result per cell");
            let value = match s.layer {
                Layer::Elgamal => {
                    let key = key.as_ref().ok_or_else(|| {
                        Error::Invalid(format!("study {study} has no ElGamal key"))
                    })?;
                    let partials = stewards
                        .iter()
                        .map(|st| st.decrypt(&gate, &answer.ledger_id, &s))
                        .collect::<cohort_fhe::Result<Vec<_>>>()
                        .map_err(fhe_error)?;
                    let c = column(&cols, &out.column)?;
                    // Searched over what the consenting set could sum to
                    // (a public size), not over what was stored.
                    let (lo, hi) =
                        linear::search_range(answer.members as u64, c.bounds()?, NOISE_TAIL);
                    linear::open(key, &answer.ledger_id, &s, &partials, lo, hi)
                        .map_err(fhe_error)?
                }
                Layer::Tfhe => {
                    let custodian = custodian.as_ref().expect("loaded above");
                    custodian
                        .decrypt(&gate, &answer.ledger_id, &s)
                        .map_err(fhe_error)?
                        .max(0)
                }
            };
            row[*index] = value.into();
        }
    }
    Ok(())
}
