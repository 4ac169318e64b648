//! HTTP/1.1 to backends, as the inline exchange speaks it: backends that
//! write exact bytes (every way RFC 9112 delimits a body, interim answers,
//! old and broken servers), real clients through the proxy, and what each
//! backend connection carried.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use http::Request;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

/// A backend that answers each request with the next of `answers` (in
/// turn, across connections), closing after each one when `close`.
struct Scripted {
    addr: std::net::SocketAddr,
    connections: Arc<AtomicU64>,
    /// The heads of the requests it read, in order.
    heads: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Scripted {
    async fn start(answers: &'static [&'static [u8]], close: bool) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend = Scripted {
            addr: listener.local_addr().unwrap(),
            connections: Arc::default(),
            heads: Arc::default(),
        };
        let (connections, heads) = (backend.connections.clone(), backend.heads.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                connections.fetch_add(1, Relaxed);
                tokio::spawn(serve(stream, answers, close, heads.clone()));
            }
        });
        backend
    }

    /// How many requests it read.
    fn requests(&self) -> usize {
        self.heads.lock().unwrap().len()
    }
}

async fn serve(
    mut stream: TcpStream,
    answers: &'static [&'static [u8]],
    close: bool,
    heads: Arc<std::sync::Mutex<Vec<String>>>,
) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        while let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head: Vec<u8> = got.drain(..end + 4).collect();
            let n = {
                let mut heads = heads.lock().unwrap();
                heads.push(String::from_utf8_lossy(&head).into_owned());
                heads.len() - 1
            };
            if stream.write_all(answers[n % answers.len()]).await.is_err() || close {
                return;
            }
        }
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

async fn proxy_to(backend: &Scripted, workers: usize) -> Proxy {
    Proxy::start(&format!(
        "{}[pools.web]\nbackends = [\"{}\"]\nmax_fails = 0\nretries = 0\n",
        server(workers, ""),
        backend.addr
    ))
    .await
}

const EVERY_FRAMING: &[&[u8]] = &[
    b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nlength",
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\nwiki\r\n5;x=y\r\npedia\r\n0\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\ninterim",
];

async fn keep_alive_gets_share_one_backend_connection_whatever_the_framing(workers: usize) {
    let backend = Scripted::start(EVERY_FRAMING, false).await;
    let proxy = proxy_to(&backend, workers).await;
    let mut client = Client::h1(proxy.addr).await;
    for round in 0..10 {
        for expected in ["length", "wikipedia", "", "interim"] {
            let answer = client.get("/p?q=1").await;
            let status = if expected.is_empty() { 204 } else { 200 };
            assert_eq!(answer.status, status, "round {round}");
            assert_eq!(answer.body, expected, "round {round}");
        }
    }
    assert_eq!(backend.requests(), 40);
    assert_eq!(
        backend.connections.load(Relaxed),
        1,
        "every answer was read to its end, so its connection carried the next request"
    );
    let first = backend.heads.lock().unwrap()[0].clone();
    assert!(first.starts_with("GET /p?q=1 HTTP/1.1\r\n"), "{first}");
    assert!(first.contains("\r\nhost: localhost\r\n"), "{first}");
}

#[tokio::test]
async fn keep_alive_gets_share_one_backend_connection_whatever_the_framing_with_one_worker() {
    keep_alive_gets_share_one_backend_connection_whatever_the_framing(1).await;
}

#[tokio::test]
async fn keep_alive_gets_share_one_backend_connection_whatever_the_framing_with_two_workers() {
    keep_alive_gets_share_one_backend_connection_whatever_the_framing(2).await;
}

