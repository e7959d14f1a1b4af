//! A queue bounded by time, not size: CoDel (RFC 8289) on the UDP socket's
//! receive queue.
//!
//! The kernel's buffer stays large, so a burst is never dropped by the
//! kernel, but a queue that stays full is: when every datagram of the last
//! `interval` waited longer than `target` (the kernel stamps each one as it
//! arrives), the shell drops one bulk data message, then more and more
//! often (interval / √count) until the waiting time falls below `target`.
//! TCP in the tunnel sees a loss and slows down before the queue grows into
//! milliseconds of delay for everyone sharing the link (a ping, a clinical
//! system's request). Sans-IO: time comes in as arguments.

use std::time::{Duration, Instant};

/// Waiting time a standing queue may keep.
pub(crate) const TARGET: Duration = Duration::from_millis(1);
/// How long the waiting time must stay above `TARGET` before the first
/// drop: about the round trip of the flows the queue carries.
pub(crate) const INTERVAL: Duration = Duration::from_millis(20);

/// CoDel's state: whether it is dropping, when next, and how often.
#[derive(Debug)]
pub(crate) struct Codel {
    target: Duration,
    interval: Duration,
    /// When the waiting time will have been above target for an interval.
    first_above: Option<Instant>,
    dropping: bool,
    drop_next: Instant,
    /// Drops in this dropping state, and at the end of the previous one.
    count: u32,
    last_count: u32,
}

impl Codel {
    pub(crate) fn new(target: Duration, interval: Duration, now: Instant) -> Self {
        Codel {
            target,
            interval,
            first_above: None,
            dropping: false,
            drop_next: now,
            count: 0,
            last_count: 0,
        }
    }

    /// Whether to drop a datagram that waited `sojourn` in the queue and is
    /// taken off it at `now`.
    pub(crate) fn should_drop(&mut self, sojourn: Duration, now: Instant) -> bool {
        let above = if sojourn < self.target {
            self.first_above = None;
            false
        } else {
            match self.first_above {
                None => {
                    self.first_above = Some(now + self.interval);
                    false
                }
                Some(t) => now >= t,
            }
        };
        if self.dropping {
            if !above {
                self.dropping = false;
                return false;
            }
            if now >= self.drop_next {
                self.count = self.count.saturating_add(1);
                self.drop_next = self.control_law(self.drop_next);
                return true;
            }
            return false;
        }
        if !above {
            return false;
        }
        self.dropping = true;
        // Back to dropping soon after the last time: carry on near the rate
        // that was reached, not from the start.
        let delta = self.count.saturating_sub(self.last_count);
        let recent = now.saturating_duration_since(self.drop_next) < self.interval * 16;
        self.count = if delta > 1 && recent { delta } else { 1 };
        self.last_count = self.count;
        self.drop_next = self.control_law(now);
        true
    }

    fn control_law(&self, t: Instant) -> Instant {
        t + self.interval.div_f64(f64::from(self.count.max(1)).sqrt())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Feeds one datagram every `every` with the given waiting time, for
    /// `span`; returns the times (from the start) of the drops.
    fn run(
        codel: &mut Codel,
        start: Instant,
        span: Duration,
        every: Duration,
        sojourn: Duration,
    ) -> Vec<Duration> {
        let mut drops = Vec::new();
        let mut t = Duration::ZERO;
        while t < span {
            if codel.should_drop(sojourn, start + t) {
                drops.push(t);
            }
            t += every;
        }
        drops
    }

    #[test]
    fn a_short_queue_or_a_burst_is_never_dropped() {
        let start = Instant::now();
        let mut codel = Codel::new(TARGET, INTERVAL, start);
        assert!(run(&mut codel, start, 10 * INTERVAL, MS / 10, TARGET / 2).is_empty());
        // A burst: above target for less than an interval.
        let later = start + 10 * INTERVAL;
        assert!(run(&mut codel, later, INTERVAL - MS, MS / 10, 5 * TARGET).is_empty());
        assert!(!codel.should_drop(TARGET / 2, later + INTERVAL));
    }

    #[test]
    fn a_standing_queue_is_dropped_ever_more_often_until_it_goes() {
        let start = Instant::now();
        let mut codel = Codel::new(TARGET, INTERVAL, start);
        let drops = run(&mut codel, start, 20 * INTERVAL, MS / 10, 3 * TARGET);
        assert!(drops.len() > 5, "{drops:?}");
        assert!(drops[0] >= INTERVAL, "not before an interval: {drops:?}");
        let gaps: Vec<Duration> = drops.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(
            gaps.windows(2).all(|g| g[1] <= g[0] + MS / 10),
            "the gaps shrink: {gaps:?}"
        );
        // The queue drains: no more drops.
        let after = start + 20 * INTERVAL;
        assert!(run(&mut codel, after, 5 * INTERVAL, MS / 10, TARGET / 2).is_empty());
    }

    #[test]
    fn dropping_again_soon_resumes_near_the_rate_reached() {
        let start = Instant::now();
        let mut codel = Codel::new(TARGET, INTERVAL, start);
        run(&mut codel, start, 30 * INTERVAL, MS / 10, 3 * TARGET);
        let reached = codel.count;
        let t = start + 30 * INTERVAL;
        run(&mut codel, t, INTERVAL, MS / 10, TARGET / 2);
        // Above target again: the first drop after an interval carries on
        // near the count reached, not from one.
        let mut now = t + INTERVAL;
        while !codel.should_drop(3 * TARGET, now) {
            now += MS / 10;
            assert!(now < t + 4 * INTERVAL, "drops again");
        }
        assert!(
            codel.count > 1 && codel.count <= reached,
            "{} of {reached}",
            codel.count
        );
    }
}

/// The TUN device's queue, in entries (an entry may be one small packet or
/// a 64 KiB TCP super-packet), at rest: room for a burst of small packets.
pub(crate) const RING_MAX: u32 = 1024;
/// The fewest entries it is shrunk to.
pub(crate) const RING_MIN: u32 = 8;
/// How long, without a standing queue, before the queue may grow again.
const RING_CALM: Duration = Duration::from_secs(2);

/// Sizes the TUN device's queue by what the agent drains from it. The
/// kernel stamps nothing there, so a standing queue is seen from our side:
/// the device still had packets after every read for `INTERVAL`. Then the
/// queue is cut to `TARGET`'s worth of the entries read per second (at
/// least `RING_MIN`): the sender's TCP meets a full queue (a loss) instead
/// of a longer one. It stays cut while traffic flows at that rate, and
/// grows back by a quarter per tick, up to `RING_MAX`, once the rate has
/// stayed under half of it for `RING_CALM` (bursts of small packets
/// need the room; a bulk flow would only fill it).
#[derive(Debug)]
pub(crate) struct RingSizer {
    size: u32,
    /// Since when every read left packets behind.
    busy_since: Option<Instant>,
    /// When a standing queue was last seen.
    standing: Option<Instant>,
    /// The read rate (entries a second) when the queue was last cut.
    cut_at: f64,
    /// Since when the rate has been under half of `cut_at`.
    calm_since: Option<Instant>,
    /// Entries read since `window`.
    reads: u64,
    window: Instant,
}

impl RingSizer {
    pub(crate) fn new(now: Instant) -> Self {
        RingSizer {
            size: RING_MAX,
            busy_since: None,
            standing: None,
            cut_at: 0.0,
            calm_since: None,
            reads: 0,
            window: now,
        }
    }

