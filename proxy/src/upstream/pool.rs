//! Idle keep-alive connections, per worker thread, by backend address.
//!
//! The pool is thread-local: a worker's connections are only used by that
//! worker's tasks (each worker runs a single-threaded event loop), so checkout
//! and return take no lock.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use hyper::client::conn::http1;

use crate::http::body::RequestBody;

pub(super) type Sender = http1::SendRequest<RequestBody>;

struct IdleConn {
    sender: Sender,
    expires: Instant,
}

thread_local! {
    /// This worker's idle connections, by backend address (and TLS name).
    static IDLE: RefCell<HashMap<Key, Vec<IdleConn>>> = RefCell::new(HashMap::new());
    /// Set when this worker shuts down: nothing is pooled any more.
    static DRAINING: Cell<bool> = const { Cell::new(false) };
}

/// A backend's address, and 0 for plain HTTP or its TLS name's hash.
pub(super) type Key = (SocketAddr, u64);

/// Where a connection returns to, and how long it may idle there.
#[derive(Debug, Clone, Copy)]
pub(super) struct Slot {
    pub(super) key: Key,
    pub(super) max_idle: usize,
    pub(super) idle_timeout: std::time::Duration,
}

/// What returns a connection to the pool once its response is read.
pub(super) struct Returner {
    pub(super) sender: Sender,
    pub(super) slot: Slot,
}

/// What a response holds of its connection until its body is done.
pub(super) enum Lease {
    /// An HTTP/1.1 connection: back to the pool when the body was read to
    /// its end, closed otherwise.
    H1(Returner),
    /// A stream of a shared HTTP/2 connection: freed when dropped.
    H2(#[allow(dead_code, reason = "held for its Drop")] super::h2::StreamSlot),
}

pub(super) fn checkout(addr: Key) -> Option<Sender> {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let conns = idle.get_mut(&addr)?;
        let now = Instant::now();
        while let Some(conn) = conns.pop() {
            if conn.expires > now && !conn.sender.is_closed() {
                return Some(conn.sender);
            }
        }
        None
    })
}

pub(super) fn give_back(returner: Returner) {
    let Returner {
        sender,
        slot: target,
    } = returner;
    if sender.is_closed() || target.max_idle == 0 || DRAINING.with(Cell::get) {
        return;
    }
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let conns = idle.entry(target.key).or_default();
        if conns.len() < target.max_idle {
            conns.push(IdleConn {
                sender,
                expires: Instant::now() + target.idle_timeout,
            });
        }
    });
}

/// Whether this worker is shutting down (nothing more is pooled).
pub(super) fn draining() -> bool {
    DRAINING.with(Cell::get)
}

/// Closes this worker's idle connections that have expired; all of them when
/// `all` (at shutdown). HTTP/2 connections too.
pub fn sweep_idle(all: bool) {
    super::h2::sweep(all);
    let now = Instant::now();
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        idle.retain(|_, conns| {
            conns.retain(|c| !all && c.expires > now && !c.sender.is_closed());
            !conns.is_empty()
        });
    });
}

/// Shutdown: closes this worker's idle connections and pools nothing more,
/// so connections finishing their last response close instead of waiting.
pub fn drain() {
    DRAINING.with(|d| d.set(true));
    sweep_idle(true);
}
