//! The `wardnet-controller` command line as a NOC engineer and a script use
//! it: every command that prints a result takes `-o table|json` and prints
//! JSON with `-o json`; `completion` prints a script per shell; every man
//! page that one page names exists, and each subcommand documents its
//! options.

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use clap::CommandFactory;
use common::TestController;
use serde_json::{json, Value};
use wardnet_controller::cli::Cli;

const BIN: &str = env!("CARGO_BIN_EXE_wardnet-controller");

/// Every visible leaf command, as its words (`sites add`).
fn leaves(cmd: &clap::Command, prefix: &str, out: &mut BTreeSet<String>) {
    let subs: Vec<_> = cmd
        .get_subcommands()
        .filter(|c| !c.is_hide_set() && c.get_name() != "help")
        .collect();
    if subs.is_empty() {
        out.insert(prefix.trim().to_owned());
    }
    for s in subs {
        leaves(s, &format!("{prefix} {}", s.get_name()), out);
    }
}

/// Commands that print no result: a daemon and the completion script.
const NOT_RESULTS: &[&str] = &["serve", "completion"];

#[test]
fn every_command_that_prints_a_result_takes_output_table_or_json() {
    let mut all = BTreeSet::new();
    leaves(&Cli::command(), "", &mut all);
    let mut cli = Cli::command();
    cli.build();
    for words in &all {
        if NOT_RESULTS.contains(&words.as_str()) {
            continue;
        }
        let mut cmd = &cli;
        for w in words.split(' ') {
            cmd = cmd.find_subcommand(w).expect("subcommand");
        }
        let output = cmd
            .get_arguments()
            .find(|a| a.get_id() == "output")
            .unwrap_or_else(|| panic!("`{words}` has no -o/--output"));
        assert_eq!(output.get_short(), Some('o'), "{words}");
        let values: Vec<String> = output
            .get_possible_values()
            .iter()
            .map(|v| v.get_name().to_owned())
            .collect();
        assert_eq!(values, ["table", "json"], "{words}");
    }
}

fn run(t: &TestController, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env("WARDNET_URL", &t.url)
        .env("WARDNET_TOKEN", &t.admin)
        .env_remove("WARDNET_CA_CERT")
        .output()
        .expect("run wardnet-controller")
}

