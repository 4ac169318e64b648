//! Active health checks: once per process (not per worker), off the request
//! path. One task per backend of every pool with `[pools.NAME.health]`
//! checks it every `interval_ms` (moved by up to `jitter_percent`), each
//! check bounded by `timeout_ms`; `fall` failures in a row make the backend
//! unhealthy, `rise` passes in a row bring it back. Only a flip is logged.
//! Unhealthy backends are skipped by the attempt loop and reported to
//! plugins as `healthy = false`.
//!
//! The supervisor follows reloads: a rebuilt pool gets new tasks and the old
//! ones stop. Backends that stay keep their stats, so their health carries
//! over; a new backend starts healthy and is checked at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Uri, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{CheckKind, HealthCheck, HttpCheck, Protocol};
use crate::metrics::Metrics;
use crate::state::{Pool, Shared};
use crate::upstream::{Tracked, connect_stream};

/// How often the supervisor looks for new or rebuilt pools.
const FOLLOW_EVERY: Duration = Duration::from_millis(250);
/// The most of a check response's body that is searched.
const BODY_LIMIT: usize = 64 * 1024;

/// Runs every pool's checks until `cancel`.
pub async fn run(shared: Arc<Shared>, cancel: CancellationToken) {
    let tracker = TaskTracker::new();
    // By (pool, backend id): the token that stops that backend's task.
    let mut running: HashMap<(usize, usize), CancellationToken> = HashMap::new();
    loop {
        let state = shared.state.load_full();
        let mut wanted = Vec::new();
        for pool in &state.pools {
            let Some(check) = &pool.config.health else {
                // No checks (any more): no verdict of old ones stays.
                pool.stats.iter().for_each(|s| s.forget_checks());
                continue;
            };
            for id in 0..pool.stats.len() {
                let key = (Arc::as_ptr(pool) as usize, id);
                wanted.push(key);
                if running.contains_key(&key) {
                    continue;
                }
                let token = cancel.child_token();
                running.insert(key, token.clone());
                tracker.spawn(watch(
                    shared.clone(),
                    pool.clone(),
                    id,
                    check.clone(),
                    token,
                    tracker.clone(),
                ));
            }
        }
        // A task holds its pool, so a pool's address is not reused while a
        // task for it runs.
        running.retain(|key, token| {
            let keep = wanted.contains(key);
            if !keep {
                token.cancel();
            }
            keep
        });
        drop(state);
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(FOLLOW_EVERY) => {}
        }
    }
    tracker.close();
    tracker.wait().await;
}

/// Checks one backend until `cancel`.
async fn watch(
    shared: Arc<Shared>,
    pool: Arc<Pool>,
    id: usize,
    check: HealthCheck,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    let metrics = &shared.metrics;
    let stats = &pool.stats[id];
    let backend = &pool.config.backends[id].address;
    let (mut passes, mut fails) = (0u32, 0u32);
    // The first check comes soon, spread a little over backends.
    let mut wait = jittered(Duration::from_millis(50), 100);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = jittered(check.interval, check.jitter_percent);
        Metrics::inc(&metrics.health_checks);
        let checked = tokio::time::timeout(check.timeout, probe(&pool, id, &check, &tracker));
        let outcome = tokio::select! {
            _ = cancel.cancelled() => return,
            outcome = checked => outcome
                .unwrap_or_else(|_| Err(format!("no answer within {:?}", check.timeout))),
        };
        // A pool replaced by a reload is no longer this task's to judge
        // (its successor may have no checks, or new ones).
        if !shared
            .state
            .load()
            .pools
            .iter()
            .any(|p| Arc::ptr_eq(p, &pool))
        {
            return;
        }
        match outcome {
            Ok(()) => {
                fails = 0;
                passes = passes.saturating_add(1);
                if stats.check_failed() && passes >= check.rise && stats.set_check_result(true) {
                    tracing::info!(pool = %pool.config.name, %backend, "backend is healthy again ({passes} checks passed)");
                }
            }
            Err(reason) => {
                Metrics::inc(&metrics.health_check_failures);
                passes = 0;
                fails = fails.saturating_add(1);
                if !stats.check_failed() && fails >= check.fall && stats.set_check_result(false) {
                    Metrics::inc(&metrics.backends_marked_unhealthy);
                    tracing::warn!(pool = %pool.config.name, %backend, "backend is unhealthy ({fails} checks failed): {reason}");
                }
            }
        }
    }
}

