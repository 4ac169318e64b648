//! No request lost where it can be saved: backends that close keep-alive
//! connections without saying so, a backend killed under load, and a down
//! backend probed by exactly one request. Each runs with 1 and 2 workers.

use std::sync::atomic::Ordering;
use std::time::Duration;

use http::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

/// `clients` keep-alive clients send `total` GETs between them; returns the
/// number that did not get a 200 (a failed request counts too).
async fn failed_gets(addr: std::net::SocketAddr, clients: usize, total: usize) -> usize {
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            tokio::spawn(async move {
                let mut failed = 0;
                let mut client = Client::h1(addr).await;
                for _ in 0..total / clients {
                    let request = Request::get("/")
                        .header("host", "localhost")
                        .body(empty())
                        .unwrap();
                    let ok = match &mut client {
                        Client::H1(s) => match s.ready().await {
                            Ok(()) => {
                                matches!(s.send_request(request).await, Ok(r) if r.status() == 200)
                            }
                            Err(_) => false,
                        },
                        Client::H2(_) => unreachable!(),
                    };
                    if !ok {
                        failed += 1;
                        client = Client::h1(addr).await;
                    }
                }
                failed
            })
        })
        .collect();
    let mut failed = 0;
    for task in tasks {
        failed += task.await.unwrap();
    }
    failed
}

async fn no_get_is_lost_when_backends_close_after_every_response(workers: usize) {
    let backends = [
        ClosingBackend::start("a").await,
        ClosingBackend::start("b").await,
        ClosingBackend::start("c").await,
    ];
    let list: Vec<String> = backends.iter().map(|b| format!("\"{}\"", b.addr)).collect();
    let proxy = Proxy::start(&format!(
        "{}[pools.web]\nbackends = [{}]\n",
        server(workers, ""),
        list.join(", ")
    ))
    .await;
    let failed = failed_gets(proxy.addr, 16, 2000).await;
    let m = proxy.metrics.snapshot();
    println!(
        "closing backends, {workers} worker(s): 2000 GETs, {failed} failed, {} sent again on a fresh connection",
        m.fresh_connection_retries
    );
    assert_eq!(failed, 0, "{m:?}");
    let served: u64 = backends
        .iter()
        .map(|b| b.hits.load(Ordering::Relaxed))
        .sum();
    assert!(served >= 2000, "every GET reached a backend: {served}");
    assert_eq!(m.bad_gateway, 0, "{m:?}");
}

#[tokio::test]
async fn no_get_is_lost_when_backends_close_after_every_response_with_one_worker() {
    no_get_is_lost_when_backends_close_after_every_response(1).await;
}

#[tokio::test]
async fn no_get_is_lost_when_backends_close_after_every_response_with_two_workers() {
    no_get_is_lost_when_backends_close_after_every_response(2).await;
}

async fn no_get_is_lost_when_a_backend_is_killed_under_load(workers: usize) {
    let [a, b] = start_backends(["a", "b"]).await;
    let mut doomed = ProcessBackend::start("doomed");
    // With active checks on, as a production pool would have them.
    let proxy = Proxy::start(&format!(
        "{}[pools.web]\nbackends = [\"{}\", \"{}\", \"{}\"]\n\
         [pools.web.health]\ninterval_ms = 200\ntimeout_ms = 100\n",
        server(workers, ""),
        a.addr,
        doomed.addr,
        b.addr
    ))
    .await;
    let load = Load::start(proxy.addr, 16, Duration::from_secs(10));
    tokio::time::sleep(Duration::from_millis(700)).await;
    let before_kill = load.ok.load(Ordering::Relaxed);
    doomed.kill();
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let (ok, failed) = load.finish().await;
    println!(
        "one of three backends SIGKILLed, {workers} worker(s): {ok} GETs ok ({before_kill} before the kill), {failed} failed"
    );
    assert_eq!(failed, 0, "{:?}", proxy.metrics.snapshot());
    assert!(
        ok > before_kill + 100,
        "load went on after the kill: {before_kill} → {ok}"
    );
}

#[tokio::test]
async fn no_get_is_lost_when_a_backend_is_killed_under_load_with_one_worker() {
    no_get_is_lost_when_a_backend_is_killed_under_load(1).await;
}

