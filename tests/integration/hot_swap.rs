//! Plugins swapped by dropping files into the plugin folder, and configuration
//! reloads, under load: no request fails, traffic follows the change, bad
//! input changes nothing.

use std::path::Path;
use std::time::Duration;

use crate::support::*;

/// Replaces `target` with `bytes`: in place (truncate and write), or written
/// aside under a hidden name then renamed over it.
fn install(target: &Path, bytes: &[u8], by_rename: bool) {
    if by_rename {
        install_by_rename(target, bytes);
    } else {
        std::fs::write(target, bytes).unwrap();
    }
}

/// A pool using the `swapped` plugin; the plugin folder and cache live in
/// `dir`. `plugins_extra` is added to `[plugins]`.
fn folder_config_with(dir: &TempDir, backends: &[&Backend], plugins_extra: &str) -> String {
    format!(
        "{SERVER}[plugins]\ndir = \"{}\"\ndebounce_ms = 20\ncache_dir = \"{}\"\n{plugins_extra}\
         [pools.web]\nstrategy = \"swapped\"\nbackends = [{}]\n",
        dir.join("plugins").display(),
        dir.join("cache").display(),
        addresses(backends)
    )
}

fn folder_config(dir: &TempDir, backends: &[&Backend]) -> String {
    folder_config_with(dir, backends, "")
}

/// Two backends `a` and `b`, and a proxy whose `swapped` strategy is the
/// `initial` test plugin dropped in `dir`'s plugin folder; returns the
/// plugin's path there. (Backends first: they must outlive the proxy.)
async fn swap_setup(dir: &TempDir, initial: &str) -> (Backend, Backend, Proxy, std::path::PathBuf) {
    let [a, b] = start_backends(["a", "b"]).await;
    std::fs::create_dir_all(dir.join("plugins")).unwrap();
    let target = dir.join("plugins").join("swapped.wasm");
    install(&target, &plugin_bytes(initial), false);
    let proxy = Proxy::start(&folder_config(dir, &[&a, &b])).await;
    (a, b, proxy, target)
}

#[tokio::test]
async fn fifty_swaps_under_load_drop_no_request_and_traffic_follows_each_plugin() {
    let dir = TempDir::new("swap");
    let (_a, _b, proxy, target) = swap_setup(&dir, "swap-a").await;
    until_served_by(proxy.addr, "a", Duration::from_secs(5)).await;

    let (plugin_a, plugin_b) = (plugin_bytes("swap-a"), plugin_bytes("swap-b"));
    let load = Load::start(proxy.addr, 16, Duration::from_secs(120));
    let mut latencies = Vec::new();
    for i in 0..50 {
        let (bytes, expect) = if i % 2 == 0 {
            (&plugin_b, "b")
        } else {
            (&plugin_a, "a")
        };
        let started = std::time::Instant::now();
        install(&target, bytes, i % 4 >= 2);
        until_served_by(proxy.addr, expect, Duration::from_secs(10)).await;
        latencies.push(started.elapsed());
        // Once the new generation serves, every new request is its.
        let mut client = Client::h1(proxy.addr).await;
        for _ in 0..5 {
            assert_eq!(client.get("/").await.backend(), expect, "swap {i}");
        }
    }
    let (ok, failed) = load.finish().await;
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed during the swaps",
        ok + failed
    );
    assert!(ok > 500, "the load ran: {ok} requests");
    assert_eq!(proxy.metrics.snapshot().plugin_swaps, 50);
    latencies.sort();
    eprintln!(
        "swap latency, file written -> first request on the new plugin (debounce 20 ms): median {:?}, max {:?}; {ok} requests under load, 0 failed",
        latencies[25], latencies[49]
    );
}

