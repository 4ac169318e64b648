//! Plugins that misbehave within the rules, or at their edges: slow but
//! legal, host-call storms, answers far longer than the pool, huge response
//! headers, log spam, two memories. Every request is still answered, and
//! the cost lands on the plugin (rested), not on other pools.

use std::time::{Duration, Instant};

use crate::support::*;

/// Two pools on one worker: `/slow/…` goes to `misbehave` in `mode`, the
/// rest to round robin over the same backends.
fn two_pools(mode: &str, backends: &[&Backend]) -> String {
    format!(
        "{SERVER}[plugins]\nload = [\"{}\"]\nselect_timeout_ms = 100\n\
         [pools.slow]\nstrategy = \"misbehave\"\nstrategy_config = {{ mode = \"{mode}\" }}\nbackends = [{list}]\n\
         [pools.fast]\nbackends = [{list}]\n\
         [[routes]]\npath_prefix = \"/slow/\"\npool = \"slow\"\n\
         [[routes]]\npool = \"fast\"\n",
        misbehave_for(mode),
        list = addresses(backends),
    )
}

/// The `misbehave` plugin for `mode`: as built now, but for `long` as built
/// for 0.2.0, whose answers really hold 10,000 ids (the SDK now stops an
/// answer at 1,024, the most the host reads).
fn misbehave_for(mode: &str) -> String {
    match mode {
        "long" => format!(
            "{}/../tests/fixtures/misbehave-wit-0.2.0.wasm",
            env!("CARGO_MANIFEST_DIR")
        ),
        _ => test_plugin("misbehave"),
    }
}

