//! The admin listener: `/metrics` (Prometheus), a JSON API over pools and
//! plugins, drain and undrain of a backend, reloads, readiness and liveness
//! for orchestrators, and the live dashboard (its page embedded in the
//! binary). It runs on the control runtime, never on a worker.
//!
//! Reads are open. Mutations (`POST`) are taken only when the listener is on
//! loopback, or with `Authorization: Bearer <admin.token>` (compared in
//! constant time).
//!
//! | method and path | what |
//! |---|---|
//! | `GET /` | the dashboard |
//! | `GET /metrics` | Prometheus text |
//! | `GET /live` | 200 while the process runs |
//! | `GET /ready` | 200 while serving, 503 before and once shutting down |
//! | `GET /api/pools` | pools, backends, health, traffic |
//! | `GET /api/plugins` | the plugin serving each pool |
//! | `POST /api/pools/POOL/backends/ADDRESS/drain` | no new requests to it |
//! | `POST /api/pools/POOL/backends/ADDRESS/undrain` | take it back |
//! | `POST /api/reload` | reload the configuration file |

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::reload::Handle;
use crate::config::AdminSettings;
use crate::metrics::export;
use crate::state::Shared;
use crate::stats::now_ms;

/// The dashboard page (HTML, CSS and script in one file, no CDN).
const DASHBOARD: &str = include_str!("dashboard.html");
/// How far back "recent traffic" looks.
const RECENT: Duration = Duration::from_secs(60);

/// Responses so far by (pool, backend address).
type Totals = HashMap<(String, String), u64>;

/// What the admin handlers share.
struct Admin {
    shared: Arc<Shared>,
    reload: Handle,
    token: Option<String>,
    on_loopback: bool,
    /// Per-backend response totals, sampled every second, for the share of
    /// recent traffic.
    history: Mutex<VecDeque<(Instant, Totals)>>,
    started_ms: u64,
}

/// Serves the admin listener until `cancel`.
pub async fn serve(
    listener: std::net::TcpListener,
    settings: AdminSettings,
    shared: Arc<Shared>,
    reload: Handle,
    cancel: CancellationToken,
) {
    let local = listener.local_addr().ok();
    let listener = match listener
        .set_nonblocking(true)
        .and_then(|()| tokio::net::TcpListener::from_std(listener))
    {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!("admin listener: {e}");
            return;
        }
    };
    let admin = Arc::new(Admin {
        shared,
        reload,
        token: settings.token,
        on_loopback: local.is_some_and(|a| a.ip().is_loopback()),
        history: Mutex::new(VecDeque::new()),
        started_ms: now_ms(),
    });
    let tracker = TaskTracker::new();
    tracker.spawn(sample(admin.clone(), cancel.clone()));
    loop {
        let (stream, _) = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::debug!("admin accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (admin, cancel) = (admin.clone(), cancel.clone());
        tracker.spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(admin.answer(request).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = cancel.cancelled() => connection.as_mut().graceful_shutdown(),
            }
            let _ = tokio::time::timeout(Duration::from_secs(2), connection).await;
        });
    }
    tracker.close();
    tracker.wait().await;
}

/// Samples per-backend totals every second, keeping a minute of them.
async fn sample(admin: Arc<Admin>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let totals = totals(&admin.shared);
        let mut history = admin.history.lock().expect("not poisoned");
        let now = Instant::now();
        history.push_back((now, totals));
        while history
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > RECENT + Duration::from_secs(1))
        {
            history.pop_front();
        }
    }
}

/// Responses so far by (pool, backend address).
fn totals(shared: &Shared) -> Totals {
    let state = shared.state.load();
    let mut totals = HashMap::new();
    for pool in &state.pools {
        for (backend, sum) in pool.config.backends.iter().zip(pool.traffic.sum()) {
            totals.insert(
                (pool.config.name.clone(), backend.address.clone()),
                sum.responses_total(),
            );
        }
    }
    totals
}

type Answer = Response<Full<Bytes>>;

fn text(status: StatusCode, body: impl Into<Bytes>, content_type: &'static str) -> Answer {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn json_answer(status: StatusCode, value: &Value) -> Answer {
    text(status, value.to_string(), "application/json")
}