fn json(t: &TestController, args: &[&str]) -> Value {
    let mut full = args.to_vec();
    full.extend(["-o", "json"]);
    let out = run(t, &full);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{args:?} -o json printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_prints_json_with_output_json() {
    let t = TestController::start().await;
    let mut covered = BTreeSet::new();
    let mut check = |words: &str, args: &[&str]| -> Value {
        covered.insert(words.to_owned());
        json(&t, args)
    };
    let v = check("regions add", &["regions", "add", "north"]);
    assert_eq!(v["name"], "north");
    check("regions add", &["regions", "add", "south", "--mesh"]);
    assert!(check("regions list", &["regions", "list"]).is_array());
    assert_eq!(
        check("regions show", &["regions", "show", "north"])["name"],
        "north"
    );
    let v = check(
        "orgs add",
        &["orgs", "add", "trust-a", "--description", "Trust A"],
    );
    assert_eq!(v["description"], "Trust A");
    check("orgs add", &["orgs", "add", "gone-soon"]);
    assert!(check("orgs list", &["orgs", "list"]).is_array());
    assert_eq!(check("orgs show", &["orgs", "show", "trust-a"])["sites"], 0);
    let v = check(
        "orgs delegate",
        &["orgs", "delegate", "trust-a", "10.1.0.0/16", "10.3.0.0/16"],
    );
    assert_eq!(v["delegated"], json!(["10.1.0.0/16", "10.3.0.0/16"]), "{v}");
    let v = check(
        "orgs undelegate",
        &["orgs", "undelegate", "trust-a", "10.3.0.0/16"],
    );
    assert_eq!(v["delegated"], json!(["10.1.0.0/16"]), "{v}");
    assert_eq!(
        check("orgs delete", &["orgs", "delete", "gone-soon"])["kind"],
        "organisation"
    );
    let v = check(
        "sites add",
        &[
            "sites",
            "add",
            "gp-a",
            "--region",
            "north",
            "--role",
            "spoke",
            "--lan",
            "10.1.0.0/24",
            "--org",
            "trust-a",
        ],
    );
    assert_eq!(v["site"]["org"], "trust-a", "{v}");
    assert!(
        v["token"].as_str().is_some_and(|s| s.starts_with("wne_")),
        "{v}"
    );
    assert!(
        v["token_expires_at"]
            .as_str()
            .is_some_and(|s| s.ends_with('Z')),
        "times are RFC 3339: {v}"
    );
    let key = wardnet_common::PrivateKey::generate()
        .public_key()
        .to_string();
    check(
        "sites add",
        &[
            "sites",
            "add",
            "box-1",
            "--region",
            "south",
            "--role",
            "spoke",
            "--public-key",
            &key,
        ],
    );
    assert!(check("sites list", &["sites", "list", "--region", "north"]).is_array());
    check("orgs add", &["orgs", "add", "practice-b"]);
    let v = check(
        "policy add-rule",
        &[
            "policy",
            "add-rule",
            "--from",
            "org:practice-b",
            "--to",
            "site:gp-a",
            "--proto",
            "tcp",
            "--port",
            "443",
            "--port",
            "8000-8080",
            "--description",
            "booking",
        ],
    );
    assert_eq!(
        v["rule"]["ports"],
        serde_json::json!(["443", "8000-8080"]),
        "{v}"
    );
    let id = v["rule"]["id"].as_u64().expect("a rule id").to_string();
    assert_eq!(
        check("policy show", &["policy", "show", &id])["org"],
        "trust-a"
    );
    let v = check(
        "policy add-service",
        &[
            "policy",
            "add-service",
            "booking",
            "--site",
            "gp-a",
            "--prefix",
            "10.1.0.0/25",
            "--proto",
            "tcp",
            "--port",
            "443",
            "--shared-with",
            "practice-b",
        ],
    );
    assert_eq!(
        v["service"]["shared_with"],
        serde_json::json!(["practice-b"]),
        "{v}"
    );
    let v = check("policy list", &["policy", "list"]);
    assert_eq!(v["rules"].as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(v["services"].as_array().map(Vec::len), Some(1), "{v}");
    let v = check(
        "policy check",
        &[
            "policy", "check", "gp-a", "gp-a", "--proto", "tcp", "--port", "22",
        ],
    );
    assert_eq!(v["allow"], true, "{v}");
    assert_eq!(v["decided_by"]["by"], "same_org", "{v}");
    assert_eq!(
        check(
            "policy delete-service",
            &["policy", "delete-service", "booking"]
        )["kind"],
        "service"
    );
    assert_eq!(
        check("policy delete-rule", &["policy", "delete-rule", &id])["kind"],
        "rule"
    );
    assert_eq!(
        check("sites show", &["sites", "show", "gp-a"])["name"],
        "gp-a"
    );
    let v = check(
        "sites update",
        &["sites", "update", "gp-a", "--lan", "10.1.1.0/24"],
    );
    assert_eq!(v["lan_prefixes"], serde_json::json!(["10.1.1.0/24"]));
    assert!(check("sites token", &["sites", "token", "gp-a"])["token"].is_string());
    let v = check("sites export", &["sites", "export", "box-1"]);
    assert!(
        v["config"]
            .as_str()
            .is_some_and(|c| c.contains("[Interface]")),
        "{v}"
    );
    check(
        "orgs delegate",
        &["orgs", "delegate", "trust-a", "100.64.8.0/24"],
    );
    let v = check("sites renumber", &["sites", "renumber", "gp-a"]);
    assert_eq!(
        v["former_addresses"].as_array().map(Vec::len),
        Some(1),
        "{v}"
    );
    assert_eq!(
        check("sites renumber", &["sites", "renumber", "gp-a", "--finish"])["name"],
        "gp-a"
    );
    assert_eq!(
        check("sites revoke", &["sites", "revoke", "gp-a"])["state"],
        "revoked"
    );
    assert_eq!(
        check("sites delete", &["sites", "delete", "gp-a"])["name"],
        "gp-a"
    );
    check("sites delete", &["sites", "delete", "box-1"]);
    assert_eq!(
        check("regions delete", &["regions", "delete", "south"])["kind"],
        "region"
    );
    assert!(check("audit", &["audit"]).is_array());
    assert!(check("status", &["status"])["regions"].is_number());
    assert!(check("prometheus targets", &["prometheus", "targets"]).is_array());

    let dir = tempfile::tempdir().expect("tempdir");
    let tls = dir.path().join("tls");
    let v = check(
        "ca init",
        &[
            "ca",
            "init",
            "--dir",
            tls.to_str().expect("utf8"),
            "--host",
            "controller.example",
        ],
    );
    assert!(
        v["ca_cert"].as_str().is_some_and(|p| p.ends_with("ca.crt")),
        "{v}"
    );
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "plain_http = true\ndata_dir = \"{}\"\n[network]\noverlay_ipv4 = \"100.64.0.0/10\"\n",
            dir.path().join("data").display()
        ),
    )
    .expect("config");
    let v = check(
        "admin-token create",
        &[
            "admin-token",
            "create",
            "--config",
            config.to_str().expect("utf8"),
        ],
    );
    assert!(
        v["token"].as_str().is_some_and(|s| s.starts_with("wnt_")),
        "{v}"
    );
    assert!(v["org"].is_null(), "network-wide: {v}");
    let v = check(
        "admin-token create",
        &[
            "admin-token",
            "create",
            "--config",
            config.to_str().expect("utf8"),
            "--org",
            "default",
        ],
    );
    assert_eq!(v["org"], "default", "{v}");

    let mut all = BTreeSet::new();
    leaves(&Cli::command(), "", &mut all);
    let missing: Vec<_> = all
        .iter()
        .filter(|w| !NOT_RESULTS.contains(&w.as_str()) && !covered.contains(*w))
        .collect();
    assert!(
        missing.is_empty(),
        "commands without a JSON check: {missing:?}"
    );
}

