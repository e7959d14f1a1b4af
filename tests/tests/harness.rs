//! The harness's own tests: namespaces are gone after drop (also after a
//! panic), processes inside are killed, a veth pair carries traffic.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wardnet_e2e::{netns_list, require_root, unique_ifname, veth, Netns};

fn exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
        || netns_list()
            .expect("ip netns list")
            .iter()
            .any(|n| n == name)
}

fn alive(pid: i32) -> bool {
    // A zombie still has a /proc entry; count it as dead.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

#[test]
#[cfg_attr(
    not(wardnet_root_tests),
    ignore = "needs root (network namespaces, TUN devices): run the tests as root"
)]
fn namespace_is_created_and_deleted_on_drop() {
    if !require_root("namespace_is_created_and_deleted_on_drop") {
        return;
    }
    let ns = Netns::new("life").expect("create");
    let name = ns.name().to_owned();
    assert!(
        name.starts_with(&format!("wn-life-{}-", std::process::id())),
        "{name}"
    );
    assert!(exists(&name));
    // The namespace is really separate: only `lo` inside.
    let links = ns.ip(&["-o", "link"]).expect("ip link");
    assert_eq!(links.lines().count(), 1, "{links}");
    drop(ns);
    assert!(!exists(&name), "{name} left behind");
}

#[test]
#[cfg_attr(
    not(wardnet_root_tests),
    ignore = "needs root (network namespaces, TUN devices): run the tests as root"
)]
fn exec_errors_carry_stderr() {
    if !require_root("exec_errors_carry_stderr") {
        return;
    }
    let ns = Netns::new("exec").expect("create");
    assert_eq!(ns.exec(&["echo", "hi"]).expect("echo").trim(), "hi");
    let err = ns
        .exec(&["ip", "link", "show", "nosuchif0"])
        .expect_err("fails");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("nosuchif0") && msg.contains("does not exist"),
        "{msg}"
    );
}

#[test]
#[cfg_attr(
    not(wardnet_root_tests),
    ignore = "needs root (network namespaces, TUN devices): run the tests as root"
)]
fn cleanup_runs_when_a_test_panics() {
    if !require_root("cleanup_runs_when_a_test_panics") {
        return;
    }
    /// Namespace name, guarded child PID, unguarded PID, guarded child's log.
    type Seen = Option<(String, i32, i32, PathBuf)>;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let seen2 = Arc::clone(&seen);
    let result = std::panic::catch_unwind(move || {
        let ns = Netns::new("panic").expect("create");
        // One process held by a Child guard, one started without a guard.
        let guarded = ns.spawn(&["sleep", "1000"]).expect("spawn");
        let loose = ns
            .command("sleep")
            .arg("1000")
            .spawn()
            .expect("spawn unguarded");
        let loose_pid = i32::try_from(loose.id()).expect("pid");
        std::mem::forget(loose); // Not reaped by us: only Netns's drop can stop it.
        let guarded_pid = i32::try_from(guarded.pid()).expect("pid");
        std::thread::sleep(Duration::from_millis(100));
        assert!(ns.pids().expect("pids").contains(&guarded_pid));
        *seen2.lock().expect("lock") = Some((
            ns.name().to_owned(),
            guarded_pid,
            loose_pid,
            guarded.log_path().to_owned(),
        ));
        panic!("deliberate panic inside a test");
    });
    assert!(result.is_err());
    let (name, guarded_pid, loose_pid, log) = seen.lock().expect("lock").clone().expect("ran");
    // The log of a process whose test panicked is kept for the post-mortem.
    assert!(log.exists(), "{} removed", log.display());
    let _ = std::fs::remove_file(&log);
    assert!(!exists(&name), "{name} left behind after a panic");
    assert!(
        !alive(guarded_pid),
        "guarded child {guarded_pid} still running"
    );
    assert!(
        !alive(loose_pid),
        "process {loose_pid} inside the namespace still running"
    );
    // Reap the unguarded one (it is our child) so no zombie lingers.
    // SAFETY: waitpid on our own child pid; no memory is shared.
    unsafe { libc::waitpid(loose_pid, std::ptr::null_mut(), 0) };
}

#[test]
#[cfg_attr(
    not(wardnet_root_tests),
    ignore = "needs root (network namespaces, TUN devices): run the tests as root"
)]
fn child_is_killed_on_drop_and_stop_reports_status() {
    if !require_root("child_is_killed_on_drop_and_stop_reports_status") {
        return;
    }
    let ns = Netns::new("child").expect("create");
    let child = ns.spawn(&["sleep", "1000"]).expect("spawn");
    let pid = i32::try_from(child.pid()).expect("pid");
    assert!(alive(pid));
    drop(child);
    assert!(!alive(pid));
    let mut sh = ns
        .spawn(&["sh", "-c", "echo started; exec sleep 1000"])
        .expect("spawn");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(sh.log().trim(), "started");
    let status = sh.stop(Duration::from_secs(2)).expect("stop");
    assert!(!status.success());
}

#[test]
#[cfg_attr(
    not(wardnet_root_tests),
    ignore = "needs root (network namespaces, TUN devices): run the tests as root"
)]
fn veth_pair_pings_across_v4_and_v6() {
    if !require_root("veth_pair_pings_across_v4_and_v6") {
        return;
    }
    let a = Netns::new("pinga").expect("create");
    let b = Netns::new("pingb").expect("create");
    let v4 = veth(
        &a,
        &b,
        "198.51.100.1/24".parse().expect("addr"),
        "198.51.100.2/24".parse().expect("addr"),
    )
    .expect("veth");
    assert!(v4.a.len() <= 15 && v4.b.len() <= 15);
    let v6 = veth(
        &a,
        &b,
        "2001:db8:1::1/64".parse().expect("addr"),
        "2001:db8:1::2/64".parse().expect("addr"),
    )
    .expect("second veth");
    assert_ne!(v4.a, v6.a);
    a.exec(&["ping", "-c1", "-W2", "198.51.100.2"])
        .expect("ping v4");
    b.exec(&["ping", "-c1", "-W2", "2001:db8:1::1"])
        .expect("ping v6");
    a.enable_forwarding().expect("forwarding");
    assert_eq!(
        a.exec(&["cat", "/proc/sys/net/ipv4/ip_forward"])
            .expect("read")
            .trim(),
        "1"
    );
    assert!(unique_ifname("wnt").len() <= 15);
}
