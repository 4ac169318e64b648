//! The Wasm strategy decides where requests go.

use crate::support::*;

fn round_robin_config(backends: &[&Backend]) -> String {
    format!(
        "{SERVER}[pools.web]\nstrategy = \"round-robin\"\nbackends = [{}]\n",
        addresses(backends)
    )
}

async fn seven_backends_seen(mut client: Client) -> Vec<String> {
    let mut seen = Vec::new();
    for _ in 0..7 {
        let answer = client.get("/").await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        seen.push(answer.backend().to_string());
    }
    seen
}

#[tokio::test]
async fn the_wasm_round_robin_visits_backends_in_exact_order_over_http1() {
    let [a, b, c] = start_backends(["a", "b", "c"]).await;
    let proxy = Proxy::start(&round_robin_config(&[&a, &b, &c])).await;
    let seen = seven_backends_seen(Client::h1(proxy.addr).await).await;
    assert_eq!(seen, ["a", "b", "c", "a", "b", "c", "a"]);
    let m = proxy.metrics.snapshot();
    assert_eq!(m.fallback_selections, 0, "every order came from the plugin");
    assert!(m.plugin_instantiations >= 1);
}

#[tokio::test]
async fn the_wasm_round_robin_visits_backends_in_exact_order_over_h2c() {
    let [a, b, c] = start_backends(["a", "b", "c"]).await;
    let proxy = Proxy::start(&round_robin_config(&[&a, &b, &c])).await;
    let seen = seven_backends_seen(Client::h2(proxy.addr).await).await;
    assert_eq!(seen, ["a", "b", "c", "a", "b", "c", "a"]);
    assert_eq!(proxy.metrics.snapshot().fallback_selections, 0);
}

#[tokio::test]
async fn with_two_workers_each_connection_keeps_its_worker_order_and_the_spread_is_even() {
    let [a, b, c] = start_backends(["a", "b", "c"]).await;
    let proxy = Proxy::start(&format!(
        "{}[pools.web]\nstrategy = \"round-robin\"\nbackends = [{}]\n",
        server(2, ""),
        addresses(&[&a, &b, &c])
    ))
    .await;
    // One connection lives on one worker: its requests follow that worker's
    // turn, so a lone client still sees the exact order.
    let seen = seven_backends_seen(Client::h1(proxy.addr).await).await;
    let start = seen[0].clone();
    let names = ["a", "b", "c"];
    let first = names.iter().position(|n| *n == start).unwrap();
    let expected: Vec<&str> = (0..7).map(|i| names[(first + i) % 3]).collect();
    assert_eq!(seen, expected);
    // Many clients over both workers: every backend gets its third.
    let counts = load(proxy.addr, 12, 30, "/", &[]).await;
    for name in names {
        let share = counts[name] as f64 / 360.0;
        assert!(
            (0.30..=0.37).contains(&share),
            "{name}: {share:.3} of {counts:?}"
        );
    }
    assert_eq!(proxy.metrics.snapshot().fallback_selections, 0);
}

#[tokio::test]
async fn a_plugin_loaded_from_a_file_decides_the_backend() {
    let [a, b] = start_backends(["a", "b"]).await;
    let proxy = Proxy::start(&format!(
        "{SERVER}[plugins]\nload = [\"{}\"]\n[pools.web]\nstrategy = \"misbehave\"\nstrategy_config = {{ mode = \"first\" }}\nbackends = [{}]\n",
        test_plugin("misbehave"),
        addresses(&[&a, &b])
    ))
    .await;
    let mut client = Client::h1(proxy.addr).await;
    for _ in 0..5 {
        assert_eq!(client.get("/").await.backend(), "a");
    }
    assert_eq!(b.hits.load(std::sync::atomic::Ordering::Relaxed), 0);
}