    /// After reading `entries` from the device: `emptied` when the last
    /// read found it empty.
    pub(crate) fn drained(&mut self, entries: usize, emptied: bool, now: Instant) {
        self.reads += entries as u64;
        if emptied {
            self.busy_since = None;
            return;
        }
        let since = *self.busy_since.get_or_insert(now);
        if now.saturating_duration_since(since) >= INTERVAL {
            self.standing = Some(now);
        }
    }

    /// Called every tick: the size the queue should have now, if it changes.
    pub(crate) fn tick(&mut self, now: Instant) -> Option<u32> {
        let elapsed = now.saturating_duration_since(self.window).as_secs_f64();
        if elapsed <= 0.0 {
            return None;
        }
        let rate = self.reads as f64 / elapsed;
        self.reads = 0;
        let window_start = std::mem::replace(&mut self.window, now);
        let new = if self.standing.is_some_and(|t| t > window_start) {
            self.calm_since = None;
            self.cut_at = self.cut_at.max(rate);
            let needed = (rate * TARGET.as_secs_f64()).ceil() as u32;
            self.size.min(needed.max(RING_MIN))
        } else if self.size < RING_MAX && rate < self.cut_at / 2.0 {
            let calm = *self.calm_since.get_or_insert(now);
            if now.saturating_duration_since(calm) >= RING_CALM {
                (self.size + self.size / 4).min(RING_MAX)
            } else {
                self.size
            }
        } else {
            self.calm_since = None;
            self.size
        };
        if new == RING_MAX {
            self.cut_at = 0.0;
        }
        (new != self.size).then(|| {
            self.size = new;
            new
        })
    }
}

#[cfg(test)]
mod ring_tests {
    use super::*;

    const TICK: Duration = Duration::from_millis(250);

    /// Reads `per_tick` entries a tick, every read leaving some behind
    /// (`standing`) or emptying the device; returns the sizes applied.
    fn ticks(
        r: &mut RingSizer,
        start: &mut Instant,
        n: usize,
        per_tick: usize,
        standing: bool,
    ) -> Vec<u32> {
        let mut sizes = Vec::new();
        for _ in 0..n {
            let step = TICK / per_tick as u32;
            for _ in 0..per_tick {
                *start += step;
                r.drained(1, !standing, *start);
            }
            if let Some(s) = r.tick(*start) {
                sizes.push(s);
            }
        }
        sizes
    }

    #[test]
    fn a_standing_queue_shrinks_the_ring_to_a_millisecond_and_calm_grows_it_back() {
        let mut t = Instant::now();
        let mut r = RingSizer::new(t);
        // Bulk TCP: 5,000 super-packets a second, never drained.
        let sizes = ticks(&mut r, &mut t, 2, 1250, true);
        assert_eq!(
            sizes,
            [RING_MIN],
            "5 entries a millisecond, at least {RING_MIN}"
        );
        // Small packets at 200,000 a second, standing: 200 entries.
        let mut r = RingSizer::new(t);
        assert_eq!(ticks(&mut r, &mut t, 1, 50_000, true), [200]);
        // Traffic goes on at that rate without a standing queue: it stays.
        assert!(ticks(&mut r, &mut t, 20, 50_000, false).is_empty());
        // Traffic calms: nothing changes for a while, then it grows back.
        assert!(ticks(&mut r, &mut t, 8, 10, false).is_empty());
        let grown = ticks(&mut r, &mut t, 40, 10, false);
        assert_eq!(grown.first(), Some(&250));
        assert_eq!(grown.last(), Some(&RING_MAX));
        assert!(grown.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn a_busy_device_that_drains_keeps_its_ring() {
        let mut t = Instant::now();
        let mut r = RingSizer::new(t);
        // 100,000 packets a second, each read emptying the device.
        assert!(ticks(&mut r, &mut t, 20, 25_000, false).is_empty());
    }
}
