//! `veer demo`: three small backends in-process and the proxy in front of
//! them, from a configuration embedded in the binary. Each answer names the
//! backend that served it (body and `x-veer-backend` header).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::error::Error;

/// Prints a line to stdout; a closed stdout (`veer demo | head`) is not an
/// error worth stopping the demo for.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// The embedded demo configuration; `{listen}` and `{backends}` are filled in
/// when the demo backends are up.
pub const DEMO_CONFIG: &str = r#"# veer demo: three in-process backends behind the Wasm round robin.
[server]
listen = "{listen}"
workers = 1

[plugins]
dir = ""   # no plugin folder for the demo

[admin]    # metrics, the admin API and the dashboard
listen = "{admin}"

[tls]      # HTTPS with a self-signed certificate made at start
listen = "{tls_listen}"
certificates = [{ cert = "{cert}", key = "{key}" }]

[pools.demo]
strategy = "round-robin"
backends = [{backends}]
"#;

/// Name of the response header demo backends set.
pub const BACKEND_HEADER: &str = "x-veer-backend";

/// The demo configuration for `listen`, `tls_listen`, the certificate files
/// and `backends`, as TOML text.
pub fn demo_config(
    listen: SocketAddr,
    tls_listen: SocketAddr,
    admin: SocketAddr,
    cert: &Path,
    key: &Path,
    backends: &[SocketAddr],
) -> String {
    let list: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
    DEMO_CONFIG
        .replace("{listen}", &listen.to_string())
        .replace("{tls_listen}", &tls_listen.to_string())
        .replace("{admin}", &admin.to_string())
        .replace("{cert}", &cert.display().to_string())
        .replace("{key}", &key.display().to_string())
        .replace("{backends}", &list.join(", "))
}

/// A self-signed certificate for `localhost` and 127.0.0.1, written to a
/// fresh private folder (removed when the returned guard drops).
fn self_signed() -> Result<(TempFolder, PathBuf, PathBuf), Error> {
    let demo_error = |reason: String| Error::Demo(reason);
    let generated =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .map_err(|e| demo_error(format!("could not make a certificate: {e}")))?;
    let dir = std::env::temp_dir().join(format!("veer-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| demo_error(format!("{}: {e}", dir.display())))?;
    let folder = TempFolder(dir.clone());
    let (cert, key) = (dir.join("demo.pem"), dir.join("demo-key.pem"));
    std::fs::write(&cert, generated.cert.pem())
        .and_then(|()| std::fs::write(&key, generated.signing_key.serialize_pem()))
        .map_err(|e| demo_error(format!("{}: {e}", dir.display())))?;
    Ok((folder, cert, key))
}

/// Removes a folder when dropped.
struct TempFolder(PathBuf);

impl Drop for TempFolder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the demo until SIGTERM or SIGINT (a second one exits at once).
pub async fn serve(
    listen: SocketAddr,
    tls_listen: SocketAddr,
    admin: SocketAddr,
) -> Result<(), Error> {
    let signals = crate::listen::signal::Signals::install()?;
    let first = async move {
        let _ = signals.first.await;
    };
    crate::until_second_signal(run(listen, tls_listen, admin, first), signals.second).await
}

/// Runs the demo until `shutdown`.
pub async fn run(
    listen: SocketAddr,
    tls_listen: SocketAddr,
    admin: SocketAddr,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let mut backends = Vec::new();
    for i in 1..=3 {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|source| Error::Listen {
                addr: "127.0.0.1:0".parse().unwrap(),
                source,
            })?;
        backends.push(listener.local_addr().map_err(|source| Error::Listen {
            addr: listen,
            source,
        })?);
        tracker.spawn(serve_backend(
            listener,
            format!("backend-{i}"),
            cancel.clone(),
        ));
    }
    let (_folder, cert, key) = self_signed()?;
    let text = demo_config(listen, tls_listen, admin, &cert, &key, &backends);
    let config = Config::from_toml(&text, Path::new("."))?;
    let server = crate::Server::bind(config)?;
    let addr = server.local_addr();
    let https = server.https_addr().unwrap_or(tls_listen);
    say!(
        "veer demo: proxy on http://{addr}/ and https://{https}/ balancing over 3 backends with the Wasm plugin `round-robin`."
    );
    say!("Try:  for i in 1 2 3 4; do curl -s http://{addr}/hello; done");
    say!(
        "      curl -k https://{https}/hello          (self-signed certificate; add --http2 for h2 by ALPN)"
    );
    if let Some(admin) = server.admin_addr() {
        say!(
            "Dashboard: http://{admin}/   metrics: http://{admin}/metrics   API: http://{admin}/api/pools"
        );
    }
    say!("(configuration in use:)\n{text}");
    let result = server.run(shutdown).await;
    cancel.cancel();
    tracker.close();
    tracker.wait().await;
    result
}

/// Serves a backend that names itself in every answer, until `cancel`.
pub async fn serve_backend(listener: TcpListener, name: String, cancel: CancellationToken) {
    let tracker = TaskTracker::new();
    loop {
        let (stream, _) = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(_) => continue,
            },
        };
        let name = name.clone();
        let cancel = cancel.clone();
        tracker.spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let body = format!("{name} served {} {}\n", request.method(), request.uri());
                let response = Response::builder()
                    .header(BACKEND_HEADER, name.as_str())
                    .header("content-type", "text/plain; charset=utf-8")
                    .body(Full::new(Bytes::from(body)))
                    .expect("static parts are valid");
                async move { Ok::<_, Infallible>(response) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = connection => {}
                _ = cancel.cancelled() => {}
            }
        });
    }
    tracker.close();
    tracker.wait().await;
}
