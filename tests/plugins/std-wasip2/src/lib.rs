//! A plugin built for `wasm32-wasip2` that leans on the standard library:
//! a `HashMap` (seeded through `wasi:random/insecure-seed`), the environment
//! (`std::env::vars`), and `eprintln!` (`wasi:cli/stderr`). It counts
//! requests per path and sends the n-th request for a path to backend
//! n mod the pool's size. With `{"panic": true}` in its config, `select`
//! panics.
use std::collections::HashMap;

use veer_sdk::{
    Backend, BackendId, Candidates, Config, Rejection, Request, Strategy, export_strategy,
};

/// Requests seen per path.
pub struct Counting {
    seen: HashMap<String, u32>,
    ids: Vec<BackendId>,
    panic: bool,
}

impl Strategy for Counting {
    const NAME: &'static str = "std-counting";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn new(config: Config) -> Result<Self, String> {
        let variables = std::env::vars().count();
        eprintln!("std-counting: started with {variables} environment variables");
        Ok(Counting {
            seen: HashMap::new(),
            ids: Vec::new(),
            panic: config.as_json().replace(' ', "").contains("\"panic\":true"),
        })
    }

    fn set_backends(&mut self, backends: &[Backend]) {
        self.ids = backends.iter().map(|b| b.id).collect();
    }

    fn select(&mut self, request: &Request<'_>, out: &mut Candidates) -> Result<(), Rejection> {
        if self.panic {
            panic!("std-counting was told to panic");
        }
        let n = self.seen.entry(request.path()).or_insert(0);
        *n += 1;
        if let Some(&id) = self.ids.get(*n as usize % self.ids.len().max(1)) {
            out.push(id);
        }
        Ok(())
    }
}

export_strategy!(Counting);
