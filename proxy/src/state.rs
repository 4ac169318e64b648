//! What the control plane builds and the data plane reads: routes and pools
//! at run time. The control plane builds a new [`State`] off the request path
//! and swaps it in atomically ([`Shared::state`]); a request holds the
//! `Arc<Pool>` it started with until it ends.

use std::sync::Arc;

use crate::config::{PoolConfig, Route, ServerSettings};
use crate::metrics::Metrics;
use crate::metrics::traffic::{PoolTraffic, RouteTraffic};
use crate::plugin::balancer::Balancer;
use crate::stats::BackendStats;

/// Routes and pools: what a configuration turns into at run time.
pub struct State {
    /// Request-path settings of `[server]` (limits, trusted proxies, …).
    pub server: ServerSettings,
    /// Most specific first.
    pub routes: Vec<Route>,
    /// By index, as routes refer to them.
    pub pools: Vec<Arc<Pool>>,
    /// Requests by route (index into `routes`; one more for no route).
    pub traffic: RouteTraffic,
    /// The access log, when on.
    pub access_log: Option<crate::config::AccessLog>,
    /// Decision tracing on request.
    pub trace: crate::config::TraceSettings,
}

impl State {
    /// The route (its index) and pool for a request to `host` (any case,
    /// no port) and the normalised `path`: the first route (most specific
    /// first) whose host matches and whose prefix `path` falls under on a
    /// segment boundary.
    pub fn route(&self, host: &str, path: &str) -> Option<(usize, &Arc<Pool>)> {
        self.routes
            .iter()
            .position(|r| {
                r.host
                    .as_deref()
                    .is_none_or(|h| h.eq_ignore_ascii_case(host))
                    && crate::http::path_under(path, &r.path_prefix)
            })
            .map(|i| (i, &self.pools[self.routes[i].pool]))
    }
}

/// One upstream pool at run time.
pub struct Pool {
    /// Settings from the configuration.
    pub config: PoolConfig,
    /// Live stats, by backend id (shared with the plugin's `live-stats`).
    pub stats: Arc<[Arc<BackendStats>]>,
    /// The strategy.
    pub balancer: Arc<Balancer>,
    /// HTTPS to the backends, when the pool has `tls`.
    pub tls: Option<crate::upstream::TlsClient>,
    /// How many retries the pool may still make.
    pub budget: crate::http::RetryBudget,
    /// Responses and failures by backend.
    pub traffic: PoolTraffic,
    /// Its fixed access log fields.
    pub log: crate::http::observe::PoolLog,
}

impl Pool {
    /// How to reach backend `id`.
    pub fn target(&self, id: usize) -> crate::upstream::Target<'_> {
        let config = &self.config;
        crate::upstream::Target {
            addr: config.backends[id].addr,
            tls: self.tls.as_ref().map(|client| (client, id)),
            connect_timeout: config.connect_timeout,
            max_idle: config.max_idle_per_backend,
            idle_timeout: config.idle_timeout,
            protocol: config.protocol,
            max_streams: config.max_streams_per_connection,
        }
    }
}

/// What every worker shares.
pub struct Shared {
    /// Current routes and pools.
    pub state: arc_swap::ArcSwap<State>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// The port of the HTTPS listener, for redirects to it.
    pub https_port: Option<u16>,
    /// ACME HTTP-01 answers, when certificates are automatic.
    pub acme: Option<Arc<crate::listen::tls::Challenges>>,
    /// Set while the workers serve (readiness); cleared on shutdown.
    pub serving: std::sync::atomic::AtomicBool,
    /// Set before the workers are told to stop when a new process has taken
    /// the listening sockets over: keep-alive connections then close
    /// politely (HTTP/1.1 `Connection: close` on the next response) rather
    /// than at once, since their clients are still served, by the new one.
    pub handed_over: std::sync::atomic::AtomicBool,
}
