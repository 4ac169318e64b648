//! Shutdown: the listener closes at once, requests in flight finish, Veer
//! exits as soon as they have, and a second signal exits at once. In-process
//! with 1 and 2 workers, and the real binary with real signals.

use std::io::BufRead;
use std::time::{Duration, Instant};

use crate::support::*;

/// Whether a new connection to `addr` is refused (not accepted, not hung).
async fn refused(addr: std::net::SocketAddr) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_millis(500), tokio::net::TcpStream::connect(addr)).await,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused
    )
}

/// How long after now new connections to `addr` start being refused
/// (polled for up to 500 ms).
async fn refused_soon(addr: std::net::SocketAddr) -> Duration {
    let asked = Instant::now();
    while asked.elapsed() < Duration::from_millis(500) {
        if refused(addr).await {
            return asked.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("new connections are still accepted 500 ms after shutdown began");
}

async fn in_flight_requests_finish_and_new_connections_are_refused(workers: usize) {
    let a = Backend::start("a").await;
    let proxy = web_pool(workers, "shutdown_grace_ms = 10000", &[&a], "").await;
    let addr = proxy.addr;
    // An idle keep-alive client, and one with a request in flight.
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        idle.write_all(b"GET / HTTP/1.1\r\nhost: localhost\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = idle.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    }
    let in_flight = tokio::spawn(async move { Client::h1(addr).await.get("/slow?ms=800").await });
    tokio::time::sleep(Duration::from_millis(200)).await;

    proxy.begin_stop();
    let refused_after = refused_soon(addr).await;
    assert!(
        refused_after < Duration::from_millis(100),
        "{refused_after:?}"
    );

    let answer = in_flight.await.unwrap();
    let answered = Instant::now();
    assert_eq!(answer.status, 200, "the request in flight finished");
    tokio::time::timeout(Duration::from_secs(1), proxy.stopped())
        .await
        .expect("stopped within 1 s of the last response, not at the grace period");
    println!(
        "{workers} worker(s): refused after {refused_after:?}, stopped {:?} after the last response",
        answered.elapsed()
    );
}

#[tokio::test]
async fn in_flight_requests_finish_and_new_connections_are_refused_with_one_worker() {
    in_flight_requests_finish_and_new_connections_are_refused(1).await;
}

#[tokio::test]
async fn in_flight_requests_finish_and_new_connections_are_refused_with_two_workers() {
    in_flight_requests_finish_and_new_connections_are_refused(2).await;
}

/// A configuration for the real binary in front of `backend` (`{listen}` is
/// filled in by [`start_veer`]); no plugin folder, no compiled cache.
fn binary_config(workers: usize, server_extra: &str, backend: &Backend) -> String {
    format!(
        "[server]\nlisten = \"{{listen}}\"\nworkers = {workers}\n{server_extra}\n[plugins]\ndir = \"\"\ncache_dir = \"\"\n[pools.web]\nbackends = [\"{}\"]\n",
        backend.addr
    )
}

/// The real binary serving `toml`; returns it and its address.
fn start_veer(dir: &TempDir, toml: &str) -> (std::process::Child, std::net::SocketAddr) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let config = dir.join("veer.toml");
    // Tests run side by side: the admin listener on any free port.
    let toml = format!(
        "{}\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        toml.replace("{listen}", &addr.to_string())
    );
    std::fs::write(&config, toml).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_veer"))
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for "veer is serving" on its log.
    let stderr = child.stderr.take().unwrap();
    let mut lines = std::io::BufReader::new(stderr).lines();
    loop {
        let line = lines.next().expect("veer logs that it serves").unwrap();
        if line.contains("veer is serving") {
            break;
        }
    }
    std::thread::spawn(move || lines.for_each(drop));
    (child, addr)
}

fn signal(child: &std::process::Child, signal: rustix::process::Signal) {
    rustix::process::kill_process(rustix::process::Pid::from_child(child), signal).unwrap();
}

/// Waits up to `limit` for the process to exit.
async fn exited_within(
    child: &mut std::process::Child,
    limit: Duration,
) -> Option<std::process::ExitStatus> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

#[tokio::test]
async fn sigterm_refuses_new_connections_at_once_and_exits_when_the_last_request_ends() {
    let a = Backend::start("a").await;
    let dir = TempDir::new("sigterm");
    let (mut veer, addr) = start_veer(&dir, &binary_config(2, "", &a));
    let in_flight = tokio::spawn(async move { Client::h1(addr).await.get("/slow?ms=800").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    signal(&veer, rustix::process::Signal::TERM);
    let refused_after = refused_soon(addr).await;
    assert!(
        refused_after < Duration::from_millis(100),
        "{refused_after:?}"
    );
    let answer = in_flight.await.unwrap();
    let answered = Instant::now();
    assert_eq!(answer.status, 200);
    let status = exited_within(&mut veer, Duration::from_secs(1))
        .await
        .expect("veer exited within 1 s of the last response");
    assert!(status.success(), "{status:?}");
    println!(
        "SIGTERM: refused after {refused_after:?}; exited {:?} after the last response",
        answered.elapsed()
    );
}

#[tokio::test]
async fn a_second_sigterm_exits_at_once() {
    let a = Backend::start("a").await;
    let dir = TempDir::new("sigterm2");
    let (mut veer, addr) = start_veer(&dir, &binary_config(1, "shutdown_grace_ms = 30000", &a));
    let _in_flight = tokio::spawn(async move {
        let mut client = Client::h1(addr).await;
        client.get("/slow?ms=20000").await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    signal(&veer, rustix::process::Signal::TERM);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        veer.try_wait().unwrap().is_none(),
        "still draining after the first"
    );
    signal(&veer, rustix::process::Signal::INT);
    let status = exited_within(&mut veer, Duration::from_millis(500))
        .await
        .expect("the second signal exits at once");
    assert!(!status.success(), "a forced exit says so: {status:?}");
}
