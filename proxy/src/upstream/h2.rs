//! HTTP/2 to backends (`protocol = "h2c"` or `"h2"`): each worker keeps its
//! own connections to each backend and sends many requests on each, at most
//! `max_streams_per_connection` at a time (and never more than the backend's
//! own limit); one more opens another connection.
//!
//! A connection is opened by a task of its own and listed at once, so a
//! burst of requests waits for it (up to the cap) instead of each opening
//! its own, and a request that gives up while it opens does not fail the
//! others. Only the request that opened it holds a failed open against the
//! backend. A stream's place is freed when its response is done or dropped
//! ([`StreamSlot`]). Connections without a stream for `idle_timeout_ms` are
//! closed by the worker's sweep; idle or not, a connection whose backend
//! stops answering PINGs is closed.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::uri::{Authority, Scheme};
use http::{Request, Uri, Version};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{oneshot, watch};
use tokio_util::task::TaskTracker;

use super::pool::{Key, Lease};
use super::{
    ConnectFailure, Connection, Dial, Exchange, SendFailure, Target, UpstreamError, after_send,
    connect_stream,
};
use crate::config::Protocol;
use crate::http::body::RequestBody;
use crate::metrics::Metrics;
use crate::stats::now_ms;

type H2Sender = http2::SendRequest<RequestBody>;

/// A connection's opening: `None` while it runs, then the sender or why it
/// failed.
type Opening = watch::Receiver<Option<Result<H2Sender, String>>>;

/// PINGs on every connection, idle or not: a backend that stops answering
/// them (a half-open connection) has its connection closed.
const PING_EVERY: Duration = Duration::from_secs(30);
const PING_TIMEOUT: Duration = Duration::from_secs(10);

struct H2Conn {
    opening: Opening,
    /// Streams in flight on it, and when the last one ended.
    use_: StreamUse,
    /// The backend's limit on concurrent streams (its SETTINGS), as last
    /// seen by the connection task.
    backend_limit: Arc<AtomicU32>,
    idle_timeout: Duration,
}

#[derive(Clone, Default)]
struct StreamUse {
    streams: Arc<AtomicU32>,
    last_used_ms: Arc<AtomicU64>,
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
pub struct StreamSlot(StreamUse);

impl StreamUse {
    fn take(&self) -> StreamSlot {
        self.streams.fetch_add(1, Relaxed);
        StreamSlot(self.clone())
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.last_used_ms.store(now_ms(), Relaxed);
        self.0.streams.fetch_sub(1, Relaxed);
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
    let pooled = which == Connection::PooledOrNew;
    loop {
        let listed = if pooled {
            checkout(key, target.max_streams)
        } else {
            None
        };
        let (mut sender, slot, shared) = match listed {
            Some((opening, slot)) => match opened(opening).await {
                Ok(sender) => (sender, slot, true),
                // The connection this request waited for was not made: not
                // this request's failure to count, but nothing was sent.
                Err(reason) => {
                    return Err(SendFailure {
                        error: UpstreamError::Connect {
                            addr: target.addr,
                            reason: ConnectFailure::Shared(reason),
                        },
                        unsent: Some(Box::new(from_h2(request))),
                    });
                }
            },
            None => {
                Metrics::inc(&metrics.upstream_connects);
                match open(target, tracker).await {
                    Ok((sender, slot)) => (sender, slot, false),
                    Err(reason) => {
                        return Err(SendFailure {
                            error: UpstreamError::Connect {
                                addr: target.addr,
                                reason,
                            },
                            unsent: Some(Box::new(from_h2(request))),
                        });
                    }
                }
            }
        };
        match sender.try_send_request(request).await {
            Ok(response) => {
                return Ok(super::through_hyper(response, Lease::H2(slot)));
            }
            Err(mut e) => match e.take_message() {
                // The connection went away before this stream opened: try
                // another, or a new one.
                Some(unsent) if shared => request = unsent,
                Some(unsent) => {
                    return Err(SendFailure {
                        error: UpstreamError::ClosedBeforeSend {
                            addr: target.addr,
                            source: e.into_error().into(),
                        },
                        unsent: Some(Box::new(from_h2(unsent))),
                    });
                }
                None => {
                    return Err(SendFailure {
                        error: stream_failed(target, e.into_error()),
                        unsent: None,
                    });
                }
            },
        }
    }
}

/// A stream that failed after it was sent. A backend that refused it
/// unprocessed (`REFUSED_STREAM`, RFC 9113 §8.7) is treated like a pooled
/// connection closed while idle: a replayable request may be sent again on a
/// fresh connection, not held against the backend. Anything else (a reset,
/// the connection dying) is the backend's failure.
fn stream_failed(target: Target<'_>, error: hyper::Error) -> UpstreamError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    let mut refused = false;
    while let Some(e) = source {
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            refused = h2.reason() == Some(h2::Reason::REFUSED_STREAM);
            break;
        }
        source = e.source();
    }
    after_send(target.addr, refused, error)
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
            let streams = c.use_.streams.load(Relaxed);
            streams < max_streams
                && match c.status() {
                    Status::Opening => true,
                    Status::Open(sender) => {
                        sender.is_ready() && streams < c.backend_limit.load(Relaxed)
                    }
                    Status::Dead => false,
                }
        })?;
        Some((conn.opening.clone(), conn.use_.take()))
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

