//! Automatic certificates against a real ACME server: Debian's `pebble`
//! (Let's Encrypt's test server) on loopback, resolving the test's names
//! through a `dnsmasq` of the test's own, validating the challenge against
//! Veer for real (no PEBBLE_VA_ALWAYS_VALID). curl then verifies the issued
//! certificate with pebble's root, and a renewal swaps in a new one live.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::pki::*;
use crate::support::*;

/// A loopback port nothing listens on now (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed (and reaped) on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(program: &str, args: &[String], log: &std::path::Path, env: &[(&str, &str)]) -> Running {
    let log = std::fs::File::create(log).unwrap();
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    for (k, v) in env {
        command.env(k, v);
    }
    Running(command.spawn().unwrap_or_else(|e| {
        panic!("{program} could not start ({e}); install it: apt-get install pebble dnsmasq (see .ci/run)")
    }))
}

async fn until_listening(addr: SocketAddr, what: &str) {
    let started = Instant::now();
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{what} did not start listening on {addr}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// dnsmasq answering `acme.test` (and its subdomains) with 127.0.0.1, and
/// pebble using it, with its challenge ports pointed at Veer's listeners.
struct AcmeWorld {
    pki: Pki,
    pebble_port: u16,
    management_port: u16,
    _dns: Running,
    _pebble: Running,
}

impl AcmeWorld {
    async fn start(label: &str, http_port: u16, tls_port: u16) -> AcmeWorld {
        let pki = Pki::new(label);
        let dns_port = free_port();
        let dns = spawn(
            "dnsmasq",
            &[
                "--keep-in-foreground".into(),
                "--no-resolv".into(),
                "--no-hosts".into(),
                "--conf-file=/dev/null".into(),
                "--pid-file=".into(),
                "--bind-interfaces".into(),
                "--listen-address=127.0.0.1".into(),
                format!("--port={dns_port}"),
                "--address=/acme.test/127.0.0.1".into(),
                "--user=root".into(),
            ],
            &pki.dir.join("dnsmasq.log"),
            &[],
        );
        let (pebble_port, management_port) = (free_port(), free_port());
        let (cert, key) = pki.server("pebble", &["localhost", "127.0.0.1"]);
        let config = pki.dir.join("pebble.json");
        std::fs::write(
            &config,
            format!(
                r#"{{"pebble": {{
                    "listenAddress": "127.0.0.1:{pebble_port}",
                    "managementListenAddress": "127.0.0.1:{management_port}",
                    "certificate": "{}",
                    "privateKey": "{}",
                    "httpPort": {http_port},
                    "tlsPort": {tls_port},
                    "ocspResponderURL": "",
                    "externalAccountBindingRequired": false
                }}}}"#,
                cert.display(),
                key.display()
            ),
        )
        .unwrap();
        let pebble = spawn(
            "pebble",
            &[
                "-config".into(),
                config.display().to_string(),
                "-dnsserver".into(),
                format!("127.0.0.1:{dns_port}"),
            ],
            &pki.dir.join("pebble.log"),
            // No random sleeps before validating; no nonces rejected at random.
            &[("PEBBLE_VA_NOSLEEP", "1"), ("PEBBLE_WFE_NONCEREJECT", "0")],
        );
        until_listening(SocketAddr::from(([127, 0, 0, 1], pebble_port)), "pebble").await;
        AcmeWorld {
            pki,
            pebble_port,
            management_port,
            _dns: dns,
            _pebble: pebble,
        }
    }

    /// Pebble's root for the certificates it issues, saved to a file.
    async fn issuing_root(&self) -> std::path::PathBuf {
        let path = self.pki.dir.join("pebble-root.pem");
        let out = run(
            "curl",
            vec![
                "-s".into(),
                "--fail".into(),
                "--cacert".into(),
                self.pki.ca_pem.display().to_string(),
                "-o".into(),
                path.display().to_string(),
                format!("https://127.0.0.1:{}/roots/0", self.management_port),
            ],
        )
        .await;
        assert!(out.status.success(), "{out:?}");
        path
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.pki.dir.join("pebble.log")).unwrap_or_default()
    }
}

