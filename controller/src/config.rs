//! The controller's TOML config, with `WARDNET_*` environment overrides.
//!
//! Every key is documented in `config/controller.toml`. A bad config names
//! the file, the key and what was expected; `main` exits with code 64.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ipnet::{IpNet, Ipv6Net};
use serde::Deserialize;

use crate::model::NetworkSettings;

pub use wardnet_service::config::{ConfigError, EXIT_USAGE};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default = "default_listen")]
    listen: String,
    #[serde(default = "default_data_dir")]
    data_dir: PathBuf,
    #[serde(default)]
    plain_http: bool,
    #[serde(default)]
    log_format: Option<String>,
    #[serde(default)]
    tls: RawTls,
    #[serde(default)]
    database: RawDatabase,
    network: RawNetwork,
    #[serde(default)]
    enrolment: RawEnrolment,
    #[serde(default)]
    long_poll: RawLongPoll,
    #[serde(default)]
    http: RawHttp,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    #[serde(default = "default_header_read")]
    header_read_timeout_secs: u64,
    #[serde(default = "default_idle")]
    idle_timeout_secs: u64,
    #[serde(default = "default_tls_handshake")]
    tls_handshake_timeout_secs: u64,
}

impl Default for RawHttp {
    fn default() -> Self {
        Self {
            header_read_timeout_secs: default_header_read(),
            idle_timeout_secs: default_idle(),
            tls_handshake_timeout_secs: default_tls_handshake(),
        }
    }
}

