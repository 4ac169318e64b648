//! One client connection: HTTP/1.1 or HTTP/2 (detected), with one timer per
//! connection that enforces every client-side time limit:
//!
//! - from accept to the first complete request head: `first_request_timeout`
//!   (this covers protocol detection, which has no timer of its own, so a
//!   client that connects and says nothing is closed);
//! - from the first byte of a later head to its end (HTTP/1.1):
//!   `header_read_timeout`;
//! - idle with no request in progress (HTTP/1.1 between requests, HTTP/2
//!   with no open stream): `keepalive_timeout` (HTTP/2: GOAWAY).
//!
//! The timer is one `Sleep`, re-armed in place; what it checks is kept in an
//! [`Activity`] that the socket wrapper, the service and the response body
//! update with a few relaxed atomics. Requests do not wake it (that would be
//! a task wake-up per request): it looks at the connection at least once per
//! tick, the shortest of these limits, so each limit is enforced within one
//! tick of passing.
//!
//! On shutdown a connection is asked to finish at once (hyper's graceful
//! shutdown: an idle HTTP/1.1 connection closes, a busy one after its
//! response, HTTP/2 says GOAWAY). After a hand-over to a new process
//! (`takeover`) its clients are still served, so an HTTP/1.1 connection is
//! closed politely instead: its next response says `Connection: close`, and
//! it is closed unasked only once idle for [`HAND_OVER_IDLE`]. Closing an
//! idle keep-alive connection races with a request the client may be
//! sending on it; a busy client gets its `Connection: close` first.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ServerSettings;
use crate::http::ConnInfo;
use crate::http::body::ProxyBody;
use crate::metrics::Metrics;
use crate::state::Shared;
use crate::stats::now_ms;

/// How long an HTTP/2 peer gets to close after an idle GOAWAY.
const GOAWAY_GRACE: Duration = Duration::from_secs(1);
/// After a hand-over, how long an HTTP/1.1 connection may stay idle before
/// it is closed unasked: long enough for a client in a request loop to send
/// its next request (and get `Connection: close`), short enough for the old
/// process to exit soon.
const HAND_OVER_IDLE: Duration = Duration::from_secs(1);
/// After a hand-over, how often the timer looks at a connection at least.
const HAND_OVER_TICK: Duration = Duration::from_millis(100);

/// The HTTP server settings every connection of the process shares (set at
/// start: the HTTP/1 parser limits and HTTP/2 PINGs need a restart).
pub(super) fn builder(server: &ServerSettings) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Our own timer covers head reads (see the module docs).
        .header_read_timeout(None)
        // A head larger than the read buffer is refused with 431 by hyper.
        .max_buf_size(server.max_header_bytes.max(8192))
        .max_headers(server.max_headers);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(server.max_header_bytes.min(u32::MAX as usize) as u32)
        .keep_alive_interval(server.h2_ping_interval)
        .keep_alive_timeout(server.h2_ping_timeout);
    builder
}

/// The client-side time limits, read from the current state at accept.
#[derive(Debug, Clone, Copy)]
pub(super) struct Timers {
    pub first_request: Duration,
    pub header_read: Duration,
    pub keepalive: Duration,
    pub client_send: Duration,
}

impl Timers {
    /// How often an open connection's timer looks at it at the least: the
    /// shortest limit, so each is enforced within twice its length.
    fn tick(&self) -> Duration {
        self.first_request
            .min(self.header_read)
            .min(self.keepalive)
            .min(self.client_send)
    }

    pub(super) fn of(server: &ServerSettings) -> Timers {
        Timers {
            first_request: server.first_request_timeout,
            header_read: server.header_read_timeout,
            keepalive: server.keepalive_timeout,
            client_send: server.client_send_timeout,
        }
    }
}

/// What the connection timer looks at.
#[derive(Debug, Default)]
struct Activity {
    /// Requests whose response is not finished.
    active: AtomicU32,
    /// Requests started on this connection.
    requests: AtomicU64,
    /// `now_ms()` when the last response finished (the connection went idle).
    idle_since_ms: AtomicU64,
    /// `now_ms()` of the first byte read while idle: a head has begun.
    head_started_ms: AtomicU64,
    /// The connection speaks HTTP/2 (heads are frames; no head timer).
    h2: AtomicBool,
    /// `now_ms()` since when a write to the client has been blocked (the
    /// client stopped reading); 0 when writes go through.
    write_blocked_ms: AtomicU64,
    /// Response bodies that handed data on and wait to be polled again.
    handed_bodies: AtomicU32,
    /// `now_ms()` of the last poll of any response body here.
    last_body_poll_ms: AtomicU64,
    /// Wakes the timer when a write to the client blocks (rare), so the
    /// send timer starts at once.
    changed: tokio::sync::Notify,
    /// The process has handed over: HTTP/1 responses say `Connection: close`.
    closing: AtomicBool,
}

