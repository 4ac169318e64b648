//! Plugins by name, from three sources (the first that has a name wins):
//!
//! 1. the watched plugin folder (`plugins.dir`), which changes at run time
//!    (read through [`folder`](crate::control::folder));
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
use crate::control::folder::{self, Change};
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

/// Plugins by name, as `plugins.load` gives them.
pub type Loaded = BTreeMap<String, Arc<Plugin>>;

/// The folder plugins in use, by file.
pub type FolderPlugins = BTreeMap<PathBuf, Arc<Plugin>>;

/// The plugins known to a running proxy (or a `veer check`).
pub struct Registry {
    runtime: plugin::Runtime,
    settings: PluginSettings,
    builtins: BTreeMap<String, Arc<Plugin>>,
    loaded: Loaded,
    folder: FolderPlugins,
    /// Folder files refused, by path: the hash of what was refused, the read
    /// error, or [`folder::GONE`]. The same thing is not refused twice; all
    /// are tried again when the configuration changes.
    refused: BTreeMap<PathBuf, String>,
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
            refused: BTreeMap::new(),
        };
        registry.loaded = Registry::read_load_files(&registry.runtime, settings)?;
        if let Some(dir) = &settings.dir {
            registry.scan_folder(dir);
        }
        Ok(registry)
    }

    /// The Wasm runtime plugins are loaded into.
    pub fn runtime(&self) -> &plugin::Runtime {
        &self.runtime
    }

    /// Loads the files `settings.load` names (an error names
    /// `plugins.load[i]`). It reads and compiles: the control loop runs it on
    /// a blocking thread.
    pub fn read_load_files(
        runtime: &plugin::Runtime,
        settings: &PluginSettings,
    ) -> Result<Loaded, ConfigError> {
        let mut loaded = BTreeMap::new();
        for (i, path) in settings.load.iter().enumerate() {
            let key = format!("plugins.load[{i}]");
            let plugin =
                load_file(runtime, settings, path).map_err(|e| ConfigError::at(&key, e))?;
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
        Ok(loaded)
    }

    /// Reads and loads one plugin file (as `plugins.load` would).
    pub fn load_file(&self, path: &Path) -> Result<Plugin, String> {
        load_file(&self.runtime, &self.settings, path)
    }

    /// Loads the folder's plugins at startup. Cannot hang: files are read
    /// through [`folder::read_plugin_file`]. A bad file is logged, remembered
    /// and skipped, as it would be at run time.
    fn scan_folder(&mut self, dir: &Path) {
        if !dir.is_dir() {
            tracing::info!(dir = %dir.display(), "plugin folder not found; create it to drop plugins in");
            return;
        }
        let none = BTreeMap::new();
        let look = folder::Look {
            dir,
            loaded: &none,
            refused: &none,
            runtime: &self.runtime,
            limits: self.settings.limits,
            max_file_bytes: self.settings.max_file_bytes,
        };
        let found = match look.run() {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), "cannot list the plugin folder: {e}");
                return;
            }
        };
        for (path, what) in found {
            let refused = match what {
                folder::Found::New(plugin) => match self.check_folder_name(&path, &plugin) {
                    Ok(()) => {
                        tracing::info!(plugin = plugin.name(), version = plugin.version(), file = %path.display(), "plugin loaded from the folder");
                        self.folder.insert(path, plugin);
                        continue;
                    }
                    Err(reason) => (plugin.hash().to_string(), reason),
                },
                folder::Found::Bad { record, reason } => (record, reason),
                folder::Found::Loaded | folder::Found::Refused => continue,
            };
            tracing::warn!(file = %path.display(), "plugin refused: {}", refused.1);
            self.refused.insert(path, refused.0);
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

    /// Applies changes to the folder plugins, all or none: a plugin put in
    /// must not take a built-in's name (unless allowed) or another file's.
    /// Returns what was there before, for [`Registry::restore_folder`].
    pub fn apply_folder(&mut self, changes: &[Change]) -> Result<FolderPlugins, String> {
        let before = self.folder.clone();
        for change in changes {
            match change {
                Change::Put(path, plugin) => self.folder.insert(path.clone(), plugin.clone()),
                Change::Remove(path) => self.folder.remove(path),
            };
        }
        for change in changes {
            if let Change::Put(path, plugin) = change
                && let Err(reason) = self.check_folder_name(path, plugin)
            {
                self.folder = before;
                return Err(match changes.len() {
                    1 => reason,
                    _ => format!("{}: {reason}", path.display()),
                });
            }
        }
        Ok(before)
    }

    /// Puts back the folder plugins [`Registry::apply_folder`] returned.
    pub fn restore_folder(&mut self, before: FolderPlugins) {
        self.folder = before;
    }

    /// The hash of each folder plugin in use, by file.
    pub fn folder_hashes(&self) -> BTreeMap<PathBuf, String> {
        self.folder
            .iter()
            .map(|(path, plugin)| (path.clone(), plugin.hash().to_string()))
            .collect()
    }

    /// The folder files refused (see [`Registry::note_refused`]).
    pub fn refused(&self) -> &BTreeMap<PathBuf, String> {
        &self.refused
    }

    /// Remembers that `record` (a hash, a read error, or [`folder::GONE`])
    /// was refused from `path`; false if that was known already.
    pub fn note_refused(&mut self, path: &Path, record: String) -> bool {
        self.refused.insert(path.to_path_buf(), record.clone()) != Some(record)
    }

    /// Forgets a refusal: the file is back to what is in use, or gone.
    pub fn forget_refused(&mut self, path: &Path) {
        self.refused.remove(path);
    }

    /// Applies new plugin settings (limits, `load` files) from a reloaded
    /// configuration; the folder and compiled built-ins stay.
    pub fn reconfigure(&mut self, settings: &PluginSettings) -> Result<(), ConfigError> {
        let loaded = Registry::read_load_files(&self.runtime, settings)?;
        self.swap_settings(settings.clone(), loaded);
        Ok(())
    }

    /// Puts new plugin settings and the `load` files they give (see
    /// [`Registry::read_load_files`]) in place; returns the previous ones, to
    /// put back if the configuration is refused.
    pub fn swap_settings(
        &mut self,
        settings: PluginSettings,
        loaded: Loaded,
    ) -> (PluginSettings, Loaded) {
        (
            std::mem::replace(&mut self.settings, settings),
            std::mem::replace(&mut self.loaded, loaded),
        )
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
            // The same settings and plugin: the pool stays as it is (a pool
            // rolled back from this plugin stays rolled back).
            if let Some(before) = before
                .filter(|b| b.config == *pool && Arc::ptr_eq(b.balancer.own_plugin(), &plugin))
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
                limits: crate::config::PluginLimits {
                    slow_call: pool.slow_call.unwrap_or(config.plugins.limits.slow_call),
                    ..config.plugins.limits
                },
                failures_before_backoff: config.plugins.failures_before_backoff,
                seed: config.plugins.random_seed,
                instances: config.server.workers,
                on_failure: pool.on_plugin_failure,
                // A new version of the plugin for the same pool settings may
                // fall back on the one it replaces.
                last_good: before
                    .filter(|b| b.config == *pool)
                    .and_then(|b| b.balancer.last_good()),
                previous: before.map(|b| b.balancer.clone()),
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
                balancer.own_plugin(),
                balancer.last_good_plugin().map(|p| &**p),
            );
            pools.push(Arc::new(Pool {
                log,
                config: pool.clone(),
                stats,
                balancer: Arc::new(balancer),
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

/// Reads (through [`folder::read_plugin_file`]: regular files only, at most
/// `plugins.max_file_mib`) and loads one plugin file.
fn load_file(
    runtime: &plugin::Runtime,
    settings: &PluginSettings,
    path: &Path,
) -> Result<Plugin, String> {
    let bytes = folder::read_plugin_file(path, settings.max_file_bytes)
        .map_err(|e| format!("could not read {}: {e}", path.display()))?;
    runtime
        .load(&path.display().to_string(), &bytes, settings.limits)
        .map_err(|e| e.to_string())
}
