//! Each built-in strategy, selected by name in a pool, through the running
//! proxy: its reference behaviour.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::time::Duration;

use crate::support::*;

/// A config with one pool using `strategy` and `strategy_config` (TOML
/// inline table text) over `backends` (TOML array items).
fn pool(strategy: &str, strategy_config: &str, backends: &str, extra: &str) -> String {
    format!(
        "{SERVER}[plugins]\nrandom_seed = 42\n[pools.web]\nstrategy = \"{strategy}\"\nstrategy_config = {strategy_config}\n\
         backends = [{backends}]\n{extra}"
    )
}

fn weighted(backends: &[(&Backend, u32)]) -> String {
    backends
        .iter()
        .map(|(b, w)| format!("{{ address = \"{}\", weight = {w} }}", b.addr))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn sequence(proxy: &Proxy, n: usize) -> String {
    let mut client = Client::h1(proxy.addr).await;
    let mut seen = String::new();
    for _ in 0..n {
        seen.push_str(client.get("/").await.backend());
    }
    seen
}

fn share(counts: &BTreeMap<String, usize>, name: &str) -> f64 {
    *counts.get(name).unwrap_or(&0) as f64 / counts.values().sum::<usize>() as f64
}

#[tokio::test]
async fn weighted_round_robin_follows_nginx_smooth_order() {
    let [a, b, c] = start_backends(["a", "b", "c"]).await;
    let proxy = Proxy::start(&pool(
        "weighted-round-robin",
        "{}",
        &weighted(&[(&a, 5), (&b, 1), (&c, 1)]),
        "",
    ))
    .await;
    assert_eq!(sequence(&proxy, 14).await, "aabacaaaabacaa");
    assert_eq!(proxy.metrics.snapshot().fallback_selections, 0);
}

#[tokio::test]
async fn random_spreads_by_weight_within_tolerance() {
    let [a, b, c] = start_backends(["a", "b", "c"]).await;
    let proxy = Proxy::start(&pool(
        "random",
        "{}",
        &weighted(&[(&a, 1), (&b, 1), (&c, 2)]),
        "",
    ))
    .await;
    let counts = load(proxy.addr, 4, 150, "/", &[]).await;
    // 600 draws: expected 25/25/50 %; ±6 points is over 3 standard deviations.
    for (name, expected) in [("a", 0.25), ("b", 0.25), ("c", 0.5)] {
        assert!(
            (share(&counts, name) - expected).abs() < 0.06,
            "{name}: {counts:?}"
        );
    }
}

#[tokio::test]
async fn random_without_weights_is_uniform() {
    let [a, b] = start_backends(["a", "b"]).await;
    let proxy = Proxy::start(&pool(
        "random",
        "{ weighted = false }",
        &weighted(&[(&a, 1), (&b, 9)]),
        "",
    ))
    .await;
    let counts = load(proxy.addr, 4, 100, "/", &[]).await;
    assert!((share(&counts, "a") - 0.5).abs() < 0.08, "{counts:?}");
}

/// Two fast backends and one that takes 100 ms: strategies that read load or
/// latency must send the slow one clearly less than round robin's third.
async fn slow_backend_share(strategy: &str, config: &str) -> f64 {
    let [a, b] = start_backends(["a", "b"]).await;
    let slow = Backend::start_with("slow", Duration::from_millis(100)).await;
    let proxy = Proxy::start(&pool(strategy, config, &addresses(&[&a, &b, &slow]), "")).await;
    let counts = load(proxy.addr, 8, 30, "/", &[]).await;
    assert_eq!(counts.values().sum::<usize>(), 240);
    share(&counts, "slow")
}

#[tokio::test]
async fn least_connections_sends_less_to_a_slow_backend() {
    let slow = slow_backend_share("least-connections", "{}").await;
    assert!(
        slow < 0.2,
        "slow backend got {:.0}% (round robin: 33%)",
        slow * 100.0
    );
}

#[tokio::test]
async fn p2c_sends_less_to_a_slow_backend() {
    let slow = slow_backend_share("p2c", "{ draws = 2 }").await;
    assert!(slow < 0.2, "slow backend got {:.0}%", slow * 100.0);
}

#[tokio::test]
async fn peak_ewma_sends_less_to_a_slow_backend() {
    let slow = slow_backend_share("peak-ewma", "{}").await;
    assert!(slow < 0.2, "slow backend got {:.0}%", slow * 100.0);
}

#[tokio::test]
async fn round_robin_is_the_baseline_a_slow_backend_gets_a_third() {
    let slow = slow_backend_share("round-robin", "{}").await;
    assert!((slow - 1.0 / 3.0).abs() < 0.02, "{slow}");
}

#[tokio::test]
async fn ip_hash_keeps_each_client_on_one_backend_and_spreads_clients() {
    let backends = [
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
        Backend::start("d").await,
    ];
    let refs: Vec<&Backend> = backends.iter().collect();
    for (mask, spread) in [("full", true), ("nginx", false)] {
        let proxy = Proxy::start(&pool(
            "ip-hash",
            &format!("{{ mask = \"{mask}\" }}"),
            &addresses(&refs),
            "",
        ))
        .await;
        let mut chosen = HashSet::new();
        for i in 1..=16u8 {
            let source: IpAddr = format!("127.0.0.{i}").parse().unwrap();
            let mut client = Client::h1_from(proxy.addr, source).await;
            let first = client.get("/").await.backend().to_string();
            for _ in 0..3 {
                assert_eq!(
                    client.get("/").await.backend(),
                    first,
                    "{mask}: client {source} moved"
                );
            }
            chosen.insert(first);
        }
        if spread {
            assert!(
                chosen.len() >= 3,
                "full addresses spread 16 clients: {chosen:?}"
            );
        } else {
            assert_eq!(
                chosen.len(),
                1,
                "one /24, one backend (as NGINX): {chosen:?}"
            );
        }
    }
}

/// Backend named for each of `users` under consistent hashing on `x-user`.
async fn owners(proxy: &Proxy, users: std::ops::Range<u32>) -> Vec<String> {
    let mut client = Client::h1(proxy.addr).await;
    let mut owners = Vec::new();
    for user in users {
        let answer = client
            .get_with("/", &[("x-user", &format!("user-{user}"))])
            .await;
        owners.push(answer.backend().to_string());
    }
    owners
}

#[tokio::test]
async fn consistent_hash_keeps_keys_across_restarts_and_moves_few_when_a_backend_joins() {
    let b = start_backends(["a", "b", "c", "d", "e"]).await;
    // Ring places come from `hash_key` labels, not the test's random ports,
    // so the measured shares are the same on every run.
    let placed = |backends: &[&Backend]| {
        backends
            .iter()
            .map(|b| {
                format!(
                    "{{ address = \"{}\", labels = {{ hash_key = \"{}\" }} }}",
                    b.addr, b.name
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    for ring in ["ketama", "maglev"] {
        let config = format!("{{ key = \"header:x-user\", ring = \"{ring}\" }}");
        let four = placed(&[&b[0], &b[1], &b[2], &b[3]]);
        let first = Proxy::start(&pool("consistent-hash", &config, &four, "")).await;
        let before = owners(&first, 0..300).await;
        first.stop().await;
        let restarted = Proxy::start(&pool("consistent-hash", &config, &four, "")).await;
        assert_eq!(
            owners(&restarted, 0..300).await,
            before,
            "{ring}: same keys, same backends after a restart"
        );
        let five = Proxy::start(&pool(
            "consistent-hash",
            &config,
            &placed(&[&b[0], &b[1], &b[2], &b[3], &b[4]]),
            "",
        ))
        .await;
        let after = owners(&five, 0..300).await;
        let moved = before.iter().zip(&after).filter(|(x, y)| x != y).count() as f64 / 300.0;
        assert!(
            moved <= 1.0 / 5.0 + 0.05,
            "{ring}: {:.1}% of keys moved",
            moved * 100.0
        );
        assert!(
            after.iter().any(|o| o == "e"),
            "{ring}: the new backend takes keys"
        );
        if ring == "ketama" {
            // Ketama moves keys only onto the new backend's points; Maglev
            // refills its table and shuffles a few keys among the others too.
            assert!(
                before.iter().zip(&after).all(|(x, y)| x == y || y == "e"),
                "ketama: keys only move to the new backend"
            );
        }
        eprintln!(
            "{ring}: {:.1}% of 300 keys moved when a 5th backend joined",
            moved * 100.0
        );
    }
}

#[tokio::test]
async fn bounded_load_caps_the_backend_of_a_hot_key() {
    let b: Vec<Backend> = {
        let mut v = Vec::new();
        for name in ["a", "b", "c", "d"] {
            v.push(Backend::start_with(name, Duration::from_millis(50)).await);
        }
        v
    };
    let all = addresses(&[&b[0], &b[1], &b[2], &b[3]]);
    // Unbounded first: every request of the hot key lands on its owner.
    let plain = Proxy::start(&pool(
        "consistent-hash",
        "{ key = \"header:x-user\" }",
        &all,
        "",
    ))
    .await;
    let counts = load(plain.addr, 16, 4, "/", &[("x-user", "hot")]).await;
    assert_eq!(counts.len(), 1, "{counts:?}");
    let owner = counts.keys().next().unwrap().clone();
    plain.stop().await;
    for backend in &b {
        backend
            .concurrency
            .max
            .store(0, std::sync::atomic::Ordering::SeqCst);
    }
    let bounded = Proxy::start(&pool(
        "consistent-hash",
        "{ key = \"header:x-user\", bounded_load = 1.25 }",
        &all,
        "",
    ))
    .await;
    let counts = load(bounded.addr, 16, 4, "/", &[("x-user", "hot")]).await;
    let owner_max = b
        .iter()
        .find(|x| x.name == owner)
        .unwrap()
        .concurrency
        .max
        .load(std::sync::atomic::Ordering::SeqCst);
    // 16 in flight: cap = ceil(1.25 × 16 / 4) = 5 per backend.
    assert!(owner_max <= 5, "the owner had {owner_max} at once");
    assert!(counts.len() >= 3, "the hot key spilled over: {counts:?}");
    assert!(
        counts[&owner] >= counts.values().copied().max().unwrap(),
        "the owner still takes the most: {counts:?}"
    );
}

fn versioned(b: &[&Backend], versions: &[&str]) -> String {
    b.iter()
        .zip(versions)
        .map(|(b, v)| {
            format!(
                "{{ address = \"{}\", labels = {{ version = \"{v}\" }} }}",
                b.addr
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[tokio::test]
async fn content_route_sends_a_header_to_its_labelled_subset() {
    let [a, b, c] = start_backends(["a", "b", "c"]).await;
    let config = r#"{ rules = [{ header = "x-version", equals = "v2", labels = { version = "v2" } }, { path_prefix = "/beta", labels = { version = "v2" } }] }"#;
    let proxy = Proxy::start(&pool(
        "content-route",
        config,
        &versioned(&[&a, &b, &c], &["v1", "v1", "v2"]),
        "",
    ))
    .await;
    let mut client = Client::h1(proxy.addr).await;
    for _ in 0..5 {
        assert_eq!(
            client.get_with("/", &[("x-version", "v2")]).await.backend(),
            "c"
        );
        assert_eq!(client.get("/beta/page").await.backend(), "c");
    }
    let others: HashSet<String> = {
        let mut s = HashSet::new();
        for _ in 0..6 {
            s.insert(client.get("/").await.backend().to_string());
        }
        s
    };
    assert_eq!(
        others.len(),
        3,
        "unmatched requests use every backend: {others:?}"
    );
}

#[tokio::test]
async fn content_route_canary_split_sends_about_ten_percent_to_v2() {
    let [a, b, c] = start_backends(["a", "b", "c"]).await;
    let config = r#"{ split = [{ labels = { version = "v1" }, weight = 90 }, { labels = { version = "v2" }, weight = 10 }] }"#;
    let proxy = Proxy::start(&pool(
        "content-route",
        config,
        &versioned(&[&a, &b, &c], &["v1", "v1", "v2"]),
        "",
    ))
    .await;
    let counts = load(proxy.addr, 4, 250, "/", &[]).await;
    // 1000 draws at p = 0.1: ±3 points is over 3 standard deviations.
    assert!((share(&counts, "c") - 0.10).abs() < 0.03, "{counts:?}");
}

#[tokio::test]
async fn sticky_sessions_stay_put_and_fail_over_when_their_backend_dies() {
    let mut backends = vec![
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    ];
    let all = addresses(&backends.iter().collect::<Vec<_>>());
    let proxy = Proxy::start(&pool("sticky", "{}", &all, "max_fails = 1\n")).await;
    let mut client = Client::h1(proxy.addr).await;

    let first = client.get("/").await;
    let set_cookie = first
        .headers
        .get("set-cookie")
        .expect("a new client gets a cookie")
        .to_str()
        .unwrap()
        .to_string();
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    assert!(cookie.starts_with("veer-sticky="), "{set_cookie}");
    let home = first.backend().to_string();
    for _ in 0..8 {
        let answer = client.get_with("/", &[("cookie", &cookie)]).await;
        assert_eq!(answer.backend(), home, "a client with the cookie stays");
        assert!(
            answer.headers.get("set-cookie").is_none(),
            "and is not given a new one"
        );
    }

    backends.retain(|b| b.name != home); // drop = the backend dies
    tokio::time::sleep(Duration::from_millis(50)).await;
    let failover = client.get_with("/", &[("cookie", &cookie)]).await;
    assert_eq!(failover.status, 200, "the host retried on another backend");
    assert_ne!(failover.backend(), home);
    let replaced = client.get_with("/", &[("cookie", &cookie)]).await;
    let new_cookie = replaced
        .headers
        .get("set-cookie")
        .expect("placed again: a new cookie")
        .to_str()
        .unwrap();
    let new_cookie = new_cookie.split(';').next().unwrap().to_string();
    assert_ne!(new_cookie, cookie);
    let new_home = replaced.backend().to_string();
    for _ in 0..5 {
        assert_eq!(
            client
                .get_with("/", &[("cookie", &new_cookie)])
                .await
                .backend(),
            new_home
        );
    }
}
