//! One authority per request, routes on normalised paths and segment
//! boundaries, and the requests a reverse proxy refuses.

use crate::support::*;

async fn two_pools() -> (Backend, Backend, Backend, Proxy) {
    let [web, api, admin] = start_backends(["web", "api", "admin"]).await;
    let proxy = Proxy::start(&format!(
        r#"{SERVER}
[pools.web]
backends = ["{}"]
[pools.api]
backends = ["{}"]
[pools.admin]
backends = ["{}"]
[[routes]]
pool = "web"
[[routes]]
path_prefix = "/api"
pool = "api"
[[routes]]
path_prefix = "/admin"
pool = "admin"
[[routes]]
host = "admin.example"
pool = "admin"
"#,
        web.addr, api.addr, admin.addr
    ))
    .await;
    (web, api, admin, proxy)
}

/// The `x-backend` of a raw request's answer, with its status.
async fn served_by(proxy: &Proxy, request: &str) -> (u16, String) {
    let (status, text) = raw_status(proxy.addr, request.as_bytes()).await;
    let backend = text
        .lines()
        .find_map(|l| l.strip_prefix("x-backend: "))
        .unwrap_or("-")
        .to_string();
    (status, backend)
}

#[tokio::test]
async fn an_absolute_uri_routes_and_is_forwarded_with_its_own_host() {
    let (_web, _api, _admin, proxy) = two_pools().await;
    let (status, by) = served_by(
        &proxy,
        "GET http://admin.example/x HTTP/1.1\r\nhost: admin.example\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!((status, by.as_str()), (200, "admin"));
    let (_, text) = raw_status(
        proxy.addr,
        b"GET http://admin.example/headers HTTP/1.1\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(
        text.contains("host: admin.example\n"),
        "Host is the URI's: {text}"
    );
}

#[tokio::test]
async fn a_host_that_disagrees_with_the_uri_or_is_doubled_or_missing_gets_400() {
    let (web, api, admin, proxy) = two_pools().await;
    for request in [
        "GET http://admin.example/x HTTP/1.1\r\nhost: evil\r\n\r\n",
        "GET /x HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n",
        "GET /x HTTP/1.1\r\nhost: a\r\nhost: a\r\n\r\n",
        "GET /x HTTP/1.1\r\n\r\n",
        "GET /x HTTP/1.1\r\nhost: user@admin.example\r\n\r\n",
    ] {
        let (status, text) = raw_status(proxy.addr, request.as_bytes()).await;
        assert_eq!(status, 400, "{request:?}: {text}");
    }
    let hits = |b: &Backend| b.hits.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        hits(&web) + hits(&api) + hits(&admin),
        0,
        "none was forwarded"
    );
    let (status, by) = served_by(&proxy, "GET /x HTTP/1.0\r\n\r\n").await;
    assert_eq!(
        (status, by.as_str()),
        (200, "web"),
        "HTTP/1.0 may omit Host"
    );
}

#[tokio::test]
async fn routes_match_normalised_paths_on_segment_boundaries() {
    let (_web, _api, _admin, proxy) = two_pools().await;
    for (path, pool) in [
        ("/api", "api"),
        ("/api/v1", "api"),
        ("/apiary", "web"),
        ("/admin", "admin"),
        ("//admin", "admin"),
        ("/%61dmin", "admin"),
        ("/a/../admin", "admin"),
        ("/%2e%2e/admin/x", "admin"),
        ("/./api/", "api"),
    ] {
        let (status, by) = served_by(
            &proxy,
            &format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!((status, by.as_str()), (200, pool), "{path}");
    }
    let (status, _) = served_by(&proxy, "GET /a%zz HTTP/1.1\r\nhost: localhost\r\n\r\n").await;
    assert_eq!(status, 400, "a malformed escape");
}

#[tokio::test]
async fn the_original_path_is_forwarded_unless_configured_otherwise() {
    for (setting, expected) in [
        ("", "path: //x/../headers?q=1"),
        ("forward_path = \"normalized\"", "path: /headers?q=1"),
    ] {
        let a = Backend::start("a").await;
        let proxy = Proxy::start(&format!(
            "{}[pools.web]\nbackends = [{}]\n",
            server(1, setting),
            addresses(&[&a])
        ))
        .await;
        let (_, text) = raw_status(
            proxy.addr,
            b"GET //x/../headers?q=1 HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n",
        )
        .await;
        assert!(text.contains(expected), "{setting:?}: {text}");
    }
}

#[tokio::test]
async fn connect_gets_405_with_a_reason() {
    let (_web, _api, _admin, proxy) = two_pools().await;
    let (status, text) = raw_status(
        proxy.addr,
        b"CONNECT example.com:443 HTTP/1.1\r\nhost: example.com:443\r\n\r\n",
    )
    .await;
    assert_eq!(status, 405, "{text}");
    assert!(text.contains("not a tunnel"), "{text}");
    assert!(text.to_ascii_lowercase().contains("allow: get"), "{text}");
}

#[tokio::test]
async fn an_http10_request_without_host_reaches_the_backend_with_the_pool_name_as_host() {
    let (_web, _api, _admin, proxy) = two_pools().await;
    let (status, text) = raw_status(proxy.addr, b"GET /headers HTTP/1.0\r\n\r\n").await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("host: web\n"), "{text}");
}

#[tokio::test]
async fn an_absolute_uri_is_forwarded_in_origin_form_with_its_query() {
    let (_web, _api, _admin, proxy) = two_pools().await;
    let (_, text) = raw_status(
        proxy.addr,
        b"GET http://localhost/headers?x=1 HTTP/1.1\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(text.contains("path: /headers?x=1\n"), "{text}");
}

#[tokio::test]
async fn a_host_with_a_trailing_dot_is_routed_like_the_name_without() {
    let (_web, _api, _admin, proxy) = two_pools().await;
    let (status, by) = served_by(
        &proxy,
        "GET / HTTP/1.1\r\nhost: Admin.Example.\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!((status, by.as_str()), (200, "admin"));
}
