//! Configuration: the TOML file as serde structs (every field documented with
//! its default), then [`ConfigFile::validate`] into the runtime [`Config`].
//!
//! ```toml
//! [server]
//! listen = "127.0.0.1:8080"
//! workers = 1
//!
//! [pools.web]
//! strategy = "round-robin"
//! backends = ["127.0.0.1:9001", { address = "127.0.0.1:9002", weight = 2 }]
//!
//! [[routes]]
//! host = "example.com"
//! path_prefix = "/"
//! pool = "web"
//! ```
//!
//! Errors name the key path (`pools.web.backends[1].weight`) and the reason.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::ConfigError;

/// The configuration file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Listener and worker settings.
    #[serde(default)]
    pub server: ServerSection,
    /// Plugin limits and extra plugin files.
    #[serde(default)]
    pub plugins: PluginsSection,
    /// Routes from host and path prefix to a pool. Default: when there is
    /// exactly one pool, everything goes to it.
    #[serde(default)]
    pub routes: Vec<RouteSection>,
    /// Named upstream pools.
    #[serde(default)]
    pub pools: BTreeMap<String, PoolSection>,
}

/// `[server]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// Address to listen on. Default `127.0.0.1:8080`.
    pub listen: String,
    /// Worker threads, each with its own event loop and plugin instances.
    /// Default 0: one per CPU core.
    pub workers: usize,
    /// Time a client has to send a request's headers (also bounds an idle
    /// keep-alive connection), ms. Default 30000.
    pub header_read_timeout_ms: u64,
    /// On shutdown, time given to in-flight requests to finish, ms.
    /// Default 10000.
    pub shutdown_grace_ms: u64,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            listen: "127.0.0.1:8080".into(),
            workers: 0,
            header_read_timeout_ms: 30_000,
            shutdown_grace_ms: 10_000,
        }
    }
}

/// `[plugins]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginsSection {
    /// Plugin files (`.wasm` components) to load besides the built-ins, relative
    /// to the configuration file. Each is registered under the name it gives
    /// itself. Default none.
    pub load: Vec<PathBuf>,
    /// Whether a loaded file may replace a built-in of the same name.
    /// Default false.
    pub allow_override_builtin: bool,
    /// Deadline of one `select` call, ms; past it the request is served by the
    /// host's round robin. Default 5.
    pub select_timeout_ms: u64,
    /// Deadline of `init` and `set-backends`, ms. Default 1000.
    pub setup_timeout_ms: u64,
    /// Linear memory cap per plugin instance, MiB. Default 16.
    pub memory_limit_mib: u64,
    /// After this many failed calls in a row, an instance is not called again
    /// for a backoff that doubles from 100 ms up to 10 s (the host's round
    /// robin serves meanwhile). Default 3.
    pub failures_before_backoff: u32,
    /// Seed of the `random` import; 0 seeds from the clock. Default 0.
    pub random_seed: u64,
    /// Folder watched for `.wasm` plugins, relative to the configuration file.
    /// A file appearing or changing there is loaded, checked and swapped in
    /// without dropping a request; a file removed returns its pools to what
    /// the configuration names. "" disables the folder. Default `plugins`.
    pub dir: PathBuf,
    /// How long a plugin file (or the configuration file) must stay unchanged
    /// before it is loaded, ms: lets a writer finish. Default 200.
    pub debounce_ms: u64,
    /// Cache of compiled plugins, keyed by content and engine settings, so a
    /// restart does not recompile. "" disables it. Default
    /// `$XDG_CACHE_HOME/veer` or `~/.cache/veer`.
    pub cache_dir: Option<PathBuf>,
}

impl Default for PluginsSection {
    fn default() -> Self {
        PluginsSection {
            load: Vec::new(),
            allow_override_builtin: false,
            select_timeout_ms: 5,
            setup_timeout_ms: 1000,
            memory_limit_mib: 16,
            failures_before_backoff: 3,
            random_seed: 0,
            dir: PathBuf::from("plugins"),
            debounce_ms: 200,
            cache_dir: None,
        }
    }
}

