//! Latency estimates shared by the balancer (per endpoint, for its choice) and the retry layer
//! (per method, for attempt timeouts): a lock-free, time-weighted peak EWMA.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Time constant of the EWMA when a sample is above it: it rises fast…
const RISE: Duration = Duration::from_millis(50);
/// …and when a sample is below it: it falls ten times slower, so it leans to the peaks.
const FALL: Duration = Duration::from_millis(500);

/// A peak-leaning, time-weighted exponentially weighted moving average of latencies.
///
/// The average is weighted by time, not by sample: a sample moves it by `1 - e^(-Δt/τ)`, with τ
/// short ([`RISE`], 50 ms) for samples above it and ten times longer ([`FALL`]) for samples
/// below. So one slow answer does not stamp a busy target's latency for seconds (a pure peak
/// would: with thousands of calls a second, the recent maximum is always high), while a target
/// that turns slow is seen as slow within a few of its calls. The first sample is taken as is.
/// Updates race benignly: a lost update only loses one sample.
#[derive(Debug)]
pub struct PeakEwma {
    /// The average in nanoseconds, as `f64` bits.
    bits: AtomicU64,
    /// When it was last updated, in nanoseconds since `created` (0: never).
    updated: AtomicU64,
    created: Instant,
}

impl PeakEwma {
    /// An average that reads `initial` until its first sample.
    pub fn new(initial: Duration) -> Self {
        Self {
            bits: AtomicU64::new((initial.as_nanos() as f64).to_bits()),
            updated: AtomicU64::new(0),
            created: Instant::now(),
        }
    }

    /// The average in nanoseconds.
    pub fn nanos(&self) -> f64 {
        f64::from_bits(self.bits.load(Ordering::Relaxed))
    }

    /// The average.
    pub fn get(&self) -> Duration {
        Duration::from_nanos(self.nanos() as u64)
    }

    /// Whether it has had a sample yet.
    #[cfg(test)]
    fn is_sampled(&self) -> bool {
        self.updated.load(Ordering::Relaxed) != 0
    }

    /// Folds one sample in.
    pub fn observe(&self, sample: Duration) {
        let now = u64::try_from(self.created.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        let last = self.updated.swap(now, Ordering::Relaxed);
        let current = self.nanos();
        let sample = sample.as_nanos() as f64;
        let next = if last == 0 {
            sample
        } else {
            let elapsed = now.saturating_sub(last) as f64 / 1e9;
            let tau = if sample > current { RISE } else { FALL };
            let weight = 1.0 - (-elapsed / tau.as_secs_f64()).exp();
            current + (sample - current) * weight
        };
        self.bits.store(next.to_bits(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn takes_the_first_sample_then_rises_faster_than_it_falls() {
        let ewma = PeakEwma::new(Duration::from_millis(1));
        assert!(!ewma.is_sampled());
        ewma.observe(Duration::from_millis(10));
        assert!(ewma.is_sampled());
        assert!((ewma.nanos() - 10_000_000.0).abs() < 1.0);
        // 50 ms later a 1 ms sample: it falls by 1 - e^(-0.1), about 10%.
        tokio::time::advance(Duration::from_millis(50)).await;
        ewma.observe(Duration::from_millis(1));
        let fallen = ewma.nanos();
        assert!((8_000_000.0..10_000_000.0).contains(&fallen), "{fallen}");
        // 50 ms later a 20 ms sample: it rises by 1 - e^(-1), about 63%.
        tokio::time::advance(Duration::from_millis(50)).await;
        ewma.observe(Duration::from_millis(20));
        let risen = ewma.nanos();
        assert!((14_000_000.0..20_000_000.0).contains(&risen), "{risen}");
    }
}
