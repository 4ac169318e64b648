//! HTTP/2 to backends (`protocol = "h2c"` or `"h2"`): each worker keeps its
//! own connections to each backend and sends many requests on each, at most
//! `max_streams_per_connection` at a time; one more opens another
//! connection. A connection being opened is listed at once, so a burst of
//! requests waits for it (up to the cap) instead of each opening its own. A
//! stream's place is freed when its response is done or dropped
//! ([`StreamSlot`]). Connections without streams for `idle_timeout_ms` are
//! closed by the worker's sweep.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::uri::{Authority, Scheme};
use http::{Request, Uri, Version};
use hyper::client::conn::http2;
use hyper_util::rt::TokioIo;
use tokio_util::task::TaskTracker;

use super::pool::{Key, Lease};
use super::{Connection, Exchange, SendFailure, Target, UpstreamError, after_send, connect_stream};
use crate::config::Protocol;
use crate::http::body::RequestBody;
use crate::stats::Metrics;

type H2Sender = http2::SendRequest<RequestBody>;

/// A connection's handshake: `None` while it runs, then the sender or why
/// it failed.
type Opening = tokio::sync::watch::Receiver<Option<Result<H2Sender, String>>>;

struct H2Conn {
    opening: Opening,
    /// Streams in flight on it.
    streams: Arc<AtomicU32>,
    /// The backend's limit on concurrent streams (its SETTINGS), as last
    /// seen by the connection task.
    backend_limit: Arc<AtomicU32>,
    /// When it last had no stream, for the idle sweep.
    idle_since: Instant,
    idle_timeout: std::time::Duration,
}

/// Where a listed connection is.
enum Status {
    /// Its handshake is still running.
    Opening,
    /// Ready for streams.
    Open(H2Sender),
    /// Failed, abandoned or closed: to be forgotten.
    Dead,
}

impl H2Conn {
    fn status(&self) -> Status {
        match &*self.opening.borrow() {
            None if self.opening.has_changed().is_err() => Status::Dead,
            None => Status::Opening,
            Some(Ok(sender)) if !sender.is_closed() => Status::Open(sender.clone()),
            Some(_) => Status::Dead,
        }
    }
}

thread_local! {
    /// This worker's HTTP/2 connections, by backend (and TLS name).
    static CONNS: RefCell<HashMap<Key, Vec<H2Conn>>> = RefCell::new(HashMap::new());
}

/// One stream's place on a shared connection; freed on drop.
pub struct StreamSlot(Arc<AtomicU32>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// Runs hyper's HTTP/2 connection tasks as tracked tasks.
#[derive(Clone)]
pub struct Tracked(pub TaskTracker);

impl<F> hyper::rt::Executor<F> for Tracked
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        self.0.spawn(future);
    }
}

