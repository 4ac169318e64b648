//! One worker: a single-threaded event loop that accepts connections from the
//! shared listening socket (while the process is under `max_connections`),
//! serves them, and drains them on shutdown.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::connection::{self, Timers};
use crate::state::Shared;
use crate::upstream;

/// How often a worker closes expired idle upstream connections.
const IDLE_SWEEP: Duration = Duration::from_secs(5);
/// Pause after a failed `accept` (e.g. out of file descriptors), so the loop
/// does not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

pub(super) struct Worker {
    /// Routes, pools and counters.
    pub(super) shared: Arc<Shared>,
    /// One permit per client connection, shared by all workers: the process
    /// cap. A worker takes a permit before it accepts, so at the cap it stops
    /// accepting and new clients wait in the listen backlog.
    pub(super) slots: Arc<Semaphore>,
    /// HTTP server settings shared by every connection.
    pub(super) builder: Arc<auto::Builder<TokioExecutor>>,
    /// How long shutdown waits for connections to finish.
    pub(super) grace: Duration,
}

impl Worker {
    pub(super) fn run(
        self,
        listener: std::net::TcpListener,
        cancel: CancellationToken,
    ) -> std::io::Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(self.serve(listener, cancel))
    }

    async fn serve(
        self,
        listener: std::net::TcpListener,
        cancel: CancellationToken,
    ) -> std::io::Result<()> {
        let listener = TcpListener::from_std(listener)?;
        // This worker's tasks: client connections and upstream connections.
        let tracker = TaskTracker::new();
        let mut sweep = tokio::time::interval(IDLE_SWEEP);
        loop {
            let permit = tokio::select! {
                _ = cancel.cancelled() => break,
                permit = self.slots.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break, // closed: never, the semaphore is ours
                },
            };
            let accepted = tokio::select! {
                _ = cancel.cancelled() => break,
                _ = sweep.tick() => {
                    upstream::sweep_idle(false);
                    continue;
                }
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let timers = Timers::of(&self.shared.state.load().server);
                    let shared = self.shared.clone();
                    shared.metrics.connection_opened();
                    let serve = connection::serve(
                        stream,
                        peer,
                        shared.clone(),
                        tracker.clone(),
                        self.builder.clone(),
                        timers,
                        cancel.clone(),
                    );
                    tracker.spawn(async move {
                        serve.await;
                        shared.metrics.connection_closed();
                        drop(permit);
                    });
                }
                Err(e) => {
                    tracing::warn!("accept failed: {e}; pausing {ACCEPT_BACKOFF:?}");
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                    }
                }
            }
        }
        // Refuse new connections at once; close idle upstream connections
        // and pool nothing more, so that nothing but requests in flight keeps
        // the drain alive.
        drop(listener);
        upstream::drain();
        tracker.close();
        if tokio::time::timeout(self.grace, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "{} connections still open after the grace period; closing them",
                tracker.len()
            );
        }
        Ok(())
    }
}
