//! The attempt loop: tries a request on the pool's candidates in order until
//! one answers, deciding after each failure whether trying again is safe.
//!
//! - Nothing reached the backend (no connection, connection closed before
//!   the request was written, backend at its connection cap): the same
//!   request, body and all, goes to the next candidate.
//! - A pooled connection closed after the request went out but before any
//!   response byte (the backend closed an idle keep-alive connection just as
//!   it was reused): a request without a body and with an idempotent method
//!   is sent once more on a fresh connection to the same backend. That does
//!   not count against `retries` or the backend's health.
//! - The request went out on a fresh connection and no response came: an
//!   idempotent request without a body goes to the next candidate; anything
//!   else gets 502.
//! - Timeouts: the response timer runs from the end of the request body
//!   (504); a backend that stops taking the body for `send_timeout_ms` gets
//!   504; a client that stops sending it gets 408 — never counted against a
//!   backend.
//!
//! After `fail_timeout`, a down backend is tried by exactly one request (an
//! atomic claim in [`crate::stats::BackendStats::admit`]); the others keep
//! skipping it until that probe succeeds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::request::Parts;
use http::{Method, Request, Response, StatusCode};
use tokio_util::task::TaskTracker;

use super::body::{ClientBodyFailure, Progress, ProxyBody, RequestBody, message};
use super::rewrite;
use crate::state::{Pool, Shared};
use crate::stats::{Metrics, now_ms};
use crate::upstream::{
    self, Connection, Exchange, RetrySafety, SendFailure, Target, UpstreamBody, UpstreamError,
};

/// Methods whose requests may be replayed (RFC 9110 §9.2.2).
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS | Method::TRACE
    )
}

/// A request rewritten for the backends, with what the attempt loop watches.
pub(super) struct Outgoing {
    /// The head, as backends get it.
    pub parts: Parts,
    /// The client's body.
    pub body: RequestBody,
    /// How the body is going, when there is one.
    pub progress: Option<Arc<Progress>>,
    /// The client's side of a protocol upgrade, when it asked for one, and
    /// its connection's slot under `max_connections` for the tunnel to keep.
    pub client_upgrade: Option<(hyper::upgrade::OnUpgrade, Option<super::ConnSlot>)>,
}

