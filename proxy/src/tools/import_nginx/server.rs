//! `server { … }` and `location { … }` → Veer's listeners, routes, and the
//! pools each `proxy_pass` names (an upstream, or a one-backend pool for a
//! literal address).

use std::collections::HashMap;

use super::parse::Directive;
use super::proxy::{Inherited, apply, common};
use super::units::number;
use super::upstream::{Pool, address, pool_name};
use super::{Draft, Findings, Listen, Route, reason_for};

/// A server's `listen` directives, read ahead (which server is the default
/// for an address decides which routes match any host).
struct Listens {
    list: Vec<(Listen, bool)>,
}

fn listens(server: &Directive, draft: &mut Draft) -> Listens {
    let ssl_on = server
        .children()
        .iter()
        .any(|c| c.name == "ssl" && c.args == ["on"]);
    let mut list = Vec::new();
    for c in server.children().iter().filter(|c| c.name == "listen") {
        let Some(addr) = c.args.first().and_then(|a| listen_address(a)) else {
            draft.f.dropped(
                c,
                "Veer listens on an ip:port (no unix: sockets, no host names)",
            );
            continue;
        };
        let (mut ssl, mut default) = (ssl_on, false);
        let mut keep = true;
        for param in &c.args[1..] {
            let (key, value) = param.split_once('=').unwrap_or((param, ""));
            match key {
                "ssl" => ssl = true,
                "default_server" | "default" => default = true,
                "http2" => {}
                "backlog" => match number(value).filter(|n| (1..=65_535).contains(n)) {
                    Some(n) => draft.server.set("backlog", n.to_string(), c, &mut draft.f),
                    None => draft.f.dropped_part(c, param, "expected 1 to 65535"),
                },
                "quic" => {
                    draft.f.dropped(c, "Veer does not serve HTTP/3");
                    keep = false;
                }
                "proxy_protocol" => {
                    draft
                        .f
                        .dropped_part(c, param, "Veer does not read the PROXY protocol")
                }
                _ => draft
                    .f
                    .dropped_part(c, param, "a socket option Veer does not set"),
            }
        }
        if keep {
            let listen = Listen {
                address: addr,
                ssl,
                line: c.line,
            };
            list.push((listen, default));
        }
    }
    if list.is_empty() {
        let listen = Listen {
            address: "0.0.0.0:80".into(),
            ssl: ssl_on,
            line: server.line,
        };
        list.push((listen, false));
    }
    Listens { list }
}

/// `80`, `*:80`, `10.0.0.1`, `10.0.0.1:80`, `[::]:80`, `localhost:80` →
/// `ip:port`.
fn listen_address(text: &str) -> Option<String> {
    if let Ok(port) = text.parse::<u16>() {
        return Some(format!("0.0.0.0:{port}"));
    }
    let text = text
        .strip_prefix("*:")
        .map_or(text.to_string(), |p| format!("0.0.0.0:{p}"));
    let text = text.replace("localhost:", "127.0.0.1:");
    let full = address(&text, 80)?;
    full.parse::<std::net::SocketAddr>()
        .ok()
        .map(|a| a.to_string())
}

/// All `server` blocks of `http`.
pub(super) fn servers(servers: &[&Directive], inherited: &Inherited, draft: &mut Draft) {
    let all: Vec<Listens> = servers.iter().map(|s| listens(s, draft)).collect();
    // The default server of each address: marked `default_server`, else the
    // first to listen there.
    let mut defaults: HashMap<String, usize> = HashMap::new();
    for (i, l) in all.iter().enumerate() {
        for (listen, default) in &l.list {
            if *default {
                defaults.entry(listen.address.clone()).or_insert(i);
            }
        }
    }
    for (i, l) in all.iter().enumerate() {
        for (listen, _) in &l.list {
            defaults.entry(listen.address.clone()).or_insert(i);
        }
    }
    for (i, (server, listens)) in servers.iter().zip(all).enumerate() {
        let is_default = defaults.values().any(|d| *d == i);
        one_server(server, listens, is_default, inherited, draft);
    }
}

