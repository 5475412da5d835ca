//! The server's configuration: one TOML file, every key of which an
//! environment variable `COHORT_<SECTION>_<KEY>` overrides, and the command
//! line over both. An operator can see what took effect with
//! `cohort serve --print-config`.
//!
//! Unknown keys and sections are errors, not silently ignored: a misspelt
//! `[tls] mdoe = "off"` must not leave TLS in a state the operator did not
//! choose.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::tls::Tls;
use cohort_engine::keys::config::KeysConfig;
use cohort_engine::{Error, Result};

/// Every key of the file, as `(section, key)`; each is overridable by
/// `COHORT_<SECTION>_<KEY>` (upper case).
pub const KEYS: &[(&str, &str)] = &[
    ("server", "listen"),
    ("server", "max_request_bytes"),
    ("server", "shutdown_grace_secs"),
    ("auth", "token_ttl_secs"),
    ("auth", "second_factor"),
    ("auth", "passkey_rp_id"),
    ("auth", "passkey_origin"),
    ("tls", "mode"),
    ("tls", "cert"),
    ("tls", "key"),
    ("log", "filter"),
    ("log", "format"),
    ("appointments", "scheduler_secs"),
    ("audit", "anchor_secs"),
    ("retention", "run_secs"),
    ("keys", "store"),
    ("keys", "module"),
    ("keys", "token_label"),
    ("keys", "kek_label"),
    ("keys", "pin_file"),
    ("engine", "kind"),
    ("engine", "scheduler"),
    ("engine", "partitions"),
];

/// The file read when neither `--config` nor `$COHORT_CONFIG` names one.
pub const DEFAULT_FILE: &str = "cohort.toml";

/// The whole configuration of `cohort serve`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where and how the server listens.
    pub server: ServerSection,
    /// Sign-in.
    pub auth: AuthSection,
    /// Transport security.
    pub tls: TlsSection,
    /// Structured logs (never PHI: accounts, studies, outcomes, timings).
    pub log: LogSection,
    /// The appointment scheduler.
    pub appointments: AppointmentsSection,
    /// The audit log's anchoring.
    pub audit: AuditSection,
    /// The retention purge.
    pub retention: RetentionSection,
    /// Where the exact part of a private plan runs (docs/BALLISTA.md).
    pub engine: EngineSection,
    /// The keystore (absent: whatever the data directory records, the file
    /// keystore by default). When present it must name the keystore the
    /// data directory already uses; a new directory records it. The HSM's
    /// PIN is never a key here: `pin_file`, else `$COHORT_HSM_PIN`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keys: Option<KeysConfig>,
}

/// How `[engine] kind` is spelt.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EngineKind {
    /// DataFusion in this process.
    #[default]
    Local,
    /// An Apache Ballista cluster, at `scheduler`.
    Ballista,
}

/// `[engine]`: the research path's private plans run their exact part
/// here or on a Ballista cluster; the noise, the deadline and every
/// charged ending stay in this process either way.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSection {
    /// local or ballista.
    pub kind: EngineKind,
    /// The Ballista scheduler (`http://host:port` or `df://host:port`),
    /// for `kind = "ballista"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheduler: Option<String>,
    /// Partitions of a plan on the cluster (its executors' task slots, all
    /// together).
    pub partitions: usize,
}

impl Default for EngineSection {
    fn default() -> Self {
        EngineSection {
            kind: EngineKind::Local,
            scheduler: None,
            partitions: 2,
        }
    }
}

impl EngineSection {
    /// What serde cannot say: a cluster needs its scheduler, and only a
    /// cluster has one.
    fn check(&self) -> Result<()> {
        match (self.kind, &self.scheduler) {
            (EngineKind::Ballista, None) => Err(Error::Invalid(
                "[engine] kind = \"ballista\" needs `scheduler` (COHORT_ENGINE_SCHEDULER), \
                 e.g. \"http://scheduler.example.org:50050\""
                    .into(),
            )),
            (EngineKind::Local, Some(s)) => Err(Error::Invalid(format!(
                "[engine] scheduler = \"{s}\" is used only with kind = \"ballista\""
            ))),
            _ if self.partitions == 0 => Err(Error::Invalid(
                "[engine] partitions must be at least 1".into(),
            )),
            _ => Ok(()),
        }
    }
}

