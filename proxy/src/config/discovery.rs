//! `[pools.NAME.discovery]`: where a pool's backends come from when they are
//! not listed in the file: DNS (A/AAAA or SRV) or a file any controller can
//! write. The control plane keeps the set current (see
//! `control::discovery`); a failed or empty answer keeps the last set.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::bounded_ms;
use crate::error::ConfigError;

/// `[pools.NAME.discovery]`: exactly one of `dns`, `srv` and `file`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoverySection {
    /// A name whose A and AAAA records are the backends, each on `port`
    /// (a Kubernetes headless Service: `web.default.svc.cluster.local`).
    pub dns: Option<String>,
    /// The port of `dns` backends. Required with `dns`.
    pub port: Option<u16>,
    /// A name whose SRV records are the backends: target, port and weight
    /// from each record, only the records of the lowest priority (RFC 2782:
    /// the others are for when those are gone). Consul:
    /// `web.service.consul`; Kubernetes: `_http._tcp.web.default.svc.cluster.local`.
    pub srv: Option<String>,
    /// A JSON or TOML file listing the backends (`backends = [{ address,
    /// weight, labels }]` in TOML, or a JSON array of such objects, or an
    /// object with `backends`), relative to the configuration file. Read
    /// again every `refresh_ms`; a rename into place and a Kubernetes
    /// volume swap are both seen.
    pub file: Option<PathBuf>,
    /// The DNS server to ask, `ip` or `ip:port`. Default: the system's
    /// (`/etc/resolv.conf`).
    pub nameserver: Option<String>,
    /// DNS: the shortest time between two lookups, ms, whatever the TTL
    /// says (a TTL of 0 would otherwise ask without pause); also the wait
    /// before a failed lookup is tried again. File: how often it is read.
    /// Default 1000.
    #[serde(default = "default_min_refresh")]
    pub refresh_ms: u64,
    /// DNS: the longest time between two lookups, ms, however long the TTL
    /// (so a removed backend is seen within this). Default 30000.
    #[serde(default = "default_max_refresh")]
    pub max_refresh_ms: u64,
    /// DNS and SRV: labels every discovered backend carries (SRV backends
    /// also get `target`, the record's target name). File entries carry
    /// their own.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// `dns`: the weight of every backend (SRV records carry their own).
    /// Default 1.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_min_refresh() -> u64 {
    1000
}
fn default_max_refresh() -> u64 {
    30_000
}
fn default_weight() -> u32 {
    1
}

/// Where backends come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A and AAAA records of `name`, each address on `port`.
    Dns {
        /// The name looked up.
        name: String,
        /// The backends' port.
        port: u16,
    },
    /// SRV records of `name`.
    Srv {
        /// The name looked up.
        name: String,
    },
    /// A file of backends.
    File {
        /// Absolute, or relative to the working directory.
        path: PathBuf,
    },
}

/// A validated `[pools.NAME.discovery]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovery {
    /// Where backends come from.
    pub source: Source,
    /// The DNS server, when not the system's.
    pub nameserver: Option<SocketAddr>,
    /// See [`DiscoverySection::refresh_ms`].
    pub refresh: Duration,
    /// See [`DiscoverySection::max_refresh_ms`].
    pub max_refresh: Duration,
    /// Labels every DNS backend carries, sorted by key.
    pub labels: Vec<(String, String)>,
    /// The weight of every A/AAAA backend.
    pub weight: u32,
}

impl Discovery {
    /// What the pool's lines in logs and `veer check` call it.
    pub fn describe(&self) -> String {
        match &self.source {
            Source::Dns { name, port } => format!("dns {name} port {port}"),
            Source::Srv { name } => format!("srv {name}"),
            Source::File { path } => format!("file {}", path.display()),
        }
    }
}

