//! The bytes of HTTP/1.1 to a backend: a request head written into the
//! connection's reused buffer, a response head parsed with httparse into a
//! reused header map (RFC 9112 §4–5), and how the body after it is
//! delimited (§6.3), which also says whether the connection can be used
//! again.

use std::cell::RefCell;
use std::mem::MaybeUninit;

use bytes::{Buf, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri, Version};

/// The most header lines a response head may carry (hyper's default is 100).
pub(super) const MAX_HEADERS: usize = 128;

/// The most bytes a response head may take. NGINX gives a head one buffer
/// (`proxy_buffer_size`, 4 or 8 KiB) and answers 502 past it; this is
/// roomier, for backends that set large cookies.
pub(super) const MAX_HEAD: usize = 64 * 1024;

/// Where a header line's name and value lie in the buffer.
struct Span {
    name: std::ops::Range<u32>,
    value: std::ops::Range<u32>,
}

/// A span of the head being parsed, as an index range.
fn at(span: &std::ops::Range<u32>) -> std::ops::Range<usize> {
    span.start as usize..span.end as usize
}

thread_local! {
    /// The spans of the head being parsed (kept, so parsing allocates
    /// nothing once warm).
    static SPANS: RefCell<Vec<Span>> = const { RefCell::new(Vec::new()) };
}

/// How the body after a response head is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    /// No body (`HEAD`, 1xx, 204, 304, `Content-Length: 0`).
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the backend closes the connection.
    UntilClose,
}

/// A parsed response head (its headers went into the caller's map).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Head {
    pub(super) status: StatusCode,
    pub(super) version: Version,
    pub(super) framing: Framing,
    /// Whether the connection may carry another request once the body is
    /// read to its end.
    pub(super) keep_alive: bool,
    /// The reason phrase, when it is not the status's usual one ("599
    /// Network Connect Timeout"): hyper's server writes it back as it is.
    pub(super) reason: Option<hyper::ext::ReasonPhrase>,
}

/// Writes the request head (request line, headers, blank line) into `out`,
/// as hyper's client would for a request without a body: the headers as
/// they are, in order. Returns whether the request asks to close the
/// connection after its response.
pub(super) fn encode_request(
    method: &Method,
    uri: &Uri,
    version: Version,
    headers: &HeaderMap,
    out: &mut Vec<u8>,
) -> bool {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    match uri.path_and_query() {
        Some(target) if uri.scheme().is_none() && uri.authority().is_none() => {
            out.extend_from_slice(target.as_str().as_bytes());
        }
        // Absolute form (or an authority alone), as the client sent it.
        _ => {
            use std::io::Write;
            let _ = write!(out, "{uri}");
        }
    }
    out.extend_from_slice(if version == Version::HTTP_10 {
        b" HTTP/1.0\r\n"
    } else {
        b" HTTP/1.1\r\n"
    });
    let mut close = version == Version::HTTP_10;
    for (name, value) in headers {
        if name == header::CONNECTION {
            if has_token(value.as_bytes(), b"close") {
                close = true;
            } else if has_token(value.as_bytes(), b"keep-alive") {
                close = false;
            }
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    close
}

/// Parses the response head at the start of `buf`, consuming it, into
/// `headers` (emptied first). `Ok(None)`: more bytes are needed. Interim
/// responses (1xx but 101) are read past, as hyper's client does. The error
/// says what the backend got wrong.
pub(super) fn parse_response(
    buf: &mut BytesMut,
    method: &Method,
    headers: &mut HeaderMap,
) -> Result<Option<Head>, &'static str> {
    loop {
        // Where each header's name and value lie in `buf`: the lines borrow
        // `buf`, which is split off (without a copy) once they are read.
        let parsed = SPANS.with_borrow_mut(|spans| {
            spans.clear();
            let mut lines = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
            let mut response = httparse::Response::new(&mut []);
            let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
                &mut response,
                buf,
                &mut lines,
            );
            let len = match parsed {
                Ok(httparse::Status::Complete(len)) => len,
                Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
                    return Err("its response head is larger than 64 KiB");
                }
                Ok(httparse::Status::Partial) => return Ok(None),
                Err(httparse::Error::TooManyHeaders) => {
                    return Err("its response head has more than 128 header lines");
                }
                Err(_) => return Err("its response head is not valid HTTP/1.1"),
            };
            if len > MAX_HEAD {
                return Err("its response head is larger than 64 KiB");
            }
            let base = buf.as_ptr() as usize;
            let offset = |part: &[u8]| (part.as_ptr() as usize - base) as u32;
            spans.extend(response.headers.iter().map(|line| {
                let name = offset(line.name.as_bytes());
                let value = offset(line.value);
                Span {
                    name: name..name + line.name.len() as u32,
                    value: value..value + line.value.len() as u32,
                }
            }));
            let code = response.code.unwrap_or(0);
            let reason = response
                .reason
                .filter(|reason| !reason.is_empty())
                .map(|reason| {
                    let from = offset(reason.as_bytes());
                    from..from + reason.len() as u32
                });
            Ok(Some((len, code, response.version.unwrap_or(1), reason)))
        });
        let Some((len, code, minor, reason)) = parsed? else {
            return Ok(None);
        };
        let status = StatusCode::from_u16(code).map_err(|_| "its status code is not valid")?;
        if status.is_informational() && code != 101 {
            buf.advance(len);
            continue;
        }
        let version = if minor == 0 {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        let head = buf.split_to(len).freeze();
        headers.clear();
        let mut facts = Facts::new(version);
        SPANS.with_borrow(|spans| {
            headers.reserve(spans.len());
            for span in spans {
                let name = HeaderName::from_bytes(&head[at(&span.name)])
                    .map_err(|_| "a response header name is not valid")?;
                let value = HeaderValue::from_maybe_shared(head.slice(at(&span.value)))
                    .map_err(|_| "a response header value is not valid")?;
                facts.note(&name, &value);
                headers.append(name, value);
            }
            Ok::<(), &'static str>(())
        })?;
        let mut parsed = facts.head(status, version, method)?;
        // Only a phrase other than the status's usual one is kept.
        parsed.reason = reason
            .filter(|range| Some(&head[at(range)]) != status.canonical_reason().map(str::as_bytes))
            .and_then(|range| hyper::ext::ReasonPhrase::try_from(head.slice(at(&range))).ok());
        return Ok(Some(parsed));
    }
}

