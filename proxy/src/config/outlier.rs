//! `[pools.NAME.outlier]`: passive health beyond connect errors. A backend
//! is ejected after the pool's `max_fails` failures in a row (connect
//! errors, timeouts, and the statuses listed here) for `fail_timeout_ms`,
//! longer each time it is ejected again, and never more than a share of the
//! pool at once.
//!
//! ```toml
//! [pools.web.outlier]
//! statuses = [502, 503, 504]
//! max_ejection_ms = 300000
//! max_ejected_percent = 50
//! ```

use std::time::Duration;

use serde::Deserialize;

use super::{bounded_ms, in_range};
use crate::error::ConfigError;

/// `[pools.NAME.outlier]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierSection {
    /// Response statuses that count as a backend failure. Default
    /// `[502, 503, 504]`; `[]` counts only connect errors and timeouts.
    #[serde(default = "default_statuses")]
    pub statuses: Vec<u16>,
    /// The longest an ejection lasts, ms: the n-th ejection in a row lasts
    /// n × `fail_timeout_ms`, up to this. Default 300000.
    #[serde(default = "default_max_ejection")]
    pub max_ejection_ms: u64,
    /// The most backends ejected at once, as a share of the pool (at least
    /// one backend may always be ejected). Default 50.
    #[serde(default = "default_max_percent")]
    pub max_ejected_percent: u32,
}

impl Default for OutlierSection {
    fn default() -> OutlierSection {
        toml::from_str("").expect("every field has a default")
    }
}

fn default_statuses() -> Vec<u16> {
    vec![502, 503, 504]
}
fn default_max_ejection() -> u64 {
    300_000
}
fn default_max_percent() -> u32 {
    50
}

/// Validated ejection settings (with the pool's `max_fails` and
/// `fail_timeout_ms`).
#[derive(Debug, Clone, PartialEq)]
pub struct Ejection {
    /// Failures in a row that eject; 0 never ejects.
    pub max_fails: u32,
    /// The first ejection's length.
    pub base: Duration,
    /// See [`OutlierSection::max_ejection_ms`].
    pub max: Duration,
    /// See [`OutlierSection::max_ejected_percent`].
    pub max_ejected_percent: u32,
    /// See [`OutlierSection::statuses`].
    pub statuses: Vec<u16>,
}

impl Ejection {
    /// Whether a response with `status` counts as a failure.
    pub fn counts_status(&self, status: u16) -> bool {
        self.statuses.contains(&status)
    }

    /// How many of `pool_size` backends may be ejected at once.
    pub fn max_ejected(&self, pool_size: usize) -> usize {
        (pool_size * self.max_ejected_percent as usize / 100).max(1)
    }
}

impl OutlierSection {
    /// Checks values; errors name `key` (`pools.NAME.outlier`) and the field.
    pub fn validate(
        &self,
        key: &str,
        max_fails: u32,
        base: Duration,
    ) -> Result<Ejection, ConfigError> {
        let at = |field: &str| format!("{key}.{field}");
        super::retry::statuses(&at("statuses"), &self.statuses)?;
        let max = bounded_ms(&at("max_ejection_ms"), self.max_ejection_ms, 1, 86_400_000)?;
        if max < base {
            return Err(ConfigError::at(
                at("max_ejection_ms"),
                format!(
                    "{} ms is shorter than fail_timeout_ms ({} ms), the first ejection",
                    max.as_millis(),
                    base.as_millis()
                ),
            ));
        }
        Ok(Ejection {
            max_fails,
            base,
            max,
            max_ejected_percent: in_range(
                &at("max_ejected_percent"),
                self.max_ejected_percent,
                0,
                100,
            )?,
            statuses: self.statuses.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ejection(text: &str) -> Result<Ejection, ConfigError> {
        toml::from_str::<OutlierSection>(text).unwrap().validate(
            "pools.web.outlier",
            3,
            Duration::from_secs(10),
        )
    }

    #[test]
    fn at_least_one_backend_may_always_be_ejected() {
        let e = ejection("max_ejected_percent = 10").unwrap();
        assert_eq!(e.max_ejected(3), 1);
        assert_eq!(e.max_ejected(30), 3);
        assert_eq!(ejection("").unwrap().max_ejected(4), 2);
    }

    #[test]
    fn bad_values_name_their_key() {
        let key = |t: &str| ejection(t).unwrap_err().key().unwrap().to_string();
        assert_eq!(key("statuses = [200]"), "pools.web.outlier.statuses");
        assert_eq!(
            key("max_ejection_ms = 5000"),
            "pools.web.outlier.max_ejection_ms"
        );
        assert_eq!(
            key("max_ejected_percent = 150"),
            "pools.web.outlier.max_ejected_percent"
        );
    }
}
