//! What a plugin author does, end to end, with the real binary: make a
//! crate outside this workspace with `veer plugin new`, build it with
//! `cargo build --release` alone, run its unit tests natively, check it,
//! and simulate it.

use std::path::Path;
use std::process::Command;

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
    let (ok, text) = run(
        &krate,
        veer,
        &[
            "plugin",
            "simulate",
            wasm,
            "--backends",
            "4",
            "--requests",
            "1000",
            "--header",
            "x-prefer=a:1,-:1",
        ],
    );
    assert!(ok, "{text}");
    // Half the requests prefer zone a (backends 0 and 1); the rest go round
    // all four: 0 and 1 get 3/8 each, 2 and 3 1/8 each.
    let share = |id: &str| -> u64 {
        text.lines()
            .find(|l| l.trim_start().starts_with(&format!("{id} 10.0.0.")))
            .and_then(|l| l.split_whitespace().nth(3))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no line for backend {id}:\n{text}"))
    };
    assert!((300..450).contains(&share("0")), "{text}");
    assert!((70..180).contains(&share("3")), "{text}");
    assert!(text.contains("failures: none"), "{text}");
}
