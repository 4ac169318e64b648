//! `least-connections`: the backend with the fewest in-flight requests per
//! unit of weight goes first (in-flight ÷ weight, compared exactly); ties are
//! broken in turn. In-flight counts are the host's, shared by all workers.
//! The full order follows as fallbacks. No configuration.
use veer_sdk::{Backend, Candidates, Config, Rejection, Request, Strategy, export_strategy};
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

    fn set_backends(&mut self, backends: &[Backend]) {
        self.weights = backends.iter().map(|b| b.weight).collect();
    }

    fn select(&mut self, _request: &Request<'_>, out: &mut Candidates) -> Result<(), Rejection> {
        let in_flight: Vec<u32> = veer_sdk::all_in_flight();
        self.turn = self.turn.wrapping_add(1);
        out.extend(order_by_load(&in_flight, &self.weights, self.turn));
        Ok(())
    }
}

export_strategy!(LeastConnections);

#[cfg(test)]
mod tests {
    use super::*;
    use veer_sdk::BackendStats;
    use veer_sdk::testing::{FakeHost, backends, request};

    #[test]
    fn the_backend_with_the_fewest_requests_in_flight_per_weight_goes_first() {
        let busy = |n| BackendStats::new().with_in_flight(n);
        let mut host = FakeHost::new().with_stats(vec![busy(4), busy(1), busy(3)]);
        let mut lc = LeastConnections::new(Config::new("{}")).unwrap();
        lc.set_backends(&backends(3));
        assert_eq!(host.select(&mut lc, &request()).unwrap()[..2], [1, 2]);
        // Weight 4 makes 4 in flight count as 1 each: a tie with backend 1,
        // broken in turn.
        lc.set_backends(&[
            Backend::new(0, "a:1").with_weight(8),
            Backend::new(1, "b:1"),
            Backend::new(2, "c:1"),
        ]);
        assert_eq!(host.select(&mut lc, &request()).unwrap()[0], 0);
    }
}