impl PluginsSection {
    /// The per-instance limits these settings give.
    pub fn limits(&self) -> crate::wasm::Limits {
        crate::wasm::Limits {
            select_timeout: Duration::from_millis(self.select_timeout_ms),
            setup_timeout: Duration::from_millis(self.setup_timeout_ms),
            memory_bytes: (self.memory_limit_mib as usize) << 20,
        }
    }
}

/// The default compiled-plugin cache: `$XDG_CACHE_HOME/veer`, else
/// `$HOME/.cache/veer`, else none.
fn default_cache_dir() -> Option<PathBuf> {
    let xdg = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    let home = || {
        std::env::var_os("HOME")
            .filter(|v| !v.is_empty())
            .map(|h| PathBuf::from(h).join(".cache"))
    };
    xdg.or_else(home).map(|dir| dir.join("veer"))
}

/// `""` turns a path setting off. An existing folder is made absolute, so
/// file events and directory listings name its files the same way.
fn optional_path(base_dir: &Path, path: &Path) -> Option<PathBuf> {
    (!path.as_os_str().is_empty()).then(|| {
        let joined = base_dir.join(path);
        joined.canonicalize().unwrap_or(joined)
    })
}

/// `[[routes]]`: requests whose host and path match go to `pool`. The most
/// specific route wins: an exact host before `*`, then the longest prefix.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSection {
    /// Host to match, without port, case-insensitive; `*` matches any.
    /// Default `*`.
    #[serde(default = "any_host")]
    pub host: String,
    /// Path prefix to match (plain string prefix). Default `/`.
    #[serde(default = "root_path")]
    pub path_prefix: String,
    /// The pool to send to (a key of `[pools]`). Required.
    pub pool: String,
}

fn any_host() -> String {
    "*".into()
}
fn root_path() -> String {
    "/".into()
}

/// `[pools.NAME]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSection {
    /// Backends: `"host:port"` strings or tables
    /// `{ address, weight = 1, labels = {} }`. Required, not empty.
    pub backends: Vec<BackendSection>,
    /// Strategy plugin name (a built-in or a loaded file). Default
    /// `round-robin`.
    #[serde(default = "default_strategy")]
    pub strategy: String,
    /// Configuration handed to the strategy's `init` as JSON. Default `{}`.
    #[serde(default)]
    pub strategy_config: toml::Table,
    /// Time to establish a backend connection, ms. Default 2000.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_ms: u64,
    /// Time from sending a request to the response's headers, ms; past it the
    /// client gets 504. Default 30000.
    #[serde(default = "default_response_timeout")]
    pub response_timeout_ms: u64,
    /// Further candidates tried when a backend cannot be connected to (nothing
    /// was sent, so this is safe for any method). Default 2.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Connection failures in a row that mark a backend down; 0 never does.
    /// Default 3.
    #[serde(default = "default_max_fails")]
    pub max_fails: u32,
    /// How long a backend stays down before one request probes it, ms.
    /// Default 10000.
    #[serde(default = "default_fail_timeout")]
    pub fail_timeout_ms: u64,
    /// Idle keep-alive connections kept per backend and worker. Default 64.
    #[serde(default = "default_max_idle")]
    pub max_idle_per_backend: usize,
    /// How long an idle upstream connection is kept, ms. Default 60000.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_ms: u64,
}

fn default_strategy() -> String {
    "round-robin".into()
}
fn default_connect_timeout() -> u64 {
    2_000
}
fn default_response_timeout() -> u64 {
    30_000
}
fn default_retries() -> u32 {
    2
}
fn default_max_fails() -> u32 {
    3
}
fn default_fail_timeout() -> u64 {
    10_000
}
fn default_max_idle() -> usize {
    64
}
fn default_idle_timeout() -> u64 {
    60_000
}

