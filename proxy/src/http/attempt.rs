//! The attempt loop: tries a request on the pool's candidates in order,
//! skipping backends marked down, until one answers; timeouts and retries.

use std::time::Instant;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio_util::task::TaskTracker;

use super::body::{ProxyBody, message};
use super::rewrite;
use crate::state::{Pool, Shared};
use crate::stats::Metrics;
use crate::upstream::{self, SendError, Target, UpstreamBody};

/// Tries `candidates` in order (skipping backends marked down, unless all
/// are) until one can be reached; its response streams back.
pub(super) async fn forward(
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
                rewrite::strip_hop_by_hop(response.headers_mut());
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