#[tokio::test]
async fn no_get_is_lost_when_a_backend_is_killed_under_load_with_two_workers() {
    no_get_is_lost_when_a_backend_is_killed_under_load(2).await;
}

/// A raw backend on `listener`: for each connection, reads what arrives
/// first, counts it, waits `delay`, then writes `answer` (if any) and closes.
fn raw_backend(
    listener: tokio::net::TcpListener,
    delay: Duration,
    answer: Option<&'static [u8]>,
) -> std::sync::Arc<std::sync::atomic::AtomicU64> {
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                if stream.read(&mut buf).await.unwrap_or(0) > 0 {
                    counter.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(delay).await;
                    if let Some(answer) = answer {
                        let _ = stream.write_all(answer).await;
                    }
                }
            });
        }
    });
    seen
}

/// A backend that reads one request and closes without answering.
async fn mute_backend() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (addr, raw_backend(listener, Duration::ZERO, None))
}

#[tokio::test]
async fn a_post_that_reached_a_backend_is_never_sent_again_but_a_get_is() {
    let (mute, seen) = mute_backend().await;
    let good = Backend::start("good").await;
    let proxy = Proxy::start(&format!(
        "{SERVER}[pools.web]\nbackends = [\"{mute}\", \"{}\"]\nmax_fails = 0\n",
        good.addr
    ))
    .await;
    let mut client = Client::h1(proxy.addr).await;
    let post = Request::post("/count")
        .header("host", "localhost")
        .body(full("x"))
        .unwrap();
    let response = client.send(post).await;
    assert_eq!(
        response.status(),
        502,
        "the mute backend may have acted on it"
    );
    assert_eq!(seen.load(Ordering::Relaxed), 1);
    assert_eq!(
        good.hits.load(Ordering::Relaxed),
        0,
        "a POST is not replayed"
    );

    // Round robin puts the mute backend second now, then first again.
    let mut client = Client::h1(proxy.addr).await;
    for _ in 0..2 {
        assert_eq!(client.get("/").await.status, 200);
    }
    assert_eq!(
        seen.load(Ordering::Relaxed),
        2,
        "the GET went to the mute backend once"
    );
    assert_eq!(
        good.hits.load(Ordering::Relaxed),
        2,
        "and was then answered by the next"
    );
}

async fn exactly_one_request_probes_a_down_backend(workers: usize) {
    let a = Backend::start("a").await;
    // Nothing listens here yet: the backend is down.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let down = listener.local_addr().unwrap();
    drop(listener);
    let proxy = Proxy::start(&format!(
        "{}[pools.web]\nbackends = [\"{}\", \"{down}\"]\nmax_fails = 1\nfail_timeout_ms = 400\n",
        server(workers, ""),
        a.addr
    ))
    .await;
    let mut client = Client::h1(proxy.addr).await;
    for _ in 0..4 {
        assert_eq!(client.get("/").await.status, 200);
    }
    assert_eq!(
        proxy.metrics.snapshot().upstream_connect_errors,
        1,
        "marked down after one failure"
    );
    // It comes back, slowly: whoever probes it waits 500 ms.
    let slow = raw_backend(
        tokio::net::TcpListener::bind(down).await.unwrap(),
        Duration::from_millis(500),
        Some(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nx-backend: slow\r\n\r\nslow"),
    );
    tokio::time::sleep(Duration::from_millis(450)).await;
    // 40 clients with one request each, all sent while the probe is out.
    let answers = load(proxy.addr, 40, 1, "/", &[]).await;
    assert_eq!(
        slow.load(Ordering::Relaxed),
        1,
        "exactly one of 40 requests probed the down backend: {answers:?}"
    );
    assert_eq!(answers.get("slow"), Some(&1), "{answers:?}");
}

#[tokio::test]
async fn exactly_one_request_probes_a_down_backend_with_one_worker() {
    exactly_one_request_probes_a_down_backend(1).await;
}

#[tokio::test]
async fn exactly_one_request_probes_a_down_backend_with_two_workers() {
    exactly_one_request_probes_a_down_backend(2).await;
}
