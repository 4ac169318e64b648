//! `[pools.NAME]`: upstream pools, their backends and how they are spoken to.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::discovery::{Discovery, DiscoverySection};
use super::health::{HealthCheck, HealthSection};
use super::outlier::{Ejection, OutlierSection};
use super::retry::{RetryPolicy, RetrySection};
use super::{bounded_ms, in_range};
use crate::error::ConfigError;

/// `[pools.NAME]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSection {
    /// Backends: `"host:port"` strings or tables
    /// `{ address, weight = 1, labels = {} }`. Required, not empty, unless
    /// `discovery` finds them.
    #[serde(default)]
    pub backends: Vec<BackendSection>,
    /// Backends found in DNS or a file instead (see [`DiscoverySection`]).
    #[serde(default)]
    pub discovery: Option<DiscoverySection>,
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
    /// Further candidates tried after a failed attempt: always when nothing
    /// was sent (a connect error), and otherwise as `[pools.NAME.retry]`
    /// allows. At most 16. Default 2.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Failures in a row (connect errors, timeouts, `outlier.statuses`) that
    /// eject a backend; 0 never does. Default 3.
    #[serde(default = "default_max_fails")]
    pub max_fails: u32,
    /// How long a first ejection lasts before one request probes the backend,
    /// ms; each ejection in a row lasts this much longer (see
    /// [`OutlierSection`]). Default 10000.
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
    /// How backends are spoken to: `"http1"`, `"h2c"` (HTTP/2 without TLS,
    /// prior knowledge) or `"h2"` (HTTP/2 over TLS, by ALPN; needs `tls`).
    /// Default `"http1"`.
    #[serde(default = "default_protocol")]
    pub protocol: String,
    /// HTTP/2: the most requests in flight on one backend connection; one
    /// more opens another connection. Default 100.
    #[serde(default = "default_streams")]
    pub max_streams_per_connection: u32,
    /// A backend that comes back (after an ejection or failed health checks)
    /// gets a share of requests that grows from nothing to its full share
    /// over this long, ms; 0: full share at once. Default 0.
    #[serde(default)]
    pub slow_start_ms: u64,
    /// When every candidate is down or unhealthy: `"fail-open"` tries them
    /// anyway; `"503"` answers 503 at once. Default `"fail-open"`.
    #[serde(default = "default_all_down")]
    pub when_all_down: String,
    /// When the strategy plugin fails (traps, misses its deadline, answers
    /// no backend, or is rested): `"fallback"` orders the request by the
    /// host's round robin over the whole pool; `"last-good"` by the plugin
    /// version this pool ran before the last swap, if it served without
    /// failing (else round robin); `"reject"` answers 503 with the reason,
    /// for strategies whose contract forbids leaking outside a subset.
    /// Default `"fallback"`.
    #[serde(default = "default_plugin_failure")]
    pub on_plugin_failure: String,
    /// This pool's budget of one `select` call, µs, instead of
    /// `plugins.slow_call_us` (see "Sandbox"). Default: that one.
    #[serde(default)]
    pub slow_call_us: Option<u64>,
    /// Active health checks. Default none.
    #[serde(default)]
    pub health: Option<HealthSection>,
    /// The retry policy. Default: see [`RetrySection`].
    #[serde(default)]
    pub retry: RetrySection,
    /// Ejection beyond `max_fails`/`fail_timeout_ms`. Default: see
    /// [`OutlierSection`].
    #[serde(default)]
    pub outlier: OutlierSection,
}

/// How backends are spoken to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1, one request per connection at a time.
    Http1,
    /// HTTP/2 in clear text with prior knowledge.
    H2c,
    /// HTTP/2 over TLS (ALPN `h2`).
    H2,
}

impl Protocol {
    /// Whether this is HTTP/2 (either way).
    pub fn is_h2(self) -> bool {
        self != Protocol::Http1
    }
}

/// What a pool does when its strategy plugin fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginFailure {
    /// The host's round robin over the whole pool.
    Fallback,
    /// The previous plugin version, if it served without failing.
    LastGood,
    /// 503 with the reason.
    Reject,
}

impl PluginFailure {
    /// As written in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            PluginFailure::Fallback => "fallback",
            PluginFailure::LastGood => "last-good",
            PluginFailure::Reject => "reject",
        }
    }
}

fn default_plugin_failure() -> String {
    "fallback".into()
}

