//! `[pools.NAME.health]`: active health checks. Absent: no active checks
//! (passive ejection still applies).
//!
//! ```toml
//! [pools.web.health]
//! type = "http"            # or "tcp": a connect is enough
//! path = "/healthz"
//! expect_status = [200, 399]
//! interval_ms = 5000
//! timeout_ms = 1000
//! rise = 2
//! fall = 3
//! ```

use std::time::Duration;

use serde::Deserialize;

use super::{bounded_ms, in_range};
use crate::error::ConfigError;

/// `[pools.NAME.health]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSection {
    /// `"http"` (a request, judged by its status and optionally its body) or
    /// `"tcp"` (a connect, and the TLS handshake for an HTTPS pool).
    /// Default `"http"`.
    #[serde(default = "default_type", rename = "type")]
    pub kind: String,
    /// HTTP method. Default `"GET"`.
    #[serde(default = "default_method")]
    pub method: String,
    /// Path and query asked for. Default `"/"`.
    #[serde(default = "default_path")]
    pub path: String,
    /// `Host` of the check request. Default: the backend's address.
    #[serde(default)]
    pub host: Option<String>,
    /// Lowest and highest status that pass, both included. Default
    /// `[200, 399]`.
    #[serde(default = "default_expect")]
    pub expect_status: [u16; 2],
    /// Text the response body must contain (the first 64 KiB are read).
    /// Default: the body is not looked at.
    #[serde(default)]
    pub body_contains: Option<String>,
    /// Time between two checks of one backend, ms. Default 5000.
    #[serde(default = "default_interval")]
    pub interval_ms: u64,
    /// Each interval is moved by a random amount up to this share of it, so
    /// the checks of many proxies do not arrive together. Default 10.
    #[serde(default = "default_jitter")]
    pub jitter_percent: u32,
    /// Time a check may take (connect, TLS, response head and body), ms.
    /// Default 1000.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// Passing checks in a row that bring an unhealthy backend back.
    /// Default 2.
    #[serde(default = "default_rise")]
    pub rise: u32,
    /// Failing checks in a row that make a healthy backend unhealthy.
    /// Default 3.
    #[serde(default = "default_fall")]
    pub fall: u32,
}

fn default_type() -> String {
    "http".into()
}
fn default_method() -> String {
    "GET".into()
}
fn default_path() -> String {
    "/".into()
}
fn default_expect() -> [u16; 2] {
    [200, 399]
}
fn default_interval() -> u64 {
    5_000
}
fn default_jitter() -> u32 {
    10
}
fn default_timeout() -> u64 {
    1_000
}
fn default_rise() -> u32 {
    2
}
fn default_fall() -> u32 {
    3
}

/// A validated health check.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheck {
    /// What a check does.
    pub kind: CheckKind,
    /// See [`HealthSection::interval_ms`].
    pub interval: Duration,
    /// See [`HealthSection::jitter_percent`].
    pub jitter_percent: u32,
    /// See [`HealthSection::timeout_ms`].
    pub timeout: Duration,
    /// See [`HealthSection::rise`].
    pub rise: u32,
    /// See [`HealthSection::fall`].
    pub fall: u32,
}

/// What one check does.
#[derive(Debug, Clone, PartialEq)]
pub enum CheckKind {
    /// Connect (and the TLS handshake, for an HTTPS pool).
    Tcp,
    /// An HTTP request.
    Http(HttpCheck),
}

/// An HTTP check's request and what passes.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpCheck {
    /// The method.
    pub method: http::Method,
    /// Path and query.
    pub path: http::uri::PathAndQuery,
    /// `Host`, when not the backend's address.
    pub host: Option<http::HeaderValue>,
    /// Lowest and highest passing status.
    pub expect: (u16, u16),
    /// Text the body must contain.
    pub body_contains: Option<String>,
}

