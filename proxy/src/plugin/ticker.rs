//! The epoch ticker: a thread that advances the engine's epoch every
//! [`EPOCH_TICK`], which is what makes plugin deadlines fire.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wasmtime::Engine;

/// How often the epoch ticks. Deadlines are whole ticks, so this is their
/// resolution; a 1 ms tick costs ~1000 wake-ups a second on one thread.
pub(super) const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Increments the engine's epoch every [`EPOCH_TICK`] on a thread of its own
/// until dropped (or until the engine is gone).
pub(super) struct Ticker {
    stop: Arc<AtomicBool>,
}

impl Ticker {
    /// Starts ticking `engine`. The thread holds only a weak reference, so it
    /// never keeps the engine alive.
    pub(super) fn start(engine: &Engine) -> std::io::Result<Ticker> {
        let stop = Arc::new(AtomicBool::new(false));
        let ticker_engine = engine.weak();
        let ticker_stop = stop.clone();
        std::thread::Builder::new()
            .name("veer-epoch".into())
            .spawn(move || {
                while !ticker_stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    match ticker_engine.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })?;
        Ok(Ticker { stop })
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
