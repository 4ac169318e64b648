//! The attempt loop: tries a request on the pool's candidates in order until
//! one answers, deciding after each failure whether trying again is safe and
//! allowed (NGINX `proxy_next_upstream`, HAProxy `retry-on`).
//!
//! - Nothing reached the backend (no connection, connection closed before
//!   the request was written, backend at its connection cap): the same
//!   request, body and all, goes to the next candidate, whatever its method.
//! - A pooled connection closed after the request went out but before any
//!   response byte (the backend closed an idle keep-alive connection just as
//!   it was reused): a replayable request (below) is sent once more on a
//!   fresh connection to the same backend. That does not count against
//!   `retries`, the budget or the backend's health.
//! - The request went out and the connection was reset, the backend sent
//!   garbage, or no response head came within `response_timeout_ms` (per
//!   try), or the response's status is in `retry.on_statuses`: a replayable
//!   request goes to the next candidate if the policy allows (`on_reset`,
//!   `on_timeout`) and the retry budget has room. Replayable: an idempotent method (or
//!   `retry.non_idempotent`), and a body that was empty or kept whole (up to
//!   `retry.replay_body_bytes`). When no retry is possible, a status answer
//!   is passed on as it is; a failure becomes 502 (504 for a timeout).
//! - A backend that stops taking the body for `send_timeout_ms` gets 504; a
//!   client that stops sending it gets 408 — never counted against a
//!   backend.
//!
//! No further attempt of any kind starts once `retry.total_timeout_ms` has
//! passed since the first. Retries walk the plugin's candidate list; the
//! plugin is not called again.
//! Backends that are down (ejected, or failing health checks) are skipped;
//! after its ejection an ejected backend is tried by exactly one request (an
//! atomic claim in [`crate::stats::BackendStats::admit`]). When every
//! candidate is down, `when_all_down` decides: try them anyway, or 503.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::request::Parts;
use http::{Method, Request, Response, StatusCode};
use tokio_util::task::TaskTracker;

use super::body::{ClientBodyFailure, Progress, ProxyBody, RequestBody, message};
use super::observe::Outcome;
use super::{policy, rewrite};
use crate::config::AllDown;
use crate::metrics::Metrics;
use crate::plugin::{AttemptFailure, AttemptOutcome};
use crate::state::{Pool, Shared};
use crate::stats::{Admission, now_ms};
use crate::upstream::{
    self, Connection, Exchange, RetrySafety, SendFailure, Target, UpstreamBody, UpstreamError,
};

/// Methods whose requests may be replayed (RFC 9110 §9.2.2).
pub(super) fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS | Method::TRACE
    )
}

/// A client connection's place under `max_connections`.
pub(super) type ClientSlot = std::sync::Mutex<Option<super::ConnSlot>>;

/// A request rewritten for the backends, with what the attempt loop watches.
pub(super) struct Outgoing<'a> {
    /// The head, as backends get it.
    pub parts: Parts,
    /// The client's body.
    pub body: RequestBody,
    /// How the body is going, when there is one.
    pub progress: Option<Arc<Progress>>,
    /// The client's side of a protocol upgrade, when it asked for one, and
    /// where its connection's slot under `max_connections` is: a tunnel
    /// takes it over (only once the backend agreed).
    pub client_upgrade: Option<(hyper::upgrade::OnUpgrade, &'a ClientSlot)>,
}

/// What sends the request again after it went out: its head, and the kept
/// body (see the module docs).
struct Replay<'a> {
    /// The head: copied before the first try, or, for a request exchanged
    /// inline, the one it kept in `sent`.
    parts: Option<Parts>,
    progress: Option<&'a Progress>,
}

/// A copy of `parts` to replay from; its header map comes from the spares.
/// Header names and values share their bytes, so nothing is copied.
fn copy_head(parts: &Parts) -> Parts {
    let mut headers = super::spare::take();
    headers.reserve(parts.headers.len());
    for (name, value) in &parts.headers {
        headers.append(name.clone(), value.clone());
    }
    let (mut copy, ()) = Request::new(()).into_parts();
    copy.method = parts.method.clone();
    copy.uri = parts.uri.clone();
    copy.version = parts.version;
    copy.headers = headers;
    copy.extensions = parts.extensions.clone();
    copy
}

