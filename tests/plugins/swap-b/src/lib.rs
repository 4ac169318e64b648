//! Hot-swap test plugin, variant B: names itself `swapped`, version `b`, and
//! sends every request to backend 1 (then 0). Variant A is the mirror image,
//! so which backend answers tells which generation served.
use veer_sdk::{Backend, Candidates, Config, Rejection, Request, Strategy, export_strategy};

/// Backend 1 first.
pub struct SwapB;

impl Strategy for SwapB {
    const NAME: &'static str = "swapped";
    const VERSION: &'static str = "b";

    fn new(_config: Config) -> Result<Self, String> {
        Ok(SwapB)
    }
    fn set_backends(&mut self, _backends: &[Backend]) {}
    fn select(&mut self, _request: &Request<'_>, out: &mut Candidates) -> Result<(), Rejection> {
        out.extend([1, 0]);
        Ok(())
    }
}

export_strategy!(SwapB);
