//! Drives one pool's strategy plugin: one instance per worker thread (no lock
//! shared by requests), validation of its answers, and the failure policy.
//!
//! Instances are built off the worker threads: one per worker and a spare
//! when the balancer is made (in parallel, on the control side), handed over
//! ready; a worker whose instance failed takes the spare, and the next spare
//! is built on a thread of its own (backing off while builds fail). No
//! request waits for an `init`.
//!
//! Failure policy: a trap or missed deadline discards the worker's instance (a
//! trapped component cannot be re-entered), is counted and logged with the
//! plugin's name, and the request is ordered by the host's round robin instead.
//! A call that is served but takes longer than `plugins.slow_call_us`, or
//! makes more host calls than allowed, counts as a failure too. After
//! `failures_before_backoff` failures in a row the plugin is not called for a
//! backoff that doubles from 100 ms to 10 s, so a plugin that loops forever
//! costs at most a few deadlines per backoff period, and one that burns CPU
//! legally is rested within a few calls. A call stopped while the worker
//! thread was descheduled (see `plugin::on_deadline`) is not held against
//! the plugin.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use thread_local::ThreadLocal;

use crate::config::PluginFailure;
use crate::error::PluginError;
use crate::metrics::Metrics;
use crate::metrics::traffic::{PluginEvent, PluginTraffic};
use crate::plugin::log::{HOST_LINES_PER_SECOND, LogBudget};
use crate::plugin::{
    Answer, BackendInfo, Call, CallError, Instance, Limits, MAX_ANSWER, Order, Plugin,
    RequestScope, Verdict,
};
use crate::stats::BackendStats;

mod feedback;
mod judge;
mod recipe;

use judge::{judge, keep_valid};
pub use recipe::LastGood;
use recipe::Recipe;

pub(super) const BACKOFF_MIN: Duration = Duration::from_millis(100);
pub(super) const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A new plugin version that fails this often (over all workers) ...
pub const ROLLBACK_AFTER: u64 = 5;
/// ... this soon after it was swapped in is rolled back to the last good
/// version, when there is one.
pub const ROLLBACK_WINDOW: Duration = Duration::from_secs(60);

/// One pool's strategy: the plugin, its config, the backend set it was given,
/// and each worker's instance.
pub struct Balancer {
    pool: String,
    recipe: Arc<Recipe>,
    stats: Arc<[Arc<BackendStats>]>,
    limits: Limits,
    failures_before_backoff: u32,
    metrics: Arc<Metrics>,
    slots: ThreadLocal<RefCell<Slot>>,
    traffic: PluginTraffic,
    /// Per worker: `now_ms()` until which the plugin is rested there (for
    /// the admin API; the slot's own copy decides).
    rested_until: ThreadLocal<AtomicU64>,
    /// The host's lines about this pool's plugin.
    host_log: LogBudget,
    /// What a failed call's request gets.
    on_failure: PluginFailure,
    /// The plugin version this pool ran before, if it served well.
    last_good: Option<LastGood>,
    /// Calls that failed outright, over all workers, since the balancer
    /// was made.
    failures: AtomicU64,
    made: Instant,
    /// Set once this version was rolled back: the last good one serves.
    rolled_back: AtomicBool,
    /// The balancer this one replaced, while its workers' instances may
    /// still hand their state over (see `feedback.rs`).
    hand_over_from: Mutex<Option<Arc<Balancer>>>,
}

/// One worker thread's view of the plugin.
#[derive(Default)]
struct Slot {
    instance: Option<Instance>,
    /// Failed calls in a row.
    failures: u32,
    /// While set and in the future, the plugin is not called.
    backoff_until: Option<Instant>,
    /// The host round robin's turn (used only on fallback).
    fallback_next: usize,
    /// This worker's instance of the last good version, once needed.
    last_good: Option<Instance>,
    /// Calls still to be timed in thread CPU time: set when a call ran past
    /// the slow-call budget without the fuel to show for it (time in host
    /// calls burns no fuel), so the next ones are judged by what the thread
    /// really ran.
    timed_calls: u32,
}

/// Calls timed in thread CPU time after a suspicious one.
const TIMED_CALLS: u32 = 16;