fn default_header_read() -> u64 {
    crate::api::Limits::default().header_read.as_secs()
}
fn default_idle() -> u64 {
    crate::api::Limits::default().idle.as_secs()
}
fn default_tls_handshake() -> u64 {
    crate::api::Limits::default().tls_handshake.as_secs()
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDatabase {
    sqlite_path: Option<PathBuf>,
    url: Option<String>,
    password_file: Option<PathBuf>,
    pool_size: Option<usize>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    overlay_ipv4: String,
    overlay_ipv6: Option<String>,
    #[serde(default = "default_region_len_v4")]
    region_prefix_len_v4: u8,
    #[serde(default = "default_region_len_v6")]
    region_prefix_len_v6: u8,
    #[serde(default)]
    routed_prefixes: Vec<String>,
    #[serde(default = "default_listen_port")]
    listen_port: u16,
    #[serde(default = "default_mtu")]
    mtu: u16,
    #[serde(default = "default_keepalive")]
    persistent_keepalive: u16,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnrolment {
    #[serde(default = "default_token_lifetime")]
    token_lifetime_secs: u64,
}

impl Default for RawEnrolment {
    fn default() -> Self {
        Self {
            token_lifetime_secs: default_token_lifetime(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLongPoll {
    #[serde(default = "default_long_poll")]
    timeout_secs: u64,
    #[serde(default = "default_report_persist")]
    report_persist_secs: u64,
}

impl Default for RawLongPoll {
    fn default() -> Self {
        Self {
            timeout_secs: default_long_poll(),
            report_persist_secs: default_report_persist(),
        }
    }
}

fn default_listen() -> String {
    "127.0.0.1:8443".into()
}
fn default_data_dir() -> PathBuf {
    "/var/lib/wardnet-controller".into()
}
fn default_region_len_v4() -> u8 {
    20
}
fn default_region_len_v6() -> u8 {
    64
}
fn default_listen_port() -> u16 {
    51820
}
fn default_mtu() -> u16 {
    1420
}
fn default_keepalive() -> u16 {
    25
}
fn default_token_lifetime() -> u64 {
    24 * 3600
}
fn default_long_poll() -> u64 {
    300
}
fn default_report_persist() -> u64 {
    30
}

/// How the API is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    Tls {
        cert: PathBuf,
        key: PathBuf,
    },
    /// Only when the config says `plain_http = true` (local use, tests).
    PlainHttp,
}

/// The validated controller config.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub transport: Transport,
    /// The SQLite file (used unless `postgres` is set).
    pub sqlite_path: PathBuf,
    /// `[database] url`: a PostgreSQL database shared by replicas.
    pub postgres: Option<PostgresConfig>,
    pub network: NetworkSettings,
    pub token_lifetime_secs: u64,
    pub long_poll_timeout_secs: u64,
    /// How often agents' reports are written to the database (a crash
    /// loses at most this many seconds of last-seen and health).
    pub report_persist_secs: u64,
    /// How logs are written to stderr (`log_format`).
    pub log_format: crate::logging::LogFormat,
    /// Time limits on idle and slow clients (`[http]`).
    pub limits: crate::api::Limits,
}

/// `[database]` for PostgreSQL.
#[derive(Debug, Clone)]
pub struct PostgresConfig {
    /// A `postgres://` URL or libpq key=value string, without a password.
    pub url: String,
    /// Where the password is read from, if the server asks for one.
    pub password_file: Option<PathBuf>,
    pub pool_size: usize,
}

/// Environment variables that override config keys, and the key each sets.
pub const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("WARDNET_LISTEN", "listen"),
    ("WARDNET_DATA_DIR", "data_dir"),
    ("WARDNET_PLAIN_HTTP", "plain_http"),
    ("WARDNET_LOG_FORMAT", "log_format"),
    ("WARDNET_TLS_CERT", "tls.cert"),
    ("WARDNET_TLS_KEY", "tls.key"),
    ("WARDNET_SQLITE_PATH", "database.sqlite_path"),
    ("WARDNET_DATABASE_URL", "database.url"),
    ("WARDNET_DATABASE_PASSWORD_FILE", "database.password_file"),
    ("WARDNET_DATABASE_POOL_SIZE", "database.pool_size"),
    ("WARDNET_OVERLAY_IPV4", "network.overlay_ipv4"),
    ("WARDNET_OVERLAY_IPV6", "network.overlay_ipv6"),
    ("WARDNET_LONG_POLL_TIMEOUT_SECS", "long_poll.timeout_secs"),
    (
        "WARDNET_LONG_POLL_REPORT_PERSIST_SECS",
        "long_poll.report_persist_secs",
    ),
    (
        "WARDNET_HTTP_HEADER_READ_TIMEOUT_SECS",
        "http.header_read_timeout_secs",
    ),
    ("WARDNET_HTTP_IDLE_TIMEOUT_SECS", "http.idle_timeout_secs"),
    (
        "WARDNET_HTTP_TLS_HANDSHAKE_TIMEOUT_SECS",
        "http.tls_handshake_timeout_secs",
    ),
    (
        "WARDNET_TOKEN_LIFETIME_SECS",
        "enrolment.token_lifetime_secs",
    ),
];

impl Config {
    /// The error for a certificate or key that cannot be used, saying where
    /// the path came from and how to make a pair.
    pub fn tls_error(&self, file: &Path, e: &crate::api::TlsFileError) -> ConfigError {
        use std::error::Error as _;
        let mut message = e.to_string();
        if let Some(source) = e.source() {
            message.push_str(&format!(": {source}"));
        }
        let dir = match &self.transport {
            Transport::Tls { cert, .. } => cert
                .parent()
                .map_or_else(|| ".".to_owned(), |d| d.display().to_string()),
            Transport::PlainHttp => ".".to_owned(),
        };
        ConfigError::File {
            message: format!(
                "{message}\n  (keys tls.cert and tls.key of {file}, or WARDNET_TLS_CERT and WARDNET_TLS_KEY)\n  \
                 to make a private CA and a certificate there: wardnet-controller ca init --dir {dir} --host <name agents use>\n  \
                 for a local test without TLS: set plain_http = true",
                file = file.display()
            ),
        }
    }

    /// Read the file, apply `WARDNET_*` overrides from `env`, validate.
    pub fn load(file: &Path, env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
            file: file.to_owned(),
            source,
        })?;
        Self::parse(file, &text, env)
    }

    pub fn parse(
        file: &Path,
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut value: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            file: file.to_owned(),
            message: e.to_string(),
        })?;
        let applied = wardnet_service::config::apply_env(&mut value, ENV_OVERRIDES, env);
        let raw: Raw =
            serde_path_to_error::deserialize(toml::Value::Table(value)).map_err(|e| {
                let (key, message) = wardnet_service::config::error_key(
                    &e.path().to_string(),
                    &e.inner().to_string(),
                );
                ConfigError::Key {
                    file: file.to_owned(),
                    key,
                    message,
                }
                .blame_env(&applied)
            })?;
        validate(file, raw).map_err(|e| e.blame_env(&applied))
    }
}

