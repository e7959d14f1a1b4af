//! Controller replicas as real processes on one PostgreSQL database,
//! killed with SIGKILL while they work:
//! - 1,000 concurrent enrolments over three replicas, one killed part-way:
//!   every acknowledged enrolment is stored with what it was given, no
//!   address twice, no token redeemed twice;
//! - a history check in the spirit of Jepsen: random changes through random
//!   replicas while replicas are killed and restarted, simulated agents
//!   long-polling with deltas through whichever replica answers; at the end
//!   every agent's config equals the one a fresh replica renders from the
//!   database, no agent saw its revision go backwards, and every
//!   acknowledged change is what the database holds (or a later attempt
//!   whose answer was lost).
//!
//! No root needed: the replicas listen on loopback.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use wardnet_common::delta::ConfigUpdate;
use wardnet_common::{PrivateKey, SiteConfig};

/// One replica process.
struct Replica {
    config: PathBuf,
    url: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Replica {
    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_wardnet-controller"))
            .args(["serve", "--config"])
            .arg(&self.config)
            .env("WARDNET_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn controller");
        self.child = Some(child);
    }

    /// SIGKILL: a crash.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

struct Cluster {
    replicas: Vec<Replica>,
    admin: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

/// A free loopback port (bound and released: a small race, fine here).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn write_config(dir: &Path, i: usize, port: u16, database: &str) -> PathBuf {
    let path = dir.join(format!("controller-{i}.toml"));
    std::fs::write(
        &path,
        format!(
            r#"listen = "127.0.0.1:{port}"
plain_http = true
data_dir = "{}"
[database]
url = {database:?}
pool_size = 8
[network]
overlay_ipv4 = "100.64.0.0/10"
overlay_ipv6 = "fd7a:6e65::/48"
routed_prefixes = ["10.0.0.0/8"]
[long_poll]
timeout_secs = 10
"#,
            dir.join(format!("data-{i}")).display()
        ),
    )
    .expect("write config");
    path
}

impl Cluster {
    async fn start(n: usize, database: &str) -> Self {
        wardnet_controller::init_crypto();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut replicas = Vec::new();
        for i in 0..n {
            let port = free_port();
            replicas.push(Replica {
                config: write_config(dir.path(), i, port, database),
                url: format!("http://127.0.0.1:{port}"),
                child: None,
                log: dir.path().join(format!("controller-{i}.log")),
            });
        }
        let out = Command::new(env!("CARGO_BIN_EXE_wardnet-controller"))
            .args(["admin-token", "create", "--config"])
            .arg(&replicas[0].config)
            .env("WARDNET_LOG", "warn")
            .output()
            .expect("admin-token create");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let admin = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let mut c = Cluster {
            replicas,
            admin,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client"),
            _dir: dir,
        };
        for i in 0..n {
            c.start_replica(i).await;
        }
        c
    }

