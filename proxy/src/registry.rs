//! Plugins by name: the built-ins embedded in the binary (compiled on first
//! use, so unused ones cost nothing) and the files the configuration loads.
//! Also turns a validated [`Config`] into the run-time [`State`], checking
//! every pool's strategy exists and accepts its configuration.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::balancer::{Balancer, BalancerSettings};
use crate::config::{Config, PluginSettings};
use crate::error::{ConfigError, PluginError};
use crate::proxy::{Pool, State};
use crate::stats::{BackendStats, Metrics};
use crate::wasm::{self, BackendInfo, Plugin};

mod builtin {
    include!(concat!(env!("OUT_DIR"), "/builtin_plugins.rs"));
}

/// Names of the built-in strategies, sorted.
pub fn builtin_names() -> impl Iterator<Item = &'static str> {
    builtin::BUILTIN_PLUGINS.iter().map(|(name, _)| *name)
}

/// The plugins known to one configuration.
pub struct Registry {
    runtime: wasm::Runtime,
    limits: wasm::Limits,
    loaded: BTreeMap<String, Arc<Plugin>>,
}

impl Registry {
    /// Loads the plugin files named in `settings` (errors name `plugins.load[i]`).
    pub fn new(runtime: wasm::Runtime, settings: &PluginSettings) -> Result<Registry, ConfigError> {
        let mut registry = Registry {
            runtime,
            limits: settings.limits,
            loaded: BTreeMap::new(),
        };
        for (i, path) in settings.load.iter().enumerate() {
            let key = format!("plugins.load[{i}]");
            let bytes = std::fs::read(path).map_err(|e| {
                ConfigError::at(&key, format!("could not read {}: {e}", path.display()))
            })?;
            let plugin = registry
                .runtime
                .load(&path.display().to_string(), &bytes, settings.limits)
                .map_err(|e| ConfigError::at(&key, e.to_string()))?;
            let name = plugin.name().to_string();
            if builtin_names().any(|b| b == name) && !settings.allow_override_builtin {
                return Err(ConfigError::at(
                    &key,
                    format!(
                        "{} names itself {name:?}, which is a built-in; rename the plugin or set plugins.allow_override_builtin = true",
                        path.display()
                    ),
                ));
            }
            if let Some(other) = registry.loaded.get(&name) {
                return Err(ConfigError::at(
                    &key,
                    format!(
                        "{} names itself {name:?}, as {} already does",
                        path.display(),
                        other.source()
                    ),
                ));
            }
            tracing::info!(plugin = %name, version = plugin.version(), file = %path.display(), "plugin loaded");
            registry.loaded.insert(name, Arc::new(plugin));
        }
        Ok(registry)
    }

    /// The plugin named `name`, compiling a built-in on first use.
    pub fn get(&mut self, name: &str) -> Result<Option<Arc<Plugin>>, PluginError> {
        if let Some(plugin) = self.loaded.get(name) {
            return Ok(Some(plugin.clone()));
        }
        let Some((_, bytes)) = builtin::BUILTIN_PLUGINS.iter().find(|(n, _)| *n == name) else {
            return Ok(None);
        };
        let plugin = self
            .runtime
            .load(&format!("builtin:{name}"), bytes, self.limits)?;
        if plugin.name() != name {
            return Err(PluginError::Invalid {
                origin: format!("builtin:{name}"),
                reason: format!("it names itself {:?}", plugin.name()),
            });
        }
        let plugin = Arc::new(plugin);
        self.loaded.insert(name.to_string(), plugin.clone());
        Ok(Some(plugin))
    }

    /// Every name a pool may use.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = builtin_names()
            .map(str::to_string)
            .chain(self.loaded.keys().cloned())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Builds routes and pools: every pool's plugin is found and initialised
    /// with its configuration once (errors name the pool's keys).
    pub fn build_state(
        &mut self,
        config: &Config,
        metrics: &Arc<Metrics>,
    ) -> Result<State, ConfigError> {
        let mut pools = Vec::with_capacity(config.pools.len());
        for pool in &config.pools {
            let key = format!("pools.{}", pool.name);
            let plugin = self
                .get(&pool.strategy)
                .map_err(|e| ConfigError::at(format!("{key}.strategy"), e.to_string()))?
                .ok_or_else(|| {
                    ConfigError::at(
                        format!("{key}.strategy"),
                        format!(
                            "no plugin named {:?}; available: {}",
                            pool.strategy,
                            self.names().join(", ")
                        ),
                    )
                })?;
            let stats: Arc<[Arc<BackendStats>]> =
                pool.backends.iter().map(|_| Arc::default()).collect();
            let backends = pool
                .backends
                .iter()
                .enumerate()
                .map(|(id, b)| BackendInfo {
                    id: id as u32,
                    address: b.address.clone(),
                    weight: b.weight,
                    labels: b.labels.clone(),
                })
                .collect();
            let settings = BalancerSettings {
                pool: &pool.name,
                config_json: &pool.strategy_config,
                backends,
                stats: stats.clone(),
                limits: config.plugins.limits,
                failures_before_backoff: config.plugins.failures_before_backoff,
                seed: config.plugins.random_seed,
            };
            let balancer =
                Balancer::new(plugin, settings, metrics.clone()).map_err(|e| match e {
                    PluginError::Refused { .. } => {
                        ConfigError::at(format!("{key}.strategy_config"), e.to_string())
                    }
                    other => ConfigError::at(format!("{key}.strategy"), other.to_string()),
                })?;
            pools.push(Arc::new(Pool {
                config: pool.clone(),
                stats,
                balancer,
            }));
        }
        Ok(State {
            routes: config.routes.clone(),
            pools,
        })
    }
}
