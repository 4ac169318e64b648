//! `round-robin`: each request goes to the next backend in turn; the others
//! follow as fallbacks, in ring order. Takes no configuration.
//!
//! Every worker thread has its own instance, so with N workers each keeps its
//! own turn, as NGINX workers do.
use veer_sdk::{Backend, BackendId, Config, Request, Strategy, export_strategy};

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

    fn set_backends(&mut self, backends: Vec<Backend>) {
        self.ring = backends.iter().map(|b| b.id).collect();
        self.next = 0;
    }

    fn select(&mut self, _request: &Request) -> Vec<BackendId> {
        let n = self.ring.len();
        if n == 0 {
            return Vec::new();
        }
        let start = self.next % n;
        self.next = start + 1;
        self.ring[start..]
            .iter()
            .chain(&self.ring[..start])
            .copied()
            .collect()
    }
}

export_strategy!(RoundRobin);
