//! HTTP/2 to backends: pools with `protocol = "h2c"` (clear text, prior
//! knowledge) and `"h2"` (TLS, ALPN), in front of in-process HTTP/2-only
//! backends that count the streams they see on each connection, driven by a
//! real load generator (`h2load`, package nghttp2-client) and hyper clients.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::pki::Pki;
use crate::support::*;

/// What an [`H2Backend`] answers to every request.
#[derive(Clone, Copy)]
enum Reply {
    /// `ok`, after this long (so that streams overlap).
    OkAfter(Duration),
    /// `VERSION host=AUTHORITY`: the request's version and `:authority` (or
    /// `Host`) as this backend saw them.
    VersionAndHost,
    /// A body, then trailers `grpc-status: 0` and `grpc-message: fine`.
    BodyAndTrailers,
}

/// How an [`H2Backend`] is spoken to.
enum Speaks {
    /// HTTP/2 only, clear text (prior knowledge).
    H2c,
    /// As `H2c`, but each connection waits this long before its handshake.
    H2cAfter(Duration),
    /// HTTP/2 only, over TLS.
    H2OverTls(TlsAcceptor),
    /// HTTP/1.1 only, over TLS (a server that does not do HTTP/2).
    H1OverTls(TlsAcceptor),
}

/// What a backend has seen.
#[derive(Default)]
struct Seen {
    /// Connections accepted (TCP, whether or not TLS then succeeded).
    connections: AtomicU64,
    /// Requests (streams) received.
    requests: AtomicU64,
    /// The most streams in progress at once on any one connection.
    max_streams_on_one_connection: AtomicU64,
}

/// Takes one stream's place on its connection's gauge; gives it back on drop
/// (also if hyper drops the handler because the stream was reset).
struct InProgress(Arc<AtomicU64>);

impl InProgress {
    fn start(on_connection: &Arc<AtomicU64>, seen: &Seen) -> InProgress {
        let now = on_connection.fetch_add(1, Ordering::SeqCst) + 1;
        seen.max_streams_on_one_connection
            .fetch_max(now, Ordering::SeqCst);
        InProgress(on_connection.clone())
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// An in-process backend on 127.0.0.1:0; stops accepting on drop.
struct H2Backend {
    addr: SocketAddr,
    seen: Arc<Seen>,
    accepting: tokio::task::JoinHandle<()>,
}

impl Drop for H2Backend {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl H2Backend {
    async fn start(speaks: Speaks, reply: Reply) -> H2Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Seen::default());
        let speaks = Arc::new(speaks);
        let accepting = tokio::spawn({
            let seen = seen.clone();
            async move {
                while let Ok((tcp, _)) = listener.accept().await {
                    seen.connections.fetch_add(1, Ordering::SeqCst);
                    let (seen, speaks) = (seen.clone(), speaks.clone());
                    tokio::spawn(async move {
                        match &*speaks {
                            Speaks::H2c => serve(tcp, true, reply, seen).await,
                            Speaks::H2cAfter(delay) => {
                                tokio::time::sleep(*delay).await;
                                serve(tcp, true, reply, seen).await
                            }
                            Speaks::H2OverTls(acceptor) | Speaks::H1OverTls(acceptor) => {
                                let h2 = matches!(&*speaks, Speaks::H2OverTls(_));
                                if let Ok(tls) = acceptor.accept(tcp).await {
                                    serve(tls, h2, reply, seen).await;
                                }
                            }
                        }
                    });
                }
            }
        });
        H2Backend {
            addr,
            seen,
            accepting,
        }
    }
}

/// Serves one connection, HTTP/2 only (`h2`) or HTTP/1.1 only, counting its
/// streams in progress.
async fn serve<I>(io: I, h2: bool, reply: Reply, seen: Arc<Seen>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let on_connection = Arc::new(AtomicU64::new(0));
    let service = service_fn(move |req: Request<Incoming>| {
        let (on_connection, seen) = (on_connection.clone(), seen.clone());
        async move {
            seen.requests.fetch_add(1, Ordering::SeqCst);
            let _in_progress = InProgress::start(&on_connection, &seen);
            Ok::<_, Infallible>(answer(reply, req).await)
        }
    });
    let io = TokioIo::new(io);
    if h2 {
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            // High, so that the cap that shows is Veer's, not ours.
            .max_concurrent_streams(1000)
            .serve_connection(io, service)
            .await;
    } else {
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(io, service)
            .await;
    }
}

async fn answer(reply: Reply, req: Request<Incoming>) -> Response<TestBody> {
    match reply {
        Reply::OkAfter(delay) => {
            tokio::time::sleep(delay).await;
            Response::new(full("ok"))
        }
        Reply::VersionAndHost => {
            let host = req
                .uri()
                .authority()
                .map(|a| a.to_string())
                .or_else(|| {
                    req.headers()
                        .get("host")
                        .map(|h| h.to_str().unwrap_or("?").to_string())
                })
                .unwrap_or_else(|| "-".to_string());
            Response::new(full(format!("{:?} host={host}", req.version())))
        }
        Reply::BodyAndTrailers => {
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", "0".parse().unwrap());
            trailers.insert("grpc-message", "fine".parse().unwrap());
            let frames = vec![
                Frame::data(Bytes::from_static(b"payload")),
                Frame::trailers(trailers),
            ];
            Response::builder()
                .header("content-type", "application/grpc")
                .header("trailer", "grpc-status, grpc-message")
                .header("x-backend-saw", format!("{:?}", req.version()))
                .body(FramesBody(frames.into()).boxed())
                .unwrap()
        }
    }
}

/// A TLS acceptor presenting `cert` (chain and key files) and offering
/// `alpn` (nothing: the server does not take part in ALPN).
fn tls_acceptor(cert: &(PathBuf, PathBuf), alpn: &[&[u8]]) -> TlsAcceptor {
    let mut config = crate::pki::server_config(cert);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsAcceptor::from(Arc::new(config))
}

/// `future`, which must end within 5 s.
async fn within_5s<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), future)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within 5 s"))
}

