//! Header rewriting between downstream and upstream: hop-by-hop headers are
//! removed (RFC 9110 §7.6.1), HTTP/2 `cookie` fields are joined for an
//! HTTP/1.1 backend (RFC 9113 §8.2.3), and `X-Forwarded-*` are set, believing
//! what the client sent only from a trusted proxy.

use std::fmt::Write as _;
use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that describe one connection, never forwarded, and `Upgrade`
/// (an upgrade the proxy passes on is set again with [`set_upgrade`]).
/// `Trailer` is not one of them: it announces trailer fields, which pass
/// through (and hyper writes an HTTP/1.1 trailer only when `Trailer` names
/// it). `Connection` comes first: see [`hop_by_hop_index`].
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Where `name` is in [`HOP_BY_HOP`], if it is there: one comparison by
/// length and bytes per header, instead of one per listed name.
fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    match name.as_str() {
        "connection" => Some(0),
        "keep-alive" => Some(1),
        "proxy-connection" => Some(2),
        "proxy-authenticate" => Some(3),
        "proxy-authorization" => Some(4),
        "te" => Some(5),
        "transfer-encoding" => Some(6),
        "upgrade" => Some(7),
        _ => None,
    }
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// Removes hop-by-hop headers, including any named in `Connection`, and
/// `Upgrade` (an upgrade the proxy passes on is set again with
/// [`set_upgrade`]).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names says which are here (most messages carry
    // `Connection` at most); only those are looked up again to go.
    let mut present = 0u8;
    for name in headers.keys() {
        if let Some(index) = hop_by_hop_index(name) {
            present |= 1 << index;
        }
    }
    if present == 0 {
        return;
    }
    if present & 1 != 0 {
        remove_named_in_connection(headers);
    }
    for (index, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << index) != 0 {
            headers.remove(name);
        }
    }
}

/// Removes the headers that `Connection` names (RFC 9110 §7.6.1), but for
/// `Host` and `Trailer`, which the proxy itself relies on.
fn remove_named_in_connection(headers: &mut HeaderMap) {
    // One look at the `Connection` values: the ones that name more than
    // the usual tokens (which go anyway) are kept aside while the map
    // changes, and whether one says `close`. Header values share their
    // bytes, so these clones copy nothing, and two fit on the stack.
    let mut named: smallvec::SmallVec<[HeaderValue; 2]> = smallvec::SmallVec::new();
    let mut close = false;
    for value in headers.get_all(header::CONNECTION) {
        let mut unusual = false;
        for token in tokens(value) {
            if token.eq_ignore_ascii_case("close") {
                close = true;
            } else if !is_usual_connection_token(token) {
                unusual = true;
            }
        }
        if unusual {
            named.push(value.clone());
        }
    }
    // `close` is usual but no header of that name goes with the list:
    // remove it here, as a named one would be.
    if close {
        headers.remove("close");
    }
    for value in &named {
        for token in tokens(value).filter(|t| !is_usual_connection_token(t)) {
            if !token.eq_ignore_ascii_case("host") && !token.eq_ignore_ascii_case("trailer") {
                headers.remove(token);
            }
        }
    }
}

/// The comma-separated tokens of a `Connection` value (none if it is not
/// text).
fn tokens(value: &HeaderValue) -> impl Iterator<Item = &str> {
    value
        .to_str()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// `close`, `keep-alive` and `upgrade`: what `Connection` usually says
/// (`Keep-Alive` and `Upgrade` go with the list anyway, `close` by name).
fn is_usual_connection_token(token: &str) -> bool {
    ["close", "keep-alive", "upgrade"]
        .iter()
        .any(|usual| token.eq_ignore_ascii_case(usual))
}

/// The protocol an HTTP/1.1 request asks to upgrade to (`Connection:
/// upgrade` and `Upgrade: PROTO`), if it does.
pub fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    asks.then(|| headers.get(header::UPGRADE).cloned())
        .flatten()
}

/// Puts the upgrade back after hop-by-hop headers were removed: it is for
/// the next hop too.
pub fn set_upgrade(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(header::UPGRADE, protocol);
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
}

/// Whether the client said it accepts trailers (`TE: trailers`).
pub fn accepts_trailers(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            t.trim()
                .split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("trailers"))
        })
}

/// Joins several `cookie` fields into one (`"; "` between them), as an
/// HTTP/1.1 backend expects; HTTP/2 clients send one field per cookie.
pub fn join_cookies(headers: &mut HeaderMap) {
    let mut values = headers.get_all(header::COOKIE).iter();
    let (Some(first), Some(_)) = (values.next(), values.next()) else {
        return;
    };
    let mut joined = Vec::with_capacity(first.len() * 4);
    for (i, value) in headers.get_all(header::COOKIE).iter().enumerate() {
        if i > 0 {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(value.as_bytes());
    }
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, value);
    }
}

/// Who the request came from, as far as `X-Forwarded-*` go.
pub struct Peer<'a> {
    /// The address of the TCP peer.
    pub ip: IpAddr,
    /// `ip` as a header value (made once per connection: cloning it shares
    /// its bytes).
    pub ip_value: &'a HeaderValue,
    /// Whether that peer is a trusted proxy (its forwarding headers are
    /// believed and extended rather than replaced).
    pub trusted: bool,
    /// Whether the client connection is TLS.
    pub tls: bool,
}

