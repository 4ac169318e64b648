//! Writes the imported configuration as `veer.toml` text: the findings as
//! comments first, then `[server]`, `[tls]`, the pools and the routes, each
//! with a comment saying where in the NGINX file it comes from.

use std::fmt::Write;

use super::upstream::Pool;
use super::{Draft, Finding, Kind, Table, toml_string};

/// The whole file.
pub(super) fn render(draft: &Draft, findings: &[Finding], origin: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Imported from {origin} by `veer import nginx`.");
    let _ = writeln!(
        out,
        "# Where the NGINX file says nothing, Veer's defaults apply (see README, \"Configuration\")."
    );
    for (kind, title) in [
        (Kind::NotCarriedOver, "not carried over"),
        (Kind::Approximated, "carried over with a difference"),
    ] {
        let listed: Vec<&Finding> = findings.iter().filter(|x| x.kind == kind).collect();
        if listed.is_empty() {
            continue;
        }
        let _ = writeln!(out, "#\n# {title}:");
        for x in listed {
            let _ = writeln!(out, "#   line {}: `{}`: {}", x.line, x.directive, x.reason);
        }
    }
    if !draft.server.entries.is_empty() {
        out.push_str("\n[server]\n");
        table(&mut out, &draft.server);
    }
    if let Some(listen) = &draft.tls_listen {
        let _ = writeln!(
            out,
            "\n[tls]\nlisten = {}\ncertificates = [",
            toml_string(listen)
        );
        for (cert, key, line) in &draft.certificates {
            let _ = writeln!(
                out,
                "  {{ cert = {}, key = {} }},  # line {line}",
                toml_string(cert),
                toml_string(key)
            );
        }
        out.push_str("]\n");
    }
    for p in &draft.pools {
        pool(&mut out, p);
    }
    for route in &draft.routes {
        let _ = writeln!(
            out,
            "\n[[routes]]  # location {}, line {}",
            route.prefix, route.line
        );
        if let Some(host) = &route.host {
            let _ = writeln!(out, "host = {}", toml_string(host));
        }
        let _ = writeln!(out, "path_prefix = {}", toml_string(&route.prefix));
        let _ = writeln!(out, "pool = {}", toml_string(&route.pool));
    }
    out
}

fn table(out: &mut String, t: &Table) {
    for (key, value, line) in &t.entries {
        let _ = writeln!(out, "{key} = {value}  # line {line}");
    }
}

fn pool(out: &mut String, p: &Pool) {
    let _ = writeln!(out, "\n# {}", p.origin);
    if !p.used {
        out.push_str("# (no proxy_pass names it)\n");
    }
    let _ = writeln!(out, "[pools.{}]", p.name);
    let _ = writeln!(out, "strategy = {}", toml_string(p.strategy));
    if !p.strategy_config.is_empty() {
        let entries: Vec<String> = p
            .strategy_config
            .iter()
            .map(|(k, v)| format!("{k} = {v}"))
            .collect();
        let _ = writeln!(out, "strategy_config = {{ {} }}", entries.join(", "));
    }
    out.push_str("backends = [\n");
    for b in &p.backends {
        let mut fields = vec![format!("address = {}", toml_string(&b.address))];
        if b.weight != 1 {
            fields.push(format!("weight = {}", b.weight));
        }
        if let Some(written) = &b.written {
            // NGINX's ring places a server by its text as written.
            fields.push(format!(
                "labels = {{ hash_key = {} }}",
                toml_string(written)
            ));
        }
        if fields.len() == 1 {
            let _ = writeln!(out, "  {},", toml_string(&b.address));
        } else {
            let _ = writeln!(out, "  {{ {} }},", fields.join(", "));
        }
    }
    for line in &p.left_out {
        let _ = writeln!(out, "  # {line}");
    }
    out.push_str("]\n");
    table(out, &p.settings);
    for (name, t) in [("retry", &p.retry), ("outlier", &p.outlier)] {
        if !t.entries.is_empty() {
            let _ = writeln!(out, "[pools.{}.{name}]", p.name);
            table(out, t);
        }
    }
    if let Some(line) = p.tls {
        let _ = writeln!(out, "[pools.{}.tls]  # https://, line {line}", p.name);
    }
}

#[cfg(test)]
mod tests {
    use super::super::import;

    #[test]
    fn the_toml_says_where_each_pool_and_route_comes_from() {
        let imported = import(
            "http {\n upstream app {\n  server 127.0.0.1:9001 weight=2;\n  server 127.0.0.1:9002 down;\n }\n server { location /api/ { proxy_pass http://app; } }\n}",
            "site.conf",
        )
        .unwrap();
        let toml = &imported.toml;
        assert!(toml.starts_with("# Imported from site.conf"), "{toml}");
        assert!(
            toml.contains("# upstream app, line 2\n[pools.app]"),
            "{toml}"
        );
        assert!(
            toml.contains("{ address = \"127.0.0.1:9001\", weight = 2 },"),
            "{toml}"
        );
        assert!(
            toml.contains("# \"127.0.0.1:9002\",  # marked down (line 4)"),
            "{toml}"
        );
        assert!(
            toml.contains("[[routes]]  # location /api/, line 6"),
            "{toml}"
        );
        crate::config::ConfigFile::parse(toml).unwrap();
    }

    #[test]
    fn strings_are_quoted_as_toml_wants() {
        let imported = import(
            "http { server { location / { proxy_pass http://127.0.0.1:9; } }\n server { server_name \"we\\\"ird\"; location / { proxy_pass http://127.0.0.1:9; } } }",
            "x",
        )
        .unwrap();
        let file = crate::config::ConfigFile::parse(&imported.toml).unwrap();
        assert!(
            file.routes.iter().any(|r| r.host == "we\"ird"),
            "{}",
            imported.toml
        );
    }
}
