//! `weighted-round-robin`: NGINX's smooth weighted round robin. Over each
//! cycle of Σweight requests, a backend gets `weight` of them, spread as
//! evenly as possible: weights 5,1,1 give `a a b a c a a`. The others follow
//! the choice as fallbacks, in ring order. No configuration.
use veer_sdk::{
    Backend, BackendId, Candidates, Config, Rejection, Request, Strategy, export_strategy,
};
use veer_strategy_kit::{SmoothWeighted, rotate_into};

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

    fn set_backends(&mut self, backends: &[Backend]) {
        self.ids = backends.iter().map(|b| b.id).collect();
        self.cycle = SmoothWeighted::new(&backends.iter().map(|b| b.weight).collect::<Vec<_>>());
    }

    fn select(&mut self, _request: &Request<'_>, out: &mut Candidates) -> Result<(), Rejection> {
        if let Some(i) = self.cycle.pick() {
            rotate_into(&self.ids, i, out);
        }
        Ok(())
    }
}

export_strategy!(WeightedRoundRobin);

#[cfg(test)]
mod tests {
    use super::*;
    use veer_sdk::testing::{FakeHost, request};

    #[test]
    fn weights_five_one_one_give_a_a_b_a_c_a_a_with_the_others_as_fallbacks() {
        let mut host = FakeHost::new();
        let mut wrr = WeightedRoundRobin::new(Config::new("{}")).unwrap();
        wrr.set_backends(&[
            Backend::new(0, "10.0.0.1:80").with_weight(5),
            Backend::new(1, "10.0.0.2:80"),
            Backend::new(2, "10.0.0.3:80"),
        ]);
        let orders: Vec<Vec<u32>> = (0..7)
            .map(|_| host.select(&mut wrr, &request()).unwrap())
            .collect();
        let firsts: Vec<u32> = orders.iter().map(|o| o[0]).collect();
        assert_eq!(firsts, [0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(orders[2], [1, 2, 0], "the others follow in ring order");
    }
}
