//! Algorithms shared by Veer's built-in strategies. Pure functions and data
//! structures: no host calls (randomness and live stats are passed in), so
//! each is unit-tested natively and reused by several plugins.
//!
//! - [`hash`]: a stable 64-bit hash (same keys → same backends across
//!   restarts and machines).
//! - [`SmoothWeighted`]: NGINX's smooth weighted round robin.
//! - [`weighted_index`]: weighted choice of one index from a random number.
//! - [`order_by_load`]: least (in-flight ÷ weight) first, ties in turn.
//! - [`Ketama`], [`Maglev`]: consistent-hash rings; [`bounded`] load caps.
//! - [`rotate_from`]: a choice followed by the others as fallbacks.
#![forbid(unsafe_code)]

mod hash;
mod ring;

pub use hash::hash;
pub use ring::{Distinct, Ketama, Maglev, bounded};

/// Most candidates a strategy answers: the first choice and 7 fallbacks. The
/// host tries at most `retries + 1` (3 by default) and skips backends it knows
/// are down, so 8 leaves room; answering all of a large pool would cost a
/// list copy per request for nothing.
pub const MAX_CANDIDATES: usize = 8;

/// [`rotate_from`] into `out`, allocating nothing.
pub fn rotate_into(ids: &[u32], start: usize, out: &mut impl Extend<u32>) {
    if ids.is_empty() {
        return;
    }
    let start = start % ids.len();
    out.extend(
        ids[start..]
            .iter()
            .chain(&ids[..start])
            .take(MAX_CANDIDATES)
            .copied(),
    );
}

/// `ids` starting at position `start`, wrapping: the first choice, then the
/// next ones in ring order as fallbacks (at most [`MAX_CANDIDATES`]).
pub fn rotate_from(ids: &[u32], start: usize) -> Vec<u32> {
    if ids.is_empty() {
        return Vec::new();
    }
    let start = start % ids.len();
    ids[start..]
        .iter()
        .chain(&ids[..start])
        .take(MAX_CANDIDATES)
        .copied()
        .collect()
}

/// The index chosen by `r` among `weights` (each ≥ 1), proportionally.
pub fn weighted_index(weights: &[u32], r: u64) -> usize {
    let total: u64 = weights.iter().map(|&w| w as u64).sum();
    if total == 0 {
        return 0;
    }
    let mut point = r % total;
    for (i, &w) in weights.iter().enumerate() {
        if point < w as u64 {
            return i;
        }
        point -= w as u64;
    }
    weights.len() - 1
}

/// NGINX's smooth weighted round robin: over a cycle of Σweights picks each
/// backend is chosen `weight` times, interleaved as evenly as possible
/// (weights 5,1,1 give a a b a c a a).
#[derive(Debug, Clone, Default)]
pub struct SmoothWeighted {
    weights: Vec<i64>,
    current: Vec<i64>,
    total: i64,
}

impl SmoothWeighted {
    /// A fresh cycle over `weights`.
    pub fn new(weights: &[u32]) -> SmoothWeighted {
        SmoothWeighted {
            weights: weights.iter().map(|&w| w.max(1) as i64).collect(),
            current: vec![0; weights.len()],
            total: weights.iter().map(|&w| w.max(1) as i64).sum(),
        }
    }

    /// The next index (`None` when there are no weights).
    pub fn pick(&mut self) -> Option<usize> {
        let mut best: Option<usize> = None;
        for i in 0..self.weights.len() {
            self.current[i] += self.weights[i];
            if best.is_none_or(|b| self.current[i] > self.current[b]) {
                best = Some(i);
            }
        }
        let b = best?;
        self.current[b] -= self.total;
        Some(b)
    }
}

/// Checks a configured number of draws for [`power_of_choices`]: 1 to 16.
pub fn checked_draws(draws: u32) -> Result<usize, String> {
    if (1..=16).contains(&draws) {
        Ok(draws as usize)
    } else {
        Err(format!("\"draws\" must be between 1 and 16, got {draws}"))
    }
}

