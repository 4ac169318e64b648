//! Veer: a reverse proxy whose backend choice is made by WebAssembly plugins.
//!
//! # Layout
//!
//! The data plane (what a request touches) is apart from the control plane
//! (what changes while Veer runs); the control plane builds what the data
//! plane reads and swaps it in atomically, never the other way round.
//!
//! Data plane:
//! - `listen/`: the listening sockets (plain and TLS: certificates by SNI,
//!   reloaded live), one worker thread per core, client connections (limits,
//!   one timer each), signals and graceful shutdown, and the zero-downtime
//!   upgrade (`takeover`: the sockets handed to a new process over a Unix
//!   socket).
//! - `http/`: the path of one request: authority and route, the strategy's
//!   candidates, host-side policy on them (slow start, the retry budget),
//!   header rewriting, the attempt loop (retries, timeouts, ejection), the
//!   bodies streamed both ways (small ones kept for a replay), upgrade
//!   tunnels, and what is written about a request (access log line,
//!   decision trace).
//! - `upstream/`: connections to backends (plain or TLS; HTTP/1.1 with a
//!   keep-alive pool per worker, or HTTP/2 with shared connections per
//!   worker under a stream cap), sending so that an unsent request comes
//!   back for the next candidate, typed errors that say whether a retry is
//!   safe.
//!
//! Control plane:
//! - `plugin/`: the only module that touches wasmtime: bindings per WIT
//!   world, host imports (with their caps), the sandbox's limits and
//!   deadlines (fuel, thread CPU time), the few WASI functions a wasip2
//!   plugin's standard library needs, per-plugin log budgets, the compiled
//!   cache (owner checks, HMAC), the epoch ticker, and the balancer that
//!   drives one pool's plugin per worker (instances built aside, backoff,
//!   failure policy, automatic rollback).
//! - `control/`: the plugin registry, the plugin folder (regular files only,
//!   size cap, diffed by content), reloads of the folder, the configuration
//!   and the certificates, active health checks (once per process),
//!   automatic certificates (ACME), and the admin listener (`/metrics`, the
//!   JSON API, drain, the dashboard).
//!
//! Shared by both:
//! - [`config`]: the TOML file, one file per section, validated into plain
//!   run-time data; errors name the key path.
//! - `state`: routes and pools at run time (built by the control plane).
//! - `stats`: live per-backend state read by plugins and the attempt loop
//!   (in-flight, latency, ejection, health-check verdict, drain, slow
//!   start).
//! - `metrics/`: counters and histograms kept per thread (process-wide,
//!   per route, per backend, per plugin), summed for `/metrics` at scrape
//!   time.
//! - [`logging`]: Veer's own log and the access log's per-thread buffers.
//! - `error`: typed errors, a leaf module.
//! - [`demo`]: `veer demo`, three in-process backends behind the proxy.
//! - [`tools`]: for plugin authors, `veer plugin simulate` (synthetic
//!   traffic through the real host) and `veer plugin new` (a crate to start
//!   from); for those moving over, `veer import nginx` (`import_nginx/`: an
//!   NGINX configuration's tokenizer and parser, and its conversion to a
//!   `veer.toml` that lists what it could not carry over).
//!
//! Strategies only *order* candidates; the host owns health, counters,
//! retries and timeouts.
#![deny(unsafe_code)]
// audited exceptions, each with its SAFETY comment: loading compiled plugins from the cache (plugin/cache), the thread CPU clock (plugin/mod.rs), and reading `select`'s answer with a bound (plugin/bindings.rs)
#![warn(missing_docs)]

pub mod config;
mod control;
pub mod demo;
mod error;
mod http;
mod listen;
pub mod logging;
mod metrics;
mod plugin;
mod stall;
mod state;
mod stats;
pub mod tools;
mod upstream;

use std::future::Future;

pub use config::Config;
pub use control::reload::Handle;
pub use error::{ConfigError, Error, PluginError};
pub use listen::Server;
pub use metrics::{Metrics, MetricsSnapshot};
pub use plugin::{Answer, MAX_ANSWER, Verdict};

/// Serves `config` until `shutdown` completes, then drains in-flight requests.
/// SIGHUP reloads the configuration file. For embedding and tests; the
/// `veer` binary uses [`serve`].
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    run_bound(Server::bind(config)?, shutdown).await
}

/// [`run`] on a bound server.
async fn run_bound(server: Server, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    let handle = server.handle();
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(Error::Signal)?;
    let reloads = tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the configuration");
            handle.reload();
        }
    });
    let result = server.run(shutdown).await;
    reloads.abort();
    result
}

/// Serves `config` until SIGTERM or SIGINT, then drains (see [`Server::run`]);
/// a second SIGTERM or SIGINT exits at once, with requests still in flight.
pub async fn serve(config: Config) -> Result<(), Error> {
    let signals = listen::signal::Signals::install()?;
    until_second_signal(run(config, first_signal(signals.first)), signals.second).await
}

