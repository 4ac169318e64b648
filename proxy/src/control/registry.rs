//! Plugins by name, from three sources (the first that has a name wins):
//!
//! 1. the watched plugin folder (`plugins.dir`), which changes at run time;
//! 2. the files the configuration loads (`plugins.load`);
//! 3. the built-ins embedded in the binary (compiled on first use).
//!
//! A folder or file plugin may only take a built-in's name when
//! `plugins.allow_override_builtin` is set. The registry also turns a
//! validated [`Config`] into the run-time [`State`], checking every pool's
//! strategy exists and accepts its configuration, and reusing what an earlier
//! generation already built (unchanged pools, backend stats).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{Config, PluginSettings};
use crate::error::{ConfigError, PluginError};
use crate::http::RetryBudget;
use crate::http::observe::PoolLog;
use crate::metrics::Metrics;
use crate::metrics::traffic::{PoolTraffic, RouteTraffic};
use crate::plugin::balancer::{Balancer, BalancerSettings};
use crate::plugin::{self, BackendInfo, Plugin};
use crate::state::{Pool, State};
use crate::stats::BackendStats;
use crate::upstream::TlsClient;

mod builtin {
    include!(concat!(env!("OUT_DIR"), "/builtin_plugins.rs"));
}

/// Names of the built-in strategies, sorted.
pub fn builtin_names() -> impl Iterator<Item = &'static str> {
    builtin::BUILTIN_PLUGINS.iter().map(|(name, _)| *name)
}

fn is_builtin(name: &str) -> bool {
    builtin_names().any(|b| b == name)
}

/// The plugins known to a running proxy (or a `veer check`).
pub struct Registry {
    runtime: plugin::Runtime,
    settings: PluginSettings,
    builtins: BTreeMap<String, Arc<Plugin>>,
    loaded: BTreeMap<String, Arc<Plugin>>,
    folder: BTreeMap<PathBuf, Arc<Plugin>>,
}

impl Registry {
    /// Loads the files the configuration names (an error names
    /// `plugins.load[i]`), then every `.wasm` in the plugin folder (a bad
    /// folder file is logged and skipped, as it would be at run time).
    pub fn new(
        runtime: plugin::Runtime,
        settings: &PluginSettings,
    ) -> Result<Registry, ConfigError> {
        let mut registry = Registry {
            runtime,
            settings: settings.clone(),
            builtins: BTreeMap::new(),
            loaded: BTreeMap::new(),
            folder: BTreeMap::new(),
        };
        registry.load_files(settings)?;
        if let Some(dir) = &settings.dir {
            registry.scan_folder(dir);
        }
        Ok(registry)
    }

    /// The Wasm runtime plugins are loaded into.
    pub fn runtime(&self) -> &plugin::Runtime {
        &self.runtime
    }

    fn load_files(&mut self, settings: &PluginSettings) -> Result<(), ConfigError> {
        let mut loaded = BTreeMap::new();
        for (i, path) in settings.load.iter().enumerate() {
            let key = format!("plugins.load[{i}]");
            let plugin = self.load_file(path).map_err(|e| ConfigError::at(&key, e))?;
            let name = plugin.name().to_string();
            if is_builtin(&name) && !settings.allow_override_builtin {
                return Err(ConfigError::at(
                    &key,
                    format!(
                        "{} names itself {name:?}, which is a built-in; rename the plugin or set plugins.allow_override_builtin = true",
                        path.display()
                    ),
                ));
            }
            if let Some(other) = loaded
                .get(&name)
                .map(|p: &Arc<Plugin>| p.source().to_string())
            {
                return Err(ConfigError::at(
                    &key,
                    format!(
                        "{} names itself {name:?}, as {other} already does",
                        path.display()
                    ),
                ));
            }
            tracing::info!(plugin = %name, version = plugin.version(), file = %path.display(), "plugin loaded");
            loaded.insert(name, Arc::new(plugin));
        }
        self.loaded = loaded;
        Ok(())
    }

    /// Reads and loads one plugin file.
    pub fn load_file(&self, path: &Path) -> Result<Plugin, String> {
        let bytes =
            std::fs::read(path).map_err(|e| format!("could not read {}: {e}", path.display()))?;
        self.runtime
            .load(&path.display().to_string(), &bytes, self.settings.limits)
            .map_err(|e| e.to_string())
    }

