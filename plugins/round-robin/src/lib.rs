//! `round-robin`: each request goes to the next backend in turn; the next
//! ones follow as fallbacks, in ring order. Takes no configuration.
//!
//! Every worker thread has its own instance, so with N workers each keeps its
//! own turn, as NGINX workers do.
use veer_sdk::{
    Backend, BackendId, Candidates, Config, Rejection, Request, Strategy, export_strategy,
};

/// The first choice and up to 7 fallbacks: the host tries at most
/// `retries + 1` (3 by default), so a longer answer only costs a copy.
const MAX_CANDIDATES: usize = 8;

/// The ring of backend ids and whose turn it is.
#[derive(Debug, Default)]
pub struct RoundRobin {
    ring: Vec<BackendId>,
    next: usize,
}

impl Strategy for RoundRobin {
    const NAME: &'static str = "round-robin";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn new(config: Config) -> Result<Self, String> {
        config.expect_empty()?;
        Ok(Self::default())
    }

    fn set_backends(&mut self, backends: &[Backend]) {
        self.ring = backends.iter().map(|b| b.id).collect();
        self.next = 0;
    }

    fn select(&mut self, _request: &Request<'_>, out: &mut Candidates) -> Result<(), Rejection> {
        let n = self.ring.len();
        if n == 0 {
            return Ok(());
        }
        let start = self.next % n;
        self.next = start + 1;
        let ring = self.ring[start..].iter().chain(&self.ring[..start]);
        out.extend(ring.take(MAX_CANDIDATES).copied());
        Ok(())
    }
}

export_strategy!(RoundRobin);

#[cfg(test)]
mod tests {
    use super::*;
    use veer_sdk::testing::{FakeHost, backends, request};

    #[test]
    fn each_request_starts_one_further_round_the_ring_with_the_rest_as_fallbacks() {
        let mut host = FakeHost::new();
        let mut rr = RoundRobin::new(Config::new("{}")).unwrap();
        rr.set_backends(&backends(3));
        let orders: Vec<Vec<u32>> = (0..4)
            .map(|_| host.select(&mut rr, &request()).unwrap())
            .collect();
        assert_eq!(
            orders,
            vec![vec![0, 1, 2], vec![1, 2, 0], vec![2, 0, 1], vec![0, 1, 2]]
        );
    }

    #[test]
    fn a_new_backend_set_restarts_the_turn() {
        let mut host = FakeHost::new();
        let mut rr = RoundRobin::new(Config::new("{}")).unwrap();
        rr.set_backends(&backends(3));
        host.select(&mut rr, &request()).unwrap();
        rr.set_backends(&backends(2));
        assert_eq!(host.select(&mut rr, &request()), Ok(vec![0, 1]));
    }

    #[test]
    fn any_configuration_is_refused_with_a_reason() {
        let err = RoundRobin::new(Config::new(r#"{"weights":[1]}"#)).unwrap_err();
        assert!(err.contains("takes no configuration"), "{err}");
    }
}