/// Sets `X-Forwarded-For`, `X-Forwarded-Proto` and `X-Forwarded-Host`.
///
/// From an untrusted peer (the default: `server.trusted_proxies` is empty)
/// nothing it sent about forwarding is believed: `X-Forwarded-For` becomes
/// the peer's address, `X-Forwarded-Proto`/`-Host` are set from this
/// connection and request, and `Forwarded` and `X-Real-IP` are removed. From
/// a trusted peer the peer's address is appended to `X-Forwarded-For`, and
/// the other headers pass as the peer set them (set here only if absent).
pub fn set_forwarded(headers: &mut HeaderMap, peer: &Peer<'_>, host: Option<&HeaderValue>) {
    if !peer.trusted {
        headers.remove(&FORWARDED);
        headers.remove(&X_REAL_IP);
    }
    if peer.trusted && headers.contains_key(&X_FORWARDED_FOR) {
        // A chain to extend: the one case that builds a new value.
        let mut xff = String::with_capacity(48);
        for previous in headers.get_all(&X_FORWARDED_FOR) {
            if let Ok(previous) = previous.to_str() {
                let _ = write!(xff, "{previous}, ");
            }
        }
        let _ = write!(xff, "{}", peer.ip);
        if let Ok(value) = HeaderValue::from_str(&xff) {
            headers.insert(X_FORWARDED_FOR.clone(), value);
        }
    } else {
        headers.insert(X_FORWARDED_FOR.clone(), peer.ip_value.clone());
    }
    let keep = |headers: &HeaderMap, name: &HeaderName| peer.trusted && headers.contains_key(name);
    if !keep(headers, &X_FORWARDED_PROTO) {
        let proto = if peer.tls { "https" } else { "http" };
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    }
    if !keep(headers, &X_FORWARDED_HOST) {
        match host {
            Some(host) => headers.insert(X_FORWARDED_HOST.clone(), host.clone()),
            None => headers.remove(&X_FORWARDED_HOST),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                )
            })
            .collect()
    }

    static LOCALHOST: HeaderValue = HeaderValue::from_static("127.0.0.1");

    fn peer(trusted: bool) -> Peer<'static> {
        Peer {
            ip: "127.0.0.1".parse().unwrap(),
            ip_value: &LOCALHOST,
            trusted,
            tls: false,
        }
    }

    #[test]
    fn hop_by_hop_headers_and_those_named_in_connection_are_removed() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("accept", "*/*"),
        ]);
        strip_hop_by_hop(&mut h);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, vec!["accept"]);
    }

    #[test]
    fn the_index_table_names_each_hop_by_hop_header_at_its_place() {
        for (index, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name), Some(index), "{name}");
        }
        for other in [
            header::HOST,
            header::TRAILER,
            HeaderName::from_static("x-te"),
        ] {
            assert_eq!(hop_by_hop_index(&other), None, "{other}");
        }
    }

    #[test]
    fn every_connection_field_and_token_counts_close_included() {
        let mut h = map(&[
            ("connection", "close"),
            ("connection", "Upgrade, x-one"),
            ("connection", ", X-Two ,"),
            ("close", "a header that happens to be named close"),
            ("x-one", "1"),
            ("x-two", "2"),
            ("x-three", "3"),
        ]);
        strip_hop_by_hop(&mut h);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, vec!["x-three"]);
    }

    #[test]
    fn trailer_is_not_hop_by_hop_so_trailers_can_pass() {
        let mut h = map(&[
            ("trailer", "x-checksum"),
            ("te", "trailers"),
            ("connection", "trailer"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h["trailer"], "x-checksum");
        assert!(!h.contains_key("te"));
    }

    #[test]
    fn cookie_fields_are_joined_with_semicolons() {
        let mut h = map(&[("cookie", "a=1"), ("cookie", "b=2"), ("cookie", "c=3")]);
        join_cookies(&mut h);
        assert_eq!(h.get_all("cookie").iter().count(), 1);
        assert_eq!(h["cookie"], "a=1; b=2; c=3");
    }

    #[test]
    fn from_an_untrusted_peer_forwarding_headers_are_replaced_or_removed() {
        let mut h = map(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-proto", "https"),
            ("forwarded", "for=203.0.113.9"),
            ("x-real-ip", "203.0.113.9"),
        ]);
        set_forwarded(
            &mut h,
            &peer(false),
            Some(&HeaderValue::from_static("a.example")),
        );
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "a.example");
        assert!(!h.contains_key("forwarded") && !h.contains_key("x-real-ip"));
    }

    #[test]
    fn from_a_trusted_peer_the_client_is_appended_and_the_rest_kept() {
        let mut h = map(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-for", "198.51.100.1"),
            ("x-forwarded-proto", "https"),
            ("x-real-ip", "203.0.113.9"),
        ]);
        set_forwarded(
            &mut h,
            &peer(true),
            Some(&HeaderValue::from_static("a.example")),
        );
        assert_eq!(h["x-forwarded-for"], "203.0.113.9, 198.51.100.1, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-real-ip"], "203.0.113.9");
    }
}