/// What a pool does when every candidate is down or unhealthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllDown {
    /// Try them anyway.
    FailOpen,
    /// Answer 503 without trying.
    Refuse,
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
fn default_protocol() -> String {
    "http1".into()
}
fn default_streams() -> u32 {
    100
}
fn default_all_down() -> String {
    "fail-open".into()
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
    /// Backends in configuration order (their index is their id). With
    /// `discovery`, empty until the control plane fills in what it found.
    pub backends: Vec<BackendConfig>,
    /// See [`PoolSection::discovery`].
    pub discovery: Option<Discovery>,
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
    /// When to eject (with `max_fails` and `fail_timeout_ms`).
    pub ejection: Ejection,
    /// See [`PoolSection::max_idle_per_backend`].
    pub max_idle_per_backend: usize,
    /// See [`PoolSection::idle_timeout_ms`].
    pub idle_timeout: Duration,
    /// See [`PoolSection::tls`].
    pub tls: Option<UpstreamTls>,
    /// See [`PoolSection::protocol`].
    pub protocol: Protocol,
    /// See [`PoolSection::max_streams_per_connection`].
    pub max_streams_per_connection: u32,
    /// See [`PoolSection::slow_start_ms`].
    pub slow_start: Duration,
    /// See [`PoolSection::when_all_down`].
    pub when_all_down: AllDown,
    /// See [`PoolSection::on_plugin_failure`].
    pub on_plugin_failure: PluginFailure,
    /// See [`PoolSection::slow_call_us`].
    pub slow_call: Option<Duration>,
    /// See [`PoolSection::health`].
    pub health: Option<HealthCheck>,
    /// See [`PoolSection::retry`].
    pub retry: RetryPolicy,
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
    let discovery = pool
        .discovery
        .as_ref()
        .map(|d| d.validate(&format!("{key}.discovery"), base_dir))
        .transpose()?;
    match (pool.backends.is_empty(), &discovery) {
        (true, None) => {
            return Err(ConfigError::at(
                format!("{key}.backends"),
                "empty; a pool needs at least one backend (or [discovery] to find them)",
            ));
        }
        (false, Some(_)) => {
            return Err(ConfigError::at(
                format!("{key}.backends"),
                "give backends or [discovery], not both",
            ));
        }
        _ => {}
    }
    let backends = validate_backends(&format!("{key}.backends"), &pool.backends)?;
    const DAY_MS: u64 = 86_400_000;
    let ms = |name: &str, value: u64, max: u64| bounded_ms(&format!("{key}.{name}"), value, 1, max);
    let ms_of = ms;
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
    let protocol = match pool.protocol.as_str() {
        "http1" => Protocol::Http1,
        "h2c" if tls.is_none() => Protocol::H2c,
        "h2" if tls.is_some() => Protocol::H2,
        "h2c" => {
            return Err(ConfigError::at(
                format!("{key}.protocol"),
                "\"h2c\" is HTTP/2 without TLS, but the pool has [tls]; use \"h2\"",
            ));
        }
        "h2" => {
            return Err(ConfigError::at(
                format!("{key}.protocol"),
                "\"h2\" is HTTP/2 over TLS: add [pools.NAME.tls], or use \"h2c\" for clear text",
            ));
        }
        other => {
            return Err(ConfigError::at(
                format!("{key}.protocol"),
                format!("{other:?} is not a protocol; use \"http1\", \"h2c\" or \"h2\""),
            ));
        }
    };
    let when_all_down = match pool.when_all_down.as_str() {
        "fail-open" => AllDown::FailOpen,
        "503" => AllDown::Refuse,
        other => {
            return Err(ConfigError::at(
                format!("{key}.when_all_down"),
                format!("{other:?} is not a choice; use \"fail-open\" or \"503\""),
            ));
        }
    };
    let on_plugin_failure = match pool.on_plugin_failure.as_str() {
        "fallback" => PluginFailure::Fallback,
        "last-good" => PluginFailure::LastGood,
        "reject" => PluginFailure::Reject,
        other => {
            return Err(ConfigError::at(
                format!("{key}.on_plugin_failure"),
                format!("{other:?} is not a choice; use \"fallback\", \"last-good\" or \"reject\""),
            ));
        }
    };
    let slow_call = match pool.slow_call_us {
        None => None,
        Some(us) => Some(Duration::from_micros(in_range(
            &format!("{key}.slow_call_us"),
            us,
            1,
            10_000_000,
        )?)),
    };
    let slow_start = match pool.slow_start_ms {
        0 => Duration::ZERO,
        ms => ms_of("slow_start_ms", ms, DAY_MS)?,
    };
    let ejection =
        pool.outlier
            .validate(&format!("{key}.outlier"), pool.max_fails, fail_timeout)?;
    let health = pool
        .health
        .as_ref()
        .map(|h| h.validate(&format!("{key}.health")))
        .transpose()?;
    let retry = pool.retry.validate(&format!("{key}.retry"))?;
    let max_streams_per_connection = in_range(
        &format!("{key}.max_streams_per_connection"),
        pool.max_streams_per_connection,
        1,
        10_000,
    )?;
    let strategy_config = serde_json::to_string(&pool.strategy_config)
        .map_err(|e| ConfigError::at(format!("{key}.strategy_config"), e.to_string()))?;
    Ok(PoolConfig {
        name: name.to_string(),
        backends,
        discovery,
        strategy: pool.strategy.clone(),
        strategy_config,
        connect_timeout,
        response_timeout,
        read_timeout,
        send_timeout,
        max_connections_per_backend: pool.max_connections_per_backend,
        retries: pool.retries,
        ejection,
        max_idle_per_backend: pool.max_idle_per_backend,
        idle_timeout,
        tls,
        protocol,
        max_streams_per_connection,
        slow_start,
        slow_call,
        when_all_down,
        on_plugin_failure,
        health,
        retry,
    })
}

