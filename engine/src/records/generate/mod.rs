//! `cohort generate`: a synthetic population as FHIR R4 bundles.
//!
//! The population is shaped like a US one: an age pyramid that includes the
//! over-89s, OMB race and ethnicity categories, real ZIP codes (some in the
//! 3-digit prefixes Safe Harbor must blank), and the direct identifiers that
//! de-identification must later remove (names, addresses, phones, e-mails,
//! SSNs in the never-issued 999 range, MRNs). Conditions carry real ICD-10-CM
//! codes at age- and sex-dependent prevalences; observations carry LOINC codes
//! with values that follow the conditions (HbA1c with diabetes, blood pressure
//! with hypertension, glucose from HbA1c by the ADAG relation); medications
//! carry RxNorm codes.
//!
//! Output is deterministic for a seed: patient `i` draws from its own ChaCha
//! stream, so bundles can be generated in parallel and streamed to disk one
//! window at a time (constant memory for any N).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use chrono::{Duration, NaiveDate, NaiveDateTime};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use rayon::prelude::*;
use serde::Serialize;
use serde_json::{Value, json};

use crate::records::fhir::{ICD10CM, LOINC, RXNORM, SSN, US_CORE_ETHNICITY, US_CORE_RACE};
use crate::{Error, Result};

mod patient;
pub mod population;

use patient::patient_resources;

/// What to generate.
#[derive(Debug, Clone)]
pub struct Options {
    /// Number of patients.
    pub patients: u64,
    /// Seed: the same seed gives byte-identical output.
    pub seed: u64,
    /// Directory the bundles are written to.
    pub out: PathBuf,
    /// Patients per bundle file.
    pub per_bundle: u64,
    /// The "today" of the population (ages and dates are relative to it).
    pub as_of: NaiveDate,
    /// Show a progress bar.
    pub progress: bool,
}

impl Options {
    /// `patients` patients from `seed` into `out`, with the defaults
    /// (100 patients per bundle, as of 2026-01-01, no progress bar).
    pub fn new(patients: u64, seed: u64, out: impl Into<PathBuf>) -> Self {
        Options {
            patients,
            seed,
            out: out.into(),
            per_bundle: 100,
            as_of: NaiveDate::from_ymd_opt(2026, 1, 1).expect("valid date"),
            progress: false,
        }
    }
}

/// What a run produced.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Patients written.
    pub patients: u64,
    /// Bundle files written.
    pub bundles: u64,
    /// Resources written.
    pub resources: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Wall time in seconds.
    pub seconds: f64,
    /// Patients per second.
    pub patients_per_second: f64,
    /// Peak resident memory of this process so far, in bytes (Linux only):
    /// stays flat as N grows, because bundles are streamed.
    pub peak_rss_bytes: Option<u64>,
}

/// The process's peak resident set size (`VmHWM`), where the OS reports it.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Generates the population and writes `bundle-NNNNNNN.json` files.
pub fn generate(opts: &Options) -> Result<Report> {
    if opts.per_bundle == 0 {
        return Err(Error::Invalid("--per-bundle must be at least 1".into()));
    }
    std::fs::create_dir_all(&opts.out).map_err(|e| Error::io("creating", &opts.out, e))?;
    let started = Instant::now();
    let bundles = opts.patients.div_ceil(opts.per_bundle);
    let bar = if opts.progress {
        indicatif::ProgressBar::new(opts.patients)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "generate {bar:40} {pos}/{len} patients {per_sec} eta {eta}",
        )
        .expect("valid template"),
    );
    let window = (rayon::current_num_threads() as u64 * 2).max(2);
    let (mut resources, mut bytes) = (0u64, 0u64);
    let mut start = 0;
    while start < bundles {
        let end = (start + window).min(bundles);
        let made: Vec<(u64, Vec<u8>, u64)> = (start..end)
            .into_par_iter()
            .map(|b| {
                let first = b * opts.per_bundle;
                let last = (first + opts.per_bundle).min(opts.patients);
                let (bundle, n) = bundle(opts, b, first..last);
                (b, serde_json::to_vec(&bundle).expect("serializable"), n)
            })
            .collect();
        for (b, body, n) in made {
            write_bundle(&opts.out, b, &body)?;
            resources += n;
            bytes += body.len() as u64;
            let first = b * opts.per_bundle;
            bar.inc((first + opts.per_bundle).min(opts.patients) - first);
        }
        start = end;
    }
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    Ok(Report {
        patients: opts.patients,
        bundles,
        resources,
        bytes,
        seconds,
        patients_per_second: opts.patients as f64 / seconds.max(1e-9),
        peak_rss_bytes: peak_rss_bytes(),
    })
}

fn write_bundle(dir: &Path, index: u64, body: &[u8]) -> Result<()> {
    let path = dir.join(format!("bundle-{:07}.json", index + 1));
    let mut f = std::fs::File::create(&path).map_err(|e| Error::io("creating", &path, e))?;
    f.write_all(body)
        .map_err(|e| Error::io("writing", &path, e))
}

fn bundle(opts: &Options, index: u64, patients: std::ops::Range<u64>) -> (Value, u64) {
    let mut entries = Vec::new();
    for i in patients {
        let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
        rng.set_stream(i);
        entries.extend(patient_resources(&mut rng, opts.as_of));
    }
    let n = entries.len() as u64;
    let entry: Vec<Value> = entries
        .into_iter()
        .map(|r| json!({ "fullUrl": format!("urn:uuid:{}", r["id"].as_str().expect("id")), "resource": r }))
        .collect();
    let id = format!("cohort-synthetic-{}-{}", opts.seed, index + 1);
    (
        json!({ "resourceType": "Bundle", "id": id, "type": "collection", "entry": entry }),
        n,
    )
}

// ---------------------------------------------------------------- tables --