/// Power of `draws` random choices: draws that many distinct backends (all of
/// them when `draws >= n`), puts the cheapest first, the other draws next by
/// cost, then every remaining backend in ring order after the first choice.
/// `cost(i)` is only called for drawn backends.
pub fn power_of_choices(
    n: usize,
    draws: usize,
    rng: &mut dyn FnMut() -> u64,
    mut cost: impl FnMut(usize) -> f64,
) -> Vec<u32> {
    if n == 0 {
        return Vec::new();
    }
    let draws = draws.clamp(1, n);
    let mut drawn: Vec<usize> = Vec::with_capacity(draws);
    while drawn.len() < draws {
        let i = (rng() % n as u64) as usize;
        if !drawn.contains(&i) {
            drawn.push(i);
        }
    }
    let mut scored: Vec<(f64, usize)> = drawn.iter().map(|&i| (cost(i), i)).collect();
    scored.sort_by(|a, b| a.0.total_cmp(&b.0));
    let first = scored[0].1;
    let mut order: Vec<u32> = scored.iter().map(|&(_, i)| i as u32).collect();
    let rest = (1..n)
        .map(|k| (first + k) % n)
        .filter(|i| !drawn.contains(i));
    order.extend(
        rest.take(MAX_CANDIDATES.saturating_sub(order.len()))
            .map(|i| i as u32),
    );
    order.truncate(MAX_CANDIDATES);
    order
}

/// The least loaded backends, least first, at most [`MAX_CANDIDATES`]: load is
/// `in_flight[i] / weights[i]`, compared exactly by cross-multiplying. Ties
/// keep ring order starting at `turn`, so equally loaded backends take turns.
/// One pass keeping the best few: O(n), not a sort of the whole pool.
pub fn order_by_load(in_flight: &[u32], weights: &[u32], turn: usize) -> Vec<u32> {
    let n = in_flight.len();
    let less = |a: usize, b: usize| {
        (in_flight[a] as u64 * weights[b].max(1) as u64)
            < (in_flight[b] as u64 * weights[a].max(1) as u64)
    };
    let mut best: Vec<usize> = Vec::with_capacity(MAX_CANDIDATES + 1);
    for k in 0..n {
        let i = (turn + k) % n;
        if best.len() == MAX_CANDIDATES && !less(i, best[MAX_CANDIDATES - 1]) {
            continue;
        }
        // After every entry not more loaded: ties keep visiting order.
        let at = best.iter().position(|&b| less(i, b)).unwrap_or(best.len());
        best.insert(at, i);
        best.truncate(MAX_CANDIDATES);
    }
    best.into_iter().map(|i| i as u32).collect()
}

/// How strategies that first pick a subset (content routing, sticky
/// sessions) order backends within it. Config value: `"round-robin"`,
/// `"random"` (weighted) or `"least-connections"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Inner {
    /// In turn.
    #[default]
    RoundRobin,
    /// Weighted random.
    Random,
    /// Least in-flight per weight, ties in turn.
    LeastConnections,
}

impl Inner {
    /// Parses a config value.
    pub fn parse(name: &str) -> Result<Inner, String> {
        match name {
            "round-robin" => Ok(Inner::RoundRobin),
            "random" => Ok(Inner::Random),
            "least-connections" => Ok(Inner::LeastConnections),
            other => Err(format!(
                "inner strategy {other:?} is not one of round-robin, random, least-connections"
            )),
        }
    }

    /// Whether [`Inner::order`] needs in-flight counts.
    pub fn needs_load(self) -> bool {
        self == Inner::LeastConnections
    }