/// [`serve`], after taking the listening sockets over from the Veer process
/// waiting at `from` (its `server.upgrade_socket`): a zero-downtime binary
/// upgrade. That process stops accepting, drains and exits once this one
/// serves; if this one fails first, it serves on (see [`Server::take_over`]).
pub async fn take_over(config: Config, from: &std::path::Path) -> Result<(), Error> {
    let signals = listen::signal::Signals::install()?;
    let serving = async {
        let server = Server::take_over(config, from).await?;
        run_bound(server, first_signal(signals.first)).await
    };
    until_second_signal(serving, signals.second).await
}

async fn first_signal(first: tokio::sync::oneshot::Receiver<()>) {
    let _ = first.await;
}

/// Runs `work` unless the second shutdown signal comes first.
pub(crate) async fn until_second_signal(
    work: impl Future<Output = Result<(), Error>>,
    second: tokio::sync::oneshot::Receiver<()>,
) -> Result<(), Error> {
    tokio::select! {
        result = work => result,
        Ok(()) = second => Err(Error::Forced),
    }
}

/// What `veer check` reports about a valid configuration.
#[derive(Debug)]
pub struct CheckReport {
    /// One line for the HTTPS listener (its certificates' names), then one
    /// per pool: name, strategy (plugin name and version), backends.
    pub pools: Vec<String>,
}

/// Validates `config` fully without serving: loads its plugins and initialises
/// each pool's strategy with its configuration, as a start would.
pub fn check(config: &Config) -> Result<CheckReport, Error> {
    let mut filled;
    let config = match config.pools.iter().any(|p| p.discovery.is_some()) {
        false => config,
        true => {
            filled = config.clone();
            control::discovery::fill(&mut filled, &[])?;
            &filled
        }
    };
    let runtime = plugin::Runtime::with_cache(
        config.plugins.cache_dir.clone(),
        config.plugins.cache_max_bytes,
    )?;
    let mut registry = control::registry::Registry::new(runtime, &config.plugins)?;
    let state = registry.build_state(config, &std::sync::Arc::new(Metrics::default()), None)?;
    let mut lines: Vec<String> = Vec::new();
    if let Some(tls) = &config.tls {
        // The certificates load and make a TLS configuration (the ACME one,
        // if not issued yet, is a temporary self-signed stand-in).
        let acme = tls
            .acme
            .as_ref()
            .map(|a| (a.cert_file(), a.key_file(), a.domains.clone()));
        let certs = std::sync::Arc::new(
            listen::tls::CertStore::load(&tls.certificates, acme)
                .map_err(|reason| ConfigError::at("tls.certificates", reason))?,
        );
        listen::tls::server_config(tls, certs.clone())
            .map_err(|reason| ConfigError::at("tls", reason))?;
        lines.push(format!(
            "https {}: certificates for {}",
            tls.listen,
            certs.names().join(", ")
        ));
    }
    let pools = state
        .pools
        .iter()
        .map(|p| {
            let plugin = p.balancer.plugin();
            format!(
                "pool {}: strategy {} {} ({}, {}), {} backend(s){}",
                p.config.name,
                plugin.name(),
                plugin.version(),
                plugin.world(),
                plugin.source(),
                p.config.backends.len(),
                match &p.config.discovery {
                    Some(d) => format!(" found by {}", d.describe()),
                    None => String::new(),
                }
            )
        })
        .collect::<Vec<String>>();
    lines.extend(pools);
    Ok(CheckReport { pools: lines })
}

/// What `veer plugin check` reports about a plugin file.
#[derive(Debug)]
pub struct PluginReport {
    /// The name it gives itself.
    pub name: String,
    /// The version it gives itself.
    pub version: String,
    /// The world it was built for, e.g. `veer:balancer@0.2.0`.
    pub world: &'static str,
    /// The optional host calls it asks for (0.3.0 `capabilities`).
    pub asks: Vec<&'static str>,
    /// What `init` said about the configuration: `Err` is its refusal.
    pub init: Result<(), String>,
    /// `select` on synthetic requests (after `set-backends` with
    /// [`CHECK_BACKENDS`]), when `init` accepted the configuration.
    pub selects: Vec<SelectProbe>,
}

/// The backends `veer plugin check` gives a plugin: address, weight, labels.
pub const CHECK_BACKENDS: [(&str, u32, &str); 4] = [
    ("10.0.0.1:80", 1, "a"),
    ("10.0.0.2:80", 1, "a"),
    ("10.0.0.3:80", 2, "b"),
    ("10.0.0.4:80", 1, "b"),
];

/// One synthetic `select` of `veer plugin check`, under the real limits.
#[derive(Debug)]
pub struct SelectProbe {
    /// The request, as `METHOD path` and its headers.
    pub request: String,
    /// What it answered (ids as far as the host reads them, or a
    /// rejection), or how the call failed (trap, deadline).
    pub answer: Result<plugin::Verdict, String>,
    /// Wall time of the call.
    pub took: std::time::Duration,
    /// Fuel it burnt (≈ Wasm instructions).
    pub fuel: u64,
    /// Whether the proxy would count it as slow (over `slow_call_us`, with
    /// the fuel to show for it) or as a host-call storm.
    pub strike: Option<String>,
}

/// A synthetic request: method, path (with query), headers.
type CheckRequest = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);

