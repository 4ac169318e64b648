//! `upstream NAME { … }` → `[pools.NAME]`: servers and their parameters,
//! the balancing method, idle connections. Also the one-backend pool of a
//! `proxy_pass` to a literal address.

use super::parse::Directive;
use super::units::{number, time_ms};
use super::{Findings, Table, toml_string};

/// A pool being built.
#[derive(Debug)]
pub(super) struct Pool {
    /// Its name in `[pools.NAME]`.
    pub name: String,
    /// Where it comes from, for the comment above it.
    pub origin: String,
    /// Backends in order.
    pub backends: Vec<Backend>,
    /// Servers left out, each as a commented line of `backends`.
    pub left_out: Vec<String>,
    /// Strategy plugin name.
    pub strategy: &'static str,
    /// `strategy_config` entries (TOML values).
    pub strategy_config: Vec<(&'static str, String)>,
    /// Keys of `[pools.NAME]` beside the above.
    pub settings: Table,
    /// `[pools.NAME.retry]`.
    pub retry: Table,
    /// `[pools.NAME.outlier]`.
    pub outlier: Table,
    /// `https://` in `proxy_pass`: `[pools.NAME.tls]`, and the line.
    pub tls: Option<usize>,
    /// Whether a `proxy_pass` names it.
    pub used: bool,
    /// The `upstream` block's name, for `proxy_pass`; `None` for the pool
    /// of a literal address.
    pub upstream: Option<String>,
}

/// One backend.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Backend {
    /// `host:port`.
    pub address: String,
    /// NGINX's `weight=`, default 1.
    pub weight: u64,
    /// The server as NGINX wrote it, when that differs from `address`
    /// (no port): its `hash_key` label under `ring = "nginx"`, which places
    /// servers by that text.
    pub written: Option<String>,
}

impl Pool {
    fn new(name: &str, origin: String) -> Pool {
        Pool {
            name: name.to_string(),
            origin,
            backends: Vec::new(),
            left_out: Vec::new(),
            strategy: "round-robin",
            strategy_config: Vec::new(),
            settings: Table::default(),
            retry: Table::default(),
            outlier: Table::default(),
            tls: None,
            used: false,
            upstream: None,
        }
    }

    /// The pool of `proxy_pass` to `address` (no `upstream` block).
    pub fn literal(name: &str, address: String, line: usize) -> Pool {
        let mut pool = Pool::new(name, format!("proxy_pass to {address}, line {line}"));
        pool.backends.push(Backend {
            address,
            weight: 1,
            written: None,
        });
        pool
    }
}

/// `host:port` from an NGINX address (`host`, `host:port`, `[v6]:port`),
/// with `default_port` when none is given; `None` for `unix:` sockets and
/// addresses with variables.
pub(super) fn address(text: &str, default_port: u16) -> Option<String> {
    if text.starts_with("unix:") || text.contains('$') || text.is_empty() {
        return None;
    }
    let has_port = match text.rfind(']') {
        Some(close) => text[close..].contains(':'),
        None => text.contains(':'),
    };
    if has_port {
        let (_, port) = text.rsplit_once(':')?;
        port.parse::<u16>().ok()?;
        Some(text.to_string())
    } else {
        Some(format!("{text}:{default_port}"))
    }
}

/// A pool name from NGINX's text: what is not a letter, digit, `-` or `_`
/// becomes `-`.
pub(super) fn pool_name(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect::<String>()
        .trim_matches('-')
        .to_string()
}

/// A server's `max_fails`, `fail_timeout` and `max_conns` (as written) and
/// its line.
struct PassiveHealth {
    max_fails: Option<u64>,
    fail_timeout: Option<u64>,
    max_conns: Option<u64>,
    line: usize,
}

