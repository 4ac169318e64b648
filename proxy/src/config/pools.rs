//! `[pools.NAME]`: upstream pools, their backends and how they are spoken to.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::bounded_ms;
use crate::error::ConfigError;

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
    /// Time from the end of the request body to the response's headers, ms;
    /// past it the client gets 504. Default 30000.
    #[serde(default = "default_response_timeout")]
    pub response_timeout_ms: u64,
    /// Longest pause between two reads of a response body, ms; past it the
    /// client's stream is closed (the status was sent already). Default 60000.
    #[serde(default = "default_body_timeout")]
    pub read_timeout_ms: u64,
    /// Longest time the backend may stop taking the request body while the
    /// client has more to send, ms; past it the client gets 504.
    /// Default 60000.
    #[serde(default = "default_body_timeout")]
    pub send_timeout_ms: u64,
    /// Most open connections to each backend, all workers together; 0: no
    /// cap. A backend at its cap with no idle connection is skipped like a
    /// busy one (the next candidate is tried, not counted as a failure).
    /// Default 0.
    #[serde(default)]
    pub max_connections_per_backend: u32,
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
    /// Speak HTTPS to the backends (see [`UpstreamTlsSection`]). Default
    /// none: plain HTTP.
    #[serde(default)]
    pub tls: Option<UpstreamTlsSection>,
    /// How long an idle upstream connection is kept, ms. Default 60000.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_ms: u64,
}

/// `[pools.NAME.tls]`: HTTPS to the backends.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsSection {
    /// The name sent as SNI and verified in the backend's certificate.
    /// Default: each backend's host as written in its address.
    #[serde(default)]
    pub server_name: Option<String>,
    /// CA certificates (PEM) to verify backends with, instead of the
    /// system's roots. Default: the system's roots.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// A client certificate chain (PEM) to present to backends (with
    /// `client_key`). Default none.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// The key of `client_cert` (PEM).
    #[serde(default)]
    pub client_key: Option<PathBuf>,
}

/// Validated upstream TLS settings.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamTls {
    /// See [`UpstreamTlsSection::server_name`].
    pub server_name: Option<String>,
    /// See [`UpstreamTlsSection::ca`].
    pub ca: Option<PathBuf>,
    /// (chain, key), see [`UpstreamTlsSection::client_cert`].
    pub client_cert: Option<(PathBuf, PathBuf)>,
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
fn default_body_timeout() -> u64 {
    60_000
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
    /// See [`PoolSection::read_timeout_ms`].
    pub read_timeout: Duration,
    /// See [`PoolSection::send_timeout_ms`].
    pub send_timeout: Duration,
    /// See [`PoolSection::max_connections_per_backend`].
    pub max_connections_per_backend: u32,
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
    /// See [`PoolSection::tls`].
    pub tls: Option<UpstreamTls>,
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

pub(super) fn validate_pool(
    name: &str,
    pool: &PoolSection,
    base_dir: &Path,
) -> Result<PoolConfig, ConfigError> {
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
    const DAY_MS: u64 = 86_400_000;
    let ms = |name: &str, value: u64, max: u64| bounded_ms(&format!("{key}.{name}"), value, 1, max);
    let connect_timeout = ms("connect_timeout_ms", pool.connect_timeout_ms, 3_600_000)?;
    let response_timeout = ms("response_timeout_ms", pool.response_timeout_ms, DAY_MS)?;
    let read_timeout = ms("read_timeout_ms", pool.read_timeout_ms, DAY_MS)?;
    let send_timeout = ms("send_timeout_ms", pool.send_timeout_ms, DAY_MS)?;
    let fail_timeout = ms("fail_timeout_ms", pool.fail_timeout_ms, DAY_MS)?;
    let idle_timeout = ms("idle_timeout_ms", pool.idle_timeout_ms, DAY_MS)?;
    for (name, timer) in [
        ("response_timeout_ms", response_timeout),
        ("send_timeout_ms", send_timeout),
    ] {
        if timer < connect_timeout {
            return Err(ConfigError::at(
                format!("{key}.{name}"),
                format!(
                    "{} ms is shorter than connect_timeout_ms ({} ms): a slow connect would end as a timeout instead of trying the next backend",
                    timer.as_millis(),
                    connect_timeout.as_millis()
                ),
            ));
        }
    }
    if pool.retries > 16 {
        return Err(ConfigError::at(
            format!("{key}.retries"),
            format!("{} is more than 16", pool.retries),
        ));
    }
    let tls = match &pool.tls {
        None => None,
        Some(t) => Some(UpstreamTls {
            server_name: t.server_name.clone(),
            ca: t.ca.as_ref().map(|p| base_dir.join(p)),
            client_cert: match (&t.client_cert, &t.client_key) {
                (None, None) => None,
                (Some(c), Some(k)) => Some((base_dir.join(c), base_dir.join(k))),
                _ => {
                    return Err(ConfigError::at(
                        format!("{key}.tls"),
                        "client_cert and client_key go together",
                    ));
                }
            },
        }),
    };
    let strategy_config = serde_json::to_string(&pool.strategy_config)
        .map_err(|e| ConfigError::at(format!("{key}.strategy_config"), e.to_string()))?;
    Ok(PoolConfig {
        name: name.to_string(),
        backends,
        strategy: pool.strategy.clone(),
        strategy_config,
        connect_timeout,
        response_timeout,
        read_timeout,
        send_timeout,
        max_connections_per_backend: pool.max_connections_per_backend,
        retries: pool.retries,
        max_fails: pool.max_fails,
        fail_timeout,
        max_idle_per_backend: pool.max_idle_per_backend,
        idle_timeout,
        tls,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(toml_text: &str) -> Result<PoolConfig, ConfigError> {
        let section: PoolSection = toml::from_str(toml_text).unwrap();
        validate_pool("web", &section, Path::new("."))
    }

    #[test]
    fn backends_may_be_strings_or_tables_with_weight_and_labels() {
        let p = pool(r#"backends = ["127.0.0.1:9001", { address = "127.0.0.1:9002", weight = 3, labels = { zone = "b" } }]"#).unwrap();
        assert_eq!((p.backends[0].weight, p.backends[1].weight), (1, 3));
        assert_eq!(
            p.backends[1].labels,
            vec![("zone".to_string(), "b".to_string())]
        );
        assert_eq!(p.retries, 2);
        assert_eq!(p.strategy, "round-robin");
    }

    #[test]
    fn bad_backends_name_their_key() {
        let key = |t: &str| pool(t).unwrap_err().key().unwrap().to_string();
        assert_eq!(key("backends = []"), "pools.web.backends");
        assert_eq!(
            key(r#"backends = [{ address = "127.0.0.1:1", weight = 0 }]"#),
            "pools.web.backends[0].weight"
        );
        assert_eq!(
            key(r#"backends = ["127.0.0.1:1", "127.0.0.1:1"]"#),
            "pools.web.backends[1].address"
        );
        assert_eq!(
            key("backends = [\"127.0.0.1:1\"]\nconnect_timeout_ms = 0"),
            "pools.web.connect_timeout_ms"
        );
    }
}
