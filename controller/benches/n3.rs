//! The N3 benchmark: the controller at the shape of the network it is built
//! for. 13 regions (/20 each) with one hub each, 51,000 spokes enrolling
//! with 64 requests in flight in random region order (sites come online in
//! any region), once without and once with a /24 LAN per spoke; then 18,000
//! agents long-polling (the hubs, every spoke of regions r0..r3, the rest
//! drawn at random) and heartbeating as real agents do.
//!
//! Prints, per run: durable enrolments/s and their p50/p99; and in the
//! waiting phase: one spoke's change -> that spoke's and its hub's answers
//! (p50/p99); one hub's change -> its waiting spokes' answers (p50/p99/max);
//! how many agents answered that the change did not concern (must be 0);
//! controller RSS per waiting agent; controller CPU over an idle minute.
//!
//!   cargo bench -p wardnet-controller --bench n3 -- [--spokes N] [--waiters W]
//!       [--concurrency C] [--lans off|on|both] [--tls] [--idle-secs S] [--changes K]
//!       [--pause-secs S] [--replicas R] [--orgs N]
//!
//! `--orgs N` puts the spokes into N organisations, each within one
//! region (as trusts and practices are), so every spoke's config carries a
//! filter; after enrolment it adds 100 rules, one at a time, each from one
//! random organisation into another, and prints how long each took to be
//! durable and rendered (p50/p99) and the size of one filtered config.
//!
//! `--shape n3` gives the fleet the organisations of the real network
//! instead: a few hundred trusts of 10–200 sites each (one region per
//! trust) and one organisation per remaining site (GP practices), about
//! 28,000 organisations over 51,000 sites; then national services shared
//! with all (4 sites of `national`), 3 regional services per region
//! shared with 10–50 organisations of the region, a NOC rule into all
//! sites, and rules from practices into trusts. It prints enrolment as
//! above, how long each policy change took to be durable and rendered
//! and to reach every affected agent waiting on a long-poll (p50, p99,
//! max), and every site's filter size (median, p99, largest, and the
//! size of the organisation the largest belongs to).
//!
//! `--replicas R` runs R controller replicas on one throwaway PostgreSQL
//! server (the Debian package's `initdb` and `postgres`, `fsync` and
//! `synchronous_commit` on) instead of one controller on SQLite: every
//! request goes to a replica drawn at random, waiting agents are spread
//! over the replicas, changes are made through a random replica, and RSS
//! is reported per replica.
//!
//! `--pause-secs` prints the controller's PID and waits that long before the
//! waiting phase, so a heap profiler can attach (`heaptrack -p PID`) and
//! see what the waiting agents hold.

#![allow(clippy::print_stdout, clippy::unwrap_used)]

mod support;

use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use serde_json::{json, Value};
use support::{
    cpu_secs, delegate, loadavg, metric, ms, percentile, post, rss_mib, start_controller,
    Controller,
};
use tokio::sync::{mpsc, Semaphore};

const REGIONS: usize = 13;
/// Regions whose every spoke waits (a hub change then answers all of them).
const FULL_REGIONS: usize = 4;
/// The agent's long-poll wait (its default `long_poll_secs`).
const AGENT_WAIT: u64 = 290;
/// Waiting agents per loopback source address (ephemeral ports).
const PER_SOURCE: usize = 20_000;
/// Waiting agents per load-generator process: a process may hold at most
/// 20,000 open files on the benchmark machine (and may not raise that), so
/// more waiters run in child processes of this benchmark, 17,000 each
/// (`WARDNET_BENCH_PER_CHILD` overrides it, to try the children small).
fn per_child() -> usize {
    std::env::var("WARDNET_BENCH_PER_CHILD")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(17_000)
}

/// CLOCK_MONOTONIC in nanoseconds: the same clock in every process, so a
/// child's answer times compare with the parent's change times.
fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the valid timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

struct Args {
    spokes: usize,
    waiters: usize,
    concurrency: usize,
    lans: Vec<bool>,
    tls: bool,
    idle_secs: u64,
    changes: usize,
    pause_secs: u64,
    /// 0: one controller on SQLite; else replicas on PostgreSQL.
    replicas: usize,
    /// Organisations the spokes belong to (0: all in `default`).
    orgs: usize,
    /// The organisations of N3 (`--shape n3`).
    shape_n3: bool,
}

fn args() -> Args {
    let mut a = Args {
        spokes: 51_000,
        waiters: 18_000,
        concurrency: 64,
        lans: vec![false, true],
        tls: false,
        idle_secs: 60,
        changes: 50,
        pause_secs: 0,
        replicas: 0,
        orgs: 0,
        shape_n3: false,
    };
    let v: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < v.len() {
        let next = || v.get(i + 1).cloned().unwrap_or_default();
        match v[i].as_str() {
            "--spokes" => a.spokes = next().parse().expect("--spokes N"),
            "--waiters" => a.waiters = next().parse().expect("--waiters N"),
            "--concurrency" => a.concurrency = next().parse().expect("--concurrency N"),
            "--idle-secs" => a.idle_secs = next().parse().expect("--idle-secs S"),
            "--changes" => a.changes = next().parse().expect("--changes K"),
            "--pause-secs" => a.pause_secs = next().parse().expect("--pause-secs S"),
            "--replicas" => a.replicas = next().parse().expect("--replicas R"),
            "--orgs" => a.orgs = next().parse().expect("--orgs N"),
            "--lans" => {
                a.lans = match next().as_str() {
                    "off" => vec![false],
                    "on" => vec![true],
                    _ => vec![false, true],
                }
            }
            "--tls" => a.tls = true,
            "--shape" => a.shape_n3 = next() == "n3",
            _ => {}
        }
        i += 1;
    }
    a
}

/// One site of the benchmark fleet.
#[derive(Clone)]
struct Agent {
    name: String,
    region: usize,
    hub: bool,
    credential: String,
    /// Its organisation (`None`: `default`).
    org: Option<String>,
}

