//! Service discovery against real sources: a real DNS server (dnsmasq on a
//! high loopback port, records from files the test rewrites) and a watched
//! backends file. Backends come and go under load with no failed request,
//! and an outage or a broken file keeps the last set.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::support::*;

/// dnsmasq answering from a hosts folder (re-read by dnsmasq when a file in
/// it changes) and the SRV records given, on 127.0.0.1:`port`. Killed on
/// drop.
struct Dns {
    child: Child,
    port: u16,
    hosts: PathBuf,
}

impl Dns {
    fn start(dir: &TempDir, hosts: &str, extra: &[String]) -> Dns {
        let folder = dir.join("hosts");
        std::fs::create_dir_all(&folder).unwrap();
        let mut dns = None;
        // A free UDP port, then dnsmasq on it; tried again if taken meanwhile.
        for _ in 0..5 {
            let port = std::net::UdpSocket::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut command = Command::new("dnsmasq");
            command
                .args([
                    "--keep-in-foreground",
                    "--conf-file=/dev/null",
                    "--no-resolv",
                    "--no-hosts",
                    "--bind-interfaces",
                    "--listen-address=127.0.0.1",
                    "--pid-file=",
                    "--local-ttl=1",
                    "--log-facility=-",
                ])
                .arg(format!("--port={port}"))
                .arg(format!("--hostsdir={}", folder.display()))
                .args(extra)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.join("dnsmasq.log")).unwrap());
            if is_root() {
                command.args(["--user=root", "--group=root"]);
            }
            let mut child = command.spawn().unwrap_or_else(|e| {
                panic!("dnsmasq (apt-get install dnsmasq, as .ci/run does): {e}")
            });
            std::thread::sleep(Duration::from_millis(300));
            match child.try_wait().unwrap() {
                None => {
                    dns = Some(Dns {
                        child,
                        port,
                        hosts: folder.clone(),
                    });
                    break;
                }
                Some(_) => continue,
            }
        }
        let dns = dns.unwrap_or_else(|| {
            panic!(
                "dnsmasq did not start: {}",
                std::fs::read_to_string(dir.join("dnsmasq.log")).unwrap_or_default()
            )
        });
        dns.set_hosts(hosts);
        dns
    }

    /// Replaces the hosts records, renamed into place (as a controller
    /// would), and waits until dnsmasq has read them.
    fn set_hosts(&self, text: &str) {
        let next = self.hosts.with_extension("next");
        std::fs::write(&next, text).unwrap();
        std::fs::rename(&next, self.hosts.join("records")).unwrap();
    }

    fn nameserver(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.stop();
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Three backends on 127.0.0.2, .3 and .4, all on one port (A records
/// carry no port).
async fn backends_on_one_port() -> (u16, [Backend; 3]) {
    for _ in 0..10 {
        let a = Backend::start_at("a", "127.0.0.2:0".parse().unwrap())
            .await
            .expect("127.0.0.2 is loopback");
        let port = a.addr.port();
        let at = |last: u8| SocketAddr::from(([127, 0, 0, last], port));
        let (Some(b), Some(c)) = (
            Backend::start_at("b", at(3)).await,
            Backend::start_at("c", at(4)).await,
        ) else {
            continue;
        };
        return (port, [a, b, c]);
    }
    panic!("no port free on 127.0.0.2-4");
}

/// Which backends answer `n` requests on one connection, sorted, deduped.
async fn answering(addr: SocketAddr, n: usize) -> Vec<String> {
    let mut client = Client::h1(addr).await;
    let mut seen = Vec::new();
    for _ in 0..n {
        seen.push(client.get("/").await.backend().to_string());
    }
    seen.sort();
    seen.dedup();
    seen
}

/// Waits until `backend` stops getting requests (none for 300 ms).
async fn until_idle(backend: &Backend, limit: Duration) {
    let started = std::time::Instant::now();
    loop {
        let before = backend.hits.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(300)).await;
        if backend.hits.load(Ordering::Relaxed) == before {
            return;
        }
        assert!(
            started.elapsed() < limit,
            "{} still gets requests",
            backend.name
        );
    }
}

fn write_config(dir: &TempDir, workers: usize, pool: &str) -> PathBuf {
    let path = dir.join("veer.toml");
    std::fs::write(
        &path,
        format!("{}[pools.web]\n{pool}\n", server(workers, "")),
    )
    .unwrap();
    path
}

async fn a_pool_follows_its_dns_records(workers: usize) {
    let dir = TempDir::new("discovery-dns");
    let (port, [a, b, c]) = backends_on_one_port().await;
    let mut dns = Dns::start(
        &dir,
        "127.0.0.2 web.veer.test\n127.0.0.3 web.veer.test\n",
        &[],
    );
    let path = write_config(
        &dir,
        workers,
        &format!(
            "discovery = {{ dns = \"web.veer.test\", port = {port}, nameserver = \"{}\", refresh_ms = 100, max_refresh_ms = 500 }}",
            dns.nameserver()
        ),
    );
    let (proxy, _handle) = Proxy::start_file(&path).await;
    assert_eq!(answering(proxy.addr, 8).await, ["a", "b"]);

    let load = Load::start(proxy.addr, 4, Duration::from_secs(60));
    dns.set_hosts("127.0.0.2 web.veer.test\n127.0.0.3 web.veer.test\n127.0.0.4 web.veer.test\n");
    wait_for(Duration::from_secs(20), || {
        c.hits.load(Ordering::Relaxed) > 0
    })
    .await;

    dns.set_hosts("127.0.0.3 web.veer.test\n127.0.0.4 web.veer.test\n");
    until_idle(&a, Duration::from_secs(20)).await;
    let m = proxy.metrics.snapshot();
    assert!(m.discovery_changes >= 2, "{m:?}");

    // The DNS server goes away: the pool keeps b and c.
    dns.stop();
    let failures = proxy.metrics.snapshot().discovery_failures;
    let metrics = proxy.metrics.clone();
    wait_for(Duration::from_secs(30), || {
        metrics.snapshot().discovery_failures >= failures + 2
    })
    .await;
    let (b_before, c_before) = (
        b.hits.load(Ordering::Relaxed),
        c.hits.load(Ordering::Relaxed),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (ok, failed) = load.finish().await;
    assert_eq!(failed, 0, "{failed} of {} requests failed", ok + failed);
    assert!(b.hits.load(Ordering::Relaxed) > b_before, "b still serves");
    assert!(c.hits.load(Ordering::Relaxed) > c_before, "c still serves");
    assert_eq!(answering(proxy.addr, 8).await, ["b", "c"]);
}

#[tokio::test]
async fn a_pool_follows_its_dns_records_under_load_and_keeps_them_through_an_outage() {
    a_pool_follows_its_dns_records(1).await;
}

#[tokio::test]
async fn a_pool_follows_its_dns_records_with_two_workers() {
    a_pool_follows_its_dns_records(2).await;
}

#[tokio::test]
async fn srv_records_give_ports_and_weights_and_only_the_lowest_priority_serves() {
    let dir = TempDir::new("discovery-srv");
    let [heavy, light, backup] = start_backends(["heavy", "light", "backup"]).await;
    let srv = |target: &str, b: &Backend, priority: u16, weight: u16| {
        format!(
            "--srv-host=_http._tcp.web.veer.test,{target},{},{priority},{weight}",
            b.addr.port()
        )
    };
    let dns = Dns::start(
        &dir,
        "127.0.0.1 heavy.veer.test\n127.0.0.1 light.veer.test\n127.0.0.1 backup.veer.test\n",
        &[
            srv("heavy.veer.test", &heavy, 1, 30),
            srv("light.veer.test", &light, 1, 10),
            srv("backup.veer.test", &backup, 2, 10),
        ],
    );
    let path = write_config(
        &dir,
        1,
        &format!(
            "strategy = \"weighted-round-robin\"\ndiscovery = {{ srv = \"_http._tcp.web.veer.test\", nameserver = \"{}\" }}",
            dns.nameserver()
        ),
    );
    let (proxy, _handle) = Proxy::start_file(&path).await;
    let mut client = Client::h1(proxy.addr).await;
    for _ in 0..400 {
        client.get("/").await;
    }
    let (h, l) = (
        heavy.hits.load(Ordering::Relaxed),
        light.hits.load(Ordering::Relaxed),
    );
    assert_eq!(
        backup.hits.load(Ordering::Relaxed),
        0,
        "priority 2 is a backup"
    );
    assert_eq!(h + l, 400);
    assert!((280..=320).contains(&h), "weights 30:10, got {h}:{l}");
}

#[tokio::test]
async fn a_discovered_pool_that_finds_nothing_is_refused_at_start_naming_its_key() {
    let dir = TempDir::new("discovery-none");
    let dns = Dns::start(&dir, "127.0.0.1 other.veer.test\n", &[]);
    let toml = format!(
        "{SERVER}[pools.web]\ndiscovery = {{ dns = \"web.veer.test\", port = 80, nameserver = \"{}\" }}\n",
        dns.nameserver()
    );
    let err = Proxy::try_start(&toml).await.err().expect("refused");
    let text = err.to_string();
    assert!(text.contains("pools.web.discovery"), "{text}");
    assert!(
        text.contains("dns web.veer.test port 80 found no backends"),
        "{text}"
    );
}

fn backends_file(path: &Path, backends: &[&Backend]) {
    let entries: Vec<String> = backends
        .iter()
        .map(|b| {
            format!(
                "{{ address = \"{}\", labels = {{ name = \"{}\" }} }}",
                b.addr, b.name
            )
        })
        .collect();
    let next = path.with_extension("next");
    std::fs::write(&next, format!("backends = [{}]\n", entries.join(", "))).unwrap();
    std::fs::rename(&next, path).unwrap();
}

async fn a_pool_follows_its_backends_file(workers: usize) {
    let dir = TempDir::new("discovery-file");
    let [a, b, c] = start_backends(["a", "b", "c"]).await;
    let list = dir.join("backends.toml");
    backends_file(&list, &[&a, &b]);
    let path = write_config(
        &dir,
        workers,
        "discovery = { file = \"backends.toml\", refresh_ms = 100 }",
    );
    let (proxy, _handle) = Proxy::start_file(&path).await;
    assert_eq!(answering(proxy.addr, 8).await, ["a", "b"]);

    let load = Load::start(proxy.addr, 4, Duration::from_secs(60));
    backends_file(&list, &[&a, &b, &c]);
    wait_for(Duration::from_secs(20), || {
        c.hits.load(Ordering::Relaxed) > 0
    })
    .await;
    backends_file(&list, &[&b, &c]);
    until_idle(&a, Duration::from_secs(20)).await;

    // A half-written file is refused; the pool keeps b and c.
    let failures = proxy.metrics.snapshot().discovery_failures;
    std::fs::write(&list, "backends = [{ address = \"127.0.0.1:").unwrap();
    let metrics = proxy.metrics.clone();
    wait_for(Duration::from_secs(20), || {
        metrics.snapshot().discovery_failures > failures
    })
    .await;
    let (ok, failed) = load.finish().await;
    assert_eq!(failed, 0, "{failed} of {} requests failed", ok + failed);
    assert_eq!(answering(proxy.addr, 8).await, ["b", "c"]);
    assert!(
        a.hits.load(Ordering::Relaxed) > 0,
        "a served before it left"
    );
}

#[tokio::test]
async fn a_pool_follows_its_backends_file_under_load_and_keeps_the_last_set_when_it_breaks() {
    a_pool_follows_its_backends_file(1).await;
}

#[tokio::test]
async fn a_pool_follows_its_backends_file_with_two_workers() {
    a_pool_follows_its_backends_file(2).await;
}