#[test]
fn completion_prints_a_script_for_each_shell() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef wardnet-controller"),
        ("fish", "complete -c wardnet-controller"),
    ] {
        let out = Command::new(BIN)
            .args(["completion", shell])
            .output()
            .expect("run");
        assert!(out.status.success(), "{shell}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(marker),
            "{shell}: {}",
            &text[..text.len().min(200)]
        );
        assert!(text.contains("sites"), "{shell} completes subcommands");
    }
    let out = Command::new(BIN)
        .args(["completion", "tcsh"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bash"));
}

#[test]
fn every_man_page_named_exists_and_subcommands_document_their_options() {
    let dir = tempfile::tempdir().expect("tempdir");
    wardnet_controller::cli::generate_docs(Cli::command(), dir.path()).expect("generate");
    let dangling = wardnet_service::docs::dangling_references(dir.path(), "wardnet-controller")
        .expect("read pages");
    assert!(
        dangling.is_empty(),
        "man pages name pages that are not generated: {dangling:?}"
    );
    let add = std::fs::read_to_string(dir.path().join("wardnet-controller-sites-add.1"))
        .expect("a page for sites add");
    for opt in ["lan", "role", "region", "endpoint", "public"] {
        assert!(add.contains(opt), "sites add documents --{opt}");
    }
    assert!(
        add.contains("hub") && add.contains("spoke"),
        "the roles are listed"
    );
    let init = std::fs::read_to_string(dir.path().join("wardnet-controller-ca-init.1"))
        .expect("a page for ca init");
    assert!(init.contains("host"));
    let radd = std::fs::read_to_string(dir.path().join("wardnet-controller-regions-add.1"))
        .expect("a page for regions add");
    assert!(radd.contains("mesh"));
}

#[test]
fn every_argument_has_help_and_choices_are_listed() {
    fn walk(cmd: &clap::Command, path: &str) {
        for a in cmd.get_arguments() {
            if a.is_hide_set() || ["help", "version"].contains(&a.get_id().as_str()) {
                continue;
            }
            assert!(
                a.get_help().is_some(),
                "`{path}` argument {} has no help text",
                a.get_id()
            );
        }
        for s in cmd.get_subcommands() {
            if s.is_hide_set() || s.get_name() == "help" {
                continue;
            }
            assert!(
                s.get_about().is_some(),
                "`{path} {}` has no help text",
                s.get_name()
            );
            walk(s, &format!("{path} {}", s.get_name()));
        }
    }
    let mut cli = Cli::command();
    cli.build();
    walk(&cli, "wardnet-controller");
    let add = cli
        .find_subcommand("sites")
        .and_then(|s| s.find_subcommand("add"))
        .expect("sites add");
    let role = add
        .get_arguments()
        .find(|a| a.get_id() == "role")
        .expect("--role");
    let values: Vec<_> = role
        .get_possible_values()
        .iter()
        .map(|v| v.get_name().to_owned())
        .collect();
    assert_eq!(values, ["hub", "spoke"]);
}

/// `serve --config config` that must fail: its exit code and standard error.
fn serve_fails(config: &std::path::Path, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(config)
        .envs(env.iter().copied())
        .output()
        .expect("run");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write_config(dir: &std::path::Path, body: &str) -> std::path::PathBuf {
    let p = dir.join("controller.toml");
    std::fs::write(&p, body).expect("write config");
    p
}

/// `serve` with the README's config on a machine without a certificate:
/// a usage error (64) that points to `ca init`, before anything is created.
#[test]
fn a_missing_certificate_is_a_usage_error_that_points_to_ca_init() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let config = write_config(
        dir.path(),
        &format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n[tls]\ncert = \"{0}/none.crt\"\nkey = \"{0}/none.key\"\n\
             [network]\noverlay_ipv4 = \"100.64.0.0/10\"\n",
            data.display()
        ),
    );
    let (code, err) = serve_fails(&config, &[]);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("ca init"), "{err}");
    assert!(err.contains("none.crt"), "{err}");
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    assert!(!data.exists(), "nothing is created on the way to failing");
}

