//! The admin listener: metrics that add up to what was sent, plugin failures
//! in their counters, draining a backend, the token on a non-loopback bind,
//! readiness, and the demo's admin URL.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;

use crate::support::*;

/// `GET path` on the admin listener: (status, body).
async fn admin_get(admin: SocketAddr, path: &str) -> (u16, String) {
    let answer = Client::h1(admin).await.get(path).await;
    (answer.status.as_u16(), answer.body)
}

/// `POST path` on the admin listener with an optional bearer token.
async fn admin_post(admin: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    let mut request = http::Request::post(path).header("host", "localhost");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let response = Client::h1(admin)
        .await
        .send(request.body(empty()).unwrap())
        .await;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The value of the sample `name{labels}` in Prometheus text (labels as
/// written, in order), or 0 when absent.
fn sample(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn after_a_known_burst_the_per_backend_counters_equal_what_was_sent() {
    let [a, b, c] = start_backends(["a", "b", "c"]).await;
    let proxy = web_pool(2, "", &[&a, &b, &c], "").await;
    let admin = proxy.admin.expect("an admin listener by default");
    let sent = load(proxy.addr, 3, 30, "/", &[]).await;
    assert_eq!(sent.values().sum::<usize>(), 90);
    let (status, text) = admin_get(admin, "/metrics").await;
    assert_eq!(status, 200);
    for backend in [&a, &b, &c] {
        let series = format!(
            "veer_backend_responses_total{{pool=\"web\",backend=\"{}\",class=\"2xx\"}}",
            backend.addr
        );
        assert_eq!(
            sample(&text, &series),
            sent[&backend.name] as u64,
            "{series} in\n{text}"
        );
    }
    assert_eq!(
        sample(
            &text,
            "veer_route_requests_total{route=\"*/\",pool=\"web\",class=\"2xx\"}"
        ),
        90
    );
    assert_eq!(sample(&text, "veer_requests_total"), 90);
    assert_eq!(
        sample(
            &text,
            "veer_plugin_select_seconds_count{pool=\"web\",plugin=\"round-robin\"}"
        ),
        90
    );
    assert!(text.contains("# TYPE veer_backend_response_seconds histogram"));
    // The JSON API agrees.
    let (status, json) = admin_get(admin, "/api/pools").await;
    assert_eq!(status, 200);
    let pools: serde_json::Value = serde_json::from_str(&json).unwrap();
    let backends = pools["pools"][0]["backends"].as_array().unwrap();
    let total: u64 = backends
        .iter()
        .map(|b| b["responses"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 90, "{json}");
    assert!(backends.iter().all(|b| b["health"] == "up"), "{json}");
}

#[tokio::test]
async fn a_trap_in_a_plugin_shows_up_in_the_trap_and_fallback_counters() {
    let [a, b] = start_backends(["a", "b"]).await;
    let proxy = Proxy::start(&format!(
        "{SERVER}[plugins]\nload = [\"{}\"]\n\
         [pools.web]\nstrategy = \"misbehave\"\nstrategy_config = {{ mode = \"trap\" }}\nbackends = [{}]\n",
        test_plugin("misbehave"),
        addresses(&[&a, &b])
    ))
    .await;
    let admin = proxy.admin.unwrap();
    let mut client = Client::h1(proxy.addr).await;
    for _ in 0..10 {
        assert_eq!(client.get("/").await.status, 200);
    }
    let (_, text) = admin_get(admin, "/metrics").await;
    let event = |e: &str| {
        sample(
            &text,
            &format!("veer_plugin_events_total{{pool=\"web\",plugin=\"misbehave\",event=\"{e}\"}}"),
        )
    };
    assert!(event("trap") >= 1, "{text}");
    assert_eq!(
        event("fallback"),
        10,
        "every request was ordered by the fallback"
    );
    assert_eq!(sample(&text, "veer_plugin_traps_total"), event("trap"));
    let (_, plugins) = admin_get(admin, "/api/plugins").await;
    let plugins: serde_json::Value = serde_json::from_str(&plugins).unwrap();
    let plugin = &plugins["plugins"][0];
    assert_eq!(plugin["name"], "misbehave");
    assert_eq!(plugin["kind"], "file");
    assert_eq!(plugin["fallbacks"], 10);
    assert_eq!(plugin["sha256"].as_str().unwrap().len(), 64);
}

#[tokio::test]
async fn draining_a_backend_stops_new_traffic_to_it_at_once_and_its_in_flight_requests_finish() {
    let [a, b] = start_backends(["a", "b"]).await;
    let proxy = web_pool(2, "", &[&a, &b], "").await;
    let admin = proxy.admin.unwrap();
    // A slow request in flight on `a` (round robin: the first goes to a).
    let addr = proxy.addr;
    let slow = tokio::spawn(async move { Client::h1(addr).await.get("/slow?ms=800").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        a.concurrency.max.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    let drained_at = Instant::now();
    let (status, body) = admin_post(
        admin,
        &format!("/api/pools/web/backends/{}/drain", a.addr),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"in_flight\":1"), "{body}");
    let before = a.hits.load(std::sync::atomic::Ordering::SeqCst);
    let seen = load(proxy.addr, 2, 20, "/", &[]).await;
    assert_eq!(seen.get("a"), None, "{seen:?}");
    assert!(drained_at.elapsed() < Duration::from_secs(1));
    assert_eq!(a.hits.load(std::sync::atomic::Ordering::SeqCst), before);
    let answer = slow.await.unwrap();
    assert_eq!((answer.status.as_u16(), answer.backend()), (200, "a"));
    let (_, pools) = admin_get(admin, "/api/pools").await;
    assert!(pools.contains("\"health\":\"drained\""), "{pools}");
    // Undrained, it takes requests again.
    let (status, _) = admin_post(
        admin,
        &format!("/api/pools/web/backends/{}/undrain", a.addr),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let seen = load(proxy.addr, 1, 4, "/", &[]).await;
    assert_eq!(seen.get("a"), Some(&2), "{seen:?}");
}

#[tokio::test]
async fn on_a_non_loopback_bind_a_mutation_needs_the_token() {
    let [a] = start_backends(["a"]).await;
    const TOKEN: &str = "s3cret-token-for-tests";
    let proxy = Proxy::start(&format!(
        "{SERVER}[admin]\nlisten = \"0.0.0.0:0\"\ntoken = \"{TOKEN}\"\n[pools.web]\nbackends = [\"{}\"]\n",
        a.addr
    ))
    .await;
    // Bound to every address; reached over loopback all the same.
    let admin: SocketAddr = format!("127.0.0.1:{}", proxy.admin.unwrap().port())
        .parse()
        .unwrap();
    let drain = format!("/api/pools/web/backends/{}/drain", a.addr);
    assert_eq!(admin_post(admin, &drain, None).await.0, 401);
    assert_eq!(
        admin_post(admin, &drain, Some("s3cret-token-for-tesTS"))
            .await
            .0,
        401
    );
    assert_eq!(admin_post(admin, "/api/reload", None).await.0, 401);
    assert_eq!(
        Client::h1(proxy.addr).await.get("/").await.status,
        200,
        "nothing was drained"
    );
    assert_eq!(admin_post(admin, &drain, Some(TOKEN)).await.0, 200);
    // Reads need no token.
    assert_eq!(admin_get(admin, "/metrics").await.0, 200);

    // Without a token configured, nothing may be changed from there.
    let open = Proxy::start(&format!(
        "{SERVER}[admin]\nlisten = \"0.0.0.0:0\"\n[pools.web]\nbackends = [\"{}\"]\n",
        a.addr
    ))
    .await;
    let admin: SocketAddr = format!("127.0.0.1:{}", open.admin.unwrap().port())
        .parse()
        .unwrap();
    let (status, body) = admin_post(admin, &drain, Some(TOKEN)).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("admin.token"), "{body}");
}

#[tokio::test]
async fn ready_turns_503_while_connections_drain_and_live_stays_200() {
    let [a] = start_backends(["a"]).await;
    let proxy = web_pool(1, "", &[&a], "").await;
    let admin = proxy.admin.unwrap();
    assert_eq!(admin_get(admin, "/ready").await.0, 200);
    let addr = proxy.addr;
    let slow = tokio::spawn(async move { Client::h1(addr).await.get("/slow?ms=1000").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.begin_stop();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(admin_get(admin, "/ready").await.0, 503);
    assert_eq!(admin_get(admin, "/live").await.0, 200);
    assert_eq!(slow.await.unwrap().status, 200);
    proxy.stopped().await;
}

#[tokio::test]
async fn the_admin_listener_can_be_turned_off() {
    let [a] = start_backends(["a"]).await;
    let proxy = Proxy::start(&format!(
        "{SERVER}[admin]\nlisten = \"\"\n[pools.web]\nbackends = [\"{}\"]\n",
        a.addr
    ))
    .await;
    assert_eq!(proxy.admin, None);
    assert_eq!(Client::h1(proxy.addr).await.get("/").await.status, 200);
}

#[tokio::test]
async fn veer_demo_prints_its_admin_url_and_its_metrics_count_the_demo_traffic() {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_veer"))
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--tls-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    // Read every line (the demo must never write into a closed pipe), and
    // hand over the two URLs once both are printed.
    let (urls, printed) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut proxy = None;
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if let Some(rest) = line.strip_prefix("veer demo: proxy on http://") {
                proxy = rest.split('/').next().map(str::to_string);
            }
            if let Some(rest) = line.strip_prefix("Dashboard: http://") {
                let _ = urls.send((proxy.clone(), rest.split('/').next().map(str::to_string)));
            }
        }
    });
    let (proxy, admin) = tokio::task::spawn_blocking(move || {
        printed
            .recv_timeout(Duration::from_secs(20))
            .expect("the demo printed its URLs")
    })
    .await
    .unwrap();
    let proxy: SocketAddr = proxy.expect("proxy URL").parse().unwrap();
    let admin: SocketAddr = admin.expect("admin URL").parse().unwrap();
    let mut client = Client::h1(proxy).await;
    for _ in 0..6 {
        assert_eq!(client.get("/hello").await.status, 200);
    }
    let (status, text) = admin_get(admin, "/metrics").await;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(status, 200);
    assert_eq!(sample(&text, "veer_requests_total"), 6, "{text}");
    assert_eq!(
        sample(
            &text,
            "veer_route_requests_total{route=\"*/\",pool=\"demo\",class=\"2xx\"}"
        ),
        6
    );
}

#[tokio::test]
async fn a_pool_whose_every_backend_is_drained_answers_503_without_trying() {
    let [a] = start_backends(["a"]).await;
    let proxy = web_pool(1, "", &[&a], "").await;
    let admin = proxy.admin.unwrap();
    let drain = format!("/api/pools/web/backends/{}/drain", a.addr);
    assert_eq!(admin_post(admin, &drain, None).await.0, 200);
    let answer = Client::h1(proxy.addr).await.get("/").await;
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert!(answer.body.contains("drained"), "{}", answer.body);
    assert_eq!(a.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!(admin_get(admin, "/api/nothing-here").await.0, 404);
}
