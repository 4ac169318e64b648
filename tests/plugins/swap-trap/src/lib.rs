//! Refused hot swap: names itself `swapped` like the serving plugin, but
//! traps in `init`.
use veer_sdk::{Backend, BackendId, Config, Request, Strategy, export_strategy};

/// Never built: `new` panics (a trap, with `panic = "abort"`).
pub struct SwapTrap;

impl Strategy for SwapTrap {
    const NAME: &'static str = "swapped";
    const VERSION: &'static str = "trap";

    fn new(_config: Config) -> Result<Self, String> {
        panic!("swap-trap: trapping in init on purpose")
    }
    fn set_backends(&mut self, _backends: Vec<Backend>) {}
    fn select(&mut self, _request: &Request) -> Vec<BackendId> {
        vec![0]
    }
}

export_strategy!(SwapTrap);
