//! Protocol upgrades pass through: the backend's 101 turns both connections
//! into a tunnel, bytes flow both ways, and an idle tunnel is closed.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// A backend that answers `Upgrade: echo` with 101 and then echoes every
/// byte back on the upgraded connection (and a plain request with 200).
async fn echo_upgrade_backend() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    |mut req: http::Request<hyper::body::Incoming>| async move {
                        if !req.headers().contains_key("upgrade") {
                            return Ok(http::Response::new(full("plain")));
                        }
                        let upgrade = hyper::upgrade::on(&mut req);
                        tokio::spawn(async move {
                            if let Ok(upgraded) = upgrade.await {
                                let mut io = hyper_util::rt::TokioIo::new(upgraded);
                                let mut buf = [0u8; 4096];
                                loop {
                                    match io.read(&mut buf).await {
                                        Ok(0) | Err(_) => return,
                                        Ok(n) => {
                                            if io.write_all(&buf[..n]).await.is_err() {
                                                return;
                                            }
                                        }
                                    }
                                }
                            }
                        });
                        Ok::<_, std::convert::Infallible>(
                            http::Response::builder()
                                .status(101)
                                .header("upgrade", "echo")
                                .header("connection", "upgrade")
                                .body(empty())
                                .unwrap(),
                        )
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

/// Connects through the proxy and upgrades; returns the stream after the 101.
async fn upgraded(proxy: std::net::SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nhost: localhost\r\nconnection: Upgrade\r\nupgrade: echo\r\n\r\n",
        )
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo\r\n"), "{head}");
    assert!(head.contains("connection: upgrade\r\n"), "{head}");
    stream
}

/// Sends `message` through the tunnel and checks it comes back whole.
async fn echoes(stream: &mut TcpStream, message: &[u8]) {
    stream.write_all(message).await.unwrap();
    let mut echo = vec![0u8; message.len()];
    stream.read_exact(&mut echo).await.unwrap();
    assert_eq!(echo, message);
}

#[tokio::test]
async fn an_upgraded_connection_carries_a_thousand_messages_both_ways() {
    let backend = echo_upgrade_backend().await;
    let proxy = Proxy::start(&format!(
        "{SERVER}[pools.web]\nbackends = [\"{backend}\"]\n"
    ))
    .await;
    let mut stream = upgraded(proxy.addr).await;
    for i in 0..1000 {
        echoes(&mut stream, format!("message {i:04}\n").as_bytes()).await;
    }
    assert_eq!(proxy.metrics.snapshot().tunnels, 1);
}

#[tokio::test]
async fn an_idle_tunnel_is_closed_after_the_pools_read_timeout() {
    let backend = echo_upgrade_backend().await;
    let proxy = Proxy::start(&format!(
        "{SERVER}[pools.web]\nbackends = [\"{backend}\"]\nread_timeout_ms = 300\n"
    ))
    .await;
    let mut stream = upgraded(proxy.addr).await;
    echoes(&mut stream, b"ping").await;
    let started = Instant::now();
    let (_, closed) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    assert!(closed);
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(proxy.metrics.snapshot().tunnel_idle_closes, 1);
}

#[tokio::test]
async fn a_tunnel_keeps_its_place_under_the_connection_cap_until_it_ends() {
    let backend = echo_upgrade_backend().await;
    let proxy = Proxy::start(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 1\nmax_connections = 1\n[pools.web]\nbackends = [\"{backend}\"]\n"
    ))
    .await;
    let mut stream = upgraded(proxy.addr).await;
    echoes(&mut stream, b"ping").await;
    assert_eq!(
        proxy.metrics.snapshot().client_connections_open,
        1,
        "the tunnel counts"
    );
    a_second_client_waits_until_closed(proxy.addr, stream).await;
}

/// With a cap of one connection held by `stream`, a second client waits in
/// the backlog, and is served once `stream` closes.
async fn a_second_client_waits_until_closed(proxy: std::net::SocketAddr, stream: TcpStream) {
    let waiting = tokio::spawn(async move { Client::h1(proxy).await.get("/").await.status });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "served past the cap");
    drop(stream);
    let status = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_declined_upgrade_leaves_the_connection_counted_under_the_cap() {
    // A backend that ignores `Upgrade` and answers 200.
    let backend = Backend::start("plain").await;
    let proxy = Proxy::start(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 1\nmax_connections = 1\n[pools.web]\nbackends = [\"{}\"]\n",
        backend.addr
    ))
    .await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nhost: localhost\r\nconnection: Upgrade\r\nupgrade: echo\r\n\r\n",
        )
        .await
        .unwrap();
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    // The connection stays open (keep-alive): it still holds the only place.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(proxy.metrics.snapshot().client_connections_open, 1);
    a_second_client_waits_until_closed(proxy.addr, stream).await;
}
