//! The systemd units are valid (`systemd-analyze verify`) and the agent's
//! sandbox keeps `systemd-analyze security` exposure at 2.5 or less.
//!
//! `verify` needs the ExecStart binaries to exist, so the units are checked
//! in a scratch root (`--root`) holding the units, systemd's own units and
//! stand-in executables at /usr/bin/wardnet-*: this test is about the unit
//! files; the package test (scripts/package.sh) runs the real binaries.
//! Without systemd-analyze the test says SKIPPED, except under CI=true.

use std::path::{Path, PathBuf};
use std::process::Command;

const UNITS: [&str; 2] = ["wardnet-agent.service", "wardnet-controller.service"];
const MAX_AGENT_EXPOSURE: f64 = 2.5;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives in the workspace")
        .to_owned()
}

fn have_systemd_analyze(test: &str) -> bool {
    let found = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    wardnet_e2e::require(
        test,
        if found {
            Ok(())
        } else {
            Err("systemd-analyze not found (apt-get install systemd)".into())
        },
    )
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir") {
        let e = e.expect("entry");
        let ty = e.file_type().expect("file type");
        let dst = to.join(e.file_name());
        if ty.is_symlink() {
            let target = std::fs::read_link(e.path()).expect("readlink");
            std::os::unix::fs::symlink(target, &dst).expect("symlink");
        } else if ty.is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), &dst).expect("copy");
        }
    }
}

/// A scratch root with systemd's units, ours, and stand-in binaries for the
/// units' Exec lines.
fn scratch_root() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().expect("tempdir");
    let r = root.path();
    for dir in ["/usr/lib/systemd/system", "/lib/systemd/system"] {
        if Path::new(dir).is_dir() {
            copy_dir(Path::new(dir), &r.join("usr/lib/systemd/system"));
            break;
        }
    }
    let units = r.join("etc/systemd/system");
    std::fs::create_dir_all(&units).expect("mkdir");
    for u in UNITS {
        std::fs::copy(repo().join("systemd").join(u), units.join(u)).expect("copy unit");
    }
    for b in [
        "usr/bin/wardnet-agent",
        "usr/bin/wardnet-controller",
        "bin/kill",
    ] {
        let p = r.join(b);
        std::fs::create_dir_all(p.parent().expect("a parent")).expect("mkdir");
        std::fs::write(&p, "#!/bin/sh\nexit 0\n").expect("write stub");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    root
}

#[test]
fn units_verify_cleanly() {
    if !have_systemd_analyze("units_verify_cleanly") {
        return;
    }
    let root = scratch_root();
    let mut cmd = Command::new("systemd-analyze");
    cmd.arg("verify")
        .arg("--man=no")
        .arg(format!("--root={}", root.path().display()));
    for u in UNITS {
        cmd.arg(format!("/etc/systemd/system/{u}"));
    }
    let out = cmd.output().expect("run systemd-analyze verify");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {}\n{stderr}",
        out.status
    );
}

/// The figure from `systemd-analyze security`'s last line: "→ Overall
/// exposure level for x.service: 2.2 OK".
fn exposure(output: &str) -> Option<f64> {
    let line = output
        .lines()
        .rev()
        .find(|l| l.contains("Overall exposure level"))?;
    let after = line.rsplit_once(": ")?.1;
    after.split_whitespace().next()?.parse().ok()
}

#[test]
fn exposure_parses() {
    assert_eq!(
        exposure("x\n→ Overall exposure level for wardnet-agent.service: 2.2 OK :-)\n"),
        Some(2.2)
    );
    assert_eq!(exposure("nothing"), None);
}

#[test]
fn agent_unit_exposure_is_at_most_2_5() {
    if !have_systemd_analyze("agent_unit_exposure_is_at_most_2_5") {
        return;
    }
    let root = scratch_root();
    for u in UNITS {
        let out = Command::new("systemd-analyze")
            .args(["security", "--offline=true", "--no-pager"])
            .arg(format!("--root={}", root.path().display()))
            .arg(format!("/etc/systemd/system/{u}"))
            .env("SYSTEMD_COLORS", "0")
            .output()
            .expect("run systemd-analyze security");
        let text = String::from_utf8_lossy(&out.stdout);
        let figure = exposure(&text).unwrap_or_else(|| {
            panic!(
                "no exposure figure for {u}: {text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        eprintln!("{u}: exposure {figure}");
        assert!(
            figure <= MAX_AGENT_EXPOSURE,
            "{u}: exposure {figure} > {MAX_AGENT_EXPOSURE}\n{text}"
        );
    }
}