/// Sites of trusts in all (N3: 51,000 sites, about 28,000 organisations;
/// what trusts do not hold is one practice per site).
const TRUST_SITES: usize = 23_300;

/// The organisations of N3 over `spokes` sites: per spoke, its
/// organisation and region. Trusts (10–200 sites, one region each) come
/// first, then one practice per remaining site; each goes to the region
/// with the fewest sites so far (a region's /20 holds 4,094), ties drawn
/// at random.
fn n3_shape(spokes: usize) -> Vec<(String, usize)> {
    let trust_sites = TRUST_SITES * spokes / 51_000;
    let mut load = [0usize; REGIONS];
    let mut emptiest = |n: usize| {
        let least = *load.iter().min().unwrap();
        let ties: Vec<usize> = (0..REGIONS).filter(|&r| load[r] == least).collect();
        let r = ties[rand::random::<usize>() % ties.len()];
        load[r] += n;
        r
    };
    let mut out = Vec::with_capacity(spokes);
    let mut t = 0;
    while out.len() < trust_sites {
        let left = trust_sites - out.len();
        let size = (10 + rand::random::<usize>() % 191).min(left);
        let region = emptiest(size);
        out.extend((0..size).map(|_| (format!("trust-{t}"), region)));
        t += 1;
    }
    for p in 0..spokes - out.len() {
        let region = emptiest(1);
        out.push((format!("gp-{p}"), region));
    }
    out
}

fn lan(i: usize) -> String {
    format!("10.{}.{}.0/24", i / 256, i % 256)
}

async fn enrol(http: &reqwest::Client, url: &str, token: &str) -> (String, Duration) {
    let key = wardnet_common::PrivateKey::generate().public_key();
    let t = Instant::now();
    let r = http
        .post(format!("{url}/v1/enroll"))
        .json(&json!({"token": token, "public_key": key.to_string()}))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    let took = t.elapsed();
    assert_eq!(status, 201, "{v}");
    (v["credential"].as_str().unwrap().to_owned(), took)
}

/// Any replica's URL, drawn at random.
fn any_url(cs: &[Controller]) -> String {
    cs[rand::random::<usize>() % cs.len()].url.clone()
}

/// Build the fleet; returns every agent, hubs first.
async fn build(cs: &[Controller], a: &Args, lans: bool) -> Vec<Agent> {
    let c = &cs[0];
    let http = c.client([127, 0, 0, 1].into());
    let mut agents = Vec::new();
    for r in 0..REGIONS {
        post(
            &http,
            &format!("{}/v1/regions", c.url),
            &c.token,
            json!({"name": format!("r{r}")}),
        )
        .await;
        let v = post(
            &http,
            &format!("{}/v1/sites", c.url),
            &c.token,
            json!({"name": format!("hub-{r}"), "region": format!("r{r}"), "role": "hub",
                   "endpoint": format!("198.51.100.{}:51820", r + 1)}),
        )
        .await;
        let (credential, _) = enrol(&http, &c.url, v["token"].as_str().unwrap()).await;
        agents.push(Agent {
            name: format!("hub-{r}"),
            region: r,
            hub: true,
            credential,
            org: None,
        });
    }
    let shape = a.shape_n3.then(|| n3_shape(a.spokes));

    // Organisations, each within one region.
    let per_org = (a.spokes / a.orgs.max(1)).max(1);
    let org_of = |i: usize| {
        (a.orgs > 0).then(|| {
            let n = (i / per_org).min(a.orgs - 1);
            // Region of the org's first spoke; its spokes are i % REGIONS == region.
            format!("org-{n}")
        })
    };
    let mut org_names: Vec<String> = (0..a.orgs).map(|n| format!("org-{n}")).collect();
    if let Some(shape) = &shape {
        org_names = shape.iter().map(|(o, _)| o.clone()).collect();
        org_names.dedup();
        org_names.extend(["national".to_owned(), "noc".to_owned()]);
    }
    let t = Instant::now();
    let sem = Arc::new(Semaphore::new(a.concurrency));
    let mut tasks = Vec::new();
    for name in &org_names {
        let (http, url, token, sem) = (http.clone(), any_url(cs), c.token.clone(), sem.clone());
        let name = name.clone();
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire().await.unwrap();
            post(
                &http,
                &format!("{url}/v1/orgs"),
                &token,
                json!({"name": name}),
            )
            .await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    if !org_names.is_empty() {
        println!(
            "  organisations:   {} added in {:.1} s",
            org_names.len(),
            t.elapsed().as_secs_f64()
        );
    }

    // Address space, as the NOC delegates it (not what is measured).
    let lans_of = delegate_space(cs, a, shape.as_deref()).await;

    // Spokes, pending with tokens (not what is measured).
    let sem = Arc::new(Semaphore::new(a.concurrency));
    let t = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..a.spokes {
        let (http, url, token, sem) = (http.clone(), any_url(cs), c.token.clone(), sem.clone());
        // An organisation's spokes are consecutive numbers; they share
        // the region of the first (sites of one trust are in one region).
        let (org, region) = match &shape {
            Some(s) => (Some(s[i].0.clone()), s[i].1),
            None if a.orgs > 0 => (org_of(i), (i / per_org).min(a.orgs - 1) % REGIONS),
            None => (None, i % REGIONS),
        };
        let lan = lans_of.as_ref().map_or_else(|| lan(i), |l| l[i].clone());
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire().await.unwrap();
            let name = format!("gp-{region}-{i}");
            let mut body = json!({"name": name, "region": format!("r{region}"), "role": "spoke"});
            if lans {
                body["lan_prefixes"] = json!([lan]);
            }
            if let Some(org) = &org {
                body["org"] = json!(org);
            }
            let v = post(&http, &format!("{url}/v1/sites"), &token, body).await;
            (name, region, v["token"].as_str().unwrap().to_owned(), org)
        }));
    }
    let mut pending = Vec::new();
    for t in tasks {
        pending.push(t.await.unwrap());
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "  sites added:     {} in {secs:.1} s = {:.0}/s",
        a.spokes,
        a.spokes as f64 / secs
    );

    // Enrolment in random region order, timed.
    pending.shuffle(&mut rand::thread_rng());
    let cpu0 = cluster_cpu(cs);
    let t = Instant::now();
    let mut tasks = Vec::new();
    for (name, region, token, org) in pending {
        let (http, url, sem) = (http.clone(), any_url(cs), sem.clone());
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire().await.unwrap();
            let (credential, took) = enrol(&http, &url, &token).await;
            (
                Agent {
                    name,
                    region,
                    hub: false,
                    credential,
                    org,
                },
                took,
            )
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        let (agent, took) = t.await.unwrap();
        agents.push(agent);
        lat.push(took);
    }
    let secs = t.elapsed().as_secs_f64();
    let cpu = cluster_cpu(cs) - cpu0;
    lat.sort();
    println!(
        "  enrolments:      {} in {secs:.1} s = {:.0} durable enrolments/s; latency p50 {:.1} ms, p99 {:.1} ms (random region order, {} in flight)",
        a.spokes,
        a.spokes as f64 / secs,
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99)),
        a.concurrency
    );
    println!(
        "  controller CPU:  {:.0} µs per enrolment ({:.0} % of the 2 cores; the rest is the load generator and the kernel)",
        cpu / a.spokes as f64 * 1e6,
        cpu / secs / 2.0 * 100.0
    );
    let (mut groups, mut changes, mut waited) = (0.0, 0.0, 0.0);
    for c in cs {
        groups += metric(&http, &c.url, "wardnet_controller_change_group_size_count").await;
        changes += metric(&http, &c.url, "wardnet_controller_change_group_size_sum").await;
        waited += metric(
            &http,
            &c.url,
            "wardnet_controller_change_head_wait_seconds_sum",
        )
        .await;
    }
    println!(
        "  controller RSS:  {} MiB after enrolment; {changes:.0} changes in {groups:.0} commits ({:.1} per commit); {:.1} ms average wait for the change log's head",
        rss_list(cs),
        changes / groups.max(1.0),
        waited * 1e3 / groups.max(1.0)
    );
    if a.orgs > 1 {
        policy_changes(cs, a, &agents).await;
    }
    if shape.is_some() {
        n3_policy(cs, &mut agents).await;
    }
    agents
}