impl HealthSection {
    /// Checks values; errors name `key` (`pools.NAME.health`) and the field.
    pub fn validate(&self, key: &str) -> Result<HealthCheck, ConfigError> {
        let at = |field: &str| format!("{key}.{field}");
        let kind = match self.kind.as_str() {
            "tcp" => CheckKind::Tcp,
            "http" => {
                let method = http::Method::from_bytes(self.method.as_bytes())
                    .ok()
                    .filter(|m| *m != http::Method::CONNECT)
                    .ok_or_else(|| {
                        ConfigError::at(
                            at("method"),
                            format!("{:?} is not an HTTP method for a check", self.method),
                        )
                    })?;
                let path = self
                    .path
                    .parse::<http::uri::PathAndQuery>()
                    .ok()
                    .filter(|_| self.path.starts_with('/'))
                    .ok_or_else(|| {
                        ConfigError::at(
                            at("path"),
                            format!("{:?} is not a path starting with '/'", self.path),
                        )
                    })?;
                let host = self
                    .host
                    .as_deref()
                    .map(|h| {
                        http::HeaderValue::from_str(h)
                            .ok()
                            .filter(|_| !h.is_empty())
                            .ok_or_else(|| {
                                ConfigError::at(at("host"), format!("{h:?} is not a valid Host"))
                            })
                    })
                    .transpose()?;
                let [low, high] = self.expect_status;
                if !(100..=599).contains(&low) || !(low..=599).contains(&high) {
                    return Err(ConfigError::at(
                        at("expect_status"),
                        format!(
                            "[{low}, {high}] is not a range of statuses; write [lowest, highest], e.g. [200, 399]"
                        ),
                    ));
                }
                if self.body_contains.as_deref() == Some("") {
                    return Err(ConfigError::at(
                        at("body_contains"),
                        "empty; leave it out to not look at the body",
                    ));
                }
                CheckKind::Http(HttpCheck {
                    method,
                    path,
                    host,
                    expect: (low, high),
                    body_contains: self.body_contains.clone(),
                })
            }
            other => {
                return Err(ConfigError::at(
                    at("type"),
                    format!("{other:?} is not a check type; use \"http\" or \"tcp\""),
                ));
            }
        };
        let interval = bounded_ms(&at("interval_ms"), self.interval_ms, 100, 3_600_000)?;
        let timeout = bounded_ms(&at("timeout_ms"), self.timeout_ms, 1, 600_000)?;
        if timeout > interval {
            return Err(ConfigError::at(
                at("timeout_ms"),
                format!(
                    "{} ms is longer than interval_ms ({} ms): checks of one backend would overlap",
                    timeout.as_millis(),
                    interval.as_millis()
                ),
            ));
        }
        Ok(HealthCheck {
            kind,
            interval,
            jitter_percent: in_range(&at("jitter_percent"), self.jitter_percent, 0, 50)?,
            timeout,
            rise: in_range(&at("rise"), self.rise, 1, 100)?,
            fall: in_range(&at("fall"), self.fall, 1, 100)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<HealthCheck, ConfigError> {
        toml::from_str::<HealthSection>(text)
            .unwrap()
            .validate("pools.web.health")
    }

    #[test]
    fn an_empty_section_is_an_http_get_of_slash_every_five_seconds() {
        let c = check("").unwrap();
        let CheckKind::Http(http) = &c.kind else {
            panic!("{c:?}")
        };
        assert_eq!(http.method, http::Method::GET);
        assert_eq!(http.path.as_str(), "/");
        assert_eq!(http.expect, (200, 399));
        assert_eq!(c.interval, Duration::from_secs(5));
        assert_eq!((c.rise, c.fall), (2, 3));
    }

    #[test]
    fn a_tcp_check_needs_no_path() {
        assert_eq!(check("type = \"tcp\"").unwrap().kind, CheckKind::Tcp);
    }

    #[test]
    fn bad_values_name_their_key() {
        let key = |t: &str| check(t).unwrap_err().key().unwrap().to_string();
        assert_eq!(key("type = \"udp\""), "pools.web.health.type");
        assert_eq!(key("path = \"healthz\""), "pools.web.health.path");
        assert_eq!(
            key("expect_status = [300, 200]"),
            "pools.web.health.expect_status"
        );
        assert_eq!(key("method = \"G T\""), "pools.web.health.method");
        assert_eq!(key("rise = 0"), "pools.web.health.rise");
        assert_eq!(
            key("interval_ms = 500\ntimeout_ms = 1000"),
            "pools.web.health.timeout_ms"
        );
        assert_eq!(
            key("body_contains = \"\""),
            "pools.web.health.body_contains"
        );
    }
}
