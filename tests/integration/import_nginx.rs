//! `veer import nginx`: the sample NGINX configuration
//! (`examples/nginx/nginx.conf`) becomes a `veer.toml` that `veer check`
//! accepts, and every directive left behind is named with its line.

use std::path::{Path, PathBuf};

use crate::pki::Pki;
use crate::support::veer;

fn sample() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/nginx/nginx.conf")
}

/// The line of `text` on which `needle` first appears (1-based).
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} is not in the sample"))
        + 1
}

#[test]
fn the_nginx_sample_imports_into_a_config_veer_check_accepts() {
    let pki = Pki::new("import-nginx");
    let dir = &pki.dir;
    // The certificate the sample names, relative to the veer.toml.
    std::fs::create_dir_all(dir.join("certs")).unwrap();
    let (cert, key) = pki.server_pem(&["shop.example.com"]);
    std::fs::write(dir.join("certs/shop.example.com.pem"), cert).unwrap();
    std::fs::write(dir.join("certs/shop.example.com-key.pem"), key).unwrap();

    let out = dir.join("veer.toml");
    let sample = sample();
    let (ok, stdout, stderr) = veer(&[
        "import",
        "nginx",
        sample.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.is_empty(),
        "-o writes the file, not stdout: {stdout}"
    );
    let toml = std::fs::read_to_string(&out).unwrap();

    let (ok, stdout, check_err) = veer(&["check", out.to_str().unwrap()]);
    assert!(ok, "veer check refused the import: {check_err}\n{toml}");
    for pool in [
        "pool shop: strategy least-connections",
        "pool accounts: strategy ip-hash",
        "pool catalog: strategy consistent-hash",
        "pool 127-0-0-1-9031: strategy round-robin",
    ] {
        assert!(stdout.contains(pool), "{pool}: {stdout}");
    }
    assert!(
        stdout.contains("https 0.0.0.0:443: certificates for shop.example.com"),
        "{stdout}"
    );

    // What the pools, listeners and routes became.
    let config = veer::Config::load(&out).unwrap();
    assert_eq!(config.server.listen.to_string(), "0.0.0.0:80");
    assert!(config.server.redirect_to_https.is_some());
    assert_eq!(config.server.max_body_bytes, Some(50 << 20));
    assert_eq!(config.server.keepalive_timeout.as_secs(), 65);
    let pool = |name: &str| config.pools.iter().find(|p| p.name == name).unwrap();
    let shop = pool("shop");
    let shop_backends: Vec<(&str, u32)> = shop
        .backends
        .iter()
        .map(|b| (b.address.as_str(), b.weight))
        .collect();
    assert_eq!(
        shop_backends,
        vec![("127.0.0.1:9001", 3), ("127.0.0.1:9002", 1)],
        "the backup is left out"
    );
    assert_eq!(shop.ejection.max_fails, 2);
    assert_eq!(shop.ejection.base.as_secs(), 20);
    assert_eq!(shop.max_idle_per_backend, 16, "keepalive 32 over 2 servers");
    assert_eq!(shop.connect_timeout.as_secs(), 3);
    assert_eq!(shop.response_timeout.as_secs(), 45);
    assert_eq!(shop.retries, 2, "proxy_next_upstream_tries 3");
    assert_eq!(shop.retry.on_statuses, vec![502, 503]);
    assert_eq!(
        pool("accounts").backends.len(),
        2,
        "the down server is left out"
    );
    assert_eq!(pool("accounts").strategy_config, r#"{"compat":"nginx"}"#);
    assert!(
        pool("catalog")
            .strategy_config
            .contains(r#""key":"query:sku""#),
        "{}",
        pool("catalog").strategy_config
    );
    let reports = pool("127-0-0-1-9031");
    assert_eq!(reports.response_timeout.as_secs(), 300);
    let routes: Vec<(&str, &str)> = config
        .routes
        .iter()
        .map(|r| (r.path_prefix.as_str(), config.pools[r.pool].name.as_str()))
        .collect();
    assert_eq!(
        routes,
        vec![
            ("/account/", "accounts"),
            ("/catalog/", "catalog"),
            ("/reports/", "127-0-0-1-9031"),
            ("/", "shop"),
        ]
    );

    // Every directive left behind is named with its line, on stderr and at
    // the top of the TOML.
    let text = std::fs::read_to_string(&sample).unwrap();
    let header: String = toml
        .lines()
        .take_while(|l| l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    for (needle, directive) in [
        ("user www-data", "user www-data"),
        ("include mime.types", "include mime.types"),
        ("gzip on", "gzip on"),
        ("access_log", "access_log /var/log/nginx/access.log"),
        ("9003 backup", "server 127.0.0.1:9003 backup"),
        ("ssl_protocols", "ssl_protocols TLSv1.2 TLSv1.3"),
        ("add_header", "add_header X-Frame-Options DENY"),
        ("proxy_cache_valid", "proxy_cache_valid 200 10m"),
        ("location ~*", "location ~* \\.(png|jpg|css|js)$ { … }"),
        ("rewrite", "rewrite ^/old-cart(.*)$ /cart$1 permanent"),
        ("location /old-cart", "location /old-cart { … }"),
    ] {
        let line = line_of(&text, needle);
        let reported = format!(":{line}: not carried over: `{directive}`: ");
        assert!(stderr.contains(&reported), "{reported}\n{stderr}");
        let commented = format!("#   line {line}: `{directive}`: ");
        assert!(header.contains(&commented), "{commented}\n{header}");
    }
    // Carried over with a difference: said so, with the line.
    for (needle, what) in [
        ("keepalive 32", "per backend"),
        ("9013 down", "place in the hash"),
        ("worker_connections", "per worker"),
    ] {
        let line = line_of(&text, needle);
        let reported = format!(":{line}: carried over with a difference: ");
        let found = stderr
            .lines()
            .any(|l| l.contains(&reported) && l.contains(what));
        assert!(found, "{reported} … {what}\n{stderr}");
    }
    // Nothing carried over is listed as left behind.
    for carried in [
        "least_conn",
        "ip_hash",
        "hash $arg_sku",
        "proxy_pass",
        "zone",
    ] {
        assert!(
            !stderr.lines().any(|l| l.contains(&format!("`{carried}"))),
            "{carried}: {stderr}"
        );
    }
}

#[test]
fn without_output_the_toml_goes_to_stdout_and_a_syntax_error_names_its_line() {
    let dir = crate::support::TempDir::new("import-nginx-stdout");
    let sample = sample();
    let (ok, stdout, _) = veer(&["import", "nginx", sample.to_str().unwrap()]);
    assert!(ok);
    assert!(stdout.contains("[pools.shop]"), "{stdout}");

    let broken = dir.join("broken.conf");
    std::fs::write(
        &broken,
        "http {\n  upstream a {\n    server 127.0.0.1:1\n  }\n",
    )
    .unwrap();
    let (ok, _, stderr) = veer(&["import", "nginx", broken.to_str().unwrap()]);
    assert!(!ok);
    assert!(stderr.contains("line 4:"), "{stderr}");
}