/// A proxy with one pool, `web`, over `backend`, with extra pool settings
/// (`pool_extra`) and then any tables (`tables`, e.g. `[pools.web.tls]`).
async fn proxy_to(workers: usize, backend: SocketAddr, pool_extra: &str, tables: &str) -> Proxy {
    Proxy::start(&format!(
        "{}[pools.web]\nbackends = [\"{backend}\"]\n{pool_extra}\n{tables}\n",
        server(workers, "")
    ))
    .await
}

/// The `[pools.web.tls]` table trusting `pki`'s CA, verifying `name`.
fn upstream_tls(pki: &Pki, name: &str) -> String {
    format!(
        "[pools.web.tls]\nserver_name = \"{name}\"\nca = \"{}\"\n",
        pki.ca_pem.display()
    )
}

/// Runs `h2load ARGS` off the event loop (so in-process backends keep
/// serving), killed past `limit`; returns its stdout. Fails the test, with
/// what to install, when h2load is missing.
async fn h2load(args: Vec<String>, limit: Duration) -> String {
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        use std::process::{Command, Stdio};
        let mut child = Command::new("h2load")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "h2load could not run ({e}): it is needed for this test; \
                     install it with `apt-get install nghttp2-client`"
                )
            });
        let readers = [
            child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
            child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
        ]
        .map(|pipe| {
            std::thread::spawn(move || {
                let mut text = String::new();
                if let Some(mut pipe) = pipe {
                    let _ = pipe.read_to_string(&mut text);
                }
                text
            })
        });
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if started.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let [stdout, stderr] = readers.map(|r| r.join().unwrap());
        match status {
            Some(s) if s.success() => stdout,
            Some(s) => panic!("h2load {args:?} ended with {s}\nstdout:\n{stdout}\nstderr:\n{stderr}"),
            None => panic!(
                "h2load {args:?} still ran after {limit:?}; killed\nstdout:\n{stdout}\nstderr:\n{stderr}"
            ),
        }
    })
    .await
    .unwrap()
}

/// The counts of an h2load summary line such as `requests: 10 total, 10
/// started, 10 done, 10 succeeded, 0 failed, 0 errored, 0 timeout`, by word
/// (`total`, `succeeded`, ..., or `2xx` for the `status codes:` line).
fn h2load_counts(output: &str, line: &str) -> std::collections::BTreeMap<String, u64> {
    let rest = output
        .lines()
        .find_map(|l| l.trim().strip_prefix(line))
        .unwrap_or_else(|| panic!("no `{line}` line in h2load's output:\n{output}"));
    rest.split(',')
        .filter_map(|part| {
            let (n, word) = part.trim().split_once(' ')?;
            Some((word.trim().to_string(), n.parse().ok()?))
        })
        .collect()
}

