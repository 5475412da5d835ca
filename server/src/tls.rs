//! The server's TLS identity: a certificate an operator provides, or one
//! generated on first start for local use and kept in the data directory,
//! where `cohort login` on the same machine finds it to trust.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use cohort_engine::{DataDir, Error, Result};

/// How the server speaks TLS.
#[derive(Clone, Debug, Default)]
pub enum Tls {
    /// A self-signed certificate for `localhost` and the listening address,
    /// generated once under `server/tls/` in the data directory.
    #[default]
    SelfSigned,
    /// The operator's certificate chain and private key (PEM files).
    Files {
        /// The certificate chain.
        cert: PathBuf,
        /// Its private key.
        key: PathBuf,
    },
    /// Plain HTTP/2, for a loopback address only (a TLS-terminating proxy
    /// in front, or tests).
    Off,
}

/// Where the generated certificate lives.
pub fn self_signed_cert_path(dir: &DataDir) -> PathBuf {
    dir.root().join("server").join("tls").join("cert.pem")
}

/// Refuses plain HTTP/2 anywhere but a loopback address; checked before
/// the server opens anything (its chain included).
pub fn allowed(tls: &Tls, listen: SocketAddr) -> Result<()> {
    match tls {
        Tls::Off if !listen.ip().is_loopback() => Err(Error::Invalid(format!(
            "--plaintext serves tokens in the clear: only on a loopback address, not {listen}"
        ))),
        _ => Ok(()),
    }
}

/// The PEM certificate and key to serve with, or `None` for plain HTTP/2.
pub(crate) fn identity(
    dir: &DataDir,
    tls: &Tls,
    listen: SocketAddr,
) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
    allowed(tls, listen)?;
    match tls {
        Tls::Off => Ok(None),
        Tls::Files { cert, key } => Ok(Some((read(cert)?, read(key)?))),
        Tls::SelfSigned => {
            let cert_path = self_signed_cert_path(dir);
            let key_path = cert_path.with_file_name("key.pem");
            if !(cert_path.exists() && key_path.exists()) {
                generate(&cert_path, &key_path, listen)?;
            }
            Ok(Some((read(&cert_path)?, read(&key_path)?)))
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io("reading", path, e))
}

fn generate(cert_path: &Path, key_path: &Path, listen: SocketAddr) -> Result<()> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    if !listen.ip().is_unspecified() {
        names.push(listen.ip().to_string());
    }
    names.dedup();
    let rcgen::CertifiedKey { cert, signing_key } = rcgen::generate_simple_self_signed(names)
        .map_err(|e| Error::Invalid(format!("generating the server's certificate: {e}")))?;
    let dir = cert_path.parent().expect("a file under server/tls");
    std::fs::create_dir_all(dir).map_err(|e| Error::io("creating", dir, e))?;
    // Owner-only and atomic (fsutil); the key first, so the certificate
    // marks the pair complete.
    cohort_engine::storage::fsutil::write_atomic(key_path, signing_key.serialize_pem().as_bytes())?;
    cohort_engine::storage::fsutil::write_atomic(cert_path, cert.pem().as_bytes())
}
