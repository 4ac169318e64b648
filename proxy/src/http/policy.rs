//! Host-side policy around the strategy's order, the same under every
//! plugin: slow start (a backend that just came back is moved down the
//! candidate list with a chance that falls to nothing over its window) and
//! the retry budget (retries after a request reached a backend may be at
//! most a share of recent requests, so retries cannot multiply an outage).
//!
//! Both keep per-worker state only: the request path writes no cache line
//! another worker reads.

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::time::Duration;

use thread_local::ThreadLocal;

use crate::config::RetryPolicy;
use crate::stats::{BackendStats, now_ms};

/// The plugin's order with backends in slow start moved to the end, each
/// with probability `1 - progress` (so a backend halfway through its window
/// keeps its place half the time). Borrowed when nothing moves.
pub(super) fn slow_start<'a>(
    candidates: &'a [u32],
    stats: &[Arc<BackendStats>],
    window: Duration,
) -> Cow<'a, [u32]> {
    if window.is_zero() || candidates.len() < 2 {
        return Cow::Borrowed(candidates);
    }
    let demoted = |id: u32| {
        stats[id as usize]
            .slow_start(window)
            .is_some_and(|progress| random_unit() >= progress)
    };
    let mut kept = Vec::with_capacity(candidates.len());
    let mut moved = Vec::new();
    for &id in candidates {
        if demoted(id) {
            moved.push(id);
        } else {
            kept.push(id);
        }
    }
    if moved.is_empty() {
        return Cow::Borrowed(candidates);
    }
    kept.extend(moved);
    Cow::Owned(kept)
}

/// A uniform number in `[0, 1)` from a per-thread xorshift generator.
pub(super) fn random_unit() -> f64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let seed = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0x9E37_79B9_7F4A_7C15, |d| d.as_nanos() as u64);
            seed | 1
        });
    }
    STATE.with(|state| {
        let mut x = state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        (x >> 11) as f64 / (1u64 << 53) as f64
    })
}

/// Seconds the budget looks back over.
const WINDOW_S: usize = 10;

/// One pool's retry budget (see the module docs), kept per worker: each
/// worker may retry `budget_percent` of its own requests over the last 10 s,
/// plus its part of `budget_min_per_second`.
pub struct RetryBudget {
    percent: u64,
    /// Retries per window always allowed on each worker.
    floor: u64,
    windows: ThreadLocal<RefCell<Window>>,
}

#[derive(Default)]
struct Window {
    /// The second `requests[0]`/`retries[0]` count, as `now_ms() / 1000`.
    second: u64,
    /// Per second, newest first.
    requests: [u32; WINDOW_S],
    retries: [u32; WINDOW_S],
}

impl Window {
    /// Moves the window to the current second.
    fn advance(&mut self) {
        let now = now_ms() / 1000;
        let shift = now.saturating_sub(self.second).min(WINDOW_S as u64) as usize;
        if shift > 0 {
            self.requests.rotate_right(shift);
            self.retries.rotate_right(shift);
            self.requests[..shift].fill(0);
            self.retries[..shift].fill(0);
            self.second = now;
        }
    }
}

impl RetryBudget {
    /// A budget for `policy` shared out over `workers`.
    pub fn new(policy: &RetryPolicy, workers: usize) -> RetryBudget {
        let per_window = policy.budget_min_per_second as u64 * WINDOW_S as u64;
        RetryBudget {
            percent: policy.budget_percent as u64,
            floor: per_window.div_ceil(workers.max(1) as u64),
            windows: ThreadLocal::new(),
        }
    }

    /// Counts a request.
    pub fn deposit(&self) {
        let mut window = self.window().borrow_mut();
        window.advance();
        window.requests[0] = window.requests[0].saturating_add(1);
    }

    /// Takes one retry from the budget; false when it is spent.
    pub fn withdraw(&self) -> bool {
        let mut window = self.window().borrow_mut();
        window.advance();
        let requests: u64 = window.requests.iter().map(|&n| n as u64).sum();
        let retries: u64 = window.retries.iter().map(|&n| n as u64).sum();
        if retries >= self.floor + requests * self.percent / 100 {
            return false;
        }
        window.retries[0] = window.retries[0].saturating_add(1);
        true
    }

    fn window(&self) -> &RefCell<Window> {
        self.windows.get_or(Default::default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(percent: u32, floor: u32) -> RetryPolicy {
        let mut p = crate::config::RetrySection::default()
            .validate("pools.t.retry")
            .unwrap();
        p.budget_percent = percent;
        p.budget_min_per_second = floor;
        p
    }

    #[test]
    fn retries_stop_at_the_share_of_requests_plus_the_floor() {
        let budget = RetryBudget::new(&policy(20, 1), 1);
        for _ in 0..100 {
            budget.deposit();
        }
        // 20% of 100 requests, plus 1/s over 10 s.
        let granted = (0..1000).take_while(|_| budget.withdraw()).count();
        assert_eq!(granted, 30);
        budget.deposit();
        budget.deposit();
        budget.deposit();
        budget.deposit();
        budget.deposit();
        assert!(budget.withdraw(), "five more requests earn one more retry");
        assert!(!budget.withdraw());
    }

    #[test]
    fn the_floor_is_shared_out_over_workers() {
        let budget = RetryBudget::new(&policy(0, 10), 4);
        assert_eq!((0..1000).take_while(|_| budget.withdraw()).count(), 25);
    }

    #[test]
    fn slow_start_moves_a_backend_that_just_came_back_down_the_list_most_of_the_time() {
        let stats: Vec<Arc<BackendStats>> = (0..3).map(|_| Arc::default()).collect();
        stats[0].set_check_result(false);
        stats[0].set_check_result(true);
        let window = Duration::from_secs(3600);
        let first = (0..1000)
            .filter(|_| slow_start(&[0, 1, 2], &stats, window)[0] == 0)
            .count();
        assert!(first < 50, "kept first {first} times in 1000");
        assert_eq!(&*slow_start(&[1, 2, 0], &stats, window), &[1, 2, 0]);
        assert_eq!(&*slow_start(&[0, 1, 2], &stats, Duration::ZERO), &[0, 1, 2]);
    }
}