/// The NOC's delegations; the LAN prefix of each spoke when they decide
/// it. All spokes in `default` (no `--orgs`, no `--shape`): `default` gets
/// every region's blocks and the LAN space, so its sites' filters hold
/// their organisation as a few prefixes. `--shape n3`: each trust gets an
/// aligned overlay block of its region (IPv4, and IPv6 at the same
/// offset) and an aligned block of /24s, each the smallest power of two
/// that holds its sites, as a NOC sizing trusts would; practices (one site
/// each) get none: their one address is their organisation. Trusts'
/// LANs come first, the practices' after.
async fn delegate_space(
    cs: &[Controller],
    a: &Args,
    shape: Option<&[(String, usize)]>,
) -> Option<Vec<String>> {
    let c = &cs[0];
    let http = c.client([127, 0, 0, 1].into());
    let regions = http
        .get(format!("{}/v1/regions", c.url))
        .bearer_auth(&c.token)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let regions = regions.as_array().unwrap();
    let Some(shape) = shape else {
        if a.orgs == 0 {
            let mut space: Vec<String> = regions
                .iter()
                .flat_map(|r| [r["ipv4_block"].clone(), r["ipv6_block"].clone()])
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect();
            space.push("10.0.0.0/8".into());
            delegate(&http, &c.url, &c.token, "default", &space).await;
        }
        return None;
    };
    let block = |r: usize, key: &str| -> u128 {
        let v = regions
            .iter()
            .find(|x| x["name"] == format!("r{r}"))
            .unwrap();
        match v[key].as_str().unwrap().parse::<ipnet::IpNet>().unwrap() {
            ipnet::IpNet::V4(b) => u32::from(b.network()).into(),
            ipnet::IpNet::V6(b) => b.network().into(),
        }
    };
    // Trusts are consecutive in `shape`: (name, region, first index, sites).
    let mut trusts = Vec::new();
    let mut i = 0;
    while i < shape.len() && shape[i].0.starts_with("trust-") {
        let n = shape[i..]
            .iter()
            .take_while(|(o, _)| *o == shape[i].0)
            .count();
        trusts.push((shape[i].0.clone(), shape[i].1, i, n));
        i += n;
    }
    trusts.sort_by_key(|t| std::cmp::Reverse(t.3));
    // Sorted by size, largest first, each block aligned at the cursor; the
    // overlay cursor starts past the hub's address (a block of its own).
    let mut next4 = [256u128; REGIONS];
    let mut next_lan = 0u128;
    let mut lans = vec![String::new(); shape.len()];
    let mut tasks = Vec::new();
    for (org, r, first, n) in &trusts {
        let size = (*n as u128).next_power_of_two();
        let bits = size.trailing_zeros();
        let at = next4[*r];
        next4[*r] += size;
        let lan_at = next_lan;
        next_lan += size;
        for k in 0..*n {
            let x = lan_at + k as u128;
            lans[first + k] = format!("10.{}.{}.0/24", x / 256, x % 256);
        }
        let space = vec![
            format!(
                "{}/{}",
                std::net::Ipv4Addr::from((block(*r, "ipv4_block") + at) as u32),
                32 - bits
            ),
            format!(
                "{}/{}",
                std::net::Ipv6Addr::from(block(*r, "ipv6_block") + at),
                128 - bits
            ),
            format!("10.{}.{}.0/{}", lan_at / 256, lan_at % 256, 24 - bits),
        ];
        let (http, url, token, org) = (http.clone(), any_url(cs), c.token.clone(), org.clone());
        tasks.push(tokio::spawn(async move {
            delegate(&http, &url, &token, &org, &space).await
        }));
    }
    for lan in lans.iter_mut().filter(|l| l.is_empty()) {
        *lan = format!("10.{}.{}.0/24", next_lan / 256, next_lan % 256);
        next_lan += 1;
    }
    // (10.250.0.0/16 is the national services'.)
    assert!(
        next_lan <= 250 * 256,
        "the LANs need {next_lan} /24s, below 10.250.0.0 are 64,000"
    );
    let count = tasks.len();
    for t in tasks {
        t.await.unwrap();
    }
    println!(
        "  delegations:     {count} trusts, each an aligned overlay block and LAN block; {next_lan} /24s in all"
    );
    Some(lans)
}

