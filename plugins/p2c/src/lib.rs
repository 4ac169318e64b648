//! `p2c`: power of two random choices (HAProxy's `random(2)`, Envoy's
//! least-request). Draws `draws` distinct backends at random and sends to the
//! one with the fewest in-flight requests per weight; the other draws, then
//! every other backend, follow as fallbacks. Cheap at any pool size: only the
//! drawn backends' counts are read.
use serde::Deserialize;
use veer_sdk::{Backend, Candidates, Config, Rejection, Request, Strategy, export_strategy};
use veer_strategy_kit::{checked_draws, power_of_choices};

/// `strategy_config` of `p2c`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Backends drawn per request, 1–16 (default 2).
    pub draws: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { draws: 2 }
    }
}

/// Weights and settings.
#[derive(Debug)]
pub struct P2c {
    draws: usize,
    weights: Vec<u32>,
}

impl Strategy for P2c {
    const NAME: &'static str = "p2c";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn new(config: Config) -> Result<Self, String> {
        let settings: Settings = config.parse()?;
        Ok(P2c {
            draws: checked_draws(settings.draws)?,
            weights: Vec::new(),
        })
    }

    fn set_backends(&mut self, backends: &[Backend]) {
        self.weights = backends.iter().map(|b| b.weight).collect();
    }

    fn select(&mut self, _request: &Request<'_>, out: &mut Candidates) -> Result<(), Rejection> {
        let weights = &self.weights;
        out.extend(power_of_choices(
            weights.len(),
            self.draws,
            &mut veer_sdk::random,
            |i| {
                let in_flight = veer_sdk::backend_stats(i as u32).map_or(0, |s| s.in_flight);
                in_flight as f64 / weights[i].max(1) as f64
            },
        ));
        Ok(())
    }
}

export_strategy!(P2c);

#[cfg(test)]
mod tests {
    use super::*;
    use veer_sdk::BackendStats;
    use veer_sdk::testing::{FakeHost, backends, request};

    #[test]
    fn of_two_draws_the_less_loaded_goes_first_and_every_backend_follows() {
        // Backend 0 is always busy: it never goes first once drawn with
        // another, and with two draws over two backends it never can.
        let mut host = FakeHost::new().with_seed(7).with_stats(vec![
            BackendStats::new().with_in_flight(9),
            BackendStats::new(),
        ]);
        let mut p2c = P2c::new(Config::new("{}")).unwrap();
        p2c.set_backends(&backends(2));
        for _ in 0..20 {
            let order = host.select(&mut p2c, &request()).unwrap();
            assert_eq!(order, [1, 0]);
        }
    }

    #[test]
    fn draws_out_of_range_are_refused_with_a_reason() {
        let err = P2c::new(Config::new(r#"{"draws": 0}"#)).unwrap_err();
        assert!(err.contains("draws"), "{err}");
    }
}
