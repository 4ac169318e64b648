//! Consistent hashing: a key maps to a backend so that adding or removing one
//! backend moves only about 1/n of the keys.
//!
//! - [`Ketama`]: a sorted ring of points, `points_per_weight × weight` per
//!   backend (NGINX uses 160 per weight unit); a key goes to the first point
//!   at or after its hash. Lookup O(log points).
//! - [`Maglev`]: Google's lookup table (NSDI '16): each backend fills table
//!   slots in its own pseudo-random permutation order, taking turns (a weight-w
//!   backend takes w turns per round); a key goes to `table[hash % size]`.
//!   Lookup O(1), faster to build than a big ring, but moves somewhat more
//!   keys when the set changes.
//!
//! Both give fallbacks by walking on from the key's position and collecting
//! distinct backends.

use crate::hash;

/// The hash of point `i` of a backend whose name hashes to `base`: no
/// allocation per point (a ring of 256 backends has ~80k points).
fn mix(base: u64, i: u64) -> u64 {
    hash(&(base ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15)).to_le_bytes())
}

/// A Ketama ring.
#[derive(Debug, Clone, Default)]
pub struct Ketama {
    /// Point hashes, sorted.
    points: Vec<u64>,
    /// The backend id of each point.
    ids: Vec<u32>,
    backends: usize,
}

impl Ketama {
    /// Builds the ring. `backends` are (id, stable name, weight).
    pub fn new(backends: &[(u32, &str, u32)], points_per_weight: u32) -> Ketama {
        let mut points = Vec::with_capacity(
            backends
                .iter()
                .map(|b| (b.2 * points_per_weight) as usize)
                .sum(),
        );
        for &(id, name, weight) in backends {
            let base = hash(name.as_bytes());
            for point in 0..weight.max(1) * points_per_weight {
                points.push((mix(base, point as u64), id));
            }
        }
        points.sort_unstable();
        let (points, ids) = points.into_iter().unzip();
        Ketama {
            points,
            ids,
            backends: backends.len(),
        }
    }

    /// Distinct backends for `key_hash`, the owner first, then in ring order.
    pub fn walk(&self, key_hash: u64) -> Distinct<'_> {
        let start = if self.points.is_empty() {
            0
        } else {
            self.points.partition_point(|&p| p < key_hash) % self.points.len()
        };
        Distinct::new(&self.ids, start, self.backends)
    }

    /// The first `limit` of [`Ketama::walk`].
    pub fn lookup(&self, key_hash: u64, limit: usize) -> Vec<u32> {
        self.walk(key_hash).take(limit).collect()
    }
}

/// A Maglev lookup table.
#[derive(Debug, Clone, Default)]
pub struct Maglev {
    table: Vec<u32>,
    backends: usize,
}

impl Maglev {
    /// Builds the table. `size` should be a prime well above the number of
    /// backends × 100 (Envoy's default is 65537). `backends` are (id, stable
    /// name, weight).
    pub fn new(backends: &[(u32, &str, u32)], size: usize) -> Maglev {
        let m = size as u64;
        if backends.is_empty() || size == 0 {
            return Maglev::default();
        }
        let perms: Vec<(u64, u64)> = backends
            .iter()
            .map(|&(_, name, _)| {
                let offset = hash(format!("{name}/offset").as_bytes()) % m;
                let skip = hash(format!("{name}/skip").as_bytes()) % (m - 1) + 1;
                (offset, skip)
            })
            .collect();
        let mut next = vec![0u64; backends.len()];
        let mut table = vec![u32::MAX; size];
        let mut filled = 0;
        'fill: loop {
            for (i, &(id, _, weight)) in backends.iter().enumerate() {
                for _ in 0..weight.max(1) {
                    let (offset, skip) = perms[i];
                    let mut slot = ((offset + next[i] * skip) % m) as usize;
                    while table[slot] != u32::MAX {
                        next[i] += 1;
                        slot = ((offset + next[i] * skip) % m) as usize;
                    }
                    table[slot] = id;
                    next[i] += 1;
                    filled += 1;
                    if filled == size {
                        break 'fill;
                    }
                }
            }
        }
        Maglev {
            table,
            backends: backends.len(),
        }
    }

    /// Distinct backends for `key_hash`, the owner first, then in table order.
    pub fn walk(&self, key_hash: u64) -> Distinct<'_> {
        let start = if self.table.is_empty() {
            0
        } else {
            (key_hash % self.table.len() as u64) as usize
        };
        Distinct::new(&self.table, start, self.backends)
    }

    /// The first `limit` of [`Maglev::walk`].
    pub fn lookup(&self, key_hash: u64, limit: usize) -> Vec<u32> {
        self.walk(key_hash).take(limit).collect()
    }
}

/// Walks a ring or table from a start position, yielding each backend id the
/// first time it appears, until all `backends` have been seen or the ring is
/// done. Ids must be below `backends`.
pub struct Distinct<'a> {
    ring: &'a [u32],
    start: usize,
    step: usize,
    seen: Vec<u64>,
    left: usize,
}

