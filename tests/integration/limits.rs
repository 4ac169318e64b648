//! Limits and timers: a flood of silent connections cannot lock clients out,
//! idle connections are closed, oversized heads and bodies get the right
//! 4xx, stalled bodies are cut off in both directions, and the response timer
//! starts when the upload ends.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use http::Request;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

async fn a_flood_of_silent_connections_does_not_lock_clients_out(workers: usize) {
    const CAP: usize = 40;
    let a = Backend::start("a").await;
    let proxy = Proxy::start(&format!(
        "{}[pools.web]\nbackends = [{}]\n",
        server(
            workers,
            &format!("max_connections = {CAP}\nfirst_request_timeout_ms = 400\nbacklog = 512")
        ),
        addresses(&[&a])
    ))
    .await;
    // CAP + 200 connections that never send a byte. Those past the cap wait
    // in the backlog until earlier ones are closed by the first-byte timer.
    let mut silent = Vec::new();
    for _ in 0..CAP + 200 {
        silent.push(TcpStream::connect(proxy.addr).await.unwrap());
    }
    let started = Instant::now();
    let mut client = Client::h1(proxy.addr).await;
    let answer = tokio::time::timeout(Duration::from_secs(10), client.get("/"))
        .await
        .expect("a real client is served once the silent ones time out");
    let waited = started.elapsed();
    assert_eq!(answer.status, 200);
    let m = proxy.metrics.snapshot();
    println!(
        "{} silent connections, cap {CAP}, {workers} worker(s): a real client waited {waited:?}; peak open {}",
        CAP + 200,
        m.client_connections_peak
    );
    assert!(
        m.client_connections_peak <= CAP as u64,
        "the cap held: {m:?}"
    );
    assert!(m.client_first_request_timeouts >= CAP as u64, "{m:?}");
    // Every silent connection is closed by the proxy.
    for mut stream in silent.drain(..20) {
        let (_, closed) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
        assert!(closed, "a silent connection was closed");
    }
}

#[tokio::test]
async fn a_flood_of_silent_connections_does_not_lock_clients_out_with_one_worker() {
    a_flood_of_silent_connections_does_not_lock_clients_out(1).await;
}

#[tokio::test]
async fn a_flood_of_silent_connections_does_not_lock_clients_out_with_two_workers() {
    a_flood_of_silent_connections_does_not_lock_clients_out(2).await;
}

#[tokio::test]
async fn an_idle_http1_connection_is_closed_after_the_keepalive_timeout() {
    let a = Backend::start("a").await;
    let proxy = web_pool(1, "keepalive_timeout_ms = 300", &[&a], "").await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let (text, closed) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(closed, "closed when idle");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(proxy.metrics.snapshot().client_idle_closes, 1);
}