/// One backend: `"127.0.0.1:9001"` or `{ address = "...", weight = 2, labels = { zone = "a" } }`.
#[derive(Debug)]
pub struct BackendSection {
    /// `host:port`.
    pub address: String,
    /// Relative weight, at least 1. Default 1.
    pub weight: u32,
    /// Free-form labels for strategies. Default none.
    pub labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BackendTable {
    address: String,
    #[serde(default = "one")]
    weight: u32,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

fn one() -> u32 {
    1
}

impl<'de> Deserialize<'de> for BackendSection {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = BackendSection;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(
                    r#"a "host:port" string or a table { address = "host:port", weight = 1 }"#,
                )
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<BackendSection, E> {
                Ok(BackendSection {
                    address: s.to_owned(),
                    weight: 1,
                    labels: BTreeMap::new(),
                })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<BackendSection, A::Error> {
                let t =
                    BackendTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(BackendSection {
                    address: t.address,
                    weight: t.weight,
                    labels: t.labels,
                })
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// A validated configuration, ready to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from, if any: reloaded on change and on SIGHUP.
    pub source: Option<PathBuf>,
    /// Where to listen.
    pub listen: SocketAddr,
    /// Worker threads (resolved: never 0).
    pub workers: usize,
    /// See [`ServerSection::header_read_timeout_ms`].
    pub header_read_timeout: Duration,
    /// See [`ServerSection::shutdown_grace_ms`].
    pub shutdown_grace: Duration,
    /// Plugin settings.
    pub plugins: PluginSettings,
    /// Routes, most specific first.
    pub routes: Vec<Route>,
    /// Pools; routes refer to them by index.
    pub pools: Vec<PoolConfig>,
}

/// Validated `[plugins]`.
#[derive(Debug, Clone)]
pub struct PluginSettings {
    /// Files to load (absolute, or relative to the working directory).
    pub load: Vec<PathBuf>,
    /// See [`PluginsSection::allow_override_builtin`].
    pub allow_override_builtin: bool,
    /// Limits of every instance.
    pub limits: crate::wasm::Limits,
    /// See [`PluginsSection::failures_before_backoff`].
    pub failures_before_backoff: u32,
    /// See [`PluginsSection::random_seed`].
    pub random_seed: u64,
    /// The watched plugin folder (resolved), if any.
    pub dir: Option<PathBuf>,
    /// See [`PluginsSection::debounce_ms`].
    pub debounce: Duration,
    /// The compiled-plugin cache folder (resolved), if any.
    pub cache_dir: Option<PathBuf>,
}

/// A validated route.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// Lowercase host, or `None` for any.
    pub host: Option<String>,
    /// Path prefix.
    pub path_prefix: String,
    /// Index into [`Config::pools`].
    pub pool: usize,
}

/// A validated pool.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    /// The pool's name.
    pub name: String,
    /// Backends in configuration order (their index is their id).
    pub backends: Vec<BackendConfig>,
    /// Strategy plugin name.
    pub strategy: String,
    /// Strategy config as JSON.
    pub strategy_config: String,
    /// See [`PoolSection::connect_timeout_ms`].
    pub connect_timeout: Duration,
    /// See [`PoolSection::response_timeout_ms`].
    pub response_timeout: Duration,
    /// See [`PoolSection::retries`].
    pub retries: u32,
    /// See [`PoolSection::max_fails`].
    pub max_fails: u32,
    /// See [`PoolSection::fail_timeout_ms`].
    pub fail_timeout: Duration,
    /// See [`PoolSection::max_idle_per_backend`].
    pub max_idle_per_backend: usize,
    /// See [`PoolSection::idle_timeout_ms`].
    pub idle_timeout: Duration,
}

/// A validated backend.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendConfig {
    /// As written.
    pub address: String,
    /// Resolved once at load.
    pub addr: SocketAddr,
    /// At least 1.
    pub weight: u32,
    /// Sorted by key.
    pub labels: Vec<(String, String)>,
}

impl Config {
    /// Reads, parses and validates a configuration file. Relative plugin paths
    /// are taken from the file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut config = Config::from_toml(&text, base)?;
        config.source = Some(path.to_path_buf());
        Ok(config)
    }