fn one_server(
    d: &Directive,
    listens: Listens,
    is_default: bool,
    inherited: &Inherited,
    draft: &mut Draft,
) {
    let mut inh = inherited.clone();
    inh.certs_here = false;
    let mut names = Vec::new();
    let mut redirect = None;
    for c in d.children() {
        match c.name.as_str() {
            "listen" | "location" => {}
            "server_name" => names.extend(server_names(c, &mut draft.f)),
            "return" => match redirect_code(c) {
                Some(code) => redirect = Some((code, c.text())),
                None => draft.f.dropped(c, reason_for("return")),
            },
            _ => {
                if !common(c, &mut inh, draft) {
                    draft.f.dropped(c, reason_for(&c.name));
                }
            }
        }
    }
    let ssl = listens.list.iter().any(|(l, _)| l.ssl);
    let plain = listens.list.iter().any(|(l, _)| !l.ssl);
    draft
        .listens
        .extend(listens.list.into_iter().map(|(l, _)| l));
    if plain {
        draft.plain_servers.push((d.line, redirect.clone()));
    } else if let Some((_, text)) = &redirect {
        draft.f.dropped_at(d.line, text, reason_for("return"));
    }
    if ssl {
        if inh.certs.is_empty() || inh.certs.len() != inh.keys.len() {
            draft.f.dropped_at(
                d.line,
                "server { listen … ssl }",
                "needs as many ssl_certificate as ssl_certificate_key: its certificates are not carried over",
            );
        } else {
            for ((cert, line), (key, _)) in inh.certs.iter().zip(&inh.keys) {
                if !draft
                    .certificates
                    .iter()
                    .any(|(c, k, _)| c == cert && k == key)
                {
                    draft.certificates.push((cert.clone(), key.clone(), *line));
                }
            }
        }
    }
    let hosts: Vec<Option<String>> = if is_default {
        vec![None]
    } else {
        names.into_iter().map(Some).collect()
    };
    let locations: Vec<&Directive> = d
        .children()
        .iter()
        .filter(|c| c.name == "location")
        .collect();
    if hosts.is_empty() && !locations.is_empty() {
        draft.f.dropped(
            d,
            "no exact server_name and not the default server: its locations are not carried over",
        );
        return;
    }
    for location in locations {
        one_location(location, &hosts, &inh, draft);
    }
}

/// The exact names of `server_name`; wildcards and regular expressions are
/// reported.
fn server_names(c: &Directive, f: &mut Findings) -> Vec<String> {
    let mut names = Vec::new();
    for name in &c.args {
        if name.is_empty() || name == "_" {
            continue;
        }
        if name.starts_with('~') {
            f.dropped_part(
                c,
                name,
                "Veer routes by exact host, not regular expressions",
            );
        } else if let Some(base) = name.strip_prefix('.') {
            names.push(base.to_ascii_lowercase());
            f.dropped_part(
                c,
                name,
                format!(
                    "Veer routes by exact host: {base} is carried over, its subdomains are not"
                ),
            );
        } else if name.contains('*') {
            f.dropped_part(c, name, "Veer routes by exact host, not wildcards");
        } else {
            names.push(name.to_ascii_lowercase());
        }
    }
    names
}

/// `return 301|308 https://$host$request_uri` (or `$server_name`,
/// `$http_host`): the code.
fn redirect_code(c: &Directive) -> Option<u16> {
    let [code, target] = c.args.as_slice() else {
        return None;
    };
    let code = code
        .parse::<u16>()
        .ok()
        .filter(|c| *c == 301 || *c == 308)?;
    let host = target
        .strip_prefix("https://")?
        .strip_suffix("$request_uri")?;
    matches!(host, "$host" | "$server_name" | "$http_host").then_some(code)
}

fn one_location(d: &Directive, hosts: &[Option<String>], inherited: &Inherited, draft: &mut Draft) {
    let (modifier, path) = match d.args.as_slice() {
        [path] => (None, path.as_str()),
        [m, path] => (Some(m.as_str()), path.as_str()),
        _ => {
            draft
                .f
                .dropped(d, "expected `location [=|^~] PREFIX { … }`");
            return;
        }
    };
    match modifier {
        Some("~" | "~*") => {
            draft.f.dropped(d, "Veer routes by path prefix, not regular expressions");
            return;
        }
        _ if path.starts_with('@') => {
            draft
                .f
                .dropped(d, "a named location (for error_page, try_files): Veer has none");
            return;
        }
        None | Some("^~") => {}
        Some("=") => draft.f.approximated(
            d,
            format!("Veer has no exact-match routes: {path} is routed as a prefix (it matches below it too)"),
        ),
        Some(_) => {
            draft.f.dropped(d, "not a location modifier Veer knows");
            return;
        }
    }
    if !is_normal_prefix(path) {
        draft.f.dropped(
            d,
            "Veer routes on normalised path prefixes: it must start with '/' and have no '//', '.', '..' or '%'",
        );
        return;
    }
    let mut inh = inherited.clone();
    let mut pass = None;
    for c in d.children() {
        match c.name.as_str() {
            "location" => {}
            "proxy_pass" => pass = Some(c),
            _ => {
                if !common(c, &mut inh, draft) {
                    draft.f.dropped(c, reason_for(&c.name));
                }
            }
        }
    }
    match pass {
        Some(p) => {
            if let Some(index) = pass_target(p, path, draft) {
                apply(&inh, &mut draft.pools[index], &mut draft.f);
                let pool = draft.pools[index].name.clone();
                for host in hosts {
                    draft.routes.push(Route {
                        host: host.clone(),
                        prefix: path.to_string(),
                        pool: pool.clone(),
                        line: d.line,
                    });
                }
            }
        }
        None => draft.f.dropped(
            d,
            "no proxy_pass in it: no route, so its requests go to the pool of a shorter prefix",
        ),
    }
    for nested in d.children().iter().filter(|c| c.name == "location") {
        one_location(nested, hosts, &inh, draft);
    }
}

