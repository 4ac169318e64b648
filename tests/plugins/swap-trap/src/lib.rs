//! Refused hot swap: names itself `swapped` like the serving plugin, but
//! traps in `init`.
use veer_sdk::{Backend, Candidates, Config, Rejection, Request, Strategy, export_strategy};

/// Never built: `new` panics (a trap, with `panic = "abort"`).
pub struct SwapTrap;

impl Strategy for SwapTrap {
    const NAME: &'static str = "swapped";
    const VERSION: &'static str = "trap";

    fn new(_config: Config) -> Result<Self, String> {
        panic!("swap-trap: trapping in init on purpose")
    }
    fn set_backends(&mut self, _backends: &[Backend]) {}
    fn select(&mut self, _request: &Request<'_>, out: &mut Candidates) -> Result<(), Rejection> {
        out.extend([0]);
        Ok(())
    }
}

export_strategy!(SwapTrap);
