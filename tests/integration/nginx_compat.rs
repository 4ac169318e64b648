//! `consistent-hash` with `ring = "nginx"` and `ip-hash` with `compat =
//! "nginx"` against a real NGINX (1.22 in CI, from apt): the same backends
//! and weights behind both, the same keys (or client networks) sent to
//! both, and every answer must come from the same backend. Again after a
//! server is removed from both configurations, and with one backend
//! stopped (both then walk on to their next choice). Without `nginx`
//! installed these tests fail, they do not skip (see .ci/run).

use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

/// The NGINX binary: `VEER_TEST_NGINX`, else `nginx` on the PATH, else
/// `/usr/sbin/nginx` (Debian's, often off a user's PATH).
fn nginx_program() -> String {
    if let Ok(program) = std::env::var("VEER_TEST_NGINX") {
        return program;
    }
    let on_path = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("nginx").is_file()));
    if on_path {
        "nginx".into()
    } else {
        "/usr/sbin/nginx".into()
    }
}

/// A loopback port nothing listens on now (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real NGINX, one process (`master_process off`, so killing it leaves no
/// worker behind), proxying `127.0.0.1:PORT` to `upstream u { BODY }`, its
/// configuration, logs and temp files in a folder of its own. Killed on drop.
struct Nginx {
    addr: SocketAddr,
    child: Child,
    dir: TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Nginx {
    async fn start(label: &str, upstream: &str) -> Nginx {
        let dir = TempDir::new(label);
        let port = free_port();
        let d = dir.0.display();
        let config = format!(
            "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log notice;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
             \x20 fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
             \x20 keepalive_requests 100000;\n\
             \x20 upstream u {{\n{upstream}  }}\n\
             \x20 server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://u; }} }}\n}}\n"
        );
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, config).unwrap();
        let program = nginx_program();
        let mut child = Command::new(&program)
            .arg("-p")
            .arg(&dir.0)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("stderr")).unwrap())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "nginx could not start ({program}: {e}); these tests compare Veer with a \
                     real NGINX: install it (apt-get install nginx, see .ci/run) or name it \
                     in VEER_TEST_NGINX"
                )
            });
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let started = Instant::now();
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                let said = std::fs::read_to_string(dir.join("stderr")).unwrap_or_default();
                let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
                panic!("nginx exited ({status}) before listening on {addr}:\n{said}\n{log}");
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "nginx did not listen on {addr} within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Nginx { addr, child, dir }
    }
}