/// `base` moved by a random amount up to `percent` of it, either way.
fn jittered(base: Duration, percent: u32) -> Duration {
    let span = base.as_millis() as u64 * percent as u64 / 100;
    if span == 0 {
        return base;
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    let offset = nanos % (2 * span + 1);
    (base + Duration::from_millis(offset)).saturating_sub(Duration::from_millis(span))
}

/// One check of backend `id`; the error says what failed.
async fn probe(
    pool: &Pool,
    id: usize,
    check: &HealthCheck,
    tracker: &TaskTracker,
) -> Result<(), String> {
    let target = pool.target(id);
    let stream = connect_stream(target.dial())
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    let http = match &check.kind {
        CheckKind::Tcp => return Ok(()),
        CheckKind::Http(http) => http,
    };
    let host = http.host.clone().map_or_else(
        || HeaderValue::from_str(&pool.config.backends[id].address),
        Ok,
    );
    let host = host.map_err(|_| "the backend's address is not a valid Host".to_string())?;
    let io = TokioIo::new(stream);
    if pool.config.protocol.is_h2() {
        let scheme = if pool.config.protocol == Protocol::H2 {
            "https"
        } else {
            "http"
        };
        let uri: Uri = format!(
            "{scheme}://{}{}",
            host.to_str().unwrap_or("localhost"),
            http.path
        )
        .parse()
        .map_err(|e| format!("check URI: {e}"))?;
        let request = request(http, uri, Version::HTTP_2, None)?;
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(Tracked(tracker.clone()), io)
                .await
                .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
        let exchange = async move {
            let result = judge(http, sender.send_request(request).await).await;
            drop(sender);
            result
        };
        let (result, _) = tokio::join!(exchange, connection);
        result
    } else {
        let uri = Uri::from(http.path.clone());
        let request = request(http, uri, Version::HTTP_11, Some(host))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let exchange = async move {
            let result = judge(http, sender.send_request(request).await).await;
            drop(sender);
            result
        };
        let (result, _) = tokio::join!(exchange, connection);
        result
    }
}

fn request(
    http: &HttpCheck,
    uri: Uri,
    version: Version,
    host: Option<HeaderValue>,
) -> Result<Request<Empty<Bytes>>, String> {
    let mut builder = Request::builder()
        .method(http.method.clone())
        .uri(uri)
        .version(version)
        .header(header::USER_AGENT, "veer-health-check");
    if let Some(host) = host {
        builder = builder
            .header(header::HOST, host)
            .header(header::CONNECTION, "close");
    }
    builder
        .body(Empty::new())
        .map_err(|e| format!("check request: {e}"))
}

/// Whether a check response passes: its status in range, and the text in
/// its body when one is asked for.
async fn judge(
    http: &HttpCheck,
    response: Result<http::Response<hyper::body::Incoming>, hyper::Error>,
) -> Result<(), String> {
    let response = response.map_err(|e| format!("request: {e}"))?;
    let status = response.status().as_u16();
    let (low, high) = http.expect;
    if !(low..=high).contains(&status) {
        return Err(format!("status {status}, expected {low}-{high}"));
    }
    let Some(text) = &http.body_contains else {
        return Ok(());
    };
    let mut body = response.into_body();
    let mut seen = Vec::new();
    while seen.len() < BODY_LIMIT {
        match body.frame().await {
            None => break,
            Some(Err(e)) => return Err(format!("body: {e}")),
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    seen.extend_from_slice(data);
                }
            }
        }
    }
    seen.truncate(BODY_LIMIT);
    let found = seen
        .windows(text.len())
        .any(|window| window == text.as_bytes());
    if found {
        Ok(())
    } else {
        Err(format!(
            "the body does not contain {text:?} (first {} bytes read)",
            seen.len()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_its_share_of_the_interval() {
        for _ in 0..1000 {
            let d = jittered(Duration::from_millis(1000), 10);
            assert!((900..=1100).contains(&(d.as_millis() as u64)), "{d:?}");
        }
        assert_eq!(
            jittered(Duration::from_millis(1000), 0),
            Duration::from_millis(1000)
        );
    }
}
