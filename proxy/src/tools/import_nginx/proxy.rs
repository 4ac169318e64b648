//! The `proxy_*` settings (and the few client-side ones) allowed at
//! `http`, `server` and `location` level. NGINX sets them per location,
//! inherited from `http` and `server`; Veer per pool, so each location's
//! settings go to the pool its `proxy_pass` names.

use super::parse::Directive;
use super::units::{number, size_bytes, time_ms};
use super::upstream::Pool;
use super::{Draft, Findings, reason_for};

/// A time (ms) or number as written: value, line, directive text.
type Value = (u64, usize, String);

/// What `http`, `server` and `location` pass down to what they contain.
#[derive(Debug, Clone, Default)]
pub(super) struct Inherited {
    connect: Option<Value>,
    read: Option<Value>,
    send: Option<Value>,
    next_upstream: Option<(NextUpstream, usize, String)>,
    tries: Option<Value>,
    next_timeout: Option<Value>,
    /// `ssl_certificate` / `ssl_certificate_key`: (path, line), and
    /// whether they were set at this level (a lower level replaces them).
    pub certs: Vec<(String, usize)>,
    pub keys: Vec<(String, usize)>,
    pub certs_here: bool,
}

/// `proxy_next_upstream`, read.
#[derive(Debug, Clone, Default, PartialEq)]
struct NextUpstream {
    off: bool,
    on_timeout: bool,
    on_reset: bool,
    statuses: Vec<u16>,
    non_idempotent: bool,
}

/// Directives allowed at `http`, `server` and `location` level. Returns
/// whether `c` is one of them (handled, or reported).
pub(super) fn common(c: &Directive, inh: &mut Inherited, draft: &mut Draft) -> bool {
    let one = c.args.first().filter(|_| c.args.len() == 1);
    let time = |max: u64| one.and_then(|t| time_ms(t)).filter(|ms| *ms <= max);
    let value = |v: u64| Some((v, c.line, c.text()));
    const DAY: u64 = 86_400_000;
    const HOUR: u64 = 3_600_000;
    match c.name.as_str() {
        "proxy_connect_timeout" => match time(HOUR).filter(|ms| *ms > 0) {
            Some(ms) => inh.connect = value(ms),
            None => draft
                .f
                .dropped(c, "expected a time between 1 ms and 1 hour"),
        },
        "proxy_read_timeout" => match time(DAY).filter(|ms| *ms > 0) {
            Some(ms) => inh.read = value(ms),
            None => draft.f.dropped(c, "expected a time between 1 ms and 1 day"),
        },
        "proxy_send_timeout" => match time(DAY).filter(|ms| *ms > 0) {
            Some(ms) => inh.send = value(ms),
            None => draft.f.dropped(c, "expected a time between 1 ms and 1 day"),
        },
        "proxy_next_upstream_timeout" => match time(DAY) {
            Some(ms) => inh.next_timeout = value(ms),
            None => draft.f.dropped(c, "expected a time up to 1 day"),
        },
        "proxy_next_upstream_tries" => match one.and_then(|n| number(n)) {
            Some(0) => draft.f.dropped(
                c,
                "0 (no limit): Veer's retries needs a number, at most 16; its default 2 stays",
            ),
            Some(n) => inh.tries = value(n),
            None => draft.f.dropped(c, "expected a number"),
        },
        "proxy_next_upstream" => {
            inh.next_upstream = Some((next_upstream(c, &mut draft.f), c.line, c.text()));
        }
        "client_max_body_size" => match one.and_then(|s| size_bytes(s)) {
            Some(bytes) => draft.body_sizes.push((bytes, c.line, c.text())),
            None => draft.f.dropped(c, "expected a size"),
        },
        "proxy_http_version" => {
            if one.map(String::as_str) != Some("1.1") {
                draft.f.dropped(
                    c,
                    "Veer speaks HTTP/1.1 to backends (or HTTP/2: a pool's protocol)",
                );
            }
        }
        "proxy_set_header" => proxy_set_header(c, &mut draft.f),
        "keepalive_timeout" => match c.args.first().and_then(|t| time_ms(t)) {
            Some(0) => draft
                .f
                .dropped(c, "0 turns keep-alive off; Veer always keeps idle clients"),
            Some(ms) if ms <= DAY && c.args.len() == 1 => {
                draft
                    .server
                    .set("keepalive_timeout_ms", ms.to_string(), c, &mut draft.f)
            }
            _ => draft.f.dropped(
                c,
                "expected one time up to 1 day (Veer sends no Keep-Alive header)",
            ),
        },
        "client_header_timeout" => match time(HOUR).filter(|ms| *ms > 0) {
            Some(ms) => {
                for key in ["first_request_timeout_ms", "header_read_timeout_ms"] {
                    draft.server.set(key, ms.to_string(), c, &mut draft.f);
                }
            }
            None => draft
                .f
                .dropped(c, "expected a time between 1 ms and 1 hour"),
        },
        "client_body_timeout" | "send_timeout" => match time(HOUR).filter(|ms| *ms > 0) {
            Some(ms) => {
                let key = if c.name == "send_timeout" {
                    "client_send_timeout_ms"
                } else {
                    "client_body_timeout_ms"
                };
                draft.server.set(key, ms.to_string(), c, &mut draft.f)
            }
            None => draft
                .f
                .dropped(c, "expected a time between 1 ms and 1 hour"),
        },
        "ssl_certificate" | "ssl_certificate_key" => match one {
            Some(path) if !path.contains('$') && !path.starts_with("data:") => {
                if !inh.certs_here {
                    inh.certs.clear();
                    inh.keys.clear();
                    inh.certs_here = true;
                }
                let list = if c.name == "ssl_certificate" {
                    &mut inh.certs
                } else {
                    &mut inh.keys
                };
                list.push((path.clone(), c.line));
            }
            _ => draft.f.dropped(
                c,
                "Veer reads certificates from files named without variables",
            ),
        },
        "http2" | "ssl" => {}
        _ => return false,
    }
    true
}

