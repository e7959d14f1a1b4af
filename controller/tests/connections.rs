//! Idle and slow clients cannot lock agents and admins out: the controller
//! binary, run with the open-file limit of the shipped systemd unit, answers
//! admin calls within a second while 2,000 idle and 2,000 slow connections
//! are held, then closes those connections itself; and an agent's long-poll
//! outlives the idle timeout.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_wardnet-controller");

/// `LimitNOFILE=` of the shipped unit.
fn unit_nofile() -> u64 {
    let unit = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../systemd/wardnet-controller.service"
    );
    let text = std::fs::read_to_string(unit).expect("read the unit");
    let v = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("LimitNOFILE="))
        .expect(
            "the unit sets LimitNOFILE= (the default 1,024 caps a controller at ~1,000 agents)",
        );
    v.trim().parse().expect("LimitNOFILE is a number")
}

fn nofile() -> (u64, u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    (lim.rlim_cur, lim.rlim_max)
}

/// This test process holds the client ends: let it open enough files.
fn raise_own_limit(need: u64) {
    let (_, hard) = nofile();
    let lim = libc::rlimit {
        rlim_cur: hard,
        rlim_max: hard,
    };
    // SAFETY: setrlimit reads the struct we own.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    assert!(
        nofile().0 >= need,
        "this test needs {need} open files; the hard limit is {hard}"
    );
}

