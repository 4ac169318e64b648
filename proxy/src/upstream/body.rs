//! A backend's response body, streamed to the client.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Response;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::Exchange;
use super::pool::{Returner, give_back};
use crate::stats::InFlight;

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
