//! One authority per request: the host a request is for, taken from one
//! place and checked against the others, so that routing, the plugin and the
//! backend all see the same host.
//!
//! The authority is the absolute-form URI's (`GET http://a/x HTTP/1.1`) or
//! HTTP/2's `:authority` when present, else the `Host` header (RFC 9112
//! §3.2.2, RFC 9113 §8.3.1). Refused with 400: two `Host` headers; a `Host`
//! that names another host than the URI; an HTTP/1.1 or HTTP/2 request with
//! no authority at all; an authority that is not a plain `host[:port]`
//! (userinfo, bad characters, a port that is not a number).

use http::header::{self, HeaderMap, HeaderValue};
use http::{Uri, Version};

/// The authority of a request, as it will be forwarded in `Host`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authority {
    /// `host[:port]` as the client wrote it (the `Host` value sent upstream).
    pub value: HeaderValue,
    /// Byte length of the host part within `value` (no port, brackets kept
    /// off for IPv6: see [`Authority::host`]).
    host_start: usize,
    host_end: usize,
}

impl Authority {
    /// The host without port (and without the brackets of an IPv6 literal),
    /// as written (compare case-insensitively).
    pub fn host(&self) -> &str {
        // `value` was checked to be visible ASCII when it was parsed.
        let text = self.value.to_str().unwrap_or("");
        &text[self.host_start..self.host_end]
    }
}

/// Why a request's authority is refused (always 400).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadAuthority(pub &'static str);

/// Finds the one authority of a request; `Ok(None)` only for an HTTP/1.0
/// request without `Host` (it is then routed by path alone).
pub fn of_request(
    uri: &Uri,
    headers: &HeaderMap,
    version: Version,
) -> Result<Option<Authority>, BadAuthority> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let host_header = hosts.next();
    if hosts.next().is_some() {
        return Err(BadAuthority("the request has more than one Host header"));
    }
    // The Host value is shared, not copied: it keeps pointing into the bytes
    // hyper read.
    let host_header = host_header
        .map(|v| parse(v.clone()).ok_or(BadAuthority("the Host header is not a valid host[:port]")))
        .transpose()?;
    let from_uri = uri
        .authority()
        .map(|a| {
            HeaderValue::from_str(a.as_str())
                .ok()
                .and_then(parse)
                .ok_or(BadAuthority(
                    "the request URI's authority is not a valid host[:port]",
                ))
        })
        .transpose()?;
    match (from_uri, host_header) {
        (Some(uri_authority), Some(host)) => {
            let scheme_port = default_port(uri);
            if !same(&uri_authority, &host, scheme_port) {
                return Err(BadAuthority(
                    "the Host header names another host than the request URI",
                ));
            }
            Ok(Some(uri_authority))
        }
        (Some(authority), None) | (None, Some(authority)) => Ok(Some(authority)),
        (None, None) if version == Version::HTTP_10 || version == Version::HTTP_09 => Ok(None),
        (None, None) => Err(BadAuthority(
            "the request names no host: HTTP/1.1 needs a Host header (HTTP/2 an :authority)",
        )),
    }
}

/// The port the URI's scheme implies, for comparing `a` with `a:80`.
fn default_port(uri: &Uri) -> Option<u16> {
    match uri.scheme_str() {
        Some("http") => Some(80),
        Some("https") => Some(443),
        _ => None,
    }
}

/// Whether two authorities name the same host and port (host compared
/// case-insensitively; a missing port is the scheme's default).
fn same(a: &Authority, b: &Authority, default: Option<u16>) -> bool {
    a.host().eq_ignore_ascii_case(b.host()) && port(a).or(default) == port(b).or(default)
}

fn port(a: &Authority) -> Option<u16> {
    let text = a.value.to_str().ok()?;
    let rest = &text[a.host_end..];
    let rest = rest
        .strip_prefix(']')
        .or_else(|| rest.strip_prefix('.'))
        .unwrap_or(rest);
    rest.strip_prefix(':')?.parse().ok()
}