/// Converts `upstream NAME { … }`.
pub(super) fn from_upstream(d: &Directive, f: &mut Findings) -> Option<Pool> {
    let Some(name) = d.args.first().filter(|_| d.args.len() == 1) else {
        f.dropped(d, "an upstream needs exactly one name");
        return None;
    };
    let pool_name = pool_name(name);
    if pool_name.is_empty() {
        f.dropped(d, "Veer pool names use letters, digits, '-' and '_'");
        return None;
    }
    if pool_name != *name {
        f.approximated(
            d,
            format!("Veer pool names use letters, digits, '-' and '_': pool {pool_name}"),
        );
    }
    let mut pool = Pool::new(&pool_name, format!("upstream {name}, line {}", d.line));
    pool.upstream = Some(name.clone());
    let mut method: Option<&Directive> = None;
    let mut keepalive: Option<(u64, &Directive)> = None;
    let mut health = Vec::new();
    let mut backups = Vec::new();
    let mut downs = Vec::new();
    for c in d.children() {
        match c.name.as_str() {
            "server" => {
                if let Some(h) = server(c, &mut pool, &mut backups, &mut downs, f) {
                    health.push(h);
                }
            }
            "least_conn" | "ip_hash" | "hash" | "random" => match method {
                Some(first) => f.dropped(
                    c,
                    format!("the balancing method is already {} (line {})", first.name, first.line),
                ),
                None => {
                    if strategy(c, &mut pool, f) {
                        method = Some(c);
                    }
                }
            },
            "keepalive" => match c.args.first().and_then(|n| number(n)) {
                Some(n) if n > 0 && c.args.len() == 1 => keepalive = Some((n, c)),
                _ => f.dropped(c, "expected one number of connections"),
            },
            "keepalive_timeout" => match c.args.first().and_then(|t| time_ms(t)) {
                Some(ms) if (1..=86_400_000).contains(&ms) => {
                    pool.settings.set("idle_timeout_ms", ms.to_string(), c, f)
                }
                _ => f.dropped(c, "expected a time between 1 ms and 1 day"),
            },
            // Veer's per-backend state is always shared by all workers.
            "zone" => {}
            "keepalive_requests" | "keepalive_time" => f.dropped(
                c,
                "Veer keeps an idle backend connection until idle_timeout_ms, whatever its age or use",
            ),
            "sticky" => f.dropped(
                c,
                "use strategy = \"sticky\" (a cookie of Veer's own, with failover)",
            ),
            _ => f.dropped(c, super::reason_for(&c.name)),
        }
    }
    if pool.backends.is_empty() {
        // Nothing left but backups or servers marked down: keep them, so
        // the pool stays usable.
        let kept = if backups.is_empty() { downs } else { backups };
        if kept.is_empty() {
            f.dropped(d, "no usable server in it");
            return None;
        }
        f.approximated(
            d,
            "every server is a backup or down: they are kept as ordinary backends",
        );
        pool.left_out.clear();
        pool.backends = kept;
    }
    if matches!(pool.strategy, "ip-hash" | "consistent-hash") && !pool.backends.is_empty() {
        for down in d
            .children()
            .iter()
            .filter(|c| c.name == "server" && c.args.iter().any(|a| a == "down"))
        {
            f.approximated(
                down,
                "left out: NGINX keeps a down server's place in the hash, Veer's pool does not, so some clients or keys move; to keep them, list it and drain it through the admin API",
            );
        }
    }
    if pool.strategy == "round-robin" && pool.backends.iter().any(|b| b.weight != 1) {
        pool.strategy = "weighted-round-robin";
    }
    if !pool.strategy_config.iter().any(|(k, _)| *k == "ring") {
        for b in &mut pool.backends {
            b.written = None;
        }
    }
    passive_health(&health, &mut pool, f);
    if let Some((n, c)) = keepalive {
        let servers = pool.backends.len() as u64;
        let per_backend = n.div_ceil(servers);
        pool.settings
            .set("max_idle_per_backend", per_backend.to_string(), c, f);
        if servers > 1 {
            f.approximated(
                c,
                format!(
                    "NGINX keeps {n} idle connections per worker for the whole upstream; Veer's max_idle_per_backend counts per backend: {n} / {servers} servers = {per_backend}"
                ),
            );
        }
    }
    Some(pool)
}