/// `proxy_set_header`: the forms Veer does on its own are accepted.
fn proxy_set_header(c: &Directive, f: &mut Findings) {
    let args: Vec<&str> = c.args.iter().map(String::as_str).collect();
    let lower: Vec<String> = args.iter().map(|a| a.to_ascii_lowercase()).collect();
    let lower: Vec<&str> = lower.iter().map(String::as_str).collect();
    match lower.as_slice() {
        ["host", "$host" | "$http_host"]
        | ["connection", "" | "upgrade" | "$connection_upgrade"]
        | ["upgrade", "$http_upgrade"]
        | ["x-forwarded-proto", "$scheme"]
        | ["x-forwarded-host", "$host" | "$http_host"] => {}
        ["x-forwarded-for", "$proxy_add_x_forwarded_for" | "$remote_addr"] => f.approximated(
            c,
            "Veer sets X-Forwarded-For itself: it appends to the client's only for peers in server.trusted_proxies, else replaces it",
        ),
        _ => f.dropped(c, reason_for("proxy_set_header")),
    }
}

/// Reads `proxy_next_upstream`, reporting what Veer cannot do.
fn next_upstream(c: &Directive, f: &mut Findings) -> NextUpstream {
    let mut n = NextUpstream::default();
    let mut error = false;
    for arg in &c.args {
        match arg.as_str() {
            "off" => n.off = true,
            "error" => {
                error = true;
                n.on_reset = true;
            }
            "timeout" => n.on_timeout = true,
            "invalid_header" => n.on_reset = true,
            "non_idempotent" => n.non_idempotent = true,
            status if status.starts_with("http_5") => match status[5..].parse::<u16>() {
                Ok(code) if (500..=599).contains(&code) => n.statuses.push(code),
                _ => f.dropped_part(c, status, "not a status"),
            },
            "http_403" | "http_404" | "http_429" => {
                f.dropped_part(c, arg, "Veer retries on 5xx answers only")
            }
            other => f.dropped_part(c, other, "not a condition Veer knows"),
        }
    }
    if !error && !n.off {
        f.approximated(
            c,
            "without `error`: Veer still tries the next backend when nothing was sent (a connect failure)",
        );
    }
    n
}