/// Settings a [`Balancer`] needs besides the plugin.
pub struct BalancerSettings<'a> {
    /// The pool's name, for logs and errors.
    pub pool: &'a str,
    /// Strategy config as JSON.
    pub config_json: &'a str,
    /// The backend set pushed to the plugin.
    pub backends: Vec<BackendInfo>,
    /// Live stats, by backend id.
    pub stats: Arc<[Arc<BackendStats>]>,
    /// Per-instance limits.
    pub limits: Limits,
    /// See the module docs.
    pub failures_before_backoff: u32,
    /// Seed of the `random` import (0: from the clock).
    pub seed: u64,
    /// Instances to build up front: one per worker thread.
    pub instances: usize,
    /// See [`PluginFailure`].
    pub on_failure: PluginFailure,
    /// The version to fall back on (see [`Balancer::last_good`]).
    pub last_good: Option<LastGood>,
    /// The balancer this one replaces, if any: its instances hand their
    /// state over when both plugins ask (0.3.0 `hand-over`).
    pub previous: Option<Arc<Balancer>>,
}

impl Balancer {
    /// Builds the balancer and its first instances (one per worker, in
    /// parallel), which also checks the plugin accepts its configuration.
    pub fn new(
        plugin: Arc<Plugin>,
        settings: BalancerSettings<'_>,
        metrics: Arc<Metrics>,
    ) -> Result<Balancer, PluginError> {
        let seed = match settings.seed {
            0 => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64),
            s => s,
        };
        // The peak-EWMA costs a clock read and an exponential per response:
        // kept only when a version that may serve the pool reads it.
        let peak = plugin.capabilities().peak_latency
            || settings
                .last_good
                .as_ref()
                .is_some_and(|LastGood(good)| good.plugin.capabilities().peak_latency);
        for stats in settings.stats.iter() {
            stats.keep_peak_latency(peak);
        }
        let plugin_for_hand_over = plugin.clone();
        let recipe = Arc::new(Recipe {
            plugin,
            config_json: settings.config_json.to_string(),
            backends: settings.backends,
            stats: settings.stats.clone(),
            limits: settings.limits,
            seed,
            instantiations: AtomicU64::new(0),
            metrics: metrics.clone(),
            ready: Mutex::new(Vec::new()),
            building: AtomicUsize::new(0),
            build_failures: AtomicU64::new(0),
            next_build_ms: AtomicU64::new(0),
            build_log: LogBudget::new(HOST_LINES_PER_SECOND),
        });
        // One instance per worker and a spare (so a worker whose instance
        // trapped takes a ready one at once), built in parallel. The version
        // to fall back on is topped up to as many: a failing new version's
        // requests (and a rollback) find it ready.
        let instances = settings.instances.max(1) + 1;
        std::thread::scope(|scope| {
            if let Some(LastGood(good)) = &settings.last_good {
                scope.spawn(|| {
                    if let Err(e) = good.fill(instances) {
                        tracing::warn!(
                            plugin = good.plugin.name(),
                            "the last good version could not be made ready: {e}"
                        );
                    }
                });
            }
            recipe.fill(instances)
        })?;
        Ok(Balancer {
            pool: settings.pool.to_string(),
            recipe,
            stats: settings.stats,
            limits: settings.limits,
            failures_before_backoff: settings.failures_before_backoff,
            metrics,
            slots: ThreadLocal::new(),
            traffic: PluginTraffic::default(),
            rested_until: ThreadLocal::new(),
            host_log: LogBudget::new(HOST_LINES_PER_SECOND),
            on_failure: settings.on_failure,
            last_good: settings.last_good,
            failures: AtomicU64::new(0),
            made: Instant::now(),
            rolled_back: AtomicBool::new(false),
            hand_over_from: Mutex::new(feedback::hand_over_source(
                &plugin_for_hand_over,
                settings.previous,
            )),
        })
    }

    /// The plugin serving this pool (the last good one after a rollback).
    pub fn plugin(&self) -> &Arc<Plugin> {
        match &self.last_good {
            Some(LastGood(recipe)) if self.rolled_back.load(Ordering::Relaxed) => &recipe.plugin,
            _ => &self.recipe.plugin,
        }
    }

    /// What a successor (a new plugin version for the same pool settings)
    /// may fall back on: this version if it never failed, else what this one
    /// had.
    pub fn last_good(&self) -> Option<LastGood> {
        if self.failures.load(Ordering::Relaxed) == 0 && !self.rolled_back.load(Ordering::Relaxed) {
            Some(LastGood(self.recipe.clone()))
        } else {
            self.last_good.clone()
        }
    }

    /// The plugin this balancer was made for (rolled back or not).
    pub fn own_plugin(&self) -> &Arc<Plugin> {
        &self.recipe.plugin
    }

    /// The version this pool falls back on, if any.
    pub fn last_good_plugin(&self) -> Option<&Arc<Plugin>> {
        self.last_good
            .as_ref()
            .map(|LastGood(recipe)| &recipe.plugin)
    }

    /// Whether this version was rolled back to the last good one.
    pub fn rolled_back(&self) -> bool {
        self.rolled_back.load(Ordering::Relaxed)
    }

    /// On how many workers the plugin is rested now.
    pub fn rested_workers(&self) -> usize {
        let now = crate::stats::now_ms();
        self.rested_until
            .iter()
            .filter(|until| until.load(Ordering::Relaxed) > now)
            .count()
    }

    /// What the plugin did: `select` times, failures, fallbacks, rests.
    pub fn traffic(&self) -> &PluginTraffic {
        &self.traffic
    }

    /// Orders the pool's backends for one request, best first. When the
    /// plugin cannot answer, the pool's failure policy does: the last good
    /// version or the host's round robin (never empty), or nothing, with
    /// `scope.rejected` set (policy `reject`: the request gets a 503).
    ///
    /// A plugin that refuses the request (0.3.0 `refuse`) gets an empty
    /// order with `scope.refused` set: the request gets a 503, whatever the
    /// policy.
    pub fn select(&self, request: &Call<'_>, scope: &mut RequestScope) -> Order {
        let request = *request;
        let cell = self.slots.get_or(|| RefCell::new(Slot::default()));
        // Not re-entrant: a plugin call never calls back into the balancer.
        let mut slot = cell.borrow_mut();
        // A plain `&mut Slot`, so its fields can be borrowed apart.
        let slot = &mut *slot;
        if self.rolled_back.load(Ordering::Relaxed) {
            return self.by_last_good(slot, &request, scope);
        }
        if let Some(until) = slot.backoff_until {
            if Instant::now() < until {
                return self.instead(slot, &request, scope);
            }
            slot.backoff_until = None;
        }
        if slot.instance.is_none() {
            match self.recipe.take() {
                Some(mut instance) => {
                    if !self.warm(&mut instance) {
                        self.recipe.build_aside();
                        return self.instead(slot, &request, scope);
                    }
                    slot.instance = Some(instance);
                }
                None => {
                    // Being built aside: the failure policy serves meanwhile.
                    self.recipe.build_aside();
                    return self.instead(slot, &request, scope);
                }
            }
        }
        // Two clock reads more, only while this worker times calls.
        let cpu_before = (slot.timed_calls > 0)
            .then(crate::plugin::thread_cpu)
            .flatten();
        let instance = slot.instance.as_mut().expect("set just above");
        let started = Instant::now();
        let instance_id = instance.id();
        let answer = instance.select(&request, scope);
        let took = started.elapsed();
        self.traffic.selected(took);
        let ran = cpu_before.and_then(|before| {
            crate::plugin::thread_cpu().map(|after| after.saturating_sub(before))
        });
        let budget = self.limits.slow_call;
        let by_cpu = judge(budget, &mut slot.timed_calls, took, ran);
        match answer {
            Ok(verdict) => {
                let strike = if instance.stormed() {
                    Metrics::inc(&self.metrics.plugin_host_call_storms);
                    Some(format!(
                        "select made more than {} host calls",
                        crate::plugin::MAX_HOST_CALLS
                    ))
                } else if by_cpu.unwrap_or_else(|| {
                    crate::plugin::slow_by_fuel(budget, took, instance.fuel_used())
                }) {
                    Metrics::inc(&self.metrics.plugin_slow_calls);
                    Some(format!(
                        "select took {} µs, over plugins.slow_call_us ({} µs)",
                        took.as_micros(),
                        self.limits.slow_call.as_micros()
                    ))
                } else {
                    None
                };
                let (ids, deferred) = match verdict {
                    Verdict::Order(Answer { mut ids, len }) => {
                        let n = self.stats.len();
                        if len > n.min(MAX_ANSWER) {
                            // More ids than backends cannot all be valid:
                            // only the first n are looked at (and no more
                            // than MAX_ANSWER were read).
                            Metrics::inc(&self.metrics.plugin_long_answers);
                        }
                        ids.truncate(n);
                        keep_valid(&mut ids, n);
                        (ids, None)
                    }
                    Verdict::Refuse(reason) => {
                        match strike {
                            Some(strike) => self.failed(slot, &strike, false),
                            None => slot.failures = 0,
                        }
                        Metrics::inc(&self.metrics.plugin_refused_requests);
                        scope.refused = Some(crate::plugin::log::cut(&reason).into_owned());
                        return Order::new();
                    }
                    Verdict::Defer(reason) => (Order::new(), Some(reason)),
                };
                if ids.is_empty() {
                    self.broke();
                    Metrics::inc(&self.metrics.plugin_bad_answers);
                    self.traffic.event(PluginEvent::BadAnswer);
                    if let Some(dropped) = self.host_log.allow() {
                        let dropped = (dropped > 0).then_some(dropped);
                        match deferred {
                            Some(reason) => {
                                let reason = crate::plugin::log::cut(&reason);
                                tracing::warn!(plugin = self.plugin().name(), pool = %self.pool, dropped, "select deferred ({reason}); the pool's failure policy serves")
                            }
                            None => {
                                tracing::warn!(plugin = self.plugin().name(), pool = %self.pool, dropped, "select answered no known backend; the pool's failure policy serves")
                            }
                        }
                    }
                    if let Some(strike) = strike {
                        self.failed(slot, &strike, true);
                    }
                    return self.instead(slot, &request, scope);
                }
                match strike {
                    Some(strike) => self.failed(slot, &strike, false),
                    None => slot.failures = 0,
                }
                if self.recipe.plugin.capabilities().outcomes {
                    scope.answered_by = Some(instance_id);
                }
                ids
            }
            Err(CallError::Descheduled) => {
                // The thread, not the plugin, was late: no failure counted.
                slot.instance = None;
                Metrics::inc(&self.metrics.plugin_descheduled_calls);
                self.recipe.build_aside();
                self.instead(slot, &request, scope)
            }
            Err(e) => {
                slot.instance = None;
                let (counter, event) = match e {
                    CallError::Trap(_) => (&self.metrics.plugin_traps, PluginEvent::Trap),
                    _ => (&self.metrics.plugin_timeouts, PluginEvent::Timeout),
                };
                Metrics::inc(counter);
                self.traffic.event(event);
                self.broke();
                self.failed(slot, &format!("select {e}"), true);
                self.recipe.build_aside();
                self.instead(slot, &request, scope)
            }
        }
    }

    /// The order for a request the plugin did not answer, by the pool's
    /// failure policy.
    fn instead(&self, slot: &mut Slot, request: &Call<'_>, scope: &mut RequestScope) -> Order {
        match self.on_failure {
            PluginFailure::LastGood => self.by_last_good(slot, request, scope),
            _ => self.without_plugin(slot, scope),
        }
    }

    /// The order when no plugin version answers: the round robin, or none
    /// (a 503) when the pool's policy is `reject`.
    fn without_plugin(&self, slot: &mut Slot, scope: &mut RequestScope) -> Order {
        if self.on_failure == PluginFailure::Reject {
            Metrics::inc(&self.metrics.plugin_rejections);
            scope.rejected = true;
            return Order::new();
        }
        scope.fell_back = true;
        self.fallback(slot)
    }

    /// The order the last good version gives (the round robin's when there
    /// is none, or it cannot answer).
    fn by_last_good(&self, slot: &mut Slot, request: &Call<'_>, scope: &mut RequestScope) -> Order {
        let Some(LastGood(recipe)) = &self.last_good else {
            return self.without_plugin(slot, scope);
        };
        if slot.last_good.is_none() {
            slot.last_good = recipe.take();
            if slot.last_good.is_none() {
                recipe.build_aside();
                return self.without_plugin(slot, scope);
            }
        }
        let instance = slot.last_good.as_mut().expect("set just above");
        let answer = instance.select(request, scope);
        match answer {
            Ok(Verdict::Refuse(reason)) => {
                Metrics::inc(&self.metrics.plugin_refused_requests);
                scope.refused = Some(crate::plugin::log::cut(&reason).into_owned());
                Order::new()
            }
            Ok(Verdict::Defer(_)) => self.without_plugin(slot, scope),
            Ok(Verdict::Order(Answer { mut ids, .. })) => {
                let n = self.stats.len();
                ids.truncate(n);
                keep_valid(&mut ids, n);
                if ids.is_empty() {
                    return self.without_plugin(slot, scope);
                }
                scope.fell_back = true;
                Metrics::inc(&self.metrics.last_good_selections);
                if recipe.plugin.capabilities().outcomes {
                    scope.answered_by = Some(instance.id());
                }
                ids
            }
            Err(_) => {
                slot.last_good = None;
                recipe.build_aside();
                self.without_plugin(slot, scope)
            }
        }
    }

    /// Counts a call that failed outright (trap, missed deadline, no usable
    /// answer) toward the automatic rollback: slow calls make a version
    /// rested, not bad.
    fn broke(&self) {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(LastGood(good)) = &self.last_good
            && failures >= ROLLBACK_AFTER
            && self.made.elapsed() < ROLLBACK_WINDOW
            && !self.rolled_back.swap(true, Ordering::Relaxed)
        {
            Metrics::inc(&self.metrics.plugin_rollbacks);
            tracing::warn!(
                pool = %self.pool,
                failed = %format_args!("{}@{}", self.recipe.plugin.name(), self.recipe.plugin.version()),
                serving = %format_args!("{}@{}", good.plugin.name(), good.plugin.version()),
                "plugin rolled back: the new version failed {failures} times within {}s of its swap; the last good version serves this pool until the next swap or reload",
                ROLLBACK_WINDOW.as_secs()
            );
        }
    }

    /// Counts a failure (a failed call, or a slow or stormy one that was
    /// served: `fell_back` false) and rests the plugin after enough in a row.
    fn failed(&self, slot: &mut Slot, what: &str, fell_back: bool) {
        slot.failures += 1;
        let backoff = (slot.failures >= self.failures_before_backoff).then(|| {
            let doublings = (slot.failures - self.failures_before_backoff).min(10);
            (BACKOFF_MIN * (1 << doublings)).min(BACKOFF_MAX)
        });
        if let Some(backoff) = backoff {
            slot.backoff_until = Some(Instant::now() + backoff);
            self.traffic.event(PluginEvent::Rest);
            self.rested_until.get_or(AtomicU64::default).store(
                crate::stats::now_ms() + backoff.as_millis() as u64,
                Ordering::Relaxed,
            );
        }
        if let Some(dropped) = self.host_log.allow() {
            tracing::warn!(
                plugin = self.plugin().name(),
                pool = %self.pool,
                failures_in_a_row = slot.failures,
                backoff_ms = backoff.map(|b| b.as_millis() as u64),
                dropped = (dropped > 0).then_some(dropped),
                "{}: {what}",
                if fell_back {
                    "plugin failed, request served by round robin"
                } else {
                    "plugin too slow (request served by its answer)"
                }
            );
        }
    }

    fn fallback(&self, slot: &mut Slot) -> Order {
        Metrics::inc(&self.metrics.fallback_selections);
        self.traffic.event(PluginEvent::Fallback);
        let n = self.stats.len() as u32;
        let start = (slot.fallback_next % n as usize) as u32;
        slot.fallback_next = slot.fallback_next.wrapping_add(1);
        (0..n).map(|i| (start + i) % n).collect()
    }
}
