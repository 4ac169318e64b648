//! `veer import nginx FILE`: an NGINX configuration turned into an
//! equivalent `veer.toml`, with every directive that could not be carried
//! over (or was carried over with a difference) listed with its line and
//! why.
//!
//! `parse` reads the syntax; `upstream` turns `upstream` blocks into pools;
//! `server` turns `server` and `location` blocks into listeners, routes and
//! the pools' timeouts and retries; `emit` writes the TOML. What Veer has no
//! key for is reported, never guessed.

mod emit;
pub mod parse;
mod proxy;
mod server;
mod units;
mod upstream;

use std::path::Path;

use parse::Directive;
use upstream::Pool;

/// Whether a directive was left out or carried over with a difference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Not carried over: Veer has no equivalent (or not in this form).
    NotCarriedOver,
    /// Carried over, but Veer's behaviour differs a little; the reason says
    /// how.
    Approximated,
}

/// One directive the import could not carry over as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Its line in the NGINX file.
    pub line: usize,
    /// The directive as written (on one line).
    pub directive: String,
    /// Why, or what differs.
    pub reason: String,
    /// Left out, or carried over with a difference.
    pub kind: Kind,
}

/// An imported configuration.
#[derive(Debug)]
pub struct Imported {
    /// The `veer.toml` text, with the findings as comments at its top.
    pub toml: String,
    /// What was not carried over, or carried over with a difference, in
    /// line order.
    pub findings: Vec<Finding>,
}

impl Imported {
    /// One line per finding, `FILE:LINE: not carried over: DIRECTIVE: WHY`,
    /// for stderr.
    pub fn report(&self, origin: &str) -> Vec<String> {
        self.findings
            .iter()
            .map(|x| {
                let kind = match x.kind {
                    Kind::NotCarriedOver => "not carried over",
                    Kind::Approximated => "carried over with a difference",
                };
                format!(
                    "{origin}:{}: {kind}: `{}`: {}",
                    x.line, x.directive, x.reason
                )
            })
            .collect()
    }
}

/// Reads and imports an NGINX configuration file.
pub fn import_file(path: &Path) -> Result<Imported, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{} could not be read: {e}", path.display()))?;
    let origin = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    import(&text, &origin).map_err(|e| format!("{}: {e}", path.display()))
}

/// Imports NGINX configuration text; `origin` names it in the TOML's header.
/// Fails on a syntax error, or when there is nothing to proxy to (no
/// `upstream` and no `proxy_pass`).
pub fn import(text: &str, origin: &str) -> Result<Imported, String> {
    let tree = parse::parse(text).map_err(|e| e.to_string())?;
    let mut draft = Draft::default();
    for d in &tree {
        match d.name.as_str() {
            "http" => http(d, &mut draft),
            "events" => events(d, &mut draft),
            "worker_processes" => match d.args.as_slice() {
                [auto] if auto == "auto" => {}
                [n] if units::number(n).is_some_and(|n| (1..=1024).contains(&n)) => {
                    draft.server.set("workers", n.clone(), d, &mut draft.f)
                }
                _ => draft
                    .f
                    .dropped(d, "expected auto or a number of workers up to 1024"),
            },
            "stream" | "mail" => draft.f.dropped(d, "Veer proxies HTTP only"),
            _ => draft.f.dropped(d, reason_for(&d.name)),
        }
    }
    draft.finish()?;
    let mut findings = std::mem::take(&mut draft.f.list);
    findings.sort_by_key(|x| x.line);
    let toml = emit::render(&draft, &findings, origin);
    Ok(Imported { toml, findings })
}

/// `events { worker_connections N; }`.
fn events(d: &Directive, draft: &mut Draft) {
    for c in d.children() {
        match (
            c.name.as_str(),
            c.args.first().and_then(|n| units::number(n)),
        ) {
            ("worker_connections", Some(n)) if n <= u32::MAX as u64 => {
                draft
                    .server
                    .set("max_connections", n.to_string(), c, &mut draft.f);
                draft.f.approximated(
                    c,
                    "NGINX allows this many connections per worker, backend ones included; Veer's max_connections counts client connections of all workers",
                );
            }
            _ => draft.f.dropped(c, reason_for(&c.name)),
        }
    }
}

