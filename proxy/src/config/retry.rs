//! `[pools.NAME.retry]`: which failed attempts are tried again on the next
//! candidate, and the budget that keeps retries from amplifying an outage.
//! How many further candidates at most is the pool's `retries`.
//!
//! ```toml
//! [pools.web.retry]
//! on_statuses = [502, 503, 504]
//! on_timeout = true
//! budget_percent = 20
//! ```

use std::time::Duration;

use serde::Deserialize;

use super::{bounded_ms, in_range};
use crate::error::ConfigError;

/// `[pools.NAME.retry]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySection {
    /// Response statuses that send an idempotent request to the next
    /// candidate (the last candidate's answer is passed on whatever it is).
    /// Default `[502, 503, 504]`.
    #[serde(default = "default_statuses")]
    pub on_statuses: Vec<u16>,
    /// Whether an idempotent request whose backend sent no response head
    /// within `response_timeout_ms` goes to the next candidate. Default true.
    #[serde(default = "yes")]
    pub on_timeout: bool,
    /// Whether an idempotent request whose connection was reset (or answered
    /// with garbage) after it went out, before any response, goes to the next
    /// candidate. Default true.
    #[serde(default = "yes")]
    pub on_reset: bool,
    /// Retry non-idempotent requests (POST, PATCH, …) on timeouts, resets and
    /// statuses too, as NGINX's `non_idempotent`. They may then run twice.
    /// Default false. (A connect failure is retried for every method: nothing
    /// was sent.)
    #[serde(default)]
    pub non_idempotent: bool,
    /// No retry starts once this long has passed since the first attempt,
    /// ms; 0: no limit beyond `retries`. Default 0.
    #[serde(default)]
    pub total_timeout_ms: u64,
    /// Retries after a request reached a backend may be at most this share
    /// of the pool's requests over the last 10 s (plus the floor below).
    /// Default 20.
    #[serde(default = "default_budget_percent")]
    pub budget_percent: u32,
    /// Retries per second always allowed, whatever the share. Default 10.
    #[serde(default = "default_budget_floor")]
    pub budget_min_per_second: u32,
    /// Request bodies up to this size are kept while they stream, so a
    /// failed attempt can be replayed; larger bodies are not retried once
    /// they began to stream. 0 keeps none. Default 65536.
    #[serde(default = "default_replay")]
    pub replay_body_bytes: u64,
}

impl Default for RetrySection {
    fn default() -> RetrySection {
        toml::from_str("").expect("every field has a default")
    }
}

fn yes() -> bool {
    true
}
fn default_statuses() -> Vec<u16> {
    vec![502, 503, 504]
}
fn default_budget_percent() -> u32 {
    20
}
fn default_budget_floor() -> u32 {
    10
}
fn default_replay() -> u64 {
    64 * 1024
}

/// A validated retry policy.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// See [`RetrySection::on_statuses`].
    pub on_statuses: Vec<u16>,
    /// See [`RetrySection::on_timeout`].
    pub on_timeout: bool,
    /// See [`RetrySection::on_reset`].
    pub on_reset: bool,
    /// See [`RetrySection::non_idempotent`].
    pub non_idempotent: bool,
    /// See [`RetrySection::total_timeout_ms`]; `None` for 0.
    pub total_timeout: Option<Duration>,
    /// See [`RetrySection::budget_percent`].
    pub budget_percent: u32,
    /// See [`RetrySection::budget_min_per_second`].
    pub budget_min_per_second: u32,
    /// See [`RetrySection::replay_body_bytes`].
    pub replay_body_bytes: u64,
}

impl RetryPolicy {
    /// Whether a response with `status` may be retried.
    pub fn retries_status(&self, status: u16) -> bool {
        self.on_statuses.contains(&status)
    }
}

impl RetrySection {
    /// Checks values; errors name `key` (`pools.NAME.retry`) and the field.
    pub fn validate(&self, key: &str) -> Result<RetryPolicy, ConfigError> {
        let at = |field: &str| format!("{key}.{field}");
        statuses(&at("on_statuses"), &self.on_statuses)?;
        let total_timeout = match self.total_timeout_ms {
            0 => None,
            ms => Some(bounded_ms(&at("total_timeout_ms"), ms, 1, 86_400_000)?),
        };
        Ok(RetryPolicy {
            on_statuses: self.on_statuses.clone(),
            on_timeout: self.on_timeout,
            on_reset: self.on_reset,
            non_idempotent: self.non_idempotent,
            total_timeout,
            budget_percent: in_range(&at("budget_percent"), self.budget_percent, 0, 100)?,
            budget_min_per_second: in_range(
                &at("budget_min_per_second"),
                self.budget_min_per_second,
                0,
                100_000,
            )?,
            replay_body_bytes: in_range(
                &at("replay_body_bytes"),
                self.replay_body_bytes,
                0,
                64 * 1024 * 1024,
            )?,
        })
    }
}

/// Checks a list of response statuses (500–599: a proxy retries or ejects
/// on server errors only).
pub(super) fn statuses(key: &str, list: &[u16]) -> Result<(), ConfigError> {
    if let Some(bad) = list.iter().find(|s| !(500..=599).contains(*s)) {
        return Err(ConfigError::at(
            key,
            format!("{bad} is not a server error status (500-599)"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(text: &str) -> Result<RetryPolicy, ConfigError> {
        toml::from_str::<RetrySection>(text)
            .unwrap()
            .validate("pools.web.retry")
    }

    #[test]
    fn by_default_gateway_errors_and_timeouts_of_idempotent_requests_are_retried() {
        let p = policy("").unwrap();
        assert!(p.retries_status(503) && !p.retries_status(500));
        assert!(p.on_timeout && p.on_reset && !p.non_idempotent);
        assert_eq!((p.budget_percent, p.budget_min_per_second), (20, 10));
        assert_eq!(p.replay_body_bytes, 65536);
        assert_eq!(p.total_timeout, None);
    }

    #[test]
    fn bad_values_name_their_key() {
        let key = |t: &str| policy(t).unwrap_err().key().unwrap().to_string();
        assert_eq!(key("on_statuses = [404]"), "pools.web.retry.on_statuses");
        assert_eq!(
            key("budget_percent = 101"),
            "pools.web.retry.budget_percent"
        );
        assert_eq!(
            key("total_timeout_ms = 100000000"),
            "pools.web.retry.total_timeout_ms"
        );
    }
}
