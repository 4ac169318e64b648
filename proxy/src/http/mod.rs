//! The HTTP path of one request: check it, find its one authority and its
//! route, ask the pool's strategy for candidates, rewrite it for the backend,
//! and hand it to the attempt loop.
//!
//! Files: `authority` (the one host a request is for), `path` (normalised
//! paths and segment-boundary prefixes), `rewrite` (hop-by-hop headers,
//! cookies, `X-Forwarded-*`), `attempt` (candidates, retries, timeouts),
//! `body` (bodies both ways), `policy` (slow start, retry budget), `tunnel`
//! (upgraded connections).

mod attempt;
mod authority;
pub mod body;
pub mod observe;
mod path;
mod policy;
pub mod rewrite;
pub(crate) mod spare;
mod tunnel;

use std::net::SocketAddr;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use tokio_util::task::TaskTracker;

use crate::config::ForwardPath;
pub use crate::listen::tls::TlsInfo;
use crate::metrics::Metrics;
use crate::plugin::RequestScope;
use crate::state::{Shared, State};
use body::{ProxyBody, RequestBody, message};
pub use path::under as path_under;
pub use policy::RetryBudget;

/// What a request knows of the connection it came on.
#[derive(Debug)]
pub struct ConnInfo {
    /// The TCP peer.
    pub peer: SocketAddr,
    /// The TLS session, on the HTTPS listener.
    pub tls: Option<TlsInfo>,
    /// The connection's place under `max_connections`, released when the
    /// connection ends, or taken over by an upgrade tunnel that outlives
    /// the HTTP connection.
    pub slot: std::sync::Mutex<Option<ConnSlot>>,
    /// `peer` as text, made once (for the access log).
    pub peer_text: std::sync::OnceLock<std::sync::Arc<str>>,
    /// `peer`'s address as a header value (`X-Forwarded-For`), made once:
    /// its clones share the bytes, so a request's costs no allocation.
    pub peer_ip_value: std::sync::OnceLock<HeaderValue>,
}

impl ConnInfo {
    /// The TCP peer as text, formatted once per connection.
    pub fn peer_text(&self) -> std::sync::Arc<str> {
        self.peer_text
            .get_or_init(|| self.peer.to_string().into())
            .clone()
    }

    /// The TCP peer's address as a header value, made once per connection.
    pub fn peer_ip_value(&self) -> &HeaderValue {
        self.peer_ip_value.get_or_init(|| {
            let text = bytes::Bytes::from(self.peer.ip().to_string());
            HeaderValue::from_maybe_shared(text).expect("an IP address is a valid header value")
        })
    }
}

/// One client connection counted open (gauge and cap) until dropped.
#[derive(Debug)]
pub struct ConnSlot {
    /// The cap's permit (released on drop).
    pub _permit: tokio::sync::OwnedSemaphorePermit,
    /// Where the open-connections gauge is.
    pub metrics: std::sync::Arc<Metrics>,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.metrics.connection_closed();
    }
}

/// Request headers that carry a verified client certificate's identity to
/// plugins and backends; whatever a client sends under these names is
/// dropped.
static CLIENT_SUBJECT: header::HeaderName =
    header::HeaderName::from_static("x-client-cert-subject");
static CLIENT_SAN: header::HeaderName = header::HeaderName::from_static("x-client-cert-san");

/// Handles one downstream request; never fails (errors become 4xx/5xx).
/// Counts it by route and status class, with its time to the response head,
/// and writes its access log line (when on and sampled) once its response
/// body has ended.
pub async fn handle(
    ctx: &Shared,
    tracker: &TaskTracker,
    request: Request<Incoming>,
    conn: &ConnInfo,
) -> Response<ProxyBody> {
    let started = std::time::Instant::now();
    let state = ctx.state.load_full();
    let logged = state
        .access_log
        .as_ref()
        .filter(|log| observe::sampled(log));
    let head = logged.map(|_| {
        (
            request.method().clone(),
            request.uri().path_and_query().cloned(),
            request.version(),
            observe::Host::of(&request),
        )
    });
    let mut seen = observe::Seen::default();
    let response = handle_in(ctx, &state, tracker, request, conn, &mut seen).await;
    let status = response.status().as_u16();
    state
        .traffic
        .answered(seen.route, status, started.elapsed());
    let (Some(log), Some((method, path, version, host))) = (logged, head) else {
        return response;
    };
    let record = observe::AccessRecord {
        format: log.format,
        started,
        client: conn.peer_text(),
        method,
        path,
        host,
        version,
        status,
        progress: seen.progress,
        pool: seen.pool,
        outcome: seen.outcome,
    };
    response.map(|body| ProxyBody::Logged(Box::new(observe::Logged::new(body, record))))
}