#[tokio::test]
async fn h2load_through_an_h2c_pool_has_no_errors_and_never_exceeds_the_stream_cap() {
    let backend = H2Backend::start(Speaks::H2c, Reply::OkAfter(Duration::from_millis(3))).await;
    let proxy = proxy_to(
        2,
        backend.addr,
        "protocol = \"h2c\"\nmax_streams_per_connection = 4",
        "",
    )
    .await;
    const REQUESTS: u64 = 2000;
    // h2c with prior knowledge is h2load's way with http:// URIs: 4 client
    // connections, up to 16 streams each, 64 in flight against a cap of 4
    // per backend connection.
    let output = h2load(
        [
            "-n",
            &REQUESTS.to_string(),
            "-c",
            "4",
            "-m",
            "16",
            &format!("http://127.0.0.1:{}/", proxy.addr.port()),
        ]
        .map(String::from)
        .to_vec(),
        Duration::from_secs(20),
    )
    .await;
    let requests = h2load_counts(&output, "requests:");
    let statuses = h2load_counts(&output, "status codes:");
    let seen = &backend.seen;
    let (connections, max_streams, served) = (
        seen.connections.load(Ordering::SeqCst),
        seen.max_streams_on_one_connection.load(Ordering::SeqCst),
        seen.requests.load(Ordering::SeqCst),
    );
    eprintln!(
        "h2load: {requests:?} {statuses:?}; backend: {served} requests on {connections} connections, at most {max_streams} streams on one"
    );
    for word in ["failed", "errored", "timeout"] {
        assert_eq!(requests.get(word), Some(&0), "{word}: {output}");
    }
    assert_eq!(requests.get("succeeded"), Some(&REQUESTS), "{output}");
    assert_eq!(statuses.get("2xx"), Some(&REQUESTS), "{output}");
    assert_eq!(served, REQUESTS);
    assert!(
        max_streams <= 4,
        "{max_streams} streams at once on one backend connection; the cap is 4"
    );
    assert!(
        max_streams >= 2,
        "streams never overlapped ({max_streams}): the test did not load the pool"
    );
    assert!(
        connections > 1,
        "one backend connection carried everything: the cap did not open more"
    );
}

#[tokio::test]
async fn an_h2_pool_speaks_http2_over_tls_to_its_backend() {
    let pki = Pki::new("h2-upstream");
    let cert = pki.server("backend", &["backend.test"]);
    let backend = H2Backend::start(
        Speaks::H2OverTls(tls_acceptor(&cert, &[b"h2"])),
        Reply::VersionAndHost,
    )
    .await;
    let proxy = proxy_to(
        1,
        backend.addr,
        "protocol = \"h2\"",
        &upstream_tls(&pki, "backend.test"),
    )
    .await;
    let mut client = Client::h1(proxy.addr).await;
    for _ in 0..3 {
        let answer = within_5s("GET /", client.get("/")).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(answer.body, "HTTP/2.0 host=localhost");
    }
    assert_eq!(backend.seen.requests.load(Ordering::SeqCst), 3);
    assert_eq!(
        backend.seen.connections.load(Ordering::SeqCst),
        1,
        "one HTTP/2 connection carries the requests one after another"
    );
}

#[tokio::test]
async fn an_h2_pool_answers_502_when_its_tls_backend_does_not_agree_to_http2() {
    let pki = Pki::new("h2-upstream-refused");
    let cert = pki.server("backend", &["backend.test"]);
    // A server that takes no part in ALPN completes the handshake without
    // choosing a protocol: Veer itself sees that h2 was not agreed. A server
    // offering only http/1.1 (rustls, as RFC 7301 allows) refuses the
    // handshake with a `no_application_protocol` alert instead; either way
    // the 502 says what to change.
    let cases: [(&[&[u8]], &str, &str); 2] = [
        (
            &[],
            "no ALPN",
            "the backend did not agree to HTTP/2 (ALPN h2)",
        ),
        (
            &[b"http/1.1"],
            "ALPN http/1.1 only",
            "NoApplicationProtocol: the backend does not speak HTTP/2 (ALPN h2); set the pool's protocol to \"http1\"",
        ),
    ];
    for (alpn, label, says) in cases {
        let backend = H2Backend::start(
            Speaks::H1OverTls(tls_acceptor(&cert, alpn)),
            Reply::VersionAndHost,
        )
        .await;
        let proxy = proxy_to(
            1,
            backend.addr,
            "protocol = \"h2\"",
            &upstream_tls(&pki, "backend.test"),
        )
        .await;
        let answer = within_5s(label, async { Client::h1(proxy.addr).await.get("/").await }).await;
        eprintln!("{label}: {} {:?}", answer.status, answer.body);
        assert_eq!(answer.status, 502, "{label}: {}", answer.body);
        assert!(
            answer.body.contains(says),
            "{label}: the 502 does not say {says:?}: {}",
            answer.body
        );
        assert!(
            backend.seen.connections.load(Ordering::SeqCst) >= 1,
            "{label}: Veer never tried the backend"
        );
        assert_eq!(
            backend.seen.requests.load(Ordering::SeqCst),
            0,
            "{label}: a request went to a backend that did not agree to HTTP/2"
        );
    }
}

