//! Judging a call and its answer: slow or not, which ids are usable.

use std::time::Duration;

use super::TIMED_CALLS;

/// How a call that took `took` (wall) against `budget` is judged: `None`
/// by the fuel it burnt (the caller's check), `Some(slow)` by what the
/// thread ran (`ran`, when this worker was timing calls): a descheduled
/// host is not the plugin's fault, time in its host calls (which burns no
/// fuel) is. A call over the budget makes the worker
/// time its next [`TIMED_CALLS`] calls.
pub(super) fn judge(
    budget: Duration,
    timed_calls: &mut u32,
    took: Duration,
    ran: Option<Duration>,
) -> Option<bool> {
    let over = took > budget;
    let timed = *timed_calls > 0;
    *timed_calls = if over {
        TIMED_CALLS
    } else {
        timed_calls.saturating_sub(1)
    };
    match ran {
        Some(ran) if timed => Some(over && ran > budget),
        _ => None,
    }
}

/// Drops ids `>= n` and repeats, keeping the order.
pub(super) fn keep_valid(ids: &mut crate::plugin::Order, n: usize) {
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
    ids.retain(|id| {
        let id = *id as usize;
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
    fn a_call_over_budget_is_judged_by_fuel_then_the_next_ones_by_thread_cpu_time() {
        use super::{TIMED_CALLS, judge};
        use std::time::Duration;
        let ms = Duration::from_millis;
        let budget = Duration::from_micros(500);
        let mut timed = 0;
        // Under the budget, not timed: nothing to judge by CPU.
        assert_eq!(judge(budget, &mut timed, ms(0), None), None);
        assert_eq!(timed, 0);
        // Over the budget, not timed yet: fuel decides; the next are timed.
        assert_eq!(judge(budget, &mut timed, ms(3), None), None);
        assert_eq!(timed, TIMED_CALLS);
        // Timed and over: the thread ran it (host calls included): slow.
        assert_eq!(judge(budget, &mut timed, ms(3), Some(ms(3))), Some(true));
        // Timed and over, but the thread hardly ran: descheduled, not slow.
        assert_eq!(
            judge(budget, &mut timed, ms(3), Some(Duration::from_micros(20))),
            Some(false)
        );
        // Timed and under: fast; timing winds down call by call.
        assert_eq!(
            judge(budget, &mut timed, Duration::ZERO, Some(Duration::ZERO)),
            Some(false)
        );
        assert_eq!(timed, TIMED_CALLS - 1);
    }

    #[test]
    fn unknown_and_repeated_ids_are_dropped_in_order() {
        let mut ids = crate::plugin::Order::from_slice(&[2, 9, 0, 2, 1, 0, 70]);
        keep_valid(&mut ids, 3);
        assert_eq!(ids.as_slice(), &[2, 0, 1]);
    }
}
