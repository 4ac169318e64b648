//! `[server]`: where Veer listens, how many workers serve, and how long
//! shutdown may take.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{bounded_ms, in_range};
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
    /// Most client connections open at once, all workers together (NGINX
    /// `worker_connections`, HAProxy `maxconn`). At the cap Veer stops
    /// accepting (new clients wait in the listen backlog) until one closes,
    /// and keeps serving the rest. Default 0: derived from the open-file
    /// limit (half of it, less a reserve, since each client may need a
    /// backend connection too).
    pub max_connections: u32,
    /// Listen backlog: connections the kernel queues while Veer is not
    /// accepting. Default 1024.
    pub backlog: u32,
    /// Time from accepting a connection to its first complete request head,
    /// ms; covers protocol detection. Past it the connection is closed.
    /// Default 10000.
    pub first_request_timeout_ms: u64,
    /// Time from a request head's first byte to its end on a keep-alive
    /// connection, ms. Past it the connection is closed. Default 10000.
    pub header_read_timeout_ms: u64,
    /// How long a client connection may sit idle (HTTP/1.1 between requests,
    /// HTTP/2 with no open stream) before Veer closes it, ms (HTTP/2 with
    /// GOAWAY). Default 75000.
    pub keepalive_timeout_ms: u64,
    /// HTTP/2: send a PING after this long without frames and close the
    /// connection if it is not answered within `h2_ping_timeout_ms`, ms; 0
    /// turns PINGs off. Default 30000.
    pub h2_ping_interval_ms: u64,
    /// See `h2_ping_interval_ms`. Default 10000.
    pub h2_ping_timeout_ms: u64,
    /// Most bytes in a request head (request line and headers); larger: 431.
    /// Default 65536.
    pub max_header_bytes: u32,
    /// Most header fields in a request; more: 431. Default 100.
    pub max_headers: u32,
    /// Largest request body accepted, bytes; larger: 413. Default 0: no limit.
    pub max_body_bytes: u64,
    /// Longest pause allowed while a client sends a request body, ms; past
    /// it the client gets 408. Default 60000.
    pub client_body_timeout_ms: u64,
    /// Longest time a client may leave a response unread (writes to it
    /// blocked), ms; past it the connection is closed. Default 60000.
    pub client_send_timeout_ms: u64,
    /// On shutdown, time given to in-flight requests to finish, ms.
    /// Default 10000.
    pub shutdown_grace_ms: u64,
    /// Peers (CIDR blocks, e.g. `"10.0.0.0/8"`, or single addresses) whose
    /// `X-Forwarded-For`, `Forwarded` and `X-Real-IP` are believed. From a
    /// trusted peer Veer appends to `X-Forwarded-For`; from any other it
    /// replaces it and removes `Forwarded` and `X-Real-IP`. Default none.
    pub trusted_proxies: Vec<String>,
    /// The path sent to backends: `"original"` (as the client wrote it) or
    /// `"normalized"` (as routes see it). Default `"original"`.
    pub forward_path: ForwardPath,
    /// 301 or 308: the plain listener answers every request with a redirect
    /// to the same host and path over HTTPS (the `[tls]` listener's port).
    /// 0 serves plain HTTP. Default 0.
    pub redirect_to_https: u16,
    /// A Unix socket where this process waits for its successor: `veer run
    /// --take-over PATH` connects there, receives the listening sockets and
    /// takes over (zero-downtime binary upgrade). An absolute path; the
    /// socket is made mode 0600 and only a peer of the same user (or root)
    /// is served. Default `""`: off.
    pub upgrade_socket: String,
}