/// Requests per second answered to `paths[0]` over `window`, measured
/// after `settle`, while 4 clients load each of `paths`; also asserts no
/// request failed.
async fn rate_of(proxy: &Proxy, paths: &[&'static str], settle: Duration, window: Duration) -> f64 {
    let limit = settle + window + Duration::from_secs(5);
    let loads: Vec<Load> = paths
        .iter()
        .map(|path| Load::start_on(proxy.addr, path, 4, limit))
        .collect();
    tokio::time::sleep(settle).await;
    let before = loads[0].ok.load(std::sync::atomic::Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(window).await;
    let after = loads[0].ok.load(std::sync::atomic::Ordering::Relaxed);
    let rate = (after - before) as f64 / started.elapsed().as_secs_f64();
    for (path, load) in paths.iter().zip(loads) {
        let (ok, failed) = load.finish().await;
        assert_eq!(failed, 0, "no request to {path} fails ({ok} answered)");
    }
    rate
}

/// The fast pool's rate while both pools are loaded.
async fn fast_pool_rate(proxy: &Proxy, settle: Duration, window: Duration) -> f64 {
    rate_of(proxy, &["/", "/slow/x"], settle, window).await
}

/// The mean of `rate` on a proxy whose slow pool's plugin is in `modes[1]`,
/// over its mean in `modes[0]`: alternating, two rounds each, so drift on a
/// shared machine hits both alike.
async fn kept_share(
    backends: &[&Backend],
    modes: [&str; 2],
    rate: impl AsyncFn(&Proxy) -> f64,
) -> f64 {
    let mut sums = [0.0; 2];
    for round in 0..2 {
        for (i, mode) in modes.iter().enumerate() {
            let proxy = Proxy::start(&two_pools(mode, backends)).await;
            let measured = rate(&proxy).await;
            println!("round {round}: plugin mode {mode:>5}: {measured:.0} requests/s");
            sums[i] += measured;
            proxy.stop().await;
        }
    }
    sums[1] / sums[0]
}

#[tokio::test]
async fn a_slow_but_legal_plugin_is_rested_and_every_request_is_answered() {
    let [a, b] = start_backends(["a", "b"]).await;
    let proxy = Proxy::start(&two_pools("slow", &[&a, &b])).await;
    fast_pool_rate(
        &proxy,
        Duration::from_millis(500),
        Duration::from_millis(500),
    )
    .await;
    let m = proxy.metrics.snapshot();
    assert!(m.plugin_slow_calls >= 3, "slow calls are counted: {m:?}");
    assert!(
        m.plugin_slow_calls < 100,
        "and the plugin is rested after a few: {m:?}"
    );
    assert!(m.fallback_selections > 0, "{m:?}");
    assert_eq!(m.plugin_timeouts + m.plugin_traps, 0, "{m:?}");
}

/// The isolation figure the sandbox promises: with a slow plugin in one
/// pool, another pool on the same worker keeps at least 80% of the
/// throughput it has when that plugin is fast. Timing-sensitive: run alone
/// (`.ci/run` runs it with `--ignored --test-threads=1`).
#[tokio::test]
#[ignore]
async fn measure_the_other_pool_on_a_slow_plugins_worker_keeps_80_percent_of_its_throughput() {
    let [a, b] = start_backends(["a", "b"]).await;
    let kept = kept_share(&[&a, &b], ["first", "slow"], async |proxy| {
        fast_pool_rate(proxy, Duration::from_millis(1500), Duration::from_secs(2)).await
    })
    .await;
    println!("the fast pool keeps {:.0}% of its throughput", kept * 100.0);
    assert!(kept >= 0.8, "kept only {:.0}%", kept * 100.0);
}

/// A 10,000-id answer (for a pool of two) costs the plugin's own work of
/// building it, but the host reads no further than the pool: throughput
/// is not halved. Timing-sensitive: run alone, like the one above.
#[tokio::test]
#[ignore]
async fn measure_a_ten_thousand_id_answer_does_not_halve_throughput() {
    let [a, b] = start_backends(["a", "b"]).await;
    let kept = kept_share(&[&a, &b], ["first", "long"], async |proxy| {
        rate_of(
            proxy,
            &["/slow/x"],
            Duration::from_millis(300),
            Duration::from_secs(2),
        )
        .await
    })
    .await;
    println!(
        "with 10,000-id answers the pool keeps {:.0}% of its throughput",
        kept * 100.0
    );
    assert!(kept >= 0.5, "kept only {:.0}%", kept * 100.0);
}

/// Time the host spends copying what a plugin hands it costs the plugin
/// no fuel, so fuel alone never calls this plugin slow. A call over the
/// budget makes the worker time the next calls in thread CPU time, and
/// those rest it. On a loaded machine some of those calls run past the
/// deadline instead of merely over the budget: that is time catching the
/// plugin too, so both count; fuel (a trap) must catch none.
#[tokio::test]
async fn a_plugin_slow_in_host_calls_that_fuel_does_not_see_is_rested_by_thread_cpu_time() {
    let [a, b] = start_backends(["a", "b"]).await;
    let proxy = Proxy::start(&two_pools("heavy-log", &[&a, &b])).await;
    fast_pool_rate(
        &proxy,
        Duration::from_millis(300),
        Duration::from_millis(300),
    )
    .await;
    let m = proxy.metrics.snapshot();
    assert!(m.plugin_slow_calls + m.plugin_timeouts >= 3, "{m:?}");
    assert_eq!(m.plugin_traps, 0, "fuel never sees host-call time: {m:?}");
    assert!(m.fallback_selections > 0, "rested: {m:?}");
}

#[tokio::test]
async fn a_plugin_storming_host_calls_is_cut_off_counted_and_rested() {
    let [a, b] = start_backends(["a", "b"]).await;
    let proxy = Proxy::start(&two_pools("storm", &[&a, &b])).await;
    fast_pool_rate(
        &proxy,
        Duration::from_millis(300),
        Duration::from_millis(300),
    )
    .await;
    let m = proxy.metrics.snapshot();
    assert!(m.plugin_host_call_storms >= 3, "{m:?}");
    assert!(m.fallback_selections > 0, "rested: {m:?}");
}

#[tokio::test]
async fn a_ten_thousand_id_answer_is_read_only_as_far_as_the_pool_goes() {
    let [a, b] = start_backends(["a", "b"]).await;
    let proxy = Proxy::start(&two_pools("long", &[&a, &b])).await;
    let mut client = Client::h1(proxy.addr).await;
    for _ in 0..20 {
        let answer = client.get("/slow/x").await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.backend(), "a", "its first id is honoured");
    }
    let m = proxy.metrics.snapshot();
    assert_eq!(m.plugin_long_answers, 20, "{m:?}");
    assert_eq!(m.fallback_selections, 0, "{m:?}");
}

#[tokio::test]
async fn a_plugin_setting_a_huge_response_header_gets_an_error_and_the_request_is_served() {
    let [a, b] = start_backends(["a", "b"]).await;
    let proxy = Proxy::start(&two_pools("big-header", &[&a, &b])).await;
    let mut client = Client::h1(proxy.addr).await;
    for i in 0..5 {
        let answer = client.get("/slow/x").await;
        assert_eq!(answer.status, 200);
        assert!(answer.headers.get("x-big").is_none());
        // Its answer is used; building a 1 MiB string may make it a slow
        // call, so from the fourth request on it may be rested.
        if i < 3 {
            assert_eq!(answer.backend(), "a");
        }
    }
}

/// Runs the binary on `toml` until `requests` have been sent to it and
/// returns what it wrote on stderr.
async fn stderr_of(toml: &str, requests: impl AsyncFnOnce(std::net::SocketAddr)) -> String {
    let dir = TempDir::new("sandbox-log");
    run_binary(&dir, toml, requests).await;
    std::fs::read_to_string(dir.join("stderr")).unwrap()
}

#[tokio::test]
async fn one_plugins_log_spam_does_not_hide_another_plugins_failures() {
    let [a, b] = start_backends(["a", "b"]).await;
    let toml = format!(
        "[server]\nlisten = \"{{listen}}\"\nworkers = 1\n[plugins]\nload = [\"{}\"]\n\
         [pools.chatty]\nstrategy = \"misbehave\"\nstrategy_config = {{ mode = \"spam\" }}\nbackends = [{list}]\n\
         [pools.broken]\nstrategy = \"misbehave\"\nstrategy_config = {{ mode = \"trap\" }}\nbackends = [{list}]\n\
         [[routes]]\npath_prefix = \"/chatty/\"\npool = \"chatty\"\n\
         [[routes]]\npool = \"broken\"\n",
        test_plugin("misbehave"),
        list = addresses(&[&a, &b]),
    );
    let log = stderr_of(&toml, async |addr| {
        let mut client = Client::h1(addr).await;
        for _ in 0..20 {
            assert_eq!(client.get("/chatty/x").await.status, 200);
        }
        assert_eq!(client.get("/broken").await.status, 200);
        // Past the second the spam was in: the next line says how much was dropped.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(client.get("/chatty/x").await.status, 200);
    })
    .await;
    let spam = log.matches("misbehave: spam line").count();
    assert!(
        (10..=30).contains(&spam),
        "the plugin's own lines are capped per second, got {spam}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("pool=broken") && l.contains("trapped")),
        "the other pool's failure is logged:\n{log}"
    );
    assert!(
        log.lines().any(|l| l.contains("dropped=")),
        "a later line says how many were dropped:\n{log}"
    );
}

/// A 3 MiB log message is over what one host call may carry: the call
/// traps before the host copies it, and the request is still served.
#[tokio::test]
async fn a_host_call_carrying_megabytes_traps_and_the_request_is_served() {
    let [a, b] = start_backends(["a", "b"]).await;
    let toml = format!(
        "[server]\nlisten = \"{{listen}}\"\nworkers = 1\n[plugins]\nload = [\"{}\"]\n\
         [pools.loud]\nstrategy = \"misbehave\"\nstrategy_config = {{ mode = \"huge-log\" }}\nbackends = [{list}]\n\
         [[routes]]\npool = \"loud\"\n",
        test_plugin("misbehave"),
        list = addresses(&[&a, &b]),
    );
    let log = stderr_of(&toml, async |addr| {
        let mut client = Client::h1(addr).await;
        for _ in 0..5 {
            assert_eq!(client.get("/x").await.status, 200);
        }
    })
    .await;
    assert!(
        log.lines()
            .any(|l| l.contains("trapped") && l.contains("too much data")),
        "the trap says why:\n{log}"
    );
    assert!(!log.contains("xxxxxxxx"), "the message was never logged");
}

#[test]
fn a_component_with_two_memories_is_refused_by_plugin_check() {
    let dir = TempDir::new("two-memories");
    let file = dir.join("two.wasm");
    // A core module with two memories of one page each, in a component
    // (binary format, by hand: `(component (core module (memory 1) (memory 1)))`).
    let module: &[u8] = b"\0asm\x01\0\0\0\x05\x05\x02\x00\x01\x00\x01";
    let mut component = b"\0asm\x0d\x00\x01\x00\x01".to_vec();
    component.push(module.len() as u8);
    component.extend_from_slice(module);
    std::fs::write(&file, component).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_veer"))
        .args(["plugin", "check"])
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("multi-memory") || stderr.contains("multiple memories"),
        "{stderr}"
    );
}

