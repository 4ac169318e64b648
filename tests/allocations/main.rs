//! Heap allocations per proxied request, counted by a counting global
//! allocator (a count, not a timing: it does not move with machine load).
//!
//! Only the proxy's threads are counted: this test's own thread, which runs
//! the client, the backends and the control plane's tasks, opts out. Two
//! runs of different lengths are subtracted, so start-up, warm-up and
//! whatever background threads do cancel out.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[allow(dead_code, unused_imports)]
#[path = "../integration/support.rs"]
mod support;

#[allow(dead_code, unused_imports)]
#[path = "../integration/pki.rs"]
mod pki;

use support::*;

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Set on the test's own thread: its allocations are not the proxy's.
    static UNCOUNTED: Cell<bool> = const { Cell::new(false) };
}

fn counted() -> bool {
    !UNCOUNTED.try_with(Cell::get).unwrap_or(true)
}

// SAFETY: every call is passed to the system allocator unchanged; the
// count is a side effect that neither allocates nor touches the memory.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if counted() {
            ALLOCATIONS.fetch_add(1, Relaxed);
        }
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if counted() {
            ALLOCATIONS.fetch_add(1, Relaxed);
        }
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // A grown buffer is a new allocation as far as cost goes.
        if counted() {
            ALLOCATIONS.fetch_add(1, Relaxed);
        }
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The most heap allocations (malloc, calloc or realloc) a plain GET may
/// cost the proxy, from the client's request to the backend's response
/// and back, round robin through the built-in Wasm plugin, both sides
/// kept alive. Veer's own code makes none, and the inline HTTP/1.1
/// exchange to the backend none once its connection is warm; the three
/// left are hyper's server side (DHAT, `bench/results/2026-12-04-inline.md`):
/// - a new 8 KiB read buffer per request, and its promotion to a shared
///   buffer (2): the last request's header bytes still point into the old
///   one when hyper reads again;
/// - the backend's `x-backend` header name, copied since it is not a
///   standard one (1), as hyper's client did too.
///
/// Before the inline exchange (hyper's client to the backend) it was 7:
/// that side's read buffer and promotion (2), the hand-off to its
/// connection task, a oneshot (1), and the response body's channel (1).
const MAX_PER_REQUEST: f64 = 3.0;

/// The same over a keep-alive TLS connection: three more, all rustls's
/// (DHAT, `bench/results/2026-12-04-perf.md`): each response record is
/// encrypted into a new buffer, each request's plaintext is taken out as
/// its own buffer, and a vectored write collects its slices into a `Vec`.
const MAX_PER_TLS_REQUEST: f64 = 6.0;

/// One-off allocations that happen to fall inside the measured window
/// (a timer wheel level, a pool's map growing) rather than per request:
/// a few per thousand requests, never one per request.
const ONE_OFFS: f64 = 0.05;

/// Sends `n` GETs on `client` and returns the allocations counted meanwhile.
async fn allocations_for(client: &mut Client, n: u64) -> u64 {
    let before = ALLOCATIONS.load(Relaxed);
    for _ in 0..n {
        let answer = client.get("/").await;
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    ALLOCATIONS.load(Relaxed) - before
}

/// Allocations per request on `client` through `proxy` (then stopped):
/// warmed first (every backend connection open and pooled, every buffer
/// grown), then the difference of a short and a long run.
async fn per_request_on(proxy: Proxy, mut client: Client, label: &str) -> f64 {
    allocations_for(&mut client, 300).await;
    let short = allocations_for(&mut client, 300).await;
    let long = allocations_for(&mut client, 1300).await;
    let per_request = long.saturating_sub(short) as f64 / 1000.0;
    println!(
        "{label}: {per_request:.2} allocations per request ({short} for 300, {long} for 1300)"
    );
    proxy.stop().await;
    per_request
}

/// The proxy's configuration: `extra` sections, then a round-robin pool.
fn config(workers: usize, extra: &str, backends: &[&Backend]) -> String {
    format!(
        "{}{extra}[pools.web]\nstrategy = \"round-robin\"\nbackends = [{}]\n",
        server(workers, ""),
        addresses(backends)
    )
}

async fn allocations_per_request(workers: usize) -> f64 {
    UNCOUNTED.with(|u| u.set(true));
    let [a, b, c] = start_backends(["a", "b", "c"]).await;
    let proxy = Proxy::start(&config(workers, "", &[&a, &b, &c])).await;
    let client = Client::h1(proxy.addr).await;
    per_request_on(proxy, client, &format!("{workers} worker(s)")).await
}

/// The same over TLS: a keep-alive HTTPS connection (rustls on both sides;
/// the client's work is on this test's thread, so it is not counted).
async fn allocations_per_tls_request(workers: usize) -> f64 {
    UNCOUNTED.with(|u| u.set(true));
    let [a, b, c] = start_backends(["a", "b", "c"]).await;
    let pki = pki::Pki::new("allocations");
    let (cert, key) = pki.server("proxy", &["localhost"]);
    let tls = format!(
        "[tls]\nlisten = \"127.0.0.1:0\"\ncertificates = [{{ cert = \"{}\", key = \"{}\" }}]\n",
        cert.display(),
        key.display()
    );
    let proxy = Proxy::start(&config(workers, &tls, &[&a, &b, &c])).await;
    let (sender, _) = pki::https_connection(pki.client_config(), proxy.https.unwrap(), "localhost")
        .await
        .unwrap();
    per_request_on(
        proxy,
        Client::H1(sender),
        &format!("{workers} worker(s), TLS"),
    )
    .await
}

/// One test, so no other test's proxy counts at the same time.
#[tokio::test]
async fn a_proxied_get_costs_no_more_allocations_than_hyper_and_rustls_make_at_one_and_two_workers_and_over_tls()
 {
    let one = allocations_per_request(1).await;
    let two = allocations_per_request(2).await;
    let tls = allocations_per_tls_request(1).await;
    for (workers, per_request) in [(1, one), (2, two)] {
        assert!(
            per_request <= MAX_PER_REQUEST + ONE_OFFS,
            "{workers} worker(s): {per_request:.2} allocations per request, over {MAX_PER_REQUEST}"
        );
    }
    assert!(
        tls <= MAX_PER_TLS_REQUEST + ONE_OFFS,
        "TLS: {tls:.2} allocations per request, over {MAX_PER_TLS_REQUEST}"
    );
}