struct Controller {
    child: Child,
    addr: SocketAddr,
    admin: String,
    _dir: tempfile::TempDir,
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

fn start(extra: &str, files: u64) -> Controller {
    let (_, hard) = nofile();
    start_limited(extra, files.min(hard), files.min(hard))
}

/// The controller, run with a soft and a hard open-file limit.
fn start_limited(extra: &str, soft: u64, hard: u64) -> Controller {
    let dir = tempfile::tempdir().expect("tempdir");
    let addr = free_port();
    let config = dir.path().join("controller.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"{addr}\"\nplain_http = true\ndata_dir = \"{}\"\n{extra}\n\
             [network]\noverlay_ipv4 = \"100.64.0.0/16\"\nrouted_prefixes = [\"100.100.0.0/16\"]\n",
            dir.path().join("data").display()
        ),
    )
    .expect("write config");
    let out = Command::new(BIN)
        .args(["admin-token", "create", "--config"])
        .arg(&config)
        .output()
        .expect("admin-token create");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let admin = String::from_utf8(out.stdout)
        .expect("utf8")
        .trim()
        .to_owned();
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--config"])
        .arg(&config)
        .env("WARDNET_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let limit = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: setrlimit is async-signal-safe; it runs in the child before exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().expect("start the controller");
    let c = Controller {
        child,
        addr,
        admin,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "the controller did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    c
}

/// One admin call on a fresh connection: the status and how long it took.
fn admin_call(addr: SocketAddr, token: &str, path: &str) -> (u16, Duration) {
    let t0 = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    let status = resp
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, t0.elapsed())
}

/// Whether the server closed the connection (EOF or reset) within `within`.
fn closed_by_server(s: &mut TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 512];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        s.set_read_timeout(Some(left)).expect("timeout");
        match s.read(&mut buf) {
            Ok(0) => return true,
            // A 408 or 400 before closing is fine; keep reading for the close.
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

#[test]
fn admin_calls_are_answered_while_thousands_of_idle_and_slow_connections_are_held() {
    let limit = unit_nofile();
    assert!(
        limit >= 65_536,
        "LimitNOFILE={limit} is too low for a national fleet"
    );
    raise_own_limit(4_500);
    let c = start(
        "[http]\nheader_read_timeout_secs = 10\nidle_timeout_secs = 90",
        limit,
    );

    let mut idle = Vec::with_capacity(2_000);
    for _ in 0..2_000 {
        idle.push(TcpStream::connect(c.addr).expect("idle connection"));
    }
    let mut slow = Vec::with_capacity(2_000);
    for _ in 0..2_000 {
        let mut s = TcpStream::connect(c.addr).expect("slow connection");
        s.write_all(b"GET /v1/status HTTP/1.1\r\nHo")
            .expect("first bytes");
        slow.push(s);
    }
    // Keep the slow ones trickling while admin calls go through.
    let mut worst = Duration::ZERO;
    for round in 0..20 {
        for s in slow.iter_mut().skip(round % 4).step_by(4) {
            let _ = s.write_all(b"s");
        }
        let path = if round % 2 == 0 {
            "/v1/status"
        } else {
            "/v1/regions"
        };
        let (status, took) = admin_call(c.addr, &c.admin, path);
        assert_eq!(status, 200, "admin call {round} answered");
        worst = worst.max(took);
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("slowest of 20 admin calls while 4,000 connections were held: {worst:?}");
    assert!(
        worst < Duration::from_secs(1),
        "an admin call took {worst:?}"
    );

    // Neither the slow ones (headers never finish) nor the idle ones (not a
    // byte sent) outlive the header timeout: the server closes them.
    let deadline = Instant::now() + Duration::from_secs(20);
    for (what, conns) in [("slow", &mut slow), ("idle", &mut idle)] {
        let mut open = 0;
        for s in conns.iter_mut() {
            let left = deadline.saturating_duration_since(Instant::now());
            if !closed_by_server(s, left.max(Duration::from_millis(10))) {
                open += 1;
            }
        }
        assert_eq!(
            open, 0,
            "{what} connections still open 20 s after the header timeout began"
        );
    }
}

/// A kept-alive connection that sits idle after a request is closed after
/// `idle_timeout_secs`; a long-poll that waits longer than that is a request
/// in flight and is answered, not cut.
#[test]
fn idle_keep_alive_connections_close_but_long_polls_do_not() {
    let c = start(
        "[http]\nheader_read_timeout_secs = 30\nidle_timeout_secs = 2\n[long_poll]\ntimeout_secs = 5",
        unit_nofile(),
    );
    wardnet_controller::init_crypto();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let http = reqwest::Client::new();
        let url = format!("http://{}", c.addr);
        let post = |path: &str, body: serde_json::Value| {
            http.post(format!("{url}{path}"))
                .bearer_auth(&c.admin)
                .json(&body)
                .send()
        };
        let r = post("/v1/regions", serde_json::json!({"name": "north"}))
            .await
            .expect("region");
        assert_eq!(r.status(), 201);
        let r = post(
            "/v1/sites",
            serde_json::json!({"name": "gp-a", "region": "north", "role": "spoke"}),
        )
        .await
        .expect("site");
        let created: serde_json::Value = r.json().await.expect("json");
        let token = created["token"].as_str().expect("token").to_owned();
        let key = wardnet_common::PrivateKey::generate().public_key();
        let r = http
            .post(format!("{url}/v1/enroll"))
            .json(&serde_json::json!({"token": token, "public_key": key}))
            .send()
            .await
            .expect("enrol");
        assert_eq!(r.status(), 201);
        let enrolled: serde_json::Value = r.json().await.expect("json");
        let credential = enrolled["credential"]
            .as_str()
            .expect("credential")
            .to_owned();
        let r = http
            .get(format!("{url}/v1/agent/config"))
            .bearer_auth(&credential)
            .send()
            .await
            .expect("config");
        let cfg: serde_json::Value = r.json().await.expect("json");
        let revision = cfg["revision"].as_u64().expect("revision");

        let t0 = Instant::now();
        let r = http
            .get(format!("{url}/v1/agent/config?revision={revision}&wait=4"))
            .bearer_auth(&credential)
            .send()
            .await
            .expect("a 4 s long-poll survives a 2 s idle timeout");
        assert_eq!(r.status(), 204);
        assert!(t0.elapsed() >= Duration::from_secs(3), "{:?}", t0.elapsed());
    });

    // A raw keep-alive connection: one request, then silence.
    let mut s = TcpStream::connect(c.addr).expect("connect");
    write!(
        s,
        "GET /v1/status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
        c.admin
    )
    .expect("write");
    let mut buf = [0u8; 4096];
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let n = s.read(&mut buf).expect("answer");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let t0 = Instant::now();
    assert!(
        closed_by_server(&mut s, Duration::from_secs(8)),
        "an idle keep-alive connection stays open"
    );
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(1_500),
        "closed too early: {took:?}"
    );
}

/// Run by hand as the README shows, from a shell whose soft open-file
/// limit is 1,024: `serve` raises it to the hard limit. And a kept-alive
/// connection idle for longer than the header timeout (but not the idle
/// timeout) is still open for its next request.
#[test]
fn serve_raises_its_open_file_limit_and_keep_alive_outlasts_the_header_timeout() {
    let (_, hard) = nofile();
    let c = start_limited(
        "[http]\nheader_read_timeout_secs = 1\nidle_timeout_secs = 8",
        1024.min(hard),
        hard,
    );
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", c.child.id())).expect("limits");
    let files: Vec<u64> = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a line for open files")
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert_eq!(files, vec![hard, hard], "{limits}");

    let mut s = TcpStream::connect(c.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let ask = |s: &mut TcpStream| {
        write!(
            s,
            "GET /v1/status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
            c.admin
        )
        .expect("write");
        let mut buf = [0u8; 8192];
        let n = s.read(&mut buf).expect("answer");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert!(ask(&mut s).starts_with("HTTP/1.1 200"));
    std::thread::sleep(Duration::from_secs(3));
    let again = ask(&mut s);
    assert!(
        again.starts_with("HTTP/1.1 200"),
        "closed after the 1 s header timeout though idle_timeout_secs is 8: {again:?}"
    );
}
