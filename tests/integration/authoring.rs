//! What a plugin author does, end to end, with the real binary: make a
//! crate outside this workspace with `veer plugin new`, build it with
//! `cargo build --release` alone, run its unit tests natively, check it,
//! and simulate it.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::*;

/// Runs `program` with `args` in `dir`; returns (success, stdout + stderr).
fn run(dir: &Path, program: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        // Its own target folder, kept between runs of the suite.
        .env(
            "CARGO_TARGET_DIR",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("authoring"),
        )
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// `veer plugin simulate` of `wasm` over 4 backends (zones a, a, b, b), half
/// the requests preferring zone a; returns its output and each backend's
/// count of first choices.
fn simulate_zones(dir: &Path, wasm: &str, requests: u32) -> (String, [u64; 4]) {
    let requests = requests.to_string();
    let (ok, text) = run(
        dir,
        env!("CARGO_BIN_EXE_veer"),
        &[
            "plugin",
            "simulate",
            wasm,
            "--backends",
            "4",
            "--requests",
            &requests,
            "--header",
            "x-prefer=a:1,-:1",
        ],
    );
    assert!(ok, "{text}");
    let share = |id: usize| -> u64 {
        text.lines()
            .find(|l| l.trim_start().starts_with(&format!("{id} 10.0.0.")))
            .and_then(|l| l.split_whitespace().nth(3))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no line for backend {id}:\n{text}"))
    };
    let shares = [share(0), share(1), share(2), share(3)];
    (text, shares)
}

#[test]
fn a_new_plugin_crate_builds_alone_passes_its_tests_and_checks_and_simulates() {
    let veer = env!("CARGO_BIN_EXE_veer");
    let dir = TempDir::new("authoring");
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk");
    let (ok, text) = run(
        &dir.join(""),
        veer,
        &[
            "plugin",
            "new",
            "my-strategy",
            "--sdk",
            sdk.to_str().unwrap(),
        ],
    );
    assert!(ok, "{text}");
    let krate = dir.join("my-strategy");
    let (ok, text) = run(
        &dir.join(""),
        veer,
        &["plugin", "new", "my-strategy", "--sdk", "."],
    );
    assert!(!ok && text.contains("exists already"), "{text}");

    // The versions this workspace was tested with, so no registry is asked.
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.lock"),
        krate.join("Cargo.lock"),
    )
    .unwrap();
    let (ok, text) = run(&krate, "cargo", &["build", "--release", "--offline"]);
    assert!(ok, "cargo build --release: {text}");
    let wasm = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("authoring/wasm32-wasip2/release/my_strategy.wasm");
    assert!(wasm.is_file(), "{}", wasm.display());
    let (ok, text) = run(&krate, "cargo", &["unit", "--offline"]);
    assert!(ok && text.contains("2 passed"), "cargo unit: {text}");

    let wasm = wasm.to_str().unwrap();
    let (ok, text) = run(&krate, veer, &["plugin", "check", wasm]);
    assert!(
        ok && text.contains("plugin: my-strategy 0.1.0")
            && text.contains("world:  veer:balancer@0.3.0"),
        "{text}"
    );
    // Half the requests prefer zone a (backends 0 and 1); the rest go round
    // all four: 0 and 1 get 3/8 each, 2 and 3 1/8 each.
    let (text, share) = simulate_zones(&krate, wasm, 1000);
    assert!((300..450).contains(&share[0]), "{text}");
    assert!((70..180).contains(&share[3]), "{text}");
    assert!(text.contains("failures: none"), "{text}");
}

/// `componentize-py`: `VEER_COMPONENTIZE_PY`, else on the `PATH` (`.ci/run`
/// installs it with pip).
fn componentize_py() -> String {
    std::env::var("VEER_COMPONENTIZE_PY").unwrap_or_else(|_| "componentize-py".into())
}

/// Builds `examples/python-zone` with `version` into `out`.
fn build_python_zone(dir: &TempDir, version: &str, out: &Path) {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/python-zone/app.py");
    let app = std::fs::read_to_string(source).unwrap();
    assert!(app.contains("\"0.1.0\""), "the example names its version");
    let app_dir = dir.join(&format!("app-{version}"));
    std::fs::create_dir_all(&app_dir).unwrap();
    std::fs::write(
        app_dir.join("app.py"),
        app.replace("\"0.1.0\"", &format!("{version:?}")),
    )
    .unwrap();
    let wit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit/0.3.0");
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk/python");
    let out_arg = out.to_str().unwrap();
    let (ok, text) = run(
        &app_dir,
        &componentize_py(),
        &[
            "-d",
            wit.to_str().unwrap(),
            "-w",
            "balancer",
            "componentize",
            "-p",
            ".",
            "-p",
            sdk.to_str().unwrap(),
            "app",
            "-o",
            out_arg,
        ],
    );
    assert!(
        ok,
        "componentize-py (pip install componentize-py==0.25.1, as .ci/run does): {text}"
    );
}