/// A site's config now: (revision, filter size in bytes).
async fn config_of(http: &reqwest::Client, url: &str, credential: &str) -> (u64, usize) {
    let v: Value = http
        .get(format!("{url}/v1/agent/config?revision=0"))
        .bearer_auth(credential)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    (
        v["revision"].as_u64().unwrap(),
        v.get("filter").map_or(0, |f| f.to_string().len()),
    )
}

/// Long-poll every agent of `agents` from its current revision; then make
/// `change` and return how long it took to be durable and rendered and
/// how long after it each agent had its answer.
async fn delivered<F, Fut>(
    cs: &[Controller],
    agents: &[&Agent],
    change: F,
) -> (Duration, Vec<Duration>)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let http = cs[0].client([127, 0, 0, 1].into());
    let mut polls = Vec::new();
    let (go, _) = tokio::sync::broadcast::channel::<Instant>(1);
    for g in agents {
        let (http, url, cred) = (http.clone(), any_url(cs), g.credential.clone());
        let (rev, _) = config_of(&http, &url, &cred).await;
        let mut at = go.subscribe();
        polls.push(tokio::spawn(async move {
            let r = http
                .get(format!(
                    "{url}/v1/agent/config?revision={rev}&wait=60&deltas=true"
                ))
                .bearer_auth(&cred)
                .send()
                .await
                .unwrap();
            let done = Instant::now();
            assert_eq!(r.status(), 200, "an affected agent was not answered");
            let t0 = at.recv().await.unwrap();
            done.saturating_duration_since(t0)
        }));
    }
    // Every poll is waiting before the change.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t0 = Instant::now();
    change().await;
    let took = t0.elapsed();
    let _ = go.send(t0);
    let mut lat = Vec::new();
    for p in polls {
        lat.push(p.await.unwrap());
    }
    (took, lat)
}

