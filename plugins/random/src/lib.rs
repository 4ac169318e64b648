//! `random`: each request goes to a random backend, chosen in proportion to
//! its weight (`weighted = false` ignores weights). The others follow as
//! fallbacks in ring order. Randomness comes from the host (seedable with
//! `plugins.random_seed`).
use serde::Deserialize;
use veer_sdk::{Backend, BackendId, Config, Request, Strategy, export_strategy};
use veer_strategy_kit::{rotate_from, weighted_index};

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

impl Random {
    /// The order for random number `r`.
    pub fn order(&self, r: u64) -> Vec<BackendId> {
        if self.ids.is_empty() {
            return Vec::new();
        }
        let first = if self.settings.weighted {
            weighted_index(&self.weights, r)
        } else {
            (r % self.ids.len() as u64) as usize
        };
        rotate_from(&self.ids, first)
    }
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

    fn set_backends(&mut self, backends: Vec<Backend>) {
        self.ids = backends.iter().map(|b| b.id).collect();
        self.weights = backends.iter().map(|b| b.weight).collect();
    }

    fn select(&mut self, _request: &Request) -> Vec<BackendId> {
        self.order(veer_sdk::random())
    }
}

export_strategy!(Random);
