//! Helpers: real backends and a real proxy on 127.0.0.1:0, and small clients.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub type TestBody = BoxBody<Bytes, std::io::Error>;

/// A backend that names itself. Paths:
/// - `/echo`: streams the request body back;
/// - `/count?delay_ms=N`: waits N ms, then reads the whole body and answers with its length;
/// - `/stream?bytes=N`: streams N bytes (1 MiB chunks), counting what it produced in `produced`;
/// - `/slow?ms=N`: answers after N ms;
/// - `/headers` (any path with `headers` in it): answers with the request
///   headers, one `name: value` a line, then `path: ` and the path it was sent;
/// - `/trailers`: reads the body and its trailers, answers with a chunked
///   body and a trailer `x-got` repeating the request's `x-checksum` trailer;
/// - anything else: its name.
///
/// Every answer has `x-backend: NAME`.
pub struct Backend {
    pub addr: SocketAddr,
    pub name: String,
    /// Requests served.
    pub hits: Arc<AtomicU64>,
    /// Bytes `/stream` has handed to hyper so far.
    pub produced: Arc<AtomicU64>,
    /// Requests being answered now, and the most at once so far.
    pub concurrency: Arc<Concurrency>,
    cancel: CancellationToken,
}

/// A gauge of requests in progress and its high-water mark.
#[derive(Default)]
pub struct Concurrency {
    now: AtomicU64,
    pub max: AtomicU64,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl Backend {
    pub async fn start(name: &str) -> Backend {
        Backend::start_with(name, Duration::ZERO).await
    }

    /// A backend that waits `delay` before every answer (a slow backend).
    pub async fn start_with(name: &str, delay: Duration) -> Backend {
        Backend::start_on(name, delay, "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap()
    }

    /// A backend on `addr` (e.g. another loopback address, on a port the
    /// test chose); `None` when that address cannot be bound.
    pub async fn start_at(name: &str, addr: SocketAddr) -> Option<Backend> {
        Backend::start_on(name, Duration::ZERO, addr).await
    }

    async fn start_on(name: &str, delay: Duration, addr: SocketAddr) -> Option<Backend> {
        let listener = TcpListener::bind(addr).await.ok()?;
        let backend = Backend {
            addr: listener.local_addr().unwrap(),
            name: name.to_string(),
            hits: Arc::default(),
            produced: Arc::default(),
            concurrency: Arc::default(),
            cancel: CancellationToken::new(),
        };
        let name = backend.name.clone();
        let (hits, produced, concurrency) = (
            backend.hits.clone(),
            backend.produced.clone(),
            backend.concurrency.clone(),
        );
        let cancel = backend.cancel.clone();
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    _ = cancel.cancelled() => return,
                    accepted = listener.accept() => accepted.unwrap().0,
                };
                let (name, hits, produced, concurrency) = (
                    name.clone(),
                    hits.clone(),
                    produced.clone(),
                    concurrency.clone(),
                );
                let cancel = cancel.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        hits.fetch_add(1, Ordering::Relaxed);
                        let (name, produced, concurrency) =
                            (name.clone(), produced.clone(), concurrency.clone());
                        async move {
                            let now = concurrency.now.fetch_add(1, Ordering::SeqCst) + 1;
                            concurrency.max.fetch_max(now, Ordering::SeqCst);
                            tokio::time::sleep(delay).await;
                            let answer = backend_answer(name, produced, req).await;
                            concurrency.now.fetch_sub(1, Ordering::SeqCst);
                            answer
                        }
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    tokio::select! {
                        _ = builder.serve_connection(TokioIo::new(stream), service) => {}
                        _ = cancel.cancelled() => {}
                    }
                });
            }
        });
        Some(backend)
    }
}

