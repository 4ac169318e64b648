//! Live state the host keeps outside plugin memory: per-backend counters and
//! health (read by plugins through `live-stats`), and process-wide counters.
//!
//! Everything here is lock-free atomics shared by all worker threads, so every
//! plugin instance reads the same truth and nothing is lost when a plugin is
//! swapped.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Milliseconds since the process's first call: a cheap monotonic clock that
/// fits in an atomic.
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Live counters and passive health of one backend.
#[derive(Debug, Default)]
pub struct BackendStats {
    /// Requests sent whose response has not finished.
    in_flight: AtomicU32,
    /// EWMA of time to response headers, µs (0 = no sample yet).
    latency_ewma_us: AtomicU64,
    /// Peak-EWMA of the same, µs (0 = no sample yet).
    latency_peak_ewma_us: AtomicU64,
    /// `now_ms()` of the last latency sample, for the peak-EWMA decay.
    latency_stamp_ms: AtomicU64,
    /// Connection failures in a row.
    consecutive_failures: AtomicU32,
    /// `now_ms()` until which the backend is considered down.
    down_until_ms: AtomicU64,
}

/// Weight of a new latency sample in the EWMA, as a right shift: 1/8.
const EWMA_SHIFT: u32 = 3;
/// Decay time constant of the peak-EWMA (linkerd and Finagle use 10 s): after
/// a slow spike, faster samples pull the value back over about this long.
const PEAK_EWMA_TAU_MS: f64 = 10_000.0;

impl BackendStats {
    /// Requests in flight.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Relaxed)
    }

    /// Latency EWMA in µs.
    pub fn latency_ewma_us(&self) -> u64 {
        self.latency_ewma_us.load(Relaxed)
    }

    /// Latency peak-EWMA in µs.
    pub fn latency_peak_ewma_us(&self) -> u64 {
        self.latency_peak_ewma_us.load(Relaxed)
    }

    /// Whether the backend is not currently marked down.
    pub fn is_up(&self) -> bool {
        let until = self.down_until_ms.load(Relaxed);
        until == 0 || until <= now_ms()
    }

    /// Counts a request in flight until the guard drops.
    pub fn start_request(self: &std::sync::Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Relaxed);
        InFlight(self.clone())
    }

    /// Records a response's time to headers. Load-then-store: two concurrent
    /// samples may lose one, which an average can afford.
    pub fn record_latency(&self, elapsed: Duration) {
        let sample = elapsed.as_micros().min(u64::MAX as u128) as u64;
        let old = self.latency_ewma_us.load(Relaxed);
        let new = if old == 0 {
            sample.max(1)
        } else {
            let old = old as i64;
            (old + ((sample as i64 - old) >> EWMA_SHIFT)).max(1) as u64
        };
        self.latency_ewma_us.store(new, Relaxed);

        // Peak-EWMA: a slower sample is taken at once; a faster one is
        // blended in with a weight that grows with the time since the last.
        let now = now_ms();
        let since = now.saturating_sub(self.latency_stamp_ms.swap(now, Relaxed)) as f64;
        let peak = self.latency_peak_ewma_us.load(Relaxed);
        let new_peak = if sample >= peak {
            sample
        } else {
            let keep = (-since / PEAK_EWMA_TAU_MS).exp();
            (peak as f64 * keep + sample as f64 * (1.0 - keep)) as u64
        };
        self.latency_peak_ewma_us.store(new_peak.max(1), Relaxed);
    }

    /// Records a successful connection; returns true when this brings the
    /// backend back up (for a log line on the flip).
    pub fn record_success(&self) -> bool {
        if self.consecutive_failures.load(Relaxed) == 0 {
            return false;
        }
        self.consecutive_failures.store(0, Relaxed);
        self.down_until_ms.swap(0, Relaxed) != 0
    }

    /// Records a failed connection; after `max_fails` in a row the backend is
    /// down for `fail_timeout` (then one request probes it again). Returns
    /// true when this marks it down.
    pub fn record_failure(&self, max_fails: u32, fail_timeout: Duration) -> bool {
        let fails = self.consecutive_failures.fetch_add(1, Relaxed) + 1;
        if max_fails == 0 || fails < max_fails {
            return false;
        }
        let until = now_ms() + fail_timeout.as_millis() as u64;
        let was = self.down_until_ms.swap(until.max(1), Relaxed);
        was == 0 || was <= now_ms()
    }
}

/// A request in flight to a backend; decrements the count when dropped.
#[derive(Debug)]
pub struct InFlight(std::sync::Arc<BackendStats>);