/// What a response's headers say about its body and its connection.
struct Facts {
    keep_alive: bool,
    saw_close: bool,
    transfer_encoding: bool,
    chunked: bool,
    length: Option<u64>,
    bad_length: bool,
}

impl Facts {
    fn new(version: Version) -> Facts {
        Facts {
            keep_alive: version == Version::HTTP_11,
            saw_close: false,
            transfer_encoding: false,
            chunked: false,
            length: None,
            bad_length: false,
        }
    }

    fn note(&mut self, name: &HeaderName, value: &HeaderValue) {
        let bytes = value.as_bytes();
        if name == header::CONNECTION {
            // Once any `Connection` line says close, a later keep-alive does
            // not undo it.
            if self.saw_close || has_token(bytes, b"close") {
                self.saw_close = true;
                self.keep_alive = false;
            } else if has_token(bytes, b"keep-alive") {
                self.keep_alive = true;
            }
        } else if name == header::TRANSFER_ENCODING {
            // The last coding of the last line is what delimits the body.
            self.transfer_encoding = true;
            self.chunked = bytes
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name == header::CONTENT_LENGTH {
            // Repeated values (in one line or several) must agree.
            for part in bytes.split(|&b| b == b',') {
                match parse_length(part.trim_ascii()) {
                    Some(n) if self.length.is_none_or(|m| m == n) => self.length = Some(n),
                    _ => self.bad_length = true,
                }
            }
        }
    }

    /// RFC 9112 §6.3, in its order.
    fn head(
        self,
        status: StatusCode,
        version: Version,
        method: &Method,
    ) -> Result<Head, &'static str> {
        let mut keep_alive = self.keep_alive;
        let framing = if status == StatusCode::SWITCHING_PROTOCOLS {
            // The connection is no longer HTTP.
            keep_alive = false;
            Framing::Empty
        } else if status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
            || *method == Method::HEAD
        {
            Framing::Empty
        } else if self.transfer_encoding {
            if version == Version::HTTP_10 {
                return Err("it sent Transfer-Encoding in an HTTP/1.0 response");
            }
            // A length beside it must not be trusted for the next message.
            if self.length.is_some() || self.bad_length {
                keep_alive = false;
            }
            if self.chunked {
                Framing::Chunked
            } else {
                Framing::UntilClose
            }
        } else if self.bad_length {
            return Err("its Content-Length is not valid");
        } else {
            match self.length {
                Some(0) => Framing::Empty,
                Some(n) => Framing::Length(n),
                None => Framing::UntilClose,
            }
        };
        if framing == Framing::UntilClose {
            keep_alive = false;
        }
        Ok(Head {
            status,
            version,
            framing,
            keep_alive,
            reason: None,
        })
    }
}

/// Digits only, as RFC 9110 §8.6 has it (no sign, no spaces), within u64.
fn parse_length(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        d.is_ascii_digit().then(|| n * 10 + u64::from(d - b'0'))
    })
}

