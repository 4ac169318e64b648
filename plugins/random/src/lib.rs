//! `random`: each request goes to a random backend, chosen in proportion to
//! its weight (`weighted = false` ignores weights). The others follow as
//! fallbacks in ring order. Randomness comes from the host (seedable with
//! `plugins.random_seed`).
use serde::Deserialize;
use veer_sdk::{
    Backend, BackendId, Candidates, Config, Rejection, Request, Strategy, export_strategy,
};
use veer_strategy_kit::{rotate_into, weighted_index};

/// `strategy_config` of `random`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Choose in proportion to weight (default true).
    pub weighted: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { weighted: true }
    }
}

/// Backends and their weights.
#[derive(Debug)]
pub struct Random {
    settings: Settings,
    ids: Vec<BackendId>,
    weights: Vec<u32>,
}

impl Strategy for Random {
    const NAME: &'static str = "random";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn new(config: Config) -> Result<Self, String> {
        Ok(Random {
            settings: config.parse()?,
            ids: Vec::new(),
            weights: Vec::new(),
        })
    }

    fn set_backends(&mut self, backends: &[Backend]) {
        self.ids = backends.iter().map(|b| b.id).collect();
        self.weights = backends.iter().map(|b| b.weight).collect();
    }

    fn select(&mut self, _request: &Request<'_>, out: &mut Candidates) -> Result<(), Rejection> {
        if self.ids.is_empty() {
            return Ok(());
        }
        let r = veer_sdk::random();
        let first = if self.settings.weighted {
            weighted_index(&self.weights, r)
        } else {
            (r % self.ids.len() as u64) as usize
        };
        rotate_into(&self.ids, first, out);
        Ok(())
    }
}

export_strategy!(Random);

#[cfg(test)]
mod tests {
    use super::*;
    use veer_sdk::testing::{FakeHost, request};

    /// How often each of three backends (weights 1, 1, `w`) goes first in
    /// 3,000 requests.
    fn firsts(config: &str, w: u32) -> [u32; 3] {
        let mut host = FakeHost::new().with_seed(42);
        let mut random = Random::new(Config::new(config)).unwrap();
        random.set_backends(&[
            Backend::new(0, "a:1"),
            Backend::new(1, "b:1"),
            Backend::new(2, "c:1").with_weight(w),
        ]);
        let mut counts = [0; 3];
        for _ in 0..3000 {
            let order = host.select(&mut random, &request()).unwrap();
            assert_eq!(order.len(), 3, "the others follow as fallbacks");
            counts[order[0] as usize] += 1;
        }
        counts
    }

    #[test]
    fn a_backend_of_weight_two_goes_first_about_twice_as_often() {
        let [a, b, c] = firsts("{}", 2);
        assert!(
            (600..900).contains(&a) && (600..900).contains(&b),
            "{a} {b}"
        );
        assert!((1300..1700).contains(&c), "{c}");
    }

    #[test]
    fn unweighted_draws_ignore_weights() {
        let counts = firsts(r#"{"weighted": false}"#, 5);
        assert!(
            counts.iter().all(|&n| (850..1150).contains(&n)),
            "{counts:?}"
        );
    }

    #[test]
    fn the_same_seed_gives_the_same_orders() {
        assert_eq!(firsts("{}", 2), firsts("{}", 2));
    }
}
