//! A throwaway Debian gateway booted with real systemd (systemd-nspawn) in
//! a test network namespace, for the tests that install the packages and
//! run the units as a site admin would.
//!
//! Its root is an overlay of this machine's root filesystem with a tmpfs on
//! top, mounted in a private mount namespace: what the container installs
//! or writes vanishes with it, and the host's mounts and files are left as
//! they were. It boots to `basic.target` (no site services of the host),
//! shares the site's network namespace (so its tunnels are the site's), and
//! gets `/dev/net/tun`. Dropping it powers it off (SIGTERM to nspawn), then
//! kills what is left.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::{Child, Netns};

/// Units masked in the container: nothing may configure the site's
/// interfaces or clock except what the test runs.
const MASKED: &[&str] = &[
    "systemd-networkd.service",
    "systemd-networkd.socket",
    "systemd-networkd-wait-online.service",
    "systemd-resolved.service",
    "systemd-timesyncd.service",
    "systemd-sysctl.service",
];

const BOOT: &str = r#"set -eu
base=$1 netns=$2 machine=$3
# nspawn keeps its bookkeeping under /run/systemd/nspawn: keep that (and
# everything below) inside this private mount namespace.
mkdir -p /run/systemd
mount -t tmpfs wardnet-test /run/systemd
mount -t tmpfs wardnet-test "$base"
mkdir "$base/upper" "$base/work" "$base/root"
mount -t overlay wardnet-test -o "lowerdir=/,upperdir=$base/upper,workdir=$base/work" "$base/root"
root=$base/root
mkdir -p "$root/etc/systemd/system"
for u in $MASKED; do ln -sf /dev/null "$root/etc/systemd/system/$u"; done
echo "$machine" > "$root/etc/hostname"
exec systemd-nspawn --quiet -D "$root" --register=no --keep-unit \
    --machine="$machine" --network-namespace-path="/run/netns/$netns" \
    --bind=/dev/net/tun --capability=CAP_NET_ADMIN --boot -- --unit=basic.target
"#;

/// Is systemd-nspawn (Debian: systemd-container) installed?
pub fn available() -> bool {
    Command::new("systemd-nspawn")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

pub struct Container {
    nspawn: Option<Child>,
    leader: u32,
    dir: PathBuf,
}

impl Container {
    /// Boot a container in `netns`; returns once its systemd has finished
    /// starting up. `dir` must be an empty directory for the overlay.
    pub fn boot(netns: &Netns, dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let script = dir.with_extension("boot.sh");
        std::fs::write(&script, BOOT)?;
        let machine = format!("wardnet-{}-{}", std::process::id(), crate::next_id());
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "bash"])
            .arg(&script)
            .arg(dir)
            .arg(netns.name())
            .arg(&machine)
            .env("MASKED", MASKED.join(" "));
        let nspawn = Child::spawn(&mut cmd)?;
        let mut c = Self {
            leader: 0,
            nspawn: Some(nspawn),
            dir: dir.to_owned(),
        };
        c.leader = c.wait_for_leader()?;
        // Wait for the boot to finish: `running`, or `degraded` when some
        // host unit does not fit in a container; both leave systemd idle.
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let out = c.sh("systemctl is-system-running --wait")?;
            let state = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if state == "running" || state == "degraded" {
                return Ok(c);
            }
            if Instant::now() > deadline {
                bail!(
                    "the container did not finish booting (state {state:?}):\n{}",
                    c.log()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The container's PID 1 (systemd) as seen from the host: nspawn's child.
    fn wait_for_leader(&mut self) -> Result<u32> {
        let nspawn = self.nspawn.as_mut().expect("running");
        let pid = nspawn.pid();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = nspawn.try_wait()? {
                bail!("systemd-nspawn exited with {status}:\n{}", nspawn.log());
            }
            let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                .unwrap_or_default();
            for child in children.split_whitespace() {
                let comm =
                    std::fs::read_to_string(format!("/proc/{child}/comm")).unwrap_or_default();
                if comm.trim() == "systemd" {
                    return child.parse().context("a pid");
                }
            }
            if Instant::now() > deadline {
                bail!("systemd did not start in the container:\n{}", nspawn.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Run a shell script inside the container as root (a login-like
    /// environment: PATH of the container, cwd /root).
    pub fn sh(&self, script: &str) -> Result<Output> {
        Command::new("nsenter")
            .args(["--target", &self.leader.to_string()])
            .args([
                "--mount", "--uts", "--ipc", "--net", "--pid", "--root", "--wd",
            ])
            .args(["env", "-i", "HOME=/root", "TERM=dumb", "LANG=C.UTF-8"])
            .arg("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .args(["sh", "-c", &format!("cd /root && {script}")])
            .output()
            .context("failed to run nsenter")
    }

    /// Like [`Container::sh`], but fails with the output unless it exits 0.
    pub fn sh_ok(&self, script: &str) -> Result<String> {
        let out = self.sh(script)?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!(
                "`{script}` in the container failed ({}):\n{stdout}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(stdout)
    }

    /// Copy a host file into the container's filesystem.
    pub fn copy_in(&self, from: &Path, to: &str) -> Result<()> {
        let data = std::fs::read(from).with_context(|| format!("read {}", from.display()))?;
        let mut cmd = Command::new("nsenter");
        cmd.args(["--target", &self.leader.to_string(), "--mount", "--root"])
            .args([
                "sh",
                "-c",
                "mkdir -p \"$(dirname \"$1\")\" && cat > \"$1\"",
                "sh",
                to,
            ])
            .stdin(std::process::Stdio::piped());
        let mut child = cmd.spawn().context("failed to run nsenter")?;
        std::io::Write::write_all(child.stdin.as_mut().expect("piped"), &data)?;
        drop(child.stdin.take());
        let status = child.wait()?;
        if !status.success() {
            bail!("copying {} to {to} in the container failed", from.display());
        }
        Ok(())
    }

    /// The console output of the boot so far.
    pub fn log(&self) -> String {
        self.nspawn.as_ref().map(Child::log).unwrap_or_default()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if let Some(mut nspawn) = self.nspawn.take() {
            // SIGTERM makes nspawn power the container off cleanly.
            let _ = nspawn.stop(Duration::from_secs(30));
            // If it had to be killed, make sure its PID 1 (and with it the
            // whole PID namespace) goes too.
            if Path::new(&format!("/proc/{}", self.leader)).exists() {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(self.leader as i32, libc::SIGKILL) };
            }
        }
        let _ = std::fs::remove_file(self.dir.with_extension("boot.sh"));
        let _ = std::fs::remove_dir(&self.dir);
    }
}
