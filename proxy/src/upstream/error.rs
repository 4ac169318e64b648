//! Why an attempt on a backend failed, and what that means for a retry.
//!
//! The attempt loop needs to know one thing above all: did the backend
//! possibly act on the request? Not if no connection was made, or the
//! connection closed before the request was written: any request can then go
//! to the next candidate, body and all. If the request was sent and the
//! connection failed, or timed out, before any response byte, only a request
//! that can be replayed (its body was kept) may be sent again, and the pool's
//! retry policy decides which (by default: idempotent methods). Once a
//! response has started, nothing can be retried.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

/// What went wrong with one backend.
#[derive(Debug)]
pub enum UpstreamError {
    /// No connection could be made. Nothing was sent.
    Connect {
        /// The backend.
        addr: SocketAddr,
        /// The OS error, or a timeout.
        reason: ConnectFailure,
    },
    /// A connection was made (or taken from the pool) but closed before the
    /// request was written. Nothing was sent.
    ClosedBeforeSend {
        /// The backend.
        addr: SocketAddr,
        /// What happened.
        source: Cause,
    },
    /// The request was (at least partly) sent, then the connection failed
    /// before any response byte arrived. The backend may have acted on it.
    SentNoResponse {
        /// The backend.
        addr: SocketAddr,
        /// Whether the connection came from the keep-alive pool (then the
        /// likely cause is the backend closing an idle connection just as the
        /// request went out: a fresh connection usually succeeds).
        reused: bool,
        /// What happened.
        source: Cause,
    },
    /// The backend sent something that is not a valid HTTP response head.
    InvalidResponse {
        /// The backend.
        addr: SocketAddr,
        /// What happened.
        source: Cause,
    },
    /// No response head within `response_timeout_ms` of the request body's
    /// end, or the backend stopped reading the request body for
    /// `send_timeout_ms`.
    TimedOut {
        /// The backend.
        addr: SocketAddr,
        /// Which timer fired.
        what: &'static str,
        /// Its setting.
        after: Duration,
    },
}

/// What a connection to a backend said, or failed with: hyper's account
/// (HTTP/2, and HTTP/1.1 with a request body or an upgrade), or, for the
/// inline HTTP/1.1 exchange, the socket's error or what was wrong with the
/// bytes.
#[derive(Debug)]
pub enum Cause {
    /// From hyper's client.
    Hyper(hyper::Error),
    /// The socket (or TLS) failed, or closed.
    Io(std::io::Error),
    /// The backend broke HTTP/1.1: what it got wrong.
    Protocol(&'static str),
}

impl From<hyper::Error> for Cause {
    fn from(e: hyper::Error) -> Cause {
        Cause::Hyper(e)
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Hyper(e) => write!(f, "{e}"),
            Cause::Io(e) => write!(f, "{e}"),
            Cause::Protocol(what) => f.write_str(what),
        }
    }
}

impl std::error::Error for Cause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Cause::Hyper(e) => Some(e),
            Cause::Io(e) => Some(e),
            Cause::Protocol(_) => None,
        }
    }
}

/// Why a connect failed.
#[derive(Debug)]
pub enum ConnectFailure {
    /// The OS refused (connection refused, unreachable, …).
    Io(std::io::Error),
    /// `connect_timeout_ms` passed.
    TimedOut(Duration),
    /// The HTTP/1.1 handshake on the new connection failed.
    Handshake(hyper::Error),
    /// The TLS handshake failed (certificate not trusted, wrong name, …).
    Tls(std::io::Error),
    /// An HTTP/2 connection another request was opening, which this one
    /// waited for, failed (counted against the backend once, for that
    /// request).
    Shared(String),
}

impl fmt::Display for ConnectFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectFailure::Io(e) => write!(f, "{e}"),
            ConnectFailure::TimedOut(after) => write!(f, "timed out after {after:?}"),
            ConnectFailure::Handshake(e) => write!(f, "handshake: {e}"),
            ConnectFailure::Tls(e) => write!(f, "TLS handshake: {e}"),
            ConnectFailure::Shared(reason) => {
                write!(f, "the connection it waited for failed: {reason}")
            }
        }
    }
}

/// Whether a failed attempt may be tried again (elsewhere or on a fresh
/// connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetrySafety {
    /// Nothing reached the backend: safe for any request.
    NothingSent,
    /// The backend may have received the request (reset, garbage or no
    /// answer in time): safe only to replay a request the retry policy
    /// allows (by default, an idempotent one) whose body was kept.
    IfReplayable,
}

impl UpstreamError {
    /// See [`RetrySafety`].
    pub fn retry_safety(&self) -> RetrySafety {
        match self {
            UpstreamError::Connect { .. } | UpstreamError::ClosedBeforeSend { .. } => {
                RetrySafety::NothingSent
            }
            UpstreamError::SentNoResponse { .. }
            | UpstreamError::InvalidResponse { .. }
            | UpstreamError::TimedOut { .. } => RetrySafety::IfReplayable,
        }
    }

    /// Whether this counts against the backend's passive health
    /// (`max_fails`). A pooled connection the backend closed while idle does
    /// not, nor does this host running out of descriptors or ports.
    pub fn counts_as_backend_failure(&self) -> bool {
        match self {
            UpstreamError::SentNoResponse { reused, .. } => !reused,
            UpstreamError::ClosedBeforeSend { .. } => false,
            UpstreamError::Connect {
                reason: ConnectFailure::Shared(_),
                ..
            } => false,
            // Out of descriptors or local ports: this host's trouble.
            UpstreamError::Connect {
                reason: ConnectFailure::Io(e),
                ..
            } => !matches!(
                e.raw_os_error(),
                Some(code) if code == rustix::io::Errno::MFILE.raw_os_error()
                    || code == rustix::io::Errno::NFILE.raw_os_error()
                    || code == rustix::io::Errno::ADDRNOTAVAIL.raw_os_error()
            ),
            _ => true,
        }
    }
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpstreamError::Connect { addr, reason } => write!(f, "connect to {addr}: {reason}"),
            UpstreamError::ClosedBeforeSend { addr, source } => write!(
                f,
                "connection to {addr} closed before the request was sent: {source}"
            ),
            UpstreamError::SentNoResponse {
                addr,
                reused,
                source,
            } => write!(
                f,
                "{addr} closed the {} connection without a response: {source}",
                if *reused { "reused" } else { "new" }
            ),
            UpstreamError::InvalidResponse { addr, source } => {
                write!(f, "{addr} sent an invalid response: {source}")
            }
            UpstreamError::TimedOut { addr, what, after } => {
                write!(f, "{addr} {what} within {after:?}")
            }
        }
    }
}

impl std::error::Error for UpstreamError {}
