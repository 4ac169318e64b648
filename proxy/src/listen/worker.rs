//! One worker: a single-threaded event loop that accepts connections from the
//! shared listening socket and serves them, and drains them on shutdown.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::http;
use crate::state::Shared;
use crate::upstream;

/// How often a worker closes expired idle upstream connections.
const IDLE_SWEEP: Duration = Duration::from_secs(5);
/// Pause after a failed `accept` (e.g. out of file descriptors), so the loop
/// does not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

pub(super) struct Worker {
    pub(super) shared: Arc<Shared>,
    /// This worker's tasks: downstream connections and upstream connections.
    pub(super) tracker: TaskTracker,
    pub(super) header_read_timeout: Duration,
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
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_read_timeout);
        builder.http2().timer(TokioTimer::new());
        let builder = Arc::new(builder);
        let this = Arc::new(self);
        let mut sweep = tokio::time::interval(IDLE_SWEEP);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = sweep.tick() => upstream::sweep_idle(false),
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nodelay(true);
                        let conn_this = this.clone();
                        let builder = builder.clone();
                        let cancel = cancel.clone();
                        this.tracker.spawn(async move {
                            let service_this = conn_this.clone();
                            let service = service_fn(move |request| {
                                let this = service_this.clone();
                                async move {
                                    Ok::<_, Infallible>(http::handle(&this.shared, &this.tracker, request, peer, false).await)
                                }
                            });
                            let connection = builder.serve_connection(TokioIo::new(stream), service);
                            let mut connection = std::pin::pin!(connection);
                            let result = tokio::select! {
                                result = connection.as_mut() => result,
                                _ = cancel.cancelled() => {
                                    connection.as_mut().graceful_shutdown();
                                    connection.await
                                }
                            };
                            if let Err(e) = result {
                                tracing::debug!(%peer, "connection ended: {e}");
                            }
                        });
                    }
                    Err(e) => {
                        tracing::warn!("accept failed: {e}; pausing {ACCEPT_BACKOFF:?}");
                        tokio::select! {
                            _ = cancel.cancelled() => break,
                            _ = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                        }
                    }
                },
            }
        }
        drop(listener);
        upstream::sweep_idle(true);
        this.tracker.close();
        if tokio::time::timeout(this.grace, this.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "{} connections still open after the grace period; closing them",
                this.tracker.len()
            );
        }
        Ok(())
    }
}
