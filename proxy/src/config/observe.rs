//! `[access_log]` and `[trace]`: what Veer writes about each request.
//!
//! ```toml
//! [access_log]
//! enabled = true
//! format = "json"          # or "text"
//! sample_percent = 10      # log one request in ten
//!
//! [trace]                  # decision tracing on request, besides routes with trace = true
//! header = "x-veer-trace"
//! from = ["127.0.0.1", "::1"]
//! ```

use serde::Deserialize;

use super::server::parse_cidr;
use crate::error::ConfigError;

/// `[access_log]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogSection {
    /// One line per request. Default false.
    #[serde(default)]
    pub enabled: bool,
    /// `"text"` or `"json"`. Default `"text"`.
    #[serde(default = "default_format")]
    pub format: String,
    /// The share of requests logged, in percent (a random sample). Default
    /// 100.
    #[serde(default = "default_sample")]
    pub sample_percent: f64,
    /// Where lines go: `"stdout"`, `"stderr"` or a file path (appended to;
    /// relative to the configuration file). Read at start only, whether the
    /// log is on then or turned on by a later reload. Default `"stdout"`.
    #[serde(default = "default_output")]
    pub output: String,
}

impl Default for AccessLogSection {
    fn default() -> AccessLogSection {
        toml::from_str("").expect("every field has a default")
    }
}

fn default_format() -> String {
    "text".into()
}
fn default_sample() -> f64 {
    100.0
}
fn default_output() -> String {
    "stdout".into()
}

/// `[trace]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceSection {
    /// A request header that asks for a decision trace. Default
    /// `"x-veer-trace"`.
    #[serde(default = "default_header")]
    pub header: String,
    /// Peers (addresses or CIDR blocks) whose trace header is taken.
    /// Default loopback only.
    #[serde(default = "default_from")]
    pub from: Vec<String>,
}

impl Default for TraceSection {
    fn default() -> TraceSection {
        toml::from_str("").expect("every field has a default")
    }
}

fn default_header() -> String {
    "x-veer-trace".into()
}
fn default_from() -> Vec<String> {
    vec!["127.0.0.0/8".into(), "::1".into()]
}

/// The access log's line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// `key=value` pairs after the request line.
    Text,
    /// One JSON object per line.
    Json,
}

/// Validated access log settings.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessLog {
    /// See [`AccessLogSection::format`].
    pub format: LogFormat,
    /// See [`AccessLogSection::sample_percent`], as a fraction.
    pub sample: f64,
}

/// Validated trace settings.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceSettings {
    /// See [`TraceSection::header`].
    pub header: http::HeaderName,
    /// See [`TraceSection::from`].
    pub from: Vec<ipnet::IpNet>,
}

impl AccessLogSection {
    /// Where lines go, a path resolved against `base_dir`.
    pub fn output(&self, base_dir: &std::path::Path) -> String {
        match self.output.as_str() {
            "stdout" | "stderr" => self.output.clone(),
            path => base_dir.join(path).display().to_string(),
        }
    }

    /// `None` when off.
    pub fn validate(&self) -> Result<Option<AccessLog>, ConfigError> {
        let format = match self.format.as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(ConfigError::at(
                    "access_log.format",
                    format!("{other:?} is not a format; use \"text\" or \"json\""),
                ));
            }
        };
        if !(0.0..=100.0).contains(&self.sample_percent) {
            return Err(ConfigError::at(
                "access_log.sample_percent",
                format!("{} is not between 0 and 100", self.sample_percent),
            ));
        }
        if self.output.is_empty() {
            return Err(ConfigError::at(
                "access_log.output",
                "empty; use \"stdout\", \"stderr\" or a file path",
            ));
        }
        Ok(self.enabled.then(|| AccessLog {
            format,
            sample: self.sample_percent / 100.0,
        }))
    }
}

impl TraceSection {
    /// Checks the header name and the peers.
    pub fn validate(&self) -> Result<TraceSettings, ConfigError> {
        let header = http::HeaderName::from_bytes(self.header.as_bytes()).map_err(|_| {
            ConfigError::at(
                "trace.header",
                format!("{:?} is not a header name", self.header),
            )
        })?;
        let from = self
            .from
            .iter()
            .enumerate()
            .map(|(i, text)| {
                parse_cidr(text).ok_or_else(|| {
                    ConfigError::at(
                        format!("trace.from[{i}]"),
                        format!("{text:?} is not an address or CIDR block"),
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(TraceSettings { header, from })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_access_log_is_off_by_default_and_tracing_answers_loopback_only() {
        assert_eq!(AccessLogSection::default().validate().unwrap(), None);
        let trace = TraceSection::default().validate().unwrap();
        assert_eq!(trace.header, "x-veer-trace");
        assert!(
            trace
                .from
                .iter()
                .any(|n| n.contains(&"127.0.0.1".parse::<std::net::IpAddr>().unwrap()))
        );
        assert!(
            !trace
                .from
                .iter()
                .any(|n| n.contains(&"10.0.0.1".parse::<std::net::IpAddr>().unwrap()))
        );
    }

    #[test]
    fn bad_values_name_their_key() {
        let log = |t: &str| {
            toml::from_str::<AccessLogSection>(t)
                .unwrap()
                .validate()
                .unwrap_err()
                .key()
                .unwrap()
                .to_string()
        };
        assert_eq!(log("format = \"xml\""), "access_log.format");
        assert_eq!(log("sample_percent = 101"), "access_log.sample_percent");
        let trace = |t: &str| {
            toml::from_str::<TraceSection>(t)
                .unwrap()
                .validate()
                .unwrap_err()
                .key()
                .unwrap()
                .to_string()
        };
        assert_eq!(trace("from = [\"nope\"]"), "trace.from[0]");
        assert_eq!(trace("header = \"bad header\""), "trace.header");
    }
}
