//! The agent's TOML config (`/etc/wardnet/agent.toml`), with `WARDNET_*`
//! environment overrides. Every key is documented in `config/agent.toml`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use wardnet_service::config::{ConfigError, EXIT_USAGE};

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
    metrics_advertise: Option<String>,
    #[serde(default = "default_metrics_overlay_port")]
    metrics_overlay_port: u16,
    #[serde(default)]
    probe_interval_ms: Option<u64>,
    #[serde(default)]
    hub_probe_interval_ms: Option<u64>,
    #[serde(default)]
    failover_misses: Option<u32>,
    #[serde(default)]
    failback_hold_down_secs: Option<u64>,
    #[serde(default)]
    enable_ip_forwarding: bool,
    #[serde(default = "default_uapi_dir")]
    uapi_dir: PathBuf,
    #[serde(default)]
    log_format: Option<String>,
    #[serde(default)]
    controller: RawController,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawController {
    url: Option<String>,
    urls: Option<Vec<String>>,
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
fn default_metrics_overlay_port() -> u16 {
    9586
}
fn default_uapi_dir() -> PathBuf {
    "/var/run/wireguard".into()
}

#[derive(Debug, Clone)]
pub struct Config {
    pub state_dir: PathBuf,
    pub interface: String,
    pub metrics_listen: SocketAddr,
    /// The address the NOC's Prometheus scrapes (reported to the controller
    /// for its file_sd output); `None`: the overlay endpoint, if served.
    pub metrics_advertise: Option<SocketAddr>,
    /// Port of the metrics endpoint on the site's overlay address (0: none).
    pub metrics_overlay_port: u16,
    /// Time between two health probes to one peer.
    pub probe_interval: Duration,
    /// Time between two probes to the active hub of a failover group.
    pub hub_probe_interval: Duration,
    /// Probes in a row the active hub must miss before traffic moves.
    pub failover_misses: u32,
    /// How long a preferred hub must answer before traffic goes back.
    pub failback_hold_down: Duration,
    pub enable_ip_forwarding: bool,
    /// Where the `wg`-compatible control socket goes.
    pub uapi_dir: PathBuf,
    /// The controllers to use (`controller.url` or `controller.urls`);
    /// empty: the one recorded at enrolment.
    pub controller_urls: Vec<String>,
    pub ca_cert: Option<PathBuf>,
    pub allow_plain_http: bool,
    pub long_poll_secs: u64,
    /// How logs are written to stderr (`log_format`).
    pub log_format: crate::logging::LogFormat,
}

pub const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("WARDNET_STATE_DIR", "state_dir"),
    ("WARDNET_INTERFACE", "interface"),
    ("WARDNET_METRICS_LISTEN", "metrics_listen"),
    ("WARDNET_METRICS_ADVERTISE", "metrics_advertise"),
    ("WARDNET_METRICS_OVERLAY_PORT", "metrics_overlay_port"),
    ("WARDNET_PROBE_INTERVAL_MS", "probe_interval_ms"),
    ("WARDNET_HUB_PROBE_INTERVAL_MS", "hub_probe_interval_ms"),
    ("WARDNET_FAILOVER_MISSES", "failover_misses"),
    ("WARDNET_FAILBACK_HOLD_DOWN_SECS", "failback_hold_down_secs"),
    ("WARDNET_ENABLE_IP_FORWARDING", "enable_ip_forwarding"),
    ("WARDNET_UAPI_DIR", "uapi_dir"),
    ("WARDNET_LOG_FORMAT", "log_format"),
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
        let applied = wardnet_service::config::apply_env(&mut table, ENV_OVERRIDES, env);
        let raw: Raw =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
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
        Self::validate(file, raw).map_err(|e| e.blame_env(&applied))
    }

    fn validate(file: &Path, raw: Raw) -> Result<Self, ConfigError> {
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
        let metrics_advertise = raw
            .metrics_advertise
            .as_deref()
            .map(|a| {
                a.parse::<SocketAddr>().map_err(|_| {
                    err(
                        "metrics_advertise",
                        format!("expected IP:PORT such as 198.51.100.7:9586, got {a:?}"),
                    )
                })
            })
            .transpose()?;
        let probe_ms = raw.probe_interval_ms.unwrap_or(5000);
        if !(100..=3_600_000).contains(&probe_ms) {
            return Err(err(
                "probe_interval_ms",
                format!("expected 100 to 3600000 milliseconds, got {probe_ms}"),
            ));
        }
        let hub_probe_ms = raw.hub_probe_interval_ms.unwrap_or(250);
        if !(50..=10_000).contains(&hub_probe_ms) {
            return Err(err(
                "hub_probe_interval_ms",
                format!("expected 50 to 10000 milliseconds, got {hub_probe_ms}"),
            ));
        }
        let failover_misses = raw.failover_misses.unwrap_or(4);
        if !(1..=100).contains(&failover_misses) {
            return Err(err(
                "failover_misses",
                format!("expected 1 to 100 probes, got {failover_misses}"),
            ));
        }
        let hold_down = raw.failback_hold_down_secs.unwrap_or(30);
        if hold_down > 3600 {
            return Err(err(
                "failback_hold_down_secs",
                format!("expected 0 to 3600 seconds, got {hold_down}"),
            ));
        }
        let controller_urls = match (raw.controller.url, raw.controller.urls) {
            (Some(_), Some(_)) => {
                return Err(err(
                    "controller.urls",
                    "set either controller.url or controller.urls, not both".into(),
                ))
            }
            (Some(url), None) => {
                check_url(&url, raw.controller.allow_plain_http)
                    .map_err(|m| err("controller.url", m))?;
                vec![url]
            }
            (None, Some(urls)) => {
                if urls.is_empty() {
                    return Err(err(
                        "controller.urls",
                        "list at least one controller URL".into(),
                    ));
                }
                for url in &urls {
                    check_url(url, raw.controller.allow_plain_http)
                        .map_err(|m| err("controller.urls", m))?;
                }
                urls
            }
            (None, None) => Vec::new(),
        };
        let long_poll_secs = raw.controller.long_poll_secs.unwrap_or(290);
        if !(1..=3600).contains(&long_poll_secs) {
            return Err(err(
                "controller.long_poll_secs",
                "expected 1 to 3600 seconds".into(),
            ));
        }
        let log_format = raw
            .log_format
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(|m| err("log_format", m))?
            .unwrap_or_default();
        Ok(Config {
            state_dir: raw.state_dir,
            interface: raw.interface,
            metrics_listen,
            metrics_advertise,
            metrics_overlay_port: raw.metrics_overlay_port,
            probe_interval: Duration::from_millis(probe_ms),
            hub_probe_interval: Duration::from_millis(hub_probe_ms),
            failover_misses,
            failback_hold_down: Duration::from_secs(hold_down),
            enable_ip_forwarding: raw.enable_ip_forwarding,
            uapi_dir: raw.uapi_dir,
            controller_urls,
            ca_cert: raw.controller.ca_cert,
            allow_plain_http: raw.controller.allow_plain_http,
            long_poll_secs,
            log_format,
        })
    }
}

