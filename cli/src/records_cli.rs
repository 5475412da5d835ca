//! `cohort patient` and `cohort audit`: a patient's erasure, and the
//! audit log. (Records themselves: `clinical_cli`.)

use clap::Subcommand;

#[derive(Subcommand)]
pub(crate) enum PatientCmd {
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
    /// Walk the hash chain and name the first broken entry.
    Verify,
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