async fn handle_in(
    ctx: &Shared,
    state: &State,
    tracker: &TaskTracker,
    request: Request<Incoming>,
    conn: &ConnInfo,
    seen: &mut observe::Seen,
) -> Response<ProxyBody> {
    let client = conn.peer;
    let tls = conn.tls.is_some();
    Metrics::inc(&ctx.metrics.requests);
    let (mut parts, body) = request.into_parts();
    let refuse = |status: StatusCode, reason: &str| {
        Metrics::inc(&ctx.metrics.bad_requests);
        message(status, format!("veer: {reason}\n"))
    };
    if parts.method == Method::CONNECT {
        let mut response = refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            "CONNECT is not supported: Veer is a reverse proxy, not a tunnel",
        );
        response.headers_mut().insert(
            header::ALLOW,
            HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH, TRACE"),
        );
        return response;
    }

    let server = &state.server;
    // HTTP/1.1 heads over the limits are refused by hyper already; this also
    // covers HTTP/2, whose header block hyper only bounds in bytes.
    if parts.headers.len() > server.max_headers {
        return refuse(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "too many header fields",
        );
    }
    if head_bytes(&parts) > server.max_header_bytes {
        return refuse(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "the request head is too large",
        );
    }
    let authority = match authority::of_request(&parts.uri, &parts.headers, parts.version) {
        Ok(authority) => authority,
        Err(bad) => return refuse(StatusCode::BAD_REQUEST, bad.0),
    };
    let normalized = match path::normalize(parts.uri.path()) {
        Ok(path) => path,
        Err(bad) => return refuse(StatusCode::BAD_REQUEST, bad.0),
    };
    let host = authority.as_ref().map_or("", |a| a.host());
    // ACME HTTP-01: answered before routes and redirects (RFC 8555 §8.3).
    if let Some(challenges) = &ctx.acme
        && let Some(token) = parts
            .uri
            .path()
            .strip_prefix("/.well-known/acme-challenge/")
        && let Some(answer) = challenges.http_answer(token)
    {
        Metrics::inc(&ctx.metrics.acme_challenge_answers);
        return message(StatusCode::OK, answer);
    }
    if let (Some(code), false, Some(port)) = (server.redirect_to_https, tls, ctx.https_port) {
        return redirect_to_https(code, host, port, &parts.uri);
    }
    if let Some(info) = &conn.tls
        && let Some(sni) = &info.sni
        && !host.is_empty()
        && !info.certs.same_certificate(sni, host)
    {
        Metrics::inc(&ctx.metrics.bad_requests);
        return message(
            StatusCode::MISDIRECTED_REQUEST,
            format!(
                "veer: this connection was made for {sni:?}, whose certificate does not cover {host:?}; connect again for that name\n"
            ),
        );
    }
    let Some((index, pool)) = state.route(host, &normalized) else {
        return message(
            StatusCode::NOT_FOUND,
            format!("veer: no route for host {host:?} and path {normalized:?}\n"),
        );
    };
    seen.route = Some(index);
    let pool = pool.clone();
    // A decision trace: for every request of a traced route, or on request
    // (the trace header) from a peer allowed to ask.
    let traced = state.routes[index].trace
        || (parts.headers.contains_key(&state.trace.header)
            && state
                .trace
                .from
                .iter()
                .any(|net| net.contains(&client.ip())));
    if let Some(limit) = server.max_body_bytes
        && content_length(&parts.headers).is_some_and(|length| length > limit)
    {
        return refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "the request body is larger than this server accepts",
        );
    }
    let trusted = server
        .trusted_proxies
        .iter()
        .any(|net| net.contains(&client.ip()));
    let (client_body_timeout, max_body_bytes, forward_path) = (
        server.client_body_timeout,
        server.max_body_bytes,
        server.forward_path,
    );

    // A client certificate's identity, verified in the handshake, for the
    // plugin and the backend; never what the client wrote itself.
    parts.headers.remove(&CLIENT_SUBJECT);
    parts.headers.remove(&CLIENT_SAN);
    if let Some(identity) = conn.tls.as_ref().and_then(|t| t.client.as_ref()) {
        if let Ok(value) = HeaderValue::from_str(&identity.subject) {
            parts.headers.insert(CLIENT_SUBJECT.clone(), value);
        }
        for san in &identity.sans {
            if let Ok(value) = HeaderValue::from_str(san) {
                parts.headers.append(CLIENT_SAN.clone(), value);
            }
        }
    }

    // Lend the headers and URI to the plugin for the call (no copy). The
    // plugin sees the normalised path, as routes do.
    let mut scope = RequestScope {
        headers: std::mem::take(&mut parts.headers),
        uri: parts.uri.clone(),
        response_headers: Vec::new(),
        fell_back: false,
        rejected: false,
        refused: None,
        answered_by: None,
    };
    let call = crate::plugin::Call {
        method: &parts.method,
        host,
        path: &normalized,
        client: client.ip(),
        tls: conn.tls.as_ref().map(|info| crate::plugin::TlsSeen {
            server_name: info.sni.as_deref(),
            alpn: Some(if parts.version == Version::HTTP_2 {
                "h2"
            } else {
                "http/1.1"
            }),
            client_subject: info.client.as_ref().map(|c| c.subject.as_str()),
        }),
    };
    let candidates = pool.balancer.select(&call, &mut scope);
    if let Some(reason) = scope.refused {
        return attempt::unavailable(
            ctx,
            format!(
                "veer: no backend of pool {} may serve this request: {reason}\n",
                pool.config.name
            ),
        );
    }
    if scope.rejected {
        return attempt::unavailable(
            ctx,
            format!(
                "veer: the strategy plugin of pool {} failed, and the pool has on_plugin_failure = \"reject\"\n",
                pool.config.name
            ),
        );
    }
    parts.headers = scope.headers;
    let plugin_headers = scope.response_headers;
    let fell_back = scope.fell_back;
    let answered_by = scope.answered_by;
    if traced {
        seen.outcome.steps = Some(Vec::new());
    }

    // Rewrite for the backend: HTTP/1.1, origin-form URI, `Host` = the one
    // authority.
    let accepts_trailers = rewrite::accepts_trailers(&parts.headers);
    let upgrade = (parts.version == Version::HTTP_11)
        .then(|| rewrite::upgrade_protocol(&parts.headers))
        .flatten();
    let client_upgrade = upgrade
        .as_ref()
        .and_then(|_| parts.extensions.remove::<hyper::upgrade::OnUpgrade>());
    rewrite::strip_hop_by_hop(&mut parts.headers);
    if let (Some(protocol), Some(_)) = (&upgrade, &client_upgrade) {
        rewrite::set_upgrade(&mut parts.headers, protocol.clone());
    }
    if accepts_trailers {
        // `TE` is hop-by-hop, but "I take trailers" holds for the client
        // behind this hop too: without it a backend may drop its trailers.
        parts
            .headers
            .insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if parts.version == Version::HTTP_2 {
        rewrite::join_cookies(&mut parts.headers);
    }
    let authority = authority.map(|a| a.value);
    let peer = rewrite::Peer {
        ip: client.ip(),
        ip_value: conn.peer_ip_value(),
        trusted,
        tls,
    };
    rewrite::set_forwarded(&mut parts.headers, &peer, authority.as_ref());
    match authority {
        Some(authority) => {
            parts.headers.insert(header::HOST, authority);
        }
        // HTTP/1.0 without a host goes upstream as HTTP/1.1, which needs
        // one: the pool's name, as NGINX sends its upstream's name.
        None => {
            if let Ok(name) = HeaderValue::from_str(&pool.config.name) {
                parts.headers.insert(header::HOST, name);
            }
        }
    }
    let rewritten = match forward_path {
        ForwardPath::Normalized if normalized.as_ref() != parts.uri.path() => {
            Some(match parts.uri.query() {
                Some(query) => format!("{normalized}?{query}"),
                None => normalized.clone().into_owned(),
            })
        }
        _ => None,
    };
    drop(normalized);
    if let Some(path_and_query) = rewritten {
        parts.uri = Uri::try_from(path_and_query).unwrap_or_else(|_| Uri::from_static("/"));
    } else if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        parts.uri = origin_form(&parts.uri);
    }
    parts.version = Version::HTTP_11;
    // A request the retry policy may send again keeps its body (up to a
    // size) while it streams.
    let retry = &pool.config.retry;
    let keep = if attempt::is_idempotent(&parts.method) || retry.non_idempotent {
        retry.replay_body_bytes
    } else {
        0
    };
    let (body, progress) = RequestBody::new(body, client_body_timeout, max_body_bytes, keep);
    seen.progress = progress.clone();

    let mut response = attempt::forward(
        ctx,
        tracker,
        &pool,
        &candidates,
        attempt::Outgoing {
            parts,
            body,
            progress,
            client_upgrade: client_upgrade.map(|upgrade| (upgrade, &conn.slot)),
        },
        answered_by,
        &mut seen.outcome,
    )
    .await;
    for (name, value) in plugin_headers {
        response.headers_mut().append(name, value);
    }
    if let Some(steps) = &seen.outcome.steps {
        let plugin = pool.balancer.plugin();
        let order: Vec<String> = candidates
            .iter()
            .map(|&id| pool.config.backends[id as usize].address.clone())
            .collect();
        let decision = observe::decision(
            &format!("{}@{}", plugin.name(), plugin.version()),
            fell_back,
            &order,
            steps,
        );
        tracing::info!(target: "veer::decision", pool = %pool.config.name, status = response.status().as_u16(), "{decision}");
        if let Ok(value) = HeaderValue::from_str(&decision) {
            response.headers_mut().insert(DECISION.clone(), value);
        }
    }
    seen.pool = Some(pool);
    response
}