#[tokio::test]
async fn bad_plugin_files_are_refused_and_the_running_plugin_keeps_serving() {
    let dir = TempDir::new("bad");
    let (_a, _b, proxy, target) = swap_setup(&dir, "swap-a").await;
    until_served_by(proxy.addr, "a", Duration::from_secs(5)).await;
    let load = Load::start(proxy.addr, 4, Duration::from_secs(60));

    let cases: [(&str, Vec<u8>, &str); 6] = [
        ("not wasm", b"this is not a plugin".to_vec(), "swapped.wasm"),
        (
            "wrong world (veer:balancer@9.9.9)",
            plugin_bytes("future-world"),
            "swapped.wasm",
        ),
        ("traps in init", plugin_bytes("swap-trap"), "swapped.wasm"),
        (
            "refuses its config",
            plugin_bytes("swap-refuse"),
            "swapped.wasm",
        ),
        (
            "takes a name another file has",
            plugin_bytes("swap-b"),
            "second.wasm",
        ),
        (
            "takes a built-in's name",
            std::fs::read(format!(
                "{}/../tests/fixtures/round-robin-wit-0.1.0.wasm",
                env!("CARGO_MANIFEST_DIR")
            ))
            .unwrap(),
            "rr.wasm",
        ),
    ];
    for (i, (case, bytes, file)) in cases.iter().enumerate() {
        install(&dir.join("plugins").join(file), bytes, false);
        let refusals = &proxy.metrics;
        wait_for(Duration::from_secs(10), || {
            refusals.snapshot().plugin_refusals == i as u64 + 1
        })
        .await;
        let mut client = Client::h1(proxy.addr).await;
        for _ in 0..3 {
            assert_eq!(
                client.get("/").await.backend(),
                "a",
                "after a file that {case}, plugin A still serves"
            );
        }
        if *file != "swapped.wasm" {
            std::fs::remove_file(dir.join("plugins").join(file)).unwrap();
        }
    }
    // Deleting the only source of `swapped` would leave the pool with nothing:
    // refused, the loaded plugin keeps serving.
    std::fs::remove_file(&target).unwrap();
    wait_for(Duration::from_secs(10), || {
        proxy.metrics.snapshot().plugin_refusals == 7
    })
    .await;
    assert_eq!(Client::h1(proxy.addr).await.get("/").await.backend(), "a");

    let (ok, failed) = load.finish().await;
    assert_eq!(failed, 0, "{failed} of {} failed", ok + failed);
    assert_eq!(proxy.metrics.snapshot().plugin_swaps, 0);
}

#[tokio::test]
async fn deleting_a_folder_plugin_returns_its_pool_to_what_the_config_names() {
    let [a, b] = start_backends(["a", "b"]).await;
    let dir = TempDir::new("delete");
    std::fs::create_dir_all(dir.join("plugins")).unwrap();
    // The configuration loads B; the folder's A overrides it while present.
    let config = folder_config_with(
        &dir,
        &[&a, &b],
        &format!("load = [\"{}\"]\n", test_plugin("swap-b")),
    );
    let proxy = Proxy::start(&config).await;
    assert_eq!(
        Client::h1(proxy.addr).await.get("/").await.backend(),
        "b",
        "the configured plugin serves"
    );
    install(
        &dir.join("plugins").join("swapped.wasm"),
        &plugin_bytes("swap-a"),
        true,
    );
    until_served_by(proxy.addr, "a", Duration::from_secs(10)).await;
    std::fs::remove_file(dir.join("plugins").join("swapped.wasm")).unwrap();
    until_served_by(proxy.addr, "b", Duration::from_secs(10)).await;
    assert_eq!(proxy.metrics.snapshot().plugin_refusals, 0);
}

fn reload_config(backends: &[&Backend], strategy: &str) -> String {
    format!(
        "{SERVER}[plugins]\ndir = \"\"\ndebounce_ms = 20\n[pools.web]\nstrategy = \"{strategy}\"\nbackends = [{}]\n",
        addresses(backends)
    )
}