/// `server ADDR [weight=N] [max_fails=N] [fail_timeout=T] [max_conns=N]
/// [backup] [down]`: adds the backend (or leaves it out); returns its
/// passive-health parameters.
fn server(
    c: &Directive,
    pool: &mut Pool,
    backups: &mut Vec<Backend>,
    downs: &mut Vec<Backend>,
    f: &mut Findings,
) -> Option<PassiveHealth> {
    let Some(address) = c.args.first().and_then(|a| address(a, 80)) else {
        f.dropped(
            c,
            "Veer's backends are host:port addresses (no unix: sockets, no variables)",
        );
        return None;
    };
    let written = (c.args[0] != address).then(|| c.args[0].clone());
    let mut backend = Backend {
        address,
        weight: 1,
        written,
    };
    let mut health = PassiveHealth {
        max_fails: None,
        fail_timeout: None,
        max_conns: None,
        line: c.line,
    };
    let (mut backup, mut down) = (false, false);
    for param in &c.args[1..] {
        let (key, value) = param.split_once('=').unwrap_or((param, ""));
        let parsed = match key {
            "weight" => number(value)
                .filter(|w| (1..=u32::MAX as u64).contains(w))
                .map(|w| backend.weight = w),
            "max_fails" => number(value).map(|n| health.max_fails = Some(n)),
            "fail_timeout" => time_ms(value)
                .filter(|ms| (1..=86_400_000).contains(ms))
                .map(|ms| health.fail_timeout = Some(ms)),
            "max_conns" => number(value)
                .filter(|n| *n <= u32::MAX as u64)
                .map(|n| health.max_conns = Some(n)),
            "slow_start" => time_ms(value).map(|ms| {
                pool.settings.set("slow_start_ms", ms.to_string(), c, f);
            }),
            "backup" => {
                backup = true;
                Some(())
            }
            "down" => {
                down = true;
                Some(())
            }
            _ => {
                f.dropped_part(c, param, "Veer has no such backend parameter");
                Some(())
            }
        };
        if parsed.is_none() {
            f.dropped_part(c, param, "not a value Veer can use here");
        }
    }
    let listed = toml_string(&backend.address);
    if pool.backends.iter().any(|b| b.address == backend.address) {
        f.dropped(
            c,
            "this address is listed already; Veer lists a backend once",
        );
        return None;
    }
    if down {
        pool.left_out
            .push(format!("{listed},  # marked down (line {})", c.line));
        downs.push(backend);
        return None;
    }
    if backup {
        f.dropped(
            c,
            "Veer has no backup servers: left out of the pool (list it in backends to share the load, or rely on retries and ejection)",
        );
        pool.left_out.push(format!(
            "{listed},  # backup (line {}): not carried over",
            c.line
        ));
        backups.push(backend);
        return None;
    }
    pool.backends.push(backend);
    Some(health)
}

/// `max_fails`, `fail_timeout` and `max_conns` are per server in NGINX and
/// per pool in Veer: one value if the servers agree, else the first and a
/// note.
fn passive_health(servers: &[PassiveHealth], pool: &mut Pool, f: &mut Findings) {
    type Get = fn(&PassiveHealth) -> Option<u64>;
    let params: [(&str, &str, u64, Get); 3] = [
        ("max_fails", "max_fails", 1, |h| h.max_fails),
        ("fail_timeout", "fail_timeout_ms", 10_000, |h| {
            h.fail_timeout
        }),
        ("max_conns", "max_connections_per_backend", 0, |h| {
            h.max_conns
        }),
    ];
    for (nginx, veer, nginx_default, get) in params {
        let Some(first) = servers.iter().find(|h| get(h).is_some()) else {
            continue;
        };
        let value = get(first).unwrap();
        let differ: Vec<String> = servers
            .iter()
            .filter(|h| get(h).unwrap_or(nginx_default) != value)
            .map(|h| format!("line {}", h.line))
            .collect();
        pool.settings
            .entries
            .push((veer, value.to_string(), first.line));
        if !differ.is_empty() {
            f.approximated_at(
                first.line,
                format!("{nginx}={value}"),
                format!(
                    "Veer has one {veer} per pool: {value} for all of pool {}, though {} differ",
                    pool.name,
                    differ.join(", ")
                ),
            );
        }
        if veer == "fail_timeout_ms" && value > 300_000 {
            pool.outlier
                .entries
                .push(("max_ejection_ms", value.to_string(), first.line));
        }
    }
}

