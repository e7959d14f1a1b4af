//! A throwaway PostgreSQL server for tests: `initdb` and `postgres` from the
//! Debian package, in a temporary directory, listening only on a Unix socket
//! in that directory (no TCP port, nothing shared with the machine), as an
//! unprivileged user when the tests run as root (`nobody`: PostgreSQL
//! refuses to run as root). [`TempPostgres`]'s drop stops the server and
//! removes the directory, also when a test fails.
//!
//! ```no_run
//! let Some(pg) = wardnet_pgtest::start_or_skip("my_test") else { return };
//! let url = pg.url("postgres");
//! ```

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The port number only names the socket file (`.s.PGSQL.<port>`); there
/// is no TCP listener.
const PORT: u16 = 5432;
/// The superuser `initdb` creates.
pub const USER: &str = "wardnet";

pub struct TempPostgres {
    dir: tempfile::TempDir,
    server: Option<Child>,
}

/// Where the Debian package puts the server's programs: the newest
/// `/usr/lib/postgresql/<version>/bin` holding `initdb`.
pub fn bindir() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b)
}

/// Start a server, or: print `SKIPPED <test>: …` and return `None` when
/// PostgreSQL is not installed, except under `CI=true`, where that panics (a
/// skip in CI is a failure). A server that is installed but fails to start
/// always panics.
pub fn start_or_skip(test: &str) -> Option<TempPostgres> {
    if bindir().is_none() {
        let msg =
            format!("SKIPPED {test}: PostgreSQL is not installed (apt-get install postgresql)");
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{msg}; CI=true, and a skip in CI is a failure");
        }
        eprintln!("{msg}");
        return None;
    }
    Some(TempPostgres::start().unwrap_or_else(|e| panic!("{test}: {e}")))
}

/// The uid and gid to run the server as when we are root.
fn unprivileged() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    // nobody:nogroup on Debian.
    Some((65534, 65534))
}

/// Start `postgres` on the data directory under `dir`, logging to
/// `dir/postgres.log` (appended: a restart keeps the earlier log).
fn spawn_server(bin: &Path, dir: &Path, ids: Option<(u32, u32)>) -> Result<Child, String> {
    let data = dir.join("data");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("postgres.log"))
        .map_err(|e| format!("cannot open the server log: {e}"))?;
    if let Some((uid, gid)) = ids {
        chown(&dir.join("postgres.log"), uid, gid)?;
    }
    let mut postgres = Command::new(bin.join("postgres"));
    postgres
        .arg("-D")
        .arg(&data)
        .arg("-k")
        .arg(dir)
        .args(["-p", &PORT.to_string()])
        .args(["-c", "listen_addresses="])
        .args(["-c", "max_connections=300"])
        // Durability as in production: a commit is on disk before it
        // is answered.
        .args(["-c", "fsync=on", "-c", "synchronous_commit=on"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    as_user(&mut postgres, ids);
    postgres
        .spawn()
        .map_err(|e| format!("cannot start postgres: {e}"))
}

impl TempPostgres {
    /// `initdb` and start a server; ready to accept connections when this
    /// returns.
    pub fn start() -> Result<Self, String> {
        let bin = bindir().ok_or("PostgreSQL is not installed (apt-get install postgresql)")?;
        let dir = tempfile::Builder::new()
            .prefix("wardnet-pg-")
            .tempdir()
            .map_err(|e| format!("cannot make a temporary directory: {e}"))?;
        let data = dir.path().join("data");
        let ids = unprivileged();
        if let Some((uid, gid)) = ids {
            chown(dir.path(), uid, gid)?;
        }
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("chmod {}: {e}", dir.path().display()))?;
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .args(["--auth=trust", "--no-sync", "--encoding=UTF8", "--locale=C"])
            .arg(format!("--username={USER}"))
            .arg("-D")
            .arg(&data)
            .stdin(Stdio::null());
        as_user(&mut initdb, ids);
        let out = initdb
            .output()
            .map_err(|e| format!("cannot run initdb: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let server = spawn_server(&bin, dir.path(), ids)?;
        let mut me = TempPostgres {
            dir,
            server: Some(server),
        };
        me.wait_ready(&bin)?;
        Ok(me)
    }

    fn wait_ready(&mut self, bin: &Path) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = Command::new(bin.join("pg_isready"))
                .arg("-h")
                .arg(self.dir.path())
                .args(["-p", &PORT.to_string(), "-U", USER, "-d", "postgres", "-q"])
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return Ok(());
            }
            if let Some(Ok(Some(status))) = self.server.as_mut().map(Child::try_wait) {
                return Err(format!(
                    "postgres exited ({status}): {}",
                    self.log().unwrap_or_default()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "postgres did not accept connections within 30 s: {}",
                    self.log().unwrap_or_default()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).ok()
    }

    /// The directory holding the server's socket.
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// A libpq connection string for database `db` (key=value form: the
    /// socket directory is a path).
    pub fn url(&self, db: &str) -> String {
        format!(
            "host={} port={PORT} user={USER} dbname={db}",
            self.dir.path().display()
        )
    }

    /// Create a database (a fresh one per test keeps tests apart).
    pub fn create_database(&self, db: &str) -> Result<(), String> {
        let bin = bindir().ok_or("PostgreSQL is not installed")?;
        let out = Command::new(bin.join("createdb"))
            .arg("-h")
            .arg(self.dir.path())
            .args(["-p", &PORT.to_string(), "-U", USER, db])
            .output()
            .map_err(|e| format!("cannot run createdb: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "createdb {db} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(())
    }

    /// The server's process id.
    pub fn pid(&self) -> Option<u32> {
        self.server.as_ref().map(Child::id)
    }

    /// Stop the server (a fast shutdown: sessions are ended, the data
    /// stays), as an operator or a crash would take the database away.
    pub fn stop(&mut self) -> Result<(), String> {
        let Some(mut child) = self.server.take() else {
            return Ok(());
        };
        // SAFETY: kill on the pid of a child we spawned and have not reaped.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGINT);
        }
        child
            .wait()
            .map(|_| ())
            .map_err(|e| format!("waiting for postgres to stop: {e}"))
    }

    /// Start the server again on the same data, ready when this returns.
    pub fn restart(&mut self) -> Result<(), String> {
        self.stop()?;
        let bin = bindir().ok_or("PostgreSQL is not installed")?;
        self.server = Some(spawn_server(&bin, self.dir.path(), unprivileged())?);
        self.wait_ready(&bin)
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        if let Some(mut child) = self.server.take() {
            // SIGQUIT: immediate shutdown; the data is thrown away anyway.
            // SAFETY: kill on the pid of a child we spawned and have not reaped.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGQUIT);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
        // The TempDir removes the directory after this.
    }
}

fn as_user(cmd: &mut Command, ids: Option<(u32, u32)>) {
    if let Some((uid, gid)) = ids {
        // (std drops the supplementary groups when it changes the uid.)
        cmd.uid(uid).gid(gid);
    }
}

fn chown(path: &Path, uid: u32, gid: u32) -> Result<(), String> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .map_err(|e| format!("chown {}: {e}", path.display()))
}