/// `http { … }`: upstreams first (a `proxy_pass` may name one defined
/// later), then the settings servers inherit, then the servers.
fn http(d: &Directive, draft: &mut Draft) {
    for c in d.children().iter().filter(|c| c.name == "upstream") {
        if let Some(pool) = upstream::from_upstream(c, &mut draft.f) {
            if draft.pools.iter().any(|p| p.name == pool.name) {
                draft
                    .f
                    .dropped(c, "an upstream of this name is defined already");
            } else {
                draft.pools.push(pool);
            }
        }
    }
    let mut inherited = proxy::Inherited::default();
    for c in d.children() {
        match c.name.as_str() {
            "upstream" | "server" => {}
            _ => {
                if !proxy::common(c, &mut inherited, draft) {
                    draft.f.dropped(c, reason_for(&c.name));
                }
            }
        }
    }
    let servers: Vec<&Directive> = d.children().iter().filter(|c| c.name == "server").collect();
    server::servers(&servers, &inherited, draft);
}

/// What the conversion has gathered so far.
#[derive(Debug, Default)]
struct Draft {
    pub f: Findings,
    /// `[server]`.
    pub server: Table,
    pub pools: Vec<Pool>,
    pub routes: Vec<Route>,
    /// Every `listen`, in file order.
    pub listens: Vec<Listen>,
    /// (cert, key, line) for `[tls] certificates`.
    pub certificates: Vec<(String, String, usize)>,
    /// `[tls] listen`, once chosen.
    pub tls_listen: Option<String>,
    /// Every `client_max_body_size`: bytes, line, text.
    pub body_sizes: Vec<(u64, usize, String)>,
    /// Servers listening in plain HTTP: their line, and the code of their
    /// `return 301 https://…` if that is all they do.
    pub plain_servers: Vec<(usize, Option<(u16, String)>)>,
}

/// A route being built.
#[derive(Debug, Clone, PartialEq)]
struct Route {
    /// `None`: any host.
    pub host: Option<String>,
    pub prefix: String,
    pub pool: String,
    /// The `location`'s line.
    pub line: usize,
}

/// A `listen` directive.
#[derive(Debug, Clone, PartialEq)]
struct Listen {
    /// `ip:port`.
    pub address: String,
    pub ssl: bool,
    pub line: usize,
}

impl Draft {
    /// Resolves what depends on the whole file: the listeners, the one body
    /// limit, timers Veer needs in order, duplicate routes.
    fn finish(&mut self) -> Result<(), String> {
        if self.pools.is_empty() {
            return Err(
                "nothing to carry over: no upstream block and no proxy_pass (Veer only proxies)"
                    .into(),
            );
        }
        self.choose_listeners();
        self.redirect();
        self.body_size();
        for pool in &mut self.pools {
            proxy::order_timers(pool, &mut self.f);
        }
        let mut kept: Vec<Route> = Vec::new();
        for route in std::mem::take(&mut self.routes) {
            match kept
                .iter()
                .find(|k| k.host == route.host && k.prefix == route.prefix)
            {
                Some(k) if k.pool == route.pool => {}
                Some(k) => self.f.dropped_at(
                    route.line,
                    format!("location {}", route.prefix),
                    format!(
                        "host {} and prefix {} go to pool {} already (line {})",
                        route.host.as_deref().unwrap_or("*"),
                        route.prefix,
                        k.pool,
                        k.line
                    ),
                ),
                None => kept.push(route),
            }
        }
        self.routes = kept;
        Ok(())
    }

    /// Veer has one plain and one TLS listener: the first of each.
    fn choose_listeners(&mut self) {
        let mut plain: Option<Listen> = None;
        let mut tls: Option<Listen> = None;
        for listen in self.listens.clone() {
            let chosen = if listen.ssl { &mut tls } else { &mut plain };
            match chosen {
                None => *chosen = Some(listen),
                Some(first) if first.address == listen.address => {}
                Some(first) => self.f.dropped_at(
                    listen.line,
                    format!(
                        "listen {}{}",
                        listen.address,
                        if listen.ssl { " ssl" } else { "" }
                    ),
                    format!(
                        "Veer has one {} listener: {} (line {}) is used",
                        if listen.ssl { "TLS" } else { "plain" },
                        first.address,
                        first.line
                    ),
                ),
            }
        }
        if let Some(listen) = plain {
            self.server.set_at(
                "listen",
                toml_string(&listen.address),
                listen.line,
                "listen",
                &mut self.f,
            );
        }
        if let Some(listen) = tls {
            if self.certificates.is_empty() {
                self.f.dropped_at(
                    listen.line,
                    format!("listen {} ssl", listen.address),
                    "no ssl_certificate and ssl_certificate_key for it: no [tls] listener",
                );
            } else {
                self.tls_listen = Some(listen.address);
            }
        }
    }

