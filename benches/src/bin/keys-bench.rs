//! The keystores side by side: one wrap and one unwrap of a data key under
//! the file keystore (XChaCha20-Poly1305 in process) and under a PKCS#11
//! token (AES-256-GCM inside SoftHSM2), and a rotation of N wrapped keys
//! (`cohort keys rotate`'s path) under each.
//!
//! The HSM side needs a token: `scripts/keys-bench` makes a SoftHSM2 token
//! directory of its own and runs
//! `cargo run --release -p cohort-benches --bin keys-bench -- --keys 10000 --module /usr/lib/softhsm/libsofthsm2.so --token-label bench`
//! with `SOFTHSM2_CONF` and `COHORT_HSM_PIN` set. Without `--module`, only
//! the file keystore is measured.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use cohort_engine::DataDir;
use cohort_engine::keys::keystore::{FileKeyStore, KdfParams, KeyStore, SecretKey};
use cohort_engine::keys::pkcs11::{PIN_ENV, Pkcs11KeyStore, Pkcs11Params};
use cohort_engine::rotation::{self, RotateOptions};

#[derive(Parser)]
struct Args {
    /// Wrapped keys in the rotated data directory.
    #[arg(long, default_value_t = 10_000)]
    keys: usize,
    /// Wraps and unwraps timed, each.
    #[arg(long, default_value_t = 2_000)]
    iterations: usize,
    /// Keys re-wrapped per transaction.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// The PKCS#11 module (the HSM side is skipped without it).
    #[arg(long)]
    module: Option<PathBuf>,
    /// The token's label.
    #[arg(long, default_value = "bench")]
    token_label: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tmp = tempfile::tempdir()?;
    let file: Arc<dyn KeyStore> = Arc::new(FileKeyStore::create(
        &tmp.path().join("file-keystore.json"),
        "bench",
        KdfParams::default(),
    )?);
    let mut stores = vec![("file", file)];
    if let Some(module) = &args.module {
        let pin = std::env::var(PIN_ENV)
            .map_err(|_| anyhow::anyhow!("set {PIN_ENV} to the token's user PIN"))?;
        let hsm = Pkcs11KeyStore::open(&Pkcs11Params {
            module,
            token_label: &args.token_label,
            kek_label: "bench-kek",
            pin: &pin,
        })?;
        stores.push(("pkcs11 (SoftHSM2)", Arc::new(hsm)));
    }
    for (name, keys) in stores {
        let key = SecretKey::generate();
        let wrapped = keys.wrap(&key, b"patient-0")?;
        let t = Instant::now();
        for _ in 0..args.iterations {
            std::hint::black_box(keys.wrap(&key, b"patient-0")?);
        }
        let wrap_us = t.elapsed().as_secs_f64() * 1e6 / args.iterations as f64;
        let t = Instant::now();
        for _ in 0..args.iterations {
            std::hint::black_box(keys.unwrap(&wrapped, b"patient-0")?);
        }
        let unwrap_us = t.elapsed().as_secs_f64() * 1e6 / args.iterations as f64;

        // A data directory holding `keys` patients' wrapped data keys.
        let dir = DataDir::open(&tmp.path().join(name.split(' ').next().unwrap_or(name)))?;
        let conn = dir.connect()?;
        conn.execute_batch("BEGIN")?;
        for i in 0..args.keys {
            let id = format!("patient-{i}");
            conn.execute(
                "INSERT INTO patients(patient_id, wrapped_key, kek_id, created_at) VALUES (?1, ?2, ?3, '')",
                (
                    id.as_str(),
                    keys.wrap(&SecretKey::generate(), id.as_bytes())?,
                    keys.key_id(),
                ),
            )?;
        }
        conn.execute_batch("COMMIT")?;
        let t = Instant::now();
        let report = rotation::rotate(
            &conn,
            keys.as_ref(),
            dir.root(),
            "operator",
            &RotateOptions {
                batch: args.batch,
                ..RotateOptions::default()
            },
        )?;
        let rotate_s = t.elapsed().as_secs_f64();
        let rewrapped: usize = report.rewrapped.values().sum();
        println!(
            "{name:<18} wrap {wrap_us:>7.1} µs  unwrap {unwrap_us:>7.1} µs  rotate {rewrapped} keys in {rotate_s:.2} s ({:.0} keys/s, batches of {})",
            rewrapped as f64 / rotate_s,
            args.batch
        );
    }
    Ok(())
}
