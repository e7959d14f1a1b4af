//! A whole wardnet network on one machine: a controller in a "wan"
//! namespace with an underlay bridge, and sites as gateway namespaces (each
//! optionally with a LAN host namespace behind it) running real agents.
//! Everything is torn down on drop, also when a test panics.
//!
//! Addresses (this machine's rules): underlay 198.51.100.0/24 (203.0.113.0/24
//! for moved endpoints), overlay 100.64.0.0/16 and fd7a:6e65::/48, site LANs
//! 100.100.K.0/24 (the routed supernet 100.100.0.0/16).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::{run, unique_ifname, Child, Netns};

const CONTROLLER_IP: &str = "198.51.100.254";
const CONTROLLER_PORT: u16 = 8080;
const CONTROLLER_TLS_PORT: u16 = 8443;

/// Where the wardnet binaries are: `WARDNET_BIN_DIR`, else next to the
/// running test or demo executable (target/<profile>/ or its deps/).
#[derive(Debug, Clone)]
pub struct Bins {
    pub controller: PathBuf,
    pub agent: PathBuf,
}

impl Bins {
    pub fn find() -> Result<Self> {
        let mut dirs = Vec::new();
        if let Some(d) = std::env::var_os("WARDNET_BIN_DIR") {
            dirs.push(PathBuf::from(d));
        }
        let exe = std::env::current_exe().context("cannot find the running executable")?;
        if let Some(d) = exe.parent() {
            dirs.push(d.to_owned());
            if let Some(p) = d.parent() {
                dirs.push(p.to_owned());
            }
        }
        for d in &dirs {
            let (c, a) = (d.join("wardnet-controller"), d.join("wardnet-agent"));
            if c.is_file() && a.is_file() {
                return Ok(Self {
                    controller: c,
                    agent: a,
                });
            }
        }
        bail!("wardnet-controller and wardnet-agent not found in {dirs:?}; build them first (cargo build --workspace)")
    }
}

/// Options for a new site.
#[derive(Debug, Clone, Copy, Default)]
pub struct SiteOpts {
    /// Give the site a LAN host namespace behind its gateway.
    pub lan: bool,
    /// Declare the site's underlay endpoint (hubs always do).
    pub endpoint: bool,
    /// The organisation it belongs to (`None`: default).
    pub org: Option<&'static str>,
}

pub struct Lan {
    pub ns: Netns,
    pub prefix: ipnet::Ipv4Net,
    /// The LAN host's address.
    pub host: Ipv4Addr,
}

pub struct Site {
    // Field order is drop order: the agent stops before its namespaces go.
    pub agent: Option<Child>,
    pub lan: Option<Lan>,
    pub gw: Netns,
    pub name: String,
    pub hub: bool,
    pub underlay: Ipv4Addr,
    /// The gateway's underlay interface.
    pub eth: String,
    /// The WireGuard interface.
    pub iface: String,
    pub config: PathBuf,
    pub overlay: Option<Ipv4Addr>,
}

