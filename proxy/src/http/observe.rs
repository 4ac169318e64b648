//! What Veer writes about a request: the access log line (when the response
//! body has ended, so its size and full duration are known) and the
//! decision trace (which plugin ordered the candidates, and why each
//! attempt ended), as a response header and a log line.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::body::{Progress, ProxyBody, ResponseError};
use crate::config::{AccessLog, LogFormat};

/// What the attempt loop reports about a request.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The backend (id) that answered, or the last one tried.
    pub backend: Option<u32>,
    /// Attempts made.
    pub attempts: u32,
    /// The answering backend's time to its response head.
    pub upstream: Option<Duration>,
    /// When tracing: one entry per candidate looked at, in order.
    pub steps: Option<Vec<String>>,
}

impl Outcome {
    /// Notes a step of the decision (only when tracing).
    pub fn step(&mut self, step: impl FnOnce() -> String) {
        if let Some(steps) = &mut self.steps {
            steps.push(step());
        }
    }
}

/// One access log line in the making. It holds what the request already
/// had (shared, not copied): the line is formatted once, when it is written.
pub struct AccessRecord {
    /// How to write it.
    pub format: LogFormat,
    /// When the request arrived (its wall-clock time is derived when the
    /// line is written: one clock read fewer per request).
    pub started: Instant,
    /// The TCP peer, as text (formatted once per connection).
    pub client: Arc<str>,
    /// The method.
    pub method: http::Method,
    /// The path and query as the client sent them.
    pub path: Option<http::uri::PathAndQuery>,
    /// The host the client named: the URI's authority when it had one
    /// (HTTP/2, absolute form), else the `Host` header.
    pub host: Option<Host>,
    /// HTTP version of the client.
    pub version: http::Version,
    /// The status the client got.
    pub status: u16,
    /// The request body's progress (its size), when it had one.
    pub progress: Option<Arc<Progress>>,
    /// The pool, when a route matched.
    pub pool: Option<Arc<crate::state::Pool>>,
    /// What the attempt loop reported.
    pub outcome: Outcome,
}

/// What an access log line says about a pool, its plugin and backends,
/// escaped once when the pool is built (config and plugin strings are not
/// trusted in a log line either: a plugin names its own version).
#[derive(Debug, Default)]
pub struct PoolLog {
    /// By backend id: its address as a JSON string and as a text field.
    pub backends: Vec<Quoted>,
    /// `,"pool":"…","plugin":"name@version"`.
    pub json: Box<str>,
    /// ` pool=… plugin=name@version`.
    pub text: Box<str>,
    /// The same two naming the last good version, for after a rollback.
    pub rolled_back: Option<(Box<str>, Box<str>)>,
}

/// One string, escaped for both formats.
#[derive(Debug)]
pub struct Quoted {
    /// With its quotes.
    pub json: Box<str>,
    /// As `text_field` writes it.
    pub text: Box<str>,
}

impl Quoted {
    fn new(s: &str) -> Quoted {
        let mut json = Vec::new();
        json_string(&mut json, s);
        let mut text = Vec::new();
        text_field(&mut text, s);
        let utf8 = |bytes: Vec<u8>| String::from_utf8_lossy(&bytes).into();
        Quoted {
            json: utf8(json),
            text: utf8(text),
        }
    }
}

impl PoolLog {
    /// The pool's fixed fields, for pool `name` served by `plugin` (or,
    /// after a rollback, by `last_good`).
    pub fn new<'a>(
        name: &str,
        addresses: impl IntoIterator<Item = &'a str>,
        plugin: &crate::plugin::Plugin,
        last_good: Option<&crate::plugin::Plugin>,
    ) -> PoolLog {
        let name = Quoted::new(name);
        let fields = |plugin: &crate::plugin::Plugin| {
            let plugin = Quoted::new(&format!("{}@{}", plugin.name(), plugin.version()));
            (
                format!(",\"pool\":{},\"plugin\":{}", name.json, plugin.json).into(),
                format!(" pool={} plugin={}", dash(&name.text), plugin.text).into(),
            )
        };
        let (json, text) = fields(plugin);
        PoolLog {
            backends: addresses.into_iter().map(Quoted::new).collect(),
            json,
            text,
            rolled_back: last_good.map(fields),
        }
    }

    /// The JSON and text fields naming the version that serves now.
    fn serving(&self, pool: &crate::state::Pool) -> (&str, &str) {
        match &self.rolled_back {
            Some((json, text)) if pool.balancer.rolled_back() => (json, text),
            _ => (&self.json, &self.text),
        }
    }
}

