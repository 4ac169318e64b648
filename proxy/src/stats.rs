//! Live state the host keeps outside plugin memory: per-backend counters and
//! health (read by plugins through `live-stats`), and process-wide counters.
//!
//! Everything here is lock-free atomics shared by all worker threads, so every
//! plugin instance reads the same truth and nothing is lost when a plugin is
//! swapped.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::config::Ejection;

/// Milliseconds since the process's first call: a cheap monotonic clock that
/// fits in an atomic.
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Live counters and health of one backend: passive (failures in a row,
/// ejection) and active (the last verdict of its health checks).
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
    /// No plugin of the pool reads the peak-EWMA: it is not kept (stays 0).
    skip_peak: AtomicBool,
    /// Failures in a row (connect errors, timeouts, statuses that count).
    consecutive_failures: AtomicU32,
    /// `now_ms()` until which the backend is ejected; once past, the first
    /// request to claim it (by moving it forward) probes the backend.
    down_until_ms: AtomicU64,
    /// Ejections in a row (the n-th lasts n × the first, up to a cap).
    ejections: AtomicU32,
    /// `now_ms()` when the backend last came back (slow start runs from
    /// here); 0: never left.
    returned_ms: AtomicU64,
    /// Active health checks say the backend is unhealthy.
    check_failed: AtomicBool,
    /// Drained through the admin API: no new requests.
    drained: AtomicBool,
    /// Times ejected, ever.
    ejections_total: AtomicU64,
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

    /// Whether the backend may be sent requests: its health checks (if any)
    /// pass and it is not ejected (an ejected backend whose time is up
    /// counts as up here: it is due a probe). For plugins (`healthy`) and
    /// the "are all candidates down" check; to send a request, use
    /// [`BackendStats::admit`].
    pub fn is_up(&self) -> bool {
        if self.check_failed.load(Relaxed) || self.drained.load(Relaxed) {
            return false;
        }
        let until = self.down_until_ms.load(Relaxed);
        until == 0 || until <= now_ms()
    }

    /// Whether the backend is drained (no new requests; those in flight
    /// finish).
    pub fn is_drained(&self) -> bool {
        self.drained.load(Relaxed)
    }

    /// Drains the backend, or takes it back; returns whether that changed
    /// anything.
    pub fn set_drained(&self, drained: bool) -> bool {
        self.drained.swap(drained, Relaxed) != drained
    }

    /// Times the backend was ejected.
    pub fn ejections_total(&self) -> u64 {
        self.ejections_total.load(Relaxed)
    }

    /// Whether active health checks say the backend is unhealthy.
    pub fn check_failed(&self) -> bool {
        self.check_failed.load(Relaxed)
    }

    /// Whether the backend is ejected now (by passive health).
    pub fn is_ejected(&self) -> bool {
        let until = self.down_until_ms.load(Relaxed);
        until != 0 && until > now_ms()
    }

    /// Whether a request may be sent to the backend now. A backend its
    /// health checks fail admits none. An up backend admits every request.
    /// An ejected one admits none until its ejection is over; then exactly
    /// one request (the one that wins an atomic claim) is admitted to probe
    /// it, and the backend stays out for everyone else for another
    /// `probe_window` unless the probe succeeds (or the claim is given back
    /// unused, [`BackendStats::give_back`]).
    pub fn admit(&self, probe_window: Duration) -> Admission {
        if self.check_failed.load(Relaxed) || self.drained.load(Relaxed) {
            return Admission::No;
        }
        let until = self.down_until_ms.load(Relaxed);
        if until == 0 {
            return Admission::Yes;
        }
        let now = now_ms();
        if now < until {
            return Admission::No;
        }
        let claimed = (now + probe_window.as_millis() as u64).max(1);
        match self
            .down_until_ms
            .compare_exchange(until, claimed, Relaxed, Relaxed)
        {
            Ok(_) => Admission::Probe { until, claimed },
            Err(_) => Admission::No,
        }
    }

    /// Gives back a probe claim that sent nothing, so the next request may
    /// probe at once.
    pub fn give_back(&self, admission: Admission) {
        if let Admission::Probe { until, claimed } = admission {
            let _ = self
                .down_until_ms
                .compare_exchange(claimed, until, Relaxed, Relaxed);
        }
    }

    /// Where the backend is in its slow start: the share of `window` passed
    /// since it came back, in `[0, 1)`; `None` when it is not in one.
    pub fn slow_start(&self, window: Duration) -> Option<f64> {
        if window.is_zero() {
            return None;
        }
        let since = self.returned_ms.load(Relaxed);
        if since == 0 {
            return None;
        }
        let elapsed = now_ms().saturating_sub(since);
        let window = window.as_millis() as u64;
        (elapsed < window).then(|| elapsed as f64 / window as f64)
    }

    /// Forgets the verdict of health checks that no longer run (a reload
    /// took them off the pool).
    pub fn forget_checks(&self) {
        if self.check_failed.load(Relaxed) {
            self.check_failed.store(false, Relaxed);
        }
    }

    /// Records the verdict of an active health check (after its rise/fall
    /// thresholds); returns true when it flips. A backend that becomes
    /// healthy is also no longer ejected, and starts its slow start.
    pub fn set_check_result(&self, healthy: bool) -> bool {
        let flipped = self.check_failed.swap(!healthy, Relaxed) == healthy;
        if flipped && healthy {
            self.consecutive_failures.store(0, Relaxed);
            self.down_until_ms.store(0, Relaxed);
            self.returned_ms.store(now_ms().max(1), Relaxed);
        }
        flipped
    }

    /// Counts a request in flight until the guard drops.
    pub fn start_request(self: &std::sync::Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Relaxed);
        InFlight(self.clone())
    }

    /// Like [`BackendStats::start_request`], but `None` when `limit` (if not
    /// 0) requests are in flight already: an HTTP/1.1 backend then has that
    /// many connections in use (NGINX `max_conns`).
    pub fn try_start_request(self: &std::sync::Arc<Self>, limit: u32) -> Option<InFlight> {
        let before = self.in_flight.fetch_add(1, Relaxed);
        if limit != 0 && before >= limit {
            self.in_flight.fetch_sub(1, Relaxed);
            return None;
        }
        Some(InFlight(self.clone()))
    }

    /// Keeps the peak-EWMA latency (when a plugin of the pool asks for it) or
    /// stops keeping it (it then reads 0, as before a first sample).
    pub fn keep_peak_latency(&self, keep: bool) {
        self.skip_peak.store(!keep, Relaxed);
        if !keep {
            self.latency_peak_ewma_us.store(0, Relaxed);
        }
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
        if self.skip_peak.load(Relaxed) {
            return;
        }

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

    /// Records a successful attempt; returns true when this ends an
    /// ejection (for a log line on the flip; slow start begins).
    pub fn record_success(&self) -> bool {
        // Loads first: on the common path (up, no failures) nothing is
        // written to this shared cache line.
        if self.consecutive_failures.load(Relaxed) != 0 {
            self.consecutive_failures.store(0, Relaxed);
        }
        // Cleared whatever the failure count says: a failure racing with this
        // success may have ejected the backend after the count was reset.
        let back =
            self.down_until_ms.load(Relaxed) != 0 && self.down_until_ms.swap(0, Relaxed) != 0;
        if back {
            self.returned_ms.store(now_ms().max(1), Relaxed);
        }
        back
    }

    /// Records a failed attempt (a connect error, a timeout, a status that
    /// counts); `probe` when the attempt was this backend's probe. After
    /// `max_fails` in a row the backend is ejected, unless `pool` (this
    /// backend's pool, itself included) already has as many ejected as it
    /// may: the n-th ejection in a row lasts n × the first, up to the cap (a
    /// backend that served well for the cap's length starts again from the
    /// first). A failed probe always ejects again; a late failure of a
    /// request sent before the ejection changes nothing. Returns how long,
    /// when this ejects.
    pub fn record_failure(
        &self,
        policy: &Ejection,
        pool: &[Arc<BackendStats>],
        probe: bool,
    ) -> Option<Duration> {
        let fails = self.consecutive_failures.fetch_add(1, Relaxed) + 1;
        if policy.max_fails == 0 || fails < policy.max_fails {
            return None;
        }
        let now = now_ms();
        let was = self.down_until_ms.load(Relaxed);
        if was != 0 && !probe {
            // Already out (or being probed): one ejection at a time.
            return None;
        }
        if !probe {
            let ejected = pool.iter().filter(|b| b.is_ejected()).count();
            if ejected >= policy.max_ejected(pool.len()) {
                return None;
            }
        }
        let returned = self.returned_ms.load(Relaxed);
        let served_long =
            returned != 0 && now.saturating_sub(returned) > policy.max.as_millis() as u64;
        // A failed probe follows an ejection: it always grows.
        let n = if served_long && !probe {
            1
        } else {
            self.ejections.load(Relaxed).saturating_add(1)
        };
        let length = policy.base.saturating_mul(n).min(policy.max);
        let until = (now + length.as_millis() as u64).max(1);
        // Only one failure ejects: a concurrent one on another worker loses.
        if self
            .down_until_ms
            .compare_exchange(was, until, Relaxed, Relaxed)
            .is_err()
        {
            return None;
        }
        if !probe && pool.iter().filter(|b| b.is_ejected()).count() > policy.max_ejected(pool.len())
        {
            // Another backend was ejected at the same moment: over the cap.
            let _ = self
                .down_until_ms
                .compare_exchange(until, was, Relaxed, Relaxed);
            return None;
        }
        self.ejections.store(n, Relaxed);
        self.ejections_total.fetch_add(1, Relaxed);
        Some(length)
    }
}