#[tokio::test]
async fn an_idle_http2_connection_gets_goaway_after_the_keepalive_timeout() {
    let a = Backend::start("a").await;
    let proxy = web_pool(1, "keepalive_timeout_ms = 300", &[&a], "").await;
    let io = hyper_util::rt::TokioIo::new(TcpStream::connect(proxy.addr).await.unwrap());
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    sender.ready().await.unwrap();
    let response = sender
        .send_request(Request::get("http://localhost/").body(empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    drop(response);
    let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
    assert!(ended.is_ok(), "the proxy ended the idle HTTP/2 connection");
    assert!(sender.is_closed());
}

#[tokio::test]
async fn a_request_head_that_never_ends_is_cut_off() {
    let a = Backend::start("a").await;
    let proxy = web_pool(1, "header_read_timeout_ms = 300", &[&a], "").await;
    // First request fine, then a second head that stops half-way.
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: loc")
        .await
        .unwrap();
    let started = Instant::now();
    let (_, closed) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    assert!(closed);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(proxy.metrics.snapshot().client_header_timeouts, 1);
}

#[tokio::test]
async fn too_many_or_too_large_headers_get_431_over_http1_and_http2() {
    let a = Backend::start("a").await;
    let proxy = web_pool(1, "max_headers = 20\nmax_header_bytes = 4096", &[&a], "").await;
    let many: String = (0..30).map(|i| format!("x-h{i}: {i}\r\n")).collect();
    let (status, _) = raw_status(
        proxy.addr,
        format!("GET / HTTP/1.1\r\nhost: localhost\r\n{many}\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status, 431, "too many fields over HTTP/1.1");
    let big = "v".repeat(10_000);
    let (status, _) = raw_status(
        proxy.addr,
        format!("GET / HTTP/1.1\r\nhost: localhost\r\nx-big: {big}\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status, 431, "too large a head over HTTP/1.1");

    let mut h2 = Client::h2(proxy.addr).await;
    let headers: Vec<(String, String)> = (0..30)
        .map(|i| (format!("x-h{i}"), i.to_string()))
        .collect();
    let refs: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        h2.get_with("/", &refs).await.status,
        431,
        "too many fields over HTTP/2"
    );
    let mut h2 = Client::h2(proxy.addr).await;
    let medium = "v".repeat(3_000);
    let refs = [("x-a", medium.as_str()), ("x-b", medium.as_str())];
    assert_eq!(
        h2.get_with("/", &refs).await.status,
        431,
        "too large a head over HTTP/2"
    );
    assert_eq!(
        a.hits.load(Ordering::Relaxed),
        0,
        "none reached the backend"
    );
}

#[tokio::test]
async fn a_body_over_max_body_bytes_gets_413_declared_or_streamed() {
    let a = Backend::start("a").await;
    let proxy = web_pool(1, "max_body_bytes = 1000", &[&a], "").await;
    let (status, _) = raw_status(
        proxy.addr,
        b"POST /count HTTP/1.1\r\nhost: localhost\r\ncontent-length: 5000\r\n\r\n",
    )
    .await;
    assert_eq!(status, 413, "declared too large");
    assert_eq!(a.hits.load(Ordering::Relaxed), 0);
    let chunk = format!("{:x}\r\n{}\r\n", 1500, "x".repeat(1500));
    let (status, _) = raw_status(
        proxy.addr,
        format!("POST /count?delay_ms=200 HTTP/1.1\r\nhost: localhost\r\ntransfer-encoding: chunked\r\n\r\n{chunk}0\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status, 413, "streamed past the limit");
    let mut client = Client::h1(proxy.addr).await;
    let small = Request::post("/count")
        .header("host", "localhost")
        .body(full("x".repeat(900)))
        .unwrap();
    let response = client.send(small).await;
    assert_eq!(response.status(), 200, "under the limit");
}

#[tokio::test]
async fn a_stalled_upload_gets_408_and_does_not_count_against_the_backend() {
    let a = Backend::start("a").await;
    let proxy = web_pool(1, "client_body_timeout_ms = 300", &[&a], "max_fails = 1\n").await;
    let started = Instant::now();
    let (status, text) = raw_status(
        proxy.addr,
        b"POST /count HTTP/1.1\r\nhost: localhost\r\ncontent-length: 100\r\n\r\nonly ten..",
    )
    .await;
    assert_eq!(status, 408, "{text}");
    assert!(started.elapsed() < Duration::from_secs(3));
    let m = proxy.metrics.snapshot();
    assert_eq!(m.client_body_timeouts, 1, "{m:?}");
    assert_eq!(m.bad_gateway, 0, "{m:?}");
    // The backend was not marked down for the client's stall.
    assert_eq!(Client::h1(proxy.addr).await.get("/").await.status, 200);
}

#[tokio::test]
async fn a_malformed_chunk_from_the_client_gets_400_not_502() {
    let a = Backend::start("a").await;
    let proxy = Proxy::start(&format!(
        "{SERVER}[pools.web]\nbackends = [{}]\n",
        addresses(&[&a])
    ))
    .await;
    let (status, text) = raw_status(
        proxy.addr,
        b"POST /count HTTP/1.1\r\nhost: localhost\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(status, 400, "{text}");
    let m = proxy.metrics.snapshot();
    assert_eq!(m.bad_gateway, 0, "not the backend's fault: {m:?}");
}

#[tokio::test]
async fn a_slow_upload_to_a_fast_backend_is_not_timed_out_by_the_response_timer() {
    let a = Backend::start("a").await;
    let proxy = Proxy::start(&format!(
        "{SERVER}[pools.web]\nbackends = [{}]\nresponse_timeout_ms = 300\nconnect_timeout_ms = 100\n",
        addresses(&[&a])
    ))
    .await;
    // 10 chunks, 120 ms apart: the upload takes 1.2 s, 4× the response timer.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(120)).await;
            tx.send(bytes::Bytes::from_static(b"0123456789"))
                .await
                .unwrap();
        }
    });
    let body = ChannelBody(rx).map_err(std::io::Error::other).boxed();
    let mut client = Client::h1(proxy.addr).await;
    let request = Request::post("/count")
        .header("host", "localhost")
        .body(body)
        .unwrap();
    let response = client.send(request).await;
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"100");
}

#[tokio::test]
async fn a_backend_that_sends_no_head_after_the_upload_gets_504() {
    let a = Backend::start("a").await;
    let proxy = Proxy::start(&format!(
        "{SERVER}[pools.web]\nbackends = [{}]\nresponse_timeout_ms = 300\nconnect_timeout_ms = 100\n",
        addresses(&[&a])
    ))
    .await;
    let mut client = Client::h1(proxy.addr).await;
    let request = Request::post("/count?delay_ms=2000")
        .header("host", "localhost")
        .body(full("x"))
        .unwrap();
    let started = Instant::now();
    assert_eq!(client.send(request).await.status(), 504);
    assert!(started.elapsed() < Duration::from_millis(1500));
}

#[tokio::test]
async fn a_backend_body_that_stalls_closes_the_client_stream_and_is_counted() {
    // Sends its head and half its body, then nothing.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf.")
                    .await;
                tokio::time::sleep(Duration::from_secs(30)).await;
            });
        }
    });
    let proxy = Proxy::start(&format!(
        "{SERVER}[pools.web]\nbackends = [\"{addr}\"]\nread_timeout_ms = 300\n"
    ))
    .await;
    let started = Instant::now();
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    let (text, closed) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("half."), "{text}");
    assert!(closed, "the client's stream was closed");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(proxy.metrics.snapshot().upstream_body_timeouts, 1);
}

