//! The agent's TOML config (`/etc/wardnet/agent.toml`), with `WARDNET_*`
//! environment overrides. Every key is documented in `config/agent.toml`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Exit code for a usage or configuration error (sysexits EX_USAGE).
pub const EXIT_USAGE: i32 = 64;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {file}: {source}")]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {file}: {message}")]
    Syntax { file: PathBuf, message: String },
    #[error("config file {file}: key `{key}`: {message}")]
    Key {
        file: PathBuf,
        key: String,
        message: String,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default = "default_state_dir")]
    state_dir: PathBuf,
    #[serde(default = "default_interface")]
    interface: String,
    #[serde(default = "default_metrics")]
    metrics_listen: String,
    #[serde(default)]
    enable_ip_forwarding: bool,
    #[serde(default = "default_uapi_dir")]
    uapi_dir: PathBuf,
    #[serde(default)]
    controller: RawController,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawController {
    url: Option<String>,
    ca_cert: Option<PathBuf>,
    #[serde(default)]
    allow_plain_http: bool,
    long_poll_secs: Option<u64>,
}

fn default_state_dir() -> PathBuf {
    "/var/lib/wardnet".into()
}
fn default_interface() -> String {
    "wardnet0".into()
}
fn default_metrics() -> String {
    "127.0.0.1:9586".into()
}
fn default_uapi_dir() -> PathBuf {
    "/var/run/wireguard".into()
}

#[derive(Debug, Clone)]
pub struct Config {
    pub state_dir: PathBuf,
    pub interface: String,
    pub metrics_listen: SocketAddr,
    pub enable_ip_forwarding: bool,
    /// Where the `wg`-compatible control socket goes.
    pub uapi_dir: PathBuf,
    /// Overrides the controller URL stored at enrolment.
    pub controller_url: Option<String>,
    pub ca_cert: Option<PathBuf>,
    pub allow_plain_http: bool,
    pub long_poll_secs: u64,
}

pub const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("WARDNET_STATE_DIR", "state_dir"),
    ("WARDNET_INTERFACE", "interface"),
    ("WARDNET_METRICS_LISTEN", "metrics_listen"),
    ("WARDNET_ENABLE_IP_FORWARDING", "enable_ip_forwarding"),
    ("WARDNET_UAPI_DIR", "uapi_dir"),
    ("WARDNET_CONTROLLER_URL", "controller.url"),
    ("WARDNET_CA_CERT", "controller.ca_cert"),
    ("WARDNET_ALLOW_PLAIN_HTTP", "controller.allow_plain_http"),
];

impl Config {
    /// Load the file; a missing file at the default path means defaults.
    pub fn load(
        file: &Path,
        required: bool,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => String::new(),
            Err(source) => {
                return Err(ConfigError::Read {
                    file: file.to_owned(),
                    source,
                })
            }
        };
        Self::parse(file, &text, env)
    }

    pub fn parse(
        file: &Path,
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            file: file.to_owned(),
            message: e.to_string(),
        })?;
        for (var, key) in ENV_OVERRIDES {
            if let Some(v) = env(var) {
                set_key(&mut table, key, &v);
            }
        }
        let raw: Raw =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                ConfigError::Key {
                    file: file.to_owned(),
                    key: e.path().to_string(),
                    message: e.inner().to_string(),
                }
            })?;
        let err = |key: &str, message: String| ConfigError::Key {
            file: file.to_owned(),
            key: key.to_owned(),
            message,
        };
        if raw.interface.is_empty()
            || raw.interface.len() > 15
            || raw.interface.contains(['/', ' '])
        {
            return Err(err(
                "interface",
                format!(
                    "expected an interface name of 1 to 15 characters, got {:?}",
                    raw.interface
                ),
            ));
        }
        let metrics_listen = raw.metrics_listen.parse().map_err(|_| {
            err(
                "metrics_listen",
                format!(
                    "expected IP:PORT such as 127.0.0.1:9586, got {:?}",
                    raw.metrics_listen
                ),
            )
        })?;
        if let Some(url) = &raw.controller.url {
            check_url(url, raw.controller.allow_plain_http)
                .map_err(|m| err("controller.url", m))?;
        }
        let long_poll_secs = raw.controller.long_poll_secs.unwrap_or(55);
        if !(1..=3600).contains(&long_poll_secs) {
            return Err(err(
                "controller.long_poll_secs",
                "expected 1 to 3600 seconds".into(),
            ));
        }
        Ok(Config {
            state_dir: raw.state_dir,
            interface: raw.interface,
            metrics_listen,
            enable_ip_forwarding: raw.enable_ip_forwarding,
            uapi_dir: raw.uapi_dir,
            controller_url: raw.controller.url,
            ca_cert: raw.controller.ca_cert,
            allow_plain_http: raw.controller.allow_plain_http,
            long_poll_secs,
        })
    }
}

/// A controller URL must be https unless plain HTTP is explicitly allowed.
pub fn check_url(url: &str, allow_plain_http: bool) -> Result<(), String> {
    if url.starts_with("https://") {
        Ok(())
    } else if url.starts_with("http://") {
        if allow_plain_http {
            Ok(())
        } else {
            Err(format!(
                "{url} is plain HTTP: the agent refuses it unless `controller.allow_plain_http = true` \
                 (or --allow-plain-http) says so; use https://"
            ))
        }
    } else {
        Err(format!("{url} is not a URL: expected https://HOST:PORT"))
    }
}

fn set_key(table: &mut toml::Table, key: &str, raw: &str) {
    let value = if let Ok(b) = raw.parse::<bool>() {
        toml::Value::Boolean(b)
    } else if let Ok(i) = raw.parse::<i64>() {
        toml::Value::Integer(i)
    } else {
        toml::Value::String(raw.to_owned())
    };
    let mut parts: Vec<&str> = key.split('.').collect();
    let Some(last) = parts.pop() else { return };
    let mut cur = table;
    for p in parts {
        let entry = cur
            .entry(p.to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let toml::Value::Table(t) = entry else { return };
        cur = t;
    }
    cur.insert(last.to_owned(), value);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn defaults_and_example() {
        let c = Config::parse(Path::new("a.toml"), "", none).expect("defaults");
        assert_eq!(c.interface, "wardnet0");
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/wardnet"));
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/agent.toml");
        Config::load(&example, true, none).expect("the shipped example is valid");
    }

    #[test]
    fn errors_name_the_key() {
        let e = Config::parse(
            Path::new("a.toml"),
            "interface = \"much-too-long-name0\"",
            none,
        )
        .expect_err("long");
        assert!(e.to_string().contains("a.toml: key `interface`"), "{e}");
        let e = Config::parse(
            Path::new("a.toml"),
            "[controller]\nurl = \"http://x:1\"",
            none,
        )
        .expect_err("plain");
        assert!(e.to_string().contains("allow_plain_http"), "{e}");
        let e = Config::parse(Path::new("a.toml"), "intrface = \"x\"", none).expect_err("unknown");
        assert!(e.to_string().contains("intrface"), "{e}");
    }

    #[test]
    fn env_overrides() {
        let env = |k: &str| (k == "WARDNET_INTERFACE").then(|| "wn-test".to_string());
        assert_eq!(
            Config::parse(Path::new("a.toml"), "", env)
                .expect("ok")
                .interface,
            "wn-test"
        );
    }
}