/// The policy of N3 on the enrolled fleet: national services, regional
/// services, the NOC's rule into all sites, rules from practices into
/// trusts; then every site's filter size.
async fn n3_policy(cs: &[Controller], agents: &mut Vec<Agent>) {
    let c = &cs[0];
    let http = c.client([127, 0, 0, 1].into());
    let mut by_org: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, g) in agents.iter().enumerate() {
        if let Some(o) = &g.org {
            by_org.entry(o.clone()).or_default().push(i);
        }
    }
    let trusts: Vec<String> = by_org
        .keys()
        .filter(|o| o.starts_with("trust-"))
        .cloned()
        .collect();
    let practices: Vec<String> = by_org
        .keys()
        .filter(|o| o.starts_with("gp-"))
        .cloned()
        .collect();
    let pick = |v: &[String]| v[rand::random::<usize>() % v.len()].clone();
    let (mut made, mut reached) = (Vec::new(), Vec::new());

    // National services: four sites of `national`, each shared with all.
    for r in 0..4 {
        let name = format!("spine-{r}");
        let v = post(
            &http,
            &format!("{}/v1/sites", c.url),
            &c.token,
            json!({"name": name, "region": format!("r{r}"), "role": "spoke", "org": "national",
                   "lan_prefixes": [format!("10.250.{r}.0/24")]}),
        )
        .await;
        let (credential, _) = enrol(&http, &c.url, v["token"].as_str().unwrap()).await;
        agents.push(Agent {
            name: name.clone(),
            region: r,
            hub: false,
            credential,
            org: Some("national".into()),
        });
        let at = vec![&agents[agents.len() - 1]];
        let (took, lat) = delivered(cs, &at, || async {
            post(
                &http,
                &format!("{}/v1/policy/services", any_url(cs)),
                &c.token,
                json!({"name": format!("spine-{r}"), "site": name, "proto": "tcp", "ports": ["443"],
                       "shared_with": "all"}),
            )
            .await;
        })
        .await;
        made.push(took);
        reached.extend(lat);
    }
    // Regional services: three per region at trust sites, each shared
    // with 10–50 practices of the region.
    for r in 0..REGIONS {
        let here: Vec<&String> = trusts
            .iter()
            .filter(|t| agents[by_org[*t][0]].region == r)
            .collect();
        let local: Vec<&String> = practices
            .iter()
            .filter(|p| agents[by_org[*p][0]].region == r)
            .collect();
        if here.is_empty() || local.len() < 50 {
            continue;
        }
        for k in 0..3 {
            let trust = here[rand::random::<usize>() % here.len()];
            let site = &agents[by_org[trust][0]];
            let n = 10 + rand::random::<usize>() % 41;
            let with: Vec<&String> = local
                .choose_multiple(&mut rand::thread_rng(), n)
                .copied()
                .collect();
            let (took, lat) = delivered(cs, &[site], || async {
                post(
                    &http,
                    &format!("{}/v1/policy/services", any_url(cs)),
                    &c.token,
                    json!({"name": format!("svc-{r}-{k}"), "site": site.name, "proto": "tcp",
                           "ports": ["8443"], "shared_with": with}),
                )
                .await;
            })
            .await;
            made.push(took);
            reached.extend(lat);
        }
    }
    // Rules from practices into trusts: every site of the trust hears.
    for k in 0..30 {
        let trust = pick(&trusts);
        let at: Vec<&Agent> = by_org[&trust].iter().map(|&i| &agents[i]).collect();
        let from = pick(&practices);
        let (took, lat) = delivered(cs, &at, || async {
            post(
                &http,
                &format!("{}/v1/policy/rules", any_url(cs)),
                &c.token,
                json!({"from": format!("org:{from}"), "to": format!("org:{trust}"),
                       "proto": "tcp", "ports": [format!("{}", 2000 + k)]}),
            )
            .await;
        })
        .await;
        made.push(took);
        reached.extend(lat);
    }
    made.sort();
    reached.sort();
    println!(
        "  policy changes:  {} (4 national services, 3 regional services per region, 30 rules into trusts): durable and rendered p50 {:.1} ms, p99 {:.1} ms; every affected waiting agent answered ({} answers): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        made.len(),
        ms(percentile(&made, 0.5)),
        ms(percentile(&made, 0.99)),
        reached.len(),
        ms(percentile(&reached, 0.5)),
        ms(percentile(&reached, 0.99)),
        ms(*reached.last().unwrap()),
    );

    // The NOC's monitoring: one site, one rule into all sites; 2,000
    // agents drawn at random wait for it.
    let v = post(
        &http,
        &format!("{}/v1/sites", c.url),
        &c.token,
        json!({"name": "noc-1", "region": "r0", "role": "spoke", "org": "noc"}),
    )
    .await;
    enrol(&http, &c.url, v["token"].as_str().unwrap()).await;
    let sample: Vec<&Agent> = agents
        .choose_multiple(&mut rand::thread_rng(), 2_000)
        .collect();
    let (took, mut lat) = delivered(cs, &sample, || async {
        post(
            &http,
            &format!("{}/v1/policy/rules", any_url(cs)),
            &c.token,
            json!({"from": "org:noc", "to": "all", "proto": "tcp", "ports": ["9586"]}),
        )
        .await;
    })
    .await;
    lat.sort();
    println!(
        "  NOC rule to all: every site's filter ({}) durable and rendered in {:.0} ms; 2,000 waiting agents drawn at random answered p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        agents.len() + 1,
        ms(took),
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99)),
        ms(*lat.last().unwrap()),
    );

    // Every site's filter.
    let sem = Arc::new(Semaphore::new(64));
    let mut tasks = Vec::new();
    for g in agents.iter() {
        let (http, url, cred, sem) = (http.clone(), any_url(cs), g.credential.clone(), sem.clone());
        let org_size = g
            .org
            .as_ref()
            .map_or(0, |o| by_org.get(o).map_or(0, Vec::len));
        let name = g.name.clone();
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire().await.unwrap();
            (config_of(&http, &url, &cred).await.1, org_size, name)
        }));
    }
    let mut sizes = Vec::new();
    for t in tasks {
        sizes.push(t.await.unwrap());
    }
    sizes.sort();
    let (largest, org_size, name) = sizes.last().unwrap().clone();
    let at = |q: f64| sizes[((sizes.len() - 1) as f64 * q) as usize].0;
    let median_trust = {
        let mut t: Vec<usize> = sizes.iter().filter(|s| s.1 >= 10).map(|s| s.0).collect();
        t.sort_unstable();
        t.get(t.len() / 2).copied().unwrap_or(0)
    };
    println!(
        "  filters:         {} sites: median {} bytes, p99 {} bytes, largest {largest} bytes ({name}, of an organisation of {org_size} sites); a trust site's median {median_trust} bytes",
        sizes.len(),
        at(0.5),
        at(0.99),
    );
}

/// 100 rules, one at a time, each from one random organisation into
/// another: how long each takes to be durable and rendered into the
/// filters of the destination's sites, and what one filtered config weighs.
async fn policy_changes(cs: &[Controller], a: &Args, agents: &[Agent]) {
    let c = &cs[0];
    let http = c.client([127, 0, 0, 1].into());
    let mut lat = Vec::new();
    for k in 0..100 {
        let from = rand::random::<usize>() % a.orgs;
        let to = (from + 1 + rand::random::<usize>() % (a.orgs - 1)) % a.orgs;
        let t = Instant::now();
        post(
            &http,
            &format!("{}/v1/policy/rules", any_url(cs)),
            &c.token,
            json!({"from": format!("org:org-{from}"), "to": format!("org:org-{to}"),
                   "proto": "tcp", "ports": [format!("{}", 1000 + k)]}),
        )
        .await;
        lat.push(t.elapsed());
    }
    lat.sort();
    let spoke = agents.iter().find(|g| !g.hub).unwrap();
    let config = http
        .get(format!("{}/v1/agent/config?revision=0", c.url))
        .bearer_auth(&spoke.credential)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let filter = serde_json::from_str::<Value>(&config).unwrap()["filter"].to_string();
    println!(
        "  policy:          {} organisations of about {} sites; a rule into one: p50 {:.1} ms, p99 {:.1} ms to durable and rendered; one spoke's config {} bytes, its filter {} bytes",
        a.orgs,
        a.spokes / a.orgs,
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99)),
        config.len(),
        filter.len()
    );
}

/// CPU seconds of every replica together.
fn cluster_cpu(cs: &[Controller]) -> f64 {
    cs.iter().map(|c| cpu_secs(c.pid())).sum()
}

/// RSS of each replica, in MiB, e.g. "412" or "301 / 298 / 305".
fn rss_list(cs: &[Controller]) -> String {
    cs.iter()
        .map(|c| format!("{:.0}", rss_mib(c.pid())))
        .collect::<Vec<_>>()
        .join(" / ")
}

/// An answer a waiting agent got: who, and when.
struct Answer {
    agent: usize,
    at: Instant,
}

