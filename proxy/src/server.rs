//! Listening and serving: one worker thread per core, each with its own
//! single-threaded event loop, accepting from a shared listening socket.
//!
//! Thread-per-core keeps the request path free of cross-thread work: a
//! worker's connections, upstream pool and plugin instances are its own.
//! Every task is tracked; on shutdown each worker stops accepting, asks its
//! connections to finish (HTTP/1 after the current response, HTTP/2 with
//! GOAWAY), and waits for them up to the grace period.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::error::Error;
use crate::proxy::{self, Shared};
use crate::registry::Registry;
use crate::reload::{self, Command, Controller, Handle};
use crate::stats::Metrics;
use crate::upstream;
use crate::wasm;

/// How often a worker closes expired idle upstream connections.
const IDLE_SWEEP: Duration = Duration::from_secs(5);
/// Pause after a failed `accept` (e.g. out of file descriptors), so the loop
/// does not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// A bound, ready-to-run proxy.
pub struct Server {
    listener: std::net::TcpListener,
    local_addr: SocketAddr,
    config: Config,
    shared: Arc<Shared>,
    registry: Registry,
    commands: (
        tokio::sync::mpsc::UnboundedSender<Command>,
        tokio::sync::mpsc::UnboundedReceiver<Command>,
    ),
    watcher: Option<notify::RecommendedWatcher>,
}

impl Server {
    /// Loads plugins, builds pools and binds the listener. Nothing is served
    /// until [`Server::run`].
    pub fn bind(config: Config) -> Result<Server, Error> {
        let metrics = Arc::new(Metrics::default());
        let runtime = wasm::Runtime::new(config.plugins.cache_dir.clone())?;
        let mut registry = Registry::new(runtime, &config.plugins)?;
        let state = registry.build_state(&config, &metrics, None)?;
        let listener =
            std::net::TcpListener::bind(config.listen).map_err(|source| Error::Listen {
                addr: config.listen,
                source,
            })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| Error::Listen {
                addr: config.listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| Error::Listen {
            addr: config.listen,
            source,
        })?;
        let shared = Arc::new(Shared {
            state: arc_swap::ArcSwap::from_pointee(state),
            metrics,
        });
        let commands = tokio::sync::mpsc::unbounded_channel();
        // Watch from now on: a change made before `run` is queued, not lost.
        let watcher = reload::watch(&config, commands.0.clone());
        Ok(Server {
            listener,
            local_addr,
            config,
            shared,
            registry,
            commands,
            watcher,
        })
    }

    /// A handle to ask the running server to reload its configuration.
    pub fn handle(&self) -> Handle {
        Handle {
            tx: self.commands.0.clone(),
        }
    }

    /// The address actually listened on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The server's counters.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.shared.metrics.clone()
    }

    /// Serves until `shutdown` completes, then drains.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        let cancel = CancellationToken::new();
        let mut finished = Vec::with_capacity(self.config.workers);
        for index in 0..self.config.workers {
            let listener = self.listener.try_clone().map_err(|source| Error::Listen {
                addr: self.local_addr,
                source,
            })?;
            let (done, finished_rx) = tokio::sync::oneshot::channel::<()>();
            let worker = Worker {
                shared: self.shared.clone(),
                tracker: TaskTracker::new(),
                header_read_timeout: self.config.header_read_timeout,
                grace: self.config.shutdown_grace,
            };
            let cancel = cancel.clone();
            std::thread::Builder::new()
                .name(format!("veer-worker-{index}"))
                .spawn(move || {
                    if let Err(e) = worker.run(listener, cancel) {
                        tracing::error!("worker {index} stopped: {e}");
                    }
                    let _ = done.send(());
                })
                .map_err(|source| Error::Listen {
                    addr: self.local_addr,
                    source,
                })?;
            finished.push(finished_rx);
        }
        tracing::info!(addr = %self.local_addr, workers = self.config.workers, "veer is serving");
        let (_, rx) = self.commands;
        let controller = Controller {
            registry: self.registry,
            config: self.config.clone(),
            shared: self.shared.clone(),
            watcher: self.watcher,
        };
        let control = tokio::spawn(controller.run(rx, cancel.clone()));
        shutdown.await;
        tracing::info!(
            "shutting down: draining connections for up to {:?}",
            self.config.shutdown_grace
        );
        cancel.cancel();
        let _ = control.await;
        for rx in finished {
            let _ = rx.await;
        }
        Ok(())
    }
}

struct Worker {
    shared: Arc<Shared>,
    /// This worker's tasks: downstream connections and upstream connections.
    tracker: TaskTracker,
    header_read_timeout: Duration,
    grace: Duration,
}

impl Worker {
    fn run(
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
                                    Ok::<_, Infallible>(proxy::handle(&this.shared, &this.tracker, request, peer, false).await)
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
