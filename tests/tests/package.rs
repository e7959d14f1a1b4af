//! The Debian packages, built from the binaries this test run built
//! (`scripts/package.sh --no-build`, dev profile):
//!
//! - they install with dpkg into this system, put every file where the
//!   units expect it, and their binaries, completions and man pages work
//!   (`scripts/package.sh --install-test`, which purges them afterwards).
//!   It changes the running system, so outside CI it is opt-in:
//!   WARDNET_PACKAGE_TEST=1.
//! - docs/site-admin.md, followed word for word on a fresh gateway booted
//!   with real systemd (a systemd-nspawn container on a throwaway overlay
//!   of this machine, in a site namespace), ends with a healthy tunnel in
//!   at most three commands after the install.
//!
//! Both need root, cargo-deb (`cargo install cargo-deb --locked`) and, for
//! the guide, systemd-nspawn (Debian: systemd-container). Without them they
//! say they were skipped; with CI=true a skip is a failure.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use wardnet_e2e::container::{self, Container};
use wardnet_e2e::fleet::{wait_for, Bins, Fleet, SiteOpts};
use wardnet_e2e::traffic::Stream;
use wardnet_e2e::{require, require_root};

/// The install test changes the root filesystem the guide's container
/// overlays: never both at once.
static SYSTEM: Mutex<()> = Mutex::new(());

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
}

fn cargo_deb() -> Result<(), String> {
    let ok = Command::new("cargo")
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        Ok(())
    } else {
        Err("cargo-deb is missing (cargo install cargo-deb --locked)".into())
    }
}

/// `scripts/package.sh --no-build [args]` on the debug binaries next to
/// this test; its output (it fails the test unless it succeeds).
fn package_sh(args: &[&str]) -> Result<String> {
    let bins = Bins::find()?;
    let profile_dir = bins.agent.parent().context("bin dir")?;
    let target = profile_dir.parent().context("target dir")?;
    let out = Command::new(repo().join("scripts/package.sh"))
        .arg("--no-build")
        .args(args)
        .env("WARDNET_PACKAGE_PROFILE", "dev")
        .env("CARGO_TARGET_DIR", target)
        .current_dir(repo())
        .output()
        .context("run scripts/package.sh")?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "scripts/package.sh {args:?} failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}

#[test]
#[cfg_attr(
    not(all(wardnet_root_tests, wardnet_package_tests)),
    ignore = "installs packages into this system: run as root with WARDNET_PACKAGE_TEST=1"
)]
fn packages_install_and_land_where_the_units_expect() -> Result<()> {
    let test = "packages_install_and_land_where_the_units_expect";
    if !require_root(test) {
        return Ok(());
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let opted_in = ci || std::env::var("WARDNET_PACKAGE_TEST").as_deref() == Ok("1");
    let ready = if opted_in {
        cargo_deb()
    } else {
        Err("installs packages into this system; set WARDNET_PACKAGE_TEST=1 to run it".into())
    };
    if !require(test, ready) {
        return Ok(());
    }
    let _system = SYSTEM.lock().unwrap_or_else(|e| e.into_inner());
    let out = package_sh(&["--install-test"])?;
    eprintln!("{out}");
    assert!(out.contains("package install test passed"), "{out}");
    Ok(())
}

/// The ```sh blocks of the section whose heading starts with `heading`,
/// each as its command lines.
fn blocks_under(guide: &str, heading: &str) -> Result<Vec<Vec<String>>> {
    let at = guide
        .find(&format!("\n{heading}"))
        .with_context(|| format!("the guide has no heading {heading:?}"))?
        + 1;
    let section = &guide[at..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |e| e + 3)];
    let mut blocks = Vec::new();
    let mut rest = section;
    while let Some(start) = rest.find("```sh\n") {
        let body = &rest[start + "```sh\n".len()..];
        let end = body.find("```").context("unterminated block")?;
        blocks.push(
            body[..end]
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_owned)
                .collect(),
        );
        rest = &body[end + 3..];
    }
    if blocks.is_empty() {
        bail!("no ```sh block under {heading:?}");
    }
    Ok(blocks)
}

fn commands_under(guide: &str, heading: &str) -> Result<Vec<String>> {
    Ok(blocks_under(guide, heading)?.swap_remove(0))
}

