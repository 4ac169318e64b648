//! The `veer:balancer@0.3.0` contract through the real host: a plugin's
//! refusal is a 503 that goes nowhere else, a deferral is the pool's failure
//! policy, `on-outcome` is heard once per attempt by plugins that ask, and
//! state is handed over when a pool is rebuilt.

use std::time::Duration;

use crate::support::*;

/// A pool whose plugin is `misbehave` in `mode`, behind `policy`, on
/// `backends`.
fn misbehave_pool(mode: &str, policy: &str, backends: &[&Backend]) -> String {
    format!(
        "{SERVER}[plugins]\nload = [\"{}\"]\n\
         [pools.web]\nstrategy = \"misbehave\"\nstrategy_config = {{ mode = \"{mode}\" }}\n\
         on_plugin_failure = \"{policy}\"\nbackends = [{}]\n",
        test_plugin("misbehave"),
        addresses(backends),
    )
}

/// The value of response header `name` as a number.
fn number(answer: &Answer, name: &str) -> u64 {
    answer
        .headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name}"))
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_refused_request_gets_a_503_with_the_plugins_reason_and_reaches_no_backend() {
    let [a, b] = start_backends(["a", "b"]).await;
    // Even with the round robin as the failure policy: a refusal is not a
    // failure, and nothing may leak.
    let proxy = Proxy::start(&misbehave_pool("reject", "fallback", &[&a, &b])).await;
    let load = Load::start(proxy.addr, 4, Duration::from_secs(10));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (ok, failed) = load.finish().await;
    assert_eq!(ok, 0, "no request was answered by a backend");
    assert!(failed > 0);
    let answer = Client::h1(proxy.addr).await.get("/").await;
    assert_eq!(answer.status, 503);
    assert!(
        answer.body.contains("misbehave refuses on purpose") && answer.body.contains("pool web"),
        "{}",
        answer.body
    );
    let m = proxy.metrics.snapshot();
    assert_eq!(m.plugin_refused_requests, failed + 1, "{m:?}");
    assert_eq!(m.fallback_selections, 0, "{m:?}");
    assert_eq!(m.plugin_bad_answers, 0, "a refusal is not a failure: {m:?}");
    let hits = |b: &Backend| b.hits.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(hits(&a) + hits(&b), 0);
}

#[tokio::test]
async fn a_deferred_request_is_served_by_the_pools_failure_policy() {
    let [a, b] = start_backends(["a", "b"]).await;
    let proxy = Proxy::start(&misbehave_pool("defer", "fallback", &[&a, &b])).await;
    let mut client = Client::h1(proxy.addr).await;
    for _ in 0..4 {
        assert_eq!(client.get("/").await.status, 200);
    }
    let m = proxy.metrics.snapshot();
    assert!(m.fallback_selections >= 4, "{m:?}");
    assert!(
        m.plugin_bad_answers >= 1,
        "a deferral counts as a failure: {m:?}"
    );

    let proxy = Proxy::start(&misbehave_pool("defer", "reject", &[&a, &b])).await;
    assert_eq!(Client::h1(proxy.addr).await.get("/").await.status, 503);
}

#[tokio::test]
async fn a_plugin_that_asks_hears_each_attempt_once() {
    let [a] = start_backends(["a"]).await;
    // Backend 0 refuses connections; 1 answers. No ejection, so every
    // request tries both: two outcomes, one of them a failure.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let proxy = Proxy::start(&format!(
        "{SERVER}[plugins]\nload = [\"{}\"]\n\
         [pools.web]\nstrategy = \"feedback\"\nmax_fails = 0\nbackends = [\"{dead_addr}\", \"{}\"]\n",
        test_plugin("feedback"),
        a.addr
    ))
    .await;
    let mut client = Client::h1(proxy.addr).await;
    let first = client.get("/").await;
    assert_eq!(first.status, 200);
    assert_eq!(number(&first, "x-outcomes"), 0, "nothing heard yet");
    for i in 1..=5u64 {
        // What it says now is what it heard of the requests before.
        let answer = client.get("/").await;
        assert_eq!(answer.status, 200);
        assert_eq!(number(&answer, "x-outcomes"), 2 * i, "request {i}");
        assert_eq!(number(&answer, "x-failures"), i, "request {i}");
    }
    assert_eq!(proxy.metrics.snapshot().retries, 6);
}

