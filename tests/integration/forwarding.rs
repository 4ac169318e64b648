//! What is forwarded, and what the client gets when backends fail.

use std::sync::atomic::Ordering;

use http::Request;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

/// An address nothing listens on (bound, then released).
async fn dead_address() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

fn pool_config(backends: &str, extra: &str) -> String {
    format!("{SERVER}[pools.web]\nbackends = [{backends}]\n{extra}")
}

#[tokio::test]
async fn hop_by_hop_headers_are_dropped_and_forwarded_headers_set() {
    let a = Backend::start("a").await;
    let proxy = Proxy::start(&pool_config(&addresses(&[&a]), "")).await;
    let answer = Client::h1(proxy.addr)
        .await
        .get_with(
            "/headers",
            &[
                ("connection", "x-private"),
                ("x-private", "1"),
                ("x-forwarded-for", "203.0.113.7"),
                ("x-keep", "yes"),
            ],
        )
        .await;
    let body = answer.body;
    assert!(
        body.contains("x-forwarded-for: 127.0.0.1\n"),
        "an untrusted client's X-Forwarded-For is replaced: {body}"
    );
    assert!(body.contains("x-forwarded-proto: http\n"), "{body}");
    assert!(body.contains("x-forwarded-host: localhost\n"), "{body}");
    assert!(body.contains("host: localhost\n"), "{body}");
    assert!(body.contains("x-keep: yes\n"), "{body}");
    assert!(
        !body.contains("x-private"),
        "named in Connection, so hop-by-hop: {body}"
    );
}

#[tokio::test]
async fn an_h2c_request_reaches_the_backend_as_http1_with_its_host() {
    let a = Backend::start("a").await;
    let proxy = Proxy::start(&pool_config(&addresses(&[&a]), "")).await;
    let answer = Client::h2(proxy.addr).await.get("/headers").await;
    assert_eq!(answer.status, 200);
    assert!(answer.body.contains("host: localhost\n"), "{}", answer.body);
}

#[tokio::test]
async fn a_dead_backend_is_retried_on_the_next_candidate_even_for_a_post() {
    let b = Backend::start("b").await;
    let dead = dead_address().await;
    let proxy = Proxy::start(&pool_config(
        &format!("\"{dead}\", \"{}\"", b.addr),
        "max_fails = 0\n",
    ))
    .await;
    let mut client = Client::h1(proxy.addr).await;
    for _ in 0..4 {
        let request = Request::post("/count")
            .header("host", "localhost")
            .body(full("hello"))
            .unwrap();
        let response = client.send(request).await;
        assert_eq!(response.status(), 200);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            &body[..],
            b"5",
            "the body arrived whole at the second candidate"
        );
    }
    let m = proxy.metrics.snapshot();
    assert_eq!(
        m.retries, 2,
        "round robin put the dead backend first twice: {m:?}"
    );
    assert_eq!(m.upstream_connect_errors, 2, "{m:?}");
}

#[tokio::test]
async fn a_backend_that_keeps_failing_is_marked_down_and_skipped() {
    let b = Backend::start("b").await;
    let dead = dead_address().await;
    let proxy = Proxy::start(&pool_config(
        &format!("\"{dead}\", \"{}\"", b.addr),
        "max_fails = 1\nfail_timeout_ms = 60000\n",
    ))
    .await;
    let mut client = Client::h1(proxy.addr).await;
    for _ in 0..6 {
        assert_eq!(client.get("/").await.status, 200);
    }
    assert_eq!(
        proxy.metrics.snapshot().upstream_connect_errors,
        1,
        "tried once, then skipped while down"
    );
    assert_eq!(b.hits.load(Ordering::Relaxed), 6);
}

#[tokio::test]
async fn when_no_backend_can_be_reached_the_client_gets_502_with_a_reason() {
    let (d1, d2) = (dead_address().await, dead_address().await);
    let proxy = Proxy::start(&pool_config(&format!("\"{d1}\", \"{d2}\""), "")).await;
    let answer = Client::h1(proxy.addr).await.get("/").await;
    assert_eq!(answer.status, 502);
    assert!(
        answer
            .body
            .contains("no backend of pool web could be reached (2 tried)"),
        "{}",
        answer.body
    );
    assert_eq!(proxy.metrics.snapshot().bad_gateway, 1);
}