/// What [`BackendStats::admit`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Not now: ejected, being probed, or failing its health checks.
    No,
    /// Up: send.
    Yes,
    /// Ejected, and this request is its probe (the claim moved the
    /// ejection's end from `until` to `claimed`).
    Probe {
        /// The ejection's end before the claim.
        until: u64,
        /// The end the claim set.
        claimed: u64,
    },
}

impl Admission {
    /// Whether a request may be sent.
    pub fn admitted(self) -> bool {
        self != Admission::No
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

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max_fails: u32, base_ms: u64, max_ms: u64, percent: u32) -> Ejection {
        Ejection {
            max_fails,
            base: Duration::from_millis(base_ms),
            max: Duration::from_millis(max_ms),
            max_ejected_percent: percent,
            statuses: vec![503],
        }
    }

    fn pool(n: usize) -> Vec<Arc<BackendStats>> {
        (0..n).map(|_| Arc::default()).collect()
    }

    #[test]
    fn a_backend_is_ejected_after_max_fails_and_comes_back_on_success() {
        let pool = pool(2);
        let p = policy(2, 60_000, 300_000, 50);
        assert_eq!(pool[0].record_failure(&p, &pool, false), None);
        assert!(pool[0].is_up());
        assert_eq!(
            pool[0].record_failure(&p, &pool, false),
            Some(Duration::from_secs(60))
        );
        assert!(!pool[0].is_up());
        assert_eq!(pool[0].admit(Duration::from_secs(1)), Admission::No);
        assert!(pool[0].record_success());
        assert!(pool[0].is_up());
    }