/// `[retention]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionSection {
    /// How often the records past their retention policy are purged, on
    /// the chain's clock, in seconds (0: never; `cohort retention run`).
    pub run_secs: u64,
}

impl Default for RetentionSection {
    fn default() -> Self {
        RetentionSection { run_secs: 86_400 }
    }
}

/// `[audit]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSection {
    /// How often the audit log's new entries are sealed and its keyed head
    /// anchored on chain, in seconds (0: only at shutdown).
    pub anchor_secs: u64,
}

impl Default for AuditSection {
    fn default() -> Self {
        AuditSection { anchor_secs: 300 }
    }
}

/// `[appointments]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AppointmentsSection {
    /// How often the scheduler sends due reminders and settles expired
    /// bookings and released forfeits, in seconds (0: never).
    pub scheduler_secs: u64,
}

impl Default for AppointmentsSection {
    fn default() -> Self {
        AppointmentsSection { scheduler_secs: 30 }
    }
}

/// `[server]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// The address to listen on (port 0: any free port).
    pub listen: SocketAddr,
    /// The largest message a client may send (a statement, a handshake).
    pub max_request_bytes: usize,
    /// After a stop signal, how long calls in flight may take to finish
    /// before they are aborted.
    pub shutdown_grace_secs: u64,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            max_request_bytes: 1 << 20,
            shutdown_grace_secs: 30,
        }
    }
}

/// `[auth]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    /// How long a sign-in's token lasts.
    pub token_ttl_secs: u64,
    /// Whether every sign-in (the CLI's key, the page's passkey) must add
    /// a TOTP code. Off only for a closed test deployment.
    pub second_factor: bool,
    /// The WebAuthn relying party id of the page's passkeys: the host name
    /// the browser shows (a domain, never an IP address); passkeys
    /// registered under one id do not work under another.
    pub passkey_rp_id: String,
    /// The page's origin as the browser sends it (`https://cohort.example.org`);
    /// empty: `<scheme>://<passkey_rp_id>:<the listening port>`.
    pub passkey_origin: String,
}

impl Default for AuthSection {
    fn default() -> Self {
        AuthSection {
            token_ttl_secs: 900,
            second_factor: true,
            passkey_rp_id: "localhost".into(),
            passkey_origin: String::new(),
        }
    }
}

/// How `[tls] mode` is spelt.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    /// A certificate generated for local use under the data directory.
    #[default]
    SelfSigned,
    /// `cert` and `key` name the operator's PEM files.
    Files,
    /// Plain HTTP/2, loopback only.
    Off,
}

/// `[tls]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSection {
    /// self-signed, files or off.
    pub mode: TlsMode,
    /// The certificate chain (PEM), for `mode = "files"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// Its private key (PEM), for `mode = "files"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
}

/// How `[log] format` is spelt.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// One human-readable line an event.
    #[default]
    Text,
    /// One JSON object an event, for a log collector.
    Json,
}

/// `[log]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// A `tracing` filter, e.g. `info` or `cohort_engine=debug,warn`.
    pub filter: String,
    /// text or json.
    pub format: LogFormat,
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            filter: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// Where a key's value came from, so an error names the right place.
#[derive(Clone, Debug)]
enum Source {
    File(PathBuf),
    Env(String),
}

/// The environment variable that overrides `section.key`.
pub fn env_name(section: &str, key: &str) -> String {
    format!("COHORT_{}_{}", section, key).to_uppercase()
}

