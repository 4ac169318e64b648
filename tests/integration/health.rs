//! Health and retries: a hung backend is retried around, ejected and
//! re-admitted through slow start; active checks take out a backend that
//! answers 503; what a retry may replay; the retry budget.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio_util::sync::CancellationToken;

use crate::support::*;

/// Answers 200 with its name.
const HEALTHY: u8 = 0;
/// Reads the request and never answers.
const HUNG: u8 = 1;
/// Reads the request and answers 503.
const UNAVAILABLE: u8 = 2;

/// A backend whose behaviour a test switches while it runs. `/health` is
/// its health check path, counted apart from other requests.
struct Switchable {
    addr: SocketAddr,
    mode: Arc<AtomicU8>,
    /// Requests other than health checks.
    hits: Arc<AtomicU64>,
    /// Of those, POSTs.
    posts: Arc<AtomicU64>,
    /// Health checks.
    checks: Arc<AtomicU64>,
    cancel: CancellationToken,
}

impl Drop for Switchable {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl Switchable {
    async fn start(name: &'static str, mode: u8) -> Switchable {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend = Switchable {
            addr: listener.local_addr().unwrap(),
            mode: Arc::new(AtomicU8::new(mode)),
            hits: Arc::default(),
            posts: Arc::default(),
            checks: Arc::default(),
            cancel: CancellationToken::new(),
        };
        let (mode, hits, posts, checks, cancel) = (
            backend.mode.clone(),
            backend.hits.clone(),
            backend.posts.clone(),
            backend.checks.clone(),
            backend.cancel.clone(),
        );
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    _ = cancel.cancelled() => return,
                    accepted = listener.accept() => accepted.unwrap().0,
                };
                let (mode, hits, posts, checks, cancel) = (
                    mode.clone(),
                    hits.clone(),
                    posts.clone(),
                    checks.clone(),
                    cancel.clone(),
                );
                tokio::spawn(async move {
                    let service = service_fn(move |req: http::Request<Incoming>| {
                        let (mode, hits, posts, checks) =
                            (mode.clone(), hits.clone(), posts.clone(), checks.clone());
                        async move {
                            if req.uri().path() == "/health" {
                                checks.fetch_add(1, Ordering::Relaxed);
                            } else {
                                hits.fetch_add(1, Ordering::Relaxed);
                                if req.method() == http::Method::POST {
                                    posts.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            let body = req.into_body().collect().await.map(|b| b.to_bytes());
                            let body = body.unwrap_or_default();
                            let status = match mode.load(Ordering::Relaxed) {
                                HUNG => std::future::pending().await,
                                UNAVAILABLE => 503,
                                _ => 200,
                            };
                            let text = if body.is_empty() {
                                name.to_string()
                            } else {
                                format!("{name} got {}", String::from_utf8_lossy(&body))
                            };
                            Ok::<_, Infallible>(
                                http::Response::builder()
                                    .status(status)
                                    .header("x-backend", name)
                                    .body(full(text))
                                    .unwrap(),
                            )
                        }
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    tokio::select! {
                        _ = builder.serve_connection(TokioIo::new(stream), service) => {}
                        _ = cancel.cancelled() => {}
                    }
                });
            }
        });
        backend
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::Relaxed);
    }
}

/// `n` sequential GETs on one connection; answers by backend name (or
/// `status N` when not 200).
async fn spread(addr: SocketAddr, n: usize) -> std::collections::BTreeMap<String, usize> {
    let mut client = Client::h1(addr).await;
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..n {
        let answer = client.get("/").await;
        let key = match answer.status.as_u16() {
            200 => answer.backend().to_string(),
            other => format!("status {other}"),
        };
        *seen.entry(key).or_insert(0) += 1;
    }
    seen
}

