//! The dashboard in a real browser: Debian's Chromium, headless, loads the
//! admin page, lets its script poll the API, and dumps the DOM it built; the
//! numbers on the page are the requests this test sent, and they move when
//! more are sent. A screenshot lands in target/tmp/dashboard-screenshot.png.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

const CHROMIUM: &str = "/usr/bin/chromium";
/// A label value that would be markup if the page used innerHTML.
const HOSTILE_LABEL: &str = "<img src=x onerror=alert(1)>";

/// Runs headless Chromium on `url` with `extra` flags (off the runtime's
/// thread, so the in-process proxy and backends keep serving), killed with
/// all its helper processes past 30 s; returns its stdout.
async fn chromium(url: String, extra: Vec<String>) -> String {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: this test needs Debian's Chromium; install it with \
         `apt-get install chromium` (.ci/run does)"
    );
    tokio::task::spawn_blocking(move || {
        use std::os::unix::process::CommandExt;
        let dir = TempDir::new("chromium");
        let (out, err) = (dir.join("stdout"), dir.join("stderr"));
        let mut child = Command::new(CHROMIUM)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-proxy-server",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                "--virtual-time-budget=3000",
            ])
            .arg(format!("--user-data-dir={}", dir.join("profile").display()))
            .args(&extra)
            .arg(&url)
            .stdin(Stdio::null())
            // Files, not pipes: a helper process outliving the browser
            // cannot keep a reader waiting.
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "{CHROMIUM} could not start ({e}); install it with `apt-get install chromium`"
                )
            });
        let limit = Duration::from_secs(30);
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if started.elapsed() > limit {
                let group = rustix::process::Pid::from_child(&child);
                let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let stdout = std::fs::read_to_string(&out).unwrap_or_default();
        let stderr = std::fs::read_to_string(&err).unwrap_or_default();
        match status {
            Some(s) if s.success() => stdout,
            Some(s) => panic!("chromium {extra:?} {url} ended with {s}\nstderr:\n{stderr}"),
            None => panic!(
                "chromium {extra:?} {url} still ran after {limit:?}; killed\nstderr:\n{stderr}"
            ),
        }
    })
    .await
    .unwrap()
}

/// The DOM of the admin page after its script has polled for a few
/// (virtual) seconds.
async fn dump(admin: SocketAddr) -> String {
    chromium(format!("http://{admin}/"), vec!["--dump-dom".into()]).await
}

/// The text from `start` up to the end of the element row or section it
/// opens (`</tr>` or `</section>`).
fn element<'a>(dom: &'a str, start: &str, end: &str) -> &'a str {
    let at = dom
        .find(start)
        .unwrap_or_else(|| panic!("no {start} in the page:\n{dom}"));
    let rest = &dom[at..];
    &rest[..rest.find(end).unwrap_or(rest.len())]
}

/// The opening tag carrying `data-field="FIELD"` within `scope`.
fn field_tag<'a>(scope: &'a str, field: &str) -> &'a str {
    let key = format!("data-field=\"{field}\"");
    let at = scope
        .find(&key)
        .unwrap_or_else(|| panic!("no {key} in {scope}"));
    let rest = &scope[at..];
    &rest[..rest.find('>').unwrap()]
}

/// The raw number (`data-value`) of `field` within `scope`.
fn value(scope: &str, field: &str) -> f64 {
    let tag = field_tag(scope, field);
    let v = tag
        .split("data-value=\"")
        .nth(1)
        .and_then(|v| v.split('"').next())
        .unwrap_or_else(|| panic!("no data-value in <{tag}>"));
    v.parse()
        .unwrap_or_else(|_| panic!("{v:?} is not a number"))
}

/// The text shown by `field` within `scope` (up to the next tag).
fn shown<'a>(scope: &'a str, field: &str) -> &'a str {
    let tag = field_tag(scope, field);
    let at = scope.find(tag).unwrap() + tag.len() + 1;
    let rest = &scope[at..];
    &rest[..rest.find('<').unwrap()]
}

/// Sends `n` GETs through the proxy; answers per backend name.
async fn send(proxy: SocketAddr, n: usize, counts: &mut BTreeMap<String, u64>) {
    let mut client = Client::h1(proxy).await;
    for _ in 0..n {
        let answer = client.get("/").await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        *counts.entry(answer.backend().to_string()).or_default() += 1;
    }
}

