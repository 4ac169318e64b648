//! Labelled counters: per route, per pool and backend, per plugin. Each is
//! kept per thread (a `ThreadLocal` of atomics only its thread writes) and
//! summed when read, like the process counters.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use thread_local::ThreadLocal;

use super::histogram::{Histogram, HistogramSum};

/// The five status classes, `1xx` to `5xx`, as labels.
pub const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn class(status: u16) -> usize {
    (status / 100).clamp(1, 5) as usize - 1
}

/// Answers by status class.
#[derive(Debug, Default)]
struct ByClass([AtomicU64; 5]);

impl ByClass {
    fn count(&self, status: u16) {
        self.0[class(status)].fetch_add(1, Relaxed);
    }

    fn add_to(&self, sum: &mut [u64; 5]) {
        for (total, n) in sum.iter_mut().zip(&self.0) {
            *total += n.load(Relaxed);
        }
    }
}

/// One route's requests (the client's answers by class) and their time to
/// the response head. Index `routes.len()`: requests that matched no route.
pub struct RouteTraffic {
    routes: usize,
    threads: ThreadLocal<Box<[RouteThread]>>,
}

#[derive(Debug, Default)]
struct RouteThread {
    answers: ByClass,
    duration: Histogram,
}

/// A route's traffic added up.
#[derive(Debug, Default, Clone)]
pub struct RouteSum {
    /// Answers by class (see [`CLASSES`]).
    pub answers: [u64; 5],
    /// Time from the request head to the response head.
    pub duration: HistogramSum,
}

impl RouteTraffic {
    /// Counters for `routes` routes (and the no-route slot).
    pub fn new(routes: usize) -> RouteTraffic {
        RouteTraffic {
            routes,
            threads: ThreadLocal::new(),
        }
    }

    fn thread(&self) -> &[RouteThread] {
        self.threads
            .get_or(|| (0..=self.routes).map(|_| RouteThread::default()).collect())
    }

    /// Counts a request of route `route` (`None`: no route matched).
    pub fn answered(&self, route: Option<usize>, status: u16, elapsed: Duration) {
        let slot = &self.thread()[route.unwrap_or(self.routes).min(self.routes)];
        slot.answers.count(status);
        slot.duration.record(elapsed);
    }

    /// Per route (then the no-route slot), summed over threads.
    pub fn sum(&self) -> Vec<RouteSum> {
        let mut sums = vec![RouteSum::default(); self.routes + 1];
        for thread in self.threads.iter() {
            for (sum, slot) in sums.iter_mut().zip(thread.iter()) {
                slot.answers.add_to(&mut sum.answers);
                slot.duration.add_to(&mut sum.duration);
            }
        }
        sums
    }
}

/// One pool's traffic to its backends, by backend id.
pub struct PoolTraffic {
    backends: usize,
    threads: ThreadLocal<Box<[BackendThread]>>,
}

#[derive(Debug, Default)]
struct BackendThread {
    responses: ByClass,
    failures: AtomicU64,
    latency: Histogram,
}

/// A backend's traffic added up.
#[derive(Debug, Default, Clone)]
pub struct BackendSum {
    /// Responses by class (see [`CLASSES`]).
    pub responses: [u64; 5],
    /// Attempts that failed before a response (connect errors, resets,
    /// timeouts).
    pub failures: u64,
    /// Time from sending to the response head.
    pub latency: HistogramSum,
}

impl BackendSum {
    /// Every response, whatever its class.
    pub fn responses_total(&self) -> u64 {
        self.responses.iter().sum()
    }
}

impl PoolTraffic {
    /// Counters for a pool of `backends` backends.
    pub fn new(backends: usize) -> PoolTraffic {
        PoolTraffic {
            backends,
            threads: ThreadLocal::new(),
        }
    }

    fn backend(&self, id: usize) -> &BackendThread {
        &self.threads.get_or(|| {
            (0..self.backends)
                .map(|_| BackendThread::default())
                .collect()
        })[id]
    }

    /// Counts a response from backend `id`.
    pub fn response(&self, id: usize, status: u16, latency: Duration) {
        let slot = self.backend(id);
        slot.responses.count(status);
        slot.latency.record(latency);
    }

