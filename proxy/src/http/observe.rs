//! What Veer writes about a request: the access log line (when the response
//! body has ended, so its size and full duration are known) and the
//! decision trace (which plugin ordered the candidates, and why each
//! attempt ended), as a response header and a log line.

use std::net::SocketAddr;
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

/// One access log line in the making.
pub struct AccessRecord {
    /// How to write it.
    pub format: LogFormat,
    /// When the request arrived.
    pub at: SystemTime,
    /// The same, for durations.
    pub started: Instant,
    /// The TCP peer.
    pub client: SocketAddr,
    /// Method, host and path (with query) as the client sent them.
    pub method: http::Method,
    /// The one authority.
    pub host: String,
    /// Path and query.
    pub path: String,
    /// HTTP version of the client.
    pub version: http::Version,
    /// The pool, when a route matched.
    pub pool: String,
    /// `name@version` of the plugin.
    pub plugin: String,
    /// The status the client got.
    pub status: u16,
    /// The request body's progress (its size), when it had one.
    pub progress: Option<Arc<Progress>>,
    /// The backend that answered (or the last one tried).
    pub backend: Option<String>,
    /// What the attempt loop reported.
    pub outcome: Outcome,
}

impl AccessRecord {
    fn line(&self, bytes_out: u64, complete: bool) -> String {
        let bytes_in = self.progress.as_ref().map_or(0, |p| p.bytes());
        let duration = self.started.elapsed();
        let time = time::OffsetDateTime::from(self.at)
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        match self.format {
            LogFormat::Json => serde_json::json!({
                "time": time,
                "client": self.client.to_string(),
                "method": self.method.as_str(),
                "host": self.host,
                "path": self.path,
                "version": format!("{:?}", self.version),
                "status": self.status,
                "bytes_in": bytes_in,
                "bytes_out": bytes_out,
                "duration_ms": ms(duration),
                "upstream_ms": self.outcome.upstream.map(ms),
                "backend": self.backend,
                "pool": self.pool,
                "plugin": self.plugin,
                "attempts": self.outcome.attempts,
                "complete": complete,
            })
            .to_string(),
            LogFormat::Text => format!(
                "{time} {} \"{} {}{} {:?}\" {} {bytes_in} {bytes_out} {:.3}ms upstream={} backend={} pool={} plugin={} attempts={}{}",
                self.client,
                self.method,
                self.host,
                self.path,
                self.version,
                self.status,
                ms(duration),
                self.outcome
                    .upstream
                    .map_or_else(|| "-".to_string(), |d| format!("{:.3}ms", ms(d))),
                self.backend.as_deref().unwrap_or("-"),
                if self.pool.is_empty() {
                    "-"
                } else {
                    &self.pool
                },
                if self.plugin.is_empty() {
                    "-"
                } else {
                    &self.plugin
                },
                self.outcome.attempts,
                if complete { "" } else { " incomplete" },
            ),
        }
    }
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
    record: Option<Box<AccessRecord>>,
    bytes_out: u64,
}

impl Logged {
    /// Wraps `inner`.
    pub fn new(inner: ProxyBody, record: AccessRecord) -> Logged {
        Logged {
            inner,
            record: Some(Box::new(record)),
            bytes_out: 0,
        }
    }

    fn write(&mut self, complete: bool) {
        if let Some(record) = self.record.take() {
            tracing::info!(target: "veer::access", "{}", record.line(self.bytes_out, complete));
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
