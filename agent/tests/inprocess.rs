//! The in-process tier: the agent's real event loop, sync task and HTTP
//! endpoint, with the in-memory device and routes, against a real
//! controller served on port 0. No root, no namespaces. Asserts what a
//! user sees: `status`, `/metrics`, and the applied revision and health the
//! controller shows, after a change, a failed apply, a reload, a
//! controller outage and a revoke.

#[path = "../../controller/tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::TestController;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use wardnet_agent::agent_state::ConfigSource;
use wardnet_agent::client::ControllerClient;
use wardnet_agent::config::Config;
use wardnet_agent::device::{MemoryDevice, MemoryRoutes};
use wardnet_agent::eventloop::{Eventloop, Parts};
use wardnet_agent::state_dir::{Enrolment, StateDir};
use wardnet_common::wire::EnrollRequest;
use wardnet_common::PrivateKey;

/// Poll `f` every 50 ms until it gives `Some`, for at most `limit`.
async fn eventually<T>(limit: Duration, what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            t0.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn agent_config(dir: &Path, extra: &str) -> String {
    format!(
        "state_dir = \"{}\"\ninterface = \"wn-test0\"\nmetrics_overlay_port = 0\n{extra}\n[controller]\nallow_plain_http = true\nlong_poll_secs = 60\n",
        dir.join("state").display()
    )
}

async fn get(url: &str) -> String {
    reqwest::get(url)
        .await
        .expect("request")
        .text()
        .await
        .expect("body")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_in_process_follows_changes_errors_reloads_outages_and_a_revoke() {
    wardnet_agent::init_crypto();
    let mut ctl = TestController::start().await;
    ctl.region("north", false).await;
    let token = ctl
        .site(
            json!({"name": "hub-north", "region": "north", "role": "hub",
                     "endpoint": "198.51.100.1:51820"}),
        )
        .await
        .expect("token");
    let spoke = |n: &str| {
        json!({"name": n, "region": "north", "role": "spoke",
               "public_key": PrivateKey::generate().public_key().to_string()})
    };
    ctl.site(spoke("gp-a")).await;

    // Enrol, as `wardnet-agent enroll` does, into a temporary state dir.
    let dir = tempfile::tempdir().expect("tempdir");
    let config_file = dir.path().join("agent.toml");
    std::fs::write(&config_file, agent_config(dir.path(), "")).expect("write config");
    let config = Config::load(&config_file, true, |_| None).expect("config");
    let client = ControllerClient::with_urls(&[ctl.url.clone()], None, true).expect("client");
    let key = PrivateKey::generate();
    let resp = client
        .enroll(&EnrollRequest {
            token,
            public_key: key.public_key(),
            endpoint: None,
        })
        .await
        .expect("enrol");
    let state = StateDir::new(&config.state_dir);
    state.create().expect("state dir");
    state.save_key(&key).expect("key");
    let enrolment = Enrolment {
        site: resp.site,
        region: resp.region,
        role: resp.role,
        addresses: resp.addresses,
        controller_url: ctl.url.clone(),
        credential: resp.credential.clone(),
        ca_cert: None,
        allow_plain_http: true,
    };
    state.save_enrolment(&enrolment).expect("enrolment");

    // The agent: real loop, in-memory device and routes.
    let first = wardnet_agent::sync::first_config(&client, &resp.credential)
        .await
        .expect("first config");
    let device = MemoryDevice::new(51820);
    let routes = MemoryRoutes::default();
    let stop = CancellationToken::new();
    let reload_file = config_file.clone();
    let mut eventloop = Eventloop::new(
        Parts {
            config,
            enrolment,
            cache: StateDir::new(dir.path().join("state")),
            controller: client,
            probe_socket: None,
            reload: Box::new(move || Ok(Config::load(&reload_file, true, |_| None)?)),
            shutdown: stop.clone(),
        },
        device.clone(),
        routes.clone(),
        &first,
        ConfigSource::Controller,
    );
    eventloop
        .start(first.clone(), ConfigSource::Controller)
        .await
        .expect("first apply");
    let agent = eventloop.handle();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let http = format!("http://{}", listener.local_addr().expect("addr"));
    let server = tokio::spawn(wardnet_agent::http::serve(
        listener,
        agent.clone(),
        stop.clone().cancelled_owned(),
    ));
    let run = tokio::spawn(eventloop.run());

    // What a user sees first: the config runs, its one spoke has not shaken
    // hands (unknown, never "down"), the controller has the report.
    let status: Value =
        serde_json::from_str(&get(&format!("{http}/v1/status")).await).expect("json");
    assert_eq!(status["applied_revision"], first.revision);
    assert_eq!(status["peers"][0]["name"], "gp-a");
    assert_eq!(status["peers"][0]["state"], "unknown");
    let metrics = get(&format!("{http}/metrics")).await;
    assert!(metrics.contains(&format!("wardnet_agent_config_revision {}", first.revision)));
    assert!(
        !metrics.contains("wardnet_peer_up{"),
        "unknown is not down:\n{metrics}"
    );
    let site_at_controller = async |ctl: &TestController| -> Value {
        ctl.admin_get("/v1/health").await.1["sites"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["name"] == "hub-north").cloned())
            .unwrap_or(Value::Null)
    };
    eventually(
        Duration::from_secs(10),
        "the controller to see the applied revision",
        async || {
            let s = site_at_controller(&ctl).await;
            (s["applied_revision"] == first.revision && s["health"]["peers_unknown"] == 1)
                .then_some(())
        },
    )
    .await;
    // gp-a shakes hands: up, and the controller hears of it while the
    // agent's long-poll (60 s here) still waits.
    let gp_a = first.peers[0].public_key;
    let t0 = Instant::now();
    device.handshake(&gp_a, std::time::SystemTime::now());
    eventually(
        Duration::from_secs(10),
        "the controller to see gp-a up",
        async || {
            let s = site_at_controller(&ctl).await;
            (s["health"]["peers_up"] == 1).then_some(())
        },
    )
    .await;
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    let routes_before = routes.get();
    assert!(routes_before
        .0
        .iter()
        .any(|a| a.to_string().starts_with("100.64.")));

    // A change: a new spoke reaches the device and the controller sees it run.
    ctl.site(spoke("gp-b")).await;
    let rev = eventually(
        Duration::from_secs(10),
        "the new spoke to be applied",
        async || {
            let st = agent.status().await?;
            (st.peers.len() == 2).then_some(st.applied_revision)
        },
    )
    .await;
    assert!(rev > first.revision);
    eventually(
        Duration::from_secs(10),
        "the controller to see it",
        async || (site_at_controller(&ctl).await["applied_revision"] == rev).then_some(()),
    )
    .await;

    // A failed apply: what ran keeps running, status says why, and it is
    // asked for again within seconds, not at the next change.
    device.fail_next_apply("injected: the device is busy");
    let applies = device.applies();
    ctl.site(spoke("gp-c")).await;
    let t0 = Instant::now();
    eventually(
        Duration::from_secs(10),
        "the failed config to be retried",
        async || {
            let st = agent.status().await?;
            (st.peers.len() == 3 && st.apply_error.is_none()).then_some(())
        },
    )
    .await;
    assert!(device.applies() > applies);
    let retried_in = t0.elapsed();
    assert!(retried_in < Duration::from_secs(10), "{retried_in:?}");

    // A reload with a new advertised metrics address: reported at once.
    std::fs::write(
        &config_file,
        agent_config(dir.path(), "metrics_advertise = \"198.51.100.9:9586\""),
    )
    .expect("write config");
    assert!(agent.reload().await);
    eventually(
        Duration::from_secs(10),
        "the new metrics address at the controller",
        async || {
            (site_at_controller(&ctl).await["health"]["metrics_address"] == "198.51.100.9:9586")
                .then_some(())
        },
    )
    .await;

    // A controller outage: the agent says so, keeps running, and is seen
    // again within seconds of the controller's return.
    let keep_db = ctl.stop().await;
    eventually(
        Duration::from_secs(20),
        "the agent to notice the outage",
        async || {
            let st = agent.status().await?;
            (!st.controller_reachable).then_some(())
        },
    )
    .await;
    let st = agent.status().await.expect("status");
    assert_eq!(st.peers.len(), 3, "the tunnels keep running");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let back = Instant::now();
    ctl.resume();
    eventually(
        Duration::from_secs(10),
        "the agent to reach the controller again",
        async || agent.status().await?.controller_reachable.then_some(()),
    )
    .await;
    let seen_in = back.elapsed();
    assert!(seen_in < Duration::from_secs(10), "{seen_in:?}");

    // A revoke: the agent knows it, says so, and takes its peers down.
    let (s, v) = ctl
        .admin_post("/v1/sites/hub-north/revoke", json!({}))
        .await;
    assert!(s.is_success(), "{v}");
    eventually(
        Duration::from_secs(15),
        "the agent to know it is revoked",
        async || agent.status().await?.revoked.then_some(()),
    )
    .await;
    let st = agent.status().await.expect("status");
    assert!(st.peers.is_empty(), "no futile handshakes: {:?}", st.peers);
    assert!(get(&format!("{http}/metrics"))
        .await
        .contains("wardnet_agent_revoked 1"));
    assert_ne!(site_at_controller(&ctl).await["online"], true);

    stop.cancel();
    run.await.expect("loop").expect("clean stop");
    server.await.expect("server").expect("serve");
    drop(keep_db);
}
