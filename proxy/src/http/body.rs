//! Bodies on the request path: the client's request body on its way to a
//! backend ([`RequestBody`]), and what the client gets back ([`ProxyBody`]).
//!
//! The request body reports how it is going through a shared [`Progress`]:
//! when it ended (the response timer starts then), when it last moved (a
//! backend that stops reading it is timed out), and whether the *client*
//! failed it (stalled past `client_body_timeout_ms`: 408; malformed, e.g. a
//! bad chunk size: 400; larger than `max_body_bytes`: 413), so that a
//! client's fault is never counted against a backend. When the request may
//! be retried, the body's frames are also kept (up to a size) so a failed
//! attempt can be replayed on the next backend.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::Notify;

use crate::stall::StallTimer;
use crate::stats::now_ms;
use crate::upstream::UpstreamBody;

/// How a client failed its request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientBodyFailure {
    /// Nothing arrived for `client_body_timeout_ms`: 408.
    Stalled = 1,
    /// The body could not be decoded (bad chunk size, connection reset): 400.
    Malformed = 2,
    /// More than `max_body_bytes`: 413.
    TooLarge = 3,
}

impl ClientBodyFailure {
    fn from_u8(v: u8) -> Option<ClientBodyFailure> {
        match v {
            1 => Some(ClientBodyFailure::Stalled),
            2 => Some(ClientBodyFailure::Malformed),
            3 => Some(ClientBodyFailure::TooLarge),
            _ => None,
        }
    }

    /// The answer the client gets.
    pub fn status(self) -> StatusCode {
        match self {
            ClientBodyFailure::Stalled => StatusCode::REQUEST_TIMEOUT,
            ClientBodyFailure::Malformed => StatusCode::BAD_REQUEST,
            ClientBodyFailure::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }

    /// What to tell the client.
    pub fn reason(self) -> &'static str {
        match self {
            ClientBodyFailure::Stalled => "the request body stalled",
            ClientBodyFailure::Malformed => {
                "the request body could not be read (malformed or cut off)"
            }
            ClientBodyFailure::TooLarge => "the request body is larger than this server accepts",
        }
    }
}

/// How a streaming request body is going; shared with the attempt loop.
#[derive(Debug, Default)]
pub struct Progress {
    /// The body reached its end (the response timer starts).
    done: AtomicBool,
    /// `now_ms()` of the last frame handed on.
    last_frame_ms: AtomicU64,
    /// Whether the body is waiting on the client (not on the backend).
    waiting_on_client: AtomicBool,
    /// A [`ClientBodyFailure`] as u8, 0 when none.
    failure: AtomicU8,
    /// Woken when the body ends or fails.
    changed: Notify,
    /// Data bytes handed on so far.
    bytes: AtomicU64,
    /// The frames handed on so far, for a replay; `None` once larger than
    /// the pool's `retry.replay_body_bytes` (or when nothing is kept).
    kept: Mutex<Option<Kept>>,
}

#[derive(Debug, Default)]
struct Kept {
    frames: Vec<Frame<Bytes>>,
    bytes: u64,
    limit: u64,
}

impl Progress {
    /// Whether the whole body was handed on.
    pub fn is_done(&self) -> bool {
        self.done.load(Relaxed)
    }

    /// How the client failed the body, if it did.
    pub fn failure(&self) -> Option<ClientBodyFailure> {
        ClientBodyFailure::from_u8(self.failure.load(Relaxed))
    }

    /// Whether the body waits on the client now.
    pub fn waiting_on_client(&self) -> bool {
        self.waiting_on_client.load(Relaxed)
    }

    /// `now_ms()` of the last frame.
    pub fn last_frame_ms(&self) -> u64 {
        self.last_frame_ms.load(Relaxed)
    }

    /// Completes when the body ends or fails (or at once if it has).
    pub async fn changed(&self) {
        let notified = self.changed.notified();
        if self.is_done() || self.failure().is_some() {
            return;
        }
        notified.await;
    }

    /// The whole body again, for another attempt: only once it has been
    /// read to its end and was small enough to keep.
    pub fn replay(&self) -> Option<RequestBody> {
        if !self.is_done() || self.failure().is_some() {
            return None;
        }
        let kept = self.kept.lock().ok()?;
        let kept = kept.as_ref()?;
        let frames = kept
            .frames
            .iter()
            .map(|f| match f.data_ref() {
                Some(data) => Frame::data(data.clone()),
                None => Frame::trailers(f.trailers_ref().cloned().unwrap_or_default()),
            })
            .collect();
        Some(RequestBody::Replayed(Box::new(Replayed {
            frames,
            length: kept.bytes,
        })))
    }

    /// Data bytes of the body handed on so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Relaxed)
    }

    /// Whether [`Progress::replay`] would give the body.
    pub fn can_replay(&self) -> bool {
        self.is_done()
            && self.failure().is_none()
            && self.kept.lock().is_ok_and(|kept| kept.is_some())
    }

    /// Keeps a copy of `frame` while the body stays within its limit.
    fn keep(&self, frame: &Frame<Bytes>) {
        let Ok(mut kept) = self.kept.lock() else {
            return;
        };
        let Some(k) = kept.as_mut() else { return };
        let copy = match frame.data_ref() {
            Some(data) => {
                k.bytes += data.len() as u64;
                Frame::data(data.clone())
            }
            None => match frame.trailers_ref() {
                Some(trailers) => Frame::trailers(trailers.clone()),
                None => return,
            },
        };
        if k.bytes > k.limit {
            *kept = None;
        } else {
            k.frames.push(copy);
        }
    }

    fn fail(&self, failure: ClientBodyFailure) -> ClientBodyError {
        self.failure.store(failure as u8, Relaxed);
        self.changed.notify_waiters();
        ClientBodyError(failure)
    }
}

