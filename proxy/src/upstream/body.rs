//! A backend's response body, streamed to the client. It returns its
//! connection to the pool once read to the end, keeps the backend's
//! in-flight count until then, and gives up on a backend that stops sending
//! for `read_timeout_ms` (the client's stream is then closed: its status line
//! went out already, so nothing better can be said).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::error::Cause;
use super::pool::{Lease, give_back};
use super::{Exchange, InlineBody, Received, ThroughHyper};
use crate::metrics::Metrics;
use crate::stall::StallTimer;
use crate::stats::InFlight;

/// Why a response body ended early.
#[derive(Debug)]
pub enum ResponseBodyError {
    /// The backend sent nothing for `read_timeout_ms`.
    Stalled(Duration),
    /// The backend's connection failed mid-body, or it broke HTTP/1.1.
    Broken(Cause),
}

impl std::fmt::Display for ResponseBodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResponseBodyError::Stalled(after) => {
                write!(f, "the backend sent no body data for {after:?}")
            }
            ResponseBodyError::Broken(e) => write!(f, "the backend's body broke off: {e}"),
        }
    }
}

impl std::error::Error for ResponseBodyError {}

/// A backend's response body (see the module docs).
pub struct UpstreamBody {
    inner: Inner,
    done: bool,
    /// Fires after `read_timeout_ms` without a frame from the backend.
    stall: StallTimer,
    metrics: Arc<Metrics>,
    _in_flight: InFlight,
}

/// Where the body comes from.
enum Inner {
    /// hyper's client, and what holds its connection (an HTTP/1.1 one
    /// returns through it; `None` once it must not).
    Hyper {
        body: Incoming,
        lease: Option<Lease>,
    },
    /// The inline exchange (which returns its connection itself).
    Inline(InlineBody),
}

impl Inner {
    fn is_end_stream(&self) -> bool {
        match self {
            Inner::Hyper { body, .. } => body.is_end_stream(),
            Inner::Inline(body) => body.is_end_stream(),
        }
    }

    /// The body broke or stalled: its connection must not be used again.
    fn give_up(&mut self) {
        match self {
            Inner::Hyper { lease, .. } => *lease = None,
            Inner::Inline(body) => body.abandon(),
        }
    }
}

impl UpstreamBody {
    /// Wraps `exchange`'s body; returns the response head and the body.
    pub fn wrap(
        exchange: Exchange,
        in_flight: InFlight,
        read_timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Response<UpstreamBody> {
        exchange.response.map(|inner| UpstreamBody {
            inner: match inner {
                Received::Hyper(ThroughHyper { body, lease }) => Inner::Hyper {
                    body,
                    lease: Some(lease),
                },
                Received::Inline(body) => Inner::Inline(body),
            },
            done: false,
            stall: StallTimer::new(read_timeout),
            metrics,
            _in_flight: in_flight,
        })
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        let done = self.done || self.inner.is_end_stream();
        if let Inner::Hyper { lease, .. } = &mut self.inner
            && let Some(Lease::H1(returner)) = lease.take()
            && done
        {
            give_back(returner);
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = ResponseBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ResponseBodyError>>> {
        let this = &mut *self;
        let polled = match &mut this.inner {
            Inner::Hyper { body, .. } => Pin::new(body).poll_frame(cx).map_err(Cause::Hyper),
            Inner::Inline(body) => body.poll_frame(cx),
        };
        match polled {
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(frame))) => {
                this.stall.progressed();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                Metrics::inc(&this.metrics.upstream_body_errors);
                this.inner.give_up();
                Poll::Ready(Some(Err(ResponseBodyError::Broken(e))))
            }
            Poll::Pending => {
                if this.stall.poll_stalled(cx) {
                    Metrics::inc(&this.metrics.upstream_body_timeouts);
                    this.inner.give_up();
                    return Poll::Ready(Some(Err(ResponseBodyError::Stalled(this.stall.limit()))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Hyper { body, .. } => body.size_hint(),
            Inner::Inline(body) => body.size_hint(),
        }
    }
}