/// Tries the request on `candidates` in order (see the module docs); the
/// response of the first that answers streams back.
pub(super) async fn forward(
    ctx: &Shared,
    tracker: &TaskTracker,
    pool: &Pool,
    candidates: &[u32],
    outgoing: Outgoing,
) -> Response<ProxyBody> {
    let Outgoing {
        parts,
        body,
        progress,
        mut client_upgrade,
    } = outgoing;
    let config = &pool.config;
    // A request without a body and with an idempotent method can be sent
    // again after it went out: keep its head for that.
    let replay =
        (matches!(body, RequestBody::Empty) && is_idempotent(&parts.method)).then(|| parts.clone());
    let mut request = Some(Request::from_parts(parts, body));
    let all_down = candidates
        .iter()
        .all(|&id| !pool.stats[id as usize].is_up());
    let mut attempts = 0u32;
    let mut at_capacity = 0u32;
    let mut last_error: Option<UpstreamError> = None;
    // First pass: backends marked down are skipped (but for the one request
    // that wins a probe). If that admits none, every candidate is down: a
    // second pass tries them anyway rather than answer without trying.
    let n = candidates.len();
    for index in 0..n * 2 {
        let second_pass = index >= n;
        if second_pass && (all_down || attempts > 0 || at_capacity > 0 || request.is_none()) {
            break;
        }
        let id = candidates[index % n];
        let anyway = all_down || second_pass;
        if attempts > config.retries {
            break;
        }
        let stats = &pool.stats[id as usize];
        if !anyway && !stats.admit(config.fail_timeout) {
            continue;
        }
        let Some(next) = request.take().or_else(|| replayed(&replay)) else {
            break;
        };
        let backend = &config.backends[id as usize];
        let target = Target {
            addr: backend.addr,
            tls: pool.tls.as_ref().map(|client| (client, id as usize)),
            connect_timeout: config.connect_timeout,
            max_idle: config.max_idle_per_backend,
            idle_timeout: config.idle_timeout,
        };
        let Some(in_flight) = stats.try_start_request(config.max_connections_per_backend) else {
            at_capacity += 1;
            if request.is_none() {
                request = Some(next);
            }
            continue;
        };
        let started = Instant::now();
        let mut outcome = exchange(
            ctx,
            tracker,
            pool,
            target,
            next,
            Connection::PooledOrNew,
            progress.as_deref(),
        )
        .await;
        if let Err(SendFailure {
            error: UpstreamError::SentNoResponse { reused: true, .. },
            ..
        }) = &outcome
            && let Some(again) = replayed(&replay)
        {
            Metrics::inc(&ctx.metrics.fresh_connection_retries);
            outcome = exchange(
                ctx,
                tracker,
                pool,
                target,
                again,
                Connection::New,
                progress.as_deref(),
            )
            .await;
        }
        let failure = match outcome {
            Ok(exchange) => {
                if attempts > 0 {
                    Metrics::inc(&ctx.metrics.retries);
                }
                stats.record_latency(started.elapsed());
                if stats.record_success() {
                    tracing::info!(pool = %config.name, backend = %backend.address, "backend is up again");
                }
                if exchange.response.status() == StatusCode::SWITCHING_PROTOCOLS {
                    return switch_protocols(ctx, tracker, pool, exchange, client_upgrade.take());
                }
                let mut response = UpstreamBody::wrap(
                    exchange,
                    in_flight,
                    config.read_timeout,
                    ctx.metrics.clone(),
                )
                .map(ProxyBody::Upstream);
                rewrite::strip_hop_by_hop(response.headers_mut());
                return response;
            }
            Err(failure) => failure,
        };
        // The client's fault is the client's answer, whatever the backend did.
        if let Some(failed) = progress.as_ref().and_then(|p| p.failure()) {
            return client_failed(ctx, failed);
        }
        if attempts > 0 {
            Metrics::inc(&ctx.metrics.retries);
        }
        attempts += 1;
        if let UpstreamError::Connect { .. } = failure.error {
            Metrics::inc(&ctx.metrics.upstream_connect_errors);
        }
        if failure.error.counts_as_backend_failure()
            && stats.record_failure(config.max_fails, config.fail_timeout)
        {
            tracing::warn!(pool = %config.name, backend = %backend.address, "backend marked down for {:?}: {}", config.fail_timeout, failure.error);
        }
        match failure.error.retry_safety() {
            RetrySafety::NothingSent => request = failure.unsent.map(|r| *r),
            RetrySafety::IfReplayable if replay.is_some() => {}
            _ => return upstream_failed(ctx, &config.name, &failure.error),
        }
        last_error = Some(failure.error);
    }
    if attempts == 0 && at_capacity > 0 {
        Metrics::inc(&ctx.metrics.service_unavailable);
        return message(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "veer: every backend of pool {} is at max_connections_per_backend ({})\n",
                config.name, config.max_connections_per_backend
            ),
        );
    }
    Metrics::inc(&ctx.metrics.bad_gateway);
    let reason = last_error.map_or_else(
        || "no candidate was admitted".to_string(),
        |e| e.to_string(),
    );
    message(
        StatusCode::BAD_GATEWAY,
        format!(
            "veer: no backend of pool {} could be reached ({attempts} tried): {reason}\n",
            config.name
        ),
    )
}

/// A backend's `101 Switching Protocols`: both connections become a tunnel
/// (see `tunnel`); the client gets the 101 with its upgrade headers.
fn switch_protocols(
    ctx: &Shared,
    tracker: &TaskTracker,
    pool: &Pool,
    exchange: Exchange,
    client: Option<(hyper::upgrade::OnUpgrade, Option<super::ConnSlot>)>,
) -> Response<ProxyBody> {
    let mut response = exchange.into_upgrade();
    let Some((client, slot)) = client else {
        Metrics::inc(&ctx.metrics.bad_gateway);
        return message(
            StatusCode::BAD_GATEWAY,
            format!(
                "veer: a backend of pool {} switched protocols unasked\n",
                pool.config.name
            ),
        );
    };
    let backend = hyper::upgrade::on(&mut response);
    let protocol = response.headers().get(http::header::UPGRADE).cloned();
    rewrite::strip_hop_by_hop(response.headers_mut());
    if let Some(protocol) = protocol {
        rewrite::set_upgrade(response.headers_mut(), protocol);
    }
    let tunnel = super::tunnel::run(
        client,
        backend,
        pool.config.read_timeout,
        ctx.metrics.clone(),
    );
    tracker.spawn(async move {
        tunnel.await;
        // The tunnel held the connection's place under the cap until now.
        drop(slot);
    });
    response.map(|_| ProxyBody::Message(None))
}