#[tokio::test]
async fn a_client_request_over_http1_reaches_an_h2c_backend_with_trailers_intact() {
    let backend = H2Backend::start(Speaks::H2c, Reply::BodyAndTrailers).await;
    let proxy = proxy_to(1, backend.addr, "protocol = \"h2c\"", "").await;
    let check = |label: &str, response: Response<Incoming>| {
        let label = label.to_string();
        async move {
            assert_eq!(response.status(), 200, "{label}");
            assert_eq!(
                response
                    .headers()
                    .get("x-backend-saw")
                    .map(|v| v.as_bytes()),
                Some(&b"HTTP/2.0"[..]),
                "{label}: the backend was not spoken to in HTTP/2"
            );
            let collected = within_5s(&label, response.into_body().collect())
                .await
                .unwrap();
            let trailers = collected.trailers().cloned();
            assert_eq!(&collected.to_bytes()[..], b"payload", "{label}");
            let trailers =
                trailers.unwrap_or_else(|| panic!("{label}: the response came without trailers"));
            assert_eq!(trailers.get("grpc-status").unwrap(), "0", "{label}");
            assert_eq!(trailers.get("grpc-message").unwrap(), "fine", "{label}");
        }
    };
    // HTTP/1.1 carries trailers in a chunked body, to a client that said it
    // takes them.
    let mut h1 = Client::h1(proxy.addr).await;
    let request = Request::get("/")
        .header("host", "localhost")
        .header("te", "trailers")
        .body(empty())
        .unwrap();
    check(
        "HTTP/1.1 client",
        within_5s("HTTP/1.1 client", h1.send(request)).await,
    )
    .await;
    // HTTP/2 carries them in a HEADERS frame after the data.
    let mut h2 = Client::h2(proxy.addr).await;
    let request = Request::get("http://localhost/").body(empty()).unwrap();
    check(
        "HTTP/2 client",
        within_5s("HTTP/2 client", h2.send(request)).await,
    )
    .await;
    assert_eq!(backend.seen.requests.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_burst_of_requests_shares_the_connections_being_opened_instead_of_opening_one_each() {
    let backend = H2Backend::start(Speaks::H2c, Reply::OkAfter(Duration::from_millis(50))).await;
    let proxy = proxy_to(
        1,
        backend.addr,
        "protocol = \"h2c\"\nmax_streams_per_connection = 16",
        "",
    )
    .await;
    // 64 requests at once on one client connection: they arrive while the
    // first backend connection is still being opened.
    let client = Client::h2(proxy.addr).await;
    let Client::H2(sender) = client else {
        unreachable!()
    };
    let requests: Vec<_> = (0..64)
        .map(|_| {
            let mut sender = sender.clone();
            tokio::spawn(async move {
                let request = Request::get("/")
                    .header("host", "localhost")
                    .body(empty())
                    .unwrap();
                sender.send_request(request).await.unwrap().status()
            })
        })
        .collect();
    let statuses = within_5s("64 requests", async {
        let mut statuses = Vec::new();
        for request in requests {
            statuses.push(request.await.unwrap());
        }
        statuses
    })
    .await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let connections = backend.seen.connections.load(Ordering::SeqCst);
    assert!(
        connections <= 4,
        "64 streams at 16 per connection need 4 backend connections, not {connections}"
    );
}

#[tokio::test]
async fn a_request_that_gives_up_while_a_connection_opens_does_not_fail_the_ones_waiting_for_it() {
    use tokio::io::AsyncWriteExt;
    let backend = H2Backend::start(
        Speaks::H2cAfter(Duration::from_millis(300)),
        Reply::OkAfter(Duration::ZERO),
    )
    .await;
    let proxy = proxy_to(1, backend.addr, "protocol = \"h2c\"", "").await;
    // The first request opens the backend connection...
    let mut first = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    first
        .write_all(b"GET / HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // ...a second one waits for it, and the first client goes away.
    let addr = proxy.addr;
    let second = tokio::spawn(async move { Client::h1(addr).await.get("/").await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(first);
    let answer = within_5s("the second request", second).await.unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(backend.seen.connections.load(Ordering::SeqCst), 1);
    assert_eq!(proxy.metrics.snapshot().ejections, 0);
}
