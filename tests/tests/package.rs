//! The Debian packages build, install with dpkg, put every file where the
//! units expect it, and their binaries, completions and man pages work
//! (`scripts/package.sh --install-test`, which purges them afterwards).
//!
//! Opt-in, because it builds release binaries and installs packages into
//! the running system: set WARDNET_PACKAGE_TEST=1 (as root, on a machine
//! you may install packages on, with cargo-deb installed). CI should run it
//! (or the script directly) as a step of its own.

use std::path::Path;
use std::process::Command;

#[test]
fn packages_install_and_land_where_the_units_expect() {
    if std::env::var("WARDNET_PACKAGE_TEST").as_deref() != Ok("1") {
        eprintln!(
            "SKIPPED packages_install_and_land_where_the_units_expect: set WARDNET_PACKAGE_TEST=1 \
             (root, cargo-deb) to build and install the .debs"
        );
        return;
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    // Release profile: the outer `cargo test` holds the debug profile's lock.
    let out = Command::new(repo.join("scripts/package.sh"))
        .arg("--install-test")
        .env("WARDNET_PACKAGE_PROFILE", "release")
        .current_dir(repo)
        .output()
        .expect("run scripts/package.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("package install test passed"),
        "scripts/package.sh --install-test failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
}
