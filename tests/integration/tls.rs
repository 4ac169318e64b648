//! TLS at the edge, tried with real clients: curl (HTTP/1.1 and h2 by ALPN),
//! openssl s_client, sslscan, a rustls client making a fresh handshake per
//! request while certificates are replaced on disk.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

use crate::pki::*;
use crate::support::*;

/// A proxy with an HTTPS listener serving `certificates` (TOML array body)
/// in front of backend `a`, plus `extra` `[tls]` settings and `server` ones.
async fn https_proxy(
    a: &Backend,
    certificates: &str,
    tls_extra: &str,
    server_extra: &str,
) -> Proxy {
    Proxy::start(&format!(
        "{}[plugins]\ndir = \"\"\ndebounce_ms = 50\n[tls]\nlisten = \"127.0.0.1:0\"\ncertificates = [{certificates}]\n{tls_extra}\n[pools.web]\nbackends = [{}]\n",
        server(1, server_extra),
        addresses(&[a])
    ))
    .await
}

fn cert_entry(files: &(std::path::PathBuf, std::path::PathBuf)) -> String {
    format!(
        "{{ cert = \"{}\", key = \"{}\" }}",
        files.0.display(),
        files.1.display()
    )
}

/// curl with the PKI's CA and `name` resolved to the proxy; returns curl's
/// exit status and `status version` (from `-w`), or the error text.
async fn curl(pki: &Pki, https: SocketAddr, name: &str, extra: &[&str]) -> (bool, String) {
    let mut args: Vec<String> = vec![
        "-s".into(),
        "-o".into(),
        "/dev/null".into(),
        "-w".into(),
        "%{http_code} %{http_version}".into(),
        "--cacert".into(),
        pki.ca_pem.display().to_string(),
        "--resolve".into(),
        format!("{name}:{}:127.0.0.1", https.port()),
        "--max-time".into(),
        "10".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push(format!("https://{name}:{}/", https.port()));
    let out = run("curl", args).await;
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test]
async fn curl_gets_the_right_certificate_for_each_name_over_http1_and_h2() {
    let a = Backend::start("a").await;
    let pki = Pki::new("sni");
    let certs = [
        pki.server("a", &["a.test"]),
        pki.server("b", &["b.test"]),
        pki.server("w", &["*.w.test"]),
    ];
    let list: Vec<String> = certs.iter().map(cert_entry).collect();
    let proxy = https_proxy(&a, &list.join(", "), "", "").await;
    let https = proxy.https.unwrap();
    for name in ["a.test", "b.test", "x.w.test"] {
        // curl checks the certificate's names against the one it asked for.
        assert_eq!(
            curl(&pki, https, name, &["--http1.1"]).await,
            (true, "200 1.1".into()),
            "{name}"
        );
        assert_eq!(
            curl(&pki, https, name, &["--http2"]).await,
            (true, "200 2".into()),
            "{name}"
        );
    }
    // A name no certificate has gets the default one (a.test), which curl refuses.
    let (ok, _) = curl(&pki, https, "c.test", &[]).await;
    assert!(!ok, "c.test is not in the default certificate");
    assert!(proxy.metrics.snapshot().tls_handshakes >= 6);
}

#[tokio::test]
async fn openssl_s_client_negotiates_h2_by_alpn() {
    let a = Backend::start("a").await;
    let pki = Pki::new("alpn");
    let proxy = https_proxy(&a, &cert_entry(&pki.server("a", &["a.test"])), "", "").await;
    let https = proxy.https.unwrap();
    let out = run(
        "openssl",
        vec![
            "s_client".into(),
            "-connect".into(),
            format!("127.0.0.1:{}", https.port()),
            "-servername".into(),
            "a.test".into(),
            "-alpn".into(),
            "h2".into(),
            "-CAfile".into(),
            pki.ca_pem.display().to_string(),
        ],
    )
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ALPN protocol: h2"), "{text}");
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
}

#[tokio::test]
async fn a_host_that_another_certificate_serves_gets_421() {
    let a = Backend::start("a").await;
    let pki = Pki::new("421");
    let certs = [
        pki.server("a", &["a.test"]),
        pki.server("w", &["*.w.test", "b.test"]),
    ];
    let list: Vec<String> = certs.iter().map(cert_entry).collect();
    let proxy = https_proxy(&a, &list.join(", "), "", "").await;
    let https = proxy.https.unwrap();
    let (_, got) = curl(&pki, https, "a.test", &["-H", "Host: b.test", "--http1.1"]).await;
    assert_eq!(got, "421 1.1");
    let (_, got) = curl(&pki, https, "a.test", &["-H", "Host: b.test", "--http2"]).await;
    assert_eq!(got, "421 2");
    let (_, got) = curl(
        &pki,
        https,
        "x.w.test",
        &["-H", "Host: b.test", "--http1.1"],
    )
    .await;
    assert_eq!(got, "200 1.1", "one certificate serves both");
    let (_, got) = curl(
        &pki,
        https,
        "x.w.test",
        &["-H", "Host: y.w.test", "--http2"],
    )
    .await;
    assert_eq!(got, "200 2");
}

/// Bounded load: `clients` loops of fresh-handshake GETs to `name` until
/// stopped (or 30 s); counts ok and failed, and the last certificate seen.
struct TlsLoad {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<Vec<u8>>>,
}

impl TlsLoad {
    fn start(
        config: Arc<rustls::ClientConfig>,
        addr: SocketAddr,
        name: &'static str,
        clients: usize,
    ) -> TlsLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let tasks = (0..clients)
            .map(|_| {
                let (stop, ok, failed, config) =
                    (stop.clone(), ok.clone(), failed.clone(), config.clone());
                tokio::spawn(async move {
                    let deadline = Instant::now() + Duration::from_secs(30);
                    let mut last = Vec::new();
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        match https_get(config.clone(), addr, name, "/").await {
                            Ok((200, cert)) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                                last = cert;
                            }
                            other => {
                                eprintln!("failed: {other:?}");
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    last
                })
            })
            .collect();
        TlsLoad {
            stop,
            ok,
            failed,
            tasks,
        }
    }

    async fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

/// Waits until a fresh handshake to `name` presents `der`.
async fn until_presented(
    config: Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    name: &str,
    der: &[u8],
) -> Duration {
    let started = Instant::now();
    loop {
        if let Ok((_, cert)) = https_get(config.clone(), addr, name, "/").await
            && cert == der
        {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the new certificate was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_certificate_rewritten_in_place_is_picked_up_under_load_with_no_failed_request() {
    let a = Backend::start("a").await;
    let pki = Pki::new("rewrite");
    let files = pki.server("a", &["a.test"]);
    let proxy = https_proxy(&a, &cert_entry(&files), "", "").await;
    let https = proxy.https.unwrap();
    let load = TlsLoad::start(pki.client_config(), https, "a.test", 4);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (cert, key) = pki.server_pem(&["a.test"]);
    // Key first, then the chain: in between, the pair does not match and is
    // refused, so the old certificate keeps serving.
    std::fs::write(&files.1, key).unwrap();
    std::fs::write(&files.0, &cert).unwrap();
    let took = until_presented(pki.client_config(), https, "a.test", &der_of(&cert)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (ok, failed) = load.finish().await;
    println!(
        "certificate rewritten in place: picked up after {took:?}; {ok} requests ok, {failed} failed"
    );
    assert_eq!(failed, 0);
    assert!(ok > 20, "{ok}");
    assert!(proxy.metrics.snapshot().tls_certificate_reloads >= 1);
}

#[tokio::test]
async fn a_kubernetes_style_symlink_swap_is_picked_up_under_load_with_no_failed_request() {
    let a = Backend::start("a").await;
    let pki = Pki::new("symlink");
    // secret/..v1/{tls.crt,tls.key}, secret/..data -> ..v1,
    // secret/tls.crt -> ..data/tls.crt: what a Secret volume looks like.
    let secret = pki.dir.join("secret");
    let write_version = |version: &str, cert: &str, key: &str| {
        let dir = secret.join(version);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("tls.crt"), cert).unwrap();
        std::fs::write(dir.join("tls.key"), key).unwrap();
    };
    let (cert1, key1) = pki.server_pem(&["a.test"]);
    write_version("..v1", &cert1, &key1);
    std::os::unix::fs::symlink("..v1", secret.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/tls.crt", secret.join("tls.crt")).unwrap();
    std::os::unix::fs::symlink("..data/tls.key", secret.join("tls.key")).unwrap();
    let files = (secret.join("tls.crt"), secret.join("tls.key"));
    let proxy = https_proxy(&a, &cert_entry(&files), "", "").await;
    let https = proxy.https.unwrap();
    let load = TlsLoad::start(pki.client_config(), https, "a.test", 4);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The swap: a new version folder, a new symlink renamed over `..data`.
    let (cert2, key2) = pki.server_pem(&["a.test"]);
    write_version("..v2", &cert2, &key2);
    std::os::unix::fs::symlink("..v2", secret.join("..data_tmp")).unwrap();
    std::fs::rename(secret.join("..data_tmp"), secret.join("..data")).unwrap();
    let took = until_presented(pki.client_config(), https, "a.test", &der_of(&cert2)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (ok, failed) = load.finish().await;
    println!("..data symlink swap: picked up after {took:?}; {ok} requests ok, {failed} failed");
    assert_eq!(failed, 0);
}

#[tokio::test]
async fn a_broken_new_certificate_is_refused_and_the_old_one_keeps_serving() {
    let a = Backend::start("a").await;
    let pki = Pki::new("broken");
    let files = pki.server("a", &["a.test"]);
    let old = der_of(&std::fs::read_to_string(&files.0).unwrap());
    let proxy = https_proxy(&a, &cert_entry(&files), "", "").await;
    let https = proxy.https.unwrap();
    std::fs::write(&files.0, "not a certificate").unwrap();
    let started = Instant::now();
    while proxy.metrics.snapshot().tls_certificate_reload_refusals == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the broken file was not noticed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, cert) = https_get(pki.client_config(), https, "a.test", "/")
        .await
        .unwrap();
    assert_eq!((status, cert), (200, old));
}

#[tokio::test]
async fn sslscan_finds_no_old_protocol_and_no_weak_cipher() {
    let a = Backend::start("a").await;
    let pki = Pki::new("sslscan");
    let proxy = https_proxy(&a, &cert_entry(&pki.server("a", &["a.test"])), "", "").await;
    let https = proxy.https.unwrap();
    let out = run(
        "sslscan",
        vec!["--no-colour".into(), format!("127.0.0.1:{}", https.port())],
    )
    .await;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    for (protocol, state) in [
        ("SSLv2", "disabled"),
        ("SSLv3", "disabled"),
        ("TLSv1.0", "disabled"),
        ("TLSv1.1", "disabled"),
        ("TLSv1.2", "enabled"),
        ("TLSv1.3", "enabled"),
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(protocol) && l.contains(state)),
            "{protocol} should be {state}:\n{text}"
        );
    }
    let ciphers: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("Preferred") || l.starts_with("Accepted"))
        .collect();
    assert!(!ciphers.is_empty(), "{text}");
    for line in &ciphers {
        for weak in ["NULL", "RC4", "DES", "EXP", "MD5", "anon", "CBC"] {
            assert!(!line.contains(weak), "weak cipher {weak}: {line}");
        }
        let bits: u32 = line
            .split_whitespace()
            .find_map(|w| w.parse().ok())
            .unwrap_or(0);
        assert!(bits >= 128, "{line}");
    }
    println!(
        "sslscan: {} accepted ciphers, all ≥ 128 bits, AEAD only:\n{}",
        ciphers.len(),
        ciphers.join("\n")
    );
}

#[tokio::test]
async fn garbage_and_a_stalled_handshake_leave_other_clients_served() {
    let a = Backend::start("a").await;
    let pki = Pki::new("garbage");
    let proxy = https_proxy(
        &a,
        &cert_entry(&pki.server("a", &["a.test"])),
        "handshake_timeout_ms = 300",
        "",
    )
    .await;
    let https = proxy.https.unwrap();
    let mut garbage = tokio::net::TcpStream::connect(https).await.unwrap();
    garbage
        .write_all(b"GET / HTTP/1.1\r\nhost: a.test\r\n\r\n\x00\xff")
        .await
        .unwrap();
    let mut stalled = tokio::net::TcpStream::connect(https).await.unwrap();
    let (ok, got) = curl(&pki, https, "a.test", &[]).await;
    assert!(ok, "served while the others misbehave: {got}");
    let (_, closed) = read_until_closed(&mut garbage, Duration::from_secs(3)).await;
    assert!(closed, "garbage ends its connection");
    let started = Instant::now();
    let (_, closed) = read_until_closed(&mut stalled, Duration::from_secs(3)).await;
    assert!(
        closed && started.elapsed() < Duration::from_secs(2),
        "a stalled handshake is dropped"
    );
    // Counted as they end (the counter may trail the close by a moment).
    let counted = Instant::now();
    loop {
        let m = proxy.metrics.snapshot();
        if m.tls_handshake_failures >= 1 && m.tls_handshake_timeouts >= 1 {
            break;
        }
        assert!(counted.elapsed() < Duration::from_secs(2), "{m:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn mtls_refuses_a_client_without_a_valid_certificate_and_passes_the_identity_on() {
    let a = Backend::start("a").await;
    let pki = Pki::new("mtls");
    let stranger = Pki::new("mtls-stranger");
    let alice = pki.client("alice", "alice");
    let mallory = stranger.client("mallory", "mallory");
    let proxy = https_proxy(
        &a,
        &cert_entry(&pki.server("a", &["a.test"])),
        &format!("client_ca = \"{}\"", pki.ca_pem.display()),
        "",
    )
    .await;
    let https = proxy.https.unwrap();
    let (ok, _) = curl(&pki, https, "a.test", &[]).await;
    assert!(!ok, "no client certificate: refused");
    let (ok, _) = curl(
        &pki,
        https,
        "a.test",
        &[
            "--cert",
            &mallory.0.display().to_string(),
            "--key",
            &mallory.1.display().to_string(),
        ],
    )
    .await;
    assert!(!ok, "a certificate from another CA: refused");
    let out = run(
        "curl",
        vec![
            "-s".into(),
            "--cacert".into(),
            pki.ca_pem.display().to_string(),
            "--cert".into(),
            alice.0.display().to_string(),
            "--key".into(),
            alice.1.display().to_string(),
            "--resolve".into(),
            format!("a.test:{}:127.0.0.1", https.port()),
            "-H".into(),
            "x-client-cert-subject: CN=forged".into(),
            format!("https://a.test:{}/headers", https.port()),
        ],
    )
    .await;
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(body.contains("x-client-cert-subject: CN=alice\n"), "{body}");
    assert!(
        body.contains("x-client-cert-san: email:alice@example.test\n"),
        "{body}"
    );
    assert!(!body.contains("forged"), "{body}");
    assert!(proxy.metrics.snapshot().tls_handshake_failures >= 2);
}

#[tokio::test]
async fn the_plain_listener_redirects_to_https_with_host_and_path() {
    let a = Backend::start("a").await;
    let pki = Pki::new("redirect");
    let proxy = https_proxy(
        &a,
        &cert_entry(&pki.server("a", &["a.test"])),
        "",
        "redirect_to_https = 308",
    )
    .await;
    let https = proxy.https.unwrap();
    let (status, text) =
        raw_status(proxy.addr, b"GET /x?y=1 HTTP/1.1\r\nhost: a.test\r\n\r\n").await;
    assert_eq!(status, 308, "{text}");
    assert!(
        text.to_ascii_lowercase().contains(&format!(
            "location: https://a.test:{}/x?y=1\r\n",
            https.port()
        )),
        "{text}"
    );
    assert_eq!(a.hits.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn upstream_tls_verifies_the_backend_and_an_untrusted_one_gets_502() {
    let pki = Pki::new("upstream");
    let stranger = Pki::new("upstream-stranger");
    let backend = tls_backend("tls-backend", &pki.server("backend", &["backend.test"])).await;
    let pool = |ca: &std::path::Path| {
        format!(
            "{SERVER}[pools.web]\nbackends = [\"{backend}\"]\n[pools.web.tls]\nserver_name = \"backend.test\"\nca = \"{}\"\n",
            ca.display()
        )
    };
    let proxy = Proxy::start(&pool(&pki.ca_pem)).await;
    let answer = Client::h1(proxy.addr).await.get("/").await;
    assert_eq!(
        (answer.status.as_u16(), answer.backend()),
        (200, "tls-backend")
    );
    let untrusting = Proxy::start(&pool(&stranger.ca_pem)).await;
    let answer = Client::h1(untrusting.addr).await.get("/").await;
    assert_eq!(answer.status, 502, "{}", answer.body);
    assert!(answer.body.contains("TLS handshake"), "{}", answer.body);
}

#[tokio::test]
async fn on_shutdown_the_https_listener_refuses_new_connections_at_once() {
    let a = Backend::start("a").await;
    let pki = Pki::new("tls-shutdown");
    let proxy = https_proxy(&a, &cert_entry(&pki.server("a", &["a.test"])), "", "").await;
    let https = proxy.https.unwrap();
    proxy.begin_stop();
    let asked = Instant::now();
    loop {
        match tokio::net::TcpStream::connect(https).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
            _ => {}
        }
        assert!(
            asked.elapsed() < Duration::from_millis(100),
            "the HTTPS port still accepts"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    proxy.stopped().await;
}

#[tokio::test]
async fn other_files_written_beside_the_certificates_do_not_reload_them() {
    let a = Backend::start("a").await;
    let pki = Pki::new("cert-folder");
    let files = pki.server("a", &["a.test"]);
    let proxy = https_proxy(&a, &cert_entry(&files), "", "").await;
    for i in 0..10 {
        std::fs::write(pki.dir.join("veer.log"), format!("line {i}\n")).unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(proxy.metrics.snapshot().tls_certificate_reloads, 0);
    let (cert, key) = pki.server_pem(&["a.test"]);
    std::fs::write(&files.1, key).unwrap();
    std::fs::write(&files.0, &cert).unwrap();
    until_presented(
        pki.client_config(),
        proxy.https.unwrap(),
        "a.test",
        &der_of(&cert),
    )
    .await;
}