#[tokio::test]
async fn config_reloads_under_load_drop_no_request_and_a_bad_one_changes_nothing() {
    let [a, b, c] = start_backends(["a", "b", "c"]).await;
    let dir = TempDir::new("reload");
    let path = dir.join("veer.toml");
    std::fs::write(&path, reload_config(&[&a, &b], "round-robin")).unwrap();
    let (proxy, handle) = Proxy::start_file(&path).await;
    let load = Load::start(proxy.addr, 16, Duration::from_secs(120));
    for i in 0..10u64 {
        // Alternate the backend set (and the strategy); by file change on
        // even rounds, by an explicit reload (as SIGHUP) on odd ones.
        let (set, only): (Vec<&Backend>, Option<&str>) = if i % 2 == 0 {
            (vec![&c], Some("c"))
        } else {
            (vec![&a, &b], None)
        };
        let strategy = if i % 2 == 0 {
            "least-connections"
        } else {
            "round-robin"
        };
        std::fs::write(&path, reload_config(&set, strategy)).unwrap();
        if i % 2 == 1 {
            handle.reload();
        }
        wait_for(Duration::from_secs(10), || {
            proxy.metrics.snapshot().config_reloads > i
        })
        .await;
        // Allow the (even-round) file event to settle before the next write.
        tokio::time::sleep(Duration::from_millis(60)).await;
        let seen = Client::h1(proxy.addr)
            .await
            .get("/")
            .await
            .backend()
            .to_string();
        match only {
            Some(name) => assert_eq!(seen, name, "round {i}"),
            None => assert!(seen == "a" || seen == "b", "round {i}: {seen}"),
        }
    }
    let reloads = proxy.metrics.snapshot().config_reloads;
    // A configuration with a mistake: refused by key, the running one stays.
    std::fs::write(
        &path,
        reload_config(&[&a], "round-robin").replace("backends = [", "backends = [\"nonsense\", "),
    )
    .unwrap();
    wait_for(Duration::from_secs(10), || {
        proxy.metrics.snapshot().config_reload_refusals == 1
    })
    .await;
    assert_eq!(proxy.metrics.snapshot().config_reloads, reloads);
    let seen = Client::h1(proxy.addr)
        .await
        .get("/")
        .await
        .backend()
        .to_string();
    assert!(
        seen == "a" || seen == "b",
        "the last good configuration serves: {seen}"
    );

    let (ok, failed) = load.finish().await;
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed during reloads",
        ok + failed
    );
}

#[test]
fn the_compiled_plugin_cache_is_used_on_restart_and_a_corrupt_entry_is_recompiled() {
    let dir = TempDir::new("cache");
    let bytes = plugin_bytes("swap-a");
    let limits = veer::config::PluginsSection::default().limits();
    let load = |expect: (u64, u64)| {
        let runtime = veer::internals::Runtime::new(Some(dir.0.clone())).unwrap();
        let plugin = runtime.load("swap-a", &bytes, limits).unwrap();
        assert_eq!(plugin.name(), "swapped");
        assert_eq!(runtime.cache_counts(), Some(expect), "(hits, compiles)");
    };
    load((0, 1)); // first start: compiled and stored
    load((1, 0)); // restart: taken from the cache
    let entry = std::fs::read_dir(&dir.0)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut stored = std::fs::read(&entry).unwrap();
    let middle = stored.len() / 2;
    stored[middle] ^= 0xff;
    std::fs::write(&entry, &stored).unwrap();
    load((0, 1)); // corrupt entry: not trusted, recompiled
    load((1, 0)); // and stored sound again
}

