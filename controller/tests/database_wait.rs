//! `serve` on PostgreSQL at start: a database that does not answer yet is
//! waited for (systemd would otherwise restart the controller every 2 s
//! until its start limit gave up), and one that refuses the connection
//! ends it at once with the server's reason.

use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_wardnet-controller");

fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

struct Serve {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(url: &str) -> Serve {
    let dir = tempfile::tempdir().expect("tempdir");
    let addr = free_port();
    let config = dir.path().join("controller.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"{addr}\"\nplain_http = true\ndata_dir = \"{}\"\n\
             [database]\nurl = \"{url}\"\n\
             [network]\noverlay_ipv4 = \"100.64.0.0/16\"\nrouted_prefixes = [\"100.100.0.0/16\"]\n",
            dir.path().join("data").display()
        ),
    )
    .expect("write config");
    let child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .env("WARDNET_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the controller");
    Serve {
        child,
        addr,
        _dir: dir,
    }
}

#[test]
fn serve_waits_for_a_database_that_does_not_answer_and_stops_at_one_that_refuses() {
    let Some(mut pg) = wardnet_pgtest::start_or_skip(
        "serve_waits_for_a_database_that_does_not_answer_and_stops_at_one_that_refuses",
    ) else {
        return;
    };
    pg.stop().expect("stop postgres");
    let mut s = serve(&pg.url("postgres"));
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        s.child.try_wait().expect("wait").is_none(),
        "serve exited while the database was away"
    );
    assert!(
        TcpStream::connect(s.addr).is_err(),
        "serving without a store"
    );
    pg.restart().expect("restart postgres");
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(s.addr).is_err() {
        assert!(s.child.try_wait().expect("wait").is_none(), "serve exited");
        assert!(
            Instant::now() < deadline,
            "not serving 30 s after the database came back"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(s);

    // The server answers, and says no: no waiting, its reason in the error.
    let s = serve(&pg.url("no-such-db"));
    let out = exit_within(s, Duration::from_secs(20));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no-such-db")
            && err.contains("does not exist")
            && !err.contains("waiting for the database"),
        "{err}"
    );
}

/// The exit and standard error of a controller expected to end within
/// `limit` (killed, and the test failed, if it does not).
fn exit_within(mut s: Serve, limit: Duration) -> std::process::Output {
    let deadline = Instant::now() + limit;
    while s.child.try_wait().expect("wait").is_none() {
        assert!(
            Instant::now() < deadline,
            "serve did not exit within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut err = String::new();
    if let Some(mut e) = s.child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut err);
    }
    std::process::Output {
        status: s.child.wait().expect("status"),
        stdout: Vec::new(),
        stderr: err.into_bytes(),
    }
}
