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
    /// When the request arrived.
    pub at: SystemTime,
    /// The same, for durations.
    pub started: Instant,
    /// The TCP peer, as text (formatted once per connection).
    pub client: Arc<str>,
    /// The method.
    pub method: http::Method,
    /// The URI as the client sent it.
    pub uri: http::Uri,
    /// The `Host` header, for a URI without an authority.
    pub host: Option<http::HeaderValue>,
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

/// Writes an integer (without core::fmt: this is on every logged request).
fn int(out: &mut String, n: impl itoa::Integer) {
    out.push_str(itoa::Buffer::new().format(n));
}

/// Writes `n` thousandths as `int.frac`, without floating point.
fn thousandths(out: &mut String, n: u128) {
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

/// A JSON string: written as it is when nothing needs escaping (the common
/// case: hosts, paths and addresses), else through serde_json.
fn json_string(out: &mut String, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else if let Ok(quoted) = serde_json::to_string(s) {
        out.push_str(&quoted);
    }
}

impl AccessRecord {
    /// Writes the line into `out` (cleared first).
    fn write_line(&self, out: &mut String, bytes_out: u64, complete: bool) {
        out.clear();
        let bytes_in = self.progress.as_ref().map_or(0, |p| p.bytes());
        let duration_us = self.started.elapsed().as_micros();
        let upstream_us = self.outcome.upstream.map(|d| d.as_micros());
        // The host without its port, however the client sent it.
        let host = self
            .uri
            .host()
            .or_else(|| {
                self.host
                    .as_ref()
                    .and_then(|h| h.to_str().ok())
                    .map(without_port)
            })
            .unwrap_or("");
        let path = self.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let pool = self.pool.as_deref();
        let pool_name = pool.map_or("", |p| p.config.name.as_str());
        let plugin = pool.map(|p| p.balancer.plugin());
        let backend = pool
            .zip(self.outcome.backend)
            .map(|(p, id)| p.config.backends[id as usize].address.as_str());
        let put = |out: &mut String, s: &str| out.push_str(s);
        match self.format {
            LogFormat::Json => {
                put(out, "{\"time\":\"");
                timestamp(out, self.at);
                put(out, "\",\"client\":");
                json_string(out, &self.client);
                put(out, ",\"method\":");
                json_string(out, self.method.as_str());
                put(out, ",\"host\":");
                json_string(out, host);
                put(out, ",\"path\":");
                json_string(out, path);
                put(out, ",\"version\":\"");
                put(out, version(self.version));
                put(out, "\",\"status\":");
                int(out, self.status);
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
                    Some(b) => json_string(out, b),
                    None => put(out, "null"),
                }
                put(out, ",\"pool\":");
                json_string(out, pool_name);
                put(out, ",\"plugin\":\"");
                if let Some(plugin) = plugin {
                    put(out, plugin.name());
                    put(out, "@");
                    put(out, plugin.version());
                }
                put(out, "\",\"attempts\":");
                int(out, self.outcome.attempts);
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
                timestamp(out, self.at);
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
                int(out, self.status);
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
                put(out, backend.unwrap_or("-"));
                put(out, " pool=");
                put(out, dash(pool_name));
                put(out, " plugin=");
                match plugin {
                    Some(plugin) => {
                        put(out, plugin.name());
                        put(out, "@");
                        put(out, plugin.version());
                    }
                    None => put(out, "-"),
                }
                put(out, " attempts=");
                int(out, self.outcome.attempts);
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
fn text_field(out: &mut String, s: &str) {
    for c in s.chars() {
        if c == '"' || c == '\\' || c == ' ' || c.is_control() {
            out.push_str("\\x");
            out.push(char::from(
                b"0123456789abcdef"[(c as u32 >> 4 & 15) as usize],
            ));
            out.push(char::from(b"0123456789abcdef"[(c as u32 & 15) as usize]));
        } else {
            out.push(c);
        }
    }
}

fn dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

/// RFC 3339 UTC with milliseconds; the part up to the second is formatted
/// once per second per thread.
fn timestamp(out: &mut String, at: SystemTime) {
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
        out.push_str(&cached.1);
    });
    fraction(out, since.subsec_millis());
    out.push('Z');
}

/// `.ddd` for `n` thousandths (`n` < 1000).
fn fraction(out: &mut String, ms: u32) {
    out.push('.');
    out.push(char::from(b'0' + (ms / 100) as u8));
    out.push(char::from(b'0' + (ms / 10 % 10) as u8));
    out.push(char::from(b'0' + (ms % 10) as u8));
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
        use std::cell::RefCell;
        thread_local! {
            static LINE: RefCell<String> = const { RefCell::new(String::new()) };
        }
        if let Some(record) = self.record.take() {
            LINE.with(|line| {
                let mut line = line.borrow_mut();
                record.write_line(&mut line, self.bytes_out, complete);
                tracing::info!(target: "veer::access", line = line.as_str());
            });
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
        let mut out = String::new();
        json_string(&mut out, "example.com/a?b=1");
        json_string(&mut out, "say \"hi\"\\\n");
        assert_eq!(out, r#""example.com/a?b=1""say \"hi\"\\\n""#);
    }

    #[test]
    fn text_fields_cannot_forge_a_field_and_hosts_lose_their_port() {
        let mut out = String::new();
        text_field(&mut out, "a\" 200 backend=x\n");
        assert_eq!(out, "a\\x22\\x20200\\x20backend=x\\x0a");
        assert_eq!(without_port("example.com:8080"), "example.com");
        assert_eq!(without_port("[::1]:8080"), "[::1]");
        assert_eq!(without_port("example.com"), "example.com");
    }

    #[test]
    fn thousandths_are_written_without_floating_point() {
        let mut out = String::new();
        thousandths(&mut out, 1_234_567);
        out.push(' ');
        thousandths(&mut out, 7);
        assert_eq!(out, "1234.567 0.007");
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_milliseconds() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_327_226_348);
        let mut out = String::new();
        timestamp(&mut out, at);
        assert_eq!(out, "2026-11-22T06:00:26.348Z");
    }
}