impl Config {
    /// The metrics address reported to the controller: `metrics_advertise`,
    /// else the overlay endpoint (`overlay`:`metrics_overlay_port`, scraped
    /// through the tunnels), else `metrics_listen` when another host can
    /// reach it (not loopback, not the unspecified address), else none.
    pub fn metrics_address(&self, overlay: Option<std::net::Ipv4Addr>) -> Option<String> {
        self.metrics_advertise
            .or_else(|| self.metrics_overlay(overlay))
            .or_else(|| {
                let ip = self.metrics_listen.ip();
                (!ip.is_loopback() && !ip.is_unspecified()).then_some(self.metrics_listen)
            })
            .map(|a| a.to_string())
    }

    /// Where the overlay metrics endpoint listens, if it is on.
    pub fn metrics_overlay(&self, overlay: Option<std::net::Ipv4Addr>) -> Option<SocketAddr> {
        let ip = overlay.filter(|_| self.metrics_overlay_port != 0)?;
        Some(SocketAddr::from((ip, self.metrics_overlay_port)))
    }
}

impl Config {
    /// A reload (SIGHUP, `systemctl reload`) applies `new` while the agent
    /// runs, except the keys that shape what was set up at start (the
    /// interface, its sockets and files, the log writer). Returns `new` with
    /// those keys kept as they run, and the names of the ones that differ:
    /// they take effect at the next restart.
    pub fn reloaded(&self, mut new: Config) -> (Config, Vec<&'static str>) {
        let mut pending = Vec::new();
        if new.state_dir != self.state_dir {
            pending.push("state_dir");
            new.state_dir.clone_from(&self.state_dir);
        }
        if new.interface != self.interface {
            pending.push("interface");
            new.interface.clone_from(&self.interface);
        }
        if new.metrics_listen != self.metrics_listen {
            pending.push("metrics_listen");
            new.metrics_listen = self.metrics_listen;
        }
        if new.metrics_overlay_port != self.metrics_overlay_port {
            pending.push("metrics_overlay_port");
            new.metrics_overlay_port = self.metrics_overlay_port;
        }
        if new.uapi_dir != self.uapi_dir {
            pending.push("uapi_dir");
            new.uapi_dir.clone_from(&self.uapi_dir);
        }
        if new.log_format != self.log_format {
            pending.push("log_format");
            new.log_format = self.log_format;
        }
        (new, pending)
    }