impl Config {
    /// The file (if any), then the environment `env` over it. `file` is
    /// `Some` when the operator named it, and must then exist; otherwise
    /// `fallback` is read if it exists.
    pub fn load(
        file: Option<&Path>,
        fallback: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config> {
        // A named file must exist; the fallback is read only if it does.
        let path = file.or_else(|| fallback.exists().then_some(fallback));
        let mut table: toml::Table = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| Error::io("reading", p, e))?;
                toml::from_str(&text)
                    .map_err(|e| Error::Invalid(format!("{}: {e}", p.display())))?
            }
            None => toml::Table::new(),
        };
        let mut sources: HashMap<String, Source> = HashMap::new();
        if let Some(p) = path {
            for (section, value) in &table {
                if let Some(keys) = value.as_table() {
                    for key in keys.keys() {
                        sources.insert(format!("{section}.{key}"), Source::File(p.to_path_buf()));
                    }
                }
            }
        }
        let defaults = toml::Table::try_from(Config::default()).expect("the defaults serialize");
        for (section, key) in KEYS {
            let name = env_name(section, key);
            let Some(raw) = env(&name) else { continue };
            let kind = defaults
                .get(*section)
                .and_then(|s| s.get(*key))
                .map(toml::Value::type_str);
            let value = match kind {
                Some("integer") => raw
                    .trim()
                    .parse::<i64>()
                    .map(toml::Value::Integer)
                    .map_err(|_| Error::Invalid(format!("{name}=`{raw}` is not a whole number")))?,
                Some("boolean") => match raw.trim() {
                    "true" | "1" | "yes" | "on" => toml::Value::Boolean(true),
                    "false" | "0" | "no" | "off" => toml::Value::Boolean(false),
                    _ => {
                        return Err(Error::Invalid(format!(
                            "{name}=`{raw}` is not true or false"
                        )));
                    }
                },
                _ => toml::Value::String(raw),
            };
            let entry = table
                .entry(section.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            let Some(entry) = entry.as_table_mut() else {
                return Err(Error::Invalid(format!(
                    "{}: `{section}` must be a [section]",
                    path.map_or("the configuration".into(), |p| p.display().to_string())
                )));
            };
            entry.insert(key.to_string(), value);
            sources.insert(format!("{section}.{key}"), Source::Env(name));
        }
        let config: Config =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                let at = e.path().to_string();
                let place = match sources.get(&at) {
                    Some(Source::Env(name)) => format!("{name} (the environment)"),
                    Some(Source::File(p)) => format!("{}: {at}", p.display()),
                    None => match path {
                        Some(p) => format!("{}: {at}", p.display()),
                        None => at.clone(),
                    },
                };
                Error::Invalid(format!("{place}: {}", e.inner()))
            })?;
        config.check()?;
        Ok(config)
    }

    /// What serde cannot say: keys that only make sense together.
    fn check(&self) -> Result<()> {
        if let Some(keys) = &self.keys {
            keys.check()?;
        }
        self.engine.check()?;
        let t = &self.tls;
        match t.mode {
            TlsMode::Files if t.cert.is_none() || t.key.is_none() => Err(Error::Invalid(
                "[tls] mode = \"files\" needs both `cert` and `key` (COHORT_TLS_CERT, COHORT_TLS_KEY)"
                    .into(),
            )),
            TlsMode::SelfSigned | TlsMode::Off if t.cert.is_some() || t.key.is_some() => {
                Err(Error::Invalid(format!(
                    "[tls] `cert` and `key` are used only with mode = \"files\", not {:?}",
                    t.mode
                )))
            }
            _ if self.server.max_request_bytes < 1024 => Err(Error::Invalid(format!(
                "[server] max_request_bytes = {} is too small for a handshake (at least 1024)",
                self.server.max_request_bytes
            ))),
            _ if self.auth.token_ttl_secs == 0 => Err(Error::Invalid(
                "[auth] token_ttl_secs must be at least 1".into(),
            )),
            _ => Ok(()),
        }
    }

    /// The TLS setting the server takes.
    pub fn tls(&self) -> Tls {
        match (self.tls.mode, &self.tls.cert, &self.tls.key) {
            (TlsMode::Files, Some(cert), Some(key)) => Tls::Files {
                cert: cert.clone(),
                key: key.clone(),
            },
            (TlsMode::Off, ..) => Tls::Off,
            _ => Tls::SelfSigned,
        }
    }

    /// The configuration as the TOML file that would give it.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("the configuration serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cohort.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    fn load_text(text: &str, env: &[(&str, &str)]) -> Result<Config> {
        let (_dir, path) = write(text);
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load(Some(&path), Path::new("/nonexistent"), |k| {
            env.get(k).cloned()
        })
    }

    #[test]
    fn keys_list_every_key_of_the_file() {
        // A configuration with every optional key set: its keys are KEYS,
        // so no key lacks its environment variable.
        let mut full = Config {
            keys: Some(KeysConfig {
                store: cohort_engine::keys::config::StoreKind::Pkcs11,
                module: Some("/m.so".into()),
                token_label: Some("t".into()),
                kek_label: Some("k".into()),
                pin_file: Some("/pin".into()),
            }),
            ..Config::default()
        };
        full.tls.cert = Some("c.pem".into());
        full.engine.scheduler = Some("http://scheduler:50050".into());
        full.tls.key = Some("k.pem".into());
        let table = toml::Table::try_from(full).unwrap();
        let mut found: Vec<(String, String)> = table
            .iter()
            .flat_map(|(s, v)| {
                v.as_table()
                    .unwrap()
                    .keys()
                    .map(move |k| (s.clone(), k.clone()))
            })
            .collect();
        let mut listed: Vec<(String, String)> = KEYS
            .iter()
            .map(|(s, k)| (s.to_string(), k.to_string()))
            .collect();
        found.sort();
        listed.sort();
        assert_eq!(found, listed);
    }

    #[test]
    fn no_file_gives_the_defaults() {
        let c = Config::load(None, Path::new("/nonexistent/cohort.toml"), no_env).unwrap();
        assert_eq!(c, Config::default());
        assert!(c.auth.second_factor);
        assert!(matches!(c.tls(), Tls::SelfSigned));
    }

    #[test]
    fn a_named_file_must_exist() {
        let e = Config::load(
            Some(Path::new("/nonexistent/x.toml")),
            Path::new("/n"),
            no_env,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("/nonexistent/x.toml"), "{e}");
    }

    #[test]
    fn the_environment_overrides_the_file_and_the_file_the_defaults() {
        let text = "[server]\nlisten = \"127.0.0.1:7000\"\nshutdown_grace_secs = 5\n[auth]\ntoken_ttl_secs = 60\n";
        let c = load_text(text, &[]).unwrap();
        assert_eq!(c.server.listen.port(), 7000);
        assert_eq!(c.server.shutdown_grace_secs, 5);
        assert_eq!(c.auth.token_ttl_secs, 60);
        assert_eq!(
            c.server.max_request_bytes,
            1 << 20,
            "unset keys keep defaults"
        );
        let c = load_text(
            text,
            &[
                ("COHORT_SERVER_LISTEN", "127.0.0.1:7001"),
                ("COHORT_AUTH_TOKEN_TTL_SECS", "120"),
                ("COHORT_AUTH_SECOND_FACTOR", "false"),
                ("COHORT_TLS_MODE", "off"),
                ("COHORT_LOG_FORMAT", "json"),
            ],
        )
        .unwrap();
        assert_eq!(c.server.listen.port(), 7001);
        assert_eq!(c.server.shutdown_grace_secs, 5);
        assert_eq!(c.auth.token_ttl_secs, 120);
        assert!(!c.auth.second_factor);
        assert!(matches!(c.tls(), Tls::Off));
        assert_eq!(c.log.format, LogFormat::Json);
    }

    #[test]
    fn a_bad_value_names_where_it_came_from() {
        let e = load_text("[server]\nlisten = \"nowhere\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("cohort.toml: server.listen"), "{e}");
        let e = load_text("", &[("COHORT_SERVER_LISTEN", "nowhere")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("COHORT_SERVER_LISTEN (the environment)"), "{e}");
        let e = load_text("", &[("COHORT_AUTH_TOKEN_TTL_SECS", "soon")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("COHORT_AUTH_TOKEN_TTL_SECS=`soon` is not a whole number"),
            "{e}"
        );
        let e = load_text("", &[("COHORT_AUTH_SECOND_FACTOR", "maybe")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not true or false"), "{e}");
        let e = load_text("[tls]\nmode = \"sometimes\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("tls.mode") && e.contains("sometimes"), "{e}");
    }

    #[test]
    fn unknown_keys_and_sections_are_refused() {
        let e = load_text("[tls]\nmdoe = \"off\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("mdoe"), "{e}");
        let e = load_text("[sever]\nlisten = \"127.0.0.1:1\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("sever"), "{e}");
    }

    #[test]
    fn tls_files_need_both_paths_and_only_with_files() {
        let e = load_text("[tls]\nmode = \"files\"\ncert = \"c.pem\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs both `cert` and `key`"), "{e}");
        let e = load_text("[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("only with mode = \"files\""), "{e}");
        let c = load_text(
            "[tls]\nmode = \"files\"\ncert = \"c.pem\"\nkey = \"k.pem\"\n",
            &[],
        )
        .unwrap();
        assert!(matches!(c.tls(), Tls::Files { .. }));
    }

    #[test]
    fn keys_select_an_hsm_and_never_take_a_pin() {
        let c = load_text(
            "[keys]\nstore = \"pkcs11\"\nmodule = \"/usr/lib/softhsm/libsofthsm2.so\"\n",
            &[("COHORT_KEYS_TOKEN_LABEL", "cohort")],
        )
        .unwrap();
        let keys = c.keys.unwrap();
        assert_eq!(keys.token_label.as_deref(), Some("cohort"));
        let e = load_text("[keys]\nstore = \"pkcs11\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs `module`"), "{e}");
        let e = load_text("[keys]\npin = \"1234\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("pin"), "an unknown key: {e}");
        assert_eq!(
            load_text("", &[]).unwrap().keys,
            None,
            "absent: the data directory's"
        );
    }

    #[test]
    fn engine_names_a_cluster_only_with_its_scheduler() {
        let c = load_text("", &[]).unwrap();
        assert_eq!(
            c.engine.kind,
            EngineKind::Local,
            "the local engine by default"
        );
        let c = load_text(
            "[engine]\nkind = \"ballista\"\nscheduler = \"http://10.0.0.5:50050\"\n",
            &[("COHORT_ENGINE_PARTITIONS", "8")],
        )
        .unwrap();
        assert_eq!(c.engine.kind, EngineKind::Ballista);
        assert_eq!(c.engine.scheduler.as_deref(), Some("http://10.0.0.5:50050"));
        assert_eq!(c.engine.partitions, 8);
        let c = load_text(
            "",
            &[
                ("COHORT_ENGINE_KIND", "ballista"),
                ("COHORT_ENGINE_SCHEDULER", "df://s:50050"),
            ],
        )
        .unwrap();
        assert_eq!(c.engine.scheduler.as_deref(), Some("df://s:50050"));
        let e = load_text("[engine]\nkind = \"ballista\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs `scheduler`"), "{e}");
        let e = load_text("[engine]\nscheduler = \"http://s:1\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("only with kind = \"ballista\""), "{e}");
        let e = load_text("[engine]\nkind = \"spark\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("engine.kind") && e.contains("spark"), "{e}");
        let e = load_text(
            "[engine]\nkind = \"ballista\"\nscheduler = \"http://s:1\"\npartitions = 0\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("partitions must be at least 1"), "{e}");
    }

    #[test]
    fn the_printed_configuration_reads_back_the_same() {
        let c = load_text("", &[("COHORT_SERVER_SHUTDOWN_GRACE_SECS", "7")]).unwrap();
        let again = load_text(&c.to_toml(), &[]).unwrap();
        assert_eq!(c, again);
    }
}