    /// `return 301 https://$host$request_uri` as the whole of the plain
    /// servers → `redirect_to_https`.
    fn redirect(&mut self) {
        let redirects: Vec<(usize, u16, String)> = self
            .plain_servers
            .iter()
            .filter_map(|(line, r)| r.as_ref().map(|(code, text)| (*line, *code, text.clone())))
            .collect();
        let Some((_, code, _)) = redirects.first() else {
            return;
        };
        let every_plain_server_redirects = redirects.len() == self.plain_servers.len();
        let code = *code;
        for (line, _, text) in &redirects {
            if self.tls_listen.is_none() {
                self.f
                    .dropped_at(*line, text, "no [tls] listener to redirect to");
            } else if !every_plain_server_redirects {
                self.f.dropped_at(
                    *line,
                    text,
                    "other servers serve plain HTTP on the one plain listener Veer has, and Veer's redirect_to_https would redirect them too",
                );
            }
        }
        if self.tls_listen.is_some() && every_plain_server_redirects {
            let (line, _, text) = &redirects[0];
            self.server.set_at(
                "redirect_to_https",
                code.to_string(),
                *line,
                text,
                &mut self.f,
            );
        }
    }

    /// One `max_body_bytes` for all: the largest (0 is no limit).
    fn body_size(&mut self) {
        let Some((first, line, text)) = self.body_sizes.first().cloned() else {
            return;
        };
        let unlimited = |b: u64| if b == 0 { u64::MAX } else { b };
        let (largest, largest_line, largest_text) = self
            .body_sizes
            .iter()
            .max_by_key(|(b, _, _)| unlimited(*b))
            .cloned()
            .unwrap_or((first, line, text));
        if self.body_sizes.iter().any(|(b, _, _)| *b != largest) {
            self.f.approximated_at(
                largest_line,
                &largest_text,
                "Veer has one request body limit for everything: the largest of the client_max_body_size values is used",
            );
        }
        self.server.set_at(
            "max_body_bytes",
            largest.to_string(),
            largest_line,
            &largest_text,
            &mut self.f,
        );
    }
}

/// Findings as they are made.
#[derive(Debug, Default)]
struct Findings {
    pub list: Vec<Finding>,
}

impl Findings {
    fn push(&mut self, line: usize, directive: &str, reason: String, kind: Kind) {
        self.list.push(Finding {
            line,
            directive: directive.to_string(),
            reason,
            kind,
        });
    }

    /// `d` is not carried over.
    pub fn dropped(&mut self, d: &Directive, reason: impl Into<String>) {
        self.push(d.line, &d.text(), reason.into(), Kind::NotCarriedOver);
    }

    /// `part` of `d` (an argument) is not carried over; the rest is.
    pub fn dropped_part(&mut self, d: &Directive, part: &str, reason: impl Into<String>) {
        let reason = format!("{part}: {}", reason.into());
        self.push(d.line, &d.text(), reason, Kind::NotCarriedOver);
    }

    /// Not carried over, at `line`.
    pub fn dropped_at(&mut self, line: usize, text: impl AsRef<str>, reason: impl Into<String>) {
        self.push(line, text.as_ref(), reason.into(), Kind::NotCarriedOver);
    }

    /// `d` is carried over with a difference.
    pub fn approximated(&mut self, d: &Directive, reason: impl Into<String>) {
        self.push(d.line, &d.text(), reason.into(), Kind::Approximated);
    }

    /// Carried over with a difference, at `line`.
    pub fn approximated_at(
        &mut self,
        line: usize,
        text: impl AsRef<str>,
        reason: impl Into<String>,
    ) {
        self.push(line, text.as_ref(), reason.into(), Kind::Approximated);
    }
}

/// The keys of one TOML table, in the order they were set: (key, TOML
/// value, NGINX line).
#[derive(Debug, Default)]
struct Table {
    pub entries: Vec<(&'static str, String, usize)>,
}

impl Table {
    /// The entry for `key`, if set.
    pub fn get(&self, key: &str) -> Option<&(&'static str, String, usize)> {
        self.entries.iter().find(|(k, _, _)| *k == key)
    }

    /// Sets `key` from directive `d`, unless it is set already: a different
    /// value is reported, the first one kept (Veer has one where NGINX may
    /// have several).
    pub fn set(&mut self, key: &'static str, value: String, d: &Directive, f: &mut Findings) {
        self.set_at(key, value, d.line, &d.text(), f);
    }

    /// As [`Table::set`], from `text` at `line`.
    pub fn set_at(
        &mut self,
        key: &'static str,
        value: String,
        line: usize,
        text: &str,
        f: &mut Findings,
    ) {
        match self.get(key) {
            None => self.entries.push((key, value, line)),
            Some((_, old, _)) if *old == value => {}
            Some((_, old, old_line)) => f.approximated_at(
                line,
                text,
                format!("Veer has one {key} here: it is {old}, from line {old_line}"),
            ),
        }
    }