#[tokio::test]
async fn the_sdk_example_built_for_wasip2_serves_by_zone_label() {
    let [a, b, c] = start_backends(["a", "b", "c"]).await;
    let proxy = Proxy::start(&format!(
        "{SERVER}[plugins]\nload = [\"{}\"]\n[pools.web]\nstrategy = \"zone-affinity\"\n\
         backends = [{{ address = \"{}\", labels = {{ zone = \"east\" }} }}, \
                     {{ address = \"{}\", labels = {{ zone = \"west\" }} }}, \
                     {{ address = \"{}\", labels = {{ zone = \"west\" }} }}]\n",
        test_plugin("zone-affinity"),
        a.addr,
        b.addr,
        c.addr
    ))
    .await;
    let mut client = Client::h1(proxy.addr).await;
    let mut west = Vec::new();
    for _ in 0..4 {
        west.push(
            client
                .get_with("/", &[("x-zone", "west")])
                .await
                .backend()
                .to_string(),
        );
    }
    west.sort();
    assert_eq!(
        west,
        ["b", "b", "c", "c"],
        "west requests stay in the west, in turn"
    );
    let mut any = Vec::new();
    for _ in 0..3 {
        any.push(client.get("/").await.backend().to_string());
    }
    any.sort();
    assert_eq!(any, ["a", "b", "c"], "no header: all backends in turn");
    assert_eq!(proxy.metrics.snapshot().fallback_selections, 0);
}

#[tokio::test]
async fn a_plugin_built_for_the_older_world_0_1_0_still_loads_and_balances() {
    let [a, b, c] = start_backends(["a", "b", "c"]).await;
    let fixture = format!(
        "{}/../tests/fixtures/round-robin-wit-0.1.0.wasm",
        env!("CARGO_MANIFEST_DIR")
    );
    let proxy = Proxy::start(&format!(
        "{SERVER}[plugins]\nload = [\"{fixture}\"]\nallow_override_builtin = true\n\
         [pools.web]\nstrategy = \"round-robin\"\nbackends = [{}]\n",
        addresses(&[&a, &b, &c])
    ))
    .await;
    let seen = seven_backends_seen(Client::h1(proxy.addr).await).await;
    assert_eq!(seen, ["a", "b", "c", "a", "b", "c", "a"]);
    assert_eq!(proxy.metrics.snapshot().fallback_selections, 0);
}

#[tokio::test]
async fn a_plugin_built_for_the_older_world_0_2_0_still_loads_and_balances() {
    let [a, b, c] = start_backends(["a", "b", "c"]).await;
    let fixture = format!(
        "{}/../tests/fixtures/round-robin-wit-0.2.0.wasm",
        env!("CARGO_MANIFEST_DIR")
    );
    let proxy = Proxy::start(&format!(
        "{SERVER}[plugins]\nload = [\"{fixture}\"]\nallow_override_builtin = true\n\
         [pools.web]\nstrategy = \"round-robin\"\nbackends = [{}]\n",
        addresses(&[&a, &b, &c])
    ))
    .await;
    let seen = seven_backends_seen(Client::h1(proxy.addr).await).await;
    assert_eq!(seen, ["a", "b", "c", "a", "b", "c", "a"]);
    assert_eq!(proxy.metrics.snapshot().fallback_selections, 0);
}

#[test]
fn check_names_the_world_each_plugin_was_built_for() {
    let fixture = format!(
        "{}/../tests/fixtures/misbehave-wit-0.1.0.wasm",
        env!("CARGO_MANIFEST_DIR")
    );
    let toml = format!(
        "[plugins]\nload = [\"{fixture}\"]\n[pools.old]\nstrategy = \"misbehave\"\nstrategy_config = {{ mode = \"first\" }}\n\
         backends = [\"127.0.0.1:9\"]\n[pools.new]\nbackends = [\"127.0.0.1:9\"]\n[[routes]]\npool = \"old\"\n"
    );
    let config = veer::Config::from_toml(&toml, std::path::Path::new(".")).unwrap();
    let report = veer::check(&config).unwrap();
    let text = report.pools.join("\n");
    assert!(
        text.contains("strategy misbehave 0.1.0 (veer:balancer@0.1.0"),
        "{text}"
    );
    assert!(
        text.contains("strategy round-robin 0.1.0 (veer:balancer@0.3.0"),
        "{text}"
    );
}