#[test]
fn plugin_check_prints_name_version_world_and_the_init_result() {
    let veer = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_veer"))
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, text) = veer(&[
        "plugin",
        "check",
        &test_plugin("zone-affinity"),
        "--config",
        r#"{"header":"x-dc"}"#,
    ]);
    assert!(ok, "{text}");
    assert!(
        text.contains("plugin: zone-affinity 0.1.0")
            && text.contains("world:  veer:balancer@0.3.0")
            && text.contains("init:   ok"),
        "{text}"
    );
    let (ok, text) = veer(&[
        "plugin",
        "check",
        &test_plugin("zone-affinity"),
        "--config",
        r#"{"hedaer":"x"}"#,
    ]);
    assert!(
        !ok && text.contains("init:   refused") && text.contains("hedaer"),
        "{text}"
    );
    let (ok, text) = veer(&["plugin", "check", &test_plugin("future-world")]);
    assert!(
        !ok && text.contains("veer:balancer@9.9.9") && text.contains("veer:balancer@0.2.0"),
        "{text}"
    );
    // What a 0.3.0 plugin asks for is listed; an older world asks nothing.
    let (ok, text) = veer(&["plugin", "check", &test_plugin("feedback")]);
    assert!(ok && text.contains("asks:   outcomes, hand-over"), "{text}");
    let older = format!(
        "{}/../tests/fixtures/round-robin-wit-0.2.0.wasm",
        env!("CARGO_MANIFEST_DIR")
    );
    let (ok, text) = veer(&["plugin", "check", &older]);
    assert!(
        ok && text.contains("world:  veer:balancer@0.2.0") && !text.contains("asks:"),
        "{text}"
    );
}

/// The `veer` binary, killed on drop.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn a_thousand_swaps_keep_resident_memory_within_16_mib_of_the_warm_level() {
    use std::io::BufRead;
    const SWAPS: usize = 1000;
    const BOUND_KIB: u64 = 16 * 1024;
    let [a, b] = start_backends(["a", "b"]).await;
    let dir = TempDir::new("soak");
    std::fs::create_dir_all(dir.join("plugins")).unwrap();
    let target = dir.join("plugins").join("swapped.wasm");
    install(&target, &plugin_bytes("swap-a"), false);
    let config = dir.join("veer.toml");
    std::fs::write(
        &config,
        format!(
            "{}[admin]\nlisten = \"127.0.0.1:0\"\n",
            folder_config(&dir, &[&a, &b]).replace("debounce_ms = 20", "debounce_ms = 5")
        ),
    )
    .unwrap();
    let mut child = Child(
        std::process::Command::new(env!("CARGO_BIN_EXE_veer"))
            .args(["run", "--config", config.to_str().unwrap()])
            .env("RUST_LOG", "veer=info")
            .env("NO_COLOR", "1")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // Its address, from its log; the rest of the log is drained meanwhile.
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let stderr = child.0.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(rest) = line.split("addr=").nth(1) {
                let _ = addr_tx.send(rest.split_whitespace().next().unwrap().to_string());
            }
        }
    });
    let addr: std::net::SocketAddr = addr_rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap()
        .parse()
        .unwrap();
    let pid = child.0.id();

    let (plugin_a, plugin_b) = (plugin_bytes("swap-a"), plugin_bytes("swap-b"));
    let started = std::time::Instant::now();
    let mut warm = (0, 0);
    for i in 0..SWAPS {
        let (bytes, expect) = if i % 2 == 0 {
            (&plugin_b, "b")
        } else {
            (&plugin_a, "a")
        };
        install(&target, bytes, i % 2 == 1);
        until_served_by(addr, expect, Duration::from_secs(10)).await;
        if i == 99 {
            warm = memory_kib(pid).unwrap();
        }
    }
    let (end, peak) = memory_kib(pid).unwrap();
    eprintln!(
        "soak: {SWAPS} swaps in {:?}; RSS after 100 swaps {} KiB, after {SWAPS} {} KiB (growth {} KiB, bound {BOUND_KIB} KiB), peak {} KiB",
        started.elapsed(),
        warm.0,
        end,
        end as i64 - warm.0 as i64,
        peak
    );
    assert!(
        end <= warm.0 + BOUND_KIB,
        "resident memory grew from {} to {end} KiB over {} swaps",
        warm.0,
        SWAPS - 100
    );
}