impl<'a> Distinct<'a> {
    fn new(ring: &'a [u32], start: usize, backends: usize) -> Distinct<'a> {
        Distinct {
            ring,
            start,
            step: 0,
            seen: vec![0; backends.div_ceil(64)],
            left: backends,
        }
    }
}

impl Iterator for Distinct<'_> {
    type Item = u32;
    fn next(&mut self) -> Option<u32> {
        while self.left > 0 && self.step < self.ring.len() {
            let id = self.ring[(self.start + self.step) % self.ring.len()];
            self.step += 1;
            let (word, bit) = (id as usize / 64, 1u64 << (id % 64));
            if self.seen[word] & bit == 0 {
                self.seen[word] |= bit;
                self.left -= 1;
                return Some(id);
            }
        }
        None
    }
}

/// Bounded load (Mirrokni, Thorup, Zadimoghaddam, "Consistent Hashing with
/// Bounded Loads"): no backend takes more than `factor ×` its share of the
/// load. Walks `candidates` (distinct ids in hash order) and returns `want`
/// of them: those under their cap first, in hash order, then over-cap ones as
/// last-resort fallbacks. The cap of backend `i` is
/// `ceil(factor × (Σ in_flight + 1) × weight[i] / Σ weight)`.
pub fn bounded(
    candidates: impl Iterator<Item = u32>,
    in_flight: &[u32],
    weights: &[u32],
    factor: f64,
    want: usize,
) -> Vec<u32> {
    let total = in_flight.iter().map(|&x| x as u64).sum::<u64>() + 1;
    let weight_sum = weights.iter().map(|&w| w.max(1) as u64).sum::<u64>().max(1);
    let mut under = Vec::with_capacity(want);
    let mut over = Vec::new();
    for id in candidates {
        let w = weights.get(id as usize).copied().unwrap_or(1).max(1) as f64;
        let cap = (factor * total as f64 * w / weight_sum as f64).ceil();
        if (in_flight.get(id as usize).copied().unwrap_or(0) as f64) < cap {
            under.push(id);
            if under.len() >= want {
                break;
            }
        } else {
            over.push(id);
        }
    }
    under.extend(over);
    under.truncate(want);
    under
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: u32) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:80")).collect()
    }

    fn set(names: &[String]) -> Vec<(u32, &str, u32)> {
        names
            .iter()
            .enumerate()
            .map(|(i, n)| (i as u32, n.as_str(), 1))
            .collect()
    }

    /// Share of 10 000 keys whose owner changes when a 6th backend joins 5.
    /// `build` makes a lookup function for a backend set.
    fn moved_share<F: Fn(u64) -> u32>(build: impl Fn(&[(u32, &str, u32)]) -> F) -> f64 {
        let all = names(6);
        let (before, after) = (build(&set(&all[..5])), build(&set(&all)));
        let moved = (0..10_000u32)
            .filter(|k| {
                let h = hash(&k.to_le_bytes());
                before(h) != after(h)
            })
            .count();
        moved as f64 / 10_000.0
    }

    #[test]
    fn ketama_moves_about_one_sixth_of_keys_when_a_sixth_backend_joins() {
        let share = moved_share(|b| {
            let ring = Ketama::new(b, 160);
            move |h| ring.lookup(h, 1)[0]
        });
        assert!(share <= 1.0 / 6.0 + 0.05, "moved {share}");
        assert!(share > 0.10, "the new backend must get keys: {share}");
    }

    #[test]
    fn maglev_moves_about_one_sixth_of_keys_when_a_sixth_backend_joins() {
        let share = moved_share(|b| {
            let table = Maglev::new(b, 65537);
            move |h| table.lookup(h, 1)[0]
        });
        assert!(share <= 1.0 / 6.0 + 0.05, "moved {share}");
        assert!(share > 0.10, "{share}");
    }

    #[test]
    fn maglev_fills_the_table_in_proportion_to_weight() {
        let all = names(2);
        let table = Maglev::new(&[(0, &all[0], 1), (1, &all[1], 3)], 65537);
        let ones = table.table.iter().filter(|&&id| id == 1).count() as f64 / 65537.0;
        assert!((ones - 0.75).abs() < 0.01, "{ones}");
    }

    #[test]
    fn lookups_give_distinct_fallbacks_up_to_the_limit() {
        let all = names(4);
        for order in [
            Ketama::new(&set(&all), 160).lookup(42, 10),
            Maglev::new(&set(&all), 65537).lookup(42, 10),
        ] {
            let mut sorted = order.clone();
            sorted.sort();
            assert_eq!(sorted, vec![0, 1, 2, 3], "{order:?}");
        }
    }

    #[test]
    fn bounded_load_sends_a_full_backend_to_the_back() {
        // Total in flight 9 (+1), average 2.5 for 4 backends; factor 1.25 caps
        // each at ceil(3.125) = 4: backend 2 with 6 is over.
        let order = bounded(
            [2, 0, 1, 3].into_iter(),
            &[1, 1, 6, 1],
            &[1, 1, 1, 1],
            1.25,
            4,
        );
        assert_eq!(order, vec![0, 1, 3, 2]);
        let first_two = bounded(
            [2, 0, 1, 3].into_iter(),
            &[1, 1, 6, 1],
            &[1, 1, 1, 1],
            1.25,
            2,
        );
        assert_eq!(first_two, vec![0, 1], "stops walking once it has enough");
    }
}
