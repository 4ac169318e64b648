//! `peak-ewma`: latency-aware power of two choices, as linkerd and Finagle
//! balance. The host keeps each backend's peak-EWMA latency (a slow response
//! raises it at once, it decays over ~10 s). Two backends are drawn; the one
//! with the lower cost `latency × (in-flight + 1) ÷ weight` goes first. A
//! backend with no sample yet costs `default_rtt_ms`, so new backends get
//! tried.
use serde::Deserialize;
use veer_sdk::{
    Backend, Candidates, Capabilities, Config, Rejection, Request, Strategy, export_strategy,
};
use veer_strategy_kit::{checked_draws, power_of_choices};

/// `strategy_config` of `peak-ewma`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Backends drawn per request, 1–16 (default 2).
    pub draws: u32,
    /// Latency assumed for a backend with no sample yet, ms (default 1).
    pub default_rtt_ms: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            draws: 2,
            default_rtt_ms: 1.0,
        }
    }
}

/// The cost the strategy minimises.
pub fn cost(peak_ewma_us: u64, in_flight: u32, weight: u32, default_rtt_us: f64) -> f64 {
    let latency = if peak_ewma_us == 0 {
        default_rtt_us
    } else {
        peak_ewma_us as f64
    };
    latency * (in_flight as f64 + 1.0) / weight.max(1) as f64
}

/// Weights and settings.
#[derive(Debug)]
pub struct PeakEwma {
    draws: usize,
    default_rtt_us: f64,
    weights: Vec<u32>,
}

impl Strategy for PeakEwma {
    const NAME: &'static str = "peak-ewma";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const CAPABILITIES: Capabilities = Capabilities::PEAK_LATENCY;

    fn new(config: Config) -> Result<Self, String> {
        let s: Settings = config.parse()?;
        if s.default_rtt_ms.is_nan() || s.default_rtt_ms <= 0.0 {
            return Err(format!(
                "\"default_rtt_ms\" must be positive, got {}",
                s.default_rtt_ms
            ));
        }
        Ok(PeakEwma {
            draws: checked_draws(s.draws)?,
            default_rtt_us: s.default_rtt_ms * 1000.0,
            weights: Vec::new(),
        })
    }

    fn set_backends(&mut self, backends: &[Backend]) {
        self.weights = backends.iter().map(|b| b.weight).collect();
    }

    fn select(&mut self, _request: &Request<'_>, out: &mut Candidates) -> Result<(), Rejection> {
        let (weights, rtt) = (&self.weights, self.default_rtt_us);
        out.extend(power_of_choices(
            weights.len(),
            self.draws,
            &mut veer_sdk::random,
            |i| {
                veer_sdk::backend_stats(i as u32).map_or(f64::MAX, |s| {
                    cost(s.latency_peak_ewma_us, s.in_flight, weights[i], rtt)
                })
            },
        ));
        Ok(())
    }
}

export_strategy!(PeakEwma);

#[cfg(test)]
mod tests {
    use super::*;
    use veer_sdk::BackendStats;
    use veer_sdk::testing::{FakeHost, backends, request};

    #[test]
    fn of_two_draws_the_backend_with_the_lower_latency_cost_goes_first() {
        let mut host = FakeHost::new().with_seed(3).with_stats(vec![
            BackendStats::new().with_latency_us(50_000),
            BackendStats::new().with_latency_us(500).with_in_flight(5),
        ]);
        let mut ewma = PeakEwma::new(Config::new("{}")).unwrap();
        ewma.set_backends(&backends(2));
        for _ in 0..10 {
            assert_eq!(host.select(&mut ewma, &request()), Ok(vec![1, 0]));
        }
    }

    #[test]
    fn a_slow_idle_backend_costs_more_than_a_fast_busy_one() {
        assert!(cost(50_000, 0, 1, 1000.0) > cost(500, 5, 1, 1000.0));
    }

    #[test]
    fn an_unsampled_backend_costs_the_default_rtt() {
        assert_eq!(cost(0, 0, 1, 1000.0), 1000.0);
        assert_eq!(cost(0, 1, 2, 1000.0), 1000.0);
    }
}
