//! Listening and serving: one worker thread per core, each with its own
//! single-threaded event loop, accepting from a shared listening socket.
//! [`worker`] holds a worker's accept loop and connections.
//!
//! Thread-per-core keeps the request path free of cross-thread work: a
//! worker's connections, upstream pool and plugin instances are its own.
//! Every task is tracked; on shutdown each worker stops accepting, asks its
//! connections to finish (HTTP/1 after the current response, HTTP/2 with
//! GOAWAY), and waits for them up to the grace period.

mod worker;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::control::registry::Registry;
use crate::control::reload::{self, Command, Controller, Handle};
use crate::error::Error;
use crate::plugin;
use crate::state::Shared;
use crate::stats::Metrics;
use worker::Worker;

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
        let runtime = plugin::Runtime::new(config.plugins.cache_dir.clone())?;
        let mut registry = Registry::new(runtime, &config.plugins)?;
        let state = registry.build_state(&config, &metrics, None)?;
        let listener =
            std::net::TcpListener::bind(config.server.listen).map_err(|source| Error::Listen {
                addr: config.server.listen,
                source,
            })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| Error::Listen {
                addr: config.server.listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| Error::Listen {
            addr: config.server.listen,
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
        let mut finished = Vec::with_capacity(self.config.server.workers);
        for index in 0..self.config.server.workers {
            let listener = self.listener.try_clone().map_err(|source| Error::Listen {
                addr: self.local_addr,
                source,
            })?;
            let (done, finished_rx) = tokio::sync::oneshot::channel::<()>();
            let worker = Worker {
                shared: self.shared.clone(),
                tracker: TaskTracker::new(),
                header_read_timeout: self.config.server.header_read_timeout,
                grace: self.config.server.shutdown_grace,
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
        tracing::info!(addr = %self.local_addr, workers = self.config.server.workers, "veer is serving");
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
            self.config.server.shutdown_grace
        );
        cancel.cancel();
        let _ = control.await;
        for rx in finished {
            let _ = rx.await;
        }
        Ok(())
    }
}
