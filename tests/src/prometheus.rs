//! A real Prometheus server (Debian package `prometheus`) in one of the
//! fleet's namespaces, listening on that namespace's loopback, and the two
//! questions tests and the demo ask it: which targets are up, and what an
//! instant query returns.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::fleet::{wait_for, Fleet};
use crate::{Child, Netns};

/// Where the server listens, inside its namespace.
pub const LISTEN: &str = "127.0.0.1:9090";

pub struct Prometheus {
    /// The namespace's name: the server is stopped (on drop) before the
    /// namespace goes, and a test may change the fleet meanwhile.
    ns: String,
    _child: Child,
}

/// `Ok` when the `prometheus` server and `curl` are installed, else what to
/// install (for [`crate::require`]).
pub fn installed() -> Result<(), String> {
    for program in ["prometheus", "curl"] {
        let found = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {program}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Err(format!(
                "{program} is not installed (apt-get install prometheus curl)"
            ));
        }
    }
    Ok(())
}

/// One scrape target as Prometheus sees it.
#[derive(Debug, Clone)]
pub struct Target {
    pub job: String,
    pub instance: String,
    pub health: String,
    pub last_error: String,
}

impl Prometheus {
    /// Start Prometheus in `ns` with `config` (YAML) written into `dir`.
    pub fn start(ns: &Netns, dir: &Path, config: &str) -> Result<Self> {
        let file = dir.join("prometheus.yml");
        std::fs::write(&file, config)?;
        // It listens on the namespace's loopback.
        ns.lo_up()?;
        let data = dir.join("prometheus-data");
        let child = ns.spawn(&[
            "prometheus",
            &format!("--config.file={}", file.display()),
            &format!("--storage.tsdb.path={}", data.display()),
            &format!("--web.listen-address={LISTEN}"),
            "--log.level=warn",
        ])?;
        let p = Prometheus {
            ns: ns.name().to_owned(),
            _child: child,
        };
        wait_for(Duration::from_secs(30), "Prometheus to be ready", || {
            Ok(p.get("/-/ready").ok().map(drop))
        })?;
        Ok(p)
    }

    fn curl(&self, args: &[&str]) -> Result<String> {
        let out = crate::run(
            std::process::Command::new("ip")
                .args(["netns", "exec", &self.ns, "curl", "-sf"])
                .args(args),
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn get(&self, path: &str) -> Result<String> {
        self.curl(&[&format!("http://{LISTEN}{path}")])
    }

    /// The active targets.
    pub fn targets(&self) -> Result<Vec<Target>> {
        let text = self.get("/api/v1/targets?state=active")?;
        let v: Value = serde_json::from_str(&text).with_context(|| format!("not JSON: {text}"))?;
        let mut out = Vec::new();
        for t in v["data"]["activeTargets"]
            .as_array()
            .context("no targets")?
        {
            let s = |k: &str| t[k].as_str().unwrap_or_default().to_owned();
            out.push(Target {
                job: t["labels"]["job"].as_str().unwrap_or_default().to_owned(),
                instance: t["labels"]["instance"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                health: s("health"),
                last_error: s("lastError"),
            });
        }
        Ok(out)
    }

    /// An instant query: each result's labels and value.
    pub fn query(&self, q: &str) -> Result<Vec<(BTreeMap<String, String>, f64)>> {
        let text = self.curl(&[
            "--get",
            "--data-urlencode",
            &format!("query={q}"),
            &format!("http://{LISTEN}/api/v1/query"),
        ])?;
        let v: Value = serde_json::from_str(&text).with_context(|| format!("not JSON: {text}"))?;
        if v["status"] != "success" {
            bail!("query {q} failed: {text}");
        }
        let mut out = Vec::new();
        for r in v["data"]["result"].as_array().context("no result")? {
            let labels = r["metric"]
                .as_object()
                .context("no labels")?
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect();
            let value: f64 = r["value"][1]
                .as_str()
                .context("no value")?
                .parse()
                .context("bad value")?;
            out.push((labels, value));
        }
        Ok(out)
    }

    /// The single value of `q`, if there is exactly one series.
    pub fn value(&self, q: &str) -> Result<Option<f64>> {
        let r = self.query(q)?;
        Ok((r.len() == 1).then(|| r[0].1))
    }
}

/// The NOC's scrape config as docs/noc.md gives it, for a plain-HTTP test
/// controller: the controller's own /metrics, and every agent found through
/// the controller's http_sd endpoint (their overlay addresses, scraped
/// through the tunnels), with the shipped alerting rules. `token_file` holds
/// an admin token.
pub fn noc_config(f: &Fleet, token_file: &Path, interval: &str) -> String {
    let rules = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/prometheus/wardnet-alerts.yml"
    );
    format!(
        r#"global:
  scrape_interval: {interval}
  evaluation_interval: {interval}
rule_files: ["{rules}"]
scrape_configs:
  - job_name: wardnet-controller
    static_configs:
      - targets: ["{controller}:8080"]
  - job_name: wardnet-agent
    http_sd_configs:
      - url: {url}/v1/prometheus/targets
        refresh_interval: {interval}
        authorization:
          type: Bearer
          credentials_file: {token}
"#,
        controller = f.controller_ip(),
        url = f.url,
        token = token_file.display(),
    )
}