    /// Parses and validates configuration text.
    pub fn from_toml(text: &str, base_dir: &Path) -> Result<Config, ConfigError> {
        ConfigFile::parse(text)?.validate(base_dir)
    }
}

impl ConfigFile {
    /// Parses TOML; a type error names its key path.
    pub fn parse(text: &str) -> Result<ConfigFile, ConfigError> {
        let de = toml::Deserializer::parse(text)
            .map_err(|e| ConfigError::at("(syntax)", e.to_string()))?;
        serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." {
                "(top level)".to_string()
            } else {
                key
            };
            let reason = e.into_inner().message().trim().to_string();
            ConfigError::at(key, reason)
        })
    }

    /// Checks everything that can be checked without loading plugins (those
    /// are checked when the runtime is built: unknown strategy, refused
    /// config) and resolves defaults.
    pub fn validate(self, base_dir: &Path) -> Result<Config, ConfigError> {
        let listen: SocketAddr = self.server.listen.parse().map_err(|_| {
            ConfigError::at(
                "server.listen",
                format!(
                    "{:?} is not an ip:port address, e.g. \"127.0.0.1:8080\"",
                    self.server.listen
                ),
            )
        })?;
        let workers = match self.server.workers {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            n if n > 1024 => {
                return Err(ConfigError::at(
                    "server.workers",
                    format!("{n} is more than 1024"),
                ));
            }
            n => n,
        };
        let p = &self.plugins;
        positive(
            "server.header_read_timeout_ms",
            self.server.header_read_timeout_ms,
        )?;
        positive("plugins.select_timeout_ms", p.select_timeout_ms)?;
        positive("plugins.setup_timeout_ms", p.setup_timeout_ms)?;
        if !(1..=4096).contains(&p.memory_limit_mib) {
            return Err(ConfigError::at(
                "plugins.memory_limit_mib",
                format!("{} is not between 1 and 4096", p.memory_limit_mib),
            ));
        }
        let plugins = PluginSettings {
            load: p.load.iter().map(|f| base_dir.join(f)).collect(),
            allow_override_builtin: p.allow_override_builtin,
            limits: p.limits(),
            failures_before_backoff: p.failures_before_backoff.max(1),
            random_seed: p.random_seed,
            dir: optional_path(base_dir, &p.dir),
            debounce: Duration::from_millis(p.debounce_ms),
            cache_dir: match &p.cache_dir {
                Some(dir) => optional_path(base_dir, dir),
                None => default_cache_dir(),
            },
        };

        if self.pools.is_empty() {
            return Err(ConfigError::at(
                "pools",
                "no pools; add one, e.g. [pools.web] with backends = [\"127.0.0.1:9001\"]",
            ));
        }
        let names: Vec<&String> = self.pools.keys().collect();
        let mut pools = Vec::with_capacity(self.pools.len());
        for (name, pool) in &self.pools {
            pools.push(validate_pool(name, pool)?);
        }

        let mut routes = Vec::new();
        if self.routes.is_empty() {
            if pools.len() > 1 {
                return Err(ConfigError::at(
                    "routes",
                    "no routes, and more than one pool: add [[routes]] entries naming a pool each",
                ));
            }
            routes.push(Route {
                host: None,
                path_prefix: "/".into(),
                pool: 0,
            });
        }
        for (i, route) in self.routes.iter().enumerate() {
            let key = format!("routes[{i}]");
            let pool = names
                .iter()
                .position(|n| **n == route.pool)
                .ok_or_else(|| {
                    ConfigError::at(
                        format!("{key}.pool"),
                        format!(
                            "no pool named {:?}; defined pools: {}",
                            route.pool,
                            join(&names)
                        ),
                    )
                })?;
            if !route.path_prefix.starts_with('/') {
                return Err(ConfigError::at(
                    format!("{key}.path_prefix"),
                    format!("{:?} must start with '/'", route.path_prefix),
                ));
            }
            let host = match route.host.trim() {
                "*" => None,
                "" => {
                    return Err(ConfigError::at(
                        format!("{key}.host"),
                        "empty; use \"*\" to match any host",
                    ));
                }
                h => Some(h.to_ascii_lowercase()),
            };
            routes.push(Route {
                host,
                path_prefix: route.path_prefix.clone(),
                pool,
            });
        }
        // Most specific first: exact hosts before `*`, then longer prefixes.
        routes.sort_by(|a, b| {
            b.host
                .is_some()
                .cmp(&a.host.is_some())
                .then(b.path_prefix.len().cmp(&a.path_prefix.len()))
        });

        Ok(Config {
            source: None,
            listen,
            workers,
            header_read_timeout: Duration::from_millis(self.server.header_read_timeout_ms),
            shutdown_grace: Duration::from_millis(self.server.shutdown_grace_ms),
            plugins,
            routes,
            pools,
        })
    }
}

