//! The executor: each group's encrypted work, padded to its public size.

use super::*;

/// Noise beyond this magnitude is not searched for when decrypting a sum
/// (a discrete Laplace or Gaussian that large has probability far below
/// 2^-100 for any budget a study can declare); the search costs only the
/// square root of its width.
pub(super) const NOISE_TAIL: i64 = 1 << 30;

/// The planner's executor for one study: the study's ElGamal key and, if
/// it has a tfhe column, the deployment's server key.
pub(crate) struct Executor {
    pub(super) linear: Option<LinearLayer>,
    pub(super) predicate: Option<Arc<PredicateLayer>>,
    /// Per column: the public count of consenting patients who shared a
    /// value, and a stored ciphertext the padding computes on.
    pub(super) public: BTreeMap<String, (u64, Option<Vec<u8>>)>,
    pub(super) job: Arc<Job>,
}

impl Executor {
    pub(crate) fn load(
        conn: &Connection,
        root: &std::path::Path,
        study: u64,
        file: &StudyFile,
        consenting: &[Consenting],
        job: Arc<Job>,
    ) -> Result<Option<Executor>> {
        let cols = columns(file);
        if cols.is_empty() {
            return Ok(None);
        }
        let linear = custodian_key(conn, study)?.map(LinearLayer::new);
        let predicate = if cols.iter().any(|c| c.layer == Layer::Tfhe)
            && tfhe_dir(root).join("server.bin").exists()
        {
            Some(tfhe_server_shared(root)?)
        } else {
            None
        };
        let mut public = BTreeMap::new();
        for c in &cols {
            let count = shared_count(conn, study, &c.column, consenting)?;
            let stand_in = cells(conn, study, &c.column, consenting)?
                .into_values()
                .min();
            public.insert(c.column.clone(), (count, stand_in));
        }
        Ok(Some(Executor {
            linear,
            predicate,
            public,
            job,
        }))
    }

    /// The padded size of one group's work: every consenting patient who
    /// shared a value, `max_rows` records each.
    fn padded(&self, column: &str, max_rows: u32) -> u64 {
        self.public
            .get(column)
            .map_or(0, |(count, _)| count.saturating_mul(u64::from(max_rows)))
    }
}

impl EncryptedExecutor for Executor {
    fn estimate(
        &self,
        _table: &str,
        column: &str,
        op: &EncryptedOp,
        max_rows: u32,
    ) -> CostEstimate {
        cohort_fhe::estimate(op, self.padded(column, max_rows))
    }

    fn aggregate(
        &self,
        _table: &str,
        column: &str,
        op: &EncryptedOp,
        cells: &[&[u8]],
        noise: i64,
        max_rows: u32,
    ) -> std::result::Result<Sealed, FheError> {
        let missing = |layer: &str| FheError::NotAuthorized {
            query_id: String::new(),
            why: format!("no {layer} key for `{column}` in this deployment"),
        };
        let padding = Padding {
            to: usize::try_from(self.padded(column, max_rows)).unwrap_or(usize::MAX),
            stand_in: self.public.get(column).and_then(|(_, s)| s.as_deref()),
        };
        match cohort_fhe::route(op) {
            Layer::Elgamal => self
                .linear
                .as_ref()
                .ok_or_else(|| missing("ElGamal"))?
                .aggregate(op, cells, noise, &self.job, padding),
            Layer::Tfhe => self
                .predicate
                .as_ref()
                .ok_or_else(|| missing("tfhe"))?
                .aggregate(op, cells, noise, &self.job, padding),
        }
    }
}