/// The request again, from its kept head (only for replayable requests).
fn replayed(replay: &Option<Parts>) -> Option<Request<RequestBody>> {
    replay
        .as_ref()
        .map(|parts| Request::from_parts(parts.clone(), RequestBody::Empty))
}

/// One send to one backend, under the pool's timers.
#[allow(clippy::too_many_arguments)]
async fn exchange(
    ctx: &Shared,
    tracker: &TaskTracker,
    pool: &Pool,
    target: Target<'_>,
    request: Request<RequestBody>,
    which: Connection,
    progress: Option<&Progress>,
) -> Result<Exchange, SendFailure> {
    let send = upstream::send(target, request, which, tracker, &ctx.metrics);
    let timed_out = |(what, after)| SendFailure {
        error: UpstreamError::TimedOut {
            addr: target.addr,
            what,
            after,
        },
        unsent: None,
    };
    let config = &pool.config;
    match progress {
        None => tokio::time::timeout(config.response_timeout, send)
            .await
            .unwrap_or_else(|_| {
                Err(timed_out((
                    "sent no response head",
                    config.response_timeout,
                )))
            }),
        Some(progress) => tokio::select! {
            result = send => result,
            fired = watch_upload(progress, config.response_timeout, config.send_timeout) => Err(timed_out(fired)),
        },
    }
}

/// Completes when a timer of a request with a body fires: the response
/// timer (from the body's end), or the send timer (the backend stopped taking
/// the body while the client had more). A stalled client is the body's own
/// business (it fails itself, and the send with it).
async fn watch_upload(
    progress: &Progress,
    response_timeout: Duration,
    send_timeout: Duration,
) -> (&'static str, Duration) {
    loop {
        if progress.is_done() {
            tokio::time::sleep(response_timeout).await;
            return ("sent no response head", response_timeout);
        }
        if progress.failure().is_some() {
            // The send fails with the body; nothing to time here.
            std::future::pending::<()>().await;
        }
        if progress.waiting_on_client() {
            // The client owes the next frame; the body times that itself.
            // Woken when a frame arrives, the body ends or fails.
            tokio::select! {
                _ = progress.changed() => {}
                _ = tokio::time::sleep(send_timeout) => {}
            }
            continue;
        }
        let idle_for = now_ms().saturating_sub(progress.last_frame_ms());
        let left = (send_timeout.as_millis() as u64).saturating_sub(idle_for);
        if left == 0 {
            return ("stopped reading the request body", send_timeout);
        }
        tokio::select! {
            _ = progress.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(left)) => {}
        }
    }
}

fn client_failed(ctx: &Shared, failed: ClientBodyFailure) -> Response<ProxyBody> {
    Metrics::inc(match failed {
        ClientBodyFailure::Stalled => &ctx.metrics.client_body_timeouts,
        _ => &ctx.metrics.bad_requests,
    });
    message(failed.status(), format!("veer: {}\n", failed.reason()))
}

fn upstream_failed(ctx: &Shared, pool: &str, error: &UpstreamError) -> Response<ProxyBody> {
    let status = match error {
        UpstreamError::TimedOut { .. } => {
            Metrics::inc(&ctx.metrics.gateway_timeout);
            StatusCode::GATEWAY_TIMEOUT
        }
        _ => {
            Metrics::inc(&ctx.metrics.bad_gateway);
            StatusCode::BAD_GATEWAY
        }
    };
    message(
        status,
        format!("veer: backend of pool {pool} failed: {error}\n"),
    )
}
