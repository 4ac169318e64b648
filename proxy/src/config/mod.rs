//! Configuration: the TOML file as serde structs (every field documented with
//! its default), then [`ConfigFile::validate`] into the run-time [`Config`].
//! One file per section, each with its struct, its `validate()` and its tests:
//! `server`, `plugins`, `pools` (with its `health`, `retry` and
//! `outlier` tables), `routes`, `tls`, `admin`, `observe` (access log and
//! tracing). This module is data: it
//! depends on nothing else in the crate but the error type.
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

mod admin;
mod discovery;
mod health;
mod observe;
mod outlier;
mod plugins;
mod pools;
mod retry;
mod routes;
mod server;
mod tls;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::ConfigError;
pub use admin::{AdminSection, AdminSettings};
pub use discovery::{Discovery, DiscoverySection, Source};
pub use health::{CheckKind, HealthCheck, HealthSection, HttpCheck};
pub use observe::{AccessLog, AccessLogSection, LogFormat, TraceSection, TraceSettings};
pub use outlier::{Ejection, OutlierSection};
pub use plugins::{PluginLimits, PluginSettings, PluginsSection};
pub use pools::{
    AllDown, BackendConfig, BackendSection, PluginFailure, PoolConfig, PoolSection, Protocol,
    UpstreamTls, UpstreamTlsSection, validate_backends,
};
pub use retry::{RetryPolicy, RetrySection};
pub use routes::{Route, RouteSection};
pub use server::{ForwardPath, ServerSection, ServerSettings};
pub use tls::{
    AcmeSection, AcmeSettings, CertificateSection, Challenge, ClientAuth, TlsSection, TlsSettings,
};

/// The configuration file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Listener and worker settings.
    #[serde(default)]
    pub server: ServerSection,
    /// The admin listener.
    #[serde(default)]
    pub admin: AdminSection,
    /// One line per request.
    #[serde(default)]
    pub access_log: AccessLogSection,
    /// Decision tracing on request.
    #[serde(default)]
    pub trace: TraceSection,
    /// The HTTPS listener, if any.
    #[serde(default)]
    pub tls: Option<TlsSection>,
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

/// A validated configuration, ready to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from, if any: reloaded on change and on SIGHUP.
    pub source: Option<PathBuf>,
    /// Listener, workers, connection limits and timeouts.
    pub server: ServerSettings,
    /// The admin listener.
    pub admin: AdminSettings,
    /// The access log; `None` when off.
    pub access_log: Option<AccessLog>,
    /// Where access log lines go (set up at start, used whenever the log is
    /// on).
    pub access_log_output: String,
    /// Decision tracing on request.
    pub trace: TraceSettings,
    /// The HTTPS listener, if any.
    pub tls: Option<TlsSettings>,
    /// Plugin settings.
    pub plugins: PluginSettings,
    /// Routes, most specific first.
    pub routes: Vec<Route>,
    /// Pools; routes refer to them by index.
    pub pools: Vec<PoolConfig>,
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
    /// are checked when the run-time state is built: unknown strategy, refused
    /// config) and resolves defaults.
    pub fn validate(self, base_dir: &Path) -> Result<Config, ConfigError> {
        let server = self.server.validate()?;
        let admin = self.admin.validate(base_dir)?;
        let access_log = self.access_log.validate()?;
        let access_log_output = self.access_log.output(base_dir);
        let trace = self.trace.validate()?;
        let tls = self
            .tls
            .as_ref()
            .map(|t| t.validate(base_dir))
            .transpose()?;
        if server.redirect_to_https.is_some() && tls.is_none() {
            return Err(ConfigError::at(
                "server.redirect_to_https",
                "redirects to HTTPS, but there is no [tls] listener",
            ));
        }
        let plugins = self.plugins.validate(base_dir)?;
        if self.pools.is_empty() {
            return Err(ConfigError::at(
                "pools",
                "no pools; add one, e.g. [pools.web] with backends = [\"127.0.0.1:9001\"]",
            ));
        }
        let mut pools = Vec::with_capacity(self.pools.len());
        for (name, pool) in &self.pools {
            pools.push(pools::validate_pool(name, pool, base_dir)?);
        }
        let names: Vec<&str> = self.pools.keys().map(String::as_str).collect();
        let routes = routes::validate(&self.routes, &names)?;
        Ok(Config {
            source: None,
            server,
            admin,
            access_log,
            access_log_output,
            trace,
            tls,
            plugins,
            routes,
            pools,
        })
    }
}

/// `""` turns a path setting off. An existing folder is made absolute, so
/// file events and directory listings name its files the same way.
fn optional_path(base_dir: &Path, path: &Path) -> Option<PathBuf> {
    (!path.as_os_str().is_empty()).then(|| {
        let joined = base_dir.join(path);
        joined.canonicalize().unwrap_or(joined)
    })
}

/// A number between `min` and `max` (both included); the error names the key
/// and the range.
fn in_range<T: PartialOrd + std::fmt::Display>(
    key: &str,
    value: T,
    min: T,
    max: T,
) -> Result<T, ConfigError> {
    in_range_of(key, value, min, max, "")
}

fn in_range_of<T: PartialOrd + std::fmt::Display>(
    key: &str,
    value: T,
    min: T,
    max: T,
    unit: &str,
) -> Result<T, ConfigError> {
    if value < min || value > max {
        return Err(ConfigError::at(
            key,
            format!("{value}{unit} is not between {min} and {max}"),
        ));
    }
    Ok(value)
}

/// A duration in milliseconds between `min` and `max`: every duration has an
/// upper bound, so no deadline computed from it can overflow.
fn bounded_ms(key: &str, value: u64, min: u64, max: u64) -> Result<Duration, ConfigError> {
    in_range_of(key, value, min, max, " ms").map(Duration::from_millis)
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
        assert_eq!(c.server.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.pools[0].strategy, "round-robin");
        assert_eq!(c.pools[0].strategy_config, "{}");
        assert_eq!(c.routes.len(), 1, "one pool gets a catch-all route");
        assert_eq!(c.plugins.limits.select_timeout, Duration::from_millis(5));
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
        assert_eq!(
            error_key("[pools.a]\nbackends = [\"127.0.0.1:1\"]\n[[routes]]\npool = \"b\""),
            "routes[0].pool"
        );
        assert_eq!(error_key(""), "pools");
    }

    #[test]
    fn durations_are_bounded_so_deadlines_cannot_overflow() {
        assert_eq!(
            error_key(
                "[server]\nshutdown_grace_ms = 18446744073709551615\n[pools.a]\nbackends=[\"127.0.0.1:1\"]"
            ),
            "server.shutdown_grace_ms"
        );
    }
}