    /// Orders `subset` (ids). `weights` and `in_flight` are indexed by id
    /// (`in_flight` may be empty unless [`Inner::needs_load`]); `turn`
    /// advances per request; `r` is a random number.
    pub fn order(
        self,
        subset: &[u32],
        weights: &[u32],
        in_flight: &[u32],
        turn: usize,
        r: u64,
    ) -> Vec<u32> {
        match self {
            Inner::RoundRobin => rotate_from(subset, turn),
            Inner::Random => {
                let w: Vec<u32> = subset.iter().map(|&id| weights[id as usize]).collect();
                rotate_from(subset, weighted_index(&w, r))
            }
            Inner::LeastConnections => {
                let load: Vec<u32> = subset
                    .iter()
                    .map(|&id| in_flight.get(id as usize).copied().unwrap_or(0))
                    .collect();
                let w: Vec<u32> = subset.iter().map(|&id| weights[id as usize]).collect();
                order_by_load(&load, &w, turn)
                    .into_iter()
                    .map(|i| subset[i as usize])
                    .collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smooth_weighted_round_robin_matches_nginx_for_5_1_1() {
        let mut wrr = SmoothWeighted::new(&[5, 1, 1]);
        let picks: String = (0..7)
            .map(|_| (b'a' + wrr.pick().unwrap() as u8) as char)
            .collect();
        assert_eq!(picks, "aabacaa");
    }

    #[test]
    fn smooth_weighted_round_robin_gives_each_its_weight_per_cycle() {
        let weights = [3, 2, 7, 1];
        let mut wrr = SmoothWeighted::new(&weights);
        let mut counts = [0; 4];
        for _ in 0..13 * 10 {
            counts[wrr.pick().unwrap()] += 1;
        }
        assert_eq!(counts, [30, 20, 70, 10]);
    }

    #[test]
    fn weighted_index_covers_each_index_in_proportion() {
        let weights = [1, 3];
        let counts = (0..4u64).fold([0; 2], |mut c, r| {
            c[weighted_index(&weights, r)] += 1;
            c
        });
        assert_eq!(counts, [1, 3]);
    }

    #[test]
    fn order_by_load_puts_least_loaded_per_weight_first_and_rotates_ties() {
        // in-flight 4,1,1 with weights 1,1,1: 1 and 2 tie, the turn decides.
        assert_eq!(order_by_load(&[4, 1, 1], &[1, 1, 1], 0), vec![1, 2, 0]);
        assert_eq!(order_by_load(&[4, 1, 1], &[1, 1, 1], 2), vec![2, 1, 0]);
        // weight 4 with 3 in flight (0.75) beats weight 1 with 1 (1.0).
        assert_eq!(order_by_load(&[3, 1], &[4, 1], 0), vec![0, 1]);
    }

    #[test]
    fn power_of_two_choices_takes_the_cheaper_draw_and_lists_everyone() {
        let mut draws = [3u64, 1].into_iter().cycle();
        let mut rng = || draws.next().unwrap();
        // Draws 3 and 1; 1 is cheaper.
        let order = power_of_choices(5, 2, &mut rng, |i| if i == 1 { 1.0 } else { 9.0 });
        assert_eq!(order, vec![1, 3, 2, 4, 0]);
    }

    #[test]
    fn inner_orders_stay_within_the_subset() {
        let weights = [1, 1, 1, 1];
        assert_eq!(
            Inner::RoundRobin.order(&[1, 3], &weights, &[], 1, 0),
            vec![3, 1]
        );
        assert_eq!(
            Inner::LeastConnections.order(&[0, 2, 3], &weights, &[0, 9, 5, 1], 0, 0),
            vec![0, 3, 2]
        );
        let mut random = Inner::Random.order(&[2, 3], &weights, &[], 0, 7);
        random.sort();
        assert_eq!(random, vec![2, 3]);
    }

    #[test]
    fn order_by_load_keeps_only_the_least_loaded_few_of_a_large_pool() {
        let load: Vec<u32> = (0..100).map(|i| if i % 10 == 3 { 0 } else { 5 }).collect();
        let order = order_by_load(&load, &[1; 100], 0);
        assert_eq!(order, vec![3, 13, 23, 33, 43, 53, 63, 73]);
        let sorted_fully = {
            let mut all: Vec<u32> = (0..100).collect();
            all.sort_by_key(|&i| load[i as usize]);
            all
        };
        assert_eq!(order[..], sorted_fully[..MAX_CANDIDATES]);
    }

    #[test]
    fn answers_are_capped_at_max_candidates() {
        let ids: Vec<u32> = (0..50).collect();
        assert_eq!(rotate_from(&ids, 48), vec![48, 49, 0, 1, 2, 3, 4, 5]);
        let mut rng = || 7;
        assert_eq!(
            power_of_choices(50, 1, &mut rng, |_| 0.0).len(),
            MAX_CANDIDATES
        );
    }

    #[test]
    fn draws_outside_1_to_16_are_refused_with_the_range() {
        assert_eq!(checked_draws(2), Ok(2));
        assert!(
            checked_draws(0)
                .unwrap_err()
                .contains("between 1 and 16, got 0")
        );
        assert!(checked_draws(17).is_err());
    }

    #[test]
    fn rotate_from_wraps_around() {
        assert_eq!(rotate_from(&[7, 8, 9], 1), vec![8, 9, 7]);
        assert_eq!(rotate_from(&[7, 8, 9], 4), vec![8, 9, 7]);
        assert!(rotate_from(&[], 3).is_empty());
    }
}