/// What the timer decided.
enum Verdict {
    /// Check again at this `now_ms()`.
    Wait(u64),
    /// Close now; counts under this metric.
    Close(fn(&Metrics) -> &std::sync::atomic::AtomicU64),
}

impl Activity {
    fn check(&self, accepted_ms: u64, timers: &Timers) -> Verdict {
        let now = now_ms();
        let after = |since: u64, limit: Duration| since + limit.as_millis() as u64;
        let (deadline, counter): (u64, fn(&Metrics) -> &std::sync::atomic::AtomicU64) =
            if self.requests.load(Relaxed) == 0 {
                (after(accepted_ms, timers.first_request), |m| {
                    &m.client_first_request_timeouts
                })
            } else if self.active.load(Relaxed) > 0 {
                let blocked = self.write_blocked_ms.load(Relaxed);
                // With HTTP/2 flow control the socket never blocks: a client
                // that grants no window shows as bodies nobody takes.
                let untaken = if self.handed_bodies.load(Relaxed) > 0 {
                    self.last_body_poll_ms.load(Relaxed)
                } else {
                    0
                };
                let since = match (blocked, untaken) {
                    (0, 0) => {
                        // Bodies have timers of their own; look again later.
                        return Verdict::Wait(after(now, timers.tick()));
                    }
                    (0, t) | (t, 0) => t,
                    (a, b) => a.min(b),
                };
                (after(since, timers.client_send), |m| {
                    &m.client_send_timeouts
                })
            } else {
                let head = self.head_started_ms.load(Relaxed);
                if head != 0 && !self.h2.load(Relaxed) {
                    (after(head, timers.header_read), |m| {
                        &m.client_header_timeouts
                    })
                } else {
                    (
                        after(self.idle_since_ms.load(Relaxed), timers.keepalive),
                        |m| &m.client_idle_closes,
                    )
                }
            };
        if now >= deadline {
            Verdict::Close(counter)
        } else {
            // Requests ending and heads beginning do not wake the timer (that
            // would cost a task wake-up per request): it looks at least every
            // tick, so a deadline is met within one tick.
            Verdict::Wait(deadline.min(after(now, timers.tick())))
        }
    }

    fn request_started(&self, version: Version) {
        self.requests.fetch_add(1, Relaxed);
        self.active.fetch_add(1, Relaxed);
        self.head_started_ms.store(0, Relaxed);
        if version == Version::HTTP_2 {
            self.h2.store(true, Relaxed);
        }
    }

    /// A write went through, or was blocked by a client not reading.
    fn note_write(&self, blocked: bool) {
        let since = self.write_blocked_ms.load(Relaxed);
        if blocked && since == 0 {
            self.write_blocked_ms.store(now_ms(), Relaxed);
            self.changed.notify_one();
        } else if !blocked && since != 0 {
            self.write_blocked_ms.store(0, Relaxed);
        }
    }

    /// How long no request has been in progress and no head begun, counted
    /// from `since` at the earliest; zero while busy.
    fn idle_for(&self, since: u64) -> Duration {
        if self.active.load(Relaxed) > 0 || self.head_started_ms.load(Relaxed) != 0 {
            return Duration::ZERO;
        }
        let idle_since = self.idle_since_ms.load(Relaxed).max(since);
        Duration::from_millis(now_ms().saturating_sub(idle_since))
    }

    fn request_finished(&self) {
        if self.active.fetch_sub(1, Relaxed) == 1 {
            self.head_started_ms.store(0, Relaxed);
            self.idle_since_ms.store(now_ms(), Relaxed);
        }
    }
}

/// Serves one accepted connection until it ends, a timer closes it, or
/// shutdown (then it is asked to finish and given until the worker's grace
/// period ends).
/// What serving a connection needs besides the stream.
pub(super) struct ConnContext {
    pub shared: Arc<Shared>,
    /// The worker's tasks (backend connections are spawned into it).
    pub tracker: TaskTracker,
    pub builder: Arc<auto::Builder<TokioExecutor>>,
    pub timers: Timers,
    pub cancel: CancellationToken,
    /// `now_ms()` at accept (before any TLS handshake).
    pub accepted_ms: u64,
}

