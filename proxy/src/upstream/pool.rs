//! Idle keep-alive connections, per worker thread, by backend address:
//! hyper's (requests with a body or an upgrade) and the inline exchange's
//! (the rest, `super::h1`), each kept apart since neither can drive the
//! other's.
//!
//! The pool is thread-local: a worker's connections are only used by that
//! worker's tasks (each worker runs a single-threaded event loop), so checkout
//! and return take no lock.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::net::SocketAddr;
use std::time::Instant;

use hyper::client::conn::http1;
use rustc_hash::FxHasher;

use super::h1::Conn;
use crate::http::body::RequestBody;

pub(super) type Sender = http1::SendRequest<RequestBody>;

/// A connection that can wait in the pool.
pub(super) trait Pooled {
    /// Whether it can still carry a request.
    fn is_open(&mut self) -> bool;
}

impl Pooled for Sender {
    fn is_open(&mut self) -> bool {
        !self.is_closed()
    }
}

impl Pooled for Conn {
    fn is_open(&mut self) -> bool {
        Conn::is_open(self)
    }
}

struct Idle<C> {
    conn: C,
    expires: Instant,
}

/// Idle connections by backend. The keys are the configuration's backend
/// addresses, not a client's input, so a fast hash (FxHash) needs no
/// defence against flooding; SipHash cost ~330 instructions a request.
struct IdleSet<C>(HashMap<Key, Vec<Idle<C>>, BuildHasherDefault<FxHasher>>);

impl<C: Pooled> IdleSet<C> {
    fn new() -> IdleSet<C> {
        IdleSet(HashMap::default())
    }

    /// The most recently pooled connection to `key` that is still open;
    /// the expired and closed ones met on the way are closed.
    fn checkout(&mut self, key: Key) -> Option<C> {
        let conns = self.0.get_mut(&key)?;
        let now = Instant::now();
        while let Some(mut idle) = conns.pop() {
            if idle.expires > now && idle.conn.is_open() {
                return Some(idle.conn);
            }
        }
        None
    }

    fn give_back(&mut self, conn: C, slot: Slot) {
        let conns = self.0.entry(slot.key).or_default();
        if conns.len() < slot.max_idle {
            conns.push(Idle {
                conn,
                expires: Instant::now() + slot.idle_timeout,
            });
        }
    }

    /// Closes the expired and closed connections; all when `all`.
    fn sweep(&mut self, all: bool) {
        let now = Instant::now();
        self.0.retain(|_, conns| {
            conns.retain_mut(|c| !all && c.expires > now && c.conn.is_open());
            !conns.is_empty()
        });
    }
}

thread_local! {
    /// This worker's idle connections, by backend address (and TLS name).
    static IDLE: RefCell<IdleSet<Sender>> = RefCell::new(IdleSet::new());
    /// The inline exchange's idle connections, likewise.
    static IDLE_INLINE: RefCell<IdleSet<Conn>> = RefCell::new(IdleSet::new());
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

pub(super) fn checkout(key: Key) -> Option<Sender> {
    IDLE.with(|idle| idle.borrow_mut().checkout(key))
}

pub(super) fn give_back(returner: Returner) {
    let Returner { sender, slot } = returner;
    if sender.is_closed() || slot.max_idle == 0 || draining() {
        return;
    }
    IDLE.with(|idle| idle.borrow_mut().give_back(sender, slot));
}

/// An idle connection of the inline exchange to `key`.
pub(super) fn checkout_inline(key: Key) -> Option<Conn> {
    IDLE_INLINE.with(|idle| idle.borrow_mut().checkout(key))
}

/// An inline exchange's connection, its response read to the end, back to
/// the pool (closed if there is no room, or the worker is shutting down).
pub(super) fn give_back_inline(conn: Conn, slot: Slot) {
    if slot.max_idle == 0 || draining() {
        return;
    }
    IDLE_INLINE.with(|idle| idle.borrow_mut().give_back(conn, slot));
}

/// Whether this worker is shutting down (nothing more is pooled).
pub(super) fn draining() -> bool {
    DRAINING.with(Cell::get)
}

/// Closes this worker's idle connections that have expired; all of them when
/// `all` (at shutdown). HTTP/2 connections too.
pub fn sweep_idle(all: bool) {
    super::h2::sweep(all);
    IDLE.with(|idle| idle.borrow_mut().sweep(all));
    IDLE_INLINE.with(|idle| idle.borrow_mut().sweep(all));
}

/// Shutdown: closes this worker's idle connections and pools nothing more,
/// so connections finishing their last response close instead of waiting.
pub fn drain() {
    DRAINING.with(|d| d.set(true));
    sweep_idle(true);
}