/// Backends (address, weight) as a Veer pool's `backends` (TOML array items).
fn veer_backends(backends: &[(SocketAddr, u32)]) -> String {
    backends
        .iter()
        .map(|(addr, w)| format!("{{ address = \"{addr}\", weight = {w} }}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The same as `server` lines of an NGINX upstream, after `method`.
fn nginx_upstream(method: &str, backends: &[(SocketAddr, u32)]) -> String {
    let mut text = format!("    {method};\n");
    for (addr, w) in backends {
        text.push_str(&format!("    server {addr} weight={w};\n"));
    }
    text
}

fn veer_config(strategy: &str, strategy_config: &str, backends: &[(SocketAddr, u32)]) -> String {
    format!(
        "{SERVER}[pools.web]\nstrategy = \"{strategy}\"\nstrategy_config = {strategy_config}\n\
         backends = [{}]\n",
        veer_backends(backends)
    )
}

/// Key number `i`: short and long, letters, digits, `-` and `/`.
fn key(i: u32) -> String {
    if i < 500 {
        format!("user-{i}")
    } else {
        format!("{:x}/{i}", (i as u64 * 2_654_435_761) % (1 << 32))
    }
}

const KEYS: u32 = 1000;

/// The backend that answers each key (as `?key=`), over one keep-alive
/// connection to `addr`.
async fn owners_of_keys(addr: SocketAddr) -> Vec<String> {
    let mut client = Client::h1(addr).await;
    let mut owners = Vec::with_capacity(KEYS as usize);
    for i in 0..KEYS {
        let answer = client.get(&format!("/?key={}", key(i))).await;
        assert_eq!(answer.status, 200, "key {}: {}", key(i), answer.body);
        owners.push(answer.backend().to_string());
    }
    owners
}

/// Client network number `j` (0..256): 127.A.B.1, each in its own /24.
fn source(j: u32) -> IpAddr {
    IpAddr::from([127, ((j * 73) % 256) as u8, ((j * 151 + 7) % 256) as u8, 1])
}

const NETWORKS: u32 = 256;

/// The backend that answers a client from each network, one connection
/// each.
async fn owners_of_networks(addr: SocketAddr) -> Vec<String> {
    let mut owners = Vec::with_capacity(NETWORKS as usize);
    for j in 0..NETWORKS {
        let mut client = Client::h1_from(addr, source(j)).await;
        let answer = client.get("/").await;
        assert_eq!(answer.status, 200, "from {}: {}", source(j), answer.body);
        owners.push(answer.backend().to_string());
    }
    owners
}

/// Asserts that every answer agrees; prints the figure.
fn assert_agree(what: &str, veer: &[String], nginx: &[String], labels: impl Fn(usize) -> String) {
    assert_eq!(veer.len(), nginx.len());
    let differ: Vec<String> = (0..veer.len())
        .filter(|&i| veer[i] != nginx[i])
        .map(|i| format!("{}: veer {} nginx {}", labels(i), veer[i], nginx[i]))
        .collect();
    let agree = veer.len() - differ.len();
    eprintln!("{what}: {agree}/{} agree with nginx", veer.len());
    assert!(
        differ.is_empty(),
        "{what}: {} of {} differ, e.g. {:?}",
        differ.len(),
        veer.len(),
        &differ[..differ.len().min(10)]
    );
    let spread: std::collections::BTreeSet<&String> = nginx.iter().collect();
    assert!(spread.len() > 1, "{what}: answers spread over backends");
}

/// Sends the same traffic to Veer and NGINX over the same backends.
async fn compare(
    what: &str,
    strategy: &str,
    strategy_config: &str,
    method: &str,
    backends: &[(SocketAddr, u32)],
    owners: impl AsyncFn(SocketAddr) -> Vec<String>,
    labels: impl Fn(usize) -> String,
) {
    let nginx = Nginx::start("nginx", &nginx_upstream(method, backends)).await;
    let proxy = Proxy::start(&veer_config(strategy, strategy_config, backends)).await;
    let from_nginx = owners(nginx.addr).await;
    let from_veer = owners(proxy.addr).await;
    if from_nginx.iter().any(|o| o == "-") {
        let log = std::fs::read_to_string(nginx.dir.join("error.log")).unwrap_or_default();
        panic!("{what}: nginx answered without a backend:\n{log}");
    }
    assert_agree(what, &from_veer, &from_nginx, labels);
    proxy.stop().await;
}

/// The address of a backend that has stopped: connections are refused.
async fn stopped_backend() -> SocketAddr {
    let backend = Backend::start("stopped").await;
    let addr = backend.addr;
    drop(backend);
    // The listener closes as its task sees the cancellation.
    let started = Instant::now();
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{addr} still accepts"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    addr
}

#[tokio::test]
async fn consistent_hash_nginx_ring_places_keys_as_a_real_nginx() {
    let b = start_backends(["a", "b", "c", "d", "e"]).await;
    let config = "{ key = \"query:key\", ring = \"nginx\" }";
    let method = "hash $arg_key consistent";
    let labels = |i: usize| format!("key {}", key(i as u32));
    let all = [
        (b[0].addr, 1),
        (b[1].addr, 2),
        (b[2].addr, 3),
        (b[3].addr, 1),
        (b[4].addr, 2),
    ];
    let compare_on = async |what: &str, backends: &[(SocketAddr, u32)]| {
        compare(
            what,
            "consistent-hash",
            config,
            method,
            backends,
            owners_of_keys,
            labels,
        )
        .await;
    };
    compare_on("consistent-hash, 5 servers, weights 1 2 3 1 2", &all).await;
    compare_on(
        "consistent-hash, server b removed",
        &[all[0], all[2], all[3], all[4]],
    )
    .await;
    // A sixth server (weight 1) that refuses connections: the keys it owns
    // go, in both, to the next server along the ring.
    let mut with_stopped = all.to_vec();
    with_stopped.insert(2, (stopped_backend().await, 1));
    compare_on("consistent-hash, one more server, stopped", &with_stopped).await;
}

#[tokio::test]
async fn ip_hash_nginx_compat_picks_as_a_real_nginx_for_256_client_networks() {
    let b = start_backends(["a", "b", "c", "d"]).await;
    let config = "{ compat = \"nginx\" }";
    let labels = |j: usize| format!("client {}", source(j as u32));
    let all = [
        (b[0].addr, 1),
        (b[1].addr, 2),
        (b[2].addr, 3),
        (b[3].addr, 5),
    ];
    let compare_on = async |what: &str, backends: &[(SocketAddr, u32)]| {
        compare(
            what,
            "ip-hash",
            config,
            "ip_hash",
            backends,
            owners_of_networks,
            labels,
        )
        .await;
    };
    compare_on("ip-hash, 4 servers, weights 1 2 3 5", &all).await;
    compare_on("ip-hash, server b removed", &[all[0], all[2], all[3]]).await;
    // A fifth server (weight 1) that refuses connections: its clients are
    // hashed again, in both, until another server takes them.
    let mut with_stopped = all.to_vec();
    with_stopped.insert(1, (stopped_backend().await, 1));
    compare_on("ip-hash, one more server, stopped", &with_stopped).await;
}