/// The response header that carries a decision trace.
static DECISION: header::HeaderName = header::HeaderName::from_static("x-veer-decision");

/// The answer of a plain listener with `redirect_to_https`: same host and
/// path, the HTTPS listener's port.
fn redirect_to_https(code: StatusCode, host: &str, port: u16, uri: &Uri) -> Response<ProxyBody> {
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    let port = if port == 443 {
        String::new()
    } else {
        format!(":{port}")
    };
    let path = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let location = format!("https://{host}{port}{path}");
    let mut response = message(code, format!("veer: moved to {location}\n"));
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

/// The origin form of an absolute-form URI: its path (`/` when empty, as in
/// `http://a?x=1`) and query.
fn origin_form(uri: &Uri) -> Uri {
    let path = match uri.path() {
        "" => "/",
        path => path,
    };
    let origin_form = match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_string(),
    };
    Uri::try_from(origin_form).unwrap_or_else(|_| Uri::from_static("/"))
}

/// The size of a request head as it would be written in HTTP/1.1.
fn head_bytes(parts: &http::request::Parts) -> usize {
    let line = parts.method.as_str().len()
        + parts.uri.path_and_query().map_or(1, |pq| pq.as_str().len())
        + 12;
    parts.headers.iter().fold(line, |n, (name, value)| {
        n + name.as_str().len() + value.len() + 4
    })
}

/// The declared body length, if any and valid.
fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_origin_form_keeps_the_query_of_an_absolute_uri_without_a_path() {
        let uri = |s: &str| s.parse::<Uri>().unwrap();
        assert_eq!(origin_form(&uri("http://a?x=1")), "/?x=1");
        assert_eq!(origin_form(&uri("http://a")), "/");
        assert_eq!(origin_form(&uri("http://a/p/q?x=1&y")), "/p/q?x=1&y");
    }
}