    /// Sets `key` whatever it was.
    pub fn replace(&mut self, key: &'static str, value: String, line: usize) {
        self.entries.retain(|(k, _, _)| *k != key);
        self.entries.push((key, value, line));
    }
}

/// A TOML basic string.
fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_string()).to_string()
}

/// Why a directive with no Veer equivalent is left out.
fn reason_for(name: &str) -> &'static str {
    match name {
        "include" => "not followed: import the included file on its own, or paste it in",
        "rewrite" | "return" | "error_page" => "Veer does not rewrite or answer requests itself",
        "add_header" | "more_set_headers" => "Veer does not add response headers",
        "proxy_set_header" => {
            "Veer does not set request headers (it sets X-Forwarded-For, -Proto and -Host itself, see \"Forwarding\")"
        }
        "proxy_hide_header" | "proxy_pass_header" | "proxy_ignore_headers" => {
            "Veer passes response headers as they are"
        }
        "proxy_redirect" | "proxy_cookie_domain" | "proxy_cookie_path" => {
            "Veer does not rewrite response headers"
        }
        "root" | "alias" | "index" | "try_files" | "autoindex" | "default_type" | "types"
        | "sendfile" | "expires" => "Veer does not serve files",
        "if" | "set" | "map" | "geo" | "split_clients" => "Veer has no variables or conditions",
        "resolver" => "Veer resolves backend names once, when it reads the configuration",
        "error_log" => "Veer logs to stderr (RUST_LOG sets the level)",
        "access_log" | "log_format" => {
            "Veer's access log has its own format: turn it on with [access_log] (see \"Access log\")"
        }
        "proxy_buffering"
        | "proxy_buffers"
        | "proxy_buffer_size"
        | "proxy_busy_buffers_size"
        | "proxy_request_buffering"
        | "client_body_buffer_size" => "Veer streams bodies both ways and never buffers them whole",
        "limit_req" | "limit_req_zone" | "limit_conn" | "limit_conn_zone" | "limit_rate" => {
            "Veer has no rate or connection limits per client"
        }
        "allow" | "deny" | "auth_basic" | "auth_basic_user_file" | "auth_request" => {
            "Veer has no access control"
        }
        "ssl_protocols"
        | "ssl_ciphers"
        | "ssl_prefer_server_ciphers"
        | "ssl_session_cache"
        | "ssl_session_timeout"
        | "ssl_session_tickets"
        | "ssl_dhparam"
        | "ssl_ecdh_curve"
        | "ssl_stapling"
        | "ssl_stapling_verify" => {
            "Veer's TLS is fixed: TLS 1.2 and 1.3, AEAD ciphers, rotating session tickets"
        }
        n if n.starts_with("proxy_cache") => "Veer does not cache",
        n if n.starts_with("gzip") => "Veer does not compress",
        n if n.starts_with("proxy_ssl") => {
            "not carried over: set [pools.NAME.tls] (server_name, ca, client_cert) by hand"
        }
        n if n.starts_with("grpc_") || n.starts_with("fastcgi_") || n.starts_with("uwsgi_") => {
            "Veer proxies HTTP (and gRPC through protocol = \"h2c\" pools), not this module"
        }
        _ => "Veer has no equivalent",
    }
}

/// Helpers for the tests of every part.
#[cfg(test)]
mod testing {
    use super::{Imported, import};

    /// Imports `nginx` and checks that Veer's own validation accepts the
    /// result (plugins aside).
    pub fn checked(nginx: &str) -> (crate::Config, Imported) {
        let imported = import(nginx, "nginx.conf").unwrap();
        match crate::Config::from_toml(&imported.toml, std::path::Path::new(".")) {
            Ok(config) => (config, imported),
            Err(e) => panic!("{e}\n{}", imported.toml),
        }
    }

