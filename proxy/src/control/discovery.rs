//! Service discovery: keeps the backends of pools with
//! `[pools.NAME.discovery]` current, from DNS (A/AAAA, or SRV) or a file.
//!
//! - At start, at `veer check` and at a reload, each discovered pool is
//!   looked up once before its state is built ([`fill`]): a pool whose
//!   lookup finds nothing is refused, naming `pools.NAME.discovery`. A
//!   reload keeps what was found for a pool whose discovery did not change.
//! - While serving, one task per discovered pool ([`watch`]) looks again:
//!   DNS when the answer's TTL runs out (kept between `refresh_ms` and
//!   `max_refresh_ms`), a file every `refresh_ms`. A set that really
//!   changed goes to the controller, which rebuilds that pool only: stats,
//!   health and ejections carry over by address (as on a reload), and the
//!   plugin's `set-backends` sees the new set.
//! - A failed or empty answer keeps the last set (logged when it starts
//!   failing and when it recovers, counted in `discovery_failures`): a pool
//!   is never emptied by a DNS outage or a half-written file.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ProtocolConfig, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{BackendConfig, BackendSection, Config, Discovery, Source, validate_backends};
use crate::control::reload::Command;
use crate::error::ConfigError;
use crate::metrics::Metrics;

/// How long one lookup (DNS with its retries, or reading the file) may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// What one lookup found.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Answer {
    /// In a stable order (by address), so an unchanged set compares equal.
    pub backends: Vec<BackendConfig>,
    /// How long DNS says the answer holds (files: none).
    pub ttl: Option<Duration>,
}

/// A pool's discovered set, kept by the controller across reloads.
#[derive(Debug, Clone)]
pub(crate) struct Known {
    pub pool: String,
    pub discovery: Discovery,
    pub backends: Vec<BackendConfig>,
}

/// What `config` found for its discovered pools (for the next [`fill`]).
pub(crate) fn known(config: &Config) -> Vec<Known> {
    config
        .pools
        .iter()
        .filter_map(|p| {
            p.discovery.as_ref().map(|d| Known {
                pool: p.name.clone(),
                discovery: d.clone(),
                backends: p.backends.clone(),
            })
        })
        .collect()
}

/// Fills in the backends of every discovered pool of `config`: what `known`
/// has for the same pool and discovery, else a lookup now. Blocking (a DNS
/// lookup runs on a thread of its own): call it where blocking is fine.
pub(crate) fn fill(config: &mut Config, known: &[Known]) -> Result<(), ConfigError> {
    for pool in config.pools.iter_mut() {
        let Some(discovery) = &pool.discovery else {
            continue;
        };
        if let Some(k) = known
            .iter()
            .find(|k| k.pool == pool.name && k.discovery == *discovery)
        {
            pool.backends = k.backends.clone();
            continue;
        }
        let answer = lookup_blocking(discovery).map_err(|reason| {
            ConfigError::at(
                format!("pools.{}.discovery", pool.name),
                format!("{} found no backends: {reason}", discovery.describe()),
            )
        })?;
        tracing::info!(pool = %pool.name, source = %discovery.describe(), backends = answer.backends.len(), "backends discovered");
        pool.backends = answer.backends;
    }
    Ok(())
}

/// [`lookup`] from synchronous code, on a thread with its own runtime (so it
/// works inside and outside an async runtime alike).
fn lookup_blocking(discovery: &Discovery) -> Result<Answer, String> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| format!("no runtime for the lookup: {e}"))?;
                runtime.block_on(async {
                    let resolver = resolver(discovery)?;
                    lookup(discovery, resolver.as_ref()).await
                })
            })
            .join()
            .unwrap_or_else(|_| Err("the lookup panicked".into()))
    })
}

