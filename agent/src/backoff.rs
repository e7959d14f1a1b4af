//! Jittered exponential backoff, as pure logic: the caller supplies the
//! random fraction, so tests are deterministic.

use std::time::Duration;

#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub(crate) fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            attempt: 0,
        }
    }

    /// The delay before the next retry: "full jitter" between half and all
    /// of min(max, base * 2^attempt), so a fleet that lost its controller at
    /// the same moment does not come back in lockstep.
    pub(crate) fn next_delay(&mut self, random_fraction: f64) -> Duration {
        let exp = self.base.saturating_mul(1u32 << self.attempt.min(16));
        let cap = exp.min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let f = 0.5 + 0.5 * random_fraction.clamp(0.0, 1.0);
        cap.mul_f64(f)
    }

    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let full: Vec<u64> = (0..9).map(|_| b.next_delay(1.0).as_secs()).collect();
        assert_eq!(full, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        b.reset();
        assert_eq!(
            b.next_delay(0.0),
            Duration::from_millis(500),
            "jitter floor is half"
        );
    }

    #[test]
    fn never_exceeds_the_cap_or_overflows() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        for i in 0..100 {
            let d = b.next_delay((i % 7) as f64 / 7.0);
            assert!(d <= Duration::from_secs(30));
        }
    }
}
