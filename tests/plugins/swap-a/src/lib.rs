//! Hot-swap test plugin, variant A: names itself `swapped`, version `a`, and
//! sends every request to backend 0 (then 1). Variant B is the mirror image,
//! so which backend answers tells which generation served.
use veer_sdk::{Backend, Candidates, Config, Rejection, Request, Strategy, export_strategy};

/// Backend 0 first.
pub struct SwapA;

impl Strategy for SwapA {
    const NAME: &'static str = "swapped";
    const VERSION: &'static str = "a";

    fn new(_config: Config) -> Result<Self, String> {
        Ok(SwapA)
    }
    fn set_backends(&mut self, _backends: &[Backend]) {}
    fn select(&mut self, _request: &Request<'_>, out: &mut Candidates) -> Result<(), Rejection> {
        out.extend([0, 1]);
        Ok(())
    }
}

export_strategy!(SwapA);