/// A resolver for `discovery` (none for files): its nameserver, or the
/// system's. No cache: each lookup asks, so `max_refresh_ms` holds even when
/// the TTL is longer.
fn resolver(discovery: &Discovery) -> Result<Option<TokioResolver>, String> {
    if matches!(discovery.source, Source::File { .. }) {
        return Ok(None);
    }
    let mut builder = match discovery.nameserver {
        Some(addr) => {
            let connection = |protocol| {
                let mut c = ConnectionConfig::new(protocol);
                c.port = addr.port();
                c
            };
            let server = NameServerConfig::new(
                addr.ip(),
                true,
                vec![
                    connection(ProtocolConfig::Udp),
                    connection(ProtocolConfig::Tcp),
                ],
            );
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(vec![server]),
                TokioRuntimeProvider::default(),
            )
        }
        None => TokioResolver::builder_tokio()
            .map_err(|e| format!("cannot read the system's DNS configuration: {e}"))?,
    };
    let options: &mut ResolverOpts = builder.options_mut();
    options.timeout = Duration::from_secs(2);
    options.attempts = 2;
    options.cache_size = 0;
    builder
        .build()
        .map(Some)
        .map_err(|e| format!("cannot make a resolver: {e}"))
}

/// Looks `discovery` up once; an empty answer is an error.
pub(crate) async fn lookup(
    discovery: &Discovery,
    resolver: Option<&TokioResolver>,
) -> Result<Answer, String> {
    let found = tokio::time::timeout(LOOKUP_TIMEOUT, async {
        match (&discovery.source, resolver) {
            (Source::Dns { name, port }, Some(r)) => dns(discovery, r, name, *port).await,
            (Source::Srv { name }, Some(r)) => srv(discovery, r, name).await,
            (Source::File { path }, _) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || read_file(&path))
                    .await
                    .unwrap_or_else(|e| Err(format!("reading panicked: {e}")))
            }
            (_, None) => Err("no resolver".into()),
        }
    })
    .await
    .unwrap_or_else(|_| Err(format!("no answer in {LOOKUP_TIMEOUT:?}")))?;
    if found.backends.is_empty() {
        return Err("the answer lists no backend".into());
    }
    Ok(found)
}

fn until(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

fn backend(addr: SocketAddr, weight: u32, labels: Vec<(String, String)>) -> BackendConfig {
    BackendConfig {
        address: addr.to_string(),
        addr,
        weight,
        labels,
    }
}

/// Sorted by address, one backend per address (the first kept).
fn settle(mut backends: Vec<BackendConfig>) -> Vec<BackendConfig> {
    backends.sort_by_key(|b| b.addr);
    backends.dedup_by_key(|b| b.addr);
    backends
}

async fn dns(
    discovery: &Discovery,
    resolver: &TokioResolver,
    name: &str,
    port: u16,
) -> Result<Answer, String> {
    let found = resolver
        .lookup_ip(fqdn(name))
        .await
        .map_err(|e| format!("{name}: {e}"))?;
    let backends = found
        .iter()
        .map(|ip| {
            backend(
                SocketAddr::new(ip, port),
                discovery.weight,
                discovery.labels.clone(),
            )
        })
        .collect();
    Ok(Answer {
        backends: settle(backends),
        ttl: Some(until(found.valid_until())),
    })
}

async fn srv(
    discovery: &Discovery,
    resolver: &TokioResolver,
    name: &str,
) -> Result<Answer, String> {
    let found = resolver
        .srv_lookup(fqdn(name))
        .await
        .map_err(|e| format!("{name}: {e}"))?;
    let mut valid_until = found.valid_until();
    let records: Vec<_> = found
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(srv) => Some(srv.clone()),
            _ => None,
        })
        .collect();
    // RFC 2782: the lowest priority first; the others only when it is gone.
    let Some(best) = records.iter().map(|s| s.priority).min() else {
        return Err(format!("{name}: no SRV records"));
    };
    let mut backends = Vec::new();
    for record in records.iter().filter(|s| s.priority == best) {
        let target = record.target.to_utf8();
        let target = target.trim_end_matches('.').to_string();
        let mut labels = discovery.labels.clone();
        labels.retain(|(k, _)| k != "target");
        labels.push(("target".into(), target.clone()));
        labels.sort();
        // The addresses of the target: in the answer's additional section
        // when the server put them there, else asked for.
        let given: Vec<IpAddr> = found
            .additionals()
            .iter()
            .filter(|r| r.name == record.target)
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            })
            .collect();
        let ips = match given.is_empty() {
            false => given,
            true => match resolver.lookup_ip(record.target.clone()).await {
                Ok(ips) => {
                    valid_until = valid_until.min(ips.valid_until());
                    ips.iter().collect()
                }
                Err(e) => {
                    tracing::debug!(target = %target, "SRV target does not resolve: {e}");
                    Vec::new()
                }
            },
        };
        for ip in ips {
            backends.push(backend(
                SocketAddr::new(ip, record.port),
                u32::from(record.weight).max(1),
                labels.clone(),
            ));
        }
    }
    Ok(Answer {
        backends: settle(backends),
        ttl: Some(until(valid_until)),
    })
}