/// The balancing method: `least_conn`, `ip_hash`, `hash KEY [consistent]`,
/// `random [two [METHOD]]`. Returns whether it was carried over.
fn strategy(c: &Directive, pool: &mut Pool, f: &mut Findings) -> bool {
    let args: Vec<&str> = c.args.iter().map(String::as_str).collect();
    match (c.name.as_str(), args.as_slice()) {
        ("least_conn", []) => pool.strategy = "least-connections",
        ("ip_hash", []) => {
            pool.strategy = "ip-hash";
            pool.strategy_config.push(("compat", toml_string("nginx")));
        }
        ("hash", [key, rest @ ..]) if rest.is_empty() || rest == ["consistent"] => {
            pool.strategy = "consistent-hash";
            match hash_key(key) {
                Ok((veer_key, note)) => {
                    pool.strategy_config.push(("key", toml_string(&veer_key)));
                    if let Some(note) = note {
                        f.approximated(c, note);
                    }
                }
                Err(reason) => f.dropped_part(c, key, reason),
            }
            pool.strategy_config.push(("ring", toml_string("nginx")));
            if rest.is_empty() {
                f.approximated(
                    c,
                    "NGINX's hash without `consistent` is not a ring: mapped to consistent-hash's NGINX-compatible ring, so keys land on other servers than before (and move less when servers change)",
                );
            }
        }
        ("random", []) => pool.strategy = "random",
        ("random", ["two"] | ["two", "least_conn"]) => pool.strategy = "p2c",
        ("random", ["two", method]) => {
            pool.strategy = "p2c";
            f.dropped_part(
                c,
                method,
                "p2c picks the fewest in-flight requests per weight of the two",
            );
        }
        _ => {
            f.dropped(c, "not a form of this method Veer knows");
            return false;
        }
    }
    true
}