/// The pool `proxy_pass` sends to (an upstream, or a new one-backend pool
/// for a literal address), by index.
fn pass_target(p: &Directive, location: &str, draft: &mut Draft) -> Option<usize> {
    let [url] = p.args.as_slice() else {
        draft.f.dropped(p, "expected one URL");
        return None;
    };
    let (tls, rest) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
        (Some(rest), _) => (false, rest),
        (_, Some(rest)) => (true, rest),
        _ => {
            draft
                .f
                .dropped(p, "Veer proxies to http:// and https:// backends");
            return None;
        }
    };
    if rest.contains('$') {
        draft.f.dropped(
            p,
            "Veer's pools are fixed: a proxy_pass with variables is not carried over",
        );
        return None;
    }
    let (authority, uri) = rest
        .split_once('/')
        .map_or((rest, None), |(a, u)| (a, Some(u)));
    if let Some(uri) = uri
        && format!("/{uri}") != location
    {
        draft.f.dropped_part(
            p,
            &format!("/{uri}"),
            "Veer forwards the path as the client sent it; NGINX puts this URI in place of the location's prefix",
        );
    }
    let index = match draft
        .pools
        .iter()
        .position(|pool| pool.upstream.as_deref() == Some(authority))
    {
        Some(index) => index,
        None => {
            let Some(address) = address(authority, if tls { 443 } else { 80 }) else {
                draft.f.dropped(p, "not an upstream name or a host:port");
                return None;
            };
            let same = |pool: &Pool| pool.upstream.is_none() && pool.backends[0].address == address;
            match draft.pools.iter().position(same) {
                Some(index) => index,
                None => {
                    let base = pool_name(&address);
                    let mut name = base.clone();
                    let mut n = 2;
                    while draft.pools.iter().any(|pool| pool.name == name) {
                        name = format!("{base}-{n}");
                        n += 1;
                    }
                    draft.pools.push(Pool::literal(&name, address, p.line));
                    draft.pools.len() - 1
                }
            }
        }
    };
    let pool = &mut draft.pools[index];
    pool.used = true;
    match (tls, pool.tls) {
        (true, None) => {
            pool.tls = Some(p.line);
            draft.f.approximated(
                p,
                format!(
                    "pool {} speaks HTTPS and verifies its backends' certificates (system roots; the name is each backend's host), which NGINX does not by default: set [pools.{}.tls] ca and server_name as needed",
                    pool.name, pool.name
                ),
            );
        }
        (false, Some(line)) => draft.f.approximated(
            p,
            format!("pool {} speaks HTTPS, as line {line} asked", pool.name),
        ),
        _ => {}
    }
    Some(index)
}

/// As Veer's route check: starts with `/`, no empty, `.` or `..` segment
/// inside, no `%`.
fn is_normal_prefix(prefix: &str) -> bool {
    prefix.starts_with('/')
        && !prefix.contains('%')
        && !prefix.contains("//")
        && prefix[1..]
            .split('/')
            .all(|segment| segment != "." && segment != "..")
}

#[cfg(test)]
mod tests {
    use super::super::testing::{checked, http};
    use super::super::{Kind, import};

    fn routes(config: &crate::Config) -> Vec<(Option<&str>, &str, &str)> {
        config
            .routes
            .iter()
            .map(|r| {
                (
                    r.host.as_deref(),
                    r.path_prefix.as_str(),
                    config.pools[r.pool].name.as_str(),
                )
            })
            .collect()
    }

    #[test]
    fn locations_become_routes_and_a_literal_address_gets_a_pool_of_its_own() {
        let (config, imported) = checked(&http(
            " server {\n  location / { proxy_pass http://app; }\n  location /static/ { proxy_pass http://127.0.0.1:9100; }\n }",
        ));
        assert_eq!(
            routes(&config),
            vec![(None, "/static/", "127-0-0-1-9100"), (None, "/", "app")]
        );
        assert!(imported.findings.is_empty(), "{:?}", imported.findings);
    }