/// `name` as a fully qualified name (no search domains tried).
fn fqdn(name: &str) -> String {
    match name.ends_with('.') {
        true => name.to_string(),
        false => format!("{name}."),
    }
}

/// A backends file: TOML (`backends = [...]`) or, for a `.json` name, JSON
/// (an array, or an object with `backends`). Entries as in `backends`:
/// `"host:port"` or `{ address, weight, labels }`.
pub(crate) fn read_file(path: &Path) -> Result<Answer, String> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        backends: Vec<BackendSection>,
    }
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Json {
        List(Vec<BackendSection>),
        Object(File),
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let json = path.extension().is_some_and(|e| e == "json");
    let sections = match json {
        true => match serde_json::from_str::<Json>(&text) {
            Ok(Json::List(list)) => list,
            Ok(Json::Object(file)) => file.backends,
            Err(e) => return Err(format!("{} is not a backends list: {e}", path.display())),
        },
        false => {
            toml::from_str::<File>(&text)
                .map_err(|e| format!("{} is not a backends list: {e}", path.display()))?
                .backends
        }
    };
    let backends =
        validate_backends("backends", &sections).map_err(|e| format!("{}: {e}", path.display()))?;
    // File order is the operator's: ids follow it, as in veer.toml.
    Ok(Answer {
        backends,
        ttl: None,
    })
}

/// When to look again after an answer valid for `ttl`.
fn next_lookup(discovery: &Discovery, ttl: Option<Duration>) -> Duration {
    ttl.unwrap_or(discovery.refresh)
        .clamp(discovery.refresh, discovery.max_refresh)
}

/// Keeps looking `pool` up until `cancel`; sends each really new set to the
/// controller. `last` is what the pool serves now.
pub(crate) async fn watch(
    known: Known,
    commands: mpsc::UnboundedSender<Command>,
    metrics: std::sync::Arc<Metrics>,
    cancel: CancellationToken,
) {
    let Known {
        pool,
        discovery,
        backends: mut last,
    } = known;
    let resolver = match resolver(&discovery) {
        Ok(r) => r,
        Err(reason) => {
            tracing::warn!(pool = %pool, "discovery stopped, the pool keeps its backends: {reason}");
            return;
        }
    };
    let mut wait = discovery.refresh;
    let mut failing = false;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        match lookup(&discovery, resolver.as_ref()).await {
            Ok(answer) => {
                if failing {
                    failing = false;
                    tracing::info!(pool = %pool, source = %discovery.describe(), "discovery answers again");
                }
                wait = next_lookup(&discovery, answer.ttl);
                if answer.backends != last {
                    last = answer.backends.clone();
                    let _ = commands.send(Command::Discovered(Known {
                        pool: pool.clone(),
                        discovery: discovery.clone(),
                        backends: answer.backends,
                    }));
                }
            }
            Err(reason) => {
                Metrics::inc(&metrics.discovery_failures);
                if !failing {
                    failing = true;
                    tracing::warn!(pool = %pool, source = %discovery.describe(), "discovery failed, the pool keeps its {} backend(s): {reason}", last.len());
                }
                wait = discovery.refresh;
            }
        }
    }
}