fn query_number(req: &Request<Incoming>, key: &str) -> u64 {
    req.uri()
        .query()
        .and_then(|q| {
            q.split('&')
                .find_map(|p| p.strip_prefix(key)?.strip_prefix('='))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn backend_answer(
    name: String,
    produced: Arc<AtomicU64>,
    req: Request<Incoming>,
) -> Result<Response<TestBody>, Infallible> {
    let body: TestBody = match req.uri().path() {
        "/echo" => req.into_body().map_err(std::io::Error::other).boxed(),
        "/count" => {
            tokio::time::sleep(Duration::from_millis(query_number(&req, "delay_ms"))).await;
            let n = count_body(req.into_body()).await;
            full(n.to_string())
        }
        "/stream" => feed(query_number(&req, "bytes"), produced).boxed(),
        "/slow" => {
            tokio::time::sleep(Duration::from_millis(query_number(&req, "ms"))).await;
            full(name.clone())
        }
        p if p.contains("headers") => {
            let mut text: String = req
                .headers()
                .iter()
                .map(|(k, v)| format!("{}: {}\n", k, v.to_str().unwrap_or("?")))
                .collect();
            text.push_str(&format!("path: {}\n", req.uri()));
            full(text)
        }
        "/trailers" => {
            let collected = req.into_body().collect().await.unwrap();
            let got = collected
                .trailers()
                .and_then(|t| t.get("x-checksum"))
                .map_or("none".to_string(), |v| v.to_str().unwrap().to_string());
            let mut trailers = HeaderMap::new();
            trailers.insert("x-got", got.parse().unwrap());
            let frames = vec![
                Frame::data(Bytes::from_static(b"body")),
                Frame::trailers(trailers),
            ];
            return Ok(Response::builder()
                .header("x-backend", name.as_str())
                .header("trailer", "x-got")
                .body(FramesBody(frames.into()).boxed())
                .unwrap());
        }
        _ => full(name.clone()),
    };
    Ok(Response::builder()
        .header("x-backend", name.as_str())
        .body(body)
        .unwrap())
}

/// A body fed through a channel: each message is one data frame. With a
/// channel of capacity 1 the sender can only run one chunk ahead of whoever
/// reads the body, so what it has sent shows how far the reader has pulled.
pub struct ChannelBody(pub mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
    }
}

/// Feeds `total` bytes in 1 MiB chunks into a new [`ChannelBody`], counting
/// what it has handed over in `fed`.
pub fn feed(total: u64, fed: Arc<AtomicU64>) -> ChannelBody {
    let (tx, rx) = mpsc::channel::<Bytes>(1);
    tokio::spawn(async move {
        let chunk = Bytes::from(vec![b'x'; 1 << 20]);
        let mut sent = 0;
        while sent < total {
            let n = chunk.len().min((total - sent) as usize);
            if tx.send(chunk.slice(..n)).await.is_err() {
                return;
            }
            sent += n as u64;
            fed.store(sent, Ordering::Relaxed);
        }
    });
    ChannelBody(rx)
}

pub async fn count_body(mut body: Incoming) -> u64 {
    let mut n = 0;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            n += data.len() as u64;
        }
    }
    n
}

pub fn full(text: impl Into<Bytes>) -> TestBody {
    Full::new(text.into())
        .map_err(|never| match never {})
        .boxed()
}

