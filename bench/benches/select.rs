//! `select` cost of every built-in strategy through the real host: a
//! wasmtime instance with its epoch deadline and memory cap, the request
//! scope lent for host imports, the answer checked. At 16 and 256 backends.
//! Also the cost of `set-backends` at 256, where ring strategies build their
//! ring or table (round robin is the baseline: the call itself).
//!
//!     cargo bench -p veer-bench
//!
//! Report ratios and per-call times from one run: this machine is shared.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use veer::internals::{
    BackendInfo, BackendStats, Balancer, BalancerSettings, Call, Instance, Limits, Metrics,
    PluginSettings, Registry, RequestScope, Runtime,
};

const LIMITS: Limits = Limits {
    select_timeout: Duration::from_millis(50),
    setup_timeout: Duration::from_secs(5),
    memory_bytes: 64 << 20,
    total_memory_bytes: 1 << 30,
    slow_call: Duration::from_millis(50),
};

/// (display name, strategy, config JSON)
const STRATEGIES: &[(&str, &str, &str)] = &[
    ("round-robin", "round-robin", "{}"),
    ("weighted-round-robin", "weighted-round-robin", "{}"),
    ("random", "random", "{}"),
    ("least-connections", "least-connections", "{}"),
    ("p2c", "p2c", "{}"),
    ("peak-ewma", "peak-ewma", "{}"),
    ("ip-hash", "ip-hash", "{}"),
    (
        "consistent-hash/ketama",
        "consistent-hash",
        r#"{"key":"header:x-user"}"#,
    ),
    (
        "consistent-hash/maglev",
        "consistent-hash",
        r#"{"key":"header:x-user","ring":"maglev"}"#,
    ),
    (
        "consistent-hash/bounded",
        "consistent-hash",
        r#"{"key":"header:x-user","bounded_load":1.25}"#,
    ),
    (
        "content-route",
        "content-route",
        r#"{"rules":[{"header":"x-version","equals":"v2","labels":{"version":"v2"}}]}"#,
    ),
    ("sticky", "sticky", "{}"),
];

fn backends(n: u32) -> Vec<BackendInfo> {
    (0..n)
        .map(|id| BackendInfo {
            id,
            address: format!("10.0.{}.{}:8080", id / 256, id % 256),
            weight: 1 + id % 3,
            labels: vec![(
                "version".into(),
                if id % 4 == 0 { "v2" } else { "v1" }.into(),
            )],
        })
        .collect()
}

fn registry() -> Registry {
    let settings = PluginSettings {
        load: Vec::new(),
        allow_override_builtin: false,
        limits: LIMITS,
        failures_before_backoff: 3,
        random_seed: 1,
        dir: None,
        debounce: Duration::from_millis(200),
        cache_dir: None,
        cache_max_bytes: 256 << 20,
        max_file_bytes: 64 << 20,
    };
    Registry::new(Runtime::new(None).unwrap(), &settings).unwrap()
}

fn select(c: &mut Criterion) {
    let mut registry = registry();
    let metrics = Arc::new(Metrics::default());
    let mut group = c.benchmark_group("select");
    for &n in &[16u32, 256] {
        let stats: Arc<[Arc<BackendStats>]> = (0..n).map(|_| Arc::default()).collect();
        for &(label, strategy, config) in STRATEGIES {
            let plugin = registry.resolve(strategy).unwrap().unwrap();
            let settings = BalancerSettings {
                pool: "bench",
                config_json: config,
                backends: backends(n),
                stats: stats.clone(),
                limits: LIMITS,
                failures_before_backoff: 3,
                seed: 1,
                instances: 1,
                on_failure: veer::config::PluginFailure::Fallback,
                last_good: None,
                previous: None,
            };
            let balancer = Balancer::new(plugin, settings, metrics.clone()).unwrap();
            let mut headers = http::HeaderMap::new();
            headers.insert("x-user", http::HeaderValue::from_static("user-1234"));
            headers.insert("accept", http::HeaderValue::from_static("*/*"));
            let mut scope = RequestScope {
                headers,
                uri: http::Uri::from_static("/api/items?id=7"),
                response_headers: Vec::new(),
                fell_back: false,
                rejected: false,
                refused: None,
                answered_by: None,
            };
            let call = Call {
                method: &http::Method::GET,
                host: "example.com",
                path: "/api/items",
                client: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
                tls: None,
            };
            group.bench_function(BenchmarkId::new(label, n), |b| {
                b.iter(|| {
                    scope.response_headers.clear();
                    black_box(balancer.select(&call, &mut scope))
                })
            });
        }
    }
    group.finish();
    assert_eq!(
        metrics.snapshot().fallback_selections,
        0,
        "every order came from the plugins"
    );
}

fn build(c: &mut Criterion) {
    let mut registry = registry();
    let mut group = c.benchmark_group("set-backends-256");
    let set = backends(256);
    for &(label, strategy, config) in STRATEGIES.iter().filter(|s| {
        [
            "round-robin",
            "consistent-hash/ketama",
            "consistent-hash/maglev",
        ]
        .contains(&s.0)
    }) {
        let plugin = registry.resolve(strategy).unwrap().unwrap();
        let stats: Arc<[Arc<BackendStats>]> = (0..256).map(|_| Arc::default()).collect();
        let mut instance = Instance::new(&plugin, stats, LIMITS, 1).unwrap();
        instance.init(config).unwrap().unwrap();
        group.bench_function(label, |b| {
            b.iter(|| instance.set_backends(black_box(&set)).unwrap())
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = select, build
}
criterion_main!(benches);