#[tokio::test]
async fn a_plugin_that_does_not_ask_never_hears_outcomes() {
    let [a, b] = start_backends(["a", "b"]).await;
    // `first` traps in on-outcome if it is ever called.
    let proxy = Proxy::start(&misbehave_pool("first", "fallback", &[&a, &b])).await;
    let load = Load::start(proxy.addr, 4, Duration::from_secs(10));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (ok, failed) = load.finish().await;
    assert!(ok > 0 && failed == 0);
    let m = proxy.metrics.snapshot();
    assert_eq!(m.plugin_traps, 0, "{m:?}");
    assert_eq!(m.fallback_selections, 0, "{m:?}");
}

#[tokio::test]
async fn state_is_handed_over_when_the_pool_is_rebuilt() {
    let [a, b] = start_backends(["a", "b"]).await;
    let dir = TempDir::new("hand-over");
    let path = dir.join("veer.toml");
    let config = |slow_call_us: u32| {
        format!(
            "{SERVER}[plugins]\ndir = \"\"\nload = [\"{}\"]\n\
             [pools.web]\nstrategy = \"feedback\"\nslow_call_us = {slow_call_us}\nbackends = [{}]\n",
            test_plugin("feedback"),
            addresses(&[&a, &b])
        )
    };
    std::fs::write(&path, config(500)).unwrap();
    let (proxy, handle) = Proxy::start_file(&path).await;
    let mut client = Client::h1(proxy.addr).await;
    for _ in 0..4 {
        assert_eq!(client.get("/").await.status, 200);
    }
    let before = client.get("/").await;
    assert_eq!(before.headers.get("x-imported").unwrap(), "none");
    assert_eq!(number(&before, "x-outcomes"), 4);

    // A reload that changes the pool's settings rebuilds it.
    std::fs::write(&path, config(400)).unwrap();
    handle.reload();
    wait_for(Duration::from_secs(5), || {
        proxy.metrics.snapshot().config_reloads >= 1
    })
    .await;
    let after = Client::h1(proxy.addr).await.get("/").await;
    assert_eq!(after.headers.get("x-imported").unwrap(), "5 0");
    assert_eq!(number(&after, "x-outcomes"), 5, "the count went on");
    assert_eq!(proxy.metrics.snapshot().plugin_state_hand_overs, 1);
}

/// A pool of the wasip2 test plugin `std` with `config`, on `backends`.
fn std_pool(config: &str, backends: &[&Backend]) -> String {
    format!(
        "[server]\nlisten = \"{{listen}}\"\nworkers = 1\n[plugins]\nload = [\"{}\"]\n\
         [pools.web]\nstrategy = \"std-counting\"\nstrategy_config = {config}\nbackends = [{}]\n",
        test_plugin("std"),
        addresses(backends),
    )
}

#[tokio::test]
async fn a_wasip2_plugin_using_hashmap_the_environment_and_stderr_works() {
    let [a, b] = start_backends(["a", "b"]).await;
    let dir = TempDir::new("wasip2-std");
    run_binary(&dir, &std_pool("{}", &[&a, &b]), async |addr| {
        let mut client = Client::h1(addr).await;
        // The n-th request for a path goes to backend n mod 2, counted in a
        // HashMap per path.
        let mut seen = Vec::new();
        for path in ["/x", "/x", "/y", "/x", "/y"] {
            let answer = client.get(path).await;
            assert_eq!(answer.status, 200);
            seen.push(answer.backend().to_string());
        }
        assert_eq!(seen, ["b", "a", "b", "b", "a"]);
    })
    .await;
    let log = std::fs::read_to_string(dir.join("stderr")).unwrap();
    assert!(
        log.contains("std-counting: started with 0 environment variables"),
        "eprintln! reaches the log, and the environment is empty:\n{log}"
    );
}

#[tokio::test]
async fn a_panicking_plugin_logs_its_message_and_place_on_one_line() {
    let [a, b] = start_backends(["a", "b"]).await;
    let dir = TempDir::new("wasip2-panic");
    run_binary(
        &dir,
        &std_pool("{ panic = true }", &[&a, &b]),
        async |addr| {
            let mut client = Client::h1(addr).await;
            for _ in 0..3 {
                assert_eq!(client.get("/").await.status, 200, "served by the fallback");
            }
        },
    )
    .await;
    let log = std::fs::read_to_string(dir.join("stderr")).unwrap();
    assert!(
        log.lines().any(
            |line| line.contains("panicked at tests/plugins/std-wasip2/src/lib.rs:")
                && line.contains("std-counting was told to panic")
        ),
        "{log}"
    );
}