/// Applies a location's settings to the pool it proxies to.
pub(super) fn apply(inh: &Inherited, pool: &mut Pool, f: &mut Findings) {
    fn set(
        table: &mut super::Table,
        key: &'static str,
        value: String,
        v: &Value,
        f: &mut Findings,
    ) {
        table.set_at(key, value, v.1, &v.2, f)
    }
    if let Some(v) = &inh.connect {
        set(
            &mut pool.settings,
            "connect_timeout_ms",
            v.0.to_string(),
            v,
            f,
        );
    }
    if let Some(v) = &inh.read {
        set(
            &mut pool.settings,
            "response_timeout_ms",
            v.0.to_string(),
            v,
            f,
        );
        set(&mut pool.settings, "read_timeout_ms", v.0.to_string(), v, f);
    }
    if let Some(v) = &inh.send {
        set(&mut pool.settings, "send_timeout_ms", v.0.to_string(), v, f);
    }
    if let Some(v) = &inh.next_timeout {
        set(&mut pool.retry, "total_timeout_ms", v.0.to_string(), v, f);
    }
    if let Some(v) = &inh.tries {
        let retries = (v.0 - 1).min(16);
        set(&mut pool.settings, "retries", retries.to_string(), v, f);
        if v.0 - 1 > 16 {
            f.approximated_at(v.1, &v.2, "Veer makes at most 16 retries: retries = 16");
        }
    }
    if let Some((n, line, text)) = &inh.next_upstream {
        let v = (0, *line, text.clone());
        if n.off {
            set(&mut pool.settings, "retries", "0".into(), &v, f);
            return;
        }
        let statuses = format!(
            "[{}]",
            n.statuses
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
        set(&mut pool.retry, "on_statuses", statuses.clone(), &v, f);
        set(
            &mut pool.retry,
            "on_timeout",
            n.on_timeout.to_string(),
            &v,
            f,
        );
        set(&mut pool.retry, "on_reset", n.on_reset.to_string(), &v, f);
        if n.non_idempotent {
            set(&mut pool.retry, "non_idempotent", "true".into(), &v, f);
        }
        // NGINX counts as a failure (toward max_fails) what it retries.
        set(&mut pool.outlier, "statuses", statuses, &v, f);
    }
}

/// Veer refuses response and send timers shorter than the connect timer.
pub(super) fn order_timers(pool: &mut Pool, f: &mut Findings) {
    let get = |pool: &Pool, key: &str, default: u64| {
        pool.settings
            .get(key)
            .map_or(default, |(_, v, _)| v.parse::<u64>().unwrap_or(default))
    };
    let Some(line) = pool.settings.get("connect_timeout_ms").map(|e| e.2) else {
        return;
    };
    let connect = get(pool, "connect_timeout_ms", 2_000);
    for (key, default) in [("response_timeout_ms", 30_000), ("send_timeout_ms", 60_000)] {
        let timer = get(pool, key, default);
        if timer < connect {
            pool.settings.replace(key, connect.to_string(), line);
            f.approximated_at(
                line,
                format!("proxy_connect_timeout (pool {})", pool.name),
                format!(
                    "Veer's {key} may not be shorter than connect_timeout_ms: raised from {timer} to {connect}"
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{checked, http};

    #[test]
    fn proxy_timeouts_go_to_the_pool_and_are_inherited_from_http_and_server() {
        let (config, imported) = checked(&http(
            " proxy_connect_timeout 3s;\n server {\n  proxy_read_timeout 90s;\n  location / { proxy_send_timeout 20s; proxy_pass http://app; }\n }",
        ));
        let pool = &config.pools[0];
        assert_eq!(pool.connect_timeout.as_millis(), 3_000);
        assert_eq!(pool.response_timeout.as_millis(), 90_000);
        assert_eq!(pool.read_timeout.as_millis(), 90_000);
        assert_eq!(pool.send_timeout.as_millis(), 20_000);
        assert!(imported.findings.is_empty(), "{:?}", imported.findings);
    }

    #[test]
    fn a_long_connect_timeout_raises_the_shorter_response_timer() {
        let (config, imported) = checked(&http(
            " server { location / { proxy_connect_timeout 75s; proxy_pass http://app; } }",
        ));
        assert_eq!(config.pools[0].response_timeout.as_millis(), 75_000);
        assert!(
            imported
                .findings
                .iter()
                .any(|x| x.reason.contains("raised from 30000"))
        );
    }

    #[test]
    fn proxy_next_upstream_becomes_the_retry_and_outlier_tables() {
        let (config, imported) = checked(&http(
            " server { location / {\n proxy_next_upstream error timeout http_502 http_503 http_404;\n proxy_next_upstream_tries 3;\n proxy_next_upstream_timeout 10s;\n proxy_pass http://app; } }",
        ));
        let pool = &config.pools[0];
        assert_eq!(pool.retries, 2);
        assert_eq!(pool.retry.on_statuses, vec![502, 503]);
        assert!(pool.retry.on_timeout && pool.retry.on_reset);
        assert_eq!(pool.ejection.statuses, vec![502, 503]);
        assert_eq!(imported.findings.len(), 1, "{:?}", imported.findings);
        assert!(imported.findings[0].reason.starts_with("http_404"));
    }

    #[test]
    fn proxy_next_upstream_off_means_no_retries() {
        let (config, _) = checked(&http(
            " server { location / { proxy_next_upstream off; proxy_pass http://app; } }",
        ));
        assert_eq!(config.pools[0].retries, 0);
    }

    #[test]
    fn two_locations_that_disagree_on_a_pools_timeout_keep_the_first_and_say_so() {
        let (config, imported) = checked(&http(
            " server {\n  location /a { proxy_read_timeout 5s; proxy_pass http://app; }\n  location /b { proxy_read_timeout 9s; proxy_pass http://app; }\n }",
        ));
        assert_eq!(config.pools[0].response_timeout.as_millis(), 5_000);
        assert!(
            imported.findings.iter().all(|x| x.line == 5),
            "{:?}",
            imported.findings
        );
    }

    #[test]
    fn known_proxy_set_header_forms_pass_and_others_are_listed() {
        let (_, imported) = checked(&http(
            " server { location / {\n proxy_set_header Host $host;\n proxy_set_header Connection \"\";\n proxy_set_header X-Real-IP $remote_addr;\n proxy_pass http://app; } }",
        ));
        let lines: Vec<usize> = imported.findings.iter().map(|x| x.line).collect();
        assert_eq!(lines, vec![6]);
    }
}
