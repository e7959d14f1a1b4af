//! Decides at build time whether the tests that need root run or show as
//! ignored: libtest has no way for a running test to say "skipped", and a
//! skip reported as "ok" would claim something that was not checked.
//! Root (effective UID 0) or CI=true: they run (under CI without root they
//! fail, as a skip in CI must). Otherwise `cargo test` lists them as ignored
//! with the reason.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(wardnet_root_tests)");
    for var in ["CI", "USER", "SUDO_UID"] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    if ci || effective_uid() == Some(0) {
        println!("cargo::rustc-cfg=wardnet_root_tests");
    }
}

/// The effective UID from /proc (no libc needed in a build script).
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}
