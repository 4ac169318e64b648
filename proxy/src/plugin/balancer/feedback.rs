//! What flows back to a pool's plugin besides requests: how each attempt
//! from its answer went (0.3.0 `on-outcome`), and its state when the pool is
//! rebuilt (0.3.0 `export-state` / `import-state`).
//!
//! Both happen on the worker that owns the instances involved, so no
//! instance is ever shared between threads. State goes from the old
//! balancer's instance on a worker to the new balancer's first instance on
//! that worker, before that instance's first `select`: per-worker state
//! (what a learning strategy learnt there) stays with its worker.

use std::sync::Arc;

use super::Balancer;
use crate::metrics::Metrics;
use crate::metrics::traffic::PluginEvent;
use crate::plugin::{AttemptOutcome, CallError, Instance, Plugin};

/// The balancer to take state from, if `previous` runs the same plugin (any
/// version) and both versions ask for hand-over. The chain is cut: the
/// previous balancer gives up its own source.
pub(super) fn hand_over_source(
    plugin: &Plugin,
    previous: Option<Arc<Balancer>>,
) -> Option<Arc<Balancer>> {
    let previous = previous?;
    previous.hand_over_from.lock().unwrap().take();
    let old = previous.plugin();
    (old.name() == plugin.name() && old.capabilities().hand_over && plugin.capabilities().hand_over)
        .then_some(previous)
}

impl Balancer {
    /// Tells the instance that answered a request (`answered_by`, from
    /// `RequestScope::answered_by`) how one of its attempts went: only for
    /// plugins that ask, on the worker that selected, and only while that
    /// instance still serves (a newer one did not answer this request). A
    /// trap or missed deadline here is a plugin failure like one in
    /// `select`.
    pub fn outcome(&self, answered_by: u64, outcome: &AttemptOutcome) {
        let Some(cell) = self.slots.get() else {
            return;
        };
        let mut slot = cell.borrow_mut();
        let slot = &mut *slot;
        let result = if let Some(instance) =
            slot.instance.as_mut().filter(|i| i.id() == answered_by)
        {
            instance.on_outcome(outcome)
        } else if let Some(instance) = slot.last_good.as_mut().filter(|i| i.id() == answered_by) {
            // The last good version's failures are its own: it is replaced.
            if instance.on_outcome(outcome).is_err() {
                slot.last_good = None;
            }
            return;
        } else {
            return;
        };
        match result {
            Ok(()) => {}
            Err(CallError::Descheduled) => {
                slot.instance = None;
                Metrics::inc(&self.metrics.plugin_descheduled_calls);
                self.recipe.build_aside();
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
                self.failed(slot, &format!("on-outcome {e}"), false);
                self.recipe.build_aside();
            }
        }
    }

    /// Gives `instance` (this worker's first of this balancer) the state of
    /// the instance the previous balancer had on this worker, if any; that
    /// instance is retired. Both calls run under `select`'s deadline (they
    /// are on a worker). A state that is not handed over leaves `instance`
    /// cold, logged; `false` when `instance` trapped taking it (it cannot be
    /// used).
    pub(super) fn warm(&self, instance: &mut Instance) -> bool {
        let Some(previous) = self.hand_over_from.lock().unwrap().clone() else {
            return true;
        };
        let Some(old) = previous
            .slots
            .get()
            .and_then(|cell| cell.borrow_mut().instance.take())
        else {
            return true;
        };
        let mut old = old;
        let mut usable = true;
        let timeout = self.limits.select_timeout;
        let outcome = match old.export_state(timeout) {
            Ok(Some(state)) => match instance.import_state(&state, timeout) {
                Ok(Ok(())) => {
                    Metrics::inc(&self.metrics.plugin_state_hand_overs);
                    return true;
                }
                Ok(Err(refused)) => format!("the new version could not read it: {refused}"),
                Err(e) => {
                    usable = false;
                    format!("import-state {e}")
                }
            },
            Ok(None) => format!(
                "the state is larger than {} bytes",
                crate::plugin::MAX_STATE_BYTES
            ),
            Err(e) => format!("export-state {e}"),
        };
        if let Some(dropped) = self.host_log.allow() {
            tracing::warn!(
                plugin = self.plugin().name(),
                pool = %self.pool,
                dropped = (dropped > 0).then_some(dropped),
                "state not handed over, the instance starts cold: {outcome}"
            );
        }
        usable
    }
}