pub fn empty() -> TestBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// A proxy started in-process from TOML text, stopped on drop.
pub struct Proxy {
    pub addr: SocketAddr,
    /// The HTTPS listener's address, when the configuration has `[tls]`.
    pub https: Option<SocketAddr>,
    /// The admin listener's address (on port 0 unless a test sets one).
    pub admin: Option<SocketAddr>,
    pub metrics: Arc<veer::Metrics>,
    cancel: CancellationToken,
    running: Option<tokio::task::JoinHandle<Result<(), veer::Error>>>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl Proxy {
    /// Starts, or says why it could not (e.g. no IPv6 here).
    pub async fn try_start(toml: &str) -> Result<Proxy, veer::Error> {
        let config =
            veer::Config::from_toml(toml, std::path::Path::new(".")).expect("test config is valid");
        let server = veer::Server::bind(admin_on_any_port(config))?;
        let cancel = CancellationToken::new();
        let (addr, metrics, https) = (server.local_addr(), server.metrics(), server.https_addr());
        let admin = server.admin_addr();
        let running = tokio::spawn(server.run(cancel.clone().cancelled_owned()));
        Ok(Proxy {
            addr,
            https,
            admin,
            metrics,
            cancel,
            running: Some(running),
        })
    }

    pub async fn start(toml: &str) -> Proxy {
        let config =
            veer::Config::from_toml(toml, std::path::Path::new(".")).expect("test config is valid");
        Proxy::serve(config).0
    }

    /// Starts from a configuration file (so it can be reloaded).
    pub async fn start_file(path: &std::path::Path) -> (Proxy, veer::Handle) {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter("veer=info")
            .try_init();
        Proxy::serve(veer::Config::load(path).expect("test config is valid"))
    }

    fn serve(config: veer::Config) -> (Proxy, veer::Handle) {
        let server = veer::Server::bind(admin_on_any_port(config)).expect("proxy starts");
        let handle = server.handle();
        let cancel = CancellationToken::new();
        let (addr, metrics, https) = (server.local_addr(), server.metrics(), server.https_addr());
        let admin = server.admin_addr();
        let running = tokio::spawn(server.run(cancel.clone().cancelled_owned()));
        (
            Proxy {
                addr,
                https,
                admin,
                metrics,
                cancel,
                running: Some(running),
            },
            handle,
        )
    }

    /// Asks the proxy to shut down and waits until it has drained.
    pub async fn stop(mut self) {
        self.cancel.cancel();
        self.running.take().unwrap().await.unwrap().unwrap();
    }

    /// Asks the proxy to shut down (as SIGTERM does) without waiting.
    pub fn begin_stop(&self) {
        self.cancel.cancel();
    }

    /// Waits until the proxy has stopped.
    pub async fn stopped(mut self) {
        self.running.take().unwrap().await.unwrap().unwrap();
    }
}

/// Tests run side by side: the admin listener's default port (9901) would
/// be taken by the first. Unless a test chose an address, port 0.
fn admin_on_any_port(mut config: veer::Config) -> veer::Config {
    if config.admin.listen == Some("127.0.0.1:9901".parse().unwrap()) {
        config.admin.listen = Some("127.0.0.1:0".parse().unwrap());
    }
    config
}

/// Backends named `names`, started in order.
pub async fn start_backends<const N: usize>(names: [&str; N]) -> [Backend; N] {
    let mut started = Vec::with_capacity(N);
    for name in names {
        started.push(Backend::start(name).await);
    }
    match started.try_into() {
        Ok(backends) => backends,
        Err(_) => unreachable!("exactly N were started"),
    }
}

/// `[server]` for tests: port 0, one worker (exact per-worker orders).
pub const SERVER: &str = "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 1\n";

/// `"a", "b"` for a TOML array of backend addresses.
pub fn addresses(backends: &[&Backend]) -> String {
    backends
        .iter()
        .map(|b| format!("\"{}\"", b.addr))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Path of a test plugin built from tests/plugins/NAME.
pub fn test_plugin(name: &str) -> String {
    format!("{}/{name}.wasm", env!("VEER_TEST_PLUGINS_DIR"))
}

/// One keep-alive client connection, HTTP/1.1 or HTTP/2 (prior knowledge).
pub enum Client {
    H1(hyper::client::conn::http1::SendRequest<TestBody>),
    H2(hyper::client::conn::http2::SendRequest<TestBody>),
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn backend(&self) -> &str {
        self.headers
            .get("x-backend")
            .map_or("-", |v| v.to_str().unwrap())
    }
}

impl Client {
    pub async fn h1(addr: SocketAddr) -> Client {
        Client::h1_over(TcpStream::connect(addr).await.unwrap()).await
    }

    /// An HTTP/1.1 client connecting from `source` (any 127.0.0.0/8 address).
    pub async fn h1_from(addr: SocketAddr, source: std::net::IpAddr) -> Client {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(source, 0)).unwrap();
        Client::h1_over(socket.connect(addr).await.unwrap()).await
    }

    async fn h1_over(stream: TcpStream) -> Client {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        Client::H1(sender)
    }

    pub async fn h2(addr: SocketAddr) -> Client {
        let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
        let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(conn);
        Client::H2(sender)
    }

    /// Sends a request and returns the response with its body still streaming.
    pub async fn send(&mut self, request: Request<TestBody>) -> Response<Incoming> {
        match self {
            Client::H1(s) => {
                s.ready().await.unwrap();
                s.send_request(request).await.unwrap()
            }
            Client::H2(s) => {
                s.ready().await.unwrap();
                s.send_request(request).await.unwrap()
            }
        }
    }

    /// GET `path` (host `localhost`) and read the whole answer.
    pub async fn get(&mut self, path: &str) -> Answer {
        self.get_with(path, &[]).await
    }

    /// GET with extra headers.
    pub async fn get_with(&mut self, path: &str, headers: &[(&str, &str)]) -> Answer {
        let is_h2 = matches!(self, Client::H2(_));
        let uri = if is_h2 {
            format!("http://localhost{path}")
        } else {
            path.to_string()
        };
        let mut builder = Request::get(uri);
        if !is_h2 {
            builder = builder.header("host", "localhost");
        }
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let response = self.send(builder.body(empty()).unwrap()).await;
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }
}

/// `clients` concurrent HTTP/1.1 clients each send `each` GETs of `path` with
/// `headers`; returns how many answers each backend gave (by `x-backend`).
/// Every answer must be 200. Bounded: clients × each requests.
pub async fn load(
    addr: SocketAddr,
    clients: usize,
    each: usize,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
) -> std::collections::BTreeMap<String, usize> {
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            tokio::spawn(async move {
                let mut client = Client::h1(addr).await;
                let mut seen = Vec::with_capacity(each);
                for _ in 0..each {
                    let answer = client.get_with(path, headers).await;
                    assert_eq!(answer.status, 200, "{}", answer.body);
                    seen.push(answer.backend().to_string());
                }
                seen
            })
        })
        .collect();
    let mut counts = std::collections::BTreeMap::new();
    for task in tasks {
        for name in task.await.unwrap() {
            *counts.entry(name).or_insert(0) += 1;
        }
    }
    counts
}

