//! What the controller benchmarks share: a real `wardnet-controller`
//! process (release build, embedded SQLite, `synchronous=FULL`) on loopback,
//! and small measuring helpers.
#![allow(dead_code, clippy::print_stdout, clippy::unwrap_used)]

use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

pub(crate) struct Controller {
    pub child: Child,
    pub url: String,
    pub token: String,
    /// The CA certificate clients trust, when serving TLS.
    pub ca: Option<PathBuf>,
    _dir: tempfile::TempDir,
}

impl Drop for Controller {
    fn drop(&mut self) {
        if std::env::var_os(WRAP).is_some() {
            // The wrapper and the controller under it form their own
            // process group: stop both, gently so a profiler writes out.
            let _ = Command::new("kill")
                .args(["-TERM", "--", &format!("-{}", self.child.id())])
                .status();
        } else {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// A command line to run the controller under (split at spaces), e.g.
/// `WARDNET_BENCH_WRAP="heaptrack -o /tmp/ctl"` to see what its heap holds.
/// The PID the benchmark measures is then the wrapper's.
const WRAP: &str = "WARDNET_BENCH_WRAP";

impl Controller {
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A client for this controller (trusting its CA under TLS), sending
    /// from `source` (one source address has only ~28,000 ephemeral ports
    /// toward one destination).
    pub(crate) fn client(&self, source: std::net::IpAddr) -> reqwest::Client {
        let mut b = reqwest::Client::builder()
            .local_address(source)
            .pool_max_idle_per_host(usize::MAX)
            .timeout(Duration::from_secs(600));
        if let Some(ca) = &self.ca {
            let pem = std::fs::read(ca).unwrap();
            b = b.tls_certs_only([reqwest::Certificate::from_pem(&pem).unwrap()]);
        }
        b.build().unwrap()
    }

    /// Wait until it answers /healthz.
    pub(crate) async fn ready(&self) {
        let http = self.client([127, 0, 0, 1].into());
        for _ in 0..300 {
            if http
                .get(format!("{}/healthz", self.url))
                .send()
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the controller did not come up");
    }
}

/// Raise the open-file limit (inherited by the controller) as far as the
/// hard limit allows; returns the soft limit in force.
pub(crate) fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to an initialised struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        let want = libc::rlimit {
            rlim_cur: 200_000,
            rlim_max: 200_000,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
            return 200_000;
        }
        // Not allowed to raise the hard limit: take all of it.
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    lim.rlim_cur
}

/// Raise the open-file limit for `waiters` waiting agents (a socket each
/// in both processes), warn when the hard limit is too low, and select the
/// crypto provider: what every benchmark does first.
pub(crate) fn prepare(waiters: usize) {
    let nofile = raise_fd_limit();
    if (nofile as usize) < waiters + 1000 {
        println!(
            "warning: open-file limit is {nofile} (hard limit); {waiters} waiters need more than that in both processes: expect failures"
        );
    }
    wardnet_controller::init_crypto();
}

/// Start the controller binary with the shipped defaults plus `extra`
/// config lines (TOML, top level first), plain HTTP or TLS.
/// A controller on a fresh SQLite store (or the database `extra_tables`
/// names), with `extra_top` keys at the top of its config and `network`
/// keys in its `[network]` table.
pub(crate) fn start_controller(
    extra_top: &str,
    network: &str,
    extra_tables: &str,
    tls: bool,
) -> Controller {
    let bin = env!("CARGO_BIN_EXE_wardnet-controller");
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (transport, ca) = if tls {
        let tls_dir = dir.path().join("tls");
        let out = Command::new(bin)
            .args(["ca", "init", "--host", "127.0.0.1", "-o", "json", "--dir"])
            .arg(&tls_dir)
            .env("WARDNET_LOG", "warn")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let s = |k: &str| v[k].as_str().unwrap().to_owned();
        (
            format!(
                "[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
                s("server_cert"),
                s("server_key")
            ),
            Some(PathBuf::from(s("ca_cert"))),
        )
    } else {
        (String::new(), None)
    };
    let plain = if tls { "" } else { "plain_http = true\n" };
    let config = dir.path().join("controller.toml");
    std::fs::write(
        &config,
        format!(
            r#"listen = "127.0.0.1:{port}"
{plain}data_dir = "{}"
{extra_top}
[network]
overlay_ipv4 = "100.64.0.0/10"
overlay_ipv6 = "fd7a:6e65::/48"
routed_prefixes = ["10.0.0.0/8"]
{network}
{transport}
{extra_tables}
"#,
            dir.path().display()
        ),
    )
    .unwrap();
    let out = Command::new(bin)
        .args(["admin-token", "create", "--config"])
        .arg(&config)
        .env("WARDNET_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let wrap = std::env::var(WRAP).unwrap_or_default();
    let mut wrap = wrap.split_whitespace();
    let mut cmd = match wrap.next() {
        Some(w) => {
            let mut c = Command::new(w);
            c.args(wrap).arg(bin).process_group(0);
            c
        }
        None => Command::new(bin),
    };
    let child = cmd
        .args(["serve", "--config"])
        .arg(&config)
        .env("WARDNET_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let scheme = if tls { "https" } else { "http" };
    Controller {
        child,
        url: format!("{scheme}://127.0.0.1:{port}"),
        token,
        ca,
        _dir: dir,
    }
}

/// A child process killed and reaped on drop.
pub(crate) struct Reaped(pub Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn rss_mib(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// CPU seconds (user + system) a process has used.
pub(crate) fn cpu_secs(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at ')'.
    let rest = s.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15; after ')' they are 12th and 13th.
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz
}

/// The machine's load averages, for the record.
pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub(crate) async fn post(http: &reqwest::Client, url: &str, token: &str, body: Value) -> Value {
    let r = http
        .post(url)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "{url}: {status} {v}");
    v
}

/// Replace organisation `org`'s delegated space (the NOC's token).
pub(crate) async fn delegate(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    org: &str,
    space: &[String],
) {
    let r = http
        .patch(format!("{url}/v1/orgs/{org}"))
        .bearer_auth(token)
        .json(&serde_json::json!({ "delegated": space }))
        .send()
        .await
        .unwrap();
    let status = r.status();
    assert!(
        status.is_success(),
        "delegate to {org}: {status} {}",
        r.text().await.unwrap_or_default()
    );
}

/// The value of an unlabelled metric in the controller's /metrics.
pub(crate) async fn metric(http: &reqwest::Client, url: &str, name: &str) -> f64 {
    let text = http
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}