/// The .debs of this run, built once: (agent, controller).
fn debs() -> Result<&'static (PathBuf, PathBuf)> {
    static DEBS: std::sync::OnceLock<Result<(PathBuf, PathBuf), String>> =
        std::sync::OnceLock::new();
    let built = DEBS.get_or_init(|| {
        let out = package_sh(&[]).map_err(|e| format!("{e:#}"))?;
        let find = |name: &str| {
            out.lines()
                .filter_map(|l| l.strip_prefix("built "))
                .find(|p| p.contains(name))
                .map(PathBuf::from)
                .ok_or_else(|| format!("no {name} .deb in:\n{out}"))
        };
        Ok((find("wardnet-agent_")?, find("wardnet-controller_")?))
    });
    built.as_ref().map_err(|e| anyhow::anyhow!("{e}"))
}

fn file_name(p: &Path) -> Result<&str> {
    p.file_name()
        .and_then(|n| n.to_str())
        .context("a .deb file name")
}

/// The ready-check every container test does first.
fn container_ready() -> Result<(), String> {
    cargo_deb().and_then(|()| {
        if container::available() {
            Ok(())
        } else {
            Err("systemd-nspawn is missing (apt-get install systemd-container)".into())
        }
    })
}

#[test]
#[cfg_attr(
    not(wardnet_root_tests),
    ignore = "needs root (network namespaces, TUN devices): run the tests as root"
)]
fn the_site_admin_guide_word_for_word_ends_with_a_healthy_tunnel() -> Result<()> {
    let test = "the_site_admin_guide_word_for_word_ends_with_a_healthy_tunnel";
    if !require_root(test) {
        return Ok(());
    }
    if !require(test, container_ready()) {
        return Ok(());
    }
    let _system = SYSTEM.lock().unwrap_or_else(|e| e.into_inner());

    let guide = std::fs::read_to_string(repo().join("docs/site-admin.md"))?;
    let install = commands_under(&guide, "## 1. Install")?;
    let steps = commands_under(&guide, "## 2. ")?;
    assert_eq!(install.len(), 1, "one install command: {install:?}");
    assert!(
        steps.len() <= 3,
        "the guide promises at most three commands after the install: {steps:?}"
    );

    let (agent_deb, _) = debs()?;
    let deb_name = file_name(agent_deb)?;
    assert_eq!(
        install[0],
        format!("apt install ./{deb_name}"),
        "the guide's install command names the package file the build makes"
    );

    // The NOC's side: a controller with a private CA whose certificate
    // names controller.example (the guide's URL), a hub, and the new site.
    let mut f = Fleet::start_tls(&["controller.example"])?;
    f.region("north", false)?;
    f.add_site("hub-n", "north", true, SiteOpts::default())?;
    let token = f.prepare_site(
        "gp-new",
        "north",
        false,
        SiteOpts {
            lan: true,
            endpoint: false,
            org: None,
        },
    )?;
    let site = f.site("gp-new");
    let gw = Container::boot(&site.gw, &f.dir().join("gp-new-root"))
        .context("boot the site's gateway")?;
    // What the NOC hands over: the URL's name resolves on the site's
    // network, the .deb is in the admin's directory, and ca.crt is saved
    // where the guide says.
    gw.sh_ok(&format!(
        "echo '{} controller.example' >> /etc/hosts",
        f.controller_ip()
    ))?;
    gw.copy_in(agent_deb, &format!("/root/{deb_name}"))?;

    let installed = gw.sh_ok(&format!("{} </dev/null 2>&1", install[0]))?;
    assert!(
        installed.contains("NOT started"),
        "the install says the agent is not started yet:\n{installed}"
    );
    assert_eq!(
        gw.sh("systemctl is-active wardnet-agent")
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())?,
        "inactive",
        "installing does not start an unenrolled agent"
    );
    // The guide's troubleshooting: before enrolment `systemctl start` does
    // nothing, and `status` shows the failed start condition.
    gw.sh_ok("systemctl start wardnet-agent")?;
    let unenrolled = gw.sh_ok("systemctl show -p ConditionResult -p ActiveState wardnet-agent")?;
    assert!(
        unenrolled.contains("ConditionResult=no") && unenrolled.contains("ActiveState=inactive"),
        "{unenrolled}"
    );
    gw.copy_in(f.ca_cert().context("a TLS fleet")?, "/etc/wardnet/ca.crt")?;

    // The guide's three commands, word for word; the token is pasted at the
    // prompt (standard input), never put on a command line.
    for step in &steps {
        ensure!(
            !step.contains("wne_"),
            "the guide puts the enrolment token on a command line (visible in ps): {step}"
        );
        let out = if step.contains("--token-file -") {
            gw.sh(&format!("printf '%s\\n' '{token}' | {step}"))?
        } else {
            gw.sh(&format!("{step} </dev/null"))?
        };
        eprintln!(
            "# {step}\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() {
            let journal = gw
                .sh("journalctl -u wardnet-agent --no-pager | tail -n 40")
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            bail!(
                "the guide's `{step}` failed ({}); journal:\n{journal}",
                out.status
            );
        }
    }

    // Healthy, as the guide defines it.
    assert_eq!(
        gw.sh_ok("systemctl is-active wardnet-agent")?.trim(),
        "active"
    );
    let status = wait_for(
        Duration::from_secs(30),
        "every peer up in `wardnet-agent status`",
        || {
            let st: Value = serde_json::from_str(&gw.sh_ok("wardnet-agent status -o json")?)?;
            let peers = st["peers"].as_array().cloned().unwrap_or_default();
            let all_up = !peers.is_empty() && peers.iter().all(|p| p["up"] == true);
            Ok(all_up.then_some(st))
        },
    )?;
    assert_eq!(status["site"], "gp-new", "{status}");
    let wg = gw.sh_ok("wg show wardnet0 latest-handshakes")?;
    let hub_key = f.public_key("hub-n")?;
    let age = wg
        .lines()
        .find_map(|l| l.strip_prefix(&hub_key))
        .and_then(|t| t.trim().parse::<u64>().ok())
        .with_context(|| format!("no handshake with the hub in `wg show`:\n{wg}"))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    assert!(
        age > 0 && now - age < 120,
        "latest handshake {age} (now {now})"
    );

    // And the site's LAN reaches the hub through the tunnel.
    assert!(
        Fleet::ping(&f.lan("gp-new").ns, f.overlay("hub-n"), 3),
        "the site's LAN does not reach the hub's overlay address"
    );
    // Under systemd: the unit's sandbox held, and it runs as the guide says.
    let props = gw.sh_ok(
        "systemctl show wardnet-agent -p Type -p NRestarts -p WatchdogUSec -p ActiveState",
    )?;
    assert!(
        props.contains("Type=notify") && props.contains("NRestarts=0"),
        "{props}"
    );

    // The guide's "Changing agent.toml": `systemctl reload` applies the
    // controller settings at once, in the same process, tunnels untouched;
    // a broken file or a restart-only key changes nothing and says so.
    let pid = gw.sh_ok("systemctl show -p MainPID --value wardnet-agent")?;
    let journal_has = |what: &str| -> Result<bool> {
        Ok(gw
            .sh_ok("journalctl -u wardnet-agent --no-pager -o cat")?
            .contains(what))
    };
    let status_json = || -> Result<Value> {
        Ok(serde_json::from_str(
            &gw.sh_ok("wardnet-agent status -o json")?,
        )?)
    };
    gw.sh_ok(
        r#"sed -i 's|^# url = .*|url = "https://controller.example:9"|' /etc/wardnet/agent.toml"#,
    )?;
    gw.sh_ok("systemctl reload wardnet-agent")?;
    wait_for(
        Duration::from_secs(15),
        "the reloaded controller URL to be used (and fail)",
        || {
            let st = status_json()?;
            Ok((st["controller_url"] == "https://controller.example:9"
                && st["controller_reachable"] == false)
                .then_some(()))
        },
    )?;
    assert!(
        Fleet::ping(&f.lan("gp-new").ns, f.overlay("hub-n"), 1),
        "the tunnels run on while the controller is unreachable"
    );
    gw.sh_ok(r#"sed -i 's|^url = "https://controller.example:9"|# url = "https://controller.example:8443"|' /etc/wardnet/agent.toml"#)?;
    gw.sh_ok("systemctl reload wardnet-agent")?;
    wait_for(
        Duration::from_secs(15),
        "the enrolment's controller URL to be used again",
        || {
            let st = status_json()?;
            Ok((st["controller_url"] == "https://controller.example:8443"
                && st["controller_reachable"] == true)
                .then_some(()))
        },
    )?;
    gw.sh_ok("cp /etc/wardnet/agent.toml /root/agent.toml.good && echo 'probe_interval_ms = \"often\"' >> /etc/wardnet/agent.toml")?;
    gw.sh_ok("systemctl reload wardnet-agent")?;
    wait_for(
        Duration::from_secs(10),
        "the reload error in the journal",
        || Ok(journal_has("reload: the config is not valid")?.then_some(())),
    )?;
    assert!(journal_has("probe_interval_ms")?, "the error names the key");
    gw.sh_ok("cp /root/agent.toml.good /etc/wardnet/agent.toml && sed -i 's|^interface = .*|interface = \"wardnet7\"|' /etc/wardnet/agent.toml")?;
    gw.sh_ok("systemctl reload wardnet-agent")?;
    wait_for(
        Duration::from_secs(10),
        "the restart-only key in the journal",
        || {
            Ok(
                journal_has("`interface` changed; it takes effect at the next restart")?
                    .then_some(()),
            )
        },
    )?;
    gw.sh_ok("cp /root/agent.toml.good /etc/wardnet/agent.toml && systemctl reload wardnet-agent")?;
    assert_eq!(
        pid,
        gw.sh_ok("systemctl show -p MainPID --value wardnet-agent")?,
        "reloads keep the process"
    );
    assert_eq!(
        gw.sh_ok("systemctl is-active wardnet-agent")?.trim(),
        "active"
    );
    assert!(gw.sh_ok("wg show interfaces")?.contains("wardnet0"));

    // The guide's "Restarts, upgrades": `systemctl restart` and a package
    // upgrade (reinstalling the .deb runs the postinst's try-restart) during
    // a steady stream from the hub to the site's LAN.
    let lan_host = f.lan("gp-new").host;
    for (round, (what, cmd)) in [
        (
            "systemctl restart",
            "systemctl restart wardnet-agent".to_owned(),
        ),
        (
            "package upgrade",
            format!("dpkg -i ./{deb_name} </dev/null >/dev/null 2>&1"),
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let pid_before = gw.sh_ok("systemctl show -p MainPID --value wardnet-agent")?;
        let stream = Stream::start(
            &f.site("hub-n").gw,
            &f.lan("gp-new").ns,
            SocketAddr::from((lan_host, 7400 + round as u16)),
            Duration::from_millis(10),
        )?;
        std::thread::sleep(Duration::from_secs(1));
        let t0 = Instant::now();
        gw.sh_ok(&cmd)?;
        let took = t0.elapsed();
        stream.wait_flowing(Duration::from_secs(15))?;
        std::thread::sleep(Duration::from_secs(1));
        let report = stream.finish(Duration::from_millis(500));
        let pid_after = gw.sh_ok("systemctl show -p MainPID --value wardnet-agent")?;
        assert_ne!(pid_before, pid_after, "{what} restarted the agent");
        eprintln!(
            "under systemd, {what}: command returned after {} ms, longest outage {} ms \
             ({} of {} packets lost at 10 ms)",
            took.as_millis(),
            report.longest_outage().as_millis(),
            report.lost(),
            report.sent
        );
        assert!(
            report.longest_outage() < Duration::from_secs(5),
            "{what} interrupted the site for {:?}: {report:?}",
            report.longest_outage()
        );
        assert_eq!(
            gw.sh_ok("systemctl is-active wardnet-agent")?.trim(),
            "active"
        );
    }
    Ok(())
}

/// docs/noc.md on a fresh server booted with real systemd: install, TLS
/// with `ca init`, start, first admin token, regions and sites, revocation,
/// a restart that keeps everything, and the online backup. Its commands run
/// word for word, except the site LANs (this machine's tests may only use
/// 100.64.0.0/10 inside the overlay, so the guide's 10.1.x.0/24 examples
/// become 100.100.x.0/24) and the token typed at `read -rs`.
#[test]
#[cfg_attr(
    not(wardnet_root_tests),
    ignore = "needs root (network namespaces, TUN devices): run the tests as root"
)]
fn the_noc_guide_runs_the_packaged_controller_under_systemd() -> Result<()> {
    let test = "the_noc_guide_runs_the_packaged_controller_under_systemd";
    if !require_root(test) || !require(test, container_ready()) {
        return Ok(());
    }
    let _system = SYSTEM.lock().unwrap_or_else(|e| e.into_inner());
    let guide = std::fs::read_to_string(repo().join("docs/noc.md"))?;
    let (_, controller_deb) = debs()?;
    let deb_name = file_name(controller_deb)?;
    let install = commands_under(&guide, "## 1. Install")?;
    assert_eq!(install, [format!("apt install ./{deb_name}")]);

    // The NOC's server: 198.51.100.10, the address the guide's `ca init`
    // names, on a network of its own.
    let ns = wardnet_e2e::Netns::new("noc")?;
    ns.lo_up()?;
    ns.ip(&["addr", "add", "198.51.100.10/32", "dev", "lo"])?;
    let dir = tempfile::tempdir()?;
    let server = Container::boot(&ns, &dir.path().join("root")).context("boot the NOC's server")?;
    server.sh_ok("echo '198.51.100.10 controller.example' >> /etc/hosts")?;
    server.copy_in(controller_deb, &format!("/root/{deb_name}"))?;
    let run = |cmd: &str| -> Result<String> {
        let cmd = cmd.replace("10.1.", "100.100.");
        let out = server.sh_ok(&format!("{cmd} </dev/null"));
        if out.is_err() {
            let journal = server
                .sh("journalctl -u wardnet-controller --no-pager | tail -n 40")
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            eprintln!("journal of wardnet-controller:\n{journal}");
        }
        out
    };

    // 1. Install; it does not start the controller.
    run(&install[0])?;
    assert_eq!(
        String::from_utf8_lossy(&server.sh("systemctl is-active wardnet-controller")?.stdout)
            .trim(),
        "inactive"
    );
    // "Edit /etc/wardnet/controller.toml": the overlay and the site-LAN
    // supernet, both inside this machine's test range.
    run(concat!(
        r#"sed -i -e 's|^overlay_ipv4 = .*|overlay_ipv4 = "100.64.0.0/16"|' "#,
        r#"-e 's|^routed_prefixes = .*|routed_prefixes = ["100.100.0.0/16"]|' "#,
        "/etc/wardnet/controller.toml"
    ))?;

    // 2. TLS, 3. start and the first admin token.
    for cmd in commands_under(&guide, "## 2. TLS")? {
        run(&cmd)?;
    }
    let start = blocks_under(&guide, "## 3. Start")?;
    assert_eq!(start.len(), 2, "{start:?}");
    let mut token = String::new();
    for cmd in &start[0] {
        token = run(cmd)?;
    }
    let token = token.trim().to_owned();
    assert!(
        token.starts_with("wnt_"),
        "admin-token create printed {token:?}"
    );
    // The admin's shell: the guide's exports, the token pasted at `read`.
    let session = start[1].join("\n");
    let status = server.sh(&format!(
        "printf '%s\\n' '{token}' | bash -c {}",
        shell_quote(&session)
    ))?;
    assert!(
        status.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&status.stdout),
        String::from_utf8_lossy(&status.stderr)
    );
    let admin = |cmd: &str| -> Result<String> {
        run(&format!(
            "WARDNET_URL=https://controller.example:8443 WARDNET_CA_CERT=/etc/wardnet/tls/ca.crt \
             WARDNET_TOKEN={token} {cmd}"
        ))
    };

    // 4. Regions and sites, 5. revocation.
    for cmd in commands_under(&guide, "## 4. Regions and sites")? {
        admin(&cmd)?;
    }
    for cmd in commands_under(&guide, "## 5. Revocation")? {
        admin(&cmd)?;
    }
    let sites: Value =
        serde_json::from_str(&admin("wardnet-controller sites list --output json")?)?;
    let text = sites.to_string();
    assert!(
        text.contains("hub-north") && text.contains("gp-leeds-17"),
        "{text}"
    );

    // A restart keeps everything (the store is in the StateDirectory).
    let pid_before = run("systemctl show -p MainPID --value wardnet-controller")?;
    run("systemctl restart wardnet-controller")?;
    assert_ne!(
        pid_before,
        run("systemctl show -p MainPID --value wardnet-controller")?
    );
    let after: Value =
        serde_json::from_str(&admin("wardnet-controller sites list --output json")?)?;
    assert_eq!(sites, after, "the sites survive a restart");
    let audit = admin("wardnet-controller audit")?;
    assert!(audit.contains("gp-leeds-17"), "{audit}");

    // 6. The online backup, as the service user, while it runs.
    for cmd in commands_under(&guide, "## 6. Backups")? {
        run(&cmd)?;
    }
    let check = run(
        "for f in /var/lib/wardnet-controller/backup-*.db; do sqlite3 \"$f\" 'PRAGMA integrity_check'; done",
    )?;
    assert_eq!(check.trim(), "ok");

    // The unit as the guide describes it: unprivileged, notify, watchdog.
    let props = run(
        "systemctl show wardnet-controller -p Type -p User -p NRestarts -p WatchdogUSec -p ActiveState",
    )?;
    for want in [
        "Type=notify",
        "User=wardnet",
        "NRestarts=0",
        "WatchdogUSec=30s",
        "ActiveState=active",
    ] {
        assert!(props.contains(want), "{want} missing in:\n{props}");
    }
    let key_mode = run("stat -c %a /etc/wardnet/tls/controller.key")?;
    assert_eq!(key_mode.trim(), "600");
    Ok(())
}

/// `s` as one single-quoted shell word.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}