/// Start one waiting agent: it takes its config, then long-polls as the
/// agent does (wait 290 s, deltas; a waiting long-poll is its presence), and
/// reports after every new config and every 5 minutes.
fn spawn_waiter(
    http: reqwest::Client,
    url: String,
    agent: Agent,
    idx: usize,
    tx: mpsc::UnboundedSender<Answer>,
    heartbeats: Arc<std::sync::atomic::AtomicU64>,
    ready: Arc<Semaphore>,
) {
    tokio::spawn(async move {
        let mut permit = Some(ready.acquire_owned().await.unwrap());
        let mut rev = 0u64;
        let mut first = true;
        let mut phased = false;
        let mut reported = Instant::now();
        loop {
            // A real fleet's agents started at random times: the first
            // wait is drawn at random, so the idle phase sees polls arrive
            // at their steady rate, not in one wave.
            let wait = if first {
                0
            } else if !phased {
                phased = true;
                rand::random::<u64>() % AGENT_WAIT + 1
            } else {
                AGENT_WAIT
            };
            let r = http
                .get(format!(
                    "{url}/v1/agent/config?revision={rev}&wait={wait}&deltas=true"
                ))
                .bearer_auth(&agent.credential)
                .send()
                .await;
            let at = Instant::now();
            let status = match r {
                Ok(r) if r.status() == 200 => {
                    let v: Value = r.json().await.unwrap_or(Value::Null);
                    rev = match v["kind"].as_str() {
                        Some("full") => v["config"]["revision"].as_u64().unwrap_or(rev),
                        _ => v["steps"]
                            .as_array()
                            .and_then(|s| s.last())
                            .and_then(|s| s["revision"].as_u64())
                            .unwrap_or(rev),
                    };
                    200
                }
                Ok(r) => r.status().as_u16(),
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            if first {
                first = false;
                permit.take();
            } else if status == 200 {
                if tx.send(Answer { agent: idx, at }).is_err() {
                    return;
                }
                // Back to a random phase, so the idle minute after the
                // change rounds sees the steady rate of a fleet whose
                // agents started at random times (not one synchronised wave).
                phased = false;
            }
            if status == 204 {
                heartbeats.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            // As the agent: a report after a new config, else only every
            // 5 minutes (the long-poll itself is the heartbeat).
            if status == 200 || (status == 204 && reported.elapsed() >= Duration::from_secs(300)) {
                reported = Instant::now();
                let _ = http
                    .post(format!("{url}/v1/agent/report"))
                    .bearer_auth(&agent.credential)
                    .json(&json!({"applied_revision": rev,
                                  "health": {"peers_up": 1, "peers_total": 1}}))
                    .send()
                    .await;
            }
        }
    });
}

async fn waiting_phase(cs: &[Controller], a: &Args, agents: &[Agent]) {
    let c = &cs[0];
    // Who waits: the hubs, every spoke of the first regions, then others
    // drawn at random.
    let mut chosen: Vec<usize> = (0..agents.len())
        .filter(|&i| agents[i].hub || agents[i].region < FULL_REGIONS)
        .collect();
    let mut rest: Vec<usize> = (0..agents.len())
        .filter(|&i| !agents[i].hub && agents[i].region >= FULL_REGIONS)
        .collect();
    rest.shuffle(&mut rand::thread_rng());
    chosen.extend(
        rest.into_iter()
            .take(a.waiters.saturating_sub(chosen.len())),
    );
    chosen.truncate(a.waiters);
    let waiting: HashSet<usize> = chosen.iter().copied().collect();
    let n = chosen.len();

    let http = c.client([127, 0, 0, 1].into());
    let rss_before: Vec<f64> = cs.iter().map(|c| rss_mib(c.pid())).collect();
    let clients: Vec<reqwest::Client> = (0..n.div_ceil(PER_SOURCE).max(1))
        .map(|k| c.client([127, 0, 0, 2 + k as u8].into()))
        .collect();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let heartbeats = Arc::new(std::sync::atomic::AtomicU64::new(0));
    // At most `concurrency` first fetches at once, as after enrolment.
    let ready = Arc::new(Semaphore::new(a.concurrency));
    let _children = if n > per_child() && !a.tls {
        spawn_children(cs, a, agents, &chosen, tx.clone(), heartbeats.clone())
    } else {
        Vec::new()
    };
    for (k, &i) in chosen.iter().enumerate() {
        if n > per_child() && !a.tls {
            break;
        }
        // Over TLS the client speaks HTTP/2 and would carry every waiter on
        // one connection; real agents each hold their own.
        let client = if a.tls {
            c.client([127, 0, 0, 2 + (k / PER_SOURCE) as u8].into())
        } else {
            clients[k / PER_SOURCE].clone()
        };
        // Spread over the replicas.
        spawn_waiter(
            client,
            cs[k % cs.len()].url.clone(),
            agents[i].clone(),
            i,
            tx.clone(),
            heartbeats.clone(),
            ready.clone(),
        );
    }
    let t = Instant::now();
    loop {
        let mut held = 0;
        for c in cs {
            held += metric(&http, &c.url, "wardnet_controller_long_poll_waiters").await as usize;
        }
        if held >= n {
            break;
        }
        if t.elapsed() > Duration::from_secs(300) {
            println!("  only {held} of {n} long-polls held after 300 s");
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss: Vec<f64> = cs.iter().map(|c| rss_mib(c.pid())).collect();
    let grown: f64 = rss.iter().zip(&rss_before).map(|(a, b)| a - b).sum();
    println!(
        "  waiting agents:  {n} held in {:.1} s; controller RSS {} MiB (was {}) = {:.1} KiB per waiting agent",
        t.elapsed().as_secs_f64(),
        rss.iter().map(|r| format!("{r:.0}")).collect::<Vec<_>>().join(" / "),
        rss_before.iter().map(|r| format!("{r:.0}")).collect::<Vec<_>>().join(" / "),
        grown * 1024.0 / n as f64
    );
    while rx.try_recv().is_ok() {}

    let hub_of = |region: usize| -> usize { region };
    let mut others = 0usize;
    // Collect answers until `expected` have all come (or a timeout), and
    // for a short grace after, counting the ones nobody expected.
    async fn collect(
        rx: &mut mpsc::UnboundedReceiver<Answer>,
        expected: &HashSet<usize>,
        t0: Instant,
    ) -> (HashMap<usize, Duration>, usize) {
        let mut got = HashMap::new();
        let mut others = 0;
        let deadline = t0 + Duration::from_secs(30);
        while got.len() < expected.len() {
            match tokio::time::timeout_at(deadline.into(), rx.recv()).await {
                Ok(Some(a)) if expected.contains(&a.agent) => {
                    got.entry(a.agent).or_insert(a.at.duration_since(t0));
                }
                Ok(Some(_)) => others += 1,
                _ => break,
            }
        }
        let grace = Instant::now() + Duration::from_millis(300);
        while let Ok(Some(a)) = tokio::time::timeout_at(grace.into(), rx.recv()).await {
            if !expected.contains(&a.agent) {
                others += 1;
            }
        }
        (got, others)
    }

    // One spoke changes: it and its hub answer.
    let mut spoke_lat = Vec::new();
    let mut hub_lat = Vec::new();
    let candidates: Vec<usize> = chosen.iter().copied().filter(|&i| !agents[i].hub).collect();
    for k in 0..a.changes {
        let i = candidates[(k * 7919) % candidates.len()];
        let hub = hub_of(agents[i].region);
        let expected: HashSet<usize> = [i, hub]
            .into_iter()
            .filter(|x| waiting.contains(x))
            .collect();
        let t0 = Instant::now();
        let r = http
            .patch(format!("{}/v1/sites/{}", any_url(cs), agents[i].name))
            .bearer_auth(&c.token)
            .json(&json!({"endpoint": format!("203.0.113.{}:{}", k % 250 + 1, 40000 + k)}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
        let (got, o) = collect(&mut rx, &expected, t0).await;
        others += o;
        if let Some(d) = got.get(&i) {
            spoke_lat.push(*d);
        }
        if let Some(d) = got.get(&hub) {
            hub_lat.push(*d);
        }
    }
    spoke_lat.sort();
    hub_lat.sort();
    println!(
        "  spoke change:    {} changes; the spoke answered p50 {:.1} ms, p99 {:.1} ms; its hub p50 {:.1} ms, p99 {:.1} ms; other agents answered: {others}",
        a.changes,
        ms(percentile(&spoke_lat, 0.5)),
        ms(percentile(&spoke_lat, 0.99)),
        ms(percentile(&hub_lat, 0.5)),
        ms(percentile(&hub_lat, 0.99)),
    );

    // One hub changes: its waiting spokes and the other hubs (hub mesh)
    // answer.
    for r in 0..FULL_REGIONS.min(REGIONS) {
        let spokes: HashSet<usize> = chosen
            .iter()
            .copied()
            .filter(|&i| !agents[i].hub && agents[i].region == r)
            .collect();
        let mut expected = spokes.clone();
        // Not hub r itself: its own endpoint is not in its config.
        expected.extend((0..REGIONS).filter(|&h| h != r && waiting.contains(&h)));
        let t0 = Instant::now();
        let resp = http
            .patch(format!("{}/v1/sites/hub-{r}", any_url(cs)))
            .bearer_auth(&c.token)
            .json(&json!({"endpoint": format!("203.0.113.{}:51820", r + 100)}))
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success());
        let acked = t0.elapsed();
        let (got, o) = collect(&mut rx, &expected, t0).await;
        let mut lat: Vec<Duration> = got
            .iter()
            .filter(|(i, _)| spokes.contains(i))
            .map(|(_, d)| *d)
            .collect();
        lat.sort();
        println!(
            "  hub change:      hub-{r} (acknowledged in {:.1} ms) -> {} of {} waiting spokes answered: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; other agents answered: {o}",
            ms(acked),
            lat.len(),
            spokes.len(),
            ms(percentile(&lat, 0.5)),
            ms(percentile(&lat, 0.99)),
            ms(lat.last().copied().unwrap_or_default()),
        );
    }

    // An idle minute: nothing changes, every agent heartbeats.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let hb0 = heartbeats.load(std::sync::atomic::Ordering::Relaxed);
    let cpu0 = cluster_cpu(cs);
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(a.idle_secs)).await;
    let cpu = cluster_cpu(cs) - cpu0;
    let secs = t.elapsed().as_secs_f64();
    let hb = heartbeats.load(std::sync::atomic::Ordering::Relaxed) - hb0;
    println!(
        "  idle:            {secs:.0} s with {n} agents, {hb} heartbeats (a new long-poll each): controller CPU {:.2} % of a core (all replicas)",
        cpu / secs * 100.0
    );
}

/// Run the waiting agents of `chosen` in child processes of this benchmark
/// ([`per_child`] each), feeding their answers and heartbeats into `tx` and
/// `heartbeats` as if they ran here.
fn spawn_children(
    cs: &[Controller],
    a: &Args,
    agents: &[Agent],
    chosen: &[usize],
    tx: mpsc::UnboundedSender<Answer>,
    heartbeats: Arc<std::sync::atomic::AtomicU64>,
) -> Vec<support::Reaped> {
    use std::io::{BufRead, BufReader};
    let exe = std::env::current_exe().unwrap();
    let base = (Instant::now(), mono_ns());
    let mut out = Vec::new();
    let chunks: Vec<&[usize]> = chosen.chunks(per_child()).collect();
    let per_child_ready = (a.concurrency / chunks.len()).max(1);
    for (k, chunk) in chunks.into_iter().enumerate() {
        let mut child = std::process::Command::new(&exe)
            .args([
                "--waiter-child",
                &format!("127.0.0.{}", 2 + k),
                &per_child_ready.to_string(),
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        for (j, &i) in chunk.iter().enumerate() {
            // Spread over the replicas, as in-process waiters are.
            let url = &cs[(k * per_child() + j) % cs.len()].url;
            writeln!(stdin, "{i} {url} {}", agents[i].credential).unwrap();
        }
        drop(stdin);
        let stdout = child.stdout.take().unwrap();
        let (tx, heartbeats) = (tx.clone(), heartbeats.clone());
        std::thread::spawn(move || {
            let mut last = 0u64;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                let f: Vec<&str> = line.split_whitespace().collect();
                match f.as_slice() {
                    ["A", idx, ns] => {
                        let (idx, ns): (usize, u64) = (idx.parse().unwrap(), ns.parse().unwrap());
                        let at = base.0 + Duration::from_nanos(ns.saturating_sub(base.1));
                        if tx.send(Answer { agent: idx, at }).is_err() {
                            return;
                        }
                    }
                    ["H", total] => {
                        let total: u64 = total.parse().unwrap();
                        heartbeats.fetch_add(total - last, std::sync::atomic::Ordering::Relaxed);
                        last = total;
                    }
                    _ => {}
                }
            }
        });
        out.push(support::Reaped(child));
    }
    out
}

/// A child's part of the waiting agents: lines `IDX URL CREDENTIAL` on
/// standard input; prints `A IDX MONO_NS` per answer to a change and
/// `H TOTAL` (heartbeats so far) every second, until it is killed.
async fn waiter_child(source: &str, ready: usize) {
    use std::io::BufRead;
    let source: std::net::IpAddr = source.parse().unwrap();
    let http = reqwest::Client::builder()
        .local_address(source)
        .pool_max_idle_per_host(usize::MAX)
        .timeout(Duration::from_secs(600))
        .build()
        .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel::<Answer>();
    let heartbeats = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let ready = Arc::new(Semaphore::new(ready));
    let base = (Instant::now(), mono_ns());
    for line in std::io::stdin().lock().lines() {
        let line = line.unwrap();
        let f: Vec<&str> = line.split_whitespace().collect();
        let [idx, url, credential] = f.as_slice() else {
            continue;
        };
        let agent = Agent {
            name: String::new(),
            region: 0,
            hub: false,
            credential: (*credential).to_owned(),
            org: None,
        };
        spawn_waiter(
            http.clone(),
            (*url).to_owned(),
            agent,
            idx.parse().unwrap(),
            tx.clone(),
            heartbeats.clone(),
            ready.clone(),
        );
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut stdout = std::io::stdout();
    loop {
        tokio::select! {
            a = rx.recv() => {
                let Some(a) = a else { return };
                let ns = base.1 + a.at.duration_since(base.0).as_nanos() as u64;
                if writeln!(stdout, "A {} {ns}", a.agent).is_err() {
                    return;
                }
            }
            _ = tick.tick() => {
                let h = heartbeats.load(std::sync::atomic::Ordering::Relaxed);
                if writeln!(stdout, "H {h}").and_then(|()| stdout.flush()).is_err() {
                    return;
                }
            }
        }
    }
}

#[tokio::main]
async fn main() {
    let argv: Vec<String> = std::env::args().collect();
    if let Some(k) = argv.iter().position(|x| x == "--waiter-child") {
        support::raise_fd_limit();
        wardnet_controller::init_crypto();
        waiter_child(&argv[k + 1], argv[k + 2].parse().unwrap()).await;
        return;
    }
    let a = args();
    // Waiters past one process's share run in child processes.
    support::prepare(a.waiters.min(per_child()));
    println!(
        "wardnet N3 benchmark: {REGIONS} regions, {REGIONS} hubs, {} spokes, {} in flight, random region order; {} waiting agents; {}; {}; load {}",
        a.spokes,
        a.concurrency,
        a.waiters,
        if a.tls { "TLS" } else { "plain HTTP" },
        if a.replicas == 0 {
            "one controller on SQLite".to_owned()
        } else {
            format!("{} replicas on PostgreSQL", a.replicas)
        },
        loadavg()
    );
    for (k, &lans) in a.lans.iter().enumerate() {
        println!(
            "run {}: {}",
            k + 1,
            if lans {
                "one /24 LAN per spoke"
            } else {
                "no LANs"
            }
        );
        // A fresh database per run.
        let pg = (a.replicas > 0).then(|| {
            wardnet_pgtest::TempPostgres::start()
                .expect("a PostgreSQL server (apt-get install postgresql)")
        });
        // At N3's shape, trusts' blocks are aligned and need room: /19
        // regions (8,190 addresses for ~3,900 sites).
        let network = if a.shape_n3 {
            "region_prefix_len_v4 = 19"
        } else {
            ""
        };
        let cs: Vec<Controller> = match &pg {
            None => vec![start_controller("", network, "", a.tls)],
            Some(pg) => {
                let db = format!(
                    "[database]\nurl = {:?}\npool_size = 8\n",
                    pg.url("postgres")
                );
                (0..a.replicas)
                    .map(|_| start_controller("", network, &db, a.tls))
                    .collect()
            }
        };
        for c in &cs {
            c.ready().await;
        }
        let agents = build(&cs, &a, lans).await;
        // The waiting phase once, after the last (heaviest) run.
        if k + 1 == a.lans.len() && a.waiters > 0 {
            if a.pause_secs > 0 {
                println!(
                    "  pausing {} s before the waiting phase; controller PID {}",
                    a.pause_secs,
                    cs[0].pid()
                );
                let _ = std::io::stdout().flush();
                tokio::time::sleep(Duration::from_secs(a.pause_secs)).await;
            }
            waiting_phase(&cs, &a, &agents).await;
        }
        let _ = std::io::stdout().flush();
        drop(cs);
        drop(pg);
    }
    println!("load after: {}", loadavg());
}