#[tokio::test]
async fn connections_per_backend_are_capped_and_a_full_pool_gets_503() {
    let a = Backend::start_with("a", Duration::from_millis(300)).await;
    let proxy = Proxy::start(&format!(
        "{SERVER}[pools.web]\nbackends = [{}]\nmax_connections_per_backend = 2\n",
        addresses(&[&a])
    ))
    .await;
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let addr = proxy.addr;
            tokio::spawn(async move { Client::h1(addr).await.get("/").await.status.as_u16() })
        })
        .collect();
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.unwrap());
    }
    statuses.sort();
    assert_eq!(statuses, vec![200, 200, 503, 503, 503, 503]);
    assert_eq!(a.concurrency.max.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_client_that_stops_reading_its_response_is_cut_off_and_frees_the_backend() {
    let a = Backend::start("a").await;
    let proxy = web_pool(1, "client_send_timeout_ms = 500", &[&a], "").await;
    // Ask for 256 MiB and read none of it.
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"GET /stream?bytes=268435456 HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if proxy.metrics.snapshot().client_send_timeouts == 1 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            proxy.metrics.snapshot()
        );
    }
    let produced = a.produced.load(Ordering::Relaxed);
    assert!(
        produced < 64 << 20,
        "the backend was stopped early: {produced} bytes"
    );
    // The proxy still serves others.
    assert_eq!(Client::h1(proxy.addr).await.get("/").await.status, 200);
}

#[tokio::test]
async fn an_http2_client_that_grants_no_window_is_cut_off_and_frees_the_backend() {
    let a = Backend::start("a").await;
    let proxy = web_pool(1, "client_send_timeout_ms = 500", &[&a], "").await;
    // SETTINGS_INITIAL_WINDOW_SIZE = 0: the proxy may send no DATA at all.
    let io = hyper_util::rt::TokioIo::new(TcpStream::connect(proxy.addr).await.unwrap());
    let (mut sender, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .initial_stream_window_size(0)
            .handshake(io)
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    sender.ready().await.unwrap();
    let response = sender
        .send_request(
            Request::get("http://localhost/stream?bytes=268435456")
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let started = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(10), conn).await;
    assert!(ended.is_ok(), "the connection was closed");
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(proxy.metrics.snapshot().client_send_timeouts, 1);
    drop(response);
    assert_eq!(Client::h1(proxy.addr).await.get("/").await.status, 200);
}