#[tokio::test]
async fn a_chunked_answer_to_a_get_keeps_its_trailers() {
    let backend = Scripted::start(
        &[b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-sum\r\n\r\n9\r\nwikipedia\r\n0\r\nx-sum: 42\r\n\r\n"],
        false,
    )
    .await;
    let proxy = proxy_to(&backend, 1).await;
    let mut client = Client::h1(proxy.addr).await;
    let request = Request::get("/")
        .header("host", "localhost")
        .header("te", "trailers")
        .body(empty())
        .unwrap();
    let response = client.send(request).await;
    assert_eq!(response.status(), 200);
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected
        .trailers()
        .cloned()
        .expect("the trailer came through");
    assert_eq!(trailers["x-sum"], "42");
    assert_eq!(&collected.to_bytes()[..], b"wikipedia");
}

#[tokio::test]
async fn an_http10_answer_without_a_length_is_read_to_its_close_and_not_reused() {
    let backend = Scripted::start(&[b"HTTP/1.0 200 OK\r\nx-old: 1\r\n\r\nold school"], true).await;
    let proxy = proxy_to(&backend, 1).await;
    let mut client = Client::h1(proxy.addr).await;
    for _ in 0..3 {
        let answer = client.get("/").await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body, "old school");
        assert_eq!(answer.headers["x-old"], "1");
    }
    assert_eq!(backend.connections.load(Relaxed), 3);
}

#[tokio::test]
async fn a_head_answer_has_no_body_and_keeps_its_connection() {
    let backend = Scripted::start(
        &[
            b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nwikipedia",
        ],
        false,
    )
    .await;
    let proxy = proxy_to(&backend, 1).await;
    let mut client = Client::h1(proxy.addr).await;
    let head = Request::head("/")
        .header("host", "localhost")
        .body(empty())
        .unwrap();
    let response = client.send(head).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-length"], "9");
    assert!(
        response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .is_empty()
    );
    let answer = client.get("/").await;
    assert_eq!(answer.body, "wikipedia");
    assert_eq!(backend.connections.load(Relaxed), 1);
}

#[tokio::test]
async fn a_backend_that_breaks_http_gets_a_502_that_says_how() {
    for (answer, says) in [
        (
            &b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\ncontent-length: 5\r\n\r\nabcd"[..],
            "Content-Length is not valid",
        ),
        (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "not valid HTTP/1.1"),
        (
            b"HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
            "Transfer-Encoding in an HTTP/1.0 response",
        ),
    ] {
        let answers: &'static [&'static [u8]] = Box::leak(Box::new([answer]));
        let backend = Scripted::start(answers, false).await;
        let proxy = proxy_to(&backend, 1).await;
        let answer = Client::h1(proxy.addr).await.get("/").await;
        assert_eq!(answer.status, 502, "{}", answer.body);
        assert!(answer.body.contains(says), "{}", answer.body);
    }
}