fn validate(file: &Path, raw: Raw) -> Result<Config, ConfigError> {
    let err = |key: &str, message: String| ConfigError::Key {
        file: file.to_owned(),
        key: key.to_owned(),
        message,
    };
    let listen: SocketAddr = raw.listen.parse().map_err(|_| {
        err(
            "listen",
            format!(
                "expected IP:PORT such as 127.0.0.1:8443, got {:?}",
                raw.listen
            ),
        )
    })?;
    let transport = if raw.plain_http {
        Transport::PlainHttp
    } else {
        match (raw.tls.cert, raw.tls.key) {
            (Some(cert), Some(key)) => Transport::Tls { cert, key },
            (None, _) => {
                return Err(err(
                    "tls.cert",
                    "expected a PEM certificate path (TLS is on by default; set `plain_http = true` only for local testing)".into(),
                ))
            }
            (_, None) => return Err(err("tls.key", "expected a PEM private key path".into())),
        }
    };
    let prefix = |key: &str, s: &str| wardnet_common::net::parse_prefix(s).map_err(|m| err(key, m));
    let overlay_v4 = match prefix("network.overlay_ipv4", &raw.network.overlay_ipv4)? {
        IpNet::V4(n) => n,
        IpNet::V6(_) => {
            return Err(err(
                "network.overlay_ipv4",
                "expected an IPv4 prefix".into(),
            ))
        }
    };
    let overlay_v6: Option<Ipv6Net> = match raw.network.overlay_ipv6.as_deref() {
        None => None,
        Some(s) => match prefix("network.overlay_ipv6", s)? {
            IpNet::V6(n) => Some(n),
            IpNet::V4(_) => {
                return Err(err(
                    "network.overlay_ipv6",
                    "expected an IPv6 prefix".into(),
                ))
            }
        },
    };
    let len4 = raw.network.region_prefix_len_v4;
    if len4 < overlay_v4.prefix_len() || len4 > 30 {
        return Err(err(
            "network.region_prefix_len_v4",
            format!(
                "expected a length between {} (the overlay's) and 30, got {len4}",
                overlay_v4.prefix_len()
            ),
        ));
    }
    let len6 = raw.network.region_prefix_len_v6;
    if let Some(v6) = overlay_v6 {
        if len6 < v6.prefix_len() || len6 > 120 {
            return Err(err(
                "network.region_prefix_len_v6",
                format!(
                    "expected a length between {} (the overlay's) and 120, got {len6}",
                    v6.prefix_len()
                ),
            ));
        }
    }
    let mut routed = BTreeSet::new();
    for (i, s) in raw.network.routed_prefixes.iter().enumerate() {
        let p = prefix(&format!("network.routed_prefixes[{i}]"), s)?;
        let overlay_clash = wardnet_common::net::overlaps(&p, &IpNet::V4(overlay_v4))
            || overlay_v6.is_some_and(|v6| wardnet_common::net::overlaps(&p, &IpNet::V6(v6)));
        if overlay_clash {
            return Err(err(
                &format!("network.routed_prefixes[{i}]"),
                format!("{p} overlaps the overlay prefix; routed prefixes are the site-LAN space outside the overlay"),
            ));
        }
        routed.insert(p);
    }
    if raw.network.listen_port == 0 {
        return Err(err(
            "network.listen_port",
            "expected a UDP port from 1 to 65535".into(),
        ));
    }
    if !(1280..=9000).contains(&raw.network.mtu) {
        return Err(err(
            "network.mtu",
            format!("expected 1280 to 9000, got {}", raw.network.mtu),
        ));
    }
    if raw.long_poll.timeout_secs == 0 || raw.long_poll.timeout_secs > 3600 {
        return Err(err(
            "long_poll.timeout_secs",
            "expected 1 to 3600 seconds".into(),
        ));
    }
    if raw.long_poll.report_persist_secs == 0 || raw.long_poll.report_persist_secs > 3600 {
        return Err(err(
            "long_poll.report_persist_secs",
            "expected 1 to 3600 seconds".into(),
        ));
    }
    for (key, v) in [
        (
            "http.header_read_timeout_secs",
            raw.http.header_read_timeout_secs,
        ),
        ("http.idle_timeout_secs", raw.http.idle_timeout_secs),
        (
            "http.tls_handshake_timeout_secs",
            raw.http.tls_handshake_timeout_secs,
        ),
    ] {
        if v == 0 || v > 3600 {
            return Err(err(key, format!("expected 1 to 3600 seconds, got {v}")));
        }
    }
    if raw.enrolment.token_lifetime_secs == 0 {
        return Err(err(
            "enrolment.token_lifetime_secs",
            "expected a positive number of seconds".into(),
        ));
    }
    let postgres = match raw.database.url {
        None => {
            for (key, set) in [
                (
                    "database.password_file",
                    raw.database.password_file.is_some(),
                ),
                ("database.pool_size", raw.database.pool_size.is_some()),
            ] {
                if set {
                    return Err(err(
                        key,
                        "only used with database.url (PostgreSQL); remove it or set database.url"
                            .into(),
                    ));
                }
            }
            None
        }
        Some(url) => {
            if raw.database.sqlite_path.is_some() {
                return Err(err(
                    "database.url",
                    "set either database.url (PostgreSQL) or database.sqlite_path, not both".into(),
                ));
            }
            let parsed: tokio_postgres::Config = url.parse().map_err(|e| {
                err(
                    "database.url",
                    format!("not a PostgreSQL URL or connection string ({e}); e.g. postgres://wardnet@db.example/wardnet"),
                )
            })?;
            if parsed.get_password().is_some() {
                return Err(err(
                    "database.url",
                    "holds a password; put the password in a file named by database.password_file \
                     (or a systemd credential) and take it out of the URL"
                        .into(),
                ));
            }
            let pool_size = raw.database.pool_size.unwrap_or(16);
            if !(2..=256).contains(&pool_size) {
                return Err(err(
                    "database.pool_size",
                    format!("expected 2 to 256 connections, got {pool_size}"),
                ));
            }
            Some(PostgresConfig {
                url,
                password_file: raw.database.password_file,
                pool_size,
            })
        }
    };
    let sqlite_path = raw
        .database
        .sqlite_path
        .unwrap_or_else(|| raw.data_dir.join("wardnet.db"));
    let log_format = raw
        .log_format
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(|m| err("log_format", m))?
        .unwrap_or_default();
    Ok(Config {
        log_format,
        listen,
        data_dir: raw.data_dir,
        transport,
        sqlite_path,
        postgres,
        network: NetworkSettings {
            overlay_v4,
            overlay_v6,
            region_prefix_len_v4: len4,
            region_prefix_len_v6: len6,
            routed_prefixes: routed,
            listen_port: raw.network.listen_port,
            mtu: raw.network.mtu,
            persistent_keepalive: raw.network.persistent_keepalive,
        },
        token_lifetime_secs: raw.enrolment.token_lifetime_secs,
        long_poll_timeout_secs: raw.long_poll.timeout_secs,
        report_persist_secs: raw.long_poll.report_persist_secs,
        limits: crate::api::Limits {
            tls_handshake: std::time::Duration::from_secs(raw.http.tls_handshake_timeout_secs),
            header_read: std::time::Duration::from_secs(raw.http.header_read_timeout_secs),
            idle: std::time::Duration::from_secs(raw.http.idle_timeout_secs),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        listen = "127.0.0.1:0"
        plain_http = true
        data_dir = "/tmp/x"
        [network]
        overlay_ipv4 = "100.64.0.0/10"
        overlay_ipv6 = "fd7a:6e65::/48"
        routed_prefixes = ["10.0.0.0/8"]
    "#;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn log_format_from_file_and_environment() {
        use crate::logging::LogFormat;
        let c = Config::parse(Path::new("c.toml"), GOOD, no_env).expect("good");
        assert_eq!(c.log_format, LogFormat::Auto);
        let env = |k: &str| (k == "WARDNET_LOG_FORMAT").then(|| "json".to_owned());
        let c = Config::parse(Path::new("c.toml"), GOOD, env).expect("env");
        assert_eq!(c.log_format, LogFormat::Json);
        let bad = format!("log_format = \"xml\"\n{GOOD}");
        let e = Config::parse(Path::new("c.toml"), &bad, no_env).expect_err("bad");
        assert!(e.to_string().contains("log_format"), "{e}");
    }

    #[test]
    fn example_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/controller.toml");
        let env =
            |k: &str| (k == "WARDNET_TLS_CERT" || k == "WARDNET_TLS_KEY").then(|| "/x".to_string());
        Config::load(&path, env).expect("the shipped example config is valid");
    }

    #[test]
    fn good_config_has_defaults() {
        let c = Config::parse(Path::new("c.toml"), GOOD, no_env).expect("valid");
        assert_eq!(c.transport, Transport::PlainHttp);
        assert_eq!(c.sqlite_path, PathBuf::from("/tmp/x/wardnet.db"));
        assert_eq!(c.network.region_prefix_len_v4, 20);
        assert_eq!(c.long_poll_timeout_secs, 300);
    }

    #[test]
    fn errors_name_file_and_key() {
        let bad = GOOD.replace("100.64.0.0/10", "100.64.0.1/10");
        let e = Config::parse(Path::new("c.toml"), &bad, no_env).expect_err("host bits");
        let s = e.to_string();
        assert!(
            s.contains("c.toml")
                && s.contains("network.overlay_ipv4")
                && s.contains("did you mean"),
            "{s}"
        );

        let bad = GOOD.replace("[network]", "[network]\nmttu = 1400");
        let s = Config::parse(Path::new("c.toml"), &bad, no_env)
            .expect_err("unknown")
            .to_string();
        assert!(s.contains("mttu"), "{s}");

        let bad = GOOD.replace("plain_http = true", "");
        let s = Config::parse(Path::new("c.toml"), &bad, no_env)
            .expect_err("no tls")
            .to_string();
        assert!(s.contains("tls.cert"), "{s}");

        let bad = GOOD.replace("[\"10.0.0.0/8\"]", "[\"100.64.0.0/16\"]");
        let s = Config::parse(Path::new("c.toml"), &bad, no_env)
            .expect_err("overlap")
            .to_string();
        assert!(s.contains("routed_prefixes[0]"), "{s}");
    }

    #[test]
    fn environment_overrides_keys_with_types() {
        let env = |k: &str| match k {
            "WARDNET_LISTEN" => Some("127.0.0.1:9999".to_string()),
            "WARDNET_LONG_POLL_TIMEOUT_SECS" => Some("5".to_string()),
            _ => None,
        };
        let c = Config::parse(Path::new("c.toml"), GOOD, env).expect("valid");
        assert_eq!(c.listen.port(), 9999);
        assert_eq!(c.long_poll_timeout_secs, 5);
    }
}