#[tokio::test]
async fn a_backend_slower_than_the_response_timeout_gives_504() {
    let a = Backend::start("a").await;
    let proxy = Proxy::start(&pool_config(
        &addresses(&[&a]),
        "response_timeout_ms = 200\nconnect_timeout_ms = 100\n",
    ))
    .await;
    let answer = Client::h1(proxy.addr).await.get("/slow?ms=3000").await;
    assert_eq!(answer.status, 504, "{}", answer.body);
    assert_eq!(proxy.metrics.snapshot().gateway_timeout, 1);
}

#[tokio::test]
async fn requests_are_routed_by_host_and_then_longest_path_prefix() {
    let [web, api, other] = start_backends(["web", "api", "other"]).await;
    let proxy = Proxy::start(&format!(
        "{SERVER}[pools.web]\nbackends = [{}]\n[pools.api]\nbackends = [{}]\n[pools.other]\nbackends = [{}]\n\
         [[routes]]\npool = \"web\"\n[[routes]]\npath_prefix = \"/api/\"\npool = \"api\"\n\
         [[routes]]\nhost = \"other.example\"\npool = \"other\"\n",
        addresses(&[&web]),
        addresses(&[&api]),
        addresses(&[&other])
    ))
    .await;
    let mut client = Client::h1(proxy.addr).await;
    assert_eq!(client.get("/").await.backend(), "web");
    assert_eq!(client.get("/api/users").await.backend(), "api");
    let answer = client.get_with("/api/users", &[]).await;
    assert_eq!(answer.backend(), "api");
    let mut h2 = Client::h2(proxy.addr).await;
    let request = Request::get("http://other.example:8080/api/x")
        .body(empty())
        .unwrap();
    assert_eq!(h2.send(request).await.headers()["x-backend"], "other");
}

#[tokio::test]
async fn a_request_matching_no_route_gets_404() {
    let a = Backend::start("a").await;
    let proxy = Proxy::start(&format!(
        "{SERVER}[pools.web]\nbackends = [{}]\n[[routes]]\nhost = \"only.example\"\npool = \"web\"\n",
        addresses(&[&a])
    ))
    .await;
    let answer = Client::h1(proxy.addr).await.get("/").await;
    assert_eq!(answer.status, 404);
    assert!(
        answer.body.contains("no route for host \"localhost\""),
        "{}",
        answer.body
    );
}

#[tokio::test]
async fn a_malformed_request_gets_400() {
    let a = Backend::start("a").await;
    let proxy = Proxy::start(&pool_config(&addresses(&[&a]), "")).await;
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost localhost\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        stream.read_to_end(&mut answer),
    )
    .await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(a.hits.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn upstream_connections_are_kept_alive_and_reused() {
    let a = Backend::start("a").await;
    let proxy = Proxy::start(&pool_config(&addresses(&[&a]), "")).await;
    let mut client = Client::h1(proxy.addr).await;
    for _ in 0..20 {
        assert_eq!(client.get("/").await.status, 200);
    }
    // Also after a streamed body that was read to its end.
    let request = Request::get("/stream?bytes=3000000")
        .header("host", "localhost")
        .body(empty())
        .unwrap();
    let streamed = client
        .send(request)
        .await
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(streamed.len(), 3_000_000);
    assert_eq!(client.get("/").await.status, 200);
    assert_eq!(
        proxy.metrics.snapshot().upstream_connects,
        1,
        "22 sequential requests, one backend connection"
    );
}

#[tokio::test]
async fn on_shutdown_in_flight_requests_finish_and_new_connections_are_refused() {
    let a = Backend::start("a").await;
    let proxy = Proxy::start(&pool_config(&addresses(&[&a]), "")).await;
    let addr = proxy.addr;
    let mut client = Client::h1(addr).await;
    let in_flight = tokio::spawn(async move { client.get("/slow?ms=400").await });
    tokio::time::sleep(std::time::Duration::from_millis(100)).await; // the request is at the backend
    proxy.stop().await; // returns once drained
    let answer = in_flight.await.unwrap();
    assert_eq!(
        answer.status, 200,
        "the in-flight request finished: {}",
        answer.body
    );
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener is closed"
    );
}