    /// Counts an attempt on backend `id` that failed before a response.
    pub fn failure(&self, id: usize) {
        self.backend(id).failures.fetch_add(1, Relaxed);
    }

    /// By backend id, summed over threads.
    pub fn sum(&self) -> Vec<BackendSum> {
        let mut sums = vec![BackendSum::default(); self.backends];
        for thread in self.threads.iter() {
            for (sum, slot) in sums.iter_mut().zip(thread.iter()) {
                slot.responses.add_to(&mut sum.responses);
                sum.failures += slot.failures.load(Relaxed);
                slot.latency.add_to(&mut sum.latency);
            }
        }
        sums
    }
}

/// What a pool's plugin did: `select` times and how its calls ended.
#[derive(Default)]
pub struct PluginTraffic {
    threads: ThreadLocal<PluginThread>,
}

#[derive(Debug, Default)]
struct PluginThread {
    select: Histogram,
    traps: AtomicU64,
    timeouts: AtomicU64,
    bad_answers: AtomicU64,
    fallbacks: AtomicU64,
    rests: AtomicU64,
}

/// How a plugin call ended, when it did not answer usefully.
#[derive(Debug, Clone, Copy)]
pub enum PluginEvent {
    /// It trapped.
    Trap,
    /// It ran past its deadline.
    Timeout,
    /// It answered no usable backend.
    BadAnswer,
    /// The host's round robin ordered a request instead.
    Fallback,
    /// It was rested (not called for a backoff).
    Rest,
}

/// A plugin's traffic added up.
#[derive(Debug, Default, Clone)]
pub struct PluginSum {
    /// `select` call times.
    pub select: HistogramSum,
    /// See [`PluginEvent`].
    pub traps: u64,
    /// See [`PluginEvent`].
    pub timeouts: u64,
    /// See [`PluginEvent`].
    pub bad_answers: u64,
    /// See [`PluginEvent`].
    pub fallbacks: u64,
    /// See [`PluginEvent`].
    pub rests: u64,
}

impl PluginTraffic {
    fn thread(&self) -> &PluginThread {
        self.threads.get_or(PluginThread::default)
    }

    /// Records a `select` call's time.
    pub fn selected(&self, elapsed: Duration) {
        self.thread().select.record(elapsed);
    }

    /// Counts an event.
    pub fn event(&self, event: PluginEvent) {
        let t = self.thread();
        match event {
            PluginEvent::Trap => &t.traps,
            PluginEvent::Timeout => &t.timeouts,
            PluginEvent::BadAnswer => &t.bad_answers,
            PluginEvent::Fallback => &t.fallbacks,
            PluginEvent::Rest => &t.rests,
        }
        .fetch_add(1, Relaxed);
    }

    /// Summed over threads.
    pub fn sum(&self) -> PluginSum {
        let mut sum = PluginSum::default();
        for t in self.threads.iter() {
            t.select.add_to(&mut sum.select);
            sum.traps += t.traps.load(Relaxed);
            sum.timeouts += t.timeouts.load(Relaxed);
            sum.bad_answers += t.bad_answers.load(Relaxed);
            sum.fallbacks += t.fallbacks.load(Relaxed);
            sum.rests += t.rests.load(Relaxed);
        }
        sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_traffic_from_several_threads_adds_up_by_backend_and_class() {
        let traffic = std::sync::Arc::new(PoolTraffic::new(2));
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| {
                    traffic.response(0, 200, Duration::from_millis(1));
                    traffic.response(1, 503, Duration::from_millis(1));
                    traffic.failure(1);
                });
            }
        });
        let sums = traffic.sum();
        assert_eq!(sums[0].responses, [0, 3, 0, 0, 0]);
        assert_eq!(sums[1].responses, [0, 0, 0, 0, 3]);
        assert_eq!((sums[1].failures, sums[1].latency.count()), (3, 3));
    }

    #[test]
    fn requests_without_a_route_have_their_own_slot() {
        let traffic = RouteTraffic::new(1);
        traffic.answered(None, 404, Duration::ZERO);
        traffic.answered(Some(0), 200, Duration::ZERO);
        let sums = traffic.sum();
        assert_eq!(sums[0].answers[1], 1);
        assert_eq!(sums[1].answers[3], 1);
    }
}