/// The same fields for a request no route took.
const NO_POOL_JSON: &str = ",\"pool\":\"\",\"plugin\":\"\"";
const NO_POOL_TEXT: &str = " pool=- plugin=-";

/// Where the host of a logged request comes from.
pub enum Host {
    /// The request URI's authority.
    Authority(http::uri::Authority),
    /// The `Host` header.
    Header(http::HeaderValue),
}

impl Host {
    /// The host `request` names, kept for its log line.
    pub fn of<B>(request: &http::Request<B>) -> Option<Host> {
        match request.uri().authority() {
            Some(authority) => Some(Host::Authority(authority.clone())),
            None => request
                .headers()
                .get(http::header::HOST)
                .map(|value| Host::Header(value.clone())),
        }
    }
}

/// Which bytes `json_plain` and `text_plain` let through as they are.
static PLAIN: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        // JSON: anything but controls, quote and backslash.
        if b >= 0x20 && b != b'"' as usize && b != b'\\' as usize {
            table[b] |= JSON;
        }
        // Text: visible ASCII, and UTF-8 bytes other than 0xc2 (the lead
        // byte of U+0080..U+00BF, where the C1 controls are).
        if b > 0x20 && b != b'"' as usize && b != b'\\' as usize && b != 0x7f && b != 0xc2 {
            table[b] |= TEXT;
        }
        b += 1;
    }
    table
};
const JSON: u8 = 1;
const TEXT: u8 = 2;

/// Writes an integer (without core::fmt: this is on every logged request).
fn int(out: &mut Vec<u8>, n: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Writes a status code (always three digits: hyper refuses others).
fn status(out: &mut Vec<u8>, code: u16) {
    if (100..1000).contains(&code) {
        out.extend_from_slice(&[
            b'0' + (code / 100) as u8,
            b'0' + (code / 10 % 10) as u8,
            b'0' + (code % 10) as u8,
        ]);
    } else {
        int(out, code);
    }
}

/// Writes a small count (attempts: mostly one digit).
fn count(out: &mut Vec<u8>, n: u32) {
    if n < 10 {
        out.push(b'0' + n as u8);
    } else {
        int(out, n);
    }
}

/// Writes `n` thousandths as `int.frac`, without floating point (and in
/// 64 bits: a 128-bit division costs ten times as much).
fn thousandths(out: &mut Vec<u8>, n: u64) {
    int(out, n / 1000);
    fraction(out, (n % 1000) as u32);
}

fn version(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_11 => "HTTP/1.1",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/?",
    }
}

/// Whether `s` goes into a JSON string as it is: no control character,
/// quote or backslash.
fn json_plain(s: &str) -> bool {
    s.bytes().all(|b| PLAIN[b as usize] & JSON != 0)
}

