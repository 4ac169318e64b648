//! The request path: route, ask the pool's strategy for candidates, forward to
//! the first that can be reached, stream the response back.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio_util::task::TaskTracker;

use crate::balancer::Balancer;
use crate::config::{PoolConfig, Route};
use crate::headers;
use crate::stats::{BackendStats, Metrics};
use crate::upstream::{self, SendError, Target, UpstreamBody};
use crate::wasm::RequestScope;

/// Routes and pools: what a configuration turns into at run time.
pub struct State {
    /// Most specific first.
    pub routes: Vec<Route>,
    /// By index, as routes refer to them.
    pub pools: Vec<Arc<Pool>>,
}

impl State {
    /// The pool for a request to `host` (lowercase or not, no port) and `path`.
    pub fn route(&self, host: &str, path: &str) -> Option<&Arc<Pool>> {
        self.routes
            .iter()
            .find(|r| {
                r.host
                    .as_deref()
                    .is_none_or(|h| h.eq_ignore_ascii_case(host))
                    && path.starts_with(r.path_prefix.as_str())
            })
            .map(|r| &self.pools[r.pool])
    }
}

/// One upstream pool at run time.
pub struct Pool {
    /// Settings from the configuration.
    pub config: PoolConfig,
    /// Live stats, by backend id (shared with the plugin's `live-stats`).
    pub stats: Arc<[Arc<BackendStats>]>,
    /// The strategy.
    pub balancer: Balancer,
}

/// What every worker shares.
pub struct Shared {
    /// Current routes and pools.
    pub state: arc_swap::ArcSwap<State>,
    /// Counters.
    pub metrics: Arc<Metrics>,
}

/// Handles one downstream request; never fails (errors become 4xx/5xx).
pub async fn handle(
    ctx: &Shared,
    tracker: &TaskTracker,
    request: Request<Incoming>,
    client: SocketAddr,
    tls: bool,
) -> Response<ProxyBody> {
    Metrics::inc(&ctx.metrics.requests);
    let (mut parts, body) = request.into_parts();

    // The host asked for: HTTP/2's :authority, else the Host header.
    let host_header: Option<HeaderValue> = match parts.uri.authority() {
        Some(authority) => HeaderValue::from_str(authority.as_str()).ok(),
        None => parts.headers.get(header::HOST).cloned(),
    };
    let host_port = host_header
        .as_ref()
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let host = strip_port(host_port);

    let pool = {
        let state = ctx.state.load();
        match state.route(host, parts.uri.path()) {
            Some(pool) => pool.clone(),
            None => {
                return message(
                    StatusCode::NOT_FOUND,
                    format!(
                        "veer: no route for host {host:?} and path {:?}\n",
                        parts.uri.path()
                    ),
                );
            }
        }
    };

    // Lend the headers and URI to the plugin for the call (no copy).
    let mut scope = RequestScope {
        headers: std::mem::take(&mut parts.headers),
        uri: parts.uri.clone(),
        response_headers: Vec::new(),
    };
    let candidates = pool.balancer.select(
        &parts.method,
        host,
        parts.uri.path(),
        client.ip(),
        &mut scope,
    );
    parts.headers = scope.headers;
    let plugin_headers = scope.response_headers;

    // Rewrite for the backend: HTTP/1.1, origin-form URI, Host kept.
    headers::strip_hop_by_hop(&mut parts.headers);
    headers::set_forwarded(&mut parts.headers, client.ip(), tls, host_header.as_ref());
    if let Some(h) = host_header
        .as_ref()
        .filter(|_| !parts.headers.contains_key(header::HOST))
    {
        parts.headers.insert(header::HOST, h.clone());
    }
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        let origin_form = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        parts.uri = Uri::try_from(origin_form).unwrap_or_else(|_| Uri::from_static("/"));
    }
    parts.version = Version::HTTP_11;
    let request = Request::from_parts(parts, body);

    let mut response = forward(ctx, tracker, &pool, &candidates, request).await;
    for (name, value) in plugin_headers {
        response.headers_mut().append(name, value);
    }
    response
}