pub struct Fleet {
    sites: BTreeMap<String, Site>,
    /// One controller, or several replicas on one PostgreSQL database
    /// (index 0 first; the others listen on the next lower addresses).
    controllers: Vec<Option<Child>>,
    pub wan: Netns,
    pub url: String,
    pub token: String,
    pub bins: Bins,
    dir: PathBuf,
    controller_configs: Vec<PathBuf>,
    /// Each controller's URL.
    pub urls: Vec<String>,
    next_host: u8,
    next_lan: u8,
    /// Agents of sites added from now on serve /metrics on their underlay
    /// address (port 9586), reachable from the wan namespace, instead of
    /// their loopback.
    pub metrics_on_underlay: bool,
    /// Extra top-level agent config lines for sites added from now on.
    pub agent_config_extra: String,
    /// The private CA the controller's certificate chains to (TLS fleets).
    ca_cert: Option<PathBuf>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        // Agents and site namespaces first, then the controller, then the wan.
        let ifaces: Vec<String> = self.sites.values().map(|s| s.iface.clone()).collect();
        self.sites.clear();
        // A killed process cannot remove its control socket; these names are
        // unique to this fleet, so whatever is left is ours.
        for i in ifaces {
            let _ = std::fs::remove_file(format!("/var/run/wireguard/{i}.sock"));
        }
        self.controllers.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The test overlay: 16 regions of 4,094 sites.
const DEFAULT_OVERLAY: &str = "overlay_ipv4 = \"100.64.0.0/16\"\n";

/// Controller `i`'s underlay address: .254, .253, …
fn replica_ip(i: usize) -> String {
    format!("198.51.100.{}", 254 - i)
}

/// Retry `f` until it returns Ok(Some(_)) or `timeout` passes.
pub fn wait_for<T>(
    timeout: Duration,
    what: &str,
    mut f: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    loop {
        match f() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = Some(e),
        }
        if Instant::now() > deadline {
            match last {
                Some(e) => bail!("timed out after {timeout:?} waiting for {what}: {e:#}"),
                None => bail!("timed out after {timeout:?} waiting for {what}"),
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Fleet {
    /// Start a controller (embedded SQLite, plain HTTP inside the test
    /// network) in a fresh wan namespace.
    pub fn start() -> Result<Self> {
        Self::start_with(None, None, DEFAULT_OVERLAY)
    }

    /// Start a controller whose regions hold up to 16,382 sites each
    /// (overlay 100.64.0.0/14, /18 per region), for hubs at a real
    /// region's size.
    pub fn start_large_regions() -> Result<Self> {
        Self::start_with(
            None,
            None,
            "overlay_ipv4 = \"100.64.0.0/14\"\nregion_prefix_len_v4 = 18\n",
        )
    }

    /// Start a controller serving TLS on port 8443 with a private CA made
    /// by `wardnet-controller ca init`, valid for its underlay address and
    /// `hosts`; agents enrol with `--ca-cert`, as on a real pilot.
    pub fn start_tls(hosts: &[&str]) -> Result<Self> {
        Self::start_with(Some(hosts), None, DEFAULT_OVERLAY)
    }

    /// Start `n` controller replicas on one PostgreSQL database
    /// (`database_url`, e.g. a test server's Unix socket), on
    /// 198.51.100.254, .253, …; agents added later list all of them
    /// (`controller.urls`, in that order).
    pub fn start_replicas(n: usize, database_url: &str) -> Result<Self> {
        Self::start_with(None, Some((n, database_url)), DEFAULT_OVERLAY)
    }

    fn start_with(
        tls_hosts: Option<&[&str]>,
        replicas: Option<(usize, &str)>,
        overlay: &str,
    ) -> Result<Self> {
        let bins = Bins::find()?;
        let dir = std::env::temp_dir().join(format!(
            "wardnet-fleet-{}-{}",
            std::process::id(),
            crate::next_id()
        ));
        std::fs::create_dir_all(&dir)?;
        let wan = Netns::new("wan")?;
        wan.lo_up()?;
        wan.ip(&["link", "add", "br0", "type", "bridge"])?;
        // A bridge takes the lowest MAC of its ports unless it has one of
        // its own: every site added later would change the controller's MAC
        // under the gateways' ARP caches, and their packets to it would
        // vanish until the entries expired (tens of seconds).
        wan.ip(&["link", "set", "br0", "address", "02:00:5e:00:00:fe"])?;
        wan.ip(&["addr", "add", &format!("{CONTROLLER_IP}/24"), "dev", "br0"])?;
        wan.ip(&["addr", "add", "203.0.113.254/24", "dev", "br0"])?;
        wan.ip(&["link", "set", "br0", "up"])?;
        let (serving, url, ca_cert) = match tls_hosts {
            None => (
                format!("listen = \"{CONTROLLER_IP}:{CONTROLLER_PORT}\"\nplain_http = true\n"),
                format!("http://{CONTROLLER_IP}:{CONTROLLER_PORT}"),
                None,
            ),
            Some(hosts) => {
                let tls = dir.join("tls");
                let mut cmd = Command::new(&bins.controller);
                cmd.args(["ca", "init", "--dir"])
                    .arg(&tls)
                    .args(["--host", CONTROLLER_IP]);
                for h in hosts {
                    cmd.args(["--host", h]);
                }
                run(&mut cmd)?;
                (
                    format!(
                        "listen = \"{CONTROLLER_IP}:{CONTROLLER_TLS_PORT}\"\n\
                         [tls]\ncert = \"{}\"\nkey = \"{}\"\n",
                        tls.join("controller.crt").display(),
                        tls.join("controller.key").display()
                    ),
                    format!("https://{CONTROLLER_IP}:{CONTROLLER_TLS_PORT}"),
                    Some(tls.join("ca.crt")),
                )
            }
        };
        let (count, database) = match replicas {
            None => (1, String::new()),
            Some((n, url)) => (n, format!("[database]\nurl = {url:?}\n")),
        };
        let mut controller_configs = Vec::new();
        let mut urls = Vec::new();
        for i in 0..count {
            let ip = replica_ip(i);
            let serving = if i == 0 {
                serving.clone()
            } else {
                if ip != CONTROLLER_IP {
                    wan.ip(&["addr", "add", &format!("{ip}/24"), "dev", "br0"])?;
                }
                format!("listen = \"{ip}:{CONTROLLER_PORT}\"\nplain_http = true\n")
            };
            urls.push(if i == 0 {
                url.clone()
            } else {
                format!("http://{ip}:{CONTROLLER_PORT}")
            });
            let config = dir.join(format!("controller-{i}.toml"));
            // data_dir is a top-level key: it goes before any [table].
            std::fs::write(
                &config,
                format!(
                    r#"data_dir = "{}"
{serving}
{database}
[network]
{overlay}
overlay_ipv6 = "fd7a:6e65::/48"
routed_prefixes = ["100.100.0.0/16"]
persistent_keepalive = 25
[long_poll]
timeout_secs = 20
"#,
                    dir.join(format!("controller-{i}")).display()
                ),
            )?;
            controller_configs.push(config);
        }
        let out = run(wan
            .command(&bins.controller)
            .args(["admin-token", "create", "--config"])
            .arg(&controller_configs[0])
            .env("WARDNET_LOG", "warn"))?;
        let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let mut fleet = Self {
            sites: BTreeMap::new(),
            controllers: (0..count).map(|_| None).collect(),
            wan,
            url,
            token,
            bins,
            dir,
            controller_configs,
            urls,
            next_host: 1,
            next_lan: 1,
            metrics_on_underlay: false,
            agent_config_extra: String::new(),
            ca_cert,
        };
        for i in 1..count {
            fleet.start_replica(i)?;
        }
        fleet.start_controller()?;
        Ok(fleet)
    }

    /// The CA certificate agents verify the controller with (TLS fleets).
    pub fn ca_cert(&self) -> Option<&Path> {
        self.ca_cert.as_deref()
    }

    /// The controller's underlay address.
    pub fn controller_ip(&self) -> Ipv4Addr {
        CONTROLLER_IP.parse().expect("a valid constant")
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn start_controller(&mut self) -> Result<()> {
        self.start_replica(0)
    }

    /// Start (or restart) controller `i` and wait until it answers.
    pub fn start_replica(&mut self, i: usize) -> Result<()> {
        let mut cmd = self.wan.command(&self.bins.controller);
        cmd.args(["serve", "--config"])
            .arg(&self.controller_configs[i]);
        self.controllers[i] = Some(Child::spawn(&mut cmd)?);
        wait_for(
            Duration::from_secs(15),
            &format!("controller {i} to answer"),
            || Ok(self.cli_at(i, &["status"]).ok().map(|_| ())),
        )
    }

    /// Where the controller's output goes (kept if the test panics).
    pub fn controller_log(&self) -> Option<PathBuf> {
        self.controllers[0]
            .as_ref()
            .map(|c| c.log_path().to_owned())
    }

    /// Stop the controller (SIGTERM); the sites keep running.
    pub fn stop_controller(&mut self) -> Result<()> {
        if let Some(mut c) = self.controllers[0].take() {
            c.stop(Duration::from_secs(5))?;
        }
        Ok(())
    }

    /// `kill -9` controller `i`: a crash, nothing cleaned up or persisted.
    pub fn kill_replica(&mut self, i: usize) -> Result<()> {
        if let Some(mut c) = self.controllers[i].take() {
            c.kill()?;
        }
        Ok(())
    }

    /// Pause controller `i` (SIGSTOP): its process alive and its
    /// connections open, it answers nothing, as a hung or frozen host.
    pub fn pause_replica(&self, i: usize) -> Result<()> {
        self.signal_replica(i, libc::SIGSTOP)
    }

    /// Let a paused controller `i` run again (SIGCONT).
    pub fn resume_replica(&self, i: usize) -> Result<()> {
        self.signal_replica(i, libc::SIGCONT)
    }

    fn signal_replica(&self, i: usize, signal: libc::c_int) -> Result<()> {
        let c = self.controllers[i]
            .as_ref()
            .with_context(|| format!("controller {i} is not running"))?;
        let pid = libc::pid_t::try_from(c.pid()).context("pid")?;
        // SAFETY: kill on the pid of a child this fleet started and holds.
        if unsafe { libc::kill(pid, signal) } != 0 {
            return Err(std::io::Error::last_os_error()).context("kill");
        }
        Ok(())
    }

    /// Run the admin CLI against the controller.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        self.cli_at(0, args)
    }

    /// Run the admin CLI against controller `i`.
    pub fn cli_at(&self, i: usize, args: &[&str]) -> Result<String> {
        self.cli_with(i, &self.token, args)
    }

    /// An admin token scoped to organisation `org`, made as the NOC makes
    /// one (`admin-token create --org` on the controller's host).
    pub fn scoped_token(&self, org: &str) -> Result<String> {
        let out = run(self
            .wan
            .command(&self.bins.controller)
            .args(["admin-token", "create", "--org", org, "--config"])
            .arg(&self.controller_configs[0])
            .env("WARDNET_LOG", "warn"))?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Run the admin CLI with admin token `token`.
    pub fn cli_as(&self, token: &str, args: &[&str]) -> Result<String> {
        self.cli_with(0, token, args)
    }

    fn cli_with(&self, i: usize, token: &str, args: &[&str]) -> Result<String> {
        let mut cmd = self.wan.command(&self.bins.controller);
        cmd.args(args)
            .env("WARDNET_URL", &self.urls[i])
            .env("WARDNET_TOKEN", token);
        if let Some(ca) = &self.ca_cert {
            cmd.env("WARDNET_CA_CERT", ca);
        }
        let out = run(&mut cmd)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn cli_json(&self, args: &[&str]) -> Result<Value> {
        let mut a = args.to_vec();
        a.extend(["--output", "json"]);
        let text = self.cli(&a)?;
        serde_json::from_str(&text).with_context(|| format!("not JSON: {text}"))
    }

    pub fn region(&self, name: &str, mesh: bool) -> Result<()> {
        let mut args = vec!["regions", "add", name];
        if mesh {
            args.push("--mesh");
        }
        self.cli(&args).map(drop)
    }

    pub fn site(&self, name: &str) -> &Site {
        self.sites
            .get(name)
            .unwrap_or_else(|| panic!("no site {name} in this fleet"))
    }

    pub fn site_mut(&mut self, name: &str) -> &mut Site {
        self.sites
            .get_mut(name)
            .unwrap_or_else(|| panic!("no site {name} in this fleet"))
    }

    /// Build a gateway namespace (and LAN) on the underlay bridge.
    fn gateway(&mut self, name: &str, hub: bool, lan: bool) -> Result<Site> {
        let gw = Netns::new("gw")?;
        gw.lo_up()?;
        gw.enable_forwarding()?;
        let host = self.next_host;
        self.next_host += 1;
        let underlay = Ipv4Addr::new(198, 51, 100, host);
        let eth = unique_ifname("eth");
        let port = unique_ifname("br");
        run(Command::new("ip").args([
            "link",
            "add",
            &eth,
            "netns",
            gw.name(),
            "type",
            "veth",
            "peer",
            "name",
            &port,
            "netns",
            self.wan.name(),
        ]))?;
        self.wan
            .ip(&["link", "set", &port, "master", "br0", "up"])?;
        gw.ip(&["addr", "add", &format!("{underlay}/24"), "dev", &eth])?;
        gw.ip(&["link", "set", &eth, "up"])?;
        // Moved endpoints live in 203.0.113.0/24 on the same segment.
        gw.ip(&["route", "add", "203.0.113.0/24", "dev", &eth])?;
        let lan = if lan {
            let k = self.next_lan;
            self.next_lan += 1;
            let ns = Netns::new("lan")?;
            ns.lo_up()?;
            let prefix: ipnet::Ipv4Net = format!("100.100.{k}.0/24").parse()?;
            let gw_addr = Ipv4Addr::new(100, 100, k, 1);
            let host = Ipv4Addr::new(100, 100, k, 2);
            crate::veth(
                &gw,
                &ns,
                format!("{gw_addr}/24").parse()?,
                format!("{host}/24").parse()?,
            )?;
            ns.ip(&["route", "add", "default", "via", &gw_addr.to_string()])?;
            Some(Lan { ns, prefix, host })
        } else {
            None
        };
        Ok(Site {
            agent: None,
            lan,
            gw,
            name: name.to_owned(),
            hub,
            underlay,
            eth,
            iface: unique_ifname("wn"),
            config: self.dir.join(format!("{name}.toml")),
            overlay: None,
        })
    }

    /// Add a site with an agent: gateway namespace, `sites add`, `enroll`,
    /// `run`; returns once the agent has applied its first config.
    pub fn add_site(&mut self, name: &str, region: &str, hub: bool, opts: SiteOpts) -> Result<()> {
        let token = self.prepare_site(name, region, hub, opts)?;
        let site = self.site(name);
        let endpoint = format!("{}:51820", site.underlay);
        std::fs::write(
            &site.config,
            format!(
                r#"state_dir = "{}"
interface = "{}"
metrics_listen = "{}:9586"
{}
{}
[controller]
allow_plain_http = {}
{}
"#,
                self.dir.join(format!("state-{name}")).display(),
                site.iface,
                if self.metrics_on_underlay {
                    site.underlay
                } else {
                    Ipv4Addr::LOCALHOST
                },
                if self.metrics_on_underlay {
                    // Only the underlay endpoint, and that is what is advertised.
                    "metrics_overlay_port = 0"
                } else {
                    ""
                },
                self.agent_config_extra,
                self.ca_cert.is_none(),
                if self.urls.len() > 1 {
                    format!("urls = {:?}", self.urls)
                } else {
                    String::new()
                },
            ),
        )?;
        let mut cmd = site.gw.command(&self.bins.agent);
        cmd.arg("--config").arg(&site.config).arg("enroll");
        // Every controller (replicas): the first that answers enrols.
        for url in &self.urls {
            cmd.args(["--controller", url]);
        }
        cmd.env("WARDNET_ENROL_TOKEN", &token);
        match &self.ca_cert {
            Some(ca) => cmd.arg("--ca-cert").arg(ca),
            None => cmd.arg("--allow-plain-http"),
        };
        if hub || opts.endpoint {
            cmd.args(["--endpoint", &endpoint]);
        }
        run(&mut cmd)?;
        self.start_agent(name)
    }

    /// The NOC's half of adding a site: its gateway namespace (and LAN) on
    /// the underlay, and `sites add`. Returns the enrolment token; the site
    /// has no agent until someone enrols one.
    pub fn prepare_site(
        &mut self,
        name: &str,
        region: &str,
        hub: bool,
        opts: SiteOpts,
    ) -> Result<String> {
        let mut site = self.gateway(name, hub, opts.lan)?;
        let mut args = vec![
            "sites".to_owned(),
            "add".into(),
            name.into(),
            "--region".into(),
            region.into(),
            "--role".into(),
            if hub { "hub" } else { "spoke" }.into(),
        ];
        if let Some(lan) = &site.lan {
            args.extend(["--lan".into(), lan.prefix.to_string()]);
        }
        if let Some(org) = opts.org {
            args.extend(["--org".into(), org.into()]);
        }
        if hub || opts.endpoint {
            args.extend(["--endpoint".into(), format!("{}:51820", site.underlay)]);
        }
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let created = self.cli_json(&argv)?;
        let token = created["token"]
            .as_str()
            .context("no enrolment token")?
            .to_owned();
        let overlay = created["site"]["addresses"]
            .as_array()
            .and_then(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .find(|a| !a.contains(':'))
            })
            .and_then(|a| a.split('/').next())
            .context("no IPv4 overlay address")?
            .parse()?;
        site.overlay = Some(overlay);
        self.sites.insert(name.to_owned(), site);
        Ok(token)
    }

    /// An agentless appliance site (wireguard-go configured from `sites
    /// export`): returns the gateway's name; the caller brings it up.
    pub fn add_agentless_site(&mut self, name: &str, region: &str, public_key: &str) -> Result<()> {
        let mut site = self.gateway(name, false, false)?;
        let created = self.cli_json(&[
            "sites",
            "add",
            name,
            "--region",
            region,
            "--role",
            "spoke",
            "--public-key",
            public_key,
        ])?;
        site.overlay = created["site"]["addresses"]
            .as_array()
            .and_then(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .find(|a| !a.contains(':'))
            })
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse().ok());
        self.sites.insert(name.to_owned(), site);
        Ok(())
    }

    /// An agentless appliance as its admin would set it up: its own key
    /// (`wg genkey`), registered with `sites add --public-key`, the
    /// `sites export` config with the private key filled in, brought up by
    /// wg-quick on wireguard-go in the site's namespace. Returns the
    /// config's path, for [`Fleet::appliance_down`].
    pub fn add_appliance(&mut self, name: &str, region: &str) -> Result<PathBuf> {
        let private = String::from_utf8(run(Command::new("wg").arg("genkey"))?.stdout)?;
        let public = {
            use std::io::Write;
            let mut child = Command::new("wg")
                .arg("pubkey")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()?;
            child
                .stdin
                .take()
                .context("wg pubkey's stdin")?
                .write_all(private.as_bytes())?;
            String::from_utf8(child.wait_with_output()?.stdout)?
                .trim()
                .to_owned()
        };
        self.add_agentless_site(name, region, &public)?;
        let conf = self.cli(&["sites", "export", name])?;
        if !(conf.contains("[Interface]") && conf.contains("[Peer]")) {
            bail!("`sites export {name}` is no wg-quick config:\n{conf}");
        }
        let conf = conf
            .lines()
            .map(|l| {
                if l.trim_start().starts_with("# PrivateKey") {
                    format!("PrivateKey = {}", private.trim())
                } else {
                    l.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        let site = self.site(name);
        let path = self.dir.join(format!("{}.conf", site.iface));
        std::fs::write(&path, conf)?;
        let up = site
            .gw
            .command("wg-quick")
            .args(["up"])
            .arg(&path)
            .env("WG_QUICK_USERSPACE_IMPLEMENTATION", "wireguard-go")
            .env("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1")
            .output()?;
        if !up.status.success() {
            bail!("wg-quick up: {}", String::from_utf8_lossy(&up.stderr));
        }
        Ok(path)
    }

    /// Take an appliance's interface down (wireguard-go removes its control
    /// socket; its namespace's drop ends the process anyway).
    pub fn appliance_down(&self, name: &str, path: &Path) {
        let _ = self
            .site(name)
            .gw
            .command("wg-quick")
            .arg("down")
            .arg(path)
            .output();
    }

    /// Start (or restart) a site's agent and wait until it runs a config.
    pub fn start_agent(&mut self, name: &str) -> Result<()> {
        let agent = self.bins.agent.clone();
        let site = self.site_mut(name);
        let mut cmd = site.gw.command(&agent);
        cmd.arg("--config").arg(&site.config).arg("run").env(
            "WARDNET_LOG",
            std::env::var("WARDNET_E2E_AGENT_LOG").unwrap_or_else(|_| "info".into()),
        );
        site.agent = Some(Child::spawn(&mut cmd)?);
        wait_for(
            Duration::from_secs(20),
            &format!("agent {name} to apply a config"),
            || {
                let s = self.agent_status(name)?;
                Ok((s["applied_revision"].as_u64().unwrap_or(0) > 0).then_some(()))
            },
        )
    }

    /// Stop a site's agent (SIGTERM, as systemd would).
    pub fn stop_agent(&mut self, name: &str) -> Result<()> {
        if let Some(mut a) = self.site_mut(name).agent.take() {
            let status = a.stop(Duration::from_secs(10))?;
            if !status.success() {
                bail!("agent {name} exited with {status} on SIGTERM:\n{}", a.log());
            }
        }
        Ok(())
    }

    /// The NOC's monitoring rule: TCP 9586 (agents' metrics) from `from`
    /// (`site:NAME`, `org:NAME`) into all sites.
    pub fn monitoring_rule(&self, from: &str) -> Result<String> {
        self.cli(&[
            "policy",
            "add-rule",
            "--from",
            from,
            "--to",
            "all",
            "--proto",
            "tcp",
            "--port",
            "9586",
            "--description",
            "NOC monitoring",
        ])
    }

    /// Delete a site as its admin would (`sites delete`) and take its
    /// hosts away: its agent stops, its namespaces and state go.
    pub fn delete_site(&mut self, name: &str) -> Result<()> {
        self.stop_agent(name)?;
        self.cli(&["sites", "delete", name])?;
        let site = self
            .sites
            .remove(name)
            .with_context(|| format!("no site {name} in this fleet"))?;
        drop(site);
        let state = self.dir.join(format!("state-{name}"));
        if state.exists() {
            std::fs::remove_dir_all(&state)?;
        }
        Ok(())
    }

    /// Kill a site's agent with SIGKILL: no clean-up of any kind, as when
    /// its host dies (its TUN device goes with the process).
    pub fn kill_agent(&mut self, name: &str) -> Result<()> {
        if let Some(mut a) = self.site_mut(name).agent.take() {
            a.kill()?;
        }
        let iface = self.site(name).iface.clone();
        let _ = std::fs::remove_file(format!("/var/run/wireguard/{iface}.sock"));
        Ok(())
    }

    /// `wardnet-agent status -o json` inside the site.
    pub fn agent_status(&self, name: &str) -> Result<Value> {
        let site = self.site(name);
        let out = run(site
            .gw
            .command(&self.bins.agent)
            .arg("--config")
            .arg(&site.config)
            .args(["status", "-o", "json"]))?;
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// `wg show <iface> dump` inside the site, parsed to one row per peer:
    /// (public key, endpoint, allowed ips, latest handshake, rx, tx).
    pub fn wg_dump(&self, name: &str) -> Result<Vec<WgPeer>> {
        let site = self.site(name);
        let text = site.gw.exec(&["wg", "show", &site.iface, "dump"])?;
        Ok(text
            .lines()
            .skip(1)
            .filter_map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                (f.len() >= 8).then(|| WgPeer {
                    public_key: f[0].to_owned(),
                    endpoint: f[2].to_owned(),
                    allowed_ips: f[3].to_owned(),
                    latest_handshake: f[4].parse().unwrap_or(0),
                    rx: f[5].parse().unwrap_or(0),
                    tx: f[6].parse().unwrap_or(0),
                })
            })
            .collect())
    }

    /// A site's public key, from the controller.
    pub fn public_key(&self, name: &str) -> Result<String> {
        let v = self.cli_json(&["sites", "show", name])?;
        Ok(v["public_key"]
            .as_str()
            .context("no public key")?
            .to_owned())
    }

    pub fn overlay(&self, name: &str) -> Ipv4Addr {
        self.site(name)
            .overlay
            .unwrap_or_else(|| panic!("site {name} has no overlay address"))
    }

    pub fn lan(&self, name: &str) -> &Lan {
        self.site(name)
            .lan
            .as_ref()
            .unwrap_or_else(|| panic!("site {name} has no LAN"))
    }

    /// Ping from a namespace; true when at least one reply came back.
    pub fn ping(ns: &Netns, to: Ipv4Addr, count: u32) -> bool {
        ns.exec(&[
            "ping",
            "-n",
            "-q",
            "-c",
            &count.to_string(),
            "-i",
            "0.2",
            "-W",
            "1",
            &to.to_string(),
        ])
        .is_ok()
    }
}

/// One peer row of `wg show <iface> dump`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgPeer {
    pub public_key: String,
    pub endpoint: String,
    pub allowed_ips: String,
    pub latest_handshake: u64,
    pub rx: u64,
    pub tx: u64,
}
