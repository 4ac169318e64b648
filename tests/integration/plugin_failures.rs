//! A plugin that fails never fails a request: the host's round robin serves
//! it, and the failure is counted.

use std::time::{Duration, Instant};

use veer::ConfigError;

use crate::support::*;

fn misbehave_config(mode: &str, backends: &[&Backend]) -> String {
    format!(
        "{SERVER}[plugins]\nload = [\"{}\"]\nselect_timeout_ms = 5\n\
         [pools.web]\nstrategy = \"misbehave\"\nstrategy_config = {{ mode = \"{mode}\" }}\nbackends = [{}]\n",
        test_plugin("misbehave"),
        addresses(backends)
    )
}

/// Sends `n` requests over HTTP/1.1 and returns the backends that answered.
async fn all_answered(proxy: &Proxy, n: usize) -> Vec<String> {
    let mut client = Client::h1(proxy.addr).await;
    let mut seen = Vec::new();
    for _ in 0..n {
        let answer = client.get("/").await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        seen.push(answer.backend().to_string());
    }
    seen
}

#[tokio::test]
async fn a_plugin_that_traps_leaves_every_request_answered_and_the_traps_counted() {
    let [a, b] = start_backends(["a", "b"]).await;
    let proxy = Proxy::start(&misbehave_config("trap", &[&a, &b])).await;
    let seen = all_answered(&proxy, 20).await;
    assert_eq!(
        &seen[..4],
        ["a", "b", "a", "b"],
        "the fallback is a round robin"
    );
    let m = proxy.metrics.snapshot();
    assert!(m.plugin_traps >= 1, "{m:?}");
    assert_eq!(m.fallback_selections, 20, "{m:?}");
    assert_eq!(m.plugin_timeouts, 0, "{m:?}");
}

#[tokio::test]
async fn a_plugin_that_loops_forever_is_stopped_at_its_deadline_and_counted() {
    let [a, b] = start_backends(["a", "b"]).await;
    let proxy = Proxy::start(&misbehave_config("spin", &[&a, &b])).await;
    let started = Instant::now();
    all_answered(&proxy, 20).await;
    let m = proxy.metrics.snapshot();
    assert!(m.plugin_timeouts >= 1, "{m:?}");
    assert_eq!(m.fallback_selections, 20, "{m:?}");
    // 3 deadlines of ~5 ms before backing off, not 20 stuck requests.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_plugin_growing_past_its_memory_cap_traps_and_the_request_is_served() {
    let [a, b] = start_backends(["a", "b"]).await;
    let proxy = Proxy::start(&misbehave_config("grow", &[&a, &b])).await;
    all_answered(&proxy, 5).await;
    let m = proxy.metrics.snapshot();
    assert!(m.plugin_traps >= 1, "64 MiB against a 16 MiB cap: {m:?}");
    assert_eq!(m.fallback_selections, 5, "{m:?}");
}

#[tokio::test]
async fn a_failing_plugin_is_backed_off_then_instantiated_again() {
    let a = Backend::start("a").await;
    let proxy = Proxy::start(&misbehave_config("trap", &[&a])).await;
    all_answered(&proxy, 10).await;
    let first = proxy.metrics.snapshot();
    assert_eq!(
        first.plugin_traps, 3,
        "backs off after 3 traps in a row: {first:?}"
    );
    tokio::time::sleep(Duration::from_millis(150)).await; // past the first 100 ms backoff
    all_answered(&proxy, 1).await;
    let second = proxy.metrics.snapshot();
    assert_eq!(
        second.plugin_traps, 4,
        "tried again after the backoff: {second:?}"
    );
    // A trapped instance is never entered again: each trap ran on an
    // instance of its own (built aside, ahead of need).
    assert!(
        second.plugin_instantiations >= second.plugin_traps,
        "{second:?}"
    );
}

#[tokio::test]
async fn an_empty_or_unknown_answer_is_served_by_the_fallback_and_counted() {
    for mode in ["empty", "unknown"] {
        let [a, b] = start_backends(["a", "b"]).await;
        let proxy = Proxy::start(&misbehave_config(mode, &[&a, &b])).await;
        all_answered(&proxy, 6).await;
        let m = proxy.metrics.snapshot();
        assert_eq!(m.plugin_bad_answers, 6, "{mode}: {m:?}");
        assert_eq!(m.fallback_selections, 6, "{mode}: {m:?}");
    }
}

#[tokio::test]
async fn a_plugin_refusing_its_config_is_an_error_naming_the_pool_key() {
    let a = Backend::start("a").await;
    let config = veer::Config::from_toml(
        &misbehave_config("refuse", &[&a]),
        std::path::Path::new("."),
    )
    .unwrap();
    let err = match veer::Server::bind(config) {
        Err(veer::Error::Config(e)) => e,
        Err(other) => panic!("expected a config error, got {other}"),
        Ok(_) => panic!("a refused config must not start"),
    };
    assert_eq!(err.key(), Some("pools.web.strategy_config"));
    assert!(err.to_string().contains("refused on purpose"), "{err}");
    let _: &ConfigError = &err;
}