#[tokio::test]
async fn a_body_cut_short_closes_the_clients_connection_and_the_next_request_is_served() {
    let backend = Scripted::start(
        &[
            b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nwhole",
        ],
        true,
    )
    .await;
    let proxy = proxy_to(&backend, 1).await;
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    client
        .write_all(b"GET / HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    let (got, closed) = read_until_closed(&mut client, Duration::from_secs(5)).await;
    assert!(closed, "the client hears of it at once: {got:?}");
    // Whatever of the head and the five bytes went out, the client can
    // tell: the connection closed short of the ten bytes announced.
    let body = got.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    assert!(body.len() < 10, "{got:?}");
    let answer = Client::h1(proxy.addr).await.get("/").await;
    assert_eq!(
        (answer.status.as_u16(), answer.body.as_str()),
        (200, "whole")
    );
    assert_eq!(
        proxy.metrics.snapshot().upstream_body_errors,
        1,
        "counted as the backend's body breaking"
    );
}

#[tokio::test]
async fn bytes_after_a_body_keep_its_connection_out_of_the_pool() {
    let backend = Scripted::start(
        &[b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokJUNK"],
        false,
    )
    .await;
    let proxy = proxy_to(&backend, 1).await;
    let mut client = Client::h1(proxy.addr).await;
    for _ in 0..3 {
        let answer = client.get("/").await;
        assert_eq!((answer.status.as_u16(), answer.body.as_str()), (200, "ok"));
    }
    assert_eq!(
        backend.connections.load(Relaxed),
        3,
        "a connection with unasked-for bytes on it carries nothing more"
    );
}

#[tokio::test]
async fn an_idle_connection_the_backend_closed_is_not_used_again() {
    // The backend answers with a length, then closes a moment later, as a
    // server with a short keep-alive timeout does: the proxy sees the close
    // on the idle connection and opens a new one, without a failed try.
    let (addr, connections) = scripted_by(|mut stream| async move {
        if read_head(&mut stream).await {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let proxy = Proxy::start(&format!(
        "{SERVER}[pools.web]\nbackends = [\"{addr}\"]\nmax_fails = 0\n"
    ))
    .await;
    let mut client = Client::h1(proxy.addr).await;
    for _ in 0..3 {
        assert_eq!(client.get("/").await.body, "ok");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(connections.load(Relaxed), 3);
    assert_eq!(
        proxy.metrics.snapshot().fresh_connection_retries,
        0,
        "the closed connection was seen before a request was written to it"
    );
}

/// A backend that answers every request 503.
const UNAVAILABLE: &[&[u8]] =
    &[b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nbusy"];
const OK: &[&[u8]] = &[b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"];

/// A backend that answers 503 and one that answers 200, behind a proxy
/// that retries a 503 once (`retry.on_statuses`), round robin.
async fn busy_and_good_retrying_503() -> (Scripted, Scripted, Proxy) {
    let busy = Scripted::start(UNAVAILABLE, false).await;
    let good = Scripted::start(OK, false).await;
    let proxy = Proxy::start(&format!(
        "{SERVER}[pools.web]\nbackends = [\"{}\", \"{}\"]\nmax_fails = 0\nretries = 1\n\
         [pools.web.retry]\non_statuses = [503]\n",
        busy.addr, good.addr
    ))
    .await;
    (busy, good, proxy)
}

#[tokio::test]
async fn a_get_answered_with_a_status_to_retry_reaches_the_next_backend_with_its_head_whole() {
    let (busy, good, proxy) = busy_and_good_retrying_503().await;
    let mut client = Client::h1(proxy.addr).await;
    for n in 0..6 {
        let trace = format!("t{n}");
        let answer = client
            .get_with(&format!("/p/{n}?q=1"), &[("x-trace", &trace)])
            .await;
        assert_eq!(
            (answer.status.as_u16(), answer.body.as_str()),
            (200, "ok"),
            "request {n}"
        );
    }
    assert!(
        busy.requests() >= 3,
        "round robin sent half of them to the busy one first"
    );
    let heads = good.heads.lock().unwrap().clone();
    assert_eq!(
        heads.len(),
        6,
        "each request reached the good backend once: {heads:#?}"
    );
    for n in 0..6 {
        let head = heads
            .iter()
            .find(|h| h.starts_with(&format!("GET /p/{n}?q=1 HTTP/1.1\r\n")))
            .unwrap_or_else(|| panic!("request {n} at the good backend: {heads:#?}"));
        assert!(head.contains(&format!("\r\nx-trace: t{n}\r\n")), "{head}");
        assert!(head.contains("\r\nhost: localhost\r\n"), "{head}");
    }
}

#[tokio::test]
async fn a_post_answered_with_a_status_to_retry_is_passed_on_as_it_is() {
    let (_busy, good, proxy) = busy_and_good_retrying_503().await;
    let mut client = Client::h1(proxy.addr).await;
    let mut statuses = Vec::new();
    for _ in 0..2 {
        let post = Request::post("/")
            .header("host", "localhost")
            .header("content-length", "0")
            .body(empty())
            .unwrap();
        let response = client.send(post).await;
        statuses.push(response.status().as_u16());
        response.into_body().collect().await.unwrap();
    }
    statuses.sort();
    assert_eq!(
        statuses,
        [200, 503],
        "the POST the busy backend answered was not sent again"
    );
    assert_eq!(good.requests(), 1);
}

#[tokio::test]
async fn an_http10_answer_is_not_kept_alive_unless_it_says_so() {
    let closes = Scripted::start(
        &[b"HTTP/1.0 200 OK\r\ncontent-length: 10\r\n\r\nold school"],
        false,
    )
    .await;
    let keeps = Scripted::start(
        &[b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 10\r\n\r\nold school"],
        false,
    )
    .await;
    for (backend, connections) in [(&closes, 3), (&keeps, 1)] {
        let proxy = proxy_to(backend, 1).await;
        let mut client = Client::h1(proxy.addr).await;
        for _ in 0..3 {
            assert_eq!(client.get("/").await.body, "old school");
        }
        assert_eq!(
            backend.connections.load(Relaxed),
            connections,
            "HTTP/1.0 closes after each answer but for Connection: keep-alive"
        );
    }
}

/// A backend that runs `script` on each connection it accepts; returns its
/// address and how many connections it took.
async fn scripted_by<F, Fut>(script: F) -> (std::net::SocketAddr, Arc<AtomicU64>)
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicU64::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counted.fetch_add(1, Relaxed);
            tokio::spawn(script(stream));
        }
    });
    (addr, connections)
}

/// Reads one request head off `stream` (false if it closed first).
async fn read_head(stream: &mut TcpStream) -> bool {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    true
}

#[tokio::test]
async fn bytes_that_arrive_on_an_idle_connection_keep_it_out_of_use() {
    let (addr, connections) = scripted_by(|mut stream| async move {
        if read_head(&mut stream).await {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await;
            tokio::time::sleep(Duration::from_millis(30)).await;
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\n\r\nunasked").await;
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    })
    .await;
    let proxy = Proxy::start(&format!(
        "{SERVER}[pools.web]\nbackends = [\"{addr}\"]\nmax_fails = 0\n"
    ))
    .await;
    let mut client = Client::h1(proxy.addr).await;
    for _ in 0..2 {
        assert_eq!(client.get("/").await.body, "ok");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        connections.load(Relaxed),
        2,
        "the connection that received an answer nobody asked for was not used again"
    );
}

#[tokio::test]
async fn a_get_that_timed_out_after_it_was_sent_reaches_the_next_backend_whole() {
    // The first backend reads the request and never answers.
    let (silent, _) = scripted_by(|mut stream| async move {
        read_head(&mut stream).await;
        tokio::time::sleep(Duration::from_secs(10)).await;
    })
    .await;
    let good = Scripted::start(OK, false).await;
    let proxy = Proxy::start(&format!(
        "{SERVER}[pools.web]\nbackends = [\"{silent}\", \"{}\"]\nmax_fails = 0\nretries = 1\n\
         response_timeout_ms = 300\nconnect_timeout_ms = 300\n",
        good.addr
    ))
    .await;
    let mut client = Client::h1(proxy.addr).await;
    for n in 0..2 {
        let answer = client.get_with("/t?n=1", &[("x-trace", "kept")]).await;
        assert_eq!(
            (answer.status.as_u16(), answer.body.as_str()),
            (200, "ok"),
            "request {n}"
        );
    }
    let heads = good.heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 2, "{heads:#?}");
    for head in &heads {
        assert!(head.starts_with("GET /t?n=1 HTTP/1.1\r\n"), "{head}");
        assert!(head.contains("\r\nx-trace: kept\r\n"), "{head}");
    }
}

#[tokio::test]
async fn an_interim_answer_and_the_final_one_may_come_apart() {
    let (addr, _) = scripted_by(|mut stream| async move {
        while read_head(&mut stream).await {
            let _ = stream
                .write_all(b"HTTP/1.1 103 Early Hints\r\nlink: </s.css>\r\n\r\n")
                .await;
            tokio::time::sleep(Duration::from_millis(30)).await;
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfinal")
                .await;
        }
    })
    .await;
    let proxy = Proxy::start(&format!(
        "{SERVER}[pools.web]\nbackends = [\"{addr}\"]\nmax_fails = 0\n"
    ))
    .await;
    let mut client = Client::h1(proxy.addr).await;
    for _ in 0..2 {
        let answer = client.get("/").await;
        assert_eq!(
            (answer.status.as_u16(), answer.body.as_str()),
            (200, "final")
        );
    }
}

#[tokio::test]
async fn a_reason_phrase_of_the_backends_own_reaches_the_client() {
    let backend = Scripted::start(
        &[b"HTTP/1.1 599 Network Connect Timeout\r\ncontent-length: 0\r\n\r\n"],
        false,
    )
    .await;
    let proxy = proxy_to(&backend, 1).await;
    let (status, text) = raw_status(
        proxy.addr,
        b"GET / HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 599, "{text}");
    assert!(
        text.starts_with("HTTP/1.1 599 Network Connect Timeout\r\n"),
        "{text}"
    );
}
