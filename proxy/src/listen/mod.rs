//! Listening and serving: one worker thread per core, each with its own
//! single-threaded event loop, accepting from a shared listening socket.
//!
//! Thread-per-core keeps the request path free of cross-thread work: a
//! worker's connections, upstream pool and plugin instances are its own.
//! Every task is tracked. Files: `socket` (the listening socket, the
//! open-file limit), `worker` (a worker's accept loop), `connection` (one
//! client connection with its timers), `signal` (SIGTERM/SIGINT).
//!
//! Shutdown, on the first signal: the listening socket is closed at once (new
//! connections are refused, not left hanging), idle client connections are
//! closed, busy ones are asked to finish (HTTP/1 after the current response,
//! HTTP/2 with GOAWAY), idle upstream connections are closed and nothing
//! more is pooled; the process exits as soon as the last request has
//! finished, or at `shutdown_grace_ms`. Plugin deadlines stay armed until the
//! last worker has stopped.
//!
//! Zero-downtime upgrade (`takeover`): with `server.upgrade_socket`, a new
//! process can take the listening sockets over; this one then stops
//! accepting and drains as above, except that keep-alive clients are let go
//! politely, and the sockets stay open for the new process throughout.

mod connection;
pub mod signal;
mod socket;
pub(crate) mod takeover;
pub mod tls;
mod worker;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::control::registry::Registry;
use crate::control::reload::{self, Command, Controller, Handle};
use crate::error::{ConfigError, Error};
use crate::metrics::Metrics;
use crate::plugin;
use crate::state::Shared;
use takeover::{Predecessor, Role, UpgradeSocket};
use worker::Worker;

/// A bound, ready-to-run proxy.
pub struct Server {
    listener: std::net::TcpListener,
    local_addr: SocketAddr,
    /// The HTTPS listener, if configured.
    https: Option<Https>,
    /// The admin listener, unless configured off.
    admin: Option<std::net::TcpListener>,
    config: Config,
    /// The resolved client connection cap.
    max_connections: u32,
    shared: Arc<Shared>,
    registry: Registry,
    commands: (
        tokio::sync::mpsc::UnboundedSender<Command>,
        tokio::sync::mpsc::UnboundedReceiver<Command>,
    ),
    watcher: Option<notify::RecommendedWatcher>,
    /// Where this process waits for its successor (`server.upgrade_socket`).
    upgrade: Option<UpgradeSocket>,
    /// The process this one took the listening sockets over from: told
    /// "ready" once every worker accepts.
    predecessor: Option<Predecessor>,
}

/// Why [`Server::run`] stops.
enum Stop {
    /// The shutdown future completed (SIGTERM, SIGINT).
    Signal,
    /// A new process (this pid) took the listening sockets over.
    HandedOver(u32),
    /// Taking over failed after binding: the old process serves on.
    TakeOverFailed(Error),
}

/// The bound HTTPS listener and what its handshakes need.
struct Https {
    listener: std::net::TcpListener,
    local_addr: SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
    certs: Arc<tls::CertStore>,
}

impl Server {
    /// Loads plugins, builds pools and binds the listener. Nothing is served
    /// until [`Server::run`].
    pub fn bind(config: Config) -> Result<Server, Error> {
        Server::bind_with(config, None)
    }

    /// [`Server::bind`], with the listening sockets of the Veer process
    /// waiting at `from` (its `server.upgrade_socket`) where this
    /// configuration has the same listeners. Once [`Server::run`] serves,
    /// that process stops accepting, drains and exits; if this fails first,
    /// it is told why and serves on.
    pub async fn take_over(config: Config, from: &std::path::Path) -> Result<Server, Error> {
        let mut predecessor = Predecessor::connect(from).await?;
        match Server::bind_with(config, Some(&mut predecessor)) {
            Ok(mut server) => {
                predecessor.close_unused();
                server.predecessor = Some(predecessor);
                Ok(server)
            }
            Err(e) => {
                predecessor.failed(&e.to_string()).await;
                Err(e)
            }
        }
    }