pub(super) async fn serve<S>(stream: S, conn: Arc<ConnInfo>, context: ConnContext)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ConnContext {
        shared,
        tracker,
        builder,
        timers,
        cancel,
        accepted_ms,
    } = context;
    let peer = conn.peer;
    let metrics = shared.metrics.clone();
    let activity = Arc::new(Activity::default());
    let io = Watched {
        inner: stream,
        activity: activity.clone(),
    };
    let service_activity = activity.clone();
    let handing_over = shared.clone();
    let service = service_fn(move |request: Request<Incoming>| {
        let (shared, tracker, conn) = (shared.clone(), tracker.clone(), conn.clone());
        let h1 = request.version() < Version::HTTP_2;
        let guard = Active::new(service_activity.clone(), request.version());
        async move {
            let mut response = crate::http::handle(&shared, &tracker, request, &conn).await;
            if h1
                && guard.0.closing.load(Relaxed)
                && response.status() != http::StatusCode::SWITCHING_PROTOCOLS
            {
                // hyper closes the connection after this response.
                response.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
            }
            Ok::<_, Infallible>(response.map(|body| Tracked {
                body,
                handed: false,
                active: guard,
            }))
        }
    });
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    let mut connection = std::pin::pin!(connection);
    let timer = tokio::time::sleep(timers.first_request.min(timers.tick()));
    let mut timer = std::pin::pin!(timer);
    let mut closing = false;
    // Since when this HTTP/1 connection is closed politely (see the module
    // docs), `now_ms()`.
    let mut polite_since: Option<u64> = None;
    let result = loop {
        tokio::select! {
            result = connection.as_mut() => break result,
            _ = cancel.cancelled(), if !closing => {
                closing = true;
                if handing_over.handed_over.load(std::sync::atomic::Ordering::Acquire)
                    && !activity.h2.load(Relaxed)
                {
                    activity.closing.store(true, Relaxed);
                    polite_since = Some(now_ms());
                    timer.as_mut().reset(tokio::time::Instant::now() + HAND_OVER_TICK);
                } else {
                    connection.as_mut().graceful_shutdown();
                }
            }
            _ = activity.changed.notified() => {
                if let Verdict::Wait(at_ms) = activity.check(accepted_ms, &timers) {
                    let mut wait = Duration::from_millis(at_ms.saturating_sub(now_ms()).max(1));
                    if polite_since.is_some() {
                        wait = wait.min(HAND_OVER_TICK);
                    }
                    timer.as_mut().reset(tokio::time::Instant::now() + wait);
                }
            }
            _ = timer.as_mut() => match activity.check(accepted_ms, &timers) {
                Verdict::Wait(at_ms) => {
                    if let Some(since) = polite_since {
                        if activity.h2.load(Relaxed) {
                            // It turned out to speak HTTP/2: GOAWAY is polite.
                            polite_since = None;
                            connection.as_mut().graceful_shutdown();
                        } else if activity.idle_for(accepted_ms.max(since)) >= HAND_OVER_IDLE {
                            break Ok(());
                        }
                    }
                    let mut wait = Duration::from_millis(at_ms.saturating_sub(now_ms()).max(1));
                    if polite_since.is_some() {
                        wait = wait.min(HAND_OVER_TICK);
                    }
                    timer.as_mut().reset(tokio::time::Instant::now() + wait);
                }
                Verdict::Close(counter) => {
                    if closing {
                        // A GOAWAY went out and the peer did not finish.
                        break Ok(());
                    }
                    Metrics::inc(counter(&metrics));
                    if activity.h2.load(Relaxed) && activity.active.load(Relaxed) == 0 {
                        // HTTP/2: say GOAWAY, then give the peer a moment.
                        closing = true;
                        connection.as_mut().graceful_shutdown();
                        timer.as_mut().reset(tokio::time::Instant::now() + GOAWAY_GRACE);
                        continue;
                    }
                    break Ok(());
                }
            },
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, "connection ended: {e}");
    }
}

/// The socket, noting when a request head begins to arrive.
struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before
            && self.activity.active.load(Relaxed) == 0
            && self.activity.head_started_ms.load(Relaxed) == 0
        {
            self.activity.head_started_ms.store(now_ms(), Relaxed);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.activity.note_write(polled.is_pending());
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.activity.note_write(polled.is_pending());
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A request in progress on the connection, until its response body is
/// done (or the request is abandoned).
struct Active(Arc<Activity>);

impl Active {
    fn new(activity: Arc<Activity>, version: Version) -> Active {
        activity.request_started(version);
        Active(activity)
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

/// A response body that keeps its request counted as in progress, and
/// notes when it has handed data on and waits for the client to take more
/// (HTTP/2 flow control, or a full socket): the connection timer closes a
/// connection on which no body has been taken for `client_send_timeout`.
struct Tracked {
    body: ProxyBody,
    /// Data was handed on and the body has not been polled since.
    handed: bool,
    active: Active,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if self.handed {
            self.active.0.handed_bodies.fetch_sub(1, Relaxed);
        }
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = crate::http::body::ResponseError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let activity = &this.active.0;
        activity.last_body_poll_ms.store(now_ms(), Relaxed);
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        let handed = matches!(&polled, Poll::Ready(Some(Ok(frame))) if frame.is_data());
        if handed != this.handed {
            this.handed = handed;
            if handed {
                activity.handed_bodies.fetch_add(1, Relaxed);
            } else {
                activity.handed_bodies.fetch_sub(1, Relaxed);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
