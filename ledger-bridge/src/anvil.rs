//! A local anvil node for tests and trials: the real binary shipped in the
//! npm package `@foundry-rs/anvil` (pinned in `contracts/package.json`),
//! started on an ephemeral loopback port and stopped on drop.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::error::{Error, Result};

/// The environment variable naming an anvil binary to use instead of the
/// npm package's.
pub const ANVIL_ENV: &str = "COHORT_ANVIL";

/// anvil's first development account's key (of its public test mnemonic):
/// funded with 10,000 ETH on every fresh anvil chain.
pub const DEV_KEY: [u8; 32] =
    alloy::primitives::hex!("ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80");

/// A running anvil, killed when dropped.
pub struct Anvil {
    child: Child,
    url: String,
}

impl Anvil {
    /// Where the binary is: `$COHORT_ANVIL`, else the npm package's under
    /// `ledger-bridge/contracts/node_modules` (after `npm ci` there).
    pub fn binary() -> Result<PathBuf> {
        if let Some(path) = std::env::var_os(ANVIL_ENV) {
            return Ok(PathBuf::from(path));
        }
        let modules =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("contracts/node_modules/@foundry-rs");
        let candidates = [
            modules.join("anvil-linux-amd64/bin/anvil"),
            modules.join("anvil-linux-arm64/bin/anvil"),
            modules.join("anvil/anvil"),
        ];
        candidates.iter().find(|p| p.is_file()).cloned().ok_or_else(|| {
            Error::Node(format!(
                "no anvil binary: run `npm ci` in {} (it installs @foundry-rs/anvil), or set {ANVIL_ENV}",
                modules.parent().and_then(Path::parent).unwrap_or(&modules).display()
            ))
        })
    }

    /// Starts anvil on 127.0.0.1 with an ephemeral port and `extra`
    /// arguments, and waits until it listens.
    pub fn spawn(extra: &[&str]) -> Result<Anvil> {
        let binary = Anvil::binary()?;
        let mut child = Command::new(&binary)
            .args(["--host", "127.0.0.1", "--port", "0"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| Error::Node(format!("cannot start {}: {e}", binary.display())))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let (found, listening) = mpsc::channel();
        // anvil prints a banner, then `Listening on 127.0.0.1:PORT`, then
        // one line per request: keep draining it so it never blocks.
        std::thread::spawn(move || {
            let mut found = Some(found);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(address) = line.strip_prefix("Listening on ")
                    && let Some(found) = found.take()
                {
                    let _ = found.send(address.trim().to_string());
                }
            }
        });
        match listening.recv_timeout(Duration::from_secs(30)) {
            Ok(address) => Ok(Anvil {
                child,
                url: format!("http://{address}"),
            }),
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().ok();
                Err(Error::Node(format!(
                    "{} did not start listening within 30 s (exit status {status:?})",
                    binary.display()
                )))
            }
        }
    }

    /// The node's JSON-RPC URL.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for Anvil {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