/// Tries `candidates` in order (skipping backends marked down, unless all
/// are) until one can be reached; its response streams back.
async fn forward(
    ctx: &Shared,
    tracker: &TaskTracker,
    pool: &Pool,
    candidates: &[u32],
    mut request: Request<Incoming>,
) -> Response<ProxyBody> {
    let config = &pool.config;
    let all_down = candidates
        .iter()
        .all(|&id| !pool.stats[id as usize].is_up());
    let mut attempts = 0u32;
    let mut last_error = String::new();
    for &id in candidates {
        let stats = &pool.stats[id as usize];
        if attempts > config.retries {
            break;
        }
        if !all_down && !stats.is_up() {
            continue;
        }
        if attempts > 0 {
            Metrics::inc(&ctx.metrics.retries);
        }
        attempts += 1;
        let backend = &config.backends[id as usize];
        let target = Target {
            addr: backend.addr,
            connect_timeout: config.connect_timeout,
            max_idle: config.max_idle_per_backend,
            idle_timeout: config.idle_timeout,
        };
        let in_flight = stats.start_request();
        let started = Instant::now();
        match tokio::time::timeout(
            config.response_timeout,
            upstream::send(target, request, tracker, &ctx.metrics),
        )
        .await
        {
            Ok(Ok(exchange)) => {
                stats.record_latency(started.elapsed());
                if stats.record_success() {
                    tracing::info!(pool = %config.name, backend = %backend.address, "backend is up again");
                }
                let mut response = UpstreamBody::wrap(exchange, in_flight).map(ProxyBody::Upstream);
                headers::strip_hop_by_hop(response.headers_mut());
                return response;
            }
            Ok(Err(SendError::Connect {
                reason,
                request: unsent,
            })) => {
                Metrics::inc(&ctx.metrics.upstream_connect_errors);
                if stats.record_failure(config.max_fails, config.fail_timeout) {
                    tracing::warn!(pool = %config.name, backend = %backend.address, "backend marked down for {:?}: {reason}", config.fail_timeout);
                }
                last_error = reason;
                request = *unsent;
            }
            Ok(Err(SendError::Exchange(e))) => {
                Metrics::inc(&ctx.metrics.bad_gateway);
                return message(
                    StatusCode::BAD_GATEWAY,
                    format!(
                        "veer: backend {} of pool {} failed: {e}\n",
                        backend.address, config.name
                    ),
                );
            }
            Err(_) => {
                Metrics::inc(&ctx.metrics.gateway_timeout);
                return message(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!(
                        "veer: backend {} of pool {} sent no response within {:?}\n",
                        backend.address, config.name, config.response_timeout
                    ),
                );
            }
        }
    }
    Metrics::inc(&ctx.metrics.bad_gateway);
    message(
        StatusCode::BAD_GATEWAY,
        format!(
            "veer: no backend of pool {} could be reached ({attempts} tried): {last_error}\n",
            config.name
        ),
    )
}

/// `host` without `:port` (and without the brackets of an IPv6 literal).
fn strip_port(host: &str) -> &str {
    if let Some(v6) = host.strip_prefix('[') {
        return v6.split_once(']').map_or(v6, |(ip, _)| ip);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

fn message(status: StatusCode, text: String) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::Message(Some(Bytes::from(text))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// A response body: streamed from a backend, or a short message of the proxy.
pub enum ProxyBody {
    /// From a backend.
    Upstream(UpstreamBody),
    /// The proxy's own answer (404, 502, 504…).
    Message(Option<Bytes>),
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ProxyBody::Upstream(body) => Pin::new(body).poll_frame(cx),
            ProxyBody::Message(text) => Poll::Ready(text.take().map(|t| Ok(Frame::data(t)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream(body) => body.is_end_stream(),
            ProxyBody::Message(text) => text.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream(body) => body.size_hint(),
            ProxyBody::Message(text) => {
                SizeHint::with_exact(text.as_ref().map_or(0, |t| t.len() as u64))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::strip_port;

    #[test]
    fn ports_and_ipv6_brackets_are_stripped_from_the_host() {
        assert_eq!(strip_port("example.com:8080"), "example.com");
        assert_eq!(strip_port("example.com"), "example.com");
        assert_eq!(strip_port("[::1]:80"), "::1");
        assert_eq!(strip_port(""), "");
    }
}
