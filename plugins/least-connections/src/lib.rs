//! `least-connections`: the backend with the fewest in-flight requests per
//! unit of weight goes first (in-flight ÷ weight, compared exactly); ties are
//! broken in turn. In-flight counts are the host's, shared by all workers.
//! The full order follows as fallbacks. No configuration.
use veer_sdk::{Backend, BackendId, Config, Request, Strategy, export_strategy};
use veer_strategy_kit::order_by_load;

/// Weights and the tie-break turn.
#[derive(Debug, Default)]
pub struct LeastConnections {
    weights: Vec<u32>,
    turn: usize,
}

impl Strategy for LeastConnections {
    const NAME: &'static str = "least-connections";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn new(config: Config) -> Result<Self, String> {
        config.expect_empty()?;
        Ok(Self::default())
    }

    fn set_backends(&mut self, backends: Vec<Backend>) {
        self.weights = backends.iter().map(|b| b.weight).collect();
    }

    fn select(&mut self, _request: &Request) -> Vec<BackendId> {
        let in_flight: Vec<u32> = veer_sdk::all_in_flight();
        self.turn = self.turn.wrapping_add(1);
        order_by_load(&in_flight, &self.weights, self.turn)
    }
}

export_strategy!(LeastConnections);
