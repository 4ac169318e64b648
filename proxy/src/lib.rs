//! Veer: a reverse proxy whose backend choice is made by WebAssembly plugins.
//!
//! # Layout
//!
//! - [`config`]: the TOML file as documented serde structs, validated into a
//!   run-time [`Config`]; errors name the key path.
//! - [`server`]: listening, one worker thread per core, tracked tasks and
//!   graceful shutdown.
//! - [`proxy`]: the request path: route, select, forward, stream back.
//! - [`upstream`]: keep-alive connections to backends (a pool per worker) and
//!   sending that hands an unsent request back for the next candidate.
//! - [`headers`]: hop-by-hop removal and `X-Forwarded-*`.
//! - [`balancer`]: drives one pool's strategy plugin: an instance per worker,
//!   answer checks, failure counting, backoff and the round-robin fallback.
//! - [`wasm`]: the only module that touches wasmtime: `bindgen!` of the
//!   `veer:balancer@0.1.0` and `@0.2.0` worlds, engine, epoch deadlines,
//!   memory caps and the host functions plugins import.
//! - [`registry`]: plugins by name (plugin folder, configured files, embedded
//!   built-ins) and building pools from a configuration.
//! - [`reload`]: live changes: the plugin folder watched, configuration
//!   reloads, each swapped in atomically without dropping a request.
//! - [`stats`]: live per-backend counters and health, process counters.
//! - [`demo`]: `veer demo`, three in-process backends behind the proxy.
//! - [`error`]: typed errors.
//!
//! Strategies only *order* candidates; the host owns health, counters,
//! retries and timeouts.
#![deny(unsafe_code)] // one audited exception: loading compiled plugins from the cache (wasm.rs)
#![warn(missing_docs)]

pub mod balancer;
pub mod config;
pub mod demo;
pub mod error;
pub mod headers;
pub mod proxy;
pub mod registry;
pub mod reload;
pub mod server;
pub mod stats;
pub mod upstream;
pub mod wasm;

use std::future::Future;

pub use config::Config;
pub use error::{ConfigError, Error, PluginError};
pub use reload::Handle;
pub use server::Server;
pub use stats::{Metrics, MetricsSnapshot};

/// Serves `config` until `shutdown` completes, then drains in-flight requests.
/// SIGHUP reloads the configuration file.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    let server = Server::bind(config)?;
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

/// What `veer check` reports about a valid configuration.
#[derive(Debug)]
pub struct CheckReport {
    /// One line per pool: name, strategy (plugin name and version), backends.
    pub pools: Vec<String>,
}

/// Validates `config` fully without serving: loads its plugins and initialises
/// each pool's strategy with its configuration, as a start would.
pub fn check(config: &Config) -> Result<CheckReport, Error> {
    let runtime = wasm::Runtime::new(config.plugins.cache_dir.clone())?;
    let mut registry = registry::Registry::new(runtime, &config.plugins)?;
    let state = registry.build_state(config, &std::sync::Arc::new(Metrics::default()), None)?;
    let pools = state
        .pools
        .iter()
        .map(|p| {
            let plugin = p.balancer.plugin();
            format!(
                "pool {}: strategy {} {} ({}, {}), {} backend(s)",
                p.config.name,
                plugin.name(),
                plugin.version(),
                plugin.world(),
                plugin.source(),
                p.config.backends.len()
            )
        })
        .collect();
    Ok(CheckReport { pools })
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
    /// What `init` said about the configuration: `Err` is its refusal.
    pub init: Result<(), String>,
}

/// Validates a plugin file offline: loads it (is it a component of a world
/// this Veer serves?), then instantiates it and runs `init` with
/// `config_json`. Errors are the file's: unreadable, not a component, wrong
/// world, or a trap.
pub fn check_plugin(path: &std::path::Path, config_json: &str) -> Result<PluginReport, Error> {
    let runtime = wasm::Runtime::new(None)?;
    let bytes = std::fs::read(path).map_err(|e| PluginError::Invalid {
        origin: path.display().to_string(),
        reason: format!("could not read it: {e}"),
    })?;
    let limits = config::PluginsSection::default().limits();
    let plugin = runtime.load(&path.display().to_string(), &bytes, limits)?;
    let mut instance = wasm::Instance::new(&plugin, std::sync::Arc::from([]), limits, 1)?;
    let init = instance
        .init(config_json)
        .map_err(|e| PluginError::Trapped {
            plugin: plugin.name().to_string(),
            call: "init",
            reason: e.to_string(),
        })?;
    Ok(PluginReport {
        name: plugin.name().to_string(),
        version: plugin.version().to_string(),
        world: plugin.world(),
        init,
    })
}