/// `veer plugin check FILE --config JSON`: (succeeded, stdout + stderr).
fn plugin_check(file: &str, config: &str) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_veer"))
        .args(["plugin", "check", file, "--config", config])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn plugin_check_runs_select_under_the_real_limits_and_reports_answers_costs_and_failures() {
    let misbehave = test_plugin("misbehave");
    let (ok, text) = plugin_check(&misbehave, r#"{"mode":"first"}"#);
    assert!(ok, "{text}");
    assert!(text.contains("set-backends: ok"), "{text}");
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("select: ") && l.contains("-> [0] in "))
            .count(),
        4,
        "four synthetic requests, each answered:\n{text}"
    );

    let (ok, text) = plugin_check(&misbehave, r#"{"mode":"spin"}"#);
    assert!(
        !ok,
        "a plugin that loops in select fails the check:\n{text}"
    );
    assert!(text.contains("FAILED: ran past its deadline"), "{text}");

    let (ok, text) = plugin_check(&misbehave, r#"{"mode":"trap"}"#);
    assert!(!ok && text.contains("FAILED: trapped"), "{text}");

    let (ok, text) = plugin_check(&misbehave, r#"{"mode":"slow"}"#);
    assert!(ok, "slow is legal:\n{text}");
    assert!(text.contains("slower than plugins.slow_call_us"), "{text}");
}

/// Four pools of a built-in on two workers: twelve instances (one per
/// worker and a spare each) of ~1 MiB. The process's plugin memory holds
/// them all under a cap with room for them; a cap without room refuses the
/// configuration, naming the setting, rather than running pools short.
#[tokio::test]
async fn plugin_memory_of_all_instances_together_stays_under_the_process_cap() {
    let [a, b] = start_backends(["a", "b"]).await;
    let list = addresses(&[&a, &b]);
    let config = |total_mib: u32| {
        let mut toml = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 2\n\
             [plugins]\nmemory_limit_mib = 2\ntotal_memory_mib = {total_mib}\n"
        );
        for pool in ["p0", "p1", "p2", "p3"] {
            toml += &format!(
                "[pools.{pool}]\nstrategy = \"round-robin\"\nbackends = [{list}]\n\
                 [[routes]]\npath_prefix = \"/{pool}/\"\npool = \"{pool}\"\n"
            );
        }
        toml
    };

    let err = Proxy::try_start(&config(4)).await.err().expect("refused");
    assert!(
        err.to_string().contains("plugins.total_memory_mib (4 MiB)"),
        "{err}"
    );

    let proxy = Proxy::start(&config(64)).await;
    let mut client = Client::h1(proxy.addr).await;
    for _ in 0..10 {
        for pool in ["p0", "p1", "p2", "p3"] {
            assert_eq!(client.get(&format!("/{pool}/x")).await.status, 200);
        }
    }
    let metrics = Client::h1(proxy.admin.unwrap())
        .await
        .get("/metrics")
        .await
        .body;
    let gauge = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{metrics}"))
    };
    let (used, cap) = (
        gauge("veer_plugin_memory_bytes"),
        gauge("veer_plugin_memory_limit_bytes"),
    );
    assert_eq!(cap, 64 << 20);
    assert!(
        (12 * (64 << 10)..=12 * (2 << 20)).contains(&used),
        "twelve instances of at least a page and at most 2 MiB each: {used} bytes"
    );
    assert_eq!(proxy.metrics.snapshot().fallback_selections, 0);
}

/// Every way the test plugin misbehaves, under concurrent load on one
/// worker and on two: no request fails. (The plugin is rested, falls back
/// or is cut short; which one is each mode's own test.)
#[tokio::test]
async fn under_concurrent_load_no_misbehaving_plugin_fails_a_request() {
    let [a, b] = start_backends(["a", "b"]).await;
    let modes = [
        "spin",
        "grow",
        "trap",
        "empty",
        "unknown",
        "slow",
        "heavy-log",
        "storm",
        "long",
        "big-header",
        "spam",
        "huge-log",
    ];
    for workers in [1, 2] {
        for mode in modes {
            let toml =
                two_pools(mode, &[&a, &b]).replace("workers = 1", &format!("workers = {workers}"));
            let proxy = Proxy::start(&toml).await;
            let load = Load::start_on(proxy.addr, "/slow/x", 4, Duration::from_secs(10));
            tokio::time::sleep(Duration::from_millis(300)).await;
            let (ok, failed) = load.finish().await;
            assert_eq!(failed, 0, "{mode} on {workers} workers: {ok} answered");
            assert!(ok >= 4, "{mode} on {workers} workers: only {ok} answered");
        }
    }
}
