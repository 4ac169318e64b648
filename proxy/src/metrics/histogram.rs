//! Latency histograms with fixed buckets, kept per thread like every other
//! counter: recording is an atomic add on a cache line no other thread
//! writes; a scrape sums the threads.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds of the buckets, in µs: 100 µs to 10 s, ×2 to ×4 apart (a
/// plugin's `select` lands in the first few, a slow backend in the last).
const BOUNDS_US: [u64; 15] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 10_000_000,
];

/// One thread's histogram.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Per bucket (not cumulative); the last counts what is above every
    /// bound.
    counts: [AtomicU64; BOUNDS_US.len() + 1],
    sum_us: AtomicU64,
}

impl Histogram {
    /// Records one sample.
    pub fn record(&self, elapsed: Duration) {
        let us = elapsed.as_micros().min(u64::MAX as u128) as u64;
        let bucket = BOUNDS_US.partition_point(|&bound| bound < us);
        self.counts[bucket].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
    }

    /// Adds this thread's samples to `sum`.
    pub fn add_to(&self, sum: &mut HistogramSum) {
        for (total, count) in sum.counts.iter_mut().zip(&self.counts) {
            *total += count.load(Relaxed);
        }
        sum.sum_us += self.sum_us.load(Relaxed);
    }
}

/// Histograms of several threads added up.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct HistogramSum {
    counts: [u64; BOUNDS_US.len() + 1],
    sum_us: u64,
}

impl HistogramSum {
    /// How many samples.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Their sum, in seconds.
    pub fn sum_seconds(&self) -> f64 {
        self.sum_us as f64 / 1e6
    }

    /// Cumulative buckets `(upper bound in seconds, samples at or under
    /// it)` as Prometheus wants them, `+Inf` last.
    pub fn cumulative(&self) -> Vec<(f64, u64)> {
        let mut running = 0;
        BOUNDS_US
            .iter()
            .map(|&us| us as f64 / 1e6)
            .chain([f64::INFINITY])
            .zip(self.counts)
            .map(|(bound, count)| {
                running += count;
                (bound, running)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_land_in_the_first_bucket_whose_bound_holds_them() {
        let h = Histogram::default();
        h.record(Duration::from_micros(100));
        h.record(Duration::from_micros(101));
        h.record(Duration::from_secs(60));
        let mut sum = HistogramSum::default();
        h.add_to(&mut sum);
        let buckets = sum.cumulative();
        assert_eq!(buckets[0], (0.0001, 1));
        assert_eq!(buckets[1], (0.00025, 2));
        assert_eq!(buckets[BOUNDS_US.len() - 1].1, 2);
        assert_eq!(*buckets.last().unwrap(), (f64::INFINITY, 3));
        assert_eq!(sum.count(), 3);
        assert!((sum.sum_seconds() - 60.000201).abs() < 1e-9);
    }
}
