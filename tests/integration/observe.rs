//! What Veer says about requests: the access log (from the real binary, as
//! operators run it) and decision traces.

use std::time::Duration;

use http_body_util::BodyExt;

use crate::support::*;

/// Runs the real binary on `toml` (`{listen}` and `{log}` filled in) until
/// `requests` have been sent to it and returns the access log file's lines.
async fn access_log_of(
    toml: &str,
    requests: impl AsyncFnOnce(std::net::SocketAddr),
) -> Vec<String> {
    let dir = TempDir::new("access-log");
    let log = dir.join("access.log");
    let toml = toml.replace("{log}", &log.display().to_string());
    run_binary(&dir, &toml, requests).await;
    std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn the_access_log_writes_one_json_line_per_request_with_what_happened() {
    let [a, b] = start_backends(["a", "b"]).await;
    let toml = format!(
        "[server]\nlisten = \"{{listen}}\"\nworkers = 2\n\
         [access_log]\nenabled = true\nformat = \"json\"\noutput = \"{{log}}\"\n\
         [plugins]\ndir = \"\"\ncache_dir = \"\"\n[pools.web]\nbackends = [{}]\n",
        addresses(&[&a, &b])
    );
    let lines = access_log_of(&toml, async |addr| {
        let mut client = Client::h1(addr).await;
        for _ in 0..4 {
            assert_eq!(client.get("/hello?x=1").await.status, 200);
        }
        let post = http::Request::post("/echo")
            .header("host", "example.test")
            .body(full("twelve bytes"))
            .unwrap();
        let response = client.send(post).await;
        assert_eq!(response.status(), 200);
        let echoed = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&echoed[..], b"twelve bytes");
    })
    .await;
    assert_eq!(lines.len(), 5, "{lines:#?}");
    let entries: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let first = &entries[0];
    assert_eq!(first["method"], "GET");
    assert_eq!(first["host"], "localhost");
    assert_eq!(first["path"], "/hello?x=1");
    assert_eq!(first["status"], 200);
    assert_eq!(first["attempts"], 1);
    assert_eq!(first["pool"], "web");
    assert!(
        first["plugin"]
            .as_str()
            .unwrap()
            .starts_with("round-robin@")
    );
    assert!(first["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(first["time"].as_str().unwrap().starts_with("20"));
    assert!(first["duration_ms"].as_f64().unwrap() >= first["upstream_ms"].as_f64().unwrap());
    assert_eq!(first["complete"], true);
    let backends: std::collections::BTreeSet<String> = entries
        .iter()
        .map(|e| e["backend"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        backends,
        [a.addr.to_string(), b.addr.to_string()]
            .into_iter()
            .collect()
    );
    let post = &entries[4];
    assert_eq!(
        (post["method"].as_str(), post["host"].as_str()),
        (Some("POST"), Some("example.test"))
    );
    assert_eq!(
        (post["bytes_in"].as_u64(), post["bytes_out"].as_u64()),
        (Some(12), Some(12))
    );
}

#[tokio::test]
async fn the_text_access_log_samples_and_a_zero_sample_writes_nothing() {
    let [a] = start_backends(["a"]).await;
    let toml = |extra: &str| {
        format!(
            "[server]\nlisten = \"{{listen}}\"\nworkers = 1\n\
             [access_log]\nenabled = true\noutput = \"{{log}}\"\n{extra}\n\
             [plugins]\ndir = \"\"\ncache_dir = \"\"\n[pools.web]\nbackends = [\"{}\"]\n",
            a.addr
        )
    };
    async fn send(addr: std::net::SocketAddr) {
        let mut client = Client::h1(addr).await;
        for _ in 0..3 {
            assert_eq!(client.get("/t").await.status, 200);
        }
        assert_eq!(client.get("/other").await.status, 200);
    }
    let lines = access_log_of(&toml(""), send).await;
    assert_eq!(lines.len(), 4, "{lines:#?}");
    assert!(
        lines[0].contains("\"GET localhost/t HTTP/1.1\" 200 0 1 "),
        "{}",
        lines[0]
    );
    assert!(
        lines[0].contains(&format!("backend={}", a.addr)),
        "{}",
        lines[0]
    );
    assert!(lines[0].contains("attempts=1"), "{}", lines[0]);
    let lines = access_log_of(&toml("sample_percent = 0"), send).await;
    assert!(lines.is_empty(), "{lines:#?}");
}

#[tokio::test]
async fn after_an_automatic_rollback_the_access_log_names_the_version_that_serves() {
    let [a, b] = start_backends(["a", "b"]).await;
    let plugins = TempDir::new("rollback-log");
    let target = plugins.join("swapped.wasm");
    std::fs::copy(test_plugin("swap-a"), &target).unwrap();
    let toml = format!(
        "[server]\nlisten = \"{{listen}}\"\nworkers = 1\n\
         [plugins]\ndir = \"{}\"\ndebounce_ms = 20\ncache_dir = \"\"\n\
         [access_log]\nenabled = true\nformat = \"json\"\noutput = \"{{log}}\"\n\
         [pools.web]\nstrategy = \"swapped\"\nbackends = [{}]\n",
        plugins.0.display(),
        addresses(&[&a, &b])
    );
    let lines = access_log_of(&toml, async |addr| {
        let mut client = Client::h1(addr).await;
        assert_eq!(client.get("/").await.backend(), "a");
        install_by_rename(&target, &plugin_bytes("swap-fail"));
        // Past the swap, the failures and the rollback.
        for _ in 0..300 {
            assert_eq!(client.get("/").await.status, 200);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let plugin_of = |line: &String| {
        serde_json::from_str::<serde_json::Value>(line).unwrap()["plugin"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(plugin_of(&lines[0]), "swapped@a");
    assert!(
        lines.iter().any(|l| plugin_of(l) == "swapped@fail"),
        "the new version served (and failed) for a while"
    );
    assert_eq!(
        plugin_of(lines.last().unwrap()),
        "swapped@a",
        "rolled back: the last good version serves, and the log says so"
    );
}

/// A proxy over a dead address and `a`, with extra route settings.
async fn traced_proxy(a: &Backend, route_extra: &str) -> Proxy {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    Proxy::start(&format!(
        "{SERVER}[pools.web]\nbackends = [\"{dead}\", \"{}\"]\n\
         [[routes]]\npath_prefix = \"/\"\npool = \"web\"\n{route_extra}\n",
        a.addr
    ))
    .await
}

#[tokio::test]
async fn a_traced_route_says_which_plugin_decided_the_order_and_how_each_attempt_ended() {
    let [a] = start_backends(["a"]).await;
    let proxy = traced_proxy(&a, "trace = true").await;
    let answer = Client::h1(proxy.addr).await.get("/").await;
    assert_eq!(answer.status, 200);
    let decision = answer.headers["x-veer-decision"].to_str().unwrap();
    assert!(decision.starts_with("plugin=round-robin@"), "{decision}");
    assert!(decision.contains("; order=127.0.0.1:"), "{decision}");
    assert!(decision.contains("1. 127.0.0.1:"), "{decision}");
    assert!(decision.contains("failed: connect to"), "{decision}");
    assert!(
        decision.ends_with(&format!("2. {} answered 200", a.addr)),
        "{decision}"
    );
}

#[tokio::test]
async fn a_trace_is_given_on_request_from_an_allowed_peer_and_not_otherwise() {
    let [a] = start_backends(["a"]).await;
    let proxy = traced_proxy(&a, "").await;
    let mut client = Client::h1(proxy.addr).await;
    let plain = client.get("/").await;
    assert!(plain.headers.get("x-veer-decision").is_none());
    let asked = client.get_with("/", &[("x-veer-trace", "1")]).await;
    assert!(
        asked.headers.contains_key("x-veer-decision"),
        "loopback may ask by default"
    );
    // From a peer outside trace.from, the header is not taken.
    let strict = Proxy::start(&format!(
        "{SERVER}[trace]\nfrom = [\"10.0.0.0/8\"]\n[pools.web]\nbackends = [\"{}\"]\n",
        a.addr
    ))
    .await;
    let asked = Client::h1(strict.addr)
        .await
        .get_with("/", &[("x-veer-trace", "1")])
        .await;
    assert!(asked.headers.get("x-veer-decision").is_none());
}