/// Checks a list of backends (`key` names the list, e.g.
/// `pools.web.backends`): addresses resolve, weights are at least 1, no
/// address twice. Names are resolved with the system's resolver, blocking.
pub fn validate_backends(
    key: &str,
    sections: &[BackendSection],
) -> Result<Vec<BackendConfig>, ConfigError> {
    let mut backends: Vec<BackendConfig> = Vec::with_capacity(sections.len());
    for (i, b) in sections.iter().enumerate() {
        let bkey = format!("{key}[{i}]");
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
    Ok(backends)
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

    #[test]
    fn the_protocol_must_match_the_pools_tls() {
        let key = |t: &str| pool(t).unwrap_err().key().unwrap().to_string();
        let one = "backends = [\"127.0.0.1:1\"]\n";
        assert_eq!(pool(one).unwrap().protocol, Protocol::Http1);
        assert_eq!(
            pool(&format!("{one}protocol = \"h2c\"")).unwrap().protocol,
            Protocol::H2c
        );
        assert_eq!(
            key(&format!("{one}protocol = \"h2\"")),
            "pools.web.protocol"
        );
        assert_eq!(
            key(&format!("{one}protocol = \"h2c\"\n[tls]")),
            "pools.web.protocol"
        );
        assert_eq!(
            pool(&format!("{one}protocol = \"h2\"\n[tls]"))
                .unwrap()
                .protocol,
            Protocol::H2
        );
        assert_eq!(
            key(&format!("{one}protocol = \"spdy\"")),
            "pools.web.protocol"
        );
    }

    #[test]
    fn health_retry_and_outlier_sections_are_checked_under_the_pools_key() {
        let key = |t: &str| pool(t).unwrap_err().key().unwrap().to_string();
        let one = "backends = [\"127.0.0.1:1\"]\n";
        assert_eq!(
            key(&format!("{one}when_all_down = \"panic\"")),
            "pools.web.when_all_down"
        );
        assert_eq!(
            key(&format!("{one}[health]\nrise = 0")),
            "pools.web.health.rise"
        );
        assert_eq!(
            key(&format!("{one}[retry]\non_statuses = [200]")),
            "pools.web.retry.on_statuses"
        );
        assert_eq!(
            key(&format!("{one}[outlier]\nmax_ejected_percent = 101")),
            "pools.web.outlier.max_ejected_percent"
        );
        let p = pool(&format!(
            "{one}slow_start_ms = 5000\n[health]\ntype = \"tcp\""
        ))
        .unwrap();
        assert_eq!(p.slow_start, Duration::from_secs(5));
        assert!(p.health.is_some());
        assert_eq!(p.when_all_down, AllDown::FailOpen);
        assert_eq!(p.on_plugin_failure, PluginFailure::Fallback);
    }

    #[test]
    fn the_plugin_failure_policy_is_one_of_three_named_choices() {
        let one = "backends = [\"127.0.0.1:1\"]\n";
        let p = pool(&format!("{one}on_plugin_failure = \"reject\"")).unwrap();
        assert_eq!(p.on_plugin_failure, PluginFailure::Reject);
        let p = pool(&format!("{one}on_plugin_failure = \"last-good\"")).unwrap();
        assert_eq!(p.on_plugin_failure, PluginFailure::LastGood);
        let err = pool(&format!("{one}on_plugin_failure = \"retry\"")).unwrap_err();
        assert_eq!(err.key(), Some("pools.web.on_plugin_failure"));
        let p = pool(&format!("{one}slow_call_us = 2000")).unwrap();
        assert_eq!(p.slow_call, Some(Duration::from_millis(2)));
        let err = pool(&format!("{one}slow_call_us = 0")).unwrap_err();
        assert_eq!(err.key(), Some("pools.web.slow_call_us"));
    }
}
