//! A response body read straight off the backend's connection by the task
//! that writes it to the client: no connection task, no channel between
//! them. Data is handed on as slices of the connection's read buffer. Read
//! to its end, with nothing after it, the connection goes back to the idle
//! pool at once; dropped early, or broken, it is closed.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Frame, SizeHint};

use super::chunked::{Chunked, Piece};
use super::codec::Framing;
use super::{Conn, READ_ROOM};
use crate::upstream::error::Cause;
use crate::upstream::pool::{self, Slot};

/// See the module docs.
pub struct InlineBody {
    /// The connection, until it is given back or closed.
    conn: Option<Conn>,
    state: State,
    keep_alive: bool,
    slot: Slot,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Length(u64),
    Chunked(Chunked),
    UntilClose,
    Done,
    /// Broken off (an error was returned): never complete.
    Failed,
}

impl InlineBody {
    /// The body after a response head read from `conn` (whose buffer holds
    /// what came after the head).
    pub(super) fn new(conn: Conn, framing: Framing, keep_alive: bool, slot: Slot) -> InlineBody {
        let state = match framing {
            Framing::Empty => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::Chunked(Chunked::Size),
            Framing::UntilClose => State::UntilClose,
        };
        let mut body = InlineBody {
            conn: Some(conn),
            state,
            keep_alive,
            slot,
        };
        if body.state == State::Done {
            body.finish();
        }
        body
    }

    /// The body is complete: its connection goes back to the pool if it can
    /// carry another request (and the backend sent nothing past the body).
    fn finish(&mut self) {
        self.state = State::Done;
        if let Some(conn) = self.conn.take()
            && self.keep_alive
            && conn.buf.is_empty()
        {
            pool::give_back_inline(conn, self.slot);
        }
    }

    fn fail(&mut self, cause: Cause) -> Poll<Option<Result<Frame<Bytes>, Cause>>> {
        self.abandon();
        Poll::Ready(Some(Err(cause)))
    }

    /// The body will not be read on (it broke, or stalled): its connection
    /// is closed now.
    pub(crate) fn abandon(&mut self) {
        self.conn = None;
        self.state = State::Failed;
    }

    /// The next frame (see [`http_body::Body::poll_frame`]).
    pub(crate) fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Cause>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match self.state {
                State::Done | State::Failed => return Poll::Ready(None),
                State::Length(left) if !conn.buf.is_empty() => {
                    let take = (conn.buf.len() as u64).min(left);
                    let data = conn.buf.split_to(take as usize).freeze();
                    self.state = State::Length(left - take);
                    if take == left {
                        self.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                State::Length(_) => {}
                State::Chunked(mut chunked) => {
                    let piece = chunked.step(&mut conn.buf);
                    self.state = State::Chunked(chunked);
                    match piece {
                        Ok(Piece::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                        Ok(Piece::Trailers(fields)) => {
                            self.finish();
                            return Poll::Ready(Some(Ok(Frame::trailers(fields))));
                        }
                        Ok(Piece::End) => {
                            self.finish();
                            return Poll::Ready(None);
                        }
                        Ok(Piece::More) => {}
                        Err(what) => return self.fail(Cause::Protocol(what)),
                    }
                }
                State::UntilClose if !conn.buf.is_empty() => {
                    let data = conn.buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                State::UntilClose => {}
            }
            // The buffer holds nothing more of the body: read on.
            let conn = self.conn.as_mut().expect("checked above");
            conn.buf.reserve(READ_ROOM);
            match ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut conn.io),
                cx,
                &mut conn.buf
            )) {
                Ok(0) if self.state == State::UntilClose => {
                    self.conn = None;
                    self.state = State::Done;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    return self.fail(Cause::Protocol(
                        "it closed the connection before the end of the body",
                    ));
                }
                Ok(_) => {}
                Err(e) => return self.fail(Cause::Io(e)),
            }
        }
    }

    /// Whether the body is complete.
    pub(crate) fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done | State::Length(0))
    }

    /// The exact length still to come, when known.
    pub(crate) fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Done => SizeHint::with_exact(0),
            State::Length(left) => SizeHint::with_exact(left),
            _ => SizeHint::default(),
        }
    }
}
