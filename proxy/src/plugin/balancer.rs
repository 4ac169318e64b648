//! Drives one pool's strategy plugin: one instance per worker thread (no lock
//! shared by requests), validation of its answers, and the failure policy.
//!
//! Failure policy: a trap or missed deadline discards the worker's instance (a
//! trapped component cannot be re-entered), is counted and logged with the
//! plugin's name, and the request is ordered by the host's round robin instead.
//! The next request instantiates the plugin afresh. After
//! `failures_before_backoff` failures in a row the plugin is not called for a
//! backoff that doubles from 100 ms to 10 s, so a plugin that loops forever
//! costs at most a few deadlines per backoff period.

use std::cell::RefCell;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use thread_local::ThreadLocal;

use crate::error::PluginError;
use crate::metrics::Metrics;
use crate::metrics::traffic::{PluginEvent, PluginTraffic};
use crate::plugin::{BackendInfo, CallError, Instance, Limits, Plugin, RequestScope};
use crate::stats::{BackendStats, plugin_log_allowed};

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// One pool's strategy: the plugin, its config, the backend set it was given,
/// and each worker's instance.
pub struct Balancer {
    pool: String,
    plugin: Arc<Plugin>,
    config_json: String,
    backends: Vec<BackendInfo>,
    stats: Arc<[Arc<BackendStats>]>,
    limits: Limits,
    failures_before_backoff: u32,
    seed: u64,
    instantiations: AtomicU64,
    metrics: Arc<Metrics>,
    slots: ThreadLocal<RefCell<Slot>>,
    traffic: PluginTraffic,
    /// Per worker: `now_ms()` until which the plugin is rested there (for
    /// the admin API; the slot's own copy decides).
    rested_until: ThreadLocal<AtomicU64>,
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
}

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
}

impl Balancer {
    /// Builds the balancer and checks the plugin accepts its configuration by
    /// initialising one instance (then dropped: workers make their own).
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
        let balancer = Balancer {
            pool: settings.pool.to_string(),
            plugin,
            config_json: settings.config_json.to_string(),
            backends: settings.backends,
            stats: settings.stats,
            limits: settings.limits,
            failures_before_backoff: settings.failures_before_backoff,
            seed,
            instantiations: AtomicU64::new(0),
            metrics,
            slots: ThreadLocal::new(),
            traffic: PluginTraffic::default(),
            rested_until: ThreadLocal::new(),
        };
        balancer.instantiate()?;
        Ok(balancer)
    }

    /// The plugin serving this pool.
    pub fn plugin(&self) -> &Arc<Plugin> {
        &self.plugin
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

    /// A ready instance: instantiated, initialised, given the backends.
    fn instantiate(&self) -> Result<Instance, PluginError> {
        let n = self.instantiations.fetch_add(1, Ordering::Relaxed);
        Metrics::inc(&self.metrics.plugin_instantiations);
        let seed = self
            .seed
            .wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut instance = Instance::new(&self.plugin, self.stats.clone(), self.limits, seed)?;
        let name = self.plugin.name();
        let trapped = |call, e: CallError| PluginError::Trapped {
            plugin: name.to_string(),
            call,
            reason: e.to_string(),
        };
        instance
            .init(&self.config_json)
            .map_err(|e| trapped("init", e))?
            .map_err(|message| PluginError::Refused {
                plugin: name.to_string(),
                message,
            })?;
        instance
            .set_backends(&self.backends)
            .map_err(|e| trapped("set-backends", e))?;
        Ok(instance)
    }

    /// Orders the pool's backends for one request, best first. Never empty:
    /// when the plugin cannot answer, the host's round robin does.
    pub fn select(
        &self,
        method: &http::Method,
        host: &str,
        path: &str,
        client: IpAddr,
        scope: &mut RequestScope,
    ) -> Vec<u32> {
        let cell = self.slots.get_or(|| RefCell::new(Slot::default()));
        // Not re-entrant: a plugin call never calls back into the balancer.
        let mut slot = cell.borrow_mut();
        if let Some(until) = slot.backoff_until {
            if Instant::now() < until {
                scope.fell_back = true;
                return self.fallback(&mut slot);
            }
            slot.backoff_until = None;
        }
        if slot.instance.is_none() {
            match self.instantiate() {
                Ok(instance) => slot.instance = Some(instance),
                Err(e) => {
                    self.failed(&mut slot, &e.to_string());
                    scope.fell_back = true;
                    return self.fallback(&mut slot);
                }
            }
        }
        let instance = slot.instance.as_mut().expect("set just above");
        let started = Instant::now();
        let answer = instance.select(method, host, path, client, scope);
        self.traffic.selected(started.elapsed());
        match answer {
            Ok(mut ids) => {
                keep_valid(&mut ids, self.stats.len());
                if ids.is_empty() {
                    Metrics::inc(&self.metrics.plugin_bad_answers);
                    self.traffic.event(PluginEvent::BadAnswer);
                    if plugin_log_allowed() {
                        tracing::warn!(plugin = self.plugin.name(), pool = %self.pool, "select answered no known backend; using round robin");
                    }
                    scope.fell_back = true;
                    return self.fallback(&mut slot);
                }
                slot.failures = 0;
                ids
            }
            Err(e) => {
                slot.instance = None;
                let (counter, event) = match e {
                    CallError::Timeout => (&self.metrics.plugin_timeouts, PluginEvent::Timeout),
                    CallError::Trap(_) => (&self.metrics.plugin_traps, PluginEvent::Trap),
                };
                Metrics::inc(counter);
                self.traffic.event(event);
                self.failed(&mut slot, &format!("select {e}"));
                scope.fell_back = true;
                self.fallback(&mut slot)
            }
        }
    }

    fn failed(&self, slot: &mut Slot, what: &str) {
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
        if plugin_log_allowed() {
            tracing::warn!(
                plugin = self.plugin.name(),
                pool = %self.pool,
                failures_in_a_row = slot.failures,
                backoff_ms = backoff.map(|b| b.as_millis() as u64),
                "plugin failed, request served by round robin: {what}"
            );
        }
    }

    fn fallback(&self, slot: &mut Slot) -> Vec<u32> {
        Metrics::inc(&self.metrics.fallback_selections);
        self.traffic.event(PluginEvent::Fallback);
        let n = self.stats.len() as u32;
        let start = (slot.fallback_next % n as usize) as u32;
        slot.fallback_next = slot.fallback_next.wrapping_add(1);
        (0..n).map(|i| (start + i) % n).collect()
    }
}

/// Drops ids `>= n` and repeats, keeping the order.
fn keep_valid(ids: &mut Vec<u32>, n: usize) {
    // A bitset of ids seen; on the stack for pools of up to 256 backends.
    let words = n.div_ceil(64);
    let mut small = [0u64; 4];
    let mut large = Vec::new();
    let seen: &mut [u64] = if words <= small.len() {
        &mut small[..words]
    } else {
        large.resize(words, 0);
        &mut large
    };
    ids.retain(|&id| {
        let id = id as usize;
        if id >= n || seen[id / 64] & (1 << (id % 64)) != 0 {
            return false;
        }
        seen[id / 64] |= 1 << (id % 64);
        true
    });
}

#[cfg(test)]
mod tests {
    use super::keep_valid;

    #[test]
    fn unknown_and_repeated_ids_are_dropped_in_order() {
        let mut ids = vec![2, 9, 0, 2, 1, 0, 70];
        keep_valid(&mut ids, 3);
        assert_eq!(ids, vec![2, 0, 1]);
    }
}