#[test]
fn config_errors_name_the_variable_or_the_missing_section() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), "plain_http = true\n");
    let (code, err) = serve_fails(&config, &[]);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("key `network`"), "{err}");

    let config = write_config(
        dir.path(),
        "plain_http = true\n[network]\noverlay_ipv4 = \"100.64.0.0/10\"\n",
    );
    let (code, err) = serve_fails(&config, &[("WARDNET_LISTEN", "not-an-address")]);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("environment variable WARDNET_LISTEN"), "{err}");
    assert!(
        !err.contains("config file"),
        "the file is not to blame: {err}"
    );

    let (code, err) = serve_fails(&dir.path().join("missing.toml"), &[]);
    assert_eq!(code, Some(64), "{err}");
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
}

/// Refused credentials are logged at the default level, without the secret.
#[test]
fn refused_credentials_are_logged_without_the_secret() {
    use std::io::Read as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let config = write_config(
        dir.path(),
        &format!(
            "listen = \"127.0.0.1:{port}\"\nplain_http = true\ndata_dir = \"{}\"\nlog_format = \"human\"\n\
             [network]\noverlay_ipv4 = \"100.64.0.0/10\"\n",
            dir.path().join("data").display()
        ),
    );
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .env_remove("WARDNET_LOG")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("serve");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let secret = "wnt_this-is-not-a-token";
    loop {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::Write as _;
            let _ = write!(
                s,
                "GET /v1/status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {secret}\r\nConnection: close\r\n\r\n"
            );
            let mut answer = String::new();
            let _ = s.read_to_string(&mut answer);
            assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the controller did not listen"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    let _ = child.kill();
    let out = child.wait_with_output().expect("wait");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("refused a request's credentials"), "{log}");
    assert!(log.contains("/v1/status"), "{log}");
    assert!(!log.contains(secret), "the secret is never logged: {log}");
}
