//! Real peers through Veer: Python's `websockets` and `grpcio` (scripts in
//! tests/python/) as backends and clients, so WebSocket framing, HTTP/2
//! streams, trailers and deadlines are checked against implementations we
//! did not write. The modules must be installed (`pip install websockets
//! grpcio`); a test without them fails, it does not skip.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::support::*;

/// The interpreter: `VEER_TEST_PYTHON`, else `python3`.
fn python() -> String {
    std::env::var("VEER_TEST_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

fn script(name: &str) -> String {
    format!("{}/../tests/python/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// A Python command with a clean environment for the peers: no HTTP proxy
/// from the environment, no bytecode written next to the scripts.
fn python_command(args: &[String]) -> Command {
    let mut command = Command::new(python());
    command
        .args(args)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1");
    for var in [
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "grpc_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
    ] {
        command.env_remove(var);
    }
    command
}

/// What a finished (or stopped) Python client said.
struct Ran {
    /// `None`: still running at the time limit, killed.
    status: Option<ExitStatus>,
    stdout: String,
    stderr: String,
}

/// Runs `python ARGS` to the end, killed past `limit`. Blocking.
fn run_bounded(args: Vec<String>, limit: Duration) -> Ran {
    let mut child = python_command(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({e}): install Python 3, then pip install websockets grpcio",
                python()
            )
        });
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            String::from_utf8_lossy(&bytes).into_owned()
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ran {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

/// Runs a Python client off the runtime's thread (the proxy keeps serving).
async fn run_client(args: Vec<String>, limit: Duration) -> Ran {
    tokio::task::spawn_blocking(move || run_bounded(args, limit))
        .await
        .unwrap()
}

/// Fails the test, saying what to install, unless Python can import `module`.
fn require(module: &str) {
    let ran = run_bounded(
        vec!["-c".to_string(), format!("import {module}")],
        Duration::from_secs(30),
    );
    assert!(
        ran.status.is_some_and(|s| s.success()),
        "{} cannot import `{module}`: pip install websockets grpcio\n{}",
        python(),
        ran.stderr.trim()
    );
}

/// A Python server in a process of its own, on 127.0.0.1:0; killed on drop.
struct PythonServer {
    port: u16,
    child: Child,
    dir: PathBuf,
}

impl PythonServer {
    /// Starts `python SCRIPT server PORTFILE EXTRA…` and waits (15 s at most)
    /// for the port it writes.
    async fn start(name: &str, extra: &[&str]) -> PythonServer {
        static STARTED: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "veer-python-{}-{}",
            std::process::id(),
            STARTED.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let portfile = dir.join("port");
        let log = std::fs::File::create(dir.join("log")).unwrap();
        let portfile_arg = portfile.display().to_string();
        let mut rest = vec!["server", portfile_arg.as_str()];
        rest.extend_from_slice(extra);
        let args = script_args(name, &rest);
        let child = python_command(&args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {} ({e}): install Python 3, then pip install websockets grpcio",
                    python()
                )
            });
        let mut server = PythonServer {
            port: 0,
            child,
            dir,
        };
        let started = Instant::now();
        loop {
            if let Some(port) = std::fs::read_to_string(&portfile)
                .ok()
                .and_then(|text| text.trim().parse().ok())
            {
                server.port = port;
                return server;
            }
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!("{name} server exited ({status}):\n{}", server.log());
            }
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "{name} server wrote no port within 15 s:\n{}",
                server.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// What the server printed so far.
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }
}

impl Drop for PythonServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Asserts the client exited 0 having printed exactly `expected`, one a line.
fn assert_printed(ran: &Ran, expected: &[&str], server: &PythonServer) {
    let lines: Vec<&str> = ran.stdout.lines().map(str::trim).collect();
    assert!(
        ran.status.is_some_and(|s| s.success()) && lines == expected,
        "client {}; expected {expected:?}\n--- stdout\n{}--- stderr\n{}--- server\n{}",
        match ran.status {
            Some(status) => format!("exited {status}"),
            None => "killed at its time limit".to_string(),
        },
        ran.stdout,
        ran.stderr,
        server.log()
    );
}

/// `python SCRIPT ARGS…` as owned strings.
fn script_args(name: &str, rest: &[&str]) -> Vec<String> {
    let mut args = vec![script(name)];
    args.extend(rest.iter().map(|s| s.to_string()));
    args
}

#[tokio::test]
async fn a_websocket_echo_passes_1000_messages_both_ways_through_veer() {
    require("websockets");
    let backend = PythonServer::start("ws_echo.py", &[]).await;
    let proxy = Proxy::start(&format!(
        "{}[pools.web]\nbackends = [\"{}\"]\n",
        server(2, ""),
        backend.addr()
    ))
    .await;
    let url = format!("ws://{}/", proxy.addr);
    let ran = run_client(
        script_args("ws_echo.py", &["client", url.as_str(), "1000"]),
        Duration::from_secs(60),
    )
    .await;
    assert_printed(&ran, &["ok 1000"], &backend);
    assert_eq!(proxy.metrics.snapshot().tunnels, 1);
}

#[tokio::test]
async fn an_idle_websocket_tunnel_is_closed_after_the_pools_read_timeout() {
    require("websockets");
    let backend = PythonServer::start("ws_echo.py", &[]).await;
    let proxy = Proxy::start(&format!(
        "{SERVER}[pools.web]\nbackends = [\"{}\"]\nread_timeout_ms = 1000\n",
        backend.addr()
    ))
    .await;
    let url = format!("ws://{}/", proxy.addr);
    let ran = run_client(
        script_args("ws_echo.py", &["idle", url.as_str(), "10"]),
        Duration::from_secs(30),
    )
    .await;
    let line = ran.stdout.trim();
    let seconds: f64 = line
        .strip_prefix("closed after ")
        .and_then(|rest| rest.strip_suffix(" s"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "expected `closed after X.Y s` (status {:?})\n--- stdout\n{}--- stderr\n{}--- server\n{}",
                ran.status,
                ran.stdout,
                ran.stderr,
                backend.log()
            )
        });
    assert!(ran.status.is_some_and(|s| s.success()), "{}", ran.stderr);
    assert!(
        (0.8..=5.0).contains(&seconds),
        "closed after {seconds} s; read_timeout_ms is 1000"
    );
    assert_eq!(proxy.metrics.snapshot().tunnel_idle_closes, 1);
}

#[tokio::test]
async fn grpc_unary_streaming_errors_and_deadlines_pass_through_veer_over_h2c() {
    require("grpc");
    let backend = PythonServer::start("grpc_peer.py", &["--id", "py-grpc-1"]).await;
    let proxy = Proxy::start(&format!(
        "{}[pools.grpc]\nbackends = [\"{}\"]\nprotocol = \"h2c\"\n",
        server(2, ""),
        backend.addr()
    ))
    .await;
    let target = proxy.addr.to_string();
    let ran = run_client(
        script_args(
            "grpc_peer.py",
            &["client", target.as_str(), "--served-by", "py-grpc-1"],
        ),
        Duration::from_secs(120),
    )
    .await;
    assert_printed(
        &ran,
        &["unary ok 200", "fail ok", "chat ok 1000", "deadline ok"],
        &backend,
    );
}