/// A fresh folder under the system temp dir, removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("veer-test-{}-{label}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn join(&self, name: &str) -> std::path::PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Background load: `clients` keep-alive clients send GETs until stopped (or
/// `limit` passes), counting answers that are not 200 or that fail.
pub struct Load {
    stop: Arc<std::sync::atomic::AtomicBool>,
    pub ok: Arc<AtomicU64>,
    pub failed: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn start(addr: SocketAddr, clients: usize, limit: Duration) -> Load {
        Load::start_on(addr, "/", clients, limit)
    }

    /// The same, for GETs of `path`.
    pub fn start_on(addr: SocketAddr, path: &'static str, clients: usize, limit: Duration) -> Load {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let tasks = (0..clients)
            .map(|_| {
                let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
                tokio::spawn(async move {
                    let deadline = tokio::time::Instant::now() + limit;
                    let mut client = Client::h1(addr).await;
                    while !stop.load(Ordering::Relaxed) && tokio::time::Instant::now() < deadline {
                        let request = Request::get(path)
                            .header("host", "localhost")
                            .body(empty())
                            .unwrap();
                        let response = match &mut client {
                            Client::H1(s) => match s.ready().await {
                                Ok(()) => s.send_request(request).await.ok(),
                                Err(_) => None,
                            },
                            Client::H2(_) => unreachable!(),
                        };
                        let answered = match response {
                            Some(r) if r.status() == 200 => r.into_body().collect().await.is_ok(),
                            _ => false,
                        };
                        match answered {
                            true => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            false => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                client = Client::h1(addr).await;
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            tasks,
        }
    }

    /// Stops and returns (ok, failed).
    pub async fn finish(self) -> (u64, u64) {
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

/// Polls with fresh requests until `backend` answers; returns how long it took.
pub async fn until_served_by(addr: SocketAddr, backend: &str, limit: Duration) -> Duration {
    let started = std::time::Instant::now();
    let mut client = Client::h1(addr).await;
    loop {
        if client.get("/").await.backend() == backend {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "not served by {backend} within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A body of frames known in advance (data, then trailers).
pub struct FramesBody(pub std::collections::VecDeque<Frame<Bytes>>);

impl hyper::body::Body for FramesBody {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        std::task::Poll::Ready(self.0.pop_front().map(Ok))
    }
}

/// A backend that answers each request and then closes the connection
/// without saying so (no `Connection: close`), as some servers and
/// middleboxes do: a proxy that pools the connection meets a closed socket.
pub struct ClosingBackend {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicU64>,
    cancel: CancellationToken,
}

impl Drop for ClosingBackend {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl ClosingBackend {
    pub async fn start(name: &'static str) -> ClosingBackend {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend = ClosingBackend {
            addr: listener.local_addr().unwrap(),
            hits: Arc::default(),
            cancel: CancellationToken::new(),
        };
        let (hits, cancel) = (backend.hits.clone(), backend.cancel.clone());
        tokio::spawn(async move {
            loop {
                let mut stream = tokio::select! {
                    _ = cancel.cancelled() => return,
                    accepted = listener.accept() => accepted.unwrap().0,
                };
                let hits = hits.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    hits.fetch_add(1, Ordering::Relaxed);
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-backend: {name}\r\n\r\n{name}",
                        name.len()
                    );
                    let _ = stream.write_all(answer.as_bytes()).await;
                    // Closed on drop, with no word of it in the response.
                });
            }
        });
        backend
    }
}

/// A backend in a process of its own (this test binary, re-run as
/// `support::backend_process`), so a test can SIGKILL it like a crashed
/// server. Killed on drop.
pub struct ProcessBackend {
    pub addr: SocketAddr,
    child: std::process::Child,
}

impl ProcessBackend {
    pub fn start(name: &str) -> ProcessBackend {
        use std::io::BufRead;
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "support::backend_process",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("VEER_TEST_BACKEND_NAME", name)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("the test binary can start itself");
        let stdout = child.stdout.take().unwrap();
        let mut lines = std::io::BufReader::new(stdout).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("the backend process prints its address")
                .unwrap();
            // The harness may print its own words before ours on the line.
            if let Some((_, addr)) = line.split_once("VEER_TEST_BACKEND_ADDR=") {
                break addr.trim().parse().unwrap();
            }
        };
        ProcessBackend { addr, child }
    }

    /// SIGKILL: the process dies at once, its sockets closed by the kernel.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ProcessBackend {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The body of a [`ProcessBackend`]: runs only when started as one.
#[test]
#[ignore = "a helper process started by ProcessBackend, not a test"]
fn backend_process() {
    let Ok(name) = std::env::var("VEER_TEST_BACKEND_NAME") else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let backend = Backend::start(&name).await;
        println!("VEER_TEST_BACKEND_ADDR={}", backend.addr);
        // Bounded: a backend whose parent forgot it exits by itself.
        tokio::time::sleep(Duration::from_secs(120)).await;
    });
}

/// A proxy with one pool, `web`, over `backends`: `workers` workers, extra
/// `[server]` settings and extra pool settings.
pub async fn web_pool(
    workers: usize,
    server_extra: &str,
    backends: &[&Backend],
    pool_extra: &str,
) -> Proxy {
    Proxy::start(&format!(
        "{}[pools.web]\nbackends = [{}]\n{pool_extra}\n",
        server(workers, server_extra),
        addresses(backends)
    ))
    .await
}

/// `[server]` for tests with `workers` workers and extra settings.
pub fn server(workers: usize, extra: &str) -> String {
    format!("[server]\nlisten = \"127.0.0.1:0\"\nworkers = {workers}\n{extra}\n")
}

/// Reads from a raw socket until the peer closes it or `limit` passes;
/// returns what was read and whether it closed.
pub async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (String, bool) {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return (String::from_utf8_lossy(&got).into_owned(), false),
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&got).into_owned(), true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Sends raw bytes on a fresh connection and returns the status code of the
/// answer (0 if the connection closed without one) and its text. Reads until
/// the response is complete (by `content-length`) or the connection closes.
pub async fn raw_status(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse::<usize>().ok());
            if length.is_some_and(|n| got.len() >= end + 4 + n) {
                break;
            }
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) | Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| text.strip_prefix("HTTP/1.0 "))
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// Runs the real `veer` binary on `toml`, written to `dir/veer.toml` with
/// `{listen}` filled in (a free loopback port) and the admin listener off,
/// its log going to `dir/stderr`; once it accepts connections, `requests`
/// are sent, then it is stopped with SIGTERM and must exit cleanly.
pub async fn run_binary(
    dir: &TempDir,
    toml: &str,
    requests: impl AsyncFnOnce(std::net::SocketAddr),
) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let config = dir.join("veer.toml");
    let toml = toml.replace("{listen}", &addr.to_string());
    std::fs::write(&config, format!("{toml}\n[admin]\nlisten = \"\"\n")).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_veer"))
        .args(["run", "--config"])
        .arg(&config)
        .stderr(std::fs::File::create(dir.join("stderr")).unwrap())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while TcpStream::connect(addr).await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "veer did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    requests(addr).await;
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let exited = tokio::task::spawn_blocking(move || child.wait()).await;
    assert!(exited.unwrap().unwrap().success());
}

/// The bytes of test plugin `name`.
pub fn plugin_bytes(name: &str) -> Vec<u8> {
    std::fs::read(test_plugin(name)).unwrap()
}

/// Puts `bytes` in place as `target`: written aside under a hidden name,
/// then renamed over it (as deploy tools do).
pub fn install_by_rename(target: &std::path::Path, bytes: &[u8]) {
    let aside = target.with_file_name(".incoming.tmp");
    std::fs::write(&aside, bytes).unwrap();
    std::fs::rename(&aside, target).unwrap();
}

/// Polls `done` every 5 ms; fails the test if it is not true within `limit`.
pub async fn wait_for(limit: Duration, mut done: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "timed out after {limit:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Resident and peak memory of process `pid`, KiB (`VmRSS`, `VmHWM`);
/// `None` once it is gone.
pub fn memory_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status.lines().find_map(|l| {
            l.strip_prefix(name)?
                .trim()
                .strip_suffix(" kB")?
                .trim()
                .parse()
                .ok()
        })
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Runs the real `veer` binary with `args`: (success, stdout, stderr).
pub fn veer(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_veer"))
        .args(args)
        .output()
        .expect("veer runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