/// Whether a comma-separated header value lists `token` (any case).
pub(super) fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|part| part.trim_ascii().eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(
        bytes: &[u8],
        method: Method,
    ) -> (Result<Option<Head>, &'static str>, HeaderMap, BytesMut) {
        let mut buf = BytesMut::from(bytes);
        let mut headers = HeaderMap::new();
        let head = parse_response(&mut buf, &method, &mut headers);
        (head, headers, buf)
    }

    fn head_of(bytes: &[u8]) -> Head {
        parse(bytes, Method::GET).0.unwrap().unwrap()
    }

    #[test]
    fn a_request_head_is_the_method_target_and_headers_in_order() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("app"));
        headers.append("x-b", HeaderValue::from_static("2"));
        headers.append("x-a", HeaderValue::from_static("1"));
        let mut out = Vec::new();
        let close = encode_request(
            &Method::GET,
            &"/p?q=1".parse().unwrap(),
            Version::HTTP_11,
            &headers,
            &mut out,
        );
        assert_eq!(
            out,
            b"GET /p?q=1 HTTP/1.1\r\nhost: app\r\nx-b: 2\r\nx-a: 1\r\n\r\n"
        );
        assert!(!close);
    }

    #[test]
    fn a_request_that_asks_to_close_says_so() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("Close"));
        let mut out = Vec::new();
        let uri = "/".parse().unwrap();
        assert!(encode_request(
            &Method::GET,
            &uri,
            Version::HTTP_11,
            &headers,
            &mut out
        ));
        out.clear();
        assert!(encode_request(
            &Method::GET,
            &uri,
            Version::HTTP_10,
            &HeaderMap::new(),
            &mut out
        ));
        assert!(out.starts_with(b"GET / HTTP/1.0\r\n"));
    }

    #[test]
    fn a_length_delimited_response_keeps_its_connection_and_leaves_the_body() {
        let (head, headers, rest) = parse(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Up: a\r\n\r\nhello",
            Method::GET,
        );
        let head = head.unwrap().unwrap();
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(head.framing, Framing::Length(5));
        assert!(head.keep_alive);
        assert_eq!(headers["x-up"], "a");
        assert_eq!(&rest[..], b"hello");
    }

    #[test]
    fn a_partial_head_asks_for_more_and_consumes_nothing() {
        let (head, _, rest) = parse(b"HTTP/1.1 200 OK\r\nContent-Le", Method::GET);
        assert_eq!(head, Ok(None));
        assert_eq!(rest.len(), 27);
    }

    #[test]
    fn interim_responses_are_read_past() {
        let (head, headers, rest) = parse(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 204 No Content\r\nX-Final: 1\r\n\r\n",
            Method::GET,
        );
        let head = head.unwrap().unwrap();
        assert_eq!(head.status, StatusCode::NO_CONTENT);
        assert_eq!(head.framing, Framing::Empty);
        assert!(headers.get("link").is_none());
        assert_eq!(headers["x-final"], "1");
        assert!(rest.is_empty());
    }

    #[test]
    fn bodies_are_delimited_as_rfc_9112_says() {
        let chunked = head_of(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        assert_eq!(
            (chunked.framing, chunked.keep_alive),
            (Framing::Chunked, true)
        );
        let not_last = head_of(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n");
        assert_eq!(
            (not_last.framing, not_last.keep_alive),
            (Framing::UntilClose, false)
        );
        let both =
            head_of(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!((both.framing, both.keep_alive), (Framing::Chunked, false));
        let neither = head_of(b"HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!(
            (neither.framing, neither.keep_alive),
            (Framing::UntilClose, false)
        );
        let zero = head_of(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(zero.framing, Framing::Empty);
        let same_twice =
            head_of(b"HTTP/1.1 200 OK\r\nContent-Length: 4, 4\r\ncontent-length: 4\r\n\r\n");
        assert_eq!(same_twice.framing, Framing::Length(4));
        let not_modified = head_of(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n");
        assert_eq!(not_modified.framing, Framing::Empty);
        let (head, _, _) = parse(
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
            Method::HEAD,
        );
        assert_eq!(head.unwrap().unwrap().framing, Framing::Empty);
        let upgrade = head_of(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n");
        assert_eq!(
            (upgrade.framing, upgrade.keep_alive),
            (Framing::Empty, false)
        );
    }

    #[test]
    fn connection_headers_decide_reuse() {
        assert!(
            !head_of(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
                .keep_alive
        );
        assert!(!head_of(b"HTTP/1.1 200 OK\r\nConnection: close\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n").keep_alive);
        let old = head_of(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert_eq!((old.version, old.keep_alive), (Version::HTTP_10, false));
        assert!(
            head_of(b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n")
                .keep_alive
        );
    }

    #[test]
    fn broken_heads_are_refused_with_what_is_wrong() {
        for (bytes, why) in [
            (
                &b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n"[..],
                "Content-Length",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
                "Content-Length",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
                "Content-Length",
            ),
            (
                b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                "Transfer-Encoding",
            ),
            (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "not valid"),
            (b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n", "not valid"),
        ] {
            let (head, _, _) = parse(bytes, Method::GET);
            let error = head.unwrap_err();
            assert!(
                error.contains(why),
                "{error} for {:?}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn a_head_past_the_limits_is_refused() {
        let mut big = b"HTTP/1.1 200 OK\r\n".to_vec();
        while big.len() <= MAX_HEAD {
            big.extend_from_slice(b"x-filler: 0123456789012345678901234567890123456789\r\n");
        }
        let (head, _, _) = parse(&big, Method::GET);
        assert!(head.is_err());
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("x-{i}: 1\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        let (head, _, _) = parse(&many, Method::GET);
        assert!(head.unwrap_err().contains("128"));
    }
}
