//! The `veer` binary refuses invalid configurations, naming the key.

use crate::support::veer;

fn write_config(name: &str, text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("veer-test-{}-{name}.toml", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn check_accepts_a_valid_config_and_names_its_strategy() {
    let path = write_config("valid", "[pools.web]\nbackends = [\"127.0.0.1:9\"]\n");
    let (ok, stdout, stderr) = veer(&["check", path.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("pool web: strategy round-robin"),
        "{stdout}"
    );
}

#[test]
fn check_refuses_a_wrong_type_and_names_the_key_path() {
    let path = write_config(
        "bad-type",
        "[pools.web]\nbackends = [\"127.0.0.1:9\", { address = \"127.0.0.1:10\", weight = \"heavy\" }]\n",
    );
    let (ok, _, stderr) = veer(&["check", path.to_str().unwrap()]);
    assert!(!ok);
    assert!(stderr.contains("pools.web.backends[1].weight"), "{stderr}");
}

#[test]
fn run_refuses_an_unknown_strategy_naming_the_key_and_the_choices() {
    let path = write_config(
        "bad-strategy",
        "[pools.web]\nstrategy = \"fastest\"\nbackends = [\"127.0.0.1:9\"]\n",
    );
    let (ok, _, stderr) = veer(&["run", "--config", path.to_str().unwrap()]);
    assert!(!ok);
    assert!(stderr.contains("pools.web.strategy"), "{stderr}");
    assert!(
        stderr.contains("round-robin"),
        "lists what is available: {stderr}"
    );
}

#[test]
fn check_refuses_a_route_to_a_missing_pool() {
    let path = write_config(
        "bad-route",
        "[pools.web]\nbackends = [\"127.0.0.1:9\"]\n[[routes]]\npool = \"api\"\n",
    );
    let (ok, _, stderr) = veer(&["check", path.to_str().unwrap()]);
    assert!(!ok);
    assert!(stderr.contains("routes[0].pool"), "{stderr}");
}