/// Which path a backend gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ForwardPath {
    /// As the client sent it.
    #[default]
    Original,
    /// Normalised, as routes match it.
    Normalized,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            listen: "127.0.0.1:8080".into(),
            workers: 0,
            max_connections: 0,
            backlog: 1024,
            first_request_timeout_ms: 10_000,
            header_read_timeout_ms: 10_000,
            keepalive_timeout_ms: 75_000,
            h2_ping_interval_ms: 30_000,
            h2_ping_timeout_ms: 10_000,
            max_header_bytes: 65_536,
            max_headers: 100,
            max_body_bytes: 0,
            client_body_timeout_ms: 60_000,
            client_send_timeout_ms: 60_000,
            shutdown_grace_ms: 10_000,
            trusted_proxies: Vec::new(),
            forward_path: ForwardPath::Original,
            redirect_to_https: 0,
            upgrade_socket: String::new(),
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
    /// See [`ServerSection::max_connections`]; 0 is resolved when serving
    /// starts (from the open-file limit).
    pub max_connections: u32,
    /// See [`ServerSection::backlog`].
    pub backlog: u32,
    /// See [`ServerSection::first_request_timeout_ms`].
    pub first_request_timeout: Duration,
    /// See [`ServerSection::header_read_timeout_ms`].
    pub header_read_timeout: Duration,
    /// See [`ServerSection::keepalive_timeout_ms`].
    pub keepalive_timeout: Duration,
    /// See [`ServerSection::h2_ping_interval_ms`]; `None` when off.
    pub h2_ping_interval: Option<Duration>,
    /// See [`ServerSection::h2_ping_timeout_ms`].
    pub h2_ping_timeout: Duration,
    /// See [`ServerSection::max_header_bytes`].
    pub max_header_bytes: usize,
    /// See [`ServerSection::max_headers`].
    pub max_headers: usize,
    /// See [`ServerSection::max_body_bytes`]; `None`: no limit.
    pub max_body_bytes: Option<u64>,
    /// See [`ServerSection::client_body_timeout_ms`].
    pub client_body_timeout: Duration,
    /// See [`ServerSection::client_send_timeout_ms`].
    pub client_send_timeout: Duration,
    /// See [`ServerSection::shutdown_grace_ms`].
    pub shutdown_grace: Duration,
    /// See [`ServerSection::trusted_proxies`].
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// See [`ServerSection::forward_path`].
    pub forward_path: ForwardPath,
    /// See [`ServerSection::redirect_to_https`]; `None` when off.
    pub redirect_to_https: Option<http::StatusCode>,
    /// See [`ServerSection::upgrade_socket`]; `None` when off.
    pub upgrade_socket: Option<PathBuf>,
}

/// The longest `server.upgrade_socket`, bytes: a Unix socket path has room
/// for 107, and the socket is first bound under a temporary name up to 7
/// bytes longer (see `listen/takeover.rs`).
pub const MAX_UPGRADE_SOCKET_BYTES: usize = 100;

