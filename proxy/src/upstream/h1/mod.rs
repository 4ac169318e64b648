//! HTTP/1.1 to a backend driven inline by the request's own task, for
//! requests without a body or an upgrade (most of what a proxy carries).
//! The task writes the head from a per-worker buffer, reads the response
//! head into a spare header map, and the client's connection task then
//! reads the body straight off the socket ([`InlineBody`]). The request's
//! head is kept in the caller's slot throughout, for a replay: nothing need
//! be copied before the first try. hyper's client would run a task per
//! connection and hand each request to it and the response back through
//! channels; here there is none of that, and no allocation once a
//! connection is warm.
//!
//! The retry guarantees are the same as on hyper's path: a pooled
//! connection found closed is skipped; one that fails before a byte of the
//! request was written gives the request back untouched; one that closes
//! after the request went out but before a byte of response is
//! `SentNoResponse` (for a pooled connection: the keep-alive race, sent
//! once more on a new connection when it may be). Unlike hyper's, a close
//! in the middle of a response head is `InvalidResponse`: the backend had
//! begun to answer.
//!
//! Files: `codec` (writing the request head, parsing the response head, how
//! the body is delimited), `chunked` (decoding a chunked body), `body` (the
//! response body and the connection's return to the pool).

mod body;
mod chunked;
mod codec;

use std::task::{Context, Poll};

use bytes::BytesMut;
use http::request::Parts;
use http::{Method, Request, Response};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};

pub use body::InlineBody;

use super::error::Cause;
use super::pool;
use super::{
    Connection, Exchange, Received, SendFailure, Stream, Target, UpstreamError, connect_stream,
};
use crate::http::body::RequestBody;
use crate::http::spare;
use crate::metrics::Metrics;

/// How much room the read buffer starts with.
const BUFFER: usize = 16 * 1024;

/// The least free room a read asks for. Less than [`BUFFER`], so that the
/// room left after a head or a frame is handed on (which shares the buffer)
/// is used before a new buffer is made.
pub(super) const READ_ROOM: usize = 4 * 1024;

/// An HTTP/1.1 connection to a backend between requests: the stream, and
/// its read buffer (empty when pooled).
pub(super) struct Conn {
    io: Stream,
    buf: BytesMut,
}

