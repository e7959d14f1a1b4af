//! Fleet benchmark: a real `wardnet-controller` process (release build,
//! embedded SQLite, `synchronous=FULL`) on loopback, driven over HTTP.
//!
//! Prints: durable enrolments per second; with W agents waiting on
//! long-polls, the time from one site change to its waiting agents'
//! answers (p50/p99); the controller's RSS.
//!
//!   cargo bench -p wardnet-controller --bench fleet -- [--sites N] [--waiters W] [--concurrency C]

#![allow(clippy::print_stdout, clippy::unwrap_used)]

mod support;

use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{percentile, post, rss_mib, start_controller};
use tokio::sync::Semaphore;

struct Args {
    sites: usize,
    waiters: usize,
    concurrency: usize,
}

fn args() -> Args {
    let mut a = Args {
        sites: 4000,
        waiters: 10_000,
        concurrency: 64,
    };
    let v: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < v.len() {
        let next = || v.get(i + 1).and_then(|s| s.parse().ok());
        match v[i].as_str() {
            "--sites" => a.sites = next().expect("--sites N"),
            "--waiters" => a.waiters = next().expect("--waiters N"),
            "--concurrency" => a.concurrency = next().expect("--concurrency N"),
            _ => {}
        }
        i += 1;
    }
    a
}