/// One hour: the upper bound of every client-side timer.
const HOUR_MS: u64 = 3_600_000;

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
        in_range("server.backlog", self.backlog, 1, 65_535)?;
        in_range(
            "server.max_header_bytes",
            self.max_header_bytes,
            1024,
            16 << 20,
        )?;
        in_range("server.max_headers", self.max_headers, 1, 10_000)?;
        let trusted_proxies = self
            .trusted_proxies
            .iter()
            .enumerate()
            .map(|(i, text)| {
                parse_cidr(text).ok_or_else(|| {
                    ConfigError::at(
                        format!("server.trusted_proxies[{i}]"),
                        format!("{text:?} is not an address or CIDR block, e.g. \"10.0.0.0/8\" or \"::1\""),
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        let redirect_to_https = match self.redirect_to_https {
            0 => None,
            301 => Some(http::StatusCode::MOVED_PERMANENTLY),
            308 => Some(http::StatusCode::PERMANENT_REDIRECT),
            other => {
                return Err(ConfigError::at(
                    "server.redirect_to_https",
                    format!("{other} is not 0, 301 or 308"),
                ));
            }
        };
        let h2_ping_interval = bounded_ms(
            "server.h2_ping_interval_ms",
            self.h2_ping_interval_ms,
            0,
            HOUR_MS,
        )?;
        let upgrade_socket = upgrade_socket(&self.upgrade_socket)?;
        Ok(ServerSettings {
            listen,
            workers,
            max_connections: self.max_connections,
            backlog: self.backlog,
            first_request_timeout: bounded_ms(
                "server.first_request_timeout_ms",
                self.first_request_timeout_ms,
                1,
                HOUR_MS,
            )?,
            header_read_timeout: bounded_ms(
                "server.header_read_timeout_ms",
                self.header_read_timeout_ms,
                1,
                HOUR_MS,
            )?,
            keepalive_timeout: bounded_ms(
                "server.keepalive_timeout_ms",
                self.keepalive_timeout_ms,
                1,
                24 * HOUR_MS,
            )?,
            h2_ping_interval: (!h2_ping_interval.is_zero()).then_some(h2_ping_interval),
            h2_ping_timeout: bounded_ms(
                "server.h2_ping_timeout_ms",
                self.h2_ping_timeout_ms,
                1,
                HOUR_MS,
            )?,
            max_header_bytes: self.max_header_bytes as usize,
            max_headers: self.max_headers as usize,
            max_body_bytes: (self.max_body_bytes != 0).then_some(self.max_body_bytes),
            client_body_timeout: bounded_ms(
                "server.client_body_timeout_ms",
                self.client_body_timeout_ms,
                1,
                HOUR_MS,
            )?,
            client_send_timeout: bounded_ms(
                "server.client_send_timeout_ms",
                self.client_send_timeout_ms,
                1,
                HOUR_MS,
            )?,
            shutdown_grace: bounded_ms(
                "server.shutdown_grace_ms",
                self.shutdown_grace_ms,
                0,
                HOUR_MS,
            )?,
            trusted_proxies,
            forward_path: self.forward_path,
            redirect_to_https,
            upgrade_socket,
        })
    }
}

/// `server.upgrade_socket`: off (`""`), or an absolute path short enough
/// for a Unix socket.
fn upgrade_socket(text: &str) -> Result<Option<PathBuf>, ConfigError> {
    if text.is_empty() {
        return Ok(None);
    }
    let bad = |reason: String| ConfigError::at("server.upgrade_socket", reason);
    let path = PathBuf::from(text);
    if !path.is_absolute() {
        return Err(bad(format!(
            "{text:?} is not an absolute path, e.g. \"/run/veer/upgrade.sock\""
        )));
    }
    if text.ends_with('/') || path.file_name().is_none() {
        return Err(bad(format!("{text:?} names a folder, not a socket file")));
    }
    if text.len() > MAX_UPGRADE_SOCKET_BYTES {
        return Err(bad(format!(
            "{text:?} is {} bytes long; a Unix socket path may have at most {MAX_UPGRADE_SOCKET_BYTES}",
            text.len()
        )));
    }
    Ok(Some(path))
}

/// `"10.0.0.0/8"`, `"::1/128"` or a bare address (a block of one).
pub(super) fn parse_cidr(text: &str) -> Option<ipnet::IpNet> {
    let text = text.trim();
    if let Ok(net) = text.parse::<ipnet::IpNet>() {
        return Some(net.trunc());
    }
    text.parse::<std::net::IpAddr>()
        .ok()
        .map(ipnet::IpNet::from)
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
    fn every_timer_has_a_documented_default() {
        let s = section("").validate().unwrap();
        assert_eq!(s.first_request_timeout, Duration::from_secs(10));
        assert_eq!(s.header_read_timeout, Duration::from_secs(10));
        assert_eq!(s.keepalive_timeout, Duration::from_secs(75));
        assert_eq!(s.h2_ping_interval, Some(Duration::from_secs(30)));
        assert_eq!(s.client_body_timeout, Duration::from_secs(60));
        assert_eq!((s.max_header_bytes, s.max_headers), (65_536, 100));
        assert_eq!(s.max_body_bytes, None);
        assert_eq!(s.forward_path, ForwardPath::Original);
    }

    #[test]
    fn out_of_range_settings_name_their_key() {
        let key = |t: &str| {
            section(t)
                .validate()
                .unwrap_err()
                .key()
                .unwrap()
                .to_string()
        };
        assert_eq!(
            key("keepalive_timeout_ms = 0"),
            "server.keepalive_timeout_ms"
        );
        assert_eq!(
            key("first_request_timeout_ms = 99999999999"),
            "server.first_request_timeout_ms"
        );
        assert_eq!(key("max_headers = 0"), "server.max_headers");
        assert_eq!(key("max_header_bytes = 10"), "server.max_header_bytes");
        assert_eq!(key("backlog = 0"), "server.backlog");
        assert_eq!(
            key("trusted_proxies = [\"10.0.0.0/8\", \"nope\"]"),
            "server.trusted_proxies[1]"
        );
    }

    #[test]
    fn trusted_proxies_take_blocks_and_single_addresses() {
        let s = section("trusted_proxies = [\"10.1.2.3/8\", \"::1\"]")
            .validate()
            .unwrap();
        let nets: Vec<String> = s.trusted_proxies.iter().map(|n| n.to_string()).collect();
        assert_eq!(nets, vec!["10.0.0.0/8", "::1/128"]);
    }

    #[test]
    fn the_upgrade_socket_is_off_by_default_and_must_be_a_short_absolute_path() {
        assert_eq!(section("").validate().unwrap().upgrade_socket, None);
        let on = section("upgrade_socket = \"/run/veer/upgrade.sock\"")
            .validate()
            .unwrap();
        assert_eq!(
            on.upgrade_socket.as_deref(),
            Some(std::path::Path::new("/run/veer/upgrade.sock"))
        );
        for bad in [
            "upgrade_socket = \"upgrade.sock\"".to_string(),
            "upgrade_socket = \"/run/veer/\"".to_string(),
            format!(
                "upgrade_socket = \"/{}\"",
                "a".repeat(MAX_UPGRADE_SOCKET_BYTES)
            ),
        ] {
            let err = section(&bad).validate().unwrap_err();
            assert_eq!(err.key(), Some("server.upgrade_socket"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_listen_address_that_is_not_ip_and_port_names_its_key() {
        let err = section("listen = \"nope\"").validate().unwrap_err();
        assert_eq!(err.key(), Some("server.listen"));
    }
}