/// Sends `request` on a connection of this worker with a free stream, or a
/// new one.
pub(super) async fn send(
    target: Target<'_>,
    request: Request<RequestBody>,
    which: Connection,
    tracker: &TaskTracker,
    metrics: &Metrics,
) -> Result<Exchange, SendFailure> {
    let key = target.pool_key();
    let mut request = for_h2(request, target.protocol);
    if which == Connection::PooledOrNew {
        while let Some((opening, slot)) = checkout(key, target.max_streams) {
            let mut sender = match opened(opening).await {
                Ok(sender) => sender,
                // The connection this request waited for was not made.
                Err(reason) => {
                    return Err(SendFailure {
                        error: UpstreamError::Connect {
                            addr: target.addr,
                            reason: super::ConnectFailure::Io(std::io::Error::other(reason)),
                        },
                        unsent: Some(Box::new(from_h2(request))),
                    });
                }
            };
            match sender.try_send_request(request).await {
                Ok(response) => {
                    return Ok(Exchange {
                        response,
                        lease: Lease::H2(slot),
                    });
                }
                Err(mut e) => match e.take_message() {
                    // The connection went away before this stream opened:
                    // try another.
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
    }
    Metrics::inc(&metrics.upstream_connects);
    let (mut sender, slot) = match connect(target, tracker).await {
        Ok(fresh) => fresh,
        Err(reason) => {
            return Err(SendFailure {
                error: UpstreamError::Connect {
                    addr: target.addr,
                    reason,
                },
                unsent: Some(Box::new(from_h2(request))),
            });
        }
    };
    match sender.try_send_request(request).await {
        Ok(response) => Ok(Exchange {
            response,
            lease: Lease::H2(slot),
        }),
        Err(mut e) => match e.take_message() {
            Some(unsent) => Err(SendFailure {
                error: UpstreamError::ClosedBeforeSend {
                    addr: target.addr,
                    source: e.into_error(),
                },
                unsent: Some(Box::new(from_h2(unsent))),
            }),
            None => Err(SendFailure {
                error: after_send(target.addr, false, e.into_error()),
                unsent: None,
            }),
        },
    }
}

/// A connection to `key` (open, or being opened) with a free stream, its
/// place taken.
fn checkout(key: Key, max_streams: u32) -> Option<(Opening, StreamSlot)> {
    CONNS.with(|conns| {
        let mut conns = conns.borrow_mut();
        let list = conns.get_mut(&key)?;
        list.retain(|c| !matches!(c.status(), Status::Dead));
        // The backend's own limit (its SETTINGS) counts too: past it, hyper
        // would queue the stream on this connection instead of opening one.
        let conn = list.iter().find(|c| {
            let streams = c.streams.load(Relaxed);
            streams < max_streams
                && match c.status() {
                    Status::Opening => true,
                    Status::Open(sender) => {
                        sender.is_ready() && streams < c.backend_limit.load(Relaxed)
                    }
                    Status::Dead => false,
                }
        })?;
        conn.streams.fetch_add(1, Relaxed);
        Some((conn.opening.clone(), StreamSlot(conn.streams.clone())))
    })
}

/// The sender of a listed connection, once its handshake is done.
async fn opened(mut opening: Opening) -> Result<H2Sender, String> {
    let done = opening
        .wait_for(Option::is_some)
        .await
        .map_err(|_| "the connection being opened was abandoned".to_string())?;
    done.clone().expect("waited for Some")
}

/// Opens a connection, listed at once for this worker's later requests,
/// and takes one stream on it.
async fn connect(
    target: Target<'_>,
    tracker: &TaskTracker,
) -> Result<(H2Sender, StreamSlot), super::ConnectFailure> {
    let (done, opening) = tokio::sync::watch::channel(None);
    let streams = Arc::new(AtomicU32::new(1));
    let backend_limit = Arc::new(AtomicU32::new(u32::MAX));
    if !super::pool::draining() {
        CONNS.with(|conns| {
            conns
                .borrow_mut()
                .entry(target.pool_key())
                .or_default()
                .push(H2Conn {
                    opening,
                    streams: streams.clone(),
                    backend_limit: backend_limit.clone(),
                    idle_since: Instant::now(),
                    idle_timeout: target.idle_timeout,
                })
        });
    }
    match handshake(target, tracker, backend_limit).await {
        Ok(sender) => {
            done.send_replace(Some(Ok(sender.clone())));
            Ok((sender, StreamSlot(streams)))
        }
        Err(e) => {
            done.send_replace(Some(Err(format!("{e:?}"))));
            Err(e)
        }
    }
}

async fn handshake(
    target: Target<'_>,
    tracker: &TaskTracker,
    backend_limit: Arc<AtomicU32>,
) -> Result<H2Sender, super::ConnectFailure> {
    let stream = connect_stream(target).await?;
    let mut builder = http2::Builder::new(Tracked(tracker.clone()));
    builder
        .initial_max_send_streams(target.max_streams as usize)
        .max_concurrent_reset_streams(64);
    let (sender, connection) = builder
        .handshake(TokioIo::new(stream))
        .await
        .map_err(super::ConnectFailure::Handshake)?;
    tracker.spawn(async move {
        let mut connection = Box::pin(connection);
        let ended = std::future::poll_fn(|cx| {
            let polled = connection.as_mut().poll(cx);
            let limit = connection.current_max_send_streams();
            backend_limit.store(limit.min(u32::MAX as usize) as u32, Relaxed);
            polled
        })
        .await;
        if let Err(e) = ended {
            tracing::debug!("upstream HTTP/2 connection ended: {e}");
        }
    });
    Ok(sender)
}

/// Closes this worker's HTTP/2 connections that have had no stream for
/// their idle timeout (all of them that have none when `all`), and forgets
/// closed ones.
pub(super) fn sweep(all: bool) {
    let now = Instant::now();
    CONNS.with(|conns| {
        let mut conns = conns.borrow_mut();
        conns.retain(|_, list| {
            list.retain_mut(|c| {
                match c.status() {
                    Status::Dead => return false,
                    Status::Opening => return true,
                    Status::Open(_) => {}
                }
                if c.streams.load(Relaxed) != 0 {
                    c.idle_since = now;
                    return !all;
                }
                !all && now.duration_since(c.idle_since) < c.idle_timeout
            });
            !list.is_empty()
        });
    });
}

/// The request as HTTP/2 wants it: the scheme and authority in the URI
/// (`:scheme`, `:authority`), no `Host` header.
fn for_h2(mut request: Request<RequestBody>, protocol: Protocol) -> Request<RequestBody> {
    let scheme = if protocol == Protocol::H2 {
        Scheme::HTTPS
    } else {
        Scheme::HTTP
    };
    let authority = request
        .headers_mut()
        .remove(header::HOST)
        .and_then(|h| Authority::try_from(h.as_bytes()).ok());
    let mut parts = request.uri().clone().into_parts();
    parts.scheme = Some(scheme);
    parts.authority = authority.or_else(|| Some(Authority::from_static("localhost")));
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    if let Ok(uri) = Uri::from_parts(parts) {
        *request.uri_mut() = uri;
    }
    *request.version_mut() = Version::HTTP_2;
    request
}

/// A request given back unsent, as the next (possibly HTTP/1.1) pool
/// expects it: origin-form URI, `Host` again.
fn from_h2(mut request: Request<RequestBody>) -> Request<RequestBody> {
    if let Some(authority) = request.uri().authority()
        && let Ok(host) = HeaderValue::from_str(authority.as_str())
    {
        request.headers_mut().insert(header::HOST, host);
    }
    let origin = request
        .uri()
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .parse()
        .unwrap_or_else(|_| Uri::from_static("/"));
    *request.uri_mut() = origin;
    *request.version_mut() = Version::HTTP_11;
    request
}
