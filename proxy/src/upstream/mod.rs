//! Upstream connections: HTTP/1.1 with a keep-alive pool per worker thread,
//! or HTTP/2 (`h2c`, or `h2` over TLS) with a per-worker pool of shared
//! connections; and sending a request so that, when nothing reached the
//! backend, the request comes back intact for the next candidate (safe to
//! retry for any method, body included, because not a byte of it was read).
//!
//! HTTP/1.1 requests without a body or an upgrade are exchanged inline by
//! the request's own task (`h1`); the others go through hyper's client.
//! An HTTP/1.1 connection returns to the pool when the response body has
//! been read to its end ([`UpstreamBody`]); a response dropped early closes
//! its connection, as it must. An HTTP/2 stream frees its place on its
//! connection when its response is done or dropped.
//!
//! Files: `h1` (the inline HTTP/1.1 exchange), `pool` (idle HTTP/1.1
//! connections, per worker), `h2` (HTTP/2
//! connections, per worker, with a cap on streams each), `body` (the
//! response body that returns its connection when read to the end, with a
//! read timer), `error` (what failed, and whether a retry is safe), `tls`
//! (the client side of HTTPS to backends).

mod body;
mod error;
mod h1;
mod h2;
mod pool;
mod tls;

use std::net::SocketAddr;
use std::task::Poll;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_util::either::Either;
use tokio_util::task::TaskTracker;

use crate::config::Protocol;
use crate::http::body::RequestBody;
use crate::metrics::Metrics;
pub use body::UpstreamBody;
pub use error::{ConnectFailure, RetrySafety, UpstreamError};
pub use h1::InlineBody;
pub use h2::Tracked;
use pool::{Lease, Returner, Sender, checkout};
pub use pool::{drain, sweep_idle};
pub use tls::TlsClient;

/// How to reach one backend.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// The backend's address.
    pub addr: SocketAddr,
    /// HTTPS: the pool's TLS client and the backend's id in it.
    pub tls: Option<(&'a TlsClient, usize)>,
    /// Time to establish a connection.
    pub connect_timeout: Duration,
    /// Idle connections kept for this backend on this worker.
    pub max_idle: usize,
    /// How long an idle connection is kept.
    pub idle_timeout: Duration,
    /// How the backend is spoken to.
    pub protocol: Protocol,
    /// HTTP/2: the most streams in flight on one connection.
    pub max_streams: u32,
}

/// A failed send: what happened, and the request when nothing of it was
/// sent (so it can go to the next candidate).
pub struct SendFailure {
    /// What happened.
    pub error: UpstreamError,
    /// The request, untouched, when nothing was sent.
    pub unsent: Option<Box<Request<RequestBody>>>,
}

/// A response from a backend (head read, body still streaming).
pub struct Exchange {
    /// The backend's response; its body says what becomes of the
    /// connection afterwards.
    pub response: Response<Received>,
}

/// A response body as it comes from the backend's connection.
pub enum Received {
    /// Through hyper's client (HTTP/2, or HTTP/1.1 with a request body or an
    /// upgrade).
    Hyper(ThroughHyper),
    /// Read inline off an HTTP/1.1 connection (the body holds its
    /// connection and returns it itself).
    Inline(InlineBody),
}

/// A body from hyper's client, and what it holds of its connection until
/// it is done.
pub struct ThroughHyper {
    body: Incoming,
    lease: Lease,
}

impl Exchange {
    /// The response of a backend that switched protocols: its connection
    /// is no longer HTTP and never returns to the pool. `None` when the
    /// request asked for no upgrade (it went the inline way).
    pub fn into_upgrade(self) -> Option<Response<Incoming>> {
        let (head, body) = self.response.into_parts();
        match body {
            Received::Hyper(hyper) => Some(Response::from_parts(head, hyper.body)),
            Received::Inline(_) => None,
        }
    }
}

/// A response from hyper's client, as an exchange.
fn through_hyper(response: Response<Incoming>, lease: Lease) -> Exchange {
    Exchange {
        response: response.map(|body| Received::Hyper(ThroughHyper { body, lease })),
    }
}

/// Which connections a send may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connection {
    /// A pooled one if there is one, else a new one.
    PooledOrNew,
    /// Only a new one (after a pooled one closed without a response).
    New,
}