    async fn start_replica(&mut self, i: usize) {
        self.replicas[i].start();
        let url = format!("{}/healthz", self.replicas[i].url);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = self.http.get(&url).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "replica {i} did not start: {}",
                std::fs::read_to_string(&self.replicas[i].log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn url(&self, i: usize) -> String {
        self.replicas[i].url.clone()
    }

    async fn admin(
        &self,
        i: usize,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), reqwest::Error> {
        admin_call(&self.http, &self.url(i), &self.admin, method, path, body).await
    }
}

async fn admin_call(
    http: &reqwest::Client,
    base: &str,
    admin: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Result<(u16, Value), reqwest::Error> {
    let mut r = http
        .request(method, format!("{base}{path}"))
        .bearer_auth(admin);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await?;
    let status = resp.status().as_u16();
    let v = resp.json::<Value>().await.unwrap_or(Value::Null);
    Ok((status, v))
}

async fn enrol(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    key: &str,
) -> Result<(u16, Value), reqwest::Error> {
    let resp = http
        .post(format!("{base}/v1/enroll"))
        .json(&json!({"token": token, "public_key": key}))
        .send()
        .await?;
    let status = resp.status().as_u16();
    Ok((status, resp.json::<Value>().await.unwrap_or(Value::Null)))
}

async fn all_sites(c: &Cluster, i: usize) -> BTreeMap<String, Value> {
    let (s, v) = c
        .admin(i, reqwest::Method::GET, "/v1/sites", None)
        .await
        .expect("list sites");
    assert_eq!(s, 200, "{v}");
    v.as_array()
        .expect("a list")
        .iter()
        .map(|s| (s["name"].as_str().expect("name").to_owned(), s.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_enrolments_survive_a_killed_replica() {
    let Some(pg) = wardnet_pgtest::start_or_skip("a_thousand_enrolments_survive_a_killed_replica")
    else {
        return;
    };
    let mut c = Cluster::start(3, &pg.url("postgres")).await;
    let post = reqwest::Method::POST;
    let (s, v) = c
        .admin(
            0,
            post.clone(),
            "/v1/regions",
            Some(json!({"name": "north"})),
        )
        .await
        .expect("region");
    assert_eq!(s, 201, "{v}");
    let (s, v) = c
        .admin(
            1,
            post.clone(),
            "/v1/sites",
            Some(json!({"name": "hub-north", "region": "north", "role": "hub", "endpoint": "198.51.100.1:51820"})),
        )
        .await
        .expect("hub");
    assert_eq!(s, 201, "{v}");
    let hub_token = v["token"].as_str().expect("token").to_owned();
    let (s, v) = enrol(
        &c.http,
        &c.url(2),
        &hub_token,
        &PrivateKey::generate().public_key().to_string(),
    )
    .await
    .expect("hub enrols");
    assert_eq!(s, 201, "{v}");

    // 1,000 spokes, added 100 at a time over the three replicas.
    const N: usize = 1000;
    let mut tokens = Vec::with_capacity(N);
    for chunk in (0..N).collect::<Vec<_>>().chunks(100) {
        let adds = chunk.iter().map(|&i| {
            let c = &c;
            let post = post.clone();
            async move {
                let (s, v) = c
                    .admin(
                        i % 3,
                        post,
                        "/v1/sites",
                        Some(
                            json!({"name": format!("gp-{i}"), "region": "north", "role": "spoke"}),
                        ),
                    )
                    .await
                    .expect("add site");
                assert_eq!(s, 201, "gp-{i}: {v}");
                v["token"].as_str().expect("token").to_owned()
            }
        });
        tokens.extend(futures::future::join_all(adds).await);
    }

    // 1,000 enrolments at once over the three replicas; replica 2 is
    // killed once it has answered 100 of its third.
    let answered = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(N);
    for (i, token) in tokens.iter().enumerate() {
        let http = c.http.clone();
        let base = c.url(i % 3);
        let token = token.clone();
        let answered = answered.clone();
        tasks.push(tokio::spawn(async move {
            let key = PrivateKey::generate().public_key().to_string();
            let r = enrol(&http, &base, &token, &key).await;
            if i % 3 == 2 {
                answered.fetch_add(1, Ordering::SeqCst);
            }
            (i, key, r.map_err(|e| e.to_string()))
        }));
    }
    while answered.load(Ordering::SeqCst) < 100 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    c.replicas[2].kill();
    let killed_at = answered.load(Ordering::SeqCst);
    let mut acked: BTreeMap<String, (String, Value)> = BTreeMap::new();
    let mut lost = 0;
    let mut refused = Vec::new();
    for t in tasks {
        let (i, key, r) = t.await.expect("task");
        match r {
            Ok((201, v)) => {
                acked.insert(format!("gp-{i}"), (key, v["addresses"].clone()));
            }
            Ok((s, v)) => refused.push((i, s, v)),
            Err(_) => lost += 1,
        }
    }
    eprintln!(
        "{} acknowledged, {lost} without an answer (replica 2 killed after {killed_at} of its answers), {} refused, in {:?}",
        acked.len(),
        refused.len(),
        started.elapsed()
    );
    // Only the killed replica's requests may go unanswered; nothing is
    // refused (a 503 would be a failed request a replica should not give).
    assert!(refused.is_empty(), "{refused:?}");
    assert!(acked.len() >= N * 2 / 3, "{} acknowledged", acked.len());

    // The killed replica comes back; every replica holds the same sites.
    c.start_replica(2).await;
    let sites = all_sites(&c, 0).await;
    for i in [1, 2] {
        assert_eq!(all_sites(&c, i).await.len(), sites.len());
    }
    // Every acknowledged enrolment is stored with the key it sent and the
    // addresses it was given.
    for (name, (key, addresses)) in &acked {
        let s = &sites[name];
        assert_eq!(s["state"], "active", "{name}: {s}");
        assert_eq!(s["public_key"].as_str(), Some(key.as_str()), "{name}");
        assert_eq!(&s["addresses"], addresses, "{name}");
    }
    // No address is held twice.
    let mut seen = BTreeSet::new();
    for s in sites.values() {
        for a in s["addresses"].as_array().expect("addresses") {
            assert!(seen.insert(a.to_string()), "address {a} handed out twice");
        }
    }
    // No token can be redeemed again: acknowledged ones (and those whose
    // answer was lost but that were stored) are refused; only a token whose
    // site is still pending may enrol now.
    let retries = tokens.iter().enumerate().map(|(i, token)| {
        let http = c.http.clone();
        let base = c.url(i % 2);
        let token = token.clone();
        async move {
            let key = PrivateKey::generate().public_key().to_string();
            (i, enrol(&http, &base, &token, &key).await.expect("retry"))
        }
    });
    for (i, (s, v)) in futures::future::join_all(retries).await {
        let name = format!("gp-{i}");
        if sites[&name]["state"] == "active" {
            assert_eq!(s, 409, "{name}'s token was redeemed twice: {v}");
        } else {
            assert!(!acked.contains_key(&name));
            assert_eq!(s, 201, "{name} was pending: {v}");
        }
    }
    drop(c);
    drop(pg);
}

/// What one client asked of one site, in order.
#[derive(Debug, Clone)]
struct Attempt {
    lan: Vec<String>,
    /// `Some(true)`: acknowledged; `Some(false)`: refused (not applied);
    /// `None`: no answer (the replica died): may or may not have landed.
    acked: Option<bool>,
}

/// A simulated agent: long-polls with deltas through whichever replica
/// answers, applies what it gets, and records every revision it held.
async fn agent_loop(
    http: reqwest::Client,
    urls: Vec<String>,
    credential: String,
    stop: Arc<AtomicBool>,
    config: Arc<parking_lot::Mutex<Option<SiteConfig>>>,
    backwards: Arc<AtomicUsize>,
) {
    let mut at = 0usize;
    while !stop.load(Ordering::SeqCst) {
        let known = config.lock().as_ref().map_or(0, |c| c.revision);
        let r = http
            .get(format!(
                "{}/v1/agent/config?revision={known}&wait=2&deltas=true",
                urls[at % urls.len()]
            ))
            .bearer_auth(&credential)
            .send()
            .await;
        let resp = match r {
            Ok(r) if r.status().as_u16() == 200 => r,
            Ok(r) if r.status().as_u16() == 204 => continue,
            _ => {
                at += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(update) = resp.json::<ConfigUpdate>().await else {
            at += 1;
            continue;
        };
        let mut cfg = config.lock();
        let next = match (update, cfg.clone()) {
            (ConfigUpdate::Full { config }, _) => Some(config),
            (ConfigUpdate::Deltas { steps }, Some(mut c)) => match c.apply_deltas(&steps) {
                Ok(()) => Some(c),
                // As the real agent: ask for the full config next time.
                Err(_) => None,
            },
            (ConfigUpdate::Deltas { .. }, None) => None,
        };
        match next {
            Some(n) => {
                if n.revision < known {
                    backwards.fetch_add(1, Ordering::SeqCst);
                }
                *cfg = Some(n);
            }
            None => *cfg = None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_changes_through_killed_replicas_keep_a_consistent_history() {
    let Some(pg) = wardnet_pgtest::start_or_skip(
        "random_changes_through_killed_replicas_keep_a_consistent_history",
    ) else {
        return;
    };
    let mut c = Cluster::start(3, &pg.url("postgres")).await;
    let post = reqwest::Method::POST;
    let (s, v) = c
        .admin(
            0,
            post.clone(),
            "/v1/regions",
            Some(json!({"name": "north"})),
        )
        .await
        .expect("region");
    assert_eq!(s, 201, "{v}");
    const SPOKES: usize = 12;
    let mut credentials = BTreeMap::new();
    for (i, name) in std::iter::once("hub-north".to_owned())
        .chain((0..SPOKES).map(|i| format!("gp-{i}")))
        .enumerate()
    {
        let body = if i == 0 {
            json!({"name": name, "region": "north", "role": "hub", "endpoint": "198.51.100.1:51820"})
        } else {
            json!({"name": name, "region": "north", "role": "spoke", "lan_prefixes": [format!("10.50.{i}.0/24")]})
        };
        let (s, v) = c
            .admin(i % 3, post.clone(), "/v1/sites", Some(body))
            .await
            .expect("site");
        assert_eq!(s, 201, "{v}");
        let (s, v) = enrol(
            &c.http,
            &c.url((i + 1) % 3),
            v["token"].as_str().expect("token"),
            &PrivateKey::generate().public_key().to_string(),
        )
        .await
        .expect("enrol");
        assert_eq!(s, 201, "{v}");
        credentials.insert(name, v["credential"].as_str().expect("cred").to_owned());
    }

    // Simulated agents, each starting on another replica.
    let stop_agents = Arc::new(AtomicBool::new(false));
    let backwards = Arc::new(AtomicUsize::new(0));
    let mut agents = BTreeMap::new();
    let urls: Vec<String> = (0..3).map(|i| c.url(i)).collect();
    for (k, (name, cred)) in credentials.iter().enumerate() {
        let config = Arc::new(parking_lot::Mutex::new(None));
        let mut order = urls.clone();
        order.rotate_left(k % 3);
        let task = tokio::spawn(agent_loop(
            c.http.clone(),
            order,
            cred.clone(),
            stop_agents.clone(),
            config.clone(),
            backwards.clone(),
        ));
        agents.insert(name.clone(), (config, task));
    }

    // Three clients, each owning four spokes, change their LAN prefixes
    // through random replicas for 20 s while replicas are killed and
    // restarted (one down at a time).
    let stop_clients = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for k in 0..3usize {
        let http = c.http.clone();
        let urls = urls.clone();
        let admin = c.admin.clone();
        let stop = stop_clients.clone();
        clients.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(k as u64);
            let mut history: HashMap<String, Vec<Attempt>> = HashMap::new();
            while !stop.load(Ordering::SeqCst) {
                let i = 1 + k * 4 + rng.gen_range(0..4);
                let name = format!("gp-{}", i - 1);
                let mut lan: Vec<String> = [50, 60, 70]
                    .iter()
                    .filter(|_| rng.gen_bool(0.5))
                    .map(|b| format!("10.{b}.{i}.0/24"))
                    .collect();
                lan.sort();
                let base = &urls[rng.gen_range(0..urls.len())];
                let r = admin_call(
                    &http,
                    base,
                    &admin,
                    reqwest::Method::PATCH,
                    &format!("/v1/sites/{name}"),
                    Some(json!({"lan_prefixes": lan})),
                )
                .await;
                let acked = match r {
                    Ok((200, _)) => Some(true),
                    // Refused before anything was stored (a replica that is
                    // starting, or behind): nothing changed.
                    Ok((400..=499, _)) => Some(false),
                    Ok((503, _)) => None,
                    Ok(_) | Err(_) => None,
                };
                history
                    .entry(name)
                    .or_default()
                    .push(Attempt { lan, acked });
                tokio::time::sleep(Duration::from_millis(rng.gen_range(5..40))).await;
            }
            history
        }));
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(99);
    let chaos_until = Instant::now() + Duration::from_secs(20);
    let mut kills = 0;
    while Instant::now() < chaos_until {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(1500..3000))).await;
        let victim = rng.gen_range(0..3);
        c.replicas[victim].kill();
        kills += 1;
        tokio::time::sleep(Duration::from_millis(rng.gen_range(500..2000))).await;
        c.start_replica(victim).await;
    }
    stop_clients.store(true, Ordering::SeqCst);
    let mut history: HashMap<String, Vec<Attempt>> = HashMap::new();
    for t in clients {
        history.extend(t.await.expect("client"));
    }
    assert!(c.replicas.iter().all(Replica::running));

    // Let the agents catch up with the database's revisions.
    let deadline = Instant::now() + Duration::from_secs(30);
    let stored = loop {
        let sites = all_sites(&c, 0).await;
        let behind: Vec<&String> = agents
            .iter()
            .filter(|(name, (cfg, _))| {
                cfg.lock().as_ref().map(|c| c.revision) != sites[*name]["revision"].as_u64()
            })
            .map(|(n, _)| n)
            .collect();
        if behind.is_empty() {
            break sites;
        }
        assert!(
            Instant::now() < deadline,
            "agents still behind the database after 30 s: {behind:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    stop_agents.store(true, Ordering::SeqCst);

    // A fresh replica renders every config from the database alone.
    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    c.replicas.push(Replica {
        config: write_config(dir.path(), 9, port, &pg.url("postgres")),
        url: format!("http://127.0.0.1:{port}"),
        child: None,
        log: dir.path().join("fresh.log"),
    });
    let fresh_index = c.replicas.len() - 1;
    c.start_replica(fresh_index).await;
    for (name, (cfg, task)) in &agents {
        task.abort();
        let r = c
            .http
            .get(format!(
                "{}/v1/agent/config?revision=0&wait=0",
                c.url(fresh_index)
            ))
            .bearer_auth(&credentials[name])
            .send()
            .await
            .expect("fresh config");
        let rendered: SiteConfig = r.json().await.expect("config");
        let held = cfg.lock().clone().expect("the agent holds a config");
        assert_eq!(
            held, rendered,
            "{name}: the agent's config differs from the one rendered from the database"
        );
    }
    assert_eq!(
        backwards.load(Ordering::SeqCst),
        0,
        "an agent saw its revision go backwards"
    );

    // Every acknowledged change is what the database holds, unless a later
    // attempt on the same site may have landed (its answer was lost).
    let mut checked = 0;
    let mut acked_total = 0;
    let mut unknown_total = 0;
    for (name, attempts) in &history {
        acked_total += attempts.iter().filter(|a| a.acked == Some(true)).count();
        unknown_total += attempts.iter().filter(|a| a.acked.is_none()).count();
        let Some(last_acked) = attempts.iter().rposition(|a| a.acked == Some(true)) else {
            continue;
        };
        let allowed: Vec<&Vec<String>> = attempts[last_acked..]
            .iter()
            .filter(|a| a.acked != Some(false))
            .map(|a| &a.lan)
            .collect();
        let mut now: Vec<String> = stored[name]["lan_prefixes"]
            .as_array()
            .expect("lan")
            .iter()
            .filter_map(|p| p.as_str().map(str::to_owned))
            .collect();
        now.sort();
        assert!(
            allowed.contains(&&now),
            "{name}: the database holds {now:?}, but the last acknowledged change set {:?} (later unanswered attempts: {:?})",
            attempts[last_acked].lan,
            &allowed[1..]
        );
        checked += 1;
    }
    eprintln!(
        "history: {acked_total} acknowledged changes, {unknown_total} without an answer, {kills} replica kills; {checked} sites checked"
    );
    assert!(
        acked_total > 50,
        "too few changes went through: {acked_total}"
    );
    drop(c);
    drop(pg);
}