/// The error a [`RequestBody`] yields when the client failed it.
#[derive(Debug)]
pub struct ClientBodyError(pub ClientBodyFailure);

impl std::fmt::Display for ClientBodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.reason())
    }
}

impl std::error::Error for ClientBodyError {}

/// A request body on its way to a backend.
pub enum RequestBody {
    /// No body: nothing to stream, and the request can be replayed.
    Empty,
    /// The client's body, streamed as it arrives.
    Streaming(Box<Streaming>),
    /// A kept body sent again (see [`Progress::replay`]).
    Replayed(Box<Replayed>),
}

/// A kept body being sent again.
pub struct Replayed {
    frames: VecDeque<Frame<Bytes>>,
    length: u64,
}

/// The state of a streaming request body.
pub struct Streaming {
    inner: Incoming,
    progress: Arc<Progress>,
    /// Fires after `client_body_timeout_ms` without a frame from the client.
    stall: StallTimer,
    /// Data bytes so far, and the most allowed.
    seen: u64,
    limit: Option<u64>,
}

impl RequestBody {
    /// Wraps the client's body: [`RequestBody::Empty`] when it has none.
    /// Returns the progress to watch for a streaming one. Up to `keep` bytes
    /// are kept for a replay (0: none).
    pub fn new(
        inner: Incoming,
        idle: Duration,
        limit: Option<u64>,
        keep: u64,
    ) -> (RequestBody, Option<Arc<Progress>>) {
        if inner.is_end_stream() {
            return (RequestBody::Empty, None);
        }
        let progress = Arc::new(Progress::default());
        progress.last_frame_ms.store(now_ms(), Relaxed);
        let fits = inner.size_hint().upper().is_none_or(|n| n <= keep);
        if keep > 0 && fits {
            *progress.kept.lock().expect("new") = Some(Kept {
                limit: keep,
                ..Kept::default()
            });
        }
        let body = Streaming {
            inner,
            progress: progress.clone(),
            stall: StallTimer::new(idle),
            seen: 0,
            limit,
        };
        (RequestBody::Streaming(Box::new(body)), Some(progress))
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        let body = match self.get_mut() {
            RequestBody::Empty => return Poll::Ready(None),
            RequestBody::Streaming(body) => &mut **body,
            RequestBody::Replayed(body) => return Poll::Ready(body.frames.pop_front().map(Ok)),
        };
        let progress = &body.progress;
        match Pin::new(&mut body.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    body.seen += data.len() as u64;
                    progress.bytes.store(body.seen, Relaxed);
                    if body.limit.is_some_and(|limit| body.seen > limit) {
                        return Poll::Ready(Some(Err(progress.fail(ClientBodyFailure::TooLarge))));
                    }
                }
                if progress.waiting_on_client.swap(false, Relaxed) {
                    progress.changed.notify_waiters();
                }
                progress.keep(&frame);
                progress.last_frame_ms.store(now_ms(), Relaxed);
                body.stall.progressed();
                if body.inner.is_end_stream() {
                    // A body of known length may never be polled to its end.
                    progress.done.store(true, Relaxed);
                    progress.changed.notify_waiters();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(_))) => {
                Poll::Ready(Some(Err(progress.fail(ClientBodyFailure::Malformed))))
            }
            Poll::Ready(None) => {
                progress.done.store(true, Relaxed);
                progress.changed.notify_waiters();
                Poll::Ready(None)
            }
            Poll::Pending => {
                progress.waiting_on_client.store(true, Relaxed);
                if body.stall.poll_stalled(cx) {
                    return Poll::Ready(Some(Err(progress.fail(ClientBodyFailure::Stalled))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Streaming(body) => body.inner.is_end_stream(),
            RequestBody::Replayed(body) => body.frames.is_empty(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Streaming(body) => body.inner.size_hint(),
            RequestBody::Replayed(body) => SizeHint::with_exact(body.length),
        }
    }
}

/// A response for the client that the proxy writes itself.
pub(crate) fn message(status: StatusCode, text: String) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::Message(Some(Bytes::from(text))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The error a response body can end with (the client's stream is closed).
pub type ResponseError = Box<dyn std::error::Error + Send + Sync>;

/// A response body: streamed from a backend, or a short message of the proxy.
pub enum ProxyBody {
    /// From a backend.
    Upstream(UpstreamBody),
    /// The proxy's own answer (404, 502, 504…).
    Message(Option<Bytes>),
    /// Either, with an access log line written when it ends.
    Logged(Box<super::observe::Logged>),
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = ResponseError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ResponseError>>> {
        match self.get_mut() {
            ProxyBody::Upstream(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(Into::into))),
            ProxyBody::Message(text) => Poll::Ready(text.take().map(|t| Ok(Frame::data(t)))),
            ProxyBody::Logged(body) => Pin::new(&mut **body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream(body) => body.is_end_stream(),
            ProxyBody::Message(text) => text.is_none(),
            ProxyBody::Logged(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream(body) => body.size_hint(),
            ProxyBody::Message(text) => {
                SizeHint::with_exact(text.as_ref().map_or(0, |t| t.len() as u64))
            }
            ProxyBody::Logged(body) => body.size_hint(),
        }
    }
}