    fn scan_folder(&mut self, dir: &Path) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            tracing::info!(dir = %dir.display(), "plugin folder not found; create it to drop plugins in");
            return;
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| is_plugin_file(p))
            .collect();
        paths.sort();
        for path in paths {
            match self
                .load_file(&path)
                .and_then(|plugin| self.check_folder_name(&path, &plugin).map(|()| plugin))
            {
                Ok(plugin) => {
                    tracing::info!(plugin = plugin.name(), version = plugin.version(), file = %path.display(), "plugin loaded from the folder");
                    self.folder
                        .insert(path, Arc::new(plugin.into_folder_plugin()));
                }
                Err(reason) => tracing::warn!(file = %path.display(), "plugin refused: {reason}"),
            }
        }
    }

    /// Whether a folder plugin at `path` may take the name it gives itself.
    pub fn check_folder_name(&self, path: &Path, plugin: &Plugin) -> Result<(), String> {
        let name = plugin.name();
        if is_builtin(name) && !self.settings.allow_override_builtin {
            return Err(format!(
                "it names itself {name:?}, which is a built-in; rename it or set plugins.allow_override_builtin = true"
            ));
        }
        if let Some(other) = self
            .folder
            .iter()
            .find(|(p, q)| p.as_path() != path && q.name() == name)
        {
            return Err(format!(
                "it names itself {name:?}, as {} already does",
                other.0.display()
            ));
        }
        Ok(())
    }

    /// Puts a folder plugin in place (replacing what `path` held); returns
    /// the previous one, to put back if the new one is refused.
    pub fn put_folder(&mut self, path: &Path, plugin: Arc<Plugin>) -> Option<Arc<Plugin>> {
        self.folder.insert(path.to_path_buf(), plugin)
    }

    /// Takes a folder plugin out (its file was deleted); returns it.
    pub fn remove_folder(&mut self, path: &Path) -> Option<Arc<Plugin>> {
        self.folder.remove(path)
    }

    /// Applies new plugin settings (limits, `load` files) from a reloaded
    /// configuration; the folder and compiled built-ins stay.
    pub fn reconfigure(&mut self, settings: &PluginSettings) -> Result<(), ConfigError> {
        let previous = std::mem::replace(&mut self.settings, settings.clone());
        if let Err(e) = self.load_files(settings) {
            self.settings = previous;
            return Err(e);
        }
        Ok(())
    }

    /// The plugin named `name`, compiling a built-in on first use.
    pub fn resolve(&mut self, name: &str) -> Result<Option<Arc<Plugin>>, PluginError> {
        if let Some(plugin) = self.folder.values().find(|p| p.name() == name) {
            return Ok(Some(plugin.clone()));
        }
        if let Some(plugin) = self.loaded.get(name).or_else(|| self.builtins.get(name)) {
            return Ok(Some(plugin.clone()));
        }
        let Some((_, bytes)) = builtin::BUILTIN_PLUGINS.iter().find(|(n, _)| *n == name) else {
            return Ok(None);
        };
        let plugin = self
            .runtime
            .load(&format!("builtin:{name}"), bytes, self.settings.limits)?;
        if plugin.name() != name {
            return Err(PluginError::Invalid {
                origin: format!("builtin:{name}"),
                reason: format!("it names itself {:?}", plugin.name()),
            });
        }
        let plugin = Arc::new(plugin);
        self.builtins.insert(name.to_string(), plugin.clone());
        Ok(Some(plugin))
    }

    /// Every name a pool may use.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = builtin_names()
            .map(str::to_string)
            .chain(self.loaded.keys().cloned())
            .chain(self.folder.values().map(|p| p.name().to_string()))
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Builds routes and pools. Each pool's plugin is found and initialised
    /// with its configuration (errors name the pool's keys). From `previous`
    /// it reuses pools whose configuration and plugin are unchanged (their
    /// warm instances with them) and the live stats of backends that stay.
    pub fn build_state(
        &mut self,
        config: &Config,
        metrics: &Arc<Metrics>,
        previous: Option<&State>,
    ) -> Result<State, ConfigError> {
        let mut pools = Vec::with_capacity(config.pools.len());
        for pool in &config.pools {
            let key = format!("pools.{}", pool.name);
            let plugin = self
                .resolve(&pool.strategy)
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
            let before = previous.and_then(|s| s.pools.iter().find(|p| p.config.name == pool.name));
            if let Some(before) =
                before.filter(|b| b.config == *pool && Arc::ptr_eq(b.balancer.plugin(), &plugin))
            {
                pools.push(before.clone());
                continue;
            }
            // Backends that stay keep their counters and health.
            let stats: Arc<[Arc<BackendStats>]> = pool
                .backends
                .iter()
                .map(|b| {
                    before
                        .and_then(|p| {
                            p.config
                                .backends
                                .iter()
                                .position(|o| o.addr == b.addr)
                                .map(|i| p.stats[i].clone())
                        })
                        .unwrap_or_default()
                })
                .collect();
            if pool.health.is_none() {
                // Checks taken off by this reload: their last verdict goes.
                stats.iter().for_each(|s| s.forget_checks());
            }
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
                instances: config.server.workers,
            };
            let balancer =
                Balancer::new(plugin, settings, metrics.clone()).map_err(|e| match e {
                    PluginError::Refused { .. } => {
                        ConfigError::at(format!("{key}.strategy_config"), e.to_string())
                    }
                    other => ConfigError::at(format!("{key}.strategy"), other.to_string()),
                })?;
            let tls = pool
                .tls
                .as_ref()
                .map(|tls| TlsClient::new(tls, &pool.backends, pool.protocol))
                .transpose()
                .map_err(|reason| ConfigError::at(format!("{key}.tls"), reason))?;
            let log = PoolLog::new(
                &pool.name,
                pool.backends.iter().map(|b| b.address.as_str()),
                balancer.plugin(),
            );
            pools.push(Arc::new(Pool {
                log,
                config: pool.clone(),
                stats,
                balancer,
                tls,
                budget: RetryBudget::new(&pool.retry, config.server.workers),
                traffic: PoolTraffic::new(pool.backends.len()),
            }));
        }
        Ok(State {
            server: config.server.clone(),
            routes: config.routes.clone(),
            pools,
            traffic: RouteTraffic::new(config.routes.len()),
            access_log: config.access_log.clone(),
            trace: config.trace.clone(),
        })
    }
}

/// Whether `path` is a plugin file the folder watcher takes: `*.wasm`, not
/// hidden (editors and copy tools write hidden temporaries first).
pub fn is_plugin_file(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "wasm")
        && path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| !n.starts_with('.'))
}