#[tokio::test]
async fn trailers_pass_through_both_ways_over_http1_chunked() {
    let a = Backend::start("a").await;
    let proxy = Proxy::start(&pool_config(&addresses(&[&a]), "")).await;
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(
            b"POST /trailers HTTP/1.1\r\nhost: localhost\r\ntransfer-encoding: chunked\r\ntrailer: x-checksum\r\nte: trailers\r\nconnection: close\r\n\r\n5\r\nhello\r\n0\r\nx-checksum: abc123\r\n\r\n",
        )
        .await
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).await.unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.contains("x-got: abc123"),
        "the request trailer reached the backend and the response trailer came back: {text}"
    );
}

#[tokio::test]
async fn http2_cookie_fields_reach_an_http1_backend_joined() {
    let a = Backend::start("a").await;
    let proxy = Proxy::start(&pool_config(&addresses(&[&a]), "")).await;
    let answer = Client::h2(proxy.addr)
        .await
        .get_with("/headers", &[("cookie", "a=1"), ("cookie", "b=2")])
        .await;
    assert!(
        answer.body.contains("cookie: a=1; b=2\n"),
        "{}",
        answer.body
    );
    assert_eq!(answer.body.matches("cookie:").count(), 1, "{}", answer.body);
}

#[tokio::test]
async fn forwarding_headers_from_a_trusted_proxy_are_extended_not_replaced() {
    let a = Backend::start("a").await;
    let sent = [
        ("x-forwarded-for", "203.0.113.7"),
        ("x-real-ip", "203.0.113.7"),
        ("forwarded", "for=203.0.113.7"),
        ("x-forwarded-proto", "https"),
    ];
    // Trusted: the test client connects from 127.0.0.1.
    let trusted = web_pool(1, "trusted_proxies = [\"127.0.0.0/8\"]", &[&a], "").await;
    let body = Client::h1(trusted.addr)
        .await
        .get_with("/headers", &sent)
        .await
        .body;
    assert!(
        body.contains("x-forwarded-for: 203.0.113.7, 127.0.0.1\n"),
        "{body}"
    );
    assert!(body.contains("x-real-ip: 203.0.113.7\n"), "{body}");
    assert!(body.contains("forwarded: for=203.0.113.7\n"), "{body}");
    assert!(body.contains("x-forwarded-proto: https\n"), "{body}");

    let untrusted = web_pool(1, "trusted_proxies = [\"10.0.0.0/8\"]", &[&a], "").await;
    let body = Client::h1(untrusted.addr)
        .await
        .get_with("/headers", &sent)
        .await
        .body;
    assert!(body.contains("x-forwarded-for: 127.0.0.1\n"), "{body}");
    assert!(
        !body.contains("x-real-ip") && !body.contains("forwarded: for"),
        "{body}"
    );
    assert!(body.contains("x-forwarded-proto: http\n"), "{body}");
}

#[tokio::test]
async fn an_ipv4_client_on_a_dual_stack_listener_is_seen_as_ipv4() {
    let a = Backend::start("a").await;
    let Ok(proxy) = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        Proxy::try_start(&format!(
            "[server]\nlisten = \"[::]:0\"\nworkers = 1\ntrusted_proxies = [\"127.0.0.0/8\"]\n[pools.web]\nbackends = [{}]\n",
            addresses(&[&a])
        )),
    )
    .await
    .unwrap() else {
        eprintln!("no IPv6 on this machine: skipped");
        return;
    };
    let v4 = std::net::SocketAddr::from(([127, 0, 0, 1], proxy.addr.port()));
    let body = Client::h1(v4)
        .await
        .get_with("/headers", &[("x-forwarded-for", "203.0.113.7")])
        .await
        .body;
    assert!(
        body.contains("x-forwarded-for: 203.0.113.7, 127.0.0.1\n"),
        "trusted as 127.0.0.1, not ::ffff:127.0.0.1: {body}"
    );
}
