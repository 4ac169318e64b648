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

//!
//! Files: [`pool`] (idle connections, per worker), [`body`] (the response
//! body that returns its connection when read to the end).

pub mod body;
mod pool;

use std::net::SocketAddr;
use std::task::Poll;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_util::task::TaskTracker;

use crate::stats::Metrics;
pub use body::UpstreamBody;
pub use pool::sweep_idle;
use pool::{Returner, Sender, checkout};

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
