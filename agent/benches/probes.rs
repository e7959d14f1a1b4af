//! The probe scheduler at a hub's size, without I/O: a simulated minute of
//! a hub with N peers at the default 5 s interval, every probe lost (every
//! peer down: the worst case). Prints the wake-ups the agent's loop would
//! make (one per `next_deadline`), the probes sent, and the scheduler's own
//! CPU time per simulated minute, i.e. its share of a core.
//!
//!   cargo bench -p wardnet-agent --bench probes

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use wardnet_agent::health::{ProbeConfig, ProbeTarget, Scheduler};
use wardnet_common::Role;

fn main() {
    println!("probe scheduler, one simulated minute, all peers down, 5 s interval");
    for n in [1u32, 1_000, 5_000, 10_000] {
        let t0 = Instant::now();
        let mut s = Scheduler::new(ProbeConfig::default());
        let peers: Vec<ProbeTarget> = (0..n)
            .map(|i| ProbeTarget {
                fast: false,
                name: format!("gp-{i}").parse().unwrap(),
                region: "north".parse().unwrap(),
                role: Role::Spoke,
                address: Some(Ipv4Addr::from(0x6440_0002 + i)),
            })
            .collect();
        s.set_peers(peers, t0);
        let end = t0 + Duration::from_secs(60);
        let mut now = t0;
        let (mut wakes, mut sent) = (0u64, 0usize);
        let cpu = Instant::now();
        while now < end {
            sent += s.on_tick(now).len();
            wakes += 1;
            // The agent's loop sleeps until the next deadline, at a
            // millisecond's resolution at best (tokio's timer).
            let next = s.next_deadline().unwrap();
            now = next.max(now + Duration::from_millis(1));
        }
        let took = cpu.elapsed();
        println!(
            "  {n:>6} peers: {wakes:>6} wake-ups, {sent:>7} probes, scheduler CPU {:>8.2} ms per minute = {:.3} % of a core",
            took.as_secs_f64() * 1e3,
            took.as_secs_f64() / 60.0 * 100.0
        );
    }
}
