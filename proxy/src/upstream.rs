//! Upstream HTTP/1.1 connections: a keep-alive pool per worker thread, and
//! sending a request so that, when nothing reached the backend, the request
//! comes back intact for the next candidate (safe to retry for any method,
//! body included, because not a byte of it was read).
//!
//! The pool is thread-local: a worker's connections are only used by that
//! worker's tasks (each worker runs a single-threaded event loop), so checkout
//! and return take no lock. A connection returns to the pool when the response
//! body has been read to its end ([`UpstreamBody`]); a response dropped early
//! closes its connection, as it must.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_util::task::TaskTracker;

use crate::stats::{InFlight, Metrics};

type Sender = http1::SendRequest<Incoming>;

struct IdleConn {
    sender: Sender,
    expires: Instant,
}

thread_local! {
    /// This worker's idle connections, by backend address.
    static IDLE: RefCell<HashMap<SocketAddr, Vec<IdleConn>>> = RefCell::new(HashMap::new());
}

/// How to reach one backend.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// The backend's address.
    pub addr: SocketAddr,
    /// Time to establish a connection.
    pub connect_timeout: Duration,
    /// Idle connections kept for this backend on this worker.
    pub max_idle: usize,
    /// How long an idle connection is kept.
    pub idle_timeout: Duration,
}

/// Why a send failed.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be made; nothing was sent and the request is handed
    /// back for another candidate.
    Connect {
        /// What went wrong.
        reason: String,
        /// The untouched request.
        request: Box<Request<Incoming>>,
    },
    /// The request was (at least partly) sent, then the exchange failed.
    Exchange(hyper::Error),
}

/// A response from a backend, and what to do with its connection afterwards.
pub struct Exchange {
    /// The backend's response (head read, body still streaming).
    pub response: Response<Incoming>,
    returner: Returner,
}

struct Returner {
    sender: Sender,
    target: Target,
}

/// Sends `request` to `target` on a pooled connection, or a new one.
pub async fn send(
    target: Target,
    mut request: Request<Incoming>,
    tracker: &TaskTracker,
    metrics: &Metrics,
) -> Result<Exchange, SendError> {
    // Pooled connections first. One closed by the backend while idle gives the
    // request back untouched; then the next one (or a new one) is tried.
    while let Some(mut sender) = checkout(target.addr) {
        // Poll readiness once: a pooled connection is ready unless it is still
        // busy (e.g. finishing an upload its backend answered early) or
        // closed. Either way, waiting could take long: skip it.
        let ready = std::future::poll_fn(|cx| Poll::Ready(sender.poll_ready(cx))).await;
        if !matches!(ready, Poll::Ready(Ok(()))) {
            continue;
        }
        match sender.try_send_request(request).await {
            Ok(response) => {
                return Ok(Exchange {
                    response,
                    returner: Returner { sender, target },
                });
            }
            Err(mut e) => match e.take_message() {
                Some(unsent) => request = unsent,
                None => return Err(SendError::Exchange(e.into_error())),
            },
        }
    }
    Metrics::inc(&metrics.upstream_connects);
    let mut sender = match connect(target, tracker).await {
        Ok(sender) => sender,
        Err(reason) => {
            return Err(SendError::Connect {
                reason,
                request: Box::new(request),
            });
        }
    };
    match sender.try_send_request(request).await {
        Ok(response) => Ok(Exchange {
            response,
            returner: Returner { sender, target },
        }),
        Err(mut e) => match e.take_message() {
            Some(unsent) => Err(SendError::Connect {
                reason: format!(
                    "connection closed before the request was sent: {}",
                    e.error()
                ),
                request: Box::new(unsent),
            }),
            None => Err(SendError::Exchange(e.into_error())),
        },
    }
}

async fn connect(target: Target, tracker: &TaskTracker) -> Result<Sender, String> {
    let stream =
        match tokio::time::timeout(target.connect_timeout, TcpStream::connect(target.addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(format!("connect to {}: {e}", target.addr)),
            Err(_) => {
                return Err(format!(
                    "connect to {}: timed out after {:?}",
                    target.addr, target.connect_timeout
                ));
            }
        };
    let _ = stream.set_nodelay(true);
    let (sender, connection) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake with {}: {e}", target.addr))?;
    // The connection task ends when its sender is dropped (pool eviction,
    // shutdown) or the backend closes it.
    tracker.spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("upstream connection ended: {e}");
        }
    });
    Ok(sender)
}

fn checkout(addr: SocketAddr) -> Option<Sender> {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let conns = idle.get_mut(&addr)?;
        let now = Instant::now();
        while let Some(conn) = conns.pop() {
            if conn.expires > now && !conn.sender.is_closed() {
                return Some(conn.sender);
            }
        }
        None
    })
}

fn give_back(returner: Returner) {
    let Returner { sender, target } = returner;
    if sender.is_closed() || target.max_idle == 0 {
        return;
    }
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let conns = idle.entry(target.addr).or_default();
        if conns.len() < target.max_idle {
            conns.push(IdleConn {
                sender,
                expires: Instant::now() + target.idle_timeout,
            });
        }
    });
}

/// Closes this worker's idle connections that have expired; all of them when
/// `all` (at shutdown).
pub fn sweep_idle(all: bool) {
    let now = Instant::now();
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        idle.retain(|_, conns| {
            conns.retain(|c| !all && c.expires > now && !c.sender.is_closed());
            !conns.is_empty()
        });
    });
}

/// A backend's response body, streamed through. Returns the connection to the
/// pool once read to the end, and keeps the backend's in-flight count until
/// then.
pub struct UpstreamBody {
    inner: Incoming,
    returner: Option<Returner>,
    done: bool,
    _in_flight: InFlight,
}

impl UpstreamBody {
    /// Wraps `exchange`'s body; returns the response head and the body.
    pub fn wrap(exchange: Exchange, in_flight: InFlight) -> Response<UpstreamBody> {
        let Exchange { response, returner } = exchange;
        response.map(|inner| UpstreamBody {
            inner,
            returner: Some(returner),
            done: false,
            _in_flight: in_flight,
        })
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        if let Some(returner) = self.returner.take()
            && (self.done || self.inner.is_end_stream())
        {
            give_back(returner);
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.done = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