    #[test]
    fn max_fails_zero_never_ejects() {
        let pool = pool(1);
        for _ in 0..10 {
            assert_eq!(
                pool[0].record_failure(&policy(0, 1, 1, 100), &pool, false),
                None
            );
        }
        assert!(pool[0].is_up());
    }

    /// Ejects `stats` (1 ms), waits it out and claims the probe.
    fn probe_after(stats: &BackendStats, first: Duration) -> Admission {
        std::thread::sleep(first + Duration::from_millis(3));
        let claim = stats.admit(Duration::from_millis(1));
        assert!(matches!(claim, Admission::Probe { .. }), "{claim:?}");
        claim
    }

    #[test]
    fn each_failed_probe_ejects_for_longer_up_to_the_cap() {
        let pool = pool(1);
        let p = policy(1, 1, 3, 100);
        let mut lengths = vec![pool[0].record_failure(&p, &pool, false).unwrap()];
        for _ in 0..3 {
            probe_after(&pool[0], *lengths.last().unwrap());
            lengths.push(pool[0].record_failure(&p, &pool, true).unwrap());
        }
        let ms: Vec<u128> = lengths.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [1, 2, 3, 3]);
    }

    #[test]
    fn failed_probes_grow_even_for_a_backend_that_came_back_long_ago() {
        let pool = pool(1);
        let p = policy(1, 1, 2, 100);
        // Ejected once, back, then serving for longer than the cap.
        pool[0].record_failure(&p, &pool, false).unwrap();
        probe_after(&pool[0], Duration::from_millis(1));
        assert!(pool[0].record_success());
        std::thread::sleep(Duration::from_millis(5));
        let first = pool[0].record_failure(&p, &pool, false).unwrap();
        assert_eq!(first.as_millis(), 1, "a fresh start after serving well");
        probe_after(&pool[0], first);
        let second = pool[0].record_failure(&p, &pool, true).unwrap();
        assert_eq!(second.as_millis(), 2, "a failed probe ejects for longer");
    }

    #[test]
    fn a_failure_that_is_not_the_probe_does_not_extend_the_ejection() {
        let pool = pool(1);
        let p = policy(1, 60_000, 300_000, 100);
        assert!(pool[0].record_failure(&p, &pool, false).is_some());
        assert_eq!(pool[0].record_failure(&p, &pool, false), None);
    }

    #[test]
    fn a_probe_claim_given_back_unused_lets_the_next_request_probe() {
        let pool = pool(1);
        let p = policy(1, 1, 1, 100);
        pool[0].record_failure(&p, &pool, false).unwrap();
        let claim = probe_after(&pool[0], Duration::from_millis(1));
        assert_eq!(pool[0].admit(Duration::from_secs(60)), Admission::No);
        pool[0].give_back(claim);
        assert!(matches!(
            pool[0].admit(Duration::from_secs(60)),
            Admission::Probe { .. }
        ));
    }

    #[test]
    fn no_more_than_the_allowed_share_of_a_pool_is_ejected_at_once() {
        let pool = pool(4);
        let p = policy(1, 60_000, 300_000, 50);
        let ejected = pool
            .iter()
            .filter(|b| b.record_failure(&p, &pool, false).is_some())
            .count();
        assert_eq!(ejected, 2);
        assert_eq!(pool.iter().filter(|b| b.is_up()).count(), 2);
    }

    #[test]
    fn failed_health_checks_keep_a_backend_out_and_passing_ones_start_its_slow_start() {
        let stats = BackendStats::default();
        let window = Duration::from_secs(60);
        assert_eq!(stats.slow_start(window), None);
        assert!(stats.set_check_result(false));
        assert!(!stats.set_check_result(false), "no flip, no log line");
        assert!(!stats.is_up());
        assert_eq!(stats.admit(Duration::from_secs(1)), Admission::No);
        assert!(stats.set_check_result(true));
        assert!(stats.is_up());
        let progress = stats.slow_start(window).unwrap();
        assert!(progress < 0.1, "{progress}");
        assert_eq!(stats.slow_start(Duration::ZERO), None);
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

    #[test]
    fn the_peak_ewma_is_not_kept_for_a_pool_whose_plugin_does_not_ask() {
        let stats = BackendStats::default();
        stats.record_latency(Duration::from_micros(700));
        stats.keep_peak_latency(false);
        assert_eq!(stats.latency_peak_ewma_us(), 0, "cleared when dropped");
        stats.record_latency(Duration::from_micros(50_000));
        assert_eq!(stats.latency_peak_ewma_us(), 0);
        assert!(stats.latency_ewma_us() > 700, "the EWMA is still kept");
        stats.keep_peak_latency(true);
        stats.record_latency(Duration::from_micros(900));
        assert_eq!(stats.latency_peak_ewma_us(), 900, "kept again");
    }
}