/// What changed between two sets, for the log: `+a -b`.
pub(crate) fn difference(before: &[BackendConfig], after: &[BackendConfig]) -> String {
    let added = after
        .iter()
        .filter(|b| !before.iter().any(|o| o.addr == b.addr))
        .map(|b| format!("+{}", b.address));
    let removed = before
        .iter()
        .filter(|b| !after.iter().any(|o| o.addr == b.addr))
        .map(|b| format!("-{}", b.address));
    let mut all: Vec<String> = added.chain(removed).collect();
    if all.is_empty() {
        all.push("weights or labels".into());
    }
    all.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn discovery(source: Source) -> Discovery {
        Discovery {
            source,
            nameserver: None,
            refresh: Duration::from_millis(500),
            max_refresh: Duration::from_secs(10),
            labels: Vec::new(),
            weight: 1,
        }
    }

    fn temp(name: &str, text: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("veer-discovery-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn a_toml_file_lists_backends_with_weights_and_labels_in_file_order() {
        let path = temp(
            "b.toml",
            "backends = [\"127.0.0.1:9002\", { address = \"127.0.0.1:9001\", weight = 3, labels = { zone = \"b\" } }]",
        );
        let answer = read_file(&path).unwrap();
        let got: Vec<_> = answer
            .backends
            .iter()
            .map(|b| (b.address.as_str(), b.weight))
            .collect();
        assert_eq!(got, [("127.0.0.1:9002", 1), ("127.0.0.1:9001", 3)]);
        assert_eq!(answer.backends[1].labels, [("zone".into(), "b".into())]);
        assert_eq!(answer.ttl, None);
    }

    #[test]
    fn a_json_file_may_be_a_list_or_an_object() {
        let list = temp(
            "l.json",
            r#"["127.0.0.1:1", {"address": "127.0.0.1:2", "weight": 2}]"#,
        );
        assert_eq!(read_file(&list).unwrap().backends.len(), 2);
        let object = temp("o.json", r#"{"backends": ["127.0.0.1:3"]}"#);
        assert_eq!(
            read_file(&object).unwrap().backends[0].address,
            "127.0.0.1:3"
        );
    }

    #[test]
    fn a_broken_or_empty_file_is_an_error_not_an_empty_set() {
        let broken = temp("broken.json", r#"[{"address": "127.0.0.1:1""#);
        assert!(
            read_file(&broken)
                .unwrap_err()
                .contains("not a backends list")
        );
        let zero = temp(
            "zero.toml",
            "backends = [{ address = \"127.0.0.1:1\", weight = 0 }]",
        );
        assert!(read_file(&zero).unwrap_err().contains("weight"));
        let empty = temp("empty.toml", "backends = []");
        let d = discovery(Source::File { path: empty });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let err = runtime.block_on(lookup(&d, None)).unwrap_err();
        assert!(err.contains("no backend"), "{err}");
    }

    #[test]
    fn the_next_lookup_follows_the_ttl_within_the_floor_and_the_ceiling() {
        let d = discovery(Source::Srv { name: "x".into() });
        assert_eq!(
            next_lookup(&d, Some(Duration::ZERO)),
            Duration::from_millis(500)
        );
        assert_eq!(
            next_lookup(&d, Some(Duration::from_secs(3))),
            Duration::from_secs(3)
        );
        assert_eq!(
            next_lookup(&d, Some(Duration::from_secs(3600))),
            Duration::from_secs(10)
        );
        assert_eq!(next_lookup(&d, None), Duration::from_millis(500));
    }

    #[test]
    fn a_difference_names_what_came_and_went() {
        let b = |a: &str| backend(a.parse().unwrap(), 1, Vec::new());
        let before = [b("10.0.0.1:80"), b("10.0.0.2:80")];
        let after = [b("10.0.0.2:80"), b("10.0.0.3:80")];
        assert_eq!(difference(&before, &after), "+10.0.0.3:80 -10.0.0.1:80");
        assert_eq!(difference(&before, &before), "weights or labels");
    }
}