impl DiscoverySection {
    /// Checks the section; `key` is `pools.NAME.discovery`.
    pub fn validate(&self, key: &str, base_dir: &Path) -> Result<Discovery, ConfigError> {
        let at = |field: &str, reason: String| ConfigError::at(format!("{key}.{field}"), reason);
        let source = match (&self.dns, &self.srv, &self.file) {
            (Some(name), None, None) => {
                check_name(name).map_err(|r| at("dns", r))?;
                let port = self.port.filter(|p| *p != 0).ok_or_else(|| {
                    at(
                        "port",
                        "required with dns (the backends' port, 1-65535)".into(),
                    )
                })?;
                Source::Dns {
                    name: name.clone(),
                    port,
                }
            }
            (None, Some(name), None) => {
                check_name(name).map_err(|r| at("srv", r))?;
                Source::Srv { name: name.clone() }
            }
            (None, None, Some(path)) => Source::File {
                path: base_dir.join(path),
            },
            _ => {
                return Err(ConfigError::at(
                    key,
                    "give exactly one of dns, srv and file",
                ));
            }
        };
        if self.port.is_some() && !matches!(source, Source::Dns { .. }) {
            return Err(at(
                "port",
                "only for dns (SRV records and file entries carry their own)".into(),
            ));
        }
        let nameserver = match &self.nameserver {
            None => None,
            Some(text) => Some(parse_nameserver(text).map_err(|r| at("nameserver", r))?),
        };
        if nameserver.is_some() && matches!(source, Source::File { .. }) {
            return Err(at("nameserver", "only for dns and srv".into()));
        }
        const HOUR_MS: u64 = 3_600_000;
        let refresh = bounded_ms(&format!("{key}.refresh_ms"), self.refresh_ms, 10, HOUR_MS)?;
        let max_refresh = bounded_ms(
            &format!("{key}.max_refresh_ms"),
            self.max_refresh_ms,
            10,
            24 * HOUR_MS,
        )?;
        if max_refresh < refresh {
            return Err(at(
                "max_refresh_ms",
                format!(
                    "{} ms is shorter than refresh_ms ({} ms)",
                    self.max_refresh_ms, self.refresh_ms
                ),
            ));
        }
        if self.weight == 0 {
            return Err(at("weight", "must be at least 1".into()));
        }
        Ok(Discovery {
            source,
            nameserver,
            refresh,
            max_refresh,
            labels: self
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            weight: self.weight,
        })
    }
}

fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    match ok {
        true => Ok(()),
        false => Err(format!(
            "{name:?} is not a DNS name, e.g. \"web.default.svc.cluster.local\""
        )),
    }
}

fn parse_nameserver(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    text.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| {
            format!("{text:?} is not an ip or ip:port, e.g. \"10.96.0.10\" or \"127.0.0.1:8600\"")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn discovery(text: &str) -> Result<Discovery, ConfigError> {
        let section: DiscoverySection = toml::from_str(text).unwrap();
        section.validate("pools.web.discovery", Path::new("/etc/veer"))
    }

    fn key_of(text: &str) -> String {
        discovery(text).unwrap_err().key().unwrap().to_string()
    }

    #[test]
    fn a_dns_name_needs_a_port_and_takes_defaults_for_the_rest() {
        let d = discovery("dns = \"web.default.svc.cluster.local\"\nport = 8080").unwrap();
        assert_eq!(
            d.source,
            Source::Dns {
                name: "web.default.svc.cluster.local".into(),
                port: 8080
            }
        );
        assert_eq!(d.refresh, Duration::from_secs(1));
        assert_eq!(d.max_refresh, Duration::from_secs(30));
        assert_eq!((d.weight, d.nameserver), (1, None));
        assert_eq!(key_of("dns = \"web\""), "pools.web.discovery.port");
    }

    #[test]
    fn srv_and_file_sources_take_no_port_and_a_file_is_relative_to_the_config() {
        let d = discovery("srv = \"web.service.consul\"\nnameserver = \"127.0.0.1:8600\"").unwrap();
        assert_eq!(d.nameserver, Some("127.0.0.1:8600".parse().unwrap()));
        let f = discovery("file = \"backends.json\"").unwrap();
        assert_eq!(
            f.source,
            Source::File {
                path: PathBuf::from("/etc/veer/backends.json")
            }
        );
        assert_eq!(
            key_of("srv = \"web\"\nport = 80"),
            "pools.web.discovery.port"
        );
        assert_eq!(
            key_of("file = \"b.json\"\nnameserver = \"10.0.0.1\""),
            "pools.web.discovery.nameserver"
        );
    }

    #[test]
    fn exactly_one_source_is_given() {
        assert_eq!(key_of(""), "pools.web.discovery");
        assert_eq!(
            key_of("dns = \"a\"\nport = 1\nsrv = \"b\""),
            "pools.web.discovery"
        );
    }

    #[test]
    fn bad_values_name_their_key() {
        assert_eq!(
            key_of("dns = \"no spaces\"\nport = 80"),
            "pools.web.discovery.dns"
        );
        assert_eq!(
            key_of("srv = \"x\"\nnameserver = \"dns.example\""),
            "pools.web.discovery.nameserver"
        );
        assert_eq!(
            key_of("srv = \"x\"\nrefresh_ms = 5000\nmax_refresh_ms = 1000"),
            "pools.web.discovery.max_refresh_ms"
        );
        assert_eq!(
            key_of("dns = \"x\"\nport = 80\nweight = 0"),
            "pools.web.discovery.weight"
        );
        let port_53 = discovery("srv = \"x\"\nnameserver = \"10.96.0.10\"").unwrap();
        assert_eq!(port_53.nameserver, Some("10.96.0.10:53".parse().unwrap()));
    }
}