/// A JSON string: written as it is when nothing needs escaping (the common
/// case: hosts, paths and addresses), else through serde_json.
fn json_string(out: &mut Vec<u8>, s: &str) {
    if json_plain(s) {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else if let Ok(quoted) = serde_json::to_string(s) {
        out.extend_from_slice(quoted.as_bytes());
    }
}

impl AccessRecord {
    /// Appends the line (without its newline) to `out`.
    fn write_line(&self, out: &mut Vec<u8>, bytes_out: u64, complete: bool) {
        let bytes_in = self.progress.as_ref().map_or(0, |p| p.bytes());
        let duration = self.started.elapsed();
        let at = SystemTime::now()
            .checked_sub(duration)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let duration_us = micros(duration);
        let upstream_us = self.outcome.upstream.map(micros);
        // The host without its port, however the client sent it.
        let host = match &self.host {
            Some(Host::Authority(authority)) => authority.host(),
            Some(Host::Header(value)) => value.to_str().map_or("", without_port),
            None => "",
        };
        let path = self.path.as_ref().map_or("/", |pq| pq.as_str());
        // One capacity check for the whole line, not one per field.
        out.reserve(320 + host.len() + path.len());
        let log = self.pool.as_deref().map(|p| &p.log);
        let serving = self.pool.as_deref().map(|p| p.log.serving(p));
        let backend = log
            .zip(self.outcome.backend)
            .and_then(|(log, id)| log.backends.get(id as usize));
        let put = |out: &mut Vec<u8>, s: &str| out.extend_from_slice(s.as_bytes());
        match self.format {
            LogFormat::Json => {
                put(out, "{\"time\":\"");
                timestamp(out, at);
                // The client address is Veer's own text and a method is a
                // token (RFC 9110 §5.6.2): neither needs escaping.
                put(out, "\",\"client\":\"");
                put(out, &self.client);
                put(out, "\",\"method\":\"");
                put(out, self.method.as_str());
                put(out, "\",\"host\":");
                json_string(out, host);
                put(out, ",\"path\":");
                json_string(out, path);
                put(out, ",\"version\":\"");
                put(out, version(self.version));
                put(out, "\",\"status\":");
                status(out, self.status);
                put(out, ",\"bytes_in\":");
                int(out, bytes_in);
                put(out, ",\"bytes_out\":");
                int(out, bytes_out);
                put(out, ",\"duration_ms\":");
                thousandths(out, duration_us);
                put(out, ",\"upstream_ms\":");
                match upstream_us {
                    Some(us) => thousandths(out, us),
                    None => put(out, "null"),
                }
                put(out, ",\"backend\":");
                match backend {
                    Some(b) => put(out, &b.json),
                    None => put(out, "null"),
                }
                put(out, serving.map_or(NO_POOL_JSON, |(json, _)| json));
                put(out, ",\"attempts\":");
                count(out, self.outcome.attempts);
                put(
                    out,
                    if complete {
                        ",\"complete\":true}"
                    } else {
                        ",\"complete\":false}"
                    },
                );
            }
            LogFormat::Text => {
                timestamp(out, at);
                put(out, " ");
                put(out, &self.client);
                put(out, " \"");
                put(out, self.method.as_str());
                put(out, " ");
                text_field(out, host);
                text_field(out, path);
                put(out, " ");
                put(out, version(self.version));
                put(out, "\" ");
                status(out, self.status);
                put(out, " ");
                int(out, bytes_in);
                put(out, " ");
                int(out, bytes_out);
                put(out, " ");
                thousandths(out, duration_us);
                put(out, "ms upstream=");
                match upstream_us {
                    Some(us) => {
                        thousandths(out, us);
                        put(out, "ms");
                    }
                    None => put(out, "-"),
                }
                put(out, " backend=");
                put(out, backend.map_or("-", |b| &b.text));
                put(out, serving.map_or(NO_POOL_TEXT, |(_, text)| text));
                put(out, " attempts=");
                count(out, self.outcome.attempts);
                if !complete {
                    put(out, " incomplete");
                }
            }
        }
    }
}

/// `host` of `host:port` (an IPv6 literal keeps its brackets).
fn without_port(authority: &str) -> &str {
    match authority.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

/// A client-sent string in a text line: quotes, backslashes, spaces and
/// control characters as `\xNN`, so no client can forge a field.
fn text_field(out: &mut Vec<u8>, s: &str) {
    // The common case: visible ASCII, and UTF-8 outside U+0080..U+00BF,
    // goes in as it is.
    if s.bytes().all(|b| PLAIN[b as usize] & TEXT != 0) {
        out.extend_from_slice(s.as_bytes());
        return;
    }
    let mut utf8 = [0; 4];
    for c in s.chars() {
        if c == '"' || c == '\\' || c == ' ' || c.is_control() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            let n = c as usize;
            out.extend_from_slice(&[b'\\', b'x', HEX[n >> 4 & 15], HEX[n & 15]]);
        } else {
            out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
        }
    }
}

fn dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

/// RFC 3339 UTC with milliseconds; the part up to the second is formatted
/// once per second per thread.
fn timestamp(out: &mut Vec<u8>, at: SystemTime) {
    use std::cell::RefCell;
    thread_local! {
        static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let since = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let second = since.as_secs();
    SECOND.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != second {
            let text = time::OffsetDateTime::from_unix_timestamp(second as i64)
                .ok()
                .and_then(|t| {
                    t.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .unwrap_or_default();
            // `…:SSZ` without the `Z`: the milliseconds go in between.
            *cached = (second, text.trim_end_matches('Z').to_string());
        }
        out.extend_from_slice(cached.1.as_bytes());
    });
    fraction(out, since.subsec_millis());
    out.push(b'Z');
}

/// `.ddd` for `n` thousandths (`n` < 1000).
fn fraction(out: &mut Vec<u8>, ms: u32) {
    out.extend_from_slice(&[
        b'.',
        b'0' + (ms / 100) as u8,
        b'0' + (ms / 10 % 10) as u8,
        b'0' + (ms % 10) as u8,
    ]);
}

/// What the request path learns about a request for the access log and the
/// decision trace.
#[derive(Default)]
pub struct Seen {
    /// The route it matched.
    pub route: Option<usize>,
    /// Its pool.
    pub pool: Option<Arc<crate::state::Pool>>,
    /// The attempt loop's report.
    pub outcome: Outcome,
    /// The request body's progress, when it had one.
    pub progress: Option<Arc<Progress>>,
}

/// Whether this request is in the access log's sample.
pub fn sampled(log: &AccessLog) -> bool {
    log.sample >= 1.0 || super::policy::random_unit() < log.sample
}

/// A response body that writes its access log line when it ends (or is
/// dropped early: the line says `incomplete`).
pub struct Logged {
    inner: ProxyBody,
    record: Option<AccessRecord>,
    bytes_out: u64,
}

impl Logged {
    /// Wraps `inner`.
    pub fn new(inner: ProxyBody, record: AccessRecord) -> Logged {
        Logged {
            inner,
            record: Some(record),
            bytes_out: 0,
        }
    }

    fn write(&mut self, complete: bool) {
        if let Some(record) = self.record.take() {
            let bytes_out = self.bytes_out;
            crate::logging::access_line(|out| record.write_line(out, bytes_out, complete));
        }
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let complete = self.inner.is_end_stream();
        self.write(complete);
    }
}

impl Body for Logged {
    type Data = Bytes;
    type Error = ResponseError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ResponseError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes_out += data.len() as u64;
                }
            }
            Poll::Ready(None) => self.write(true),
            Poll::Ready(Some(Err(_))) => self.write(false),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The decision trace as one header value: the plugin, the order it gave,
/// then each step.
pub fn decision(plugin: &str, fell_back: bool, order: &[String], steps: &[String]) -> String {
    let mut text = format!(
        "plugin={plugin}{}; order={}",
        if fell_back {
            " (fallback: host round robin)"
        } else {
            ""
        },
        order.join(",")
    );
    for (i, step) in steps.iter().enumerate() {
        text.push_str(&format!("; {}. {step}", i + 1));
    }
    // A header value takes visible ASCII only.
    text.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_escaped_only_when_they_need_it() {
        let mut out = Vec::new();
        json_string(&mut out, "example.com/a?b=1");
        json_string(&mut out, "say \"hi\"\\\n");
        assert_eq!(
            String::from_utf8_lossy(&out),
            r#""example.com/a?b=1""say \"hi\"\\\n""#
        );
    }

    #[test]
    fn text_fields_cannot_forge_a_field_and_hosts_lose_their_port() {
        let mut out = Vec::new();
        text_field(&mut out, "a\" 200 backend=x\n");
        assert_eq!(
            String::from_utf8_lossy(&out),
            "a\\x22\\x20200\\x20backend=x\\x0a"
        );
        out.clear();
        text_field(&mut out, "/caf\u{e9}/\u{85}\u{7f}");
        assert_eq!(String::from_utf8_lossy(&out), "/caf\u{e9}/\\x85\\x7f");
        out.clear();
        text_field(&mut out, "/caf\u{e9}/plain");
        assert_eq!(String::from_utf8_lossy(&out), "/caf\u{e9}/plain");
        assert_eq!(without_port("example.com:8080"), "example.com");
        assert_eq!(without_port("[::1]:8080"), "[::1]");
        assert_eq!(without_port("example.com"), "example.com");
    }

    #[test]
    fn a_plugin_cannot_forge_fields_through_its_version() {
        let quoted = Quoted::new("1.0 status=200\n\"x\"");
        assert_eq!(&*quoted.text, "1.0\\x20status=200\\x0a\\x22x\\x22");
        assert_eq!(&*quoted.json, r#""1.0 status=200\n\"x\"""#);
    }

    #[test]
    fn statuses_and_counts_are_written_in_digits() {
        let mut out = Vec::new();
        status(&mut out, 204);
        status(&mut out, 42);
        out.push(b' ');
        count(&mut out, 3);
        count(&mut out, 12);
        assert_eq!(String::from_utf8_lossy(&out), "20442 312");
    }

    #[test]
    fn thousandths_are_written_without_floating_point() {
        let mut out = Vec::new();
        thousandths(&mut out, 1_234_567);
        out.push(b' ');
        thousandths(&mut out, 7);
        assert_eq!(String::from_utf8_lossy(&out), "1234.567 0.007");
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_milliseconds() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_327_226_348);
        let mut out = Vec::new();
        timestamp(&mut out, at);
        assert_eq!(String::from_utf8_lossy(&out), "2026-11-22T06:00:26.348Z");
    }
}
