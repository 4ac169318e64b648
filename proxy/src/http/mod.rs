//! The HTTP path of one request: find its route, ask the pool's strategy for
//! candidates, rewrite it for the backend, and hand it to the attempt loop.
//!
//! Files: [`rewrite`] (hop-by-hop headers, `X-Forwarded-*`), [`attempt`] (the
//! attempt loop: candidates, retries, timeouts), [`body`] (what the client
//! gets back).

mod attempt;
pub mod body;
pub mod rewrite;

use std::net::SocketAddr;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use tokio_util::task::TaskTracker;

use crate::plugin::RequestScope;
use crate::state::Shared;
use crate::stats::Metrics;
use body::{ProxyBody, message};

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
    rewrite::strip_hop_by_hop(&mut parts.headers);
    rewrite::set_forwarded(&mut parts.headers, client.ip(), tls, host_header.as_ref());
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

    let mut response = attempt::forward(ctx, tracker, &pool, &candidates, request).await;
    for (name, value) in plugin_headers {
        response.headers_mut().append(name, value);
    }
    response
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
