//! Bodies stream through in both directions; the proxy never holds one whole.
//!
//! How "not held" is shown: the far end does not read for a while, and we
//! check how far the near end got. A proxy that buffered whole bodies would
//! let all 64 MiB through; a streaming one is stopped by backpressure after
//! what socket buffers and a few hyper buffers hold.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::Request;
use http_body_util::BodyExt;

use crate::support::*;

const BODY: u64 = 64 << 20;
/// Most that may be in flight between the two ends: kernel socket buffers on
/// loopback (up to a few MiB each, four sockets) plus hyper's buffers.
const IN_FLIGHT_BOUND: u64 = 32 << 20;

async fn one_backend_proxy() -> (Backend, Proxy) {
    let a = Backend::start("a").await;
    let proxy = Proxy::start(&format!(
        "{SERVER}[pools.web]\nbackends = [{}]\n",
        addresses(&[&a])
    ))
    .await;
    (a, proxy)
}

#[tokio::test]
async fn a_64_mib_upload_streams_to_the_backend_under_backpressure() {
    let (_a, proxy) = one_backend_proxy().await;
    let fed = Arc::new(AtomicU64::new(0));
    let body = feed(BODY, fed.clone())
        .map_err(std::io::Error::other)
        .boxed();
    let mut client = Client::h1(proxy.addr).await;
    // The backend waits 1.5 s before reading the body.
    let request = Request::post("/count?delay_ms=1500")
        .header("host", "localhost")
        .body(body)
        .unwrap();
    let response = tokio::spawn(async move { client.send(request).await });
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let early = fed.load(Ordering::Relaxed);
    eprintln!(
        "upload: {:.1} MiB in flight while the backend did not read",
        early as f64 / 1048576.0
    );
    assert!(early > 0, "the upload started");
    assert!(
        early < IN_FLIGHT_BOUND,
        "{} MiB got in while nobody read: the proxy is buffering",
        early >> 20
    );
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    let count = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(String::from_utf8_lossy(&count), BODY.to_string());
}

#[tokio::test]
async fn a_64_mib_download_streams_to_the_client_under_backpressure() {
    let (a, proxy) = one_backend_proxy().await;
    let mut client = Client::h1(proxy.addr).await;
    let request = Request::get(format!("/stream?bytes={BODY}"))
        .header("host", "localhost")
        .body(empty())
        .unwrap();
    let response = client.send(request).await;
    assert_eq!(response.status(), 200);
    // Headers are here; the body is not read for a second.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let early = a.produced.load(Ordering::Relaxed);
    eprintln!(
        "download: {:.1} MiB in flight while the client did not read",
        early as f64 / 1048576.0
    );
    assert!(early > 0, "the download started");
    assert!(
        early < IN_FLIGHT_BOUND,
        "{} MiB left the backend while nobody read: the proxy is buffering",
        early >> 20
    );
    let mut body = response.into_body();
    let mut total = 0u64;
    while let Some(frame) = body.frame().await {
        total += frame.unwrap().into_data().map_or(0, |d| d.len() as u64);
    }
    assert_eq!(total, BODY);
}

#[tokio::test]
async fn an_h2c_upload_is_echoed_back_whole() {
    let (_a, proxy) = one_backend_proxy().await;
    let mut client = Client::h2(proxy.addr).await;
    const SIZE: u64 = 8 << 20;
    let body = feed(SIZE, Arc::default())
        .map_err(std::io::Error::other)
        .boxed();
    let response = client
        .send(Request::post("http://localhost/echo").body(body).unwrap())
        .await;
    assert_eq!(response.status(), 200);
    let echoed = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(echoed.len() as u64, SIZE);
    assert!(echoed.iter().all(|&b| b == b'x'));
}