fn validate_pool(name: &str, pool: &PoolSection) -> Result<PoolConfig, ConfigError> {
    let key = format!("pools.{name}");
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(ConfigError::at(
            key,
            "pool names use letters, digits, '-' and '_'",
        ));
    }
    if pool.backends.is_empty() {
        return Err(ConfigError::at(
            format!("{key}.backends"),
            "empty; a pool needs at least one backend",
        ));
    }
    let mut backends: Vec<BackendConfig> = Vec::with_capacity(pool.backends.len());
    for (i, b) in pool.backends.iter().enumerate() {
        let bkey = format!("{key}.backends[{i}]");
        let addr = resolve(&b.address)
            .map_err(|reason| ConfigError::at(format!("{bkey}.address"), reason))?;
        if b.weight == 0 {
            return Err(ConfigError::at(
                format!("{bkey}.weight"),
                "must be at least 1 (remove the backend to take it out)",
            ));
        }
        if let Some(dup) = backends.iter().position(|o| o.addr == addr) {
            return Err(ConfigError::at(
                format!("{bkey}.address"),
                format!("{} is already backends[{dup}]", b.address),
            ));
        }
        backends.push(BackendConfig {
            address: b.address.clone(),
            addr,
            weight: b.weight,
            labels: b
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        });
    }
    positive(
        &format!("{key}.connect_timeout_ms"),
        pool.connect_timeout_ms,
    )?;
    positive(
        &format!("{key}.response_timeout_ms"),
        pool.response_timeout_ms,
    )?;
    positive(&format!("{key}.fail_timeout_ms"), pool.fail_timeout_ms)?;
    positive(&format!("{key}.idle_timeout_ms"), pool.idle_timeout_ms)?;
    let strategy_config = serde_json::to_string(&pool.strategy_config)
        .map_err(|e| ConfigError::at(format!("{key}.strategy_config"), e.to_string()))?;
    Ok(PoolConfig {
        name: name.to_string(),
        backends,
        strategy: pool.strategy.clone(),
        strategy_config,
        connect_timeout: Duration::from_millis(pool.connect_timeout_ms),
        response_timeout: Duration::from_millis(pool.response_timeout_ms),
        retries: pool.retries,
        max_fails: pool.max_fails,
        fail_timeout: Duration::from_millis(pool.fail_timeout_ms),
        max_idle_per_backend: pool.max_idle_per_backend,
        idle_timeout: Duration::from_millis(pool.idle_timeout_ms),
    })
}

fn positive(key: &str, value: u64) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(ConfigError::at(key, "must be greater than 0"));
    }
    Ok(())
}

fn resolve(address: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = address.parse() {
        return Ok(addr);
    }
    let mut addrs = address.to_socket_addrs().map_err(|e| {
        format!("{address:?} is not a host:port that resolves ({e}), e.g. \"127.0.0.1:9001\"")
    })?;
    addrs
        .next()
        .ok_or_else(|| format!("{address:?} resolves to no address"))
}

