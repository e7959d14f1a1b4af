//! The store holds token and credential hashes: its directory is 0700 and
//! its files 0600 whatever the umask of whoever starts the controller.

use std::os::unix::fs::PermissionsExt;

use wardnet_controller::store::SqliteStore;

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777
}

#[test]
fn data_directory_and_database_are_private_under_umask_0022() {
    // This file holds one test: the umask is the process's.
    // SAFETY: umask only sets the process's file-creation mask.
    unsafe { libc::umask(0o022) };
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data").join("controller");
    let db = dir.join("wardnet.db");
    let store = SqliteStore::open(&db).expect("open");
    assert_eq!(mode(&dir), 0o700, "data directory");
    assert_eq!(mode(&db), 0o600, "database");
    for suffix in ["-wal", "-shm"] {
        let p = dir.join(format!("wardnet.db{suffix}"));
        if p.exists() {
            assert_eq!(mode(&p) & 0o077, 0, "{}", p.display());
        }
    }
    drop(store);

    // A database left readable by an older version is tightened.
    let old = tmp.path().join("old.db");
    std::fs::write(&old, b"").expect("create");
    std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let _store = SqliteStore::open(&old).expect("open");
    assert_eq!(mode(&old), 0o600);
}