/// Checks one dumped page against what was sent.
fn check(dom: &str, backends: &[&Backend], counts: &BTreeMap<String, u64>, sent: u64) {
    let pool = element(dom, "data-pool=\"web\"", "</section>");
    assert!(
        shown(pool, "strategy").starts_with("round-robin@"),
        "{pool}"
    );
    assert_eq!(shown(pool, "protocol"), "http1");
    // Polled more than once: a requests-per-second figure, not a dash.
    let rps = shown(pool, "rps");
    assert!(rps.parse::<f64>().is_ok_and(|r| r >= 0.0), "req/s {rps:?}");
    let mut total = 0.0;
    for backend in backends {
        let row = element(pool, &format!("data-backend=\"{}\"", backend.addr), "</tr>");
        assert_eq!(shown(row, "address"), backend.addr.to_string());
        let responses = value(row, "responses");
        assert_eq!(
            responses,
            counts.get(&backend.name).copied().unwrap_or(0) as f64,
            "{}: {row}",
            backend.name
        );
        assert!(row.contains("class=\"badge up\">up<"), "{row}");
        assert_eq!(value(row, "failures"), 0.0);
        // Everything was sent within the last minute: the share is the
        // backend's part of what was sent.
        let share = value(row, "recent_share");
        assert!(
            (share - responses / sent as f64).abs() < 1e-9,
            "share {share} in {row}"
        );
        total += responses;
    }
    assert_eq!(total, sent as f64, "{pool}");
    assert_eq!(value(pool, "total"), sent as f64);
    let plugin = element(dom, "data-plugin=\"web\"", "</tr>");
    assert_eq!(value(plugin, "select_calls"), sent as f64, "{plugin}");
    assert_eq!(value(plugin, "traps"), 0.0);
    assert_eq!(shown(plugin, "state"), "serving");
    let updated = dom
        .split("id=\"updated\">")
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .expect("an element with id updated");
    assert!(
        updated.len() == 8 && updated.chars().filter(|c| *c == ':').count() == 2,
        "last updated {updated:?}"
    );
    let error = element(dom, "id=\"error\"", ">");
    assert!(
        error.contains("hidden"),
        "a poll failed: {}",
        element(dom, "id=\"error\"", "</p>")
    );
    // A label is text, never markup.
    assert!(
        dom.contains("zone=&lt;img src=x onerror=alert(1)&gt;"),
        "{pool}"
    );
    assert!(!dom.contains(HOSTILE_LABEL));
}

#[tokio::test]
async fn the_dashboard_shows_live_changing_numbers_in_headless_chromium() {
    let [a, b, c] = start_backends(["a", "b", "c"]).await;
    let proxy = Proxy::start(&format!(
        "{SERVER}[pools.web]\nbackends = [\"{}\", {{ address = \"{}\", weight = 2, labels = {{ zone = \"{HOSTILE_LABEL}\" }} }}, \"{}\"]\n",
        a.addr, b.addr, c.addr
    ))
    .await;
    let admin = proxy.admin.expect("an admin listener by default");
    let backends = [&a, &b, &c];

    let mut counts = BTreeMap::new();
    send(proxy.addr, 30, &mut counts).await;
    let first = dump(admin).await;
    check(&first, &backends, &counts, 30);

    send(proxy.addr, 21, &mut counts).await;
    let second = dump(admin).await;
    check(&second, &backends, &counts, 51);
    let responses = |dom: &str, backend: &Backend| {
        value(
            element(dom, &format!("data-backend=\"{}\"", backend.addr), "</tr>"),
            "responses",
        )
    };
    assert!(
        backends
            .iter()
            .any(|b| responses(&first, b) != responses(&second, b)),
        "the numbers moved"
    );

    // Cargo's scratch folder for integration tests: it exists wherever the
    // target folder is (CARGO_TARGET_DIR included).
    let png = PathBuf::from(concat!(
        env!("CARGO_TARGET_TMPDIR"),
        "/dashboard-screenshot.png"
    ));
    let _ = std::fs::remove_file(&png);
    chromium(
        format!("http://{admin}/"),
        vec![
            format!("--screenshot={}", png.display()),
            "--window-size=1200,800".into(),
        ],
    )
    .await;
    let bytes =
        std::fs::read(&png).unwrap_or_else(|e| panic!("no screenshot at {}: {e}", png.display()));
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
    let dimension = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
    assert_eq!(
        (dimension(16), dimension(20)),
        (1200, 800),
        "IHDR width and height"
    );
    assert!(bytes.len() > 20_000, "{} bytes: a blank page?", bytes.len());
}