    /// The keys that make up the controller client.
    pub fn controller_settings(&self) -> (&[String], Option<&Path>, bool, u64) {
        (
            &self.controller_urls,
            self.ca_cert.as_deref(),
            self.allow_plain_http,
            self.long_poll_secs,
        )
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
    fn failover_keys_default_parse_and_say_what_is_wrong() {
        let c = Config::parse(Path::new("a.toml"), "", none).expect("defaults");
        assert_eq!(c.hub_probe_interval, Duration::from_millis(250));
        assert_eq!(c.failover_misses, 4);
        assert_eq!(c.failback_hold_down, Duration::from_secs(30));
        let text = "hub_probe_interval_ms = 100\nfailover_misses = 3\nfailback_hold_down_secs = 0";
        let c = Config::parse(Path::new("a.toml"), text, none).expect("valid");
        assert_eq!(c.hub_probe_interval, Duration::from_millis(100));
        assert_eq!(c.failover_misses, 3);
        assert_eq!(c.failback_hold_down, Duration::ZERO);
        for (text, key) in [
            ("hub_probe_interval_ms = 10", "hub_probe_interval_ms"),
            ("failover_misses = 0", "failover_misses"),
            ("failback_hold_down_secs = 7200", "failback_hold_down_secs"),
        ] {
            let e = Config::parse(Path::new("a.toml"), text, none).expect_err(text);
            assert!(e.to_string().contains(&format!("key `{key}`")), "{e}");
        }
    }

    #[test]
    fn a_reload_applies_live_keys_and_defers_the_rest() {
        let old = Config::parse(Path::new("a.toml"), "", none).expect("defaults");
        let text = r#"
interface = "wn1"
metrics_listen = "127.0.0.1:9999"
probe_interval_ms = 1000
enable_ip_forwarding = true
[controller]
url = "https://controller.example:9443"
"#;
        let new = Config::parse(Path::new("a.toml"), text, none).expect("valid");
        let (merged, pending) = old.reloaded(new);
        assert_eq!(pending, ["interface", "metrics_listen"]);
        assert_eq!(merged.interface, "wardnet0", "kept until a restart");
        assert_eq!(merged.metrics_listen, old.metrics_listen);
        assert_eq!(merged.probe_interval, Duration::from_millis(1000));
        assert!(merged.enable_ip_forwarding);
        assert_ne!(merged.controller_settings(), old.controller_settings());

        let (same, pending) = old.reloaded(old.clone());
        assert!(pending.is_empty());
        assert_eq!(same.controller_settings(), old.controller_settings());
    }

    #[test]
    fn log_format_from_file_and_environment() {
        use crate::logging::LogFormat;
        let c = Config::parse(Path::new("a.toml"), "", none).expect("defaults");
        assert_eq!(c.log_format, LogFormat::Auto);
        let c = Config::parse(Path::new("a.toml"), "log_format = \"json\"", none).expect("json");
        assert_eq!(c.log_format, LogFormat::Json);
        let env = |k: &str| (k == "WARDNET_LOG_FORMAT").then(|| "human".to_owned());
        let c = Config::parse(Path::new("a.toml"), "log_format = \"json\"", env).expect("env");
        assert_eq!(c.log_format, LogFormat::Human);
        let e = Config::parse(Path::new("a.toml"), "log_format = \"xml\"", none)
            .expect_err("bad format");
        assert!(e.to_string().contains("log_format"), "{e}");
    }

    #[test]
    fn one_url_or_a_list_of_controllers() {
        let parse = |t: &str| Config::parse(Path::new("a.toml"), t, none);
        let c = parse("[controller]\nurl = \"https://a.example:8443\"").expect("one");
        assert_eq!(c.controller_urls, ["https://a.example:8443"]);
        let c =
            parse("[controller]\nurls = [\"https://a.example:8443\", \"https://b.example:8443\"]")
                .expect("list");
        assert_eq!(
            c.controller_urls,
            ["https://a.example:8443", "https://b.example:8443"]
        );
        assert!(parse("").expect("none").controller_urls.is_empty());

        for (text, says) in [
            (
                "[controller]\nurl = \"https://a.example:8443\"\nurls = [\"https://b.example:8443\"]",
                "not both",
            ),
            ("[controller]\nurls = []", "at least one"),
            (
                "[controller]\nurls = [\"https://a.example:8443\", \"http://b.example:8443\"]",
                "http://b.example:8443 is plain HTTP",
            ),
        ] {
            let e = parse(text).expect_err(text).to_string();
            assert!(e.contains("controller.urls") && e.contains(says), "{e}");
        }
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
    fn metrics_address_and_probe_interval() {
        let overlay = Some(std::net::Ipv4Addr::new(100, 64, 0, 5));
        let c = Config::parse(Path::new("a.toml"), "", none).expect("defaults");
        assert_eq!(c.probe_interval, Duration::from_secs(5));
        // By default the overlay endpoint, scraped through the tunnels.
        assert_eq!(
            c.metrics_address(overlay).as_deref(),
            Some("100.64.0.5:9586")
        );
        // Not known yet: nothing another host could scrape (loopback).
        assert_eq!(c.metrics_address(None), None);
        let c = Config::parse(
            Path::new("a.toml"),
            "metrics_overlay_port = 0\nmetrics_listen = \"198.51.100.7:9586\"\nprobe_interval_ms = 2000",
            none,
        )
        .expect("ok");
        assert_eq!(
            c.metrics_address(overlay).as_deref(),
            Some("198.51.100.7:9586")
        );
        assert_eq!(c.probe_interval, Duration::from_secs(2));
        let c = Config::parse(
            Path::new("a.toml"),
            "metrics_listen = \"0.0.0.0:9586\"\nmetrics_advertise = \"203.0.113.9:19586\"",
            none,
        )
        .expect("ok");
        assert_eq!(
            c.metrics_address(overlay).as_deref(),
            Some("203.0.113.9:19586")
        );
        let e = Config::parse(Path::new("a.toml"), "metrics_advertise = \"nope\"", none)
            .expect_err("bad");
        assert!(e.to_string().contains("key `metrics_advertise`"), "{e}");
        let e =
            Config::parse(Path::new("a.toml"), "probe_interval_ms = 50", none).expect_err("zero");
        assert!(e.to_string().contains("key `probe_interval_ms`"), "{e}");
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