/// Polls `done` every 20 ms until it holds or `limit` passes.
async fn eventually(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_backend_that_never_answers_costs_no_get_is_ejected_and_comes_back_through_slow_start() {
    let [a, b] = start_backends(["a", "b"]).await;
    let c = Switchable::start("c", HUNG).await;
    let proxy = Proxy::start(&format!(
        "{}[pools.web]\nbackends = [\"{}\", \"{}\", \"{}\"]\n\
         connect_timeout_ms = 500\nresponse_timeout_ms = 1000\n\
         max_fails = 1\nfail_timeout_ms = 1000\nslow_start_ms = 3000\n\
         [pools.web.outlier]\nmax_ejection_ms = 2000\n",
        server(2, ""),
        a.addr,
        b.addr,
        c.addr
    ))
    .await;

    // Under load, every GET that meets the hung backend waits out its 1 s
    // try and goes to the next candidate; after that the backend is out.
    let load = Load::start(proxy.addr, 8, Duration::from_secs(10));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (ok, failed) = load.finish().await;
    let waited = c.hits.load(Ordering::Relaxed);
    let m = proxy.metrics.snapshot();
    println!(
        "hung backend, 8 clients for 3 s: {ok} GETs ok, {failed} failed; {waited} sent to the hung backend; {m:?}"
    );
    assert_eq!(failed, 0);
    assert!(m.ejections >= 1 && m.retries >= 1, "{m:?}");
    // Before the first try timed out, each client may have met the hung
    // backend once; after that only one probe per ejection (1 s, then 2 s)
    // waits: a handful of requests in all, however long the load runs.
    assert!(
        waited <= 8 + 3,
        "{waited} requests waited on the hung backend"
    );
    assert!(ok > 1000, "the healthy backends kept serving: {ok}");

    // It answers again: after its ejection one request probes it, and from
    // then on its share grows over the slow start window.
    c.set(HEALTHY);
    until_served_by(proxy.addr, "c", Duration::from_secs(10)).await;
    let early = spread(proxy.addr, 300).await;
    let early_share = early.get("c").copied().unwrap_or(0) as f64 / 300.0;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let later = spread(proxy.addr, 300).await;
    let later_share = later.get("c").copied().unwrap_or(0) as f64 / 300.0;
    println!("back: first 300 GETs {early:?}, after the window {later:?}");
    assert!(
        early_share < 0.2,
        "right after it came back it gets well under a third: {early:?}"
    );
    assert!(
        later_share > 0.28,
        "after slow start it gets its full third: {later:?}"
    );
}

async fn a_backend_answering_503_is_taken_out_by_health_checks_and_brought_back(workers: usize) {
    let [a, b] = start_backends(["a", "b"]).await;
    let c = Switchable::start("c", UNAVAILABLE).await;
    // Passive ejection off: only the checks take the backend out.
    let proxy = Proxy::start(&format!(
        "{}[pools.web]\nbackends = [\"{}\", \"{}\", \"{}\"]\nmax_fails = 0\n\
         [pools.web.health]\npath = \"/health\"\ninterval_ms = 200\ntimeout_ms = 150\nfall = 2\nrise = 2\n",
        server(workers, ""),
        a.addr,
        b.addr,
        c.addr
    ))
    .await;
    // Before the checks notice, GETs that meet it go to the next backend.
    let seen = spread(proxy.addr, 30).await;
    assert_eq!(seen.len(), 2, "only a and b answer: {seen:?}");
    let metrics = proxy.metrics.clone();
    eventually(Duration::from_secs(5), "c marked unhealthy", || {
        metrics.snapshot().backends_marked_unhealthy == 1
    })
    .await;
    let hits = c.hits.load(Ordering::Relaxed);
    let seen = spread(proxy.addr, 60).await;
    assert_eq!(seen.values().sum::<usize>(), 60);
    assert_eq!(
        c.hits.load(Ordering::Relaxed),
        hits,
        "an unhealthy backend gets no requests"
    );
    // Checks keep running, once per interval per process (not per worker).
    let checks = c.checks.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let per_second = c.checks.load(Ordering::Relaxed) - checks;
    assert!(
        (3..=7).contains(&per_second),
        "{per_second} checks in 1 s at a 200 ms interval with {workers} workers"
    );
    // Healthy again: `rise` passing checks bring it back.
    c.set(HEALTHY);
    until_served_by(proxy.addr, "c", Duration::from_secs(5)).await;
    let m = proxy.metrics.snapshot();
    assert_eq!(m.backends_marked_unhealthy, 1, "{m:?}");
    assert!(m.health_check_failures >= 2, "{m:?}");
}

#[tokio::test]
async fn a_backend_answering_503_is_taken_out_by_health_checks_and_brought_back_with_one_worker() {
    a_backend_answering_503_is_taken_out_by_health_checks_and_brought_back(1).await;
}

#[tokio::test]
async fn a_backend_answering_503_is_taken_out_by_health_checks_and_brought_back_with_two_workers() {
    a_backend_answering_503_is_taken_out_by_health_checks_and_brought_back(2).await;
}

#[tokio::test]
async fn a_post_that_got_503_is_not_retried_but_a_put_with_a_small_body_is_replayed() {
    let bad = Switchable::start("bad", UNAVAILABLE).await;
    let good = Switchable::start("good", HEALTHY).await;
    let proxy = Proxy::start(&format!(
        "{SERVER}[pools.web]\nbackends = [\"{}\", \"{}\"]\nmax_fails = 0\n\
         [pools.web.retry]\nreplay_body_bytes = 64\n",
        bad.addr, good.addr
    ))
    .await;
    let mut client = Client::h1(proxy.addr).await;
    let mut send = async |method: &str, body: String| {
        let request = http::Request::builder()
            .method(method)
            .uri("/")
            .header("host", "localhost")
            .body(full(body))
            .unwrap();
        let response = client.send(request).await;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    };
    // Round robin alternates the first candidate: of two requests, one
    // meets the failing backend first.
    let mut posts = vec![
        send("POST", "p".into()).await.0,
        send("POST", "p".into()).await.0,
    ];
    posts.sort();
    assert_eq!(posts, [200, 503], "a POST is never sent twice");
    assert_eq!(bad.posts.load(Ordering::Relaxed), 1);
    assert_eq!(good.posts.load(Ordering::Relaxed), 1);

    let puts = [
        send("PUT", "small".into()).await,
        send("PUT", "small".into()).await,
    ];
    for (status, body) in &puts {
        assert_eq!((*status, body.as_str()), (200, "good got small"));
    }
    // Larger than replay_body_bytes: not kept, so not replayed.
    let big = "x".repeat(1000);
    let mut statuses = vec![
        send("PUT", big.clone()).await.0,
        send("PUT", big.clone()).await.0,
    ];
    statuses.sort();
    assert_eq!(statuses, [200, 503]);
}

#[tokio::test]
async fn the_retry_budget_holds_when_every_backend_fails() {
    let backends = [
        Switchable::start("a", UNAVAILABLE).await,
        Switchable::start("b", UNAVAILABLE).await,
        Switchable::start("c", UNAVAILABLE).await,
    ];
    let proxy = Proxy::start(&format!(
        "{SERVER}[pools.web]\nbackends = [\"{}\", \"{}\", \"{}\"]\nretries = 2\nmax_fails = 0\n\
         [pools.web.retry]\nbudget_percent = 20\nbudget_min_per_second = 1\n",
        backends[0].addr, backends[1].addr, backends[2].addr
    ))
    .await;
    let seen = spread(proxy.addr, 100).await;
    assert_eq!(seen.get("status 503"), Some(&100), "{seen:?}");
    let attempts: u64 = backends
        .iter()
        .map(|b| b.hits.load(Ordering::Relaxed))
        .sum();
    let m = proxy.metrics.snapshot();
    println!("every backend answers 503: 100 GETs, {attempts} attempts; {m:?}");
    // Without a budget: 300. With it: 20% of 100 requests, plus the floor
    // (1/s over a 10 s window).
    assert!(
        (110..=130).contains(&attempts),
        "{attempts} attempts for 100 requests"
    );
    assert_eq!(m.retries, attempts - 100);
    assert!(m.retry_budget_exhausted > 0, "{m:?}");
}

#[tokio::test]
async fn with_when_all_down_503_a_pool_whose_backends_all_fail_their_checks_answers_503_at_once() {
    let only = Switchable::start("only", UNAVAILABLE).await;
    let proxy = Proxy::start(&format!(
        "{SERVER}[pools.web]\nbackends = [\"{}\"]\nmax_fails = 0\nwhen_all_down = \"503\"\n\
         [pools.web.health]\npath = \"/health\"\ninterval_ms = 100\ntimeout_ms = 100\nfall = 1\n",
        only.addr
    ))
    .await;
    let metrics = proxy.metrics.clone();
    eventually(Duration::from_secs(5), "marked unhealthy", || {
        metrics.snapshot().backends_marked_unhealthy == 1
    })
    .await;
    let hits = only.hits.load(Ordering::Relaxed);
    let answer = Client::h1(proxy.addr).await.get("/").await;
    assert_eq!(answer.status, 503);
    assert!(
        answer.body.contains("down or failing its health checks"),
        "{}",
        answer.body
    );
    assert_eq!(only.hits.load(Ordering::Relaxed), hits, "not tried");
}

#[tokio::test]
async fn no_retry_starts_after_the_total_timeout_and_a_timeout_answers_504() {
    let hung = [
        Switchable::start("a", HUNG).await,
        Switchable::start("b", HUNG).await,
        Switchable::start("c", HUNG).await,
    ];
    let proxy = Proxy::start(&format!(
        "{SERVER}[pools.web]\nbackends = [\"{}\", \"{}\", \"{}\"]\nmax_fails = 0\n\
         connect_timeout_ms = 200\nresponse_timeout_ms = 300\n\
         [pools.web.retry]\ntotal_timeout_ms = 500\n",
        hung[0].addr, hung[1].addr, hung[2].addr
    ))
    .await;
    let started = Instant::now();
    let answer = Client::h1(proxy.addr).await.get("/").await;
    let took = started.elapsed();
    let tried: u64 = hung.iter().map(|b| b.hits.load(Ordering::Relaxed)).sum();
    assert_eq!(answer.status, 504, "{}", answer.body);
    assert_eq!(tried, 2, "a third try would start after 600 ms > 500 ms");
    assert!(took < Duration::from_millis(2000), "{took:?}");
}

#[tokio::test]
async fn taking_health_checks_off_in_a_reload_lets_a_backend_they_failed_back_in() {
    let failing = Switchable::start("failing", UNAVAILABLE).await;
    let good = Switchable::start("good", HEALTHY).await;
    let dir = TempDir::new("health-reload");
    let path = dir.join("veer.toml");
    let config = |health: &str| {
        format!(
            "{SERVER}[plugins]\ndir = \"\"\n[pools.web]\nbackends = [\"{}\", \"{}\"]\nmax_fails = 0\n{health}",
            failing.addr, good.addr
        )
    };
    std::fs::write(
        &path,
        config("[pools.web.health]\npath = \"/health\"\ninterval_ms = 100\ntimeout_ms = 100\nfall = 1\n"),
    )
    .unwrap();
    let (proxy, handle) = Proxy::start_file(&path).await;
    let metrics = proxy.metrics.clone();
    eventually(Duration::from_secs(5), "marked unhealthy", || {
        metrics.snapshot().backends_marked_unhealthy == 1
    })
    .await;
    // It answers now, but no check runs once they are taken off: only the
    // reload can let it back in.
    failing.set(HEALTHY);
    std::fs::write(&path, config("")).unwrap();
    handle.reload();
    eventually(Duration::from_secs(5), "reloaded", || {
        metrics.snapshot().config_reloads >= 1
    })
    .await;
    let seen = spread(proxy.addr, 20).await;
    assert_eq!(seen.get("failing"), Some(&10), "{seen:?}");
}