/// Parses `host[:port]`: a registered name (letters, digits, `-`, `.`, `_`),
/// an IPv4 address, or a bracketed IPv6 literal; a port of 1 to 5 digits.
fn parse(value: HeaderValue) -> Option<Authority> {
    let text = std::str::from_utf8(value.as_bytes()).ok()?;
    let (host_start, host_end, rest) = if let Some(inner) = text.strip_prefix('[') {
        let close = inner.find(']')?;
        let literal = &inner[..close];
        literal.parse::<std::net::Ipv6Addr>().ok()?;
        (1, 1 + close, &inner[close + 1..])
    } else {
        let end = text.find(':').unwrap_or(text.len());
        let host = &text[..end];
        let name_byte = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_');
        if host.is_empty() || !host.bytes().all(name_byte) {
            return None;
        }
        // `example.com.` is `example.com` (a fully qualified name): one
        // trailing dot is not part of the host routes and certificates see.
        let host_end = if host.len() > 1 && host.ends_with('.') {
            end - 1
        } else {
            end
        };
        (0, host_end, &text[end..])
    };
    if !rest.is_empty() {
        let digits = rest.strip_prefix(':')?;
        // An empty port ("host:") is allowed by RFC 3986; digits otherwise.
        if digits.len() > 5 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        if !digits.is_empty() && digits.parse::<u16>().is_err() {
            return None;
        }
    }
    Some(Authority {
        value,
        host_start,
        host_end,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(
        uri: &str,
        hosts: &[&str],
        version: Version,
    ) -> Result<Option<String>, BadAuthority> {
        let uri: Uri = uri.parse().unwrap();
        let mut headers = HeaderMap::new();
        for h in hosts {
            headers.append(header::HOST, HeaderValue::from_str(h).unwrap());
        }
        of_request(&uri, &headers, version).map(|a| a.map(|a| a.host().to_string()))
    }

    #[test]
    fn the_host_header_is_the_authority_of_an_origin_form_request() {
        assert_eq!(
            request("/x", &["Example.com:8080"], Version::HTTP_11),
            Ok(Some("Example.com".into()))
        );
        assert_eq!(
            request("/x", &["[::1]:80"], Version::HTTP_11),
            Ok(Some("::1".into()))
        );
    }

    #[test]
    fn an_absolute_uri_wins_and_must_agree_with_host() {
        assert_eq!(
            request("http://a/x", &[], Version::HTTP_11),
            Ok(Some("a".into()))
        );
        assert_eq!(
            request("http://a/x", &["A:80"], Version::HTTP_11),
            Ok(Some("a".into()))
        );
        assert!(request("http://a/x", &["evil"], Version::HTTP_11).is_err());
        assert!(request("http://a:81/x", &["a"], Version::HTTP_11).is_err());
    }

    #[test]
    fn a_trailing_dot_is_not_part_of_the_host() {
        assert_eq!(
            request("/x", &["Example.com.:8080"], Version::HTTP_11),
            Ok(Some("Example.com".into()))
        );
        assert_eq!(
            request("http://a./x", &["a"], Version::HTTP_11),
            Ok(Some("a".into()))
        );
    }

    #[test]
    fn two_host_headers_are_refused() {
        assert!(request("/x", &["a", "a"], Version::HTTP_11).is_err());
    }

    #[test]
    fn http_1_1_without_host_is_refused_and_http_1_0_is_not() {
        assert!(request("/x", &[], Version::HTTP_11).is_err());
        assert!(request("/x", &[], Version::HTTP_2).is_err());
        assert_eq!(request("/x", &[], Version::HTTP_10), Ok(None));
    }

    #[test]
    fn hosts_that_are_not_plain_names_are_refused() {
        for bad in ["user@a", "a b", "a:port", "a:99999", "[zz]", "", "a/b"] {
            assert!(request("/x", &[bad], Version::HTTP_11).is_err(), "{bad:?}");
        }
    }
}