impl Drop for Replay<'_> {
    fn drop(&mut self) {
        if let Some(parts) = self.parts.take() {
            super::spare::give(parts.headers);
        }
    }
}

impl Replay<'_> {
    /// A head the inline exchange left in `sent`: kept to replay from when
    /// the request may be sent again and no head is kept yet; otherwise its
    /// map goes back to the spares.
    fn keep(&mut self, head: Option<Parts>, may_repeat: bool) {
        match head {
            Some(head) if may_repeat && self.parts.is_none() => self.parts = Some(head),
            Some(head) => super::spare::give(head.headers),
            None => {}
        }
    }

    /// Whether the request can be sent again (without building it).
    fn available(&self) -> bool {
        self.parts.is_some() && self.progress.is_none_or(Progress::can_replay)
    }

    /// The request again, or `None` when it cannot be replayed.
    fn request(&self) -> Option<Request<RequestBody>> {
        let parts = self.parts.as_ref()?;
        let body = match self.progress {
            None => RequestBody::Empty,
            Some(progress) => progress.replay()?,
        };
        Some(Request::from_parts(parts.clone(), body))
    }
}

/// Tries the request on `candidates` in order (see the module docs); the
/// response of the first that answers streams back.
pub(super) async fn forward(
    ctx: &Shared,
    tracker: &TaskTracker,
    pool: &Pool,
    candidates: &[u32],
    outgoing: Outgoing<'_>,
    answered_by: Option<u64>,
    outcome: &mut Outcome,
) -> Response<ProxyBody> {
    // The plugin hears how each attempt from its answer went, if it asked.
    let tell_plugin =
        |id: u32, attempt: u32, status: Option<u16>, latency, error: Option<&UpstreamError>| {
            if let Some(instance) = answered_by {
                pool.balancer.outcome(
                    instance,
                    &AttemptOutcome {
                        backend: id,
                        attempt,
                        status,
                        latency,
                        failure: error.map(|e| match e {
                            UpstreamError::Connect { .. } => AttemptFailure::Connect,
                            UpstreamError::TimedOut { .. } => AttemptFailure::Timeout,
                            UpstreamError::InvalidResponse { .. } => AttemptFailure::Protocol,
                            _ => AttemptFailure::Reset,
                        }),
                    },
                );
            }
        };
    let Outgoing {
        parts,
        body,
        progress,
        mut client_upgrade,
    } = outgoing;
    let config = &pool.config;
    let retry = &config.retry;
    pool.budget.deposit();
    let may_repeat = is_idempotent(&parts.method) || retry.non_idempotent;
    // A request exchanged inline leaves its head with us (in `sent`):
    // nothing is copied before the first try.
    let hands_back =
        upstream::hands_head_back(config.protocol, &parts.method, &parts.headers, &body);
    let mut replay = Replay {
        parts: (may_repeat && !hands_back).then(|| copy_head(&parts)),
        progress: progress.as_deref(),
    };
    let candidates = policy::slow_start(candidates, &pool.stats, config.slow_start);
    let mut request = Some(Request::from_parts(parts, body));
    let all_down = candidates
        .iter()
        .all(|&id| !pool.stats[id as usize].is_up());
    if all_down && config.when_all_down == AllDown::Refuse {
        return nothing_to_try(ctx, &config.name, "down or failing its health checks");
    }
    let first_try = Instant::now();
    let mut attempts = 0u32;
    let mut at_capacity = 0u32;
    let mut last_error: Option<UpstreamError> = None;
    // A retryable status answer, passed on if no further attempt happens.
    let mut held: Option<Response<ProxyBody>> = None;
    // First pass: backends marked down are skipped (but for the one request
    // that wins a probe). If that admits none, every candidate is down: a
    // second pass tries them anyway rather than answer without trying.
    let n = candidates.len();
    let refuse = config.when_all_down == AllDown::Refuse;
    let over_time = || {
        retry
            .total_timeout
            .is_some_and(|limit| first_try.elapsed() >= limit)
    };
    for index in 0..n * 2 {
        let second_pass = index >= n;
        if second_pass
            && (all_down || refuse || attempts > 0 || at_capacity > 0 || request.is_none())
        {
            break;
        }
        let id = candidates[index % n];
        let anyway = all_down || second_pass;
        // No further attempt of any kind starts after the total timeout.
        if attempts > config.retries || (attempts > 0 && over_time()) {
            break;
        }
        // The request went out before: this is a retry proper, possible only
        // when the request can be replayed.
        let is_retry = request.is_none();
        if is_retry && !replay.available() {
            break;
        }
        let stats = &pool.stats[id as usize];
        let admission = if stats.is_drained() {
            // Drained: never, not even when every backend is down.
            Admission::No
        } else if anyway {
            Admission::Yes
        } else {
            stats.admit(config.ejection.base)
        };
        if !admission.admitted() {
            outcome.step(|| {
                let why = if stats.is_drained() {
                    "drained"
                } else if stats.check_failed() {
                    "failing health checks"
                } else {
                    "ejected"
                };
                format!("{} skipped: {why}", config.backends[id as usize].address)
            });
            continue;
        }
        let Some(in_flight) = stats.try_start_request(config.max_connections_per_backend) else {
            stats.give_back(admission);
            at_capacity += 1;
            outcome.step(|| {
                format!(
                    "{} skipped: at max_connections_per_backend",
                    config.backends[id as usize].address
                )
            });
            continue;
        };
        if is_retry && !pool.budget.withdraw() {
            stats.give_back(admission);
            Metrics::inc(&ctx.metrics.retry_budget_exhausted);
            outcome.step(|| "no retry: the retry budget is spent".to_string());
            break;
        }
        let Some(next) = request.take().or_else(|| replay.request()) else {
            stats.give_back(admission);
            break;
        };
        let probe = matches!(admission, Admission::Probe { .. });
        let backend = &config.backends[id as usize];
        let target = pool.target(id as usize);
        if attempts > 0 {
            Metrics::inc(&ctx.metrics.retries);
        }
        attempts += 1;
        outcome.attempts = attempts;
        outcome.backend = Some(id);
        held = None;
        let started = Instant::now();
        let mut sent = None;
        let mut result = exchange(
            ctx,
            tracker,
            pool,
            target,
            next,
            Connection::PooledOrNew,
            progress.as_deref(),
            &mut sent,
        )
        .await;
        replay.keep(sent.take(), may_repeat);
        if let Err(SendFailure {
            error: UpstreamError::SentNoResponse { reused: true, .. },
            ..
        }) = &result
            && !over_time()
            && let Some(again) = replay.request()
        {
            Metrics::inc(&ctx.metrics.fresh_connection_retries);
            outcome.step(|| {
                format!(
                    "{}: reused connection closed, sent again on a new one",
                    backend.address
                )
            });
            result = exchange(
                ctx,
                tracker,
                pool,
                target,
                again,
                Connection::New,
                progress.as_deref(),
                &mut sent,
            )
            .await;
            replay.keep(sent.take(), may_repeat);
        }
        let failure = match result {
            Ok(exchange) => {
                let latency = started.elapsed();
                outcome.upstream = Some(latency);
                stats.record_latency(latency);
                let status = exchange.response.status();
                pool.traffic.response(id as usize, status.as_u16(), latency);
                tell_plugin(id, attempts, Some(status.as_u16()), latency, None);
                if config.ejection.counts_status(status.as_u16()) {
                    backend_failed(ctx, pool, id, probe, &format!("answered {status}"));
                } else if stats.record_success() {
                    tracing::info!(pool = %config.name, backend = %backend.address, "backend is back");
                }
                if status == StatusCode::SWITCHING_PROTOCOLS {
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
                if may_repeat && retry.retries_status(status.as_u16()) {
                    // Try the next candidate; this answer stands if none.
                    outcome.step(|| {
                        format!(
                            "{} answered {} (a status to retry)",
                            backend.address,
                            status.as_u16()
                        )
                    });
                    held = Some(response);
                    continue;
                }
                outcome.step(|| format!("{} answered {}", backend.address, status.as_u16()));
                return response;
            }
            Err(failure) => failure,
        };
        drop(in_flight);
        pool.traffic.failure(id as usize);
        tell_plugin(id, attempts, None, started.elapsed(), Some(&failure.error));
        outcome.step(|| format!("{} failed: {}", backend.address, failure.error));
        // The client's fault is the client's answer, whatever the backend did.
        if let Some(failed) = progress.as_ref().and_then(|p| p.failure()) {
            return client_failed(ctx, failed);
        }
        if let UpstreamError::Connect { .. } = failure.error {
            Metrics::inc(&ctx.metrics.upstream_connect_errors);
        }
        if failure.error.counts_as_backend_failure() {
            backend_failed(ctx, pool, id, probe, &failure.error.to_string());
        }
        let allowed = match &failure.error {
            UpstreamError::TimedOut { .. } => retry.on_timeout,
            _ => retry.on_reset,
        };
        match failure.error.retry_safety() {
            RetrySafety::NothingSent => request = failure.unsent.map(|r| *r),
            RetrySafety::IfReplayable if allowed && replay.parts.is_some() => {}
            RetrySafety::IfReplayable => {
                return upstream_failed(ctx, &config.name, &failure.error);
            }
        }
        last_error = Some(failure.error);
    }
    if let Some(response) = held {
        return response;
    }
    if attempts == 0 && at_capacity > 0 {
        return nothing_to_try(
            ctx,
            &config.name,
            &format!(
                "at max_connections_per_backend ({})",
                config.max_connections_per_backend
            ),
        );
    }
    if attempts == 0 {
        // Nothing was tried: every candidate drained, or (with
        // when_all_down = "503") down after all (another request took the
        // probe, a check flipped).
        return nothing_to_try(
            ctx,
            &config.name,
            "down, drained or failing its health checks",
        );
    }
    if let Some(error) = &last_error
        && matches!(error, UpstreamError::TimedOut { .. })
    {
        return upstream_failed(ctx, &config.name, error);
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

/// 503 for a request no backend of `pool` was tried for: every one is
/// `state`.
fn nothing_to_try(ctx: &Shared, pool: &str, state: &str) -> Response<ProxyBody> {
    unavailable(
        ctx,
        format!("veer: every backend of pool {pool} is {state}\n"),
    )
}

/// A 503 that Veer answers itself, saying `text`, and counted.
pub(super) fn unavailable(ctx: &Shared, text: String) -> Response<ProxyBody> {
    Metrics::inc(&ctx.metrics.service_unavailable);
    message(StatusCode::SERVICE_UNAVAILABLE, text)
}

/// Counts a failure against backend `id` (`probe`: the attempt was its
/// probe); logs when that ejects it.
fn backend_failed(ctx: &Shared, pool: &Pool, id: u32, probe: bool, what: &str) {
    let stats = &pool.stats[id as usize];
    if let Some(length) = stats.record_failure(&pool.config.ejection, &pool.stats, probe) {
        Metrics::inc(&ctx.metrics.ejections);
        let backend = &pool.config.backends[id as usize];
        tracing::warn!(pool = %pool.config.name, backend = %backend.address, "backend ejected for {length:?}: {what}");
    }
}

/// A backend's `101 Switching Protocols`: both connections become a tunnel
/// (see `tunnel`); the client gets the 101 with its upgrade headers.
fn switch_protocols(
    ctx: &Shared,
    tracker: &TaskTracker,
    pool: &Pool,
    exchange: Exchange,
    client: Option<(hyper::upgrade::OnUpgrade, &ClientSlot)>,
) -> Response<ProxyBody> {
    let (Some((client, place)), Some(mut response)) = (client, exchange.into_upgrade()) else {
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
    // The tunnel outlives the HTTP connection: it takes over its place.
    let slot = place.lock().ok().and_then(|mut s| s.take());
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
    sent: &mut Option<Parts>,
) -> Result<Exchange, SendFailure> {
    let send = upstream::send(target, request, which, tracker, &ctx.metrics, sent);
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