/// Whether a request to a pool spoken to with `protocol` is exchanged
/// inline (HTTP/1.1, no body, no upgrade): then [`send`] keeps its head in
/// `sent` for the caller, and no copy of it need be made beforehand.
pub fn hands_head_back(
    protocol: crate::config::Protocol,
    method: &http::Method,
    headers: &http::HeaderMap,
    body: &RequestBody,
) -> bool {
    !protocol.is_h2() && h1::takes(method, headers, body)
}

/// Sends `request` to `target` on a pooled connection, or a new one. A
/// request exchanged inline (see [`hands_head_back`]) leaves its head in
/// `sent` unless it comes back whole as unsent.
pub async fn send(
    target: Target<'_>,
    request: Request<RequestBody>,
    which: Connection,
    tracker: &TaskTracker,
    metrics: &Metrics,
    sent: &mut Option<http::request::Parts>,
) -> Result<Exchange, SendFailure> {
    if target.protocol.is_h2() {
        return h2::send(target, request, which, tracker, metrics).await;
    }
    if h1::takes(request.method(), request.headers(), request.body()) {
        return h1::send(target, request, which, metrics, sent).await;
    }
    // Boxed: hyper's path (its connect and handshake inside) is a future of
    // some 3 KiB, which would otherwise size every send's, the inline ones
    // too, and be copied with it on each move. A request with a body makes
    // allocations of its own anyway.
    Box::pin(through_hyper_h1(target, request, which, tracker, metrics)).await
}

/// Sends a request with a body or an upgrade through hyper's HTTP/1.1
/// client, on a pooled connection of its own or a new one.
async fn through_hyper_h1(
    target: Target<'_>,
    mut request: Request<RequestBody>,
    which: Connection,
    tracker: &TaskTracker,
    metrics: &Metrics,
) -> Result<Exchange, SendFailure> {
    // Pooled connections first. One closed by the backend while idle gives the
    // request back untouched; then the next one (or a new one) is tried.
    let pooled = || match which {
        Connection::PooledOrNew => checkout(target.pool_key()),
        Connection::New => None,
    };
    while let Some(mut sender) = pooled() {
        // Poll readiness once: a pooled connection is ready unless it is still
        // busy (e.g. finishing an upload its backend answered early) or
        // closed. Either way, waiting could take long: skip it.
        let ready = std::future::poll_fn(|cx| Poll::Ready(sender.poll_ready(cx))).await;
        if !matches!(ready, Poll::Ready(Ok(()))) {
            continue;
        }
        match sender.try_send_request(request).await {
            Ok(response) => {
                let lease = Lease::H1(Returner {
                    sender,
                    slot: target.slot(),
                });
                return Ok(through_hyper(response, lease));
            }
            Err(mut e) => match e.take_message() {
                Some(unsent) => request = unsent,
                None => {
                    return Err(SendFailure {
                        error: after_send(target.addr, true, e.into_error()),
                        unsent: None,
                    });
                }
            },
        }
    }
    Metrics::inc(&metrics.upstream_connects);
    let mut sender = match connect(target, tracker).await {
        Ok(sender) => sender,
        Err(reason) => {
            return Err(SendFailure {
                error: UpstreamError::Connect {
                    addr: target.addr,
                    reason,
                },
                unsent: Some(Box::new(request)),
            });
        }
    };
    match sender.try_send_request(request).await {
        Ok(response) => {
            let lease = Lease::H1(Returner {
                sender,
                slot: target.slot(),
            });
            Ok(through_hyper(response, lease))
        }
        Err(mut e) => match e.take_message() {
            Some(unsent) => Err(SendFailure {
                error: UpstreamError::ClosedBeforeSend {
                    addr: target.addr,
                    source: e.into_error().into(),
                },
                unsent: Some(Box::new(unsent)),
            }),
            None => Err(SendFailure {
                error: after_send(target.addr, false, e.into_error()),
                unsent: None,
            }),
        },
    }
}

/// Classifies a failure after the request went out.
fn after_send(addr: SocketAddr, reused: bool, source: hyper::Error) -> UpstreamError {
    if source.is_parse() || source.is_parse_status() {
        UpstreamError::InvalidResponse {
            addr,
            source: source.into(),
        }
    } else {
        UpstreamError::SentNoResponse {
            addr,
            reused,
            source: source.into(),
        }
    }
}

