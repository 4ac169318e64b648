//! Shutdown signals: the first SIGTERM or SIGINT asks for a graceful stop
//! (stop accepting, drain, exit), a second one for an immediate exit.

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::oneshot;

use crate::error::Error;

/// The two shutdown signals, as futures.
pub struct Signals {
    /// Completes on the first SIGTERM or SIGINT.
    pub first: oneshot::Receiver<()>,
    /// Completes on the second.
    pub second: oneshot::Receiver<()>,
}

impl Signals {
    /// Installs the handlers (on the current tokio runtime) and starts
    /// listening.
    pub fn install() -> Result<Signals, Error> {
        let mut term = signal(SignalKind::terminate()).map_err(Error::Signal)?;
        let mut int = signal(SignalKind::interrupt()).map_err(Error::Signal)?;
        let (first_tx, first) = oneshot::channel();
        let (second_tx, second) = oneshot::channel();
        tokio::spawn(async move {
            for tx in [first_tx, second_tx] {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
                let _ = tx.send(());
            }
        });
        Ok(Signals { first, second })
    }
}