    #[test]
    fn named_servers_route_by_host_and_the_default_server_takes_any_host() {
        let (config, _) = checked(&http(
            " server { listen 80; server_name a.test; location / { proxy_pass http://app; } }\n server { listen 80 default_server; server_name b.test; location /b { proxy_pass http://127.0.0.1:9002; } }",
        ));
        assert_eq!(
            routes(&config),
            vec![(Some("a.test"), "/", "app"), (None, "/b", "127-0-0-1-9002")]
        );
    }

    #[test]
    fn a_uri_in_proxy_pass_that_replaces_the_prefix_is_listed() {
        let (_, imported) = checked(&http(
            " server {\n  location /api/ { proxy_pass http://app/v1/; }\n  location /same/ { proxy_pass http://app/same/; }\n }",
        ));
        assert_eq!(imported.findings.len(), 1, "{:?}", imported.findings);
        assert_eq!(imported.findings[0].line, 4);
    }

    #[test]
    fn regex_and_named_locations_are_listed_and_exact_ones_become_prefixes() {
        let (config, imported) = checked(&http(
            " server {\n  location ~ \\.php$ { proxy_pass http://app; }\n  location @fallback { proxy_pass http://app; }\n  location = /health { proxy_pass http://app; }\n }",
        ));
        assert_eq!(routes(&config), vec![(None, "/health", "app")]);
        let kinds: Vec<(usize, Kind)> =
            imported.findings.iter().map(|x| (x.line, x.kind)).collect();
        assert_eq!(
            kinds,
            vec![
                (4, Kind::NotCarriedOver),
                (5, Kind::NotCarriedOver),
                (6, Kind::Approximated)
            ]
        );
    }

    #[test]
    fn ssl_servers_give_the_tls_listener_and_its_certificates() {
        let imported = import(
            &http(" server {\n  listen 443 ssl http2;\n  ssl_certificate certs/a.pem;\n  ssl_certificate_key certs/a-key.pem;\n  ssl_protocols TLSv1.2;\n  location / { proxy_pass http://app; }\n }"),
            "nginx.conf",
        )
        .unwrap();
        let file = crate::config::ConfigFile::parse(&imported.toml).unwrap();
        let tls = file.tls.unwrap();
        assert_eq!(tls.listen, "0.0.0.0:443");
        assert_eq!(tls.certificates[0].cert.to_str(), Some("certs/a.pem"));
        assert_eq!(imported.findings.len(), 1, "{:?}", imported.findings);
    }

    #[test]
    fn a_plain_server_that_only_redirects_to_https_becomes_redirect_to_https() {
        let imported = import(
            &http(" server { listen 80; return 301 https://$host$request_uri; }\n server { listen 443 ssl; ssl_certificate a.pem; ssl_certificate_key k.pem; location / { proxy_pass http://app; } }"),
            "nginx.conf",
        )
        .unwrap();
        let file = crate::config::ConfigFile::parse(&imported.toml).unwrap();
        assert_eq!(file.server.redirect_to_https, 301);
        assert_eq!(file.server.listen, "0.0.0.0:80");
        assert!(imported.findings.is_empty(), "{:?}", imported.findings);
    }

    #[test]
    fn listen_addresses_read_as_nginx_does() {
        assert_eq!(super::listen_address("80").unwrap(), "0.0.0.0:80");
        assert_eq!(super::listen_address("*:8080").unwrap(), "0.0.0.0:8080");
        assert_eq!(super::listen_address("127.0.0.1").unwrap(), "127.0.0.1:80");
        assert_eq!(super::listen_address("[::]:443").unwrap(), "[::]:443");
        assert_eq!(
            super::listen_address("localhost:81").unwrap(),
            "127.0.0.1:81"
        );
        assert_eq!(super::listen_address("unix:/run/x.sock"), None);
        assert_eq!(super::listen_address("example.com:80"), None);
    }

    #[test]
    fn wildcard_server_names_are_listed_and_a_leading_dot_keeps_the_bare_name() {
        let (config, imported) = checked(&http(
            " server { location / { proxy_pass http://app; } }\n server { server_name .b.test *.c.test; location / { proxy_pass http://127.0.0.1:9002; } }",
        ));
        assert_eq!(
            routes(&config),
            vec![(Some("b.test"), "/", "127-0-0-1-9002"), (None, "/", "app")]
        );
        assert_eq!(imported.findings.len(), 2, "{:?}", imported.findings);
    }

    #[test]
    fn normal_prefixes_are_told_apart() {
        for good in ["/", "/api", "/api/", "/a.b/c"] {
            assert!(super::is_normal_prefix(good), "{good}");
        }
        for bad in ["api", "//x", "/a/../b", "/./x", "/%61"] {
            assert!(!super::is_normal_prefix(bad), "{bad}");
        }
    }
}