    fn bind_with(
        mut config: Config,
        mut predecessor: Option<&mut Predecessor>,
    ) -> Result<Server, Error> {
        // A listener: handed over by the predecessor, or bound here.
        let mut open = |role: Role, addr: SocketAddr, backlog: u32| {
            if let Some(predecessor) = predecessor.as_deref_mut()
                && let Some(listener) = predecessor.take(role, addr, backlog)?
            {
                return Ok(listener);
            }
            socket::bind(addr, backlog).map_err(|source| Error::Listen { addr, source })
        };
        // Discovered pools are looked up once before they are built.
        crate::control::discovery::fill(&mut config, &[])?;
        let metrics = Arc::new(Metrics::default());
        let runtime = plugin::Runtime::with_cache(
            config.plugins.cache_dir.clone(),
            config.plugins.cache_max_bytes,
        )?;
        let mut registry = Registry::new(runtime, &config.plugins)?;
        let state = registry.build_state(&config, &metrics, None)?;
        let listen = config.server.listen;
        let listen_error = |source| Error::Listen {
            addr: listen,
            source,
        };
        let listener = open(Role::Listen, listen, config.server.backlog)?;
        let local_addr = listener.local_addr().map_err(listen_error)?;
        let https = match &config.tls {
            None => None,
            Some(settings) => {
                let acme = match &settings.acme {
                    None => None,
                    Some(acme) => {
                        crate::control::acme::prepare_state_dir(&acme.state_dir)
                            .map_err(|reason| ConfigError::at("tls.acme.state_dir", reason))?;
                        Some((acme.cert_file(), acme.key_file(), acme.domains.clone()))
                    }
                };
                let certs = Arc::new(
                    tls::CertStore::load(&settings.certificates, acme)
                        .map_err(|reason| ConfigError::at("tls.certificates", reason))?,
                );
                let server_config = tls::server_config(settings, certs.clone())
                    .map_err(|reason| ConfigError::at("tls", reason))?;
                let tls_error = |source| Error::Listen {
                    addr: settings.listen,
                    source,
                };
                let listener = open(Role::Tls, settings.listen, config.server.backlog)?;
                let local_addr = listener.local_addr().map_err(tls_error)?;
                tracing::info!(addr = %local_addr, names = ?certs.names(), "HTTPS listener bound");
                Some(Https {
                    listener,
                    local_addr,
                    acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server_config)),
                    certs,
                })
            }
        };
        let fd_limit = socket::raise_fd_limit();
        let max_connections = match config.server.max_connections {
            0 => socket::auto_max_connections(fd_limit),
            n => n,
        };
        let shared = Arc::new(Shared {
            state: arc_swap::ArcSwap::from_pointee(state),
            metrics,
            https_port: https.as_ref().map(|h| h.local_addr.port()),
            acme: https
                .as_ref()
                .filter(|_| config.tls.as_ref().is_some_and(|t| t.acme.is_some()))
                .map(|h| h.certs.challenges.clone()),
            serving: std::sync::atomic::AtomicBool::new(false),
            handed_over: std::sync::atomic::AtomicBool::new(false),
        });
        let admin = match config.admin.listen {
            None => None,
            Some(addr) => Some(open(Role::Admin, addr, 128)?),
        };
        let upgrade = match &config.server.upgrade_socket {
            None => None,
            Some(path) => Some(UpgradeSocket::bind(
                path,
                predecessor.as_ref().map(|p| p.path()),
            )?),
        };
        let commands = tokio::sync::mpsc::unbounded_channel();
        // Watch from now on: a change made before `run` is queued, not lost.
        let watcher = reload::watch(&config, commands.0.clone());
        Ok(Server {
            listener,
            local_addr,
            https,
            admin,
            config,
            max_connections,
            shared,
            registry,
            commands,
            watcher,
            upgrade,
            predecessor: None,
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

    /// The address the HTTPS listener actually listens on, if there is one.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https.as_ref().map(|h| h.local_addr)
    }

    /// The address the admin listener actually listens on, if there is one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The server's counters.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.shared.metrics.clone()
    }

    /// The client connection cap in force (`server.max_connections`, or the
    /// one derived from the open-file limit).
    pub fn max_connections(&self) -> u32 {
        self.max_connections
    }

    /// Serves until `shutdown` completes, then drains (see the module docs).
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        let cancel = CancellationToken::new();
        let server = &self.config.server;
        let slots = Arc::new(Semaphore::new(self.max_connections as usize));
        let builder = Arc::new(connection::builder(server));
        let mut finished = Vec::with_capacity(server.workers);
        let listen_error = |source| Error::Listen {
            addr: self.local_addr,
            source,
        };
        // What a successor gets on a take-over: copies of the listening
        // sockets, dropped on shutdown as promptly as the workers' own.
        let handed = match &self.upgrade {
            None => Vec::new(),
            Some(_) => self.handed_sockets().map_err(listen_error)?,
        };
        let mut accepting = Vec::with_capacity(server.workers);
        for index in 0..server.workers {
            let listener = self.listener.try_clone().map_err(listen_error)?;
            let https = match &self.https {
                None => None,
                Some(h) => Some(worker::HttpsListener {
                    listener: h.listener.try_clone().map_err(listen_error)?,
                    acceptor: h.acceptor.clone(),
                    certs: h.certs.clone(),
                    handshake_timeout: self
                        .config
                        .tls
                        .as_ref()
                        .map_or(std::time::Duration::from_secs(10), |t| t.handshake_timeout),
                }),
            };
            let (done, finished_rx) = tokio::sync::oneshot::channel::<()>();
            let (accepting_tx, accepting_rx) = tokio::sync::oneshot::channel();
            accepting.push(accepting_rx);
            let worker = Worker {
                https,
                shared: self.shared.clone(),
                slots: slots.clone(),
                builder: builder.clone(),
                grace: server.shutdown_grace,
                accepting: Some(accepting_tx),
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
                .map_err(listen_error)?;
            finished.push(finished_rx);
        }
        // The workers hold the only descriptors of the listening socket now
        // (with the upgrade socket's task, which drops its copies on the
        // same signal): when they drop theirs on shutdown, it closes. After
        // a hand-over it stays open in the new process.
        drop(self.listener);
        let certs = self.https.as_ref().map(|h| h.certs.clone());
        drop(self.https);
        // Automatic certificates: one task, stopped with the rest.
        let acme = match (
            self.config.tls.as_ref().and_then(|t| t.acme.clone()),
            &certs,
        ) {
            (Some(settings), Some(certs)) => Some(tokio::spawn(crate::control::acme::run(
                settings,
                certs.clone(),
                self.shared.metrics.clone(),
                cancel.clone(),
            ))),
            _ => None,
        };
        // The admin listener: one task, stopped after the workers, so that
        // `/ready` says 503 while connections drain (after a hand-over at
        // once: the new process answers on the same socket).
        let admin_cancel = CancellationToken::new();
        let admin = self.admin.map(|listener| {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(url = %crate::control::admin::url(addr), "admin listener (metrics, API, dashboard)");
            }
            tokio::spawn(crate::control::admin::serve(
                listener,
                self.config.admin.clone(),
                self.shared.clone(),
                Handle {
                    tx: self.commands.0.clone(),
                },
                admin_cancel.clone(),
            ))
        });
        // Active health checks: one task, stopped with the rest.
        let health = tokio::spawn(crate::control::health::run(
            self.shared.clone(),
            cancel.clone(),
        ));
        tracing::info!(
            addr = %self.local_addr,
            workers = server.workers,
            max_connections = self.max_connections,
            "veer is serving"
        );
        let grace = server.shutdown_grace;
        let (commands, rx) = self.commands;
        // Plugin deadlines must keep firing until the last worker stops: hold
        // the engine's ticker until then.
        let plugin_runtime = self.registry.runtime().clone();
        let controller = Controller {
            certs,
            registry: self.registry,
            config: self.config.clone(),
            shared: self.shared.clone(),
            watcher: self.watcher,
            commands,
            discovery: None,
        };
        let control = tokio::spawn(controller.run(rx, cancel.clone()));
        let mut stop = None;
        if let Some(predecessor) = self.predecessor {
            match all_accepting(accepting).await {
                Ok(()) => predecessor.ready().await,
                Err(reason) => {
                    let error = Error::TakeOver {
                        path: predecessor.path().to_path_buf(),
                        reason,
                    };
                    predecessor.failed(&error.to_string()).await;
                    stop = Some(Stop::TakeOverFailed(error));
                }
            }
        }
        // This process's own upgrade socket, put in place once no take-over
        // of this process's start can fail any more.
        let (handed_over, handed_over_rx) = tokio::sync::oneshot::channel();
        let upgrade = match self.upgrade.filter(|_| stop.is_none()) {
            Some(mut socket) => match socket.install() {
                Ok(()) => Some(tokio::spawn(takeover::serve(
                    socket,
                    handed,
                    handed_over,
                    cancel.clone(),
                ))),
                Err(e) => {
                    tracing::error!("{e}; upgrades are off");
                    drop(handed);
                    None
                }
            },
            None => {
                drop(handed);
                None
            }
        };
        if stop.is_none() {
            self.shared
                .serving
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let stop = match stop {
            Some(stop) => stop,
            None => tokio::select! {
                () = shutdown => Stop::Signal,
                Ok(pid) = handed_over_rx => Stop::HandedOver(pid),
            },
        };
        self.shared
            .serving
            .store(false, std::sync::atomic::Ordering::Relaxed);
        match &stop {
            Stop::HandedOver(pid) => {
                tracing::info!(
                    pid,
                    "handed over to a new process: not accepting; draining connections for up to {:?}",
                    grace
                );
                // Seen by every connection once `cancel` wakes it.
                self.shared
                    .handed_over
                    .store(true, std::sync::atomic::Ordering::Release);
                admin_cancel.cancel();
            }
            _ => tracing::info!(
                "shutting down: not accepting; draining connections for up to {:?}",
                grace
            ),
        }
        cancel.cancel();
        if let Some(upgrade) = upgrade {
            let _ = upgrade.await;
        }
        let _ = control.await;
        if let Some(acme) = acme {
            let _ = acme.await;
        }
        let _ = health.await;
        for rx in finished {
            let _ = rx.await;
        }
        admin_cancel.cancel();
        if let Some(admin) = admin {
            let _ = admin.await;
        }
        drop(plugin_runtime);
        tracing::info!("stopped");
        match stop {
            Stop::TakeOverFailed(error) => Err(error),
            Stop::Signal | Stop::HandedOver(_) => Ok(()),
        }
    }

    /// Copies of the listening sockets, each with what a successor needs to
    /// know of it.
    fn handed_sockets(&self) -> std::io::Result<Vec<(takeover::Handed, std::os::fd::OwnedFd)>> {
        let mut handed = Vec::new();
        let mut add = |role, configured, listener: &std::net::TcpListener| {
            let copy = listener.try_clone()?;
            let handed_one = takeover::Handed {
                role,
                configured,
                bound: copy.local_addr()?,
            };
            handed.push((handed_one, std::os::fd::OwnedFd::from(copy)));
            Ok::<_, std::io::Error>(())
        };
        add(Role::Listen, self.config.server.listen, &self.listener)?;
        if let (Some(https), Some(tls)) = (&self.https, &self.config.tls) {
            add(Role::Tls, tls.listen, &https.listener)?;
        }
        if let (Some(admin), Some(configured)) = (&self.admin, self.config.admin.listen) {
            add(Role::Admin, configured, admin)?;
        }
        Ok(handed)
    }
}

/// Waits until every worker accepts (or one could not start).
async fn all_accepting(accepting: Vec<tokio::sync::oneshot::Receiver<()>>) -> Result<(), String> {
    for (index, accepting) in accepting.into_iter().enumerate() {
        if accepting.await.is_err() {
            return Err(format!("worker {index} could not start (see its log)"));
        }
    }
    Ok(())
}