fn error(status: StatusCode, message: &str) -> Answer {
    json_answer(status, &json!({ "error": message }))
}

impl Admin {
    async fn answer(&self, request: Request<Incoming>) -> Answer {
        let path = request.uri().path().to_string();
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (request.method(), segments.as_slice()) {
            (&Method::GET, [""]) => text(StatusCode::OK, DASHBOARD, "text/html; charset=utf-8"),
            (&Method::GET, ["metrics"]) => text(
                StatusCode::OK,
                export::render(&self.shared),
                export::CONTENT_TYPE,
            ),
            (&Method::GET, ["live"]) => text(StatusCode::OK, "live\n", "text/plain"),
            (&Method::GET, ["ready"]) => {
                if self.shared.serving.load(Relaxed) {
                    text(StatusCode::OK, "ready\n", "text/plain")
                } else {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "not serving\n",
                        "text/plain",
                    )
                }
            }
            (&Method::GET, ["api", "pools"]) => json_answer(StatusCode::OK, &self.pools()),
            (&Method::GET, ["api", "plugins"]) => json_answer(StatusCode::OK, &self.plugins()),
            (&Method::POST, rest) => {
                if let Err(refusal) = self.allowed(&request) {
                    return *refusal;
                }
                match rest {
                    ["api", "reload"] => {
                        self.reload.reload();
                        json_answer(StatusCode::ACCEPTED, &json!({ "reload": "asked" }))
                    }
                    [
                        "api",
                        "pools",
                        pool,
                        "backends",
                        address,
                        action @ ("drain" | "undrain"),
                    ] => self.drain(pool, address, *action == "drain"),
                    _ => error(StatusCode::NOT_FOUND, "no such admin action"),
                }
            }
            (_, ["api", "pools" | "plugins"]) | (_, ["metrics" | "live" | "ready"]) => {
                error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here")
            }
            _ => error(
                StatusCode::NOT_FOUND,
                "no such admin page; see / or /api/pools",
            ),
        }
    }

    /// Whether a mutation may go ahead: on loopback, or with the token.
    fn allowed(&self, request: &Request<Incoming>) -> Result<(), Box<Answer>> {
        if self.on_loopback {
            return Ok(());
        }
        let Some(token) = &self.token else {
            return Err(Box::new(error(
                StatusCode::FORBIDDEN,
                "mutations need the admin listener on loopback, or admin.token set and presented as a bearer token",
            )));
        };
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if bool::from(presented.as_bytes().ct_eq(token.as_bytes())) {
            Ok(())
        } else {
            Err(Box::new(error(
                StatusCode::UNAUTHORIZED,
                "a valid bearer token (admin.token) is needed for this",
            )))
        }
    }

    fn drain(&self, pool: &str, address: &str, drain: bool) -> Answer {
        let state = self.shared.state.load();
        let Some(p) = state.pools.iter().find(|p| p.config.name == pool) else {
            return error(StatusCode::NOT_FOUND, &format!("no pool named {pool:?}"));
        };
        let Some(id) = p.config.backends.iter().position(|b| b.address == address) else {
            return error(
                StatusCode::NOT_FOUND,
                &format!("pool {pool:?} has no backend {address:?}"),
            );
        };
        let changed = p.stats[id].set_drained(drain);
        if changed {
            tracing::info!(
                pool,
                backend = address,
                "backend {}",
                if drain { "drained" } else { "undrained" }
            );
        }
        json_answer(
            StatusCode::OK,
            &json!({
                "pool": pool,
                "backend": address,
                "drained": drain,
                "changed": changed,
                "in_flight": p.stats[id].in_flight(),
            }),
        )
    }

    /// Responses per (pool, backend) over the last minute (or since start).
    fn recent(&self) -> Totals {
        let now = totals(&self.shared);
        let history = self.history.lock().expect("not poisoned");
        let then = history
            .iter()
            .find(|(at, _)| at.elapsed() <= RECENT)
            .map(|(_, totals)| totals.clone())
            .unwrap_or_default();
        now.into_iter()
            .map(|(key, n)| {
                let before = then.get(&key).copied().unwrap_or(0);
                (key, n.saturating_sub(before))
            })
            .collect()
    }

    fn pools(&self) -> Value {
        let state = self.shared.state.load();
        let recent = self.recent();
        let pools: Vec<Value> = state
            .pools
            .iter()
            .map(|pool| {
                let sums = pool.traffic.sum();
                let key = |address: &str| (pool.config.name.clone(), address.to_string());
                let pool_recent: u64 = pool
                    .config
                    .backends
                    .iter()
                    .map(|b| recent.get(&key(&b.address)).copied().unwrap_or(0))
                    .sum();
                let backends: Vec<Value> = pool
                    .config
                    .backends
                    .iter()
                    .zip(sums)
                    .enumerate()
                    .map(|(id, (backend, sum))| {
                        let stats = &pool.stats[id];
                        let recent = recent.get(&key(&backend.address)).copied().unwrap_or(0);
                        let health = if stats.is_drained() {
                            "drained"
                        } else if stats.check_failed() {
                            "unhealthy"
                        } else if stats.is_ejected() {
                            "ejected"
                        } else {
                            "up"
                        };
                        json!({
                            "id": id,
                            "address": backend.address,
                            "weight": backend.weight,
                            "labels": backend.labels.iter().cloned().collect::<HashMap<_, _>>(),
                            "health": health,
                            "in_flight": stats.in_flight(),
                            "latency_ewma_ms": stats.latency_ewma_us() as f64 / 1000.0,
                            "responses": sum.responses_total(),
                            "failures": sum.failures,
                            "ejections": stats.ejections_total(),
                            "recent_responses": recent,
                            "recent_share": if pool_recent == 0 { 0.0 } else { recent as f64 / pool_recent as f64 },
                        })
                    })
                    .collect();
                let plugin = pool.balancer.plugin();
                json!({
                    "name": pool.config.name,
                    "strategy": plugin.name(),
                    "plugin_version": plugin.version(),
                    "protocol": format!("{:?}", pool.config.protocol).to_lowercase(),
                    "health_checks": pool.config.health.is_some(),
                    "backends": backends,
                })
            })
            .collect();
        json!({
            "uptime_s": (now_ms() - self.started_ms) / 1000,
            "recent_window_s": RECENT.as_secs(),
            "pools": pools,
        })
    }

    fn plugins(&self) -> Value {
        let state = self.shared.state.load();
        let plugins: Vec<Value> = state
            .pools
            .iter()
            .map(|pool| {
                let plugin = pool.balancer.plugin();
                let sum = pool.balancer.traffic().sum();
                let rested = pool.balancer.rested_workers();
                json!({
                    "pool": pool.config.name,
                    "name": plugin.name(),
                    "version": plugin.version(),
                    "world": plugin.world(),
                    "source": plugin.source(),
                    "kind": plugin.kind(),
                    "sha256": plugin.hash(),
                    "generation": plugin.generation(),
                    "loaded_unix_ms": plugin.loaded_unix_ms(),
                    "state": if pool.balancer.rolled_back() {
                        "rolled back: the last good version serves".to_string()
                    } else if rested == 0 {
                        "serving".to_string()
                    } else {
                        format!("rested on {rested} worker(s)")
                    },
                    "rolled_back": pool.balancer.rolled_back(),
                    "on_plugin_failure": pool.config.on_plugin_failure.as_str(),
                    "select_calls": sum.select.count(),
                    "traps": sum.traps,
                    "timeouts": sum.timeouts,
                    "bad_answers": sum.bad_answers,
                    "fallbacks": sum.fallbacks,
                    "rests": sum.rests,
                })
            })
            .collect();
        let m = self.shared.metrics.snapshot();
        json!({
            "plugins": plugins,
            "swaps": m.plugin_swaps,
            "refusals": m.plugin_refusals,
            "config_reloads": m.config_reloads,
            "config_reload_refusals": m.config_reload_refusals,
        })
    }
}

/// The admin listener's address as a URL, for logs.
pub fn url(addr: SocketAddr) -> String {
    format!("http://{addr}/")
}