/// Opens a connection in a task of its own, listed at once for this
/// worker's later requests, and takes one stream on it.
async fn open(
    target: Target<'_>,
    tracker: &TaskTracker,
) -> Result<(H2Sender, StreamSlot), ConnectFailure> {
    let (done, opening) = watch::channel(None);
    let conn = H2Conn {
        opening,
        use_: StreamUse::default(),
        backend_limit: Arc::new(AtomicU32::new(u32::MAX)),
        idle_timeout: target.idle_timeout,
    };
    let slot = conn.use_.take();
    let backend_limit = conn.backend_limit.clone();
    if !super::pool::draining() {
        CONNS.with(|conns| {
            conns
                .borrow_mut()
                .entry(target.pool_key())
                .or_default()
                .push(conn)
        });
    }
    let (typed, result) = oneshot::channel();
    let (dial, max_streams, task_tracker) = (target.dial(), target.max_streams, tracker.clone());
    tracker.spawn(async move {
        let opened = handshake(dial, max_streams, &task_tracker, backend_limit).await;
        done.send_replace(Some(match &opened {
            Ok(sender) => Ok(sender.clone()),
            Err(e) => Err(e.to_string()),
        }));
        let _ = typed.send(opened);
    });
    match result.await {
        Ok(Ok(sender)) => Ok((sender, slot)),
        Ok(Err(failure)) => Err(failure),
        Err(_) => Err(ConnectFailure::Shared(
            "the connection task ended (shutting down)".into(),
        )),
    }
}

/// Connects and starts HTTP/2, all within `connect_timeout`; the connection
/// runs as a tracked task that keeps `backend_limit` up to date.
async fn handshake(
    dial: Dial,
    max_streams: u32,
    tracker: &TaskTracker,
    backend_limit: Arc<AtomicU32>,
) -> Result<H2Sender, ConnectFailure> {
    let limit = dial.connect_timeout;
    let connecting = async {
        let stream = connect_stream(dial).await?;
        let mut builder = http2::Builder::new(Tracked(tracker.clone()));
        builder
            .timer(TokioTimer::new())
            .keep_alive_interval(PING_EVERY)
            .keep_alive_timeout(PING_TIMEOUT)
            .keep_alive_while_idle(true)
            .initial_max_send_streams(max_streams as usize)
            .max_concurrent_reset_streams(64);
        builder
            .handshake(TokioIo::new(stream))
            .await
            .map_err(ConnectFailure::Handshake)
    };
    let (sender, connection) = tokio::time::timeout(limit, connecting)
        .await
        .map_err(|_| ConnectFailure::TimedOut(limit))??;
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
/// their idle timeout (all of them when `all`, at shutdown: streams in
/// flight finish first), and forgets closed ones.
pub(super) fn sweep(all: bool) {
    let now = now_ms();
    CONNS.with(|conns| {
        let mut conns = conns.borrow_mut();
        conns.retain(|_, list| {
            list.retain(|c| {
                if all {
                    return false;
                }
                match c.status() {
                    Status::Dead => false,
                    Status::Opening => true,
                    Status::Open(_) => {
                        c.use_.streams.load(Relaxed) != 0
                            || now.saturating_sub(c.use_.last_used_ms.load(Relaxed))
                                < c.idle_timeout.as_millis() as u64
                    }
                }
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
