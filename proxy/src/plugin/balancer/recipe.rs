//! What builds a pool's plugin instances off the worker threads, and the
//! last good version kept to fall back on.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::PluginError;
use crate::metrics::Metrics;
use crate::plugin::log::LogBudget;
use crate::plugin::{BackendInfo, CallError, Instance, Limits, Plugin};

use super::{BACKOFF_MAX, BACKOFF_MIN};
use crate::stats::BackendStats;

/// A plugin version kept in memory to fall back on: what builds its
/// instances (with the backend set it had, which is the pool's too).
#[derive(Clone)]
pub struct LastGood(pub(super) Arc<Recipe>);

/// What it takes to build an instance, and the instances built and not yet
/// taken by a worker. Shared with the threads that build them.
pub(super) struct Recipe {
    pub(super) plugin: Arc<Plugin>,
    pub(super) config_json: String,
    pub(super) backends: Vec<BackendInfo>,
    pub(super) stats: Arc<[Arc<BackendStats>]>,
    pub(super) limits: Limits,
    pub(super) seed: u64,
    pub(super) instantiations: AtomicU64,
    pub(super) metrics: Arc<Metrics>,
    pub(super) ready: Mutex<Vec<Instance>>,
    /// Builds under way.
    pub(super) building: AtomicUsize,
    /// Builds aside that failed in a row, and the time (`now_ms`) before
    /// which no other is started: a version whose `init` keeps failing
    /// does not keep threads busy.
    pub(super) build_failures: AtomicU64,
    pub(super) next_build_ms: AtomicU64,
    /// The host's lines about failed builds.
    pub(super) build_log: LogBudget,
}

/// Most instance builds under way at once for one pool.
const MAX_BUILDING: usize = 2;

impl Recipe {
    /// A ready instance: instantiated, initialised, given the backends.
    pub(super) fn build(&self) -> Result<Instance, PluginError> {
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

    /// An instance built earlier, if one is ready; taking the last one
    /// starts building the next spare.
    pub(super) fn take(self: &Arc<Recipe>) -> Option<Instance> {
        let (instance, left) = {
            let mut ready = self.ready.lock().ok()?;
            (ready.pop(), ready.len())
        };
        if instance.is_some() && left == 0 {
            self.build_aside();
        }
        instance
    }

    /// Builds one more instance on a thread of its own (unless enough are
    /// being built, or builds keep failing and are backing off), for a
    /// worker that lost its own or to refill the spare.
    pub(super) fn build_aside(self: &Arc<Recipe>) {
        if crate::stats::now_ms() < self.next_build_ms.load(Ordering::Relaxed) {
            return;
        }
        if self.building.fetch_add(1, Ordering::AcqRel) >= MAX_BUILDING {
            self.building.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        let recipe = self.clone();
        let spawned = std::thread::Builder::new()
            .name("veer-plugin-build".into())
            .spawn(move || {
                match recipe.build() {
                    Ok(instance) => {
                        recipe.build_failures.store(0, Ordering::Relaxed);
                        if let Ok(mut ready) = recipe.ready.lock() {
                            ready.push(instance);
                        }
                    }
                    Err(e) => {
                        let failures = recipe.build_failures.fetch_add(1, Ordering::Relaxed) + 1;
                        let wait = (BACKOFF_MIN * (1 << failures.min(10))).min(BACKOFF_MAX);
                        recipe.next_build_ms.store(
                            crate::stats::now_ms() + wait.as_millis() as u64,
                            Ordering::Relaxed,
                        );
                        if let Some(dropped) = recipe.build_log.allow() {
                            tracing::warn!(
                                plugin = recipe.plugin.name(),
                                dropped = (dropped > 0).then_some(dropped),
                                "a new instance could not be built ({e}); next try in {} ms",
                                wait.as_millis()
                            );
                        }
                    }
                }
                recipe.building.fetch_sub(1, Ordering::AcqRel);
            });
        if spawned.is_err() {
            self.building.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Builds instances on the calling thread until `count` are ready (in
    /// parallel); the first error is returned.
    pub(super) fn fill(&self, count: usize) -> Result<(), PluginError> {
        let have = self.ready.lock().map_or(0, |r| r.len());
        let built: Vec<Result<Instance, PluginError>> = std::thread::scope(|scope| {
            let builders: Vec<_> = (have..count)
                .map(|_| scope.spawn(|| self.build()))
                .collect();
            builders
                .into_iter()
                .map(|b| {
                    b.join().unwrap_or_else(|_| {
                        Err(PluginError::Trapped {
                            plugin: self.plugin.name().to_string(),
                            call: "init",
                            reason: "building the instance panicked".into(),
                        })
                    })
                })
                .collect()
        });
        let mut ready = self.ready.lock().map_err(|_| PluginError::Trapped {
            plugin: self.plugin.name().to_string(),
            call: "init",
            reason: "a builder panicked".into(),
        })?;
        for instance in built {
            ready.push(instance?);
        }
        Ok(())
    }
}