/// curl to `https://acme.test/` verifying with `root`: the status, or None.
async fn verified_status(root: &std::path::Path, tls_port: u16) -> Option<String> {
    let out = run(
        "curl",
        vec![
            "-s".into(),
            "-o".into(),
            "/dev/null".into(),
            "-w".into(),
            "%{http_code}".into(),
            "--cacert".into(),
            root.display().to_string(),
            "--resolve".into(),
            format!("acme.test:{tls_port}:127.0.0.1"),
            format!("https://acme.test:{tls_port}/"),
        ],
    )
    .await;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The leaf certificate (DER) Veer presents for acme.test, as openssl sees it.
async fn presented(tls_port: u16) -> String {
    let out = run(
        "sh",
        vec![
            "-c".into(),
            format!(
                "openssl s_client -connect 127.0.0.1:{tls_port} -servername acme.test </dev/null 2>/dev/null | openssl x509 -noout -serial"
            ),
        ],
    )
    .await;
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

async fn a_certificate_is_issued_verified_and_renewed(challenge: &str) {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("veer=info")
        .try_init();
    let a = Backend::start("a").await;
    let (http_port, tls_port) = (free_port(), free_port());
    let world = AcmeWorld::start(&format!("acme-{challenge}"), http_port, tls_port).await;
    let state = world.pki.dir.join("state");
    // Every certificate pebble issues has less than 3650 days left, so each
    // check (every second) renews: issuance and renewal in one test.
    let proxy = Proxy::start(&format!(
        r#"[server]
listen = "127.0.0.1:{http_port}"
workers = 1
[plugins]
dir = ""
cache_dir = ""
[tls]
listen = "127.0.0.1:{tls_port}"
[tls.acme]
domains = ["acme.test"]
directory = "https://127.0.0.1:{}/dir"
ca = "{}"
state_dir = "{}"
challenge = "{challenge}"
renew_before_days = 3650
check_interval_s = 1
[pools.web]
backends = ["{}"]
"#,
        world.pebble_port,
        world.pki.ca_pem.display(),
        state.display(),
        a.addr
    ))
    .await;
    let root = world.issuing_root().await;
    let started = Instant::now();
    loop {
        if verified_status(&root, tls_port).await.as_deref() == Some("200") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no certificate curl trusts after 60 s; pebble said:\n{}",
            world.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let issued_after = started.elapsed();
    let first = presented(tls_port).await;
    assert!(first.starts_with("serial="), "{first}");
    // Renewal: a new certificate, swapped in while serving.
    let renewing = Instant::now();
    loop {
        let now = presented(tls_port).await;
        if now != first && now.starts_with("serial=") {
            break;
        }
        assert!(
            renewing.elapsed() < Duration::from_secs(60),
            "not renewed; pebble said:\n{}",
            world.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        verified_status(&root, tls_port).await.as_deref(),
        Some("200")
    );
    // Pebble really validated the challenge against Veer.
    let log = world.log();
    assert!(log.contains("acme.test"), "{log}");
    // The account key and certificate are private.
    use std::os::unix::fs::PermissionsExt;
    for file in ["account.json", "certificate.pem", "certificate-key.pem"] {
        let mode = std::fs::metadata(state.join(file))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{file}");
    }
    let m = proxy.metrics.snapshot();
    assert!(m.acme_certificates >= 2, "{m:?}");
    assert!(
        m.acme_challenge_answers >= 1,
        "pebble's validator reached Veer: {m:?}"
    );
    println!(
        "ACME {challenge}: first certificate after {issued_after:?}, renewed after {:?} more",
        renewing.elapsed()
    );
}

#[tokio::test]
async fn pebble_issues_and_renews_a_certificate_over_http_01() {
    a_certificate_is_issued_verified_and_renewed("http-01").await;
}

#[tokio::test]
async fn pebble_issues_and_renews_a_certificate_over_tls_alpn_01() {
    a_certificate_is_issued_verified_and_renewed("tls-alpn-01").await;
}