impl InFlight {
    /// The backend's stats.
    pub fn stats(&self) -> &BackendStats {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

/// Process-wide counters. Read them with [`Metrics::snapshot`].
#[derive(Debug, Default)]
pub struct Metrics {
    /// Requests received downstream.
    pub requests: AtomicU64,
    /// Plugin calls that trapped.
    pub plugin_traps: AtomicU64,
    /// Plugin calls that ran past their deadline.
    pub plugin_timeouts: AtomicU64,
    /// `select` answers with no usable backend id.
    pub plugin_bad_answers: AtomicU64,
    /// Requests whose backend order came from the host's round robin instead
    /// of the plugin (after a failure, or while the plugin is backing off).
    pub fallback_selections: AtomicU64,
    /// Plugin instances created (per worker, after a failure, on reload).
    pub plugin_instantiations: AtomicU64,
    /// New connections to backends attempted (pooled ones reused don't count).
    pub upstream_connects: AtomicU64,
    /// Connections to backends that could not be made.
    pub upstream_connect_errors: AtomicU64,
    /// Attempts on a further candidate after a failed one.
    pub retries: AtomicU64,
    /// Plugin files swapped in from the plugin folder.
    pub plugin_swaps: AtomicU64,
    /// Plugin files refused (not Wasm, wrong world, trapped or refused in
    /// `init`, name taken); the running plugin kept serving.
    pub plugin_refusals: AtomicU64,
    /// Configuration reloads applied.
    pub config_reloads: AtomicU64,
    /// Configuration reloads refused; the running configuration stayed.
    pub config_reload_refusals: AtomicU64,
    /// 502 answers.
    pub bad_gateway: AtomicU64,
    /// 504 answers.
    pub gateway_timeout: AtomicU64,
}

/// A copy of [`Metrics`] at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[allow(missing_docs)]
pub struct MetricsSnapshot {
    pub requests: u64,
    pub plugin_traps: u64,
    pub plugin_timeouts: u64,
    pub plugin_bad_answers: u64,
    pub fallback_selections: u64,
    pub plugin_instantiations: u64,
    pub upstream_connects: u64,
    pub upstream_connect_errors: u64,
    pub retries: u64,
    pub plugin_swaps: u64,
    pub plugin_refusals: u64,
    pub config_reloads: u64,
    pub config_reload_refusals: u64,
    pub bad_gateway: u64,
    pub gateway_timeout: u64,
}

impl Metrics {
    /// Adds one to a counter.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            requests: self.requests.load(Relaxed),
            plugin_traps: self.plugin_traps.load(Relaxed),
            plugin_timeouts: self.plugin_timeouts.load(Relaxed),
            plugin_bad_answers: self.plugin_bad_answers.load(Relaxed),
            fallback_selections: self.fallback_selections.load(Relaxed),
            plugin_instantiations: self.plugin_instantiations.load(Relaxed),
            upstream_connects: self.upstream_connects.load(Relaxed),
            upstream_connect_errors: self.upstream_connect_errors.load(Relaxed),
            retries: self.retries.load(Relaxed),
            plugin_swaps: self.plugin_swaps.load(Relaxed),
            plugin_refusals: self.plugin_refusals.load(Relaxed),
            config_reloads: self.config_reloads.load(Relaxed),
            config_reload_refusals: self.config_reload_refusals.load(Relaxed),
            bad_gateway: self.bad_gateway.load(Relaxed),
            gateway_timeout: self.gateway_timeout.load(Relaxed),
        }
    }
}

/// Whether a plugin-related log line may be written now: at most
/// `LOG_BURST` per second across the process, so a plugin failing on every
/// request cannot flood the log (the counters still count every failure).
pub fn plugin_log_allowed() -> bool {
    const LOG_BURST: u64 = 10;
    static WINDOW: AtomicU64 = AtomicU64::new(0);
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let second = now_ms() / 1000 + 1;
    if WINDOW.swap(second, Relaxed) != second {
        COUNT.store(0, Relaxed);
    }
    COUNT.fetch_add(1, Relaxed) < LOG_BURST
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backend_goes_down_after_max_fails_and_comes_back_on_success() {
        let stats = BackendStats::default();
        assert!(!stats.record_failure(2, Duration::from_secs(60)));
        assert!(stats.is_up());
        assert!(stats.record_failure(2, Duration::from_secs(60)));
        assert!(!stats.is_up());
        assert!(stats.record_success());
        assert!(stats.is_up());
    }

    #[test]
    fn max_fails_zero_never_marks_a_backend_down() {
        let stats = BackendStats::default();
        for _ in 0..10 {
            assert!(!stats.record_failure(0, Duration::from_secs(60)));
        }
        assert!(stats.is_up());
    }

    #[test]
    fn latency_ewma_starts_at_the_first_sample_and_moves_an_eighth_of_the_way() {
        let stats = BackendStats::default();
        stats.record_latency(Duration::from_micros(800));
        assert_eq!(stats.latency_ewma_us(), 800);
        stats.record_latency(Duration::from_micros(1600));
        assert_eq!(stats.latency_ewma_us(), 900);
    }

    #[test]
    fn the_peak_ewma_jumps_to_a_slow_sample_and_does_not_drop_at_once() {
        let stats = BackendStats::default();
        stats.record_latency(Duration::from_micros(100));
        stats.record_latency(Duration::from_micros(50_000));
        assert_eq!(
            stats.latency_peak_ewma_us(),
            50_000,
            "a spike is taken whole"
        );
        stats.record_latency(Duration::from_micros(100));
        let after = stats.latency_peak_ewma_us();
        assert!(
            after > 40_000,
            "one fast sample right after barely moves it: {after}"
        );
    }
}
