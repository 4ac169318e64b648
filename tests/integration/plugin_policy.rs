//! What a pool does when its plugin fails: `on_plugin_failure` (round
//! robin, the last good version, or 503), and the automatic rollback of a
//! new version that keeps failing right after its swap.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::support::*;

/// A pool using the `swapped` plugin from `dir`'s plugin folder, with
/// `policy` as its `on_plugin_failure`.
fn folder_config(dir: &TempDir, backends: &[&Backend], policy: &str) -> String {
    format!(
        "{SERVER}[plugins]\ndir = \"{}\"\ndebounce_ms = 20\ncache_dir = \"\"\n\
         [pools.web]\nstrategy = \"swapped\"\non_plugin_failure = \"{policy}\"\nbackends = [{}]\n",
        dir.join("plugins").display(),
        addresses(backends)
    )
}

/// Puts test plugin `name` in place as `target`.
fn install(target: &std::path::Path, name: &str) {
    install_by_rename(target, &plugin_bytes(name));
}

/// Backends `a` and `b`, and a proxy whose pool runs `swap-a` (backend a
/// first) from a plugin folder in `dir`, with `policy`; returns the plugin
/// file's path. (Backends first: they must outlive the proxy.)
async fn swap_a_setup(dir: &TempDir, policy: &str) -> ([Backend; 2], Proxy, std::path::PathBuf) {
    let [a, b] = start_backends(["a", "b"]).await;
    std::fs::create_dir_all(dir.join("plugins")).unwrap();
    let target = dir.join("plugins").join("swapped.wasm");
    install(&target, "swap-a");
    let proxy = Proxy::start(&folder_config(dir, &[&a, &b], policy)).await;
    ([a, b], proxy, target)
}

#[tokio::test]
async fn a_new_version_that_keeps_failing_is_rolled_back_to_the_last_good_one() {
    let dir = TempDir::new("rollback");
    let (_backends, proxy, target) = swap_a_setup(&dir, "fallback").await;
    let load = Load::start(proxy.addr, 4, Duration::from_secs(20));

    install(&target, "swap-fail");
    wait_for(Duration::from_secs(10), || {
        proxy.metrics.snapshot().plugin_rollbacks == 1
    })
    .await;
    // The last good version (swap-a: backend a first) serves again, once
    // its instance is built aside.
    until_served_by(proxy.addr, "a", Duration::from_secs(5)).await;
    let mut client = Client::h1(proxy.addr).await;
    for _ in 0..20 {
        assert_eq!(client.get("/").await.backend(), "a");
    }
    let (ok, failed) = load.finish().await;
    assert_eq!(failed, 0, "no request failed ({ok} answered)");
    let m = proxy.metrics.snapshot();
    assert!(m.plugin_traps >= 1, "{m:?}");
    assert_eq!(m.plugin_rollbacks, 1, "{m:?}");
}

#[tokio::test]
async fn with_last_good_a_failing_new_version_never_leaks_to_round_robin() {
    let dir = TempDir::new("last-good");
    let (_backends, proxy, target) = swap_a_setup(&dir, "last-good").await;
    let served_by_b = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let watcher = {
        let (addr, served_by_b) = (proxy.addr, served_by_b.clone());
        tokio::spawn(async move {
            let mut client = Client::h1(addr).await;
            for _ in 0..400 {
                let answer = client.get("/").await;
                assert_eq!(answer.status, 200);
                if answer.backend() != "a" {
                    served_by_b.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    install(&target, "swap-fail");
    wait_for(Duration::from_secs(10), || {
        proxy.metrics.snapshot().plugin_traps >= 3
    })
    .await;
    watcher.await.unwrap();
    let m = proxy.metrics.snapshot();
    assert!(m.last_good_selections >= 1, "{m:?}");
    assert_eq!(
        served_by_b.load(Ordering::Relaxed),
        0,
        "every request followed swap-a, before and after the swap: {m:?}"
    );
}

#[tokio::test]
async fn with_reject_a_failing_plugin_answers_503_with_the_reason() {
    let [a, b] = start_backends(["a", "b"]).await;
    let proxy = Proxy::start(&format!(
        "{SERVER}[plugins]\nload = [\"{}\"]\n\
         [pools.v2]\nstrategy = \"misbehave\"\nstrategy_config = {{ mode = \"trap\" }}\n\
         on_plugin_failure = \"reject\"\nbackends = [{}]\n",
        test_plugin("misbehave"),
        addresses(&[&a, &b])
    ))
    .await;
    let mut client = Client::h1(proxy.addr).await;
    for _ in 0..5 {
        let answer = client.get("/").await;
        assert_eq!(answer.status, 503);
        assert!(
            answer.body.contains("pool v2") && answer.body.contains("reject"),
            "{}",
            answer.body
        );
    }
    let m = proxy.metrics.snapshot();
    assert_eq!(m.plugin_rejections, 5, "{m:?}");
    assert_eq!(
        m.fallback_selections, 0,
        "nothing leaked to round robin: {m:?}"
    );
}

#[tokio::test]
async fn with_reject_a_rolled_back_pool_still_never_leaks_to_round_robin() {
    let dir = TempDir::new("reject-rollback");
    let (_backends, proxy, target) = swap_a_setup(&dir, "reject").await;
    let mut client = Client::h1(proxy.addr).await;
    assert_eq!(client.get("/").await.backend(), "a");
    install(&target, "swap-fail");
    let mut rejected = 0;
    for _ in 0..300 {
        let answer = client.get("/").await;
        match answer.status.as_u16() {
            503 => rejected += 1,
            200 => assert_eq!(answer.backend(), "a", "only swap-a's order, never b"),
            other => panic!("unexpected status {other}"),
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let m = proxy.metrics.snapshot();
    assert_eq!(m.plugin_rollbacks, 1, "{m:?}");
    assert_eq!(m.fallback_selections, 0, "{m:?}");
    assert!(rejected > 0, "the new version's failures were 503s");
    // Rolled back: swap-a answers every request again.
    for _ in 0..50 {
        let answer = client.get("/").await;
        assert_eq!((answer.status.as_u16(), answer.backend()), (200, "a"));
    }
}