/// The requests `veer plugin check` sends to `select`.
const CHECK_REQUESTS: [CheckRequest; 4] = [
    ("GET", "/", &[]),
    (
        "GET",
        "/cart?user=42",
        &[("x-user", "alice"), ("cookie", "session=abc123")],
    ),
    (
        "POST",
        "/api/orders",
        &[("x-version", "v2"), ("x-zone", "b")],
    ),
    ("GET", "/static/logo.png", &[("x-canary", "1")]),
];

/// Validates a plugin file offline: loads it (is it a component of a world
/// this Veer serves?), then instantiates it and runs `init` with
/// `config_json`. Errors are the file's: unreadable, not a component, wrong
/// world, or a trap.
pub fn check_plugin(path: &std::path::Path, config_json: &str) -> Result<PluginReport, Error> {
    let runtime = plugin::Runtime::new(None)?;
    let bytes = std::fs::read(path).map_err(|e| PluginError::Invalid {
        origin: path.display().to_string(),
        reason: format!("could not read it: {e}"),
    })?;
    let limits = config::PluginsSection::default().limits();
    let plugin = runtime.load(&path.display().to_string(), &bytes, limits)?;
    // An instance with live stats for the synthetic backends.
    let new_instance = || {
        let stats = CHECK_BACKENDS.iter().map(|_| Default::default()).collect();
        plugin::Instance::new(&plugin, stats, limits, 1)
    };
    let mut instance = new_instance()?;
    let trapped = |call, e: plugin::CallError| PluginError::Trapped {
        plugin: plugin.name().to_string(),
        call,
        reason: e.to_string(),
    };
    let init = instance.init(config_json).map_err(|e| trapped("init", e))?;
    let mut selects = Vec::new();
    if init.is_ok() {
        let backends: Vec<plugin::BackendInfo> = CHECK_BACKENDS
            .iter()
            .enumerate()
            .map(|(id, (address, weight, zone))| plugin::BackendInfo {
                id: id as u32,
                address: address.to_string(),
                weight: *weight,
                labels: vec![("zone".to_string(), zone.to_string())],
            })
            .collect();
        instance
            .set_backends(&backends)
            .map_err(|e| trapped("set-backends", e))?;
        for (method, path, headers) in CHECK_REQUESTS {
            selects.push(probe_select(&mut instance, limits, method, path, headers));
            if selects.last().is_some_and(|p| p.answer.is_err()) {
                // A failed call leaves the instance unusable: start afresh.
                instance = new_instance()?;
                let _ = instance.init(config_json);
                let _ = instance.set_backends(&backends);
            }
        }
    }
    Ok(PluginReport {
        name: plugin.name().to_string(),
        version: plugin.version().to_string(),
        world: plugin.world(),
        // Older worlds have no capabilities to ask for.
        asks: plugin.asked().map(|c| c.names()).unwrap_or_default(),
        init,
        selects,
    })
}

/// One `select` of `veer plugin check`.
fn probe_select(
    instance: &mut plugin::Instance,
    limits: plugin::Limits,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> SelectProbe {
    let mut scope = plugin::RequestScope {
        uri: path.parse().unwrap_or_default(),
        ..Default::default()
    };
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            ::http::HeaderName::from_bytes(name.as_bytes()),
            ::http::HeaderValue::from_str(value),
        ) {
            scope.headers.append(name, value);
        }
    }
    let method = ::http::Method::from_bytes(method.as_bytes()).unwrap_or_default();
    let only_path = path.split('?').next().unwrap_or(path);
    let started = std::time::Instant::now();
    let call = plugin::Call {
        method: &method,
        host: "example.com",
        path: only_path,
        client: std::net::Ipv4Addr::new(192, 0, 2, 7).into(),
        tls: None,
    };
    let answer = instance.select(&call, &mut scope);
    let took = started.elapsed();
    let fuel = instance.fuel_used();
    let strike = if instance.stormed() {
        Some(format!("more than {} host calls", plugin::MAX_HOST_CALLS))
    } else if plugin::slow_by_fuel(limits.slow_call, took, fuel) {
        Some(format!(
            "slower than plugins.slow_call_us ({} µs)",
            limits.slow_call.as_micros()
        ))
    } else {
        None
    };
    let request = std::iter::once(format!("{method} {path}"))
        .chain(headers.iter().map(|(n, v)| format!("{n}: {v}")))
        .collect::<Vec<_>>()
        .join(", ");
    SelectProbe {
        request,
        answer: answer.map_err(|e| e.to_string()),
        took,
        fuel,
        strike,
    }
}

/// Internals the benchmarks (`bench/`) and a few tests drive directly. Not a
/// stable API: nothing outside this repository should use it.
#[doc(hidden)]
pub mod internals {
    pub use crate::config::{PluginLimits, PluginSettings};
    pub use crate::control::registry::Registry;
    pub use crate::metrics::Metrics;
    pub use crate::plugin::balancer::{Balancer, BalancerSettings};
    pub use crate::plugin::{BackendInfo, Call, Instance, Limits, RequestScope, Runtime};
    pub use crate::stats::BackendStats;
}
