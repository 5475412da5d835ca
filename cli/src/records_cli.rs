//! `cohort patient` and `cohort audit`: a patient's export, accounting of
//! disclosures and erasure, and the audit log. (Records themselves: `clinical_cli`.)

use clap::Subcommand;

#[derive(Subcommand)]
pub(crate) enum PatientCmd {
    /// A patient's records as one FHIR Bundle (GDPR art. 15 and 20), read as
    /// `--as` (the patient, a delegate, or whoever the chain allows; the
    /// reads are traced on chain and the export audited).
    Export {
        /// The patient (their account or vault id).
        patient: String,
        /// Where to write the Bundle (JSON).
        #[arg(long)]
        out: std::path::PathBuf,
        /// Purpose of use: treatment, payment or operations.
        #[arg(long, default_value = "treatment")]
        purpose: String,
    },
    /// The accounting of disclosures (HIPAA §164.528): every disclosure of
    /// the patient's records since `--since` (default: six years), who
    /// received what, when and why; for the patient themself (`--as`) or
    /// an admin or auditor answering their request. Audited.
    Disclosures {
        /// The patient (their account or vault id).
        patient: String,
        /// From when (YYYY-MM-DD or RFC 3339).
        #[arg(long)]
        since: Option<String>,
    },
    /// Who holds a sealed copy of which epoch of the patient's data key
    /// (names and addresses, no key bytes): for the patient themself
    /// (`--as`) or an admin or auditor. Audited.
    Keys {
        /// The patient (their account or vault id).
        patient: String,
    },
    /// Erase a patient by destroying their data key (crypto-shredding). Irreversible.
    Erase {
        /// The patient id.
        patient: String,
        /// Confirm that the erasure is intended.
        #[arg(long)]
        confirm: bool,
        /// Reason recorded in the audit log.
        #[arg(long, default_value = "erasure request")]
        purpose: String,
    },
}

#[derive(Subcommand)]
pub(crate) enum AuditCmd {
    /// Walk the hash chain and name the first broken entry; then, with the
    /// keystore, check every sealed entry's MAC and every head anchored on
    /// chain, naming the first entry that differs, a consistent rewrite of
    /// the whole log included.
    Verify {
        /// Only the unkeyed chain (no passphrase needed; a consistent rewrite
        /// goes unnoticed).
        #[arg(long)]
        unkeyed: bool,
    },
    /// Seal the entries written since the last anchor (MACs under the audit
    /// key) and anchor the keyed head on chain, as the engine account.
    /// `cohort serve` does this periodically and at shutdown.
    Anchor,
    /// The latest entries.
    Log {
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Only entries about this record or patient.
        #[arg(long)]
        target: Option<String>,
    },
}
