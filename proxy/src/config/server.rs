//! `[server]`: where Veer listens, how many workers serve, and how long
//! shutdown may take.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use super::bounded_ms;
use crate::error::ConfigError;

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

/// Validated `[server]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerSettings {
    /// Where to listen.
    pub listen: SocketAddr,
    /// Worker threads (resolved: never 0).
    pub workers: usize,
    /// See [`ServerSection::header_read_timeout_ms`].
    pub header_read_timeout: Duration,
    /// See [`ServerSection::shutdown_grace_ms`].
    pub shutdown_grace: Duration,
}

impl ServerSection {
    /// Checks the section and resolves its defaults.
    pub fn validate(&self) -> Result<ServerSettings, ConfigError> {
        let listen: SocketAddr = self.listen.parse().map_err(|_| {
            ConfigError::at(
                "server.listen",
                format!(
                    "{:?} is not an ip:port address, e.g. \"127.0.0.1:8080\"",
                    self.listen
                ),
            )
        })?;
        let workers = match self.workers {
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
        Ok(ServerSettings {
            listen,
            workers,
            header_read_timeout: bounded_ms(
                "server.header_read_timeout_ms",
                self.header_read_timeout_ms,
                1,
                3_600_000,
            )?,
            shutdown_grace: bounded_ms(
                "server.shutdown_grace_ms",
                self.shutdown_grace_ms,
                0,
                3_600_000,
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(toml_text: &str) -> ServerSection {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn the_defaults_listen_on_loopback_8080_with_a_worker_per_core() {
        let s = section("").validate().unwrap();
        assert_eq!(s.listen, "127.0.0.1:8080".parse().unwrap());
        assert!(s.workers >= 1);
    }

    #[test]
    fn a_listen_address_that_is_not_ip_and_port_names_its_key() {
        let err = section("listen = \"nope\"").validate().unwrap_err();
        assert_eq!(err.key(), Some("server.listen"));
    }
}
