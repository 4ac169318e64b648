//! `weighted-round-robin`: NGINX's smooth weighted round robin. Over each
//! cycle of Σweight requests, a backend gets `weight` of them, spread as
//! evenly as possible: weights 5,1,1 give `a a b a c a a`. The others follow
//! the choice as fallbacks, in ring order. No configuration.
use veer_sdk::{Backend, BackendId, Config, Request, Strategy, export_strategy};
use veer_strategy_kit::{SmoothWeighted, rotate_from};

/// The cycle's state.
#[derive(Debug, Default)]
pub struct WeightedRoundRobin {
    ids: Vec<BackendId>,
    cycle: SmoothWeighted,
}

impl Strategy for WeightedRoundRobin {
    const NAME: &'static str = "weighted-round-robin";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn new(config: Config) -> Result<Self, String> {
        config.expect_empty()?;
        Ok(Self::default())
    }

    fn set_backends(&mut self, backends: Vec<Backend>) {
        self.ids = backends.iter().map(|b| b.id).collect();
        self.cycle = SmoothWeighted::new(&backends.iter().map(|b| b.weight).collect::<Vec<_>>());
    }

    fn select(&mut self, _request: &Request) -> Vec<BackendId> {
        self.cycle
            .pick()
            .map_or_else(Vec::new, |i| rotate_from(&self.ids, i))
    }
}

export_strategy!(WeightedRoundRobin);
