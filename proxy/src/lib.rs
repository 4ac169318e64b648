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
//! - [`registry`]: plugins by name (embedded built-ins, files) and building
//!   pools from a configuration.
//! - [`stats`]: live per-backend counters and health, process counters.
//! - [`demo`]: `veer demo`, three in-process backends behind the proxy.
//! - [`error`]: typed errors.
//!
//! Strategies only *order* candidates; the host owns health, counters,
//! retries and timeouts.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod balancer;
pub mod config;
pub mod demo;
pub mod error;
pub mod headers;
pub mod proxy;
pub mod registry;
pub mod server;
pub mod stats;
pub mod upstream;
pub mod wasm;

use std::future::Future;

pub use config::Config;
pub use error::{ConfigError, Error, PluginError};
pub use server::Server;
pub use stats::{Metrics, MetricsSnapshot};

/// Serves `config` until `shutdown` completes, then drains in-flight requests.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    Server::bind(config)?.run(shutdown).await
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
    let runtime = wasm::Runtime::new()?;
    let mut registry = registry::Registry::new(runtime, &config.plugins)?;
    let state = registry.build_state(config, &std::sync::Arc::new(Metrics::default()))?;
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
