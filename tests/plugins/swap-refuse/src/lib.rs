//! Refused hot swap: names itself `swapped` like the serving plugin, but
//! refuses every configuration in `init`.
use veer_sdk::{Backend, Candidates, Config, Rejection, Request, Strategy, export_strategy};

/// Never built: `new` refuses.
pub struct SwapRefuse;

impl Strategy for SwapRefuse {
    const NAME: &'static str = "swapped";
    const VERSION: &'static str = "refuse";

    fn new(_config: Config) -> Result<Self, String> {
        Err("swap-refuse refuses every configuration on purpose".into())
    }
    fn set_backends(&mut self, _backends: &[Backend]) {}
    fn select(&mut self, _request: &Request<'_>, out: &mut Candidates) -> Result<(), Rejection> {
        out.extend([0]);
        Ok(())
    }
}

export_strategy!(SwapRefuse);