#[tokio::main]
async fn main() {
    let a = args();
    support::prepare(a.waiters);
    let c = start_controller("", "", "[long_poll]\ntimeout_secs = 300", false);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(usize::MAX)
        .timeout(Duration::from_secs(600))
        .build()
        .unwrap();
    for _ in 0..100 {
        if http.get(format!("{}/healthz", c.url)).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // One (source address, destination) pair has only the ephemeral port
    // range (about 28,000 ports) for connections: spread the waiting agents
    // over several loopback source addresses, 20,000 each.
    let per_client = 20_000;
    let waiter_clients: Vec<reqwest::Client> = (0..a.waiters.div_ceil(per_client).max(1))
        .map(|k| {
            reqwest::Client::builder()
                .local_address(std::net::IpAddr::from([127, 0, 0, 1 + k as u8]))
                .pool_max_idle_per_host(usize::MAX)
                .timeout(Duration::from_secs(600))
                .build()
                .unwrap()
        })
        .collect();
    let total = a.sites.max(a.waiters);
    let per_region = 4000;
    let regions = total.div_ceil(per_region);
    println!("wardnet fleet benchmark: {total} sites in {regions} regions, {} enrolling concurrently, {} long-poll waiters", a.concurrency, a.waiters);

    // Regions and hubs (agentless hubs with their own keys: the hub is not
    // what this measures).
    for r in 0..regions {
        post(
            &http,
            &format!("{}/v1/regions", c.url),
            &c.token,
            json!({"name": format!("r{r}")}),
        )
        .await;
        let key = wardnet_common::PrivateKey::generate().public_key();
        post(
            &http,
            &format!("{}/v1/sites", c.url),
            &c.token,
            json!({"name": format!("hub-{r}"), "region": format!("r{r}"), "role": "hub",
                   "endpoint": format!("198.51.100.{}:51820", r + 1), "public_key": key.to_string()}),
        )
        .await;
    }

    // Sites (pending, with tokens).
    let sem = Arc::new(Semaphore::new(a.concurrency));
    let t = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..total {
        let (http, url, token, sem) = (http.clone(), c.url.clone(), c.token.clone(), sem.clone());
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire().await.unwrap();
            let v = post(
                &http,
                &format!("{url}/v1/sites"),
                &token,
                json!({"name": format!("s{i}"), "region": format!("r{}", i / per_region), "role": "spoke"}),
            )
            .await;
            v["token"].as_str().unwrap().to_owned()
        }));
    }
    let mut tokens = Vec::new();
    for t in tasks {
        tokens.push(t.await.unwrap());
    }
    let add_secs = t.elapsed().as_secs_f64();
    println!(
        "sites added:      {total} in {add_secs:.2} s = {:.0} sites/s",
        total as f64 / add_secs
    );

    // Enrolment, timed.
    let t = Instant::now();
    let mut tasks = Vec::new();
    for token in tokens {
        let (http, url, sem) = (http.clone(), c.url.clone(), sem.clone());
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire().await.unwrap();
            let key = wardnet_common::PrivateKey::generate().public_key();
            let r = http
                .post(format!("{url}/v1/enroll"))
                .json(&json!({"token": token, "public_key": key.to_string()}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
            let v: Value = r.json().await.unwrap();
            v["credential"].as_str().unwrap().to_owned()
        }));
    }
    let mut creds = Vec::new();
    for t in tasks {
        creds.push(t.await.unwrap());
    }
    let enrol_secs = t.elapsed().as_secs_f64();
    println!(
        "enrolments:       {total} in {enrol_secs:.2} s = {:.0} durable enrolments/s (concurrency {})",
        total as f64 / enrol_secs,
        a.concurrency
    );
    println!(
        "controller RSS:   {:.1} MiB after enrolment",
        rss_mib(c.child.id())
    );

    // Long-poll waiters: every agent first takes its current config.
    let waiters = a.waiters.min(creds.len());
    let mut revs = Vec::with_capacity(waiters);
    let mut tasks = Vec::new();
    for (i, cred) in creds[..waiters].iter().enumerate() {
        let http = waiter_clients[i / per_client].clone();
        let (url, sem, cred) = (c.url.clone(), sem.clone(), cred.clone());
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire().await.unwrap();
            let v: Value = http
                .get(format!("{url}/v1/agent/config?revision=0"))
                .bearer_auth(&cred)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["revision"].as_u64().unwrap()
        }));
    }
    for t in tasks {
        revs.push(t.await.unwrap());
    }

    // Every agent holds a long-poll; on an answer it reports the time and
    // polls again with its new revision, as a real agent does.
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    for (i, cred) in creds.iter().take(waiters).enumerate() {
        let http = waiter_clients[i / per_client].clone();
        let (url, tx, cred) = (c.url.clone(), done_tx.clone(), cred.clone());
        let mut rev = revs[i];
        tokio::spawn(async move {
            loop {
                let r = http
                    .get(format!("{url}/v1/agent/config?revision={rev}&wait=300"))
                    .bearer_auth(&cred)
                    .send()
                    .await;
                let at = Instant::now();
                match r {
                    Ok(r) if r.status() == 200 => {
                        if let Some(new) = r
                            .json::<Value>()
                            .await
                            .ok()
                            .and_then(|v| v["revision"].as_u64())
                        {
                            rev = new;
                        }
                        if tx.send(at).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
    }
    drop(done_tx);
    let rounds = regions.min(3);
    let mut all = Vec::new();
    for round in 0..rounds {
        let start_wait = Instant::now();
        loop {
            let n = support::metric(&http, &c.url, "wardnet_controller_long_poll_waiters").await
                as usize;
            if n >= waiters || start_wait.elapsed() > Duration::from_secs(120) {
                println!("round {round}: {n} long-polls held");
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if round == 0 {
            println!(
                "controller RSS:   {:.1} MiB with {waiters} waiting agents",
                rss_mib(c.child.id())
            );
        }
        // One site change: the hub of region `round` moves; every spoke of
        // that region gets a new config, nobody else does.
        let expected = (0..waiters).filter(|i| i / per_region == round).count();
        let t0 = Instant::now();
        let r = http
            .patch(format!("{}/v1/sites/hub-{round}", c.url))
            .bearer_auth(&c.token)
            .json(&json!({"endpoint": format!("203.0.113.{}:51820", round + 1)}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        let mut lat = Vec::new();
        while lat.len() < expected {
            let Some(at) = tokio::time::timeout(Duration::from_secs(60), done_rx.recv())
                .await
                .ok()
                .flatten()
            else {
                break;
            };
            lat.push(at.duration_since(t0));
        }
        lat.sort();
        println!(
            "round {round}: hub-{round} changed -> {} of {expected} waiting agents answered: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            lat.len(),
            percentile(&lat, 0.5).as_secs_f64() * 1e3,
            percentile(&lat, 0.99).as_secs_f64() * 1e3,
            lat.last().copied().unwrap_or_default().as_secs_f64() * 1e3
        );
        all.extend(lat);
    }
    all.sort();
    println!(
        "all rounds: {} answers, p50 {:.1} ms, p99 {:.1} ms",
        all.len(),
        percentile(&all, 0.5).as_secs_f64() * 1e3,
        percentile(&all, 0.99).as_secs_f64() * 1e3
    );
    let _ = std::io::stdout().flush();
}
