//! Test plugin for automatic rollback: names itself `swapped` like
//! `swap-a`, loads and initialises fine, then traps in every `select`.
use veer_sdk::{Backend, Candidates, Config, Rejection, Request, Strategy, export_strategy};

/// A version that passes every check at swap time and fails in service.
pub struct SwapFail;

impl Strategy for SwapFail {
    const NAME: &'static str = "swapped";
    const VERSION: &'static str = "fail";

    fn new(_config: Config) -> Result<Self, String> {
        Ok(SwapFail)
    }

    fn set_backends(&mut self, _backends: &[Backend]) {}

    fn select(&mut self, _request: &Request<'_>, _out: &mut Candidates) -> Result<(), Rejection> {
        panic!("swap-fail: trapping in select on purpose")
    }
}

export_strategy!(SwapFail);