/// The `consistent-hash` key of an NGINX hash key, and a note when it
/// differs a little.
fn hash_key(key: &str) -> Result<(String, Option<&'static str>), String> {
    let unsupported = || {
        format!(
            "consistent-hash hashes one of client-ip, path, header:NAME, cookie:NAME or query:NAME, not {key:?}; the pool hashes the client address instead"
        )
    };
    let variable = key
        .strip_prefix("${")
        .and_then(|k| k.strip_suffix('}'))
        .or_else(|| key.strip_prefix('$'))
        .filter(|v| v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        .ok_or_else(unsupported)?;
    let named = |prefix: &str| variable.strip_prefix(prefix).filter(|n| !n.is_empty());
    let mapped = match variable {
        "remote_addr" | "binary_remote_addr" => ("client-ip".to_string(), None),
        "uri" | "document_uri" => ("path".to_string(), None),
        "request_uri" => (
            "path".to_string(),
            Some("$request_uri includes the query string; Veer's path key is the path alone"),
        ),
        _ => {
            if let Some(name) = named("arg_") {
                (format!("query:{name}"), None)
            } else if let Some(name) = named("http_") {
                (format!("header:{}", name.replace('_', "-")), None)
            } else if let Some(name) = named("cookie_") {
                (format!("cookie:{name}"), None)
            } else {
                return Err(unsupported());
            }
        }
    };
    Ok(mapped)
}

#[cfg(test)]
mod tests {
    use super::super::parse::parse;
    use super::*;

    fn upstream(text: &str) -> (Option<Pool>, Findings) {
        let parsed = parse(text).unwrap();
        let mut f = Findings::default();
        let pool = from_upstream(&parsed[0], &mut f);
        (pool, f)
    }

    fn setting<'a>(table: &'a Table, key: &str) -> Option<&'a str> {
        table.get(key).map(|(_, value, _)| value.as_str())
    }

    #[test]
    fn addresses_get_port_80_unless_they_name_one() {
        assert_eq!(address("10.0.0.1", 80).unwrap(), "10.0.0.1:80");
        assert_eq!(address("10.0.0.1:8080", 80).unwrap(), "10.0.0.1:8080");
        assert_eq!(address("[::1]", 443).unwrap(), "[::1]:443");
        assert_eq!(address("[::1]:9000", 80).unwrap(), "[::1]:9000");
        assert_eq!(address("app.internal", 80).unwrap(), "app.internal:80");
        assert_eq!(address("unix:/run/app.sock", 80), None);
        assert_eq!(address("$backend", 80), None);
        assert_eq!(address("host:http", 80), None);
    }

    #[test]
    fn servers_become_backends_with_their_weights_and_weights_pick_weighted_round_robin() {
        let (pool, f) = upstream("upstream web { server 10.0.0.1 weight=3; server 10.0.0.2:81; }");
        let pool = pool.unwrap();
        assert_eq!(pool.strategy, "weighted-round-robin");
        assert_eq!(
            pool.backends,
            vec![
                Backend {
                    address: "10.0.0.1:80".into(),
                    weight: 3,
                    written: None
                },
                Backend {
                    address: "10.0.0.2:81".into(),
                    weight: 1,
                    written: None
                },
            ]
        );
        assert!(f.list.is_empty(), "{:?}", f.list);
    }

    #[test]
    fn an_upstream_name_veer_cannot_use_is_renamed_with_a_note() {
        let (pool, f) = upstream("upstream web.backend { server 10.0.0.1; }");
        let pool = pool.unwrap();
        assert_eq!(pool.name, "web-backend");
        assert_eq!(pool.upstream.as_deref(), Some("web.backend"));
        assert_eq!(f.list.len(), 1);
    }

    #[test]
    fn equal_weights_stay_round_robin() {
        let (pool, _) = upstream("upstream web { server 10.0.0.1; server 10.0.0.2; }");
        assert_eq!(pool.unwrap().strategy, "round-robin");
    }

    #[test]
    fn max_fails_and_fail_timeout_become_the_pools_ejection_settings() {
        let (pool, f) = upstream(
            "upstream web { server 10.0.0.1 max_fails=2 fail_timeout=30s; server 10.0.0.2 max_fails=2 fail_timeout=30s; }",
        );
        let pool = pool.unwrap();
        assert_eq!(setting(&pool.settings, "max_fails"), Some("2"));
        assert_eq!(setting(&pool.settings, "fail_timeout_ms"), Some("30000"));
        assert!(f.list.is_empty(), "{:?}", f.list);
    }

    #[test]
    fn servers_that_disagree_on_max_fails_get_the_first_value_and_a_note() {
        let (pool, f) =
            upstream("upstream web {\n server 10.0.0.1 max_fails=5;\n server 10.0.0.2;\n}");
        assert_eq!(setting(&pool.unwrap().settings, "max_fails"), Some("5"));
        assert_eq!(f.list.len(), 1);
        assert_eq!(f.list[0].line, 2);
        assert!(f.list[0].reason.contains("line 3 differ"), "{:?}", f.list);
    }

    #[test]
    fn a_long_fail_timeout_lengthens_the_longest_ejection_too() {
        let (pool, _) = upstream("upstream web { server 10.0.0.1 fail_timeout=10m; }");
        assert_eq!(
            setting(&pool.unwrap().outlier, "max_ejection_ms"),
            Some("600000")
        );
    }

    #[test]
    fn down_servers_are_left_out_and_backups_are_left_out_and_reported() {
        let (pool, f) = upstream(
            "upstream web {\n server 10.0.0.1;\n server 10.0.0.2 down;\n server 10.0.0.3 backup;\n}",
        );
        let pool = pool.unwrap();
        assert_eq!(pool.backends.len(), 1);
        assert_eq!(pool.left_out.len(), 2);
        assert!(pool.left_out[0].contains("10.0.0.2:80") && pool.left_out[0].contains("down"));
        assert_eq!(f.list.len(), 1);
        assert_eq!(f.list[0].line, 4);
        assert!(f.list[0].reason.contains("no backup servers"));
    }

    #[test]
    fn a_down_server_of_a_hash_pool_is_left_out_with_a_note_on_placement() {
        let (pool, f) =
            upstream("upstream u {\n ip_hash;\n server 10.0.0.1;\n server 10.0.0.2 down;\n}");
        assert_eq!(pool.unwrap().backends.len(), 1);
        assert_eq!(f.list.len(), 1);
        assert_eq!(f.list[0].line, 4);
        assert!(f.list[0].reason.contains("place in the hash"));
    }

    #[test]
    fn an_upstream_of_backups_only_keeps_them_as_ordinary_backends() {
        let (pool, f) = upstream("upstream web { server 10.0.0.1 backup; }");
        assert_eq!(pool.unwrap().backends.len(), 1);
        assert!(f.list.iter().any(|x| x.reason.contains("kept as ordinary")));
    }

    #[test]
    fn least_conn_and_ip_hash_and_random_pick_their_strategies() {
        let strategy_of = |method: &str| {
            let (pool, _) = upstream(&format!("upstream u {{ {method}; server 10.0.0.1; }}"));
            let pool = pool.unwrap();
            (pool.strategy, pool.strategy_config)
        };
        assert_eq!(strategy_of("least_conn").0, "least-connections");
        assert_eq!(
            strategy_of("ip_hash"),
            ("ip-hash", vec![("compat", "\"nginx\"".to_string())])
        );
        assert_eq!(strategy_of("random").0, "random");
        assert_eq!(strategy_of("random two").0, "p2c");
        assert_eq!(strategy_of("random two least_conn").0, "p2c");
    }

    #[test]
    fn hash_consistent_maps_its_key_and_asks_for_the_nginx_ring() {
        let (pool, f) = upstream("upstream u { hash $arg_user consistent; server 10.0.0.1; }");
        let pool = pool.unwrap();
        assert_eq!(pool.strategy, "consistent-hash");
        assert_eq!(
            pool.strategy_config,
            vec![
                ("key", "\"query:user\"".to_string()),
                ("ring", "\"nginx\"".to_string())
            ]
        );
        assert!(f.list.is_empty(), "{:?}", f.list);
    }

    #[test]
    fn under_the_nginx_ring_a_server_without_a_port_keeps_its_text_for_placement() {
        let (pool, _) =
            upstream("upstream u { hash $uri consistent; server 10.0.0.1; server 10.0.0.2:8080; }");
        let written: Vec<Option<String>> = pool
            .unwrap()
            .backends
            .into_iter()
            .map(|b| b.written)
            .collect();
        assert_eq!(written, vec![Some("10.0.0.1".to_string()), None]);
        let (pool, _) = upstream("upstream u { server 10.0.0.1; }");
        assert_eq!(pool.unwrap().backends[0].written, None);
    }

    #[test]
    fn hash_keys_map_to_their_sources() {
        let key = |k: &str| hash_key(k).map(|(key, _)| key);
        assert_eq!(key("$remote_addr").unwrap(), "client-ip");
        assert_eq!(key("$http_x_user_id").unwrap(), "header:x-user-id");
        assert_eq!(key("$cookie_session_id").unwrap(), "cookie:session_id");
        assert_eq!(key("${arg_id}").unwrap(), "query:id");
        assert_eq!(key("$uri").unwrap(), "path");
        assert!(hash_key("$request_uri").unwrap().1.is_some());
        assert!(key("$host$uri").is_err());
        assert!(key("$scheme").is_err());
        assert!(key("literal").is_err());
    }

    #[test]
    fn hash_without_consistent_is_mapped_to_the_ring_with_a_note() {
        let (pool, f) = upstream("upstream u { hash $uri; server 10.0.0.1; }");
        assert_eq!(pool.unwrap().strategy, "consistent-hash");
        assert!(f.list[0].reason.contains("not a ring"), "{:?}", f.list);
    }

    #[test]
    fn an_unsupported_hash_key_is_listed_and_the_pool_hashes_the_client() {
        let (pool, f) = upstream("upstream u { hash $host$uri consistent; server 10.0.0.1; }");
        let pool = pool.unwrap();
        assert!(!pool.strategy_config.iter().any(|(k, _)| *k == "key"));
        assert!(f.list[0].directive.contains("$host$uri"), "{:?}", f.list);
    }

    #[test]
    fn keepalive_is_shared_out_over_the_servers() {
        let (pool, f) = upstream(
            "upstream u { server 10.0.0.1; server 10.0.0.2; server 10.0.0.3; keepalive 32; }",
        );
        assert_eq!(
            setting(&pool.unwrap().settings, "max_idle_per_backend"),
            Some("11")
        );
        assert!(
            f.list[0].reason.contains("32 / 3 servers = 11"),
            "{:?}",
            f.list
        );
    }

    #[test]
    fn unknown_server_parameters_and_directives_are_listed_with_their_lines() {
        let (_, f) = upstream("upstream u {\n server 10.0.0.1 resolve;\n ntlm;\n}");
        let lines: Vec<usize> = f.list.iter().map(|x| x.line).collect();
        assert_eq!(lines, vec![2, 3]);
    }
}