fn join(names: &[&String]) -> String {
    names
        .iter()
        .map(|n| n.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, Path::new("."))
    }

    fn error_key(text: &str) -> String {
        parse(text)
            .expect_err("config should be refused")
            .key()
            .unwrap()
            .to_string()
    }

    #[test]
    fn a_minimal_config_gets_documented_defaults() {
        let c = parse("[pools.web]\nbackends = [\"127.0.0.1:9001\"]\n").unwrap();
        assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.pools[0].strategy, "round-robin");
        assert_eq!(c.pools[0].strategy_config, "{}");
        assert_eq!(c.pools[0].retries, 2);
        assert_eq!(c.routes.len(), 1, "one pool gets a catch-all route");
        assert_eq!(c.plugins.limits.select_timeout, Duration::from_millis(5));
    }

    #[test]
    fn backends_may_be_strings_or_tables_with_weight_and_labels() {
        let c = parse(
            r#"[pools.web]
               backends = ["127.0.0.1:9001", { address = "127.0.0.1:9002", weight = 3, labels = { zone = "b" } }]"#,
        )
        .unwrap();
        let b = &c.pools[0].backends;
        assert_eq!((b[0].weight, b[1].weight), (1, 3));
        assert_eq!(b[1].labels, vec![("zone".to_string(), "b".to_string())]);
    }

    #[test]
    fn a_wrong_type_names_its_key_path() {
        let key = error_key(
            r#"[pools.web]
            backends = ["127.0.0.1:9001", { address = "127.0.0.1:9002", weight = "heavy" }]"#,
        );
        assert_eq!(key, "pools.web.backends[1].weight");
    }

    #[test]
    fn an_unknown_key_is_refused_with_its_path() {
        let err = parse("[server]\nlisten = \"127.0.0.1:1\"\nworkerz = 2\n[pools.a]\nbackends=[\"127.0.0.1:1\"]").unwrap_err();
        assert!(err.to_string().contains("workerz"), "{err}");
    }

    #[test]
    fn semantic_errors_name_their_key() {
        assert_eq!(
            error_key("[server]\nlisten = \"nope\"\n[pools.a]\nbackends=[\"127.0.0.1:1\"]"),
            "server.listen"
        );
        assert_eq!(error_key("[pools.a]\nbackends = []"), "pools.a.backends");
        assert_eq!(
            error_key("[pools.a]\nbackends = [{ address = \"127.0.0.1:1\", weight = 0 }]"),
            "pools.a.backends[0].weight"
        );
        assert_eq!(
            error_key("[pools.a]\nbackends = [\"127.0.0.1:1\", \"127.0.0.1:1\"]"),
            "pools.a.backends[1].address"
        );
        assert_eq!(
            error_key("[pools.a]\nbackends = [\"127.0.0.1:1\"]\n[[routes]]\npool = \"b\""),
            "routes[0].pool"
        );
        assert_eq!(
            error_key("[pools.a]\nbackends = [\"127.0.0.1:1\"]\nconnect_timeout_ms = 0"),
            "pools.a.connect_timeout_ms"
        );
        assert_eq!(error_key(""), "pools");
    }

    #[test]
    fn routes_are_ordered_most_specific_first() {
        let c = parse(
            r#"[pools.a]
               backends = ["127.0.0.1:1"]
               [pools.b]
               backends = ["127.0.0.1:2"]
               [[routes]]
               pool = "a"
               [[routes]]
               path_prefix = "/api"
               pool = "b"
               [[routes]]
               host = "Example.COM"
               pool = "b""#,
        )
        .unwrap();
        let order: Vec<_> = c
            .routes
            .iter()
            .map(|r| (r.host.as_deref(), r.path_prefix.as_str()))
            .collect();
        assert_eq!(
            order,
            vec![(Some("example.com"), "/"), (None, "/api"), (None, "/")]
        );
    }
}
