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
use super::tls::{CertStore, ClientIdentity, TlsInfo};
use crate::http::{ConnInfo, ConnSlot};
use crate::metrics::Metrics;
use crate::state::Shared;
use crate::stats::now_ms;
use crate::upstream;

/// How often a worker closes expired idle upstream connections.
const IDLE_SWEEP: Duration = Duration::from_secs(5);
/// Pause after a failed `accept` (e.g. out of file descriptors), so the loop
/// does not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// A worker's copy of the HTTPS listener.
pub(super) struct HttpsListener {
    pub(super) listener: std::net::TcpListener,
    pub(super) acceptor: tokio_rustls::TlsAcceptor,
    pub(super) certs: Arc<CertStore>,
    pub(super) handshake_timeout: Duration,
}

pub(super) struct Worker {
    /// The HTTPS listener, if any.
    pub(super) https: Option<HttpsListener>,
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
    /// Told once the listeners are registered with this worker's event
    /// loop (a take-over says "ready" only when every worker is); dropped
    /// unsent if they cannot be.
    pub(super) accepting: Option<tokio::sync::oneshot::Sender<()>>,
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
        mut self,
        listener: std::net::TcpListener,
        cancel: CancellationToken,
    ) -> std::io::Result<()> {
        let listener = TcpListener::from_std(listener)?;
        let https = match self.https.take() {
            Some(h) => {
                let tls = Arc::new(h.tls());
                Some((TcpListener::from_std(h.listener)?, tls))
            }
            None => None,
        };
        if let Some(accepting) = self.accepting.take() {
            let _ = accepting.send(());
        }
        // This worker's tasks: client connections and upstream connections.
        let tracker = TaskTracker::new();
        let mut sweep = tokio::time::interval(IDLE_SWEEP);
        loop {
            // Idle upstream connections are swept while waiting for a place
            // under the cap, too.
            let permit = tokio::select! {
                _ = cancel.cancelled() => break,
                _ = sweep.tick() => {
                    upstream::sweep_idle(false);
                    continue;
                }
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
                accepted = listener.accept() => accepted.map(|a| (a, None)),
                accepted = accept_https(&https) => accepted.map(|(a, tls)| (a, Some(tls))),
            };
            match accepted {
                Ok(((stream, peer), tls)) => {
                    let _ = stream.set_nodelay(true);
                    // An IPv4 client on a dual-stack socket arrives as
                    // ::ffff:a.b.c.d; it is a.b.c.d to everyone else.
                    let peer = std::net::SocketAddr::new(peer.ip().to_canonical(), peer.port());
                    let shared = self.shared.clone();
                    shared.metrics.connection_opened();
                    let slot = std::sync::Mutex::new(Some(ConnSlot {
                        _permit: permit,
                        metrics: shared.metrics.clone(),
                    }));
                    let context = connection::ConnContext {
                        shared: shared.clone(),
                        tracker: tracker.clone(),
                        builder: self.builder.clone(),
                        timers: Timers::of(&self.shared.state.load().server),
                        cancel: cancel.clone(),
                        accepted_ms: now_ms(),
                    };
                    tracker.spawn(async move {
                        match tls {
                            None => {
                                let conn = Arc::new(ConnInfo {
                                    peer,
                                    tls: None,
                                    slot,
                                    peer_text: std::sync::OnceLock::new(),
                                    peer_ip_value: std::sync::OnceLock::new(),
                                });
                                connection::serve(stream, conn, context).await;
                            }
                            Some(tls) => {
                                let handshake =
                                    tls.handshake(stream, &shared.metrics, &context.cancel);
                                if let Some((stream, info)) = handshake.await {
                                    let conn = Arc::new(ConnInfo {
                                        peer,
                                        tls: Some(info),
                                        slot,
                                        peer_text: std::sync::OnceLock::new(),
                                        peer_ip_value: std::sync::OnceLock::new(),
                                    });
                                    connection::serve(stream, conn, context).await;
                                }
                            }
                        }
                        // The slot is released with the connection (or
                        // later, by an upgrade tunnel that took it).
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
        drop(https);
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

/// What a worker needs to run TLS handshakes.
struct Tls {
    acceptor: tokio_rustls::TlsAcceptor,
    certs: Arc<CertStore>,
    handshake_timeout: Duration,
}

impl HttpsListener {
    fn tls(&self) -> Tls {
        Tls {
            acceptor: self.acceptor.clone(),
            certs: self.certs.clone(),
            handshake_timeout: self.handshake_timeout,
        }
    }
}

/// Accepts on the HTTPS listener; never completes when there is none.
async fn accept_https(
    https: &Option<(TcpListener, Arc<Tls>)>,
) -> std::io::Result<((tokio::net::TcpStream, std::net::SocketAddr), Arc<Tls>)> {
    match https {
        Some((listener, tls)) => listener.accept().await.map(|a| (a, tls.clone())),
        None => std::future::pending().await,
    }
}

impl Tls {
    /// The handshake, under its timer; garbage, a stall or a refused client
    /// certificate end the connection (counted) and affect no one else.
    async fn handshake(
        &self,
        stream: tokio::net::TcpStream,
        metrics: &Metrics,
        cancel: &CancellationToken,
    ) -> Option<(
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        TlsInfo,
    )> {
        let accept = tokio::time::timeout(self.handshake_timeout, self.acceptor.accept(stream));
        let stream = tokio::select! {
            _ = cancel.cancelled() => return None,
            accepted = accept => match accepted {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    Metrics::inc(&metrics.tls_handshake_failures);
                    tracing::debug!("TLS handshake failed: {e}");
                    return None;
                }
                Err(_) => {
                    Metrics::inc(&metrics.tls_handshake_timeouts);
                    return None;
                }
            },
        };
        Metrics::inc(&metrics.tls_handshakes);
        let session = stream.get_ref().1;
        if session.alpn_protocol() == Some(super::tls::ACME_TLS_ALPN) {
            // A CA checking a TLS-ALPN-01 challenge: the handshake was all.
            Metrics::inc(&metrics.acme_challenge_answers);
            return None;
        }
        let info = TlsInfo {
            sni: session.server_name().map(str::to_owned),
            client: session
                .peer_certificates()
                .and_then(|certs| certs.first())
                .and_then(ClientIdentity::of),
            certs: self.certs.clone(),
        };
        Some((stream, info))
    }
}
