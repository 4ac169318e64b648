//! Zero-downtime binary upgrade with real processes: a second `veer run
//! --take-over` takes the listening sockets from the running one while
//! keep-alive clients keep sending, and not one request fails.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use http::Request;
use http_body_util::BodyExt;
use tokio::net::TcpStream;

use crate::support::*;

/// A `veer run` process of the binary under test, its log in `DIR/NAME.log`.
struct Veer {
    child: Child,
    log: PathBuf,
}

impl Veer {
    fn run(dir: &TempDir, name: &str, config: &Path, take_over: Option<&Path>) -> Veer {
        let log = dir.join(&format!("{name}.log"));
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_veer"));
        command.args(["run", "--config"]).arg(config);
        if let Some(from) = take_over {
            command.arg("--take-over").arg(from);
        }
        let child = command
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Veer { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (at most `limit`) for the process to exit on its own.
    async fn exited_within(&mut self, limit: Duration) -> Option<ExitStatus> {
        let started = std::time::Instant::now();
        while started.elapsed() < limit {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// SIGTERM, then the exit status (killed if it does not exit in 20 s).
    async fn stop(mut self) -> ExitStatus {
        rustix::process::kill_process(
            rustix::process::Pid::from_child(&self.child),
            rustix::process::Signal::TERM,
        )
        .unwrap();
        match self.exited_within(Duration::from_secs(20)).await {
            Some(status) => status,
            None => panic!("veer did not stop on SIGTERM:\n{}", self.log()),
        }
    }
}

impl Drop for Veer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback port (bound, then let go).
fn free_addr() -> SocketAddr {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap()
}

/// Writes `dir/NAME.toml`: a proxy on `listen` with `workers` workers, its
/// admin listener on `admin`, the upgrade socket `dir/upgrade.sock`, and
/// one pool over `backends` balanced by `strategy`.
fn write_config(
    dir: &TempDir,
    name: &str,
    (listen, admin): (SocketAddr, SocketAddr),
    workers: usize,
    backends: &[&Backend],
    strategy: &str,
) -> PathBuf {
    let path = dir.join(&format!("{name}.toml"));
    let socket = dir.join("upgrade.sock");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"{listen}\"\nworkers = {workers}\nupgrade_socket = \"{}\"\n\
             [plugins]\ndir = \"\"\n[admin]\nlisten = \"{admin}\"\n\
             [pools.web]\nstrategy = \"{strategy}\"\nbackends = [{}]\n",
            socket.display(),
            addresses(backends),
        ),
    )
    .unwrap();
    path
}

async fn until_accepting(addr: SocketAddr, veer: &Veer) {
    let started = std::time::Instant::now();
    while TcpStream::connect(addr).await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "veer did not start:\n{}",
            veer.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Keep-alive clients sending GETs back to back, as a well-behaved HTTP
/// client does: a response saying `Connection: close` ends that connection
/// and the next request goes on a new one. A failure is a request not
/// answered 200, or a connection refused.
struct Traffic {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failures: Arc<std::sync::Mutex<Vec<String>>>,
    reconnects: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Traffic {
    fn start(addr: SocketAddr, clients: usize, limit: Duration) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
        let reconnects = Arc::new(AtomicU64::new(0));
        let tasks = (0..clients)
            .map(|_| {
                let (stop, ok) = (stop.clone(), ok.clone());
                let (failures, reconnects) = (failures.clone(), reconnects.clone());
                tokio::spawn(async move {
                    let deadline = tokio::time::Instant::now() + limit;
                    let mut sender = None;
                    while !stop.load(Ordering::Relaxed) && tokio::time::Instant::now() < deadline {
                        if sender.is_none() {
                            match connect(addr).await {
                                Ok(s) => sender = Some(s),
                                Err(e) => {
                                    failures.lock().unwrap().push(format!("connect: {e}"));
                                    tokio::time::sleep(Duration::from_millis(10)).await;
                                    continue;
                                }
                            }
                        }
                        let s = sender.as_mut().unwrap();
                        let request = Request::get("/")
                            .header("host", "localhost")
                            .body(empty())
                            .unwrap();
                        let answer = match s.ready().await {
                            Ok(()) => s.send_request(request).await,
                            Err(e) => Err(e),
                        };
                        match answer {
                            Ok(response) if response.status() == 200 => {
                                let closing = response
                                    .headers()
                                    .get("connection")
                                    .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
                                match response.into_body().collect().await {
                                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                                    Err(e) => {
                                        failures.lock().unwrap().push(format!("body: {e}"));
                                        sender = None;
                                        continue;
                                    }
                                };
                                if closing {
                                    reconnects.fetch_add(1, Ordering::Relaxed);
                                    sender = None;
                                }
                            }
                            Ok(response) => {
                                failures
                                    .lock()
                                    .unwrap()
                                    .push(format!("status {}", response.status()));
                            }
                            Err(e) => {
                                failures.lock().unwrap().push(format!("request: {e}"));
                                sender = None;
                            }
                        }
                    }
                })
            })
            .collect();
        Traffic {
            stop,
            ok,
            failures,
            reconnects,
            tasks,
        }
    }

    fn answered(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Stops the clients: (answered, failures, reconnections asked for).
    async fn finish(self) -> (u64, Vec<String>, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        let failures = std::mem::take(&mut *self.failures.lock().unwrap());
        (
            self.ok.load(Ordering::Relaxed),
            failures,
            self.reconnects.load(Ordering::Relaxed),
        )
    }
}

async fn connect(
    addr: SocketAddr,
) -> std::io::Result<hyper::client::conn::http1::SendRequest<TestBody>> {
    let stream = TcpStream::connect(addr).await?;
    let (sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
    tokio::spawn(connection);
    Ok(sender)
}

/// Waits until `traffic` has had `more` answers beyond `from`.
async fn answered_beyond(traffic: &Traffic, from: u64, more: u64) {
    wait_for(Duration::from_secs(20), || {
        traffic.answered() >= from + more
    })
    .await;
}

async fn an_upgrade_under_load_fails_no_request(workers: usize) {
    let [a, b] = start_backends(["a", "b"]).await;
    let dir = TempDir::new("binary-upgrade");
    let addrs = (free_addr(), free_addr());
    let config = write_config(&dir, "veer", addrs, workers, &[&a, &b], "round-robin");
    let socket = dir.join("upgrade.sock");
    let mut old = Veer::run(&dir, "old", &config, None);
    until_accepting(addrs.0, &old).await;
    wait_for(Duration::from_secs(10), || socket.exists()).await;

    let traffic = Traffic::start(addrs.0, 8, Duration::from_secs(60));
    answered_beyond(&traffic, 0, 200).await;
    let mut new = Veer::run(&dir, "new", &config, Some(&socket));
    let exit = old.exited_within(Duration::from_secs(40)).await;
    let exit = exit.unwrap_or_else(|| panic!("the old veer did not exit:\n{}", old.log()));
    assert!(exit.success(), "old veer: {exit}\n{}", old.log());
    assert!(new.child.try_wait().unwrap().is_none(), "{}", new.log());
    // Served on by the new process alone, through the same sockets.
    let at_exit = traffic.answered();
    answered_beyond(&traffic, at_exit, 200).await;
    let (answered, failures, reconnects) = traffic.finish().await;

    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {:?}\nold:\n{}\nnew:\n{}",
        failures.len(),
        answered + failures.len() as u64,
        &failures[..failures.len().min(10)],
        old.log(),
        new.log()
    );
    assert!(reconnects >= 1, "the old process asked no client to move");
    println!("{answered} answered, 0 failed, {reconnects} clients moved to the new process");
    // The new process keeps the admin listener and the upgrade socket, and
    // can itself be upgraded later.
    let live = Client::h1(addrs.1).await.get("/live").await;
    assert_eq!(live.status, 200, "{}", live.body);
    assert!(socket.exists());
    assert!(
        old.log().contains("the new process serves: handing over"),
        "{}",
        old.log()
    );
    assert!(new.stop().await.success());
    assert!(
        !socket.exists(),
        "the last process removes its upgrade socket"
    );
}

#[tokio::test]
async fn an_upgrade_under_load_fails_no_request_with_one_worker() {
    an_upgrade_under_load_fails_no_request(1).await;
}

#[tokio::test]
async fn an_upgrade_under_load_fails_no_request_with_two_workers() {
    an_upgrade_under_load_fails_no_request(2).await;
}

/// A successor whose configuration cannot be served (here: a pool names a
/// strategy it has no plugin for) says why and exits non-zero; the old
/// process serves on without a failed request, and a good successor still
/// takes over from it afterwards.
#[tokio::test]
async fn a_successor_that_cannot_serve_leaves_the_old_process_serving() {
    let [a, b] = start_backends(["a", "b"]).await;
    let dir = TempDir::new("binary-upgrade-bad");
    let addrs = (free_addr(), free_addr());
    let good = write_config(&dir, "good", addrs, 1, &[&a, &b], "round-robin");
    let bad = write_config(&dir, "bad", addrs, 1, &[&a, &b], "no-such-strategy");
    let socket = dir.join("upgrade.sock");
    let mut old = Veer::run(&dir, "old", &good, None);
    until_accepting(addrs.0, &old).await;
    wait_for(Duration::from_secs(10), || socket.exists()).await;

    let traffic = Traffic::start(addrs.0, 4, Duration::from_secs(60));
    answered_beyond(&traffic, 0, 100).await;
    let mut failed = Veer::run(&dir, "bad-successor", &bad, Some(&socket));
    let status = failed.exited_within(Duration::from_secs(30)).await;
    let status = status.unwrap_or_else(|| panic!("the bad successor ran on:\n{}", failed.log()));
    assert!(!status.success(), "{}", failed.log());
    assert!(
        failed.log().contains("no-such-strategy"),
        "{}",
        failed.log()
    );
    // The old one was told, and serves on.
    wait_for(Duration::from_secs(5), || {
        old.log().contains("could not start")
    })
    .await;
    let now = traffic.answered();
    answered_beyond(&traffic, now, 100).await;
    assert!(old.child.try_wait().unwrap().is_none(), "{}", old.log());
    assert!(
        socket.exists(),
        "the old process's upgrade socket is still there"
    );

    let mut new = Veer::run(&dir, "good-successor", &good, Some(&socket));
    let exit = old.exited_within(Duration::from_secs(40)).await;
    assert!(exit.is_some_and(|s| s.success()), "{}", old.log());
    let now = traffic.answered();
    answered_beyond(&traffic, now, 100).await;
    let (answered, failures, _) = traffic.finish().await;
    assert!(
        failures.is_empty(),
        "{} of {answered} failed: {:?}\n{}",
        failures.len(),
        &failures[..failures.len().min(10)],
        old.log()
    );
    assert!(new.child.try_wait().unwrap().is_none(), "{}", new.log());
    assert!(new.stop().await.success());
}