#[test]
fn the_python_sdk_and_the_python_example_pass_their_native_unit_tests() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for (dir, tests) in [("sdk/python", 7), ("examples/python-zone", 4)] {
        let out = Command::new("python3")
            .args(["-m", "unittest", "-v"])
            .current_dir(root.join(dir))
            .env("PYTHONPATH", root.join("sdk/python"))
            .output()
            .expect("python3");
        let text = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            out.status.success() && text.contains(&format!("Ran {tests} tests")),
            "{dir}: {text}"
        );
    }
}

#[test]
fn a_python_strategy_simulates_like_a_rust_one() {
    let dir = TempDir::new("python-simulate");
    let built = dir.join("py.wasm");
    build_python_zone(&dir, "0.1.0", &built);
    // As the Rust skeleton: half prefer zone a (backends 0 and 1), the rest
    // go round all four: 3/8, 3/8, 1/8, 1/8.
    let (text, share) = simulate_zones(&dir.join(""), built.to_str().unwrap(), 400);
    assert!((110..190).contains(&share[0]), "{text}");
    assert!((20..80).contains(&share[3]), "{text}");
    assert!(text.contains("failures: none"), "{text}");
}

#[tokio::test]
async fn a_python_strategy_balances_in_its_order_and_survives_a_hot_swap() {
    let [a, b, c] = start_backends(["a", "b", "c"]).await;
    let dir = TempDir::new("python");
    let built = dir.join("v1.wasm");
    build_python_zone(&dir, "0.1.0", &built);
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    install_by_rename(
        &plugins.join("python-zone.wasm"),
        &std::fs::read(&built).unwrap(),
    );
    let labelled = |backend: &Backend, zone: &str| {
        format!(
            "{{ address = \"{}\", labels = {{ zone = \"{zone}\" }} }}",
            backend.addr
        )
    };
    let config = format!(
        "{SERVER}[plugins]\ndir = \"{}\"\ndebounce_ms = 20\ncache_dir = \"{}\"\n\
         select_timeout_ms = 100\n\
         [pools.web]\nstrategy = \"py-zone\"\nslow_call_us = 20000\nbackends = [{}, {}, {}]\n",
        plugins.display(),
        dir.join("cache").display(),
        labelled(&a, "a"),
        labelled(&b, "b"),
        labelled(&c, "b"),
    );
    let path = dir.join("veer.toml");
    std::fs::write(&path, config).unwrap();
    // Python runs ~40 times the instructions of Rust per call (and this is
    // a debug build on a shared machine): roomier limits, as the README
    // advises for Python strategies.
    let (proxy, _handle) = Proxy::start_file(&path).await;

    // Zone b first, in turn: b and c alternate; no preference: all in turn.
    let mut client = Client::h1(proxy.addr).await;
    let mut zoned = Vec::new();
    for _ in 0..4 {
        zoned.push(
            client
                .get_with("/", &[("x-prefer", "b")])
                .await
                .backend()
                .to_string(),
        );
    }
    zoned.sort();
    assert_eq!(zoned, ["b", "b", "c", "c"]);
    let mut any = Vec::new();
    for _ in 0..3 {
        any.push(client.get("/").await.backend().to_string());
    }
    any.sort();
    assert_eq!(any, ["a", "b", "c"]);

    // A new version dropped in under load: no request fails.
    let next = dir.join("v2.wasm");
    build_python_zone(&dir, "0.1.1", &next);
    let load = Load::start(proxy.addr, 4, Duration::from_secs(120));
    install_by_rename(
        &plugins.join("python-zone.wasm"),
        &std::fs::read(&next).unwrap(),
    );
    let metrics = proxy.metrics.clone();
    wait_for(Duration::from_secs(90), || {
        metrics.snapshot().plugin_swaps >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (ok, failed) = load.finish().await;
    assert_eq!(failed, 0, "{failed} of {} requests failed", ok + failed);
    let m = proxy.metrics.snapshot();
    assert_eq!(m.plugin_traps + m.plugin_timeouts, 0, "{m:?}");
}