thread_local! {
    /// Where this worker writes request heads: taken for a write and put
    /// back after (a write that waits meanwhile leaves the next one a new
    /// buffer, which then stays).
    static HEAD: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

impl Conn {
    fn new(io: Stream) -> Conn {
        Conn {
            io,
            buf: BytesMut::with_capacity(BUFFER),
        }
    }

    /// Whether an idle connection is still usable: not closed by the
    /// backend, and nothing unasked for arrived on it. Looks without
    /// waiting.
    pub(super) fn is_open(&mut self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut probe = [0u8; 1];
        let mut probe = ReadBuf::new(&mut probe);
        matches!(
            std::pin::Pin::new(&mut self.io).poll_read(&mut cx, &mut probe),
            Poll::Pending
        )
    }
}

/// Whether a request goes the inline way: no body, no upgrade, no tunnel.
pub(super) fn takes(method: &Method, headers: &http::HeaderMap, body: &RequestBody) -> bool {
    matches!(body, RequestBody::Empty)
        && method != Method::CONNECT
        && !headers.contains_key(http::header::UPGRADE)
}

/// Sends `request` (see [`takes`]) to `target` on a pooled connection or a
/// new one, and reads the response head; the response's headers fill a
/// spare map. The request's head lives in `sent` from the start, so that
/// wherever this stops (a failure, or the response timer dropping it
/// mid-way) the caller still has it for a replay; when nothing was sent,
/// the request comes back whole in the failure instead.
pub(super) async fn send(
    target: Target<'_>,
    request: Request<RequestBody>,
    which: Connection,
    metrics: &Metrics,
    sent: &mut Option<Parts>,
) -> Result<Exchange, SendFailure> {
    // No body (see `takes`): the head is all there is.
    let head = &*sent.insert(request.into_parts().0);
    let method = head.method.clone();
    let key = target.pool_key();
    let mut pooled = which == Connection::PooledOrNew;
    let mut out = HEAD.take();
    out.clear();
    let close = codec::encode_request(
        &head.method,
        &head.uri,
        head.version,
        &head.headers,
        &mut out,
    );
    let connected = loop {
        let idle = if pooled {
            pool::checkout_inline(key)
        } else {
            None
        };
        let reused = idle.is_some();
        let mut conn = match idle {
            Some(conn) => conn,
            None => {
                pooled = false;
                Metrics::inc(&metrics.upstream_connects);
                // Boxed: connecting (TCP, then TLS) is a future of some
                // 1.5 KiB, made once per connection; inline it would size
                // every request's future.
                match Box::pin(connect_stream(target.dial())).await {
                    Ok(io) => Conn::new(io),
                    Err(reason) => {
                        break Err(UpstreamError::Connect {
                            addr: target.addr,
                            reason,
                        });
                    }
                }
            }
        };
        match write_head(&mut conn.io, &out).await {
            Ok(()) => break Ok((conn, reused)),
            // A pooled connection that failed before taking a byte: the
            // next one (or a new one) gets the request.
            Err((_, true)) if reused => continue,
            Err((e, true)) => {
                break Err(UpstreamError::ClosedBeforeSend {
                    addr: target.addr,
                    source: Cause::Io(e),
                });
            }
            // Part of it may have reached the backend: the head stays in
            // `sent` for a replay.
            Err((e, false)) => {
                HEAD.set(out);
                return Err(SendFailure {
                    error: UpstreamError::SentNoResponse {
                        addr: target.addr,
                        reused,
                        source: Cause::Io(e),
                    },
                    unsent: None,
                });
            }
        }
    };
    HEAD.set(out);
    let (mut conn, reused) = match connected {
        Ok(connected) => connected,
        // Nothing reached the backend: the request goes back whole.
        Err(error) => {
            return Err(SendFailure {
                error,
                unsent: sent
                    .take()
                    .map(|head| Box::new(Request::from_parts(head, RequestBody::Empty))),
            });
        }
    };
    let mut headers = spare::take();
    let failed = |error| {
        Err(SendFailure {
            error,
            unsent: None,
        })
    };
    let mut received = false;
    let head = loop {
        // Nothing to parse before the first read.
        match received.then(|| codec::parse_response(&mut conn.buf, &method, &mut headers)) {
            Some(Ok(Some(head))) => break head,
            None | Some(Ok(None)) => {}
            Some(Err(what)) => {
                return failed(UpstreamError::InvalidResponse {
                    addr: target.addr,
                    source: Cause::Protocol(what),
                });
            }
        }
        conn.buf.reserve(READ_ROOM);
        match conn.io.read_buf(&mut conn.buf).await {
            Ok(0) | Err(_) if received => {
                return failed(UpstreamError::InvalidResponse {
                    addr: target.addr,
                    source: Cause::Protocol("it closed the connection inside the response head"),
                });
            }
            Ok(0) => {
                return failed(UpstreamError::SentNoResponse {
                    addr: target.addr,
                    reused,
                    source: Cause::Io(std::io::ErrorKind::UnexpectedEof.into()),
                });
            }
            Err(e) => {
                return failed(UpstreamError::SentNoResponse {
                    addr: target.addr,
                    reused,
                    source: Cause::Io(e),
                });
            }
            Ok(_) => received = true,
        }
    };
    let body = InlineBody::new(
        conn,
        head.framing,
        head.keep_alive && !close && !pool::draining(),
        target.slot(),
    );
    let mut response = Response::new(Received::Inline(body));
    *response.status_mut() = head.status;
    *response.headers_mut() = headers;
    if let Some(reason) = head.reason {
        response.extensions_mut().insert(reason);
    }
    Ok(Exchange { response })
}

/// Writes a request head. The error says whether nothing of it was taken
/// (then nothing reached the backend).
async fn write_head(io: &mut Stream, head: &[u8]) -> Result<(), (std::io::Error, bool)> {
    let mut written = 0;
    while written < head.len() {
        match io.write(&head[written..]).await {
            Ok(0) => return Err((std::io::ErrorKind::WriteZero.into(), written == 0)),
            Ok(n) => written += n,
            Err(e) => return Err((e, written == 0)),
        }
    }
    io.flush().await.map_err(|e| (e, false))
}