impl Target<'_> {
    /// What keeps this backend's idle connections apart from others': its
    /// address, and for HTTPS the name it is verified under.
    fn pool_key(&self) -> (SocketAddr, u64) {
        (
            self.addr,
            self.tls.map_or(0, |(client, id)| client.name(id).1),
        )
    }

    /// What opening a connection to this backend needs, owned.
    pub fn dial(&self) -> Dial {
        Dial {
            addr: self.addr,
            tls: self
                .tls
                .map(|(client, id)| (client.connector.clone(), client.name(id).0.clone())),
            connect_timeout: self.connect_timeout,
            protocol: self.protocol,
        }
    }

    fn slot(&self) -> pool::Slot {
        pool::Slot {
            key: self.pool_key(),
            max_idle: self.max_idle,
            idle_timeout: self.idle_timeout,
        }
    }
}

/// A connection to a backend: TCP, or TLS over TCP.
pub type Stream = Either<TcpStream, Box<tokio_rustls::client::TlsStream<TcpStream>>>;

/// What opening a connection to a backend needs, owned, so a connection can
/// be opened by a task of its own.
#[derive(Clone)]
pub struct Dial {
    /// The backend's address.
    pub addr: SocketAddr,
    /// HTTPS: the pool's connector and the name to verify.
    pub tls: Option<(
        tokio_rustls::TlsConnector,
        rustls_pki_types::ServerName<'static>,
    )>,
    /// Time to establish the connection (TCP and TLS).
    pub connect_timeout: Duration,
    /// How the backend will be spoken to (`h2` needs ALPN `h2`).
    pub protocol: Protocol,
}

/// Connects: TCP, then TLS for an HTTPS backend, both within
/// `connect_timeout`. For an `h2` pool the backend must agree to HTTP/2 in
/// ALPN.
pub async fn connect_stream(dial: Dial) -> Result<Stream, ConnectFailure> {
    let Dial {
        addr,
        tls,
        connect_timeout,
        protocol,
    } = dial;
    let connecting = async {
        let stream = TcpStream::connect(addr).await.map_err(ConnectFailure::Io)?;
        let _ = stream.set_nodelay(true);
        match tls {
            None => Ok(Either::Left(stream)),
            Some((connector, name)) => {
                let stream = connector
                    .connect(name, stream)
                    .await
                    .map_err(|e| ConnectFailure::Tls(with_alpn_hint(e, protocol)))?;
                if protocol == Protocol::H2 && stream.get_ref().1.alpn_protocol() != Some(b"h2") {
                    return Err(ConnectFailure::Tls(std::io::Error::other(
                        "the backend did not agree to HTTP/2 (ALPN h2); set the pool's protocol to \"http1\"",
                    )));
                }
                Ok(Either::Right(Box::new(stream)))
            }
        }
    };
    tokio::time::timeout(connect_timeout, connecting)
        .await
        .map_err(|_| ConnectFailure::TimedOut(connect_timeout))?
}

/// A handshake a backend refused for want of a common application protocol
/// (RFC 7301's `no_application_protocol` alert) says what to change.
fn with_alpn_hint(e: std::io::Error, protocol: Protocol) -> std::io::Error {
    if protocol == Protocol::H2 && e.to_string().contains("NoApplicationProtocol") {
        return std::io::Error::other(format!(
            "{e}: the backend does not speak HTTP/2 (ALPN h2); set the pool's protocol to \"http1\""
        ));
    }
    e
}

/// Connects (see [`connect_stream`]) and starts an HTTP/1.1 connection.
async fn connect(target: Target<'_>, tracker: &TaskTracker) -> Result<Sender, ConnectFailure> {
    let stream = connect_stream(target.dial()).await?;
    let (sender, connection) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(ConnectFailure::Handshake)?;
    // The connection task ends when its sender is dropped (pool eviction,
    // shutdown) or the backend closes it.
    tracker.spawn(async move {
        // With upgrades: a 101 hands the connection to the response's
        // `OnUpgrade` instead of closing it.
        if let Err(e) = connection.with_upgrades().await {
            tracing::debug!("upstream connection ended: {e}");
        }
    });
    Ok(sender)
}