    /// An `http` block with upstream `app` (127.0.0.1:9001) and `body`,
    /// which starts on line 3.
    pub fn http(body: &str) -> String {
        format!("http {{\n upstream app {{ server 127.0.0.1:9001; }}\n{body}\n}}\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Imports `nginx` and checks that Veer's own validation accepts the
    /// result (plugins aside).
    fn import_valid(nginx: &str) -> Imported {
        let imported = import(nginx, "nginx.conf").unwrap();
        if let Err(e) = crate::Config::from_toml(&imported.toml, Path::new(".")) {
            panic!("{e}\n{}", imported.toml);
        }
        imported
    }

    fn lines_of(imported: &Imported, kind: Kind) -> Vec<usize> {
        imported
            .findings
            .iter()
            .filter(|x| x.kind == kind)
            .map(|x| x.line)
            .collect()
    }

    #[test]
    fn an_upstream_and_a_server_become_a_pool_a_listener_and_a_route() {
        let imported = import_valid(
            "http {\n upstream app { server 127.0.0.1:9001; server 127.0.0.1:9002; }\n server {\n  listen 8080;\n  location / { proxy_pass http://app; }\n }\n}\n",
        );
        let config = crate::Config::from_toml(&imported.toml, Path::new(".")).unwrap();
        assert_eq!(config.server.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(config.pools.len(), 1);
        assert_eq!(config.pools[0].name, "app");
        assert_eq!(config.pools[0].backends.len(), 2);
        assert_eq!(config.routes.len(), 1);
        assert!(imported.findings.is_empty(), "{:?}", imported.findings);
    }

    #[test]
    fn unsupported_directives_are_listed_with_their_lines_in_the_report_and_the_toml() {
        let imported = import_valid(
            "user nginx;\nhttp {\n gzip on;\n server {\n  location / {\n   proxy_pass http://127.0.0.1:9001;\n   add_header X-A b;\n  }\n }\n}\n",
        );
        assert_eq!(lines_of(&imported, Kind::NotCarriedOver), vec![1, 3, 7]);
        let report = imported.report("nginx.conf");
        assert!(
            report[0].starts_with("nginx.conf:1: not carried over: `user nginx`"),
            "{report:?}"
        );
        assert!(
            imported.toml.contains("#   line 7: `add_header X-A b`"),
            "{}",
            imported.toml
        );
        let header = imported.toml.split("\n[").next().unwrap();
        assert!(header.contains("# not carried over:"), "{header}");
    }

    #[test]
    fn include_is_listed_as_not_followed() {
        let imported = import_valid(
            "include mime.types;\nhttp { server { location / { proxy_pass http://127.0.0.1:9; } } }",
        );
        assert!(imported.findings[0].reason.contains("not followed"));
    }

    #[test]
    fn a_file_with_nothing_to_proxy_is_refused() {
        let err = import("http { server { location / { root /var/www; } } }", "x").unwrap_err();
        assert!(err.contains("nothing to carry over"), "{err}");
    }

    #[test]
    fn a_syntax_error_names_its_line() {
        let err = import("http {\n server {\n", "x").unwrap_err();
        assert!(err.starts_with("line 2:"), "{err}");
    }

    #[test]
    fn worker_processes_and_worker_connections_become_server_settings() {
        let imported = import_valid(
            "worker_processes 4;\nevents { worker_connections 2048; }\nhttp { server { location / { proxy_pass http://127.0.0.1:9; } } }",
        );
        let config = crate::Config::from_toml(&imported.toml, Path::new(".")).unwrap();
        assert_eq!(config.server.workers, 4);
        assert_eq!(config.server.max_connections, 2048);
        assert_eq!(lines_of(&imported, Kind::Approximated), vec![2]);
    }

    #[test]
    fn differing_body_limits_take_the_largest_with_a_note() {
        let imported = import_valid(
            "http {\n client_max_body_size 1m;\n server {\n  location /up { client_max_body_size 50m; proxy_pass http://127.0.0.1:9; }\n }\n}",
        );
        let config = crate::Config::from_toml(&imported.toml, Path::new(".")).unwrap();
        assert_eq!(config.server.max_body_bytes, Some(50 << 20));
        assert_eq!(lines_of(&imported, Kind::Approximated), vec![4]);
    }

    #[test]
    fn two_plain_listen_addresses_keep_the_first() {
        let imported = import_valid(
            "http {\n server { listen 80; location / { proxy_pass http://127.0.0.1:9; } }\n server { listen 81; server_name b.test; location / { proxy_pass http://127.0.0.1:9; } }\n}",
        );
        assert!(imported.toml.contains("listen = \"0.0.0.0:80\""));
        assert_eq!(lines_of(&imported, Kind::NotCarriedOver), vec![3]);
    }

    #[test]
    fn table_keeps_the_first_value_and_reports_a_different_one() {
        let mut t = Table::default();
        let mut f = Findings::default();
        t.set_at("max_fails", "2".into(), 3, "max_fails=2", &mut f);
        t.set_at("max_fails", "2".into(), 4, "max_fails=2", &mut f);
        assert!(f.list.is_empty());
        t.set_at("max_fails", "5".into(), 5, "max_fails=5", &mut f);
        assert_eq!(t.get("max_fails").unwrap().1, "2");
        assert_eq!(f.list[0].line, 5);
    }
}
