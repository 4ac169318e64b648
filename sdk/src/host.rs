//! What a strategy may ask the host, and the request it is asked about.
//!
//! In a plugin (`wasm32` targets) every function here is a host call. In a
//! native `cargo test` there is no host: they answer from the
//! [`FakeHost`](crate::testing::FakeHost) the test set up, and panic with a
//! pointer to it when there is none.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::__private::bindings::veer::balancer::host as wit;
use crate::__private::bindings::veer::balancer::types as wit_types;
use crate::__private::bindings::veer::http::types as wit_http;
use crate::testing::FakeRequest;
use crate::{BackendId, BackendStats, LogLevel, Method, TlsInfo};

/// The request a backend is being chosen for, lent for one
/// [`Strategy::select`](crate::Strategy::select). Every lookup asks the
/// host, so a strategy pays only for what it reads.
pub struct Request<'a> {
    inner: Inner<'a>,
}

enum Inner<'a> {
    Host(&'a wit_http::Request),
    Fake(&'a FakeRequest),
}

impl<'a> Request<'a> {
    /// The request the host lent.
    #[doc(hidden)]
    pub fn from_host(request: &'a wit_http::Request) -> Request<'a> {
        Request {
            inner: Inner::Host(request),
        }
    }

    /// A made-up request (see [`FakeRequest`]).
    pub fn fake(request: &'a FakeRequest) -> Request<'a> {
        Request {
            inner: Inner::Fake(request),
        }
    }

    /// The method.
    pub fn method(&self) -> Method {
        match &self.inner {
            Inner::Host(r) => method_from(r.method()),
            Inner::Fake(f) => f.method.clone(),
        }
    }

    /// The host the client asked for, without a port, lowercased ("" when
    /// none).
    pub fn authority(&self) -> String {
        match &self.inner {
            Inner::Host(r) => r.authority(),
            Inner::Fake(f) => f.authority.clone(),
        }
    }

    /// The path, normalised, without the query.
    pub fn path(&self) -> String {
        match &self.inner {
            Inner::Host(r) => r.path(),
            Inner::Fake(f) => f.path.clone(),
        }
    }

    /// The query without `?`, as sent ("" when none).
    pub fn query(&self) -> String {
        match &self.inner {
            Inner::Host(r) => r.query(),
            Inner::Fake(f) => f.query.clone(),
        }
    }

    /// The client's address (the proxy's downstream peer).
    pub fn client(&self) -> IpAddr {
        match &self.inner {
            Inner::Host(r) => ip_from(r.client()),
            Inner::Fake(f) => f.client,
        }
    }

    /// The first value of header `name` (case-insensitive), if any.
    pub fn header(&self, name: &str) -> Option<String> {
        match &self.inner {
            Inner::Host(r) => r.header(name),
            Inner::Fake(f) => f.headers_named(name).next().map(str::to_owned),
        }
    }

    /// Every value of header `name`, in order.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        match &self.inner {
            Inner::Host(r) => r.header_all(name),
            Inner::Fake(f) => f.headers_named(name).map(str::to_owned).collect(),
        }
    }

    /// The value of cookie `name`, if any.
    pub fn cookie(&self, name: &str) -> Option<String> {
        match &self.inner {
            Inner::Host(r) => r.cookie(name),
            Inner::Fake(f) => f.cookie_named(name),
        }
    }

    /// The first value of query parameter `name`, still percent-encoded; ""
    /// for a parameter given without `=`.
    pub fn query_param(&self, name: &str) -> Option<String> {
        match &self.inner {
            Inner::Host(r) => r.query_param(name),
            Inner::Fake(f) => f.query_param(name),
        }
    }

    /// The client's TLS connection; `None` for plain HTTP.
    pub fn tls(&self) -> Option<TlsInfo> {
        match &self.inner {
            Inner::Host(r) => r.tls().map(|t| TlsInfo {
                server_name: t.server_name,
                alpn: t.alpn,
                client_subject: t.client_subject,
            }),
            Inner::Fake(f) => f.tls.clone(),
        }
    }
}

impl std::fmt::Debug for Request<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.inner {
            Inner::Host(_) => f.write_str("Request(lent by the host)"),
            Inner::Fake(fake) => write!(f, "Request({fake:?})"),
        }
    }
}

pub(crate) fn method_from(method: wit_http::Method) -> Method {
    use wit_http::Method as M;
    match method {
        M::Get => Method::Get,
        M::Head => Method::Head,
        M::Post => Method::Post,
        M::Put => Method::Put,
        M::Delete => Method::Delete,
        M::Connect => Method::Connect,
        M::Options => Method::Options,
        M::Trace => Method::Trace,
        M::Patch => Method::Patch,
        M::Other(other) => Method::Other(other),
    }
}

fn ip_from(ip: wit_http::IpAddress) -> IpAddr {
    match ip {
        wit_http::IpAddress::Ipv4((a, b, c, d)) => IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
        wit_http::IpAddress::Ipv6((a, b, c, d, e, f, g, h)) => {
            IpAddr::V6(Ipv6Addr::new(a, b, c, d, e, f, g, h))
        }
    }
}

fn stats_from(s: wit_types::BackendStats) -> BackendStats {
    BackendStats {
        in_flight: s.in_flight,
        latency_ewma_us: s.latency_ewma_us,
        latency_peak_ewma_us: s.latency_peak_ewma_us,
        healthy: s.healthy,
    }
}

/// Whether host calls go to the real host: in a plugin, always.
#[cfg(target_arch = "wasm32")]
macro_rules! on_host {
    ($real:expr, $fake:expr) => {
        $real
    };
}

/// Natively, to the test's `FakeHost`.
#[cfg(not(target_arch = "wasm32"))]
macro_rules! on_host {
    ($real:expr, $fake:expr) => {{
        let _ = || $real;
        crate::testing::with_fake($fake)
    }};
}

/// Live statistics of backend `id` of this pool (in-flight requests,
/// latency, health), shared by all workers; `None` for an unknown id.
pub fn backend_stats(id: BackendId) -> Option<BackendStats> {
    on_host!(wit::live_stats(id).map(stats_from), |f| f
        .stats
        .get(id as usize)
        .copied())
}

/// Live statistics of every backend of this pool, indexed by id (one host
/// call).
pub fn all_stats() -> Vec<BackendStats> {
    on_host!(
        wit::all_stats()
            .into_iter()
            .map(stats_from)
            .collect::<Vec<_>>(),
        |f| f.stats.clone()
    )
}

/// In-flight requests of every backend of this pool, indexed by id: the
/// cheapest way to compare load across a large pool.
pub fn all_in_flight() -> Vec<u32> {
    on_host!(wit::all_in_flight(), |f| f
        .stats
        .iter()
        .map(|s| s.in_flight)
        .collect())
}

/// Adds a header to the response the client gets for the request being
/// selected for (e.g. `set-cookie`). Only inside
/// [`Strategy::select`](crate::Strategy::select); the error says why a
/// header was refused.
pub fn set_response_header(name: &str, value: &str) -> Result<(), String> {
    on_host!(wit::set_response_header(name, value), |f| {
        f.response_headers.push((name.to_owned(), value.to_owned()));
        Ok(())
    })
}

/// A random number from the host (seedable there for reproducible tests).
pub fn random() -> u64 {
    on_host!(wit::random(), |f| f.next_random())
}

/// Writes `message` to the proxy's log, tagged with this plugin's name. The
/// host cuts long lines and rate-limits plugin logs: do not log per request.
pub fn log(level: LogLevel, message: &str) {
    let wit_level = match level {
        LogLevel::Debug => wit_types::LogLevel::Debug,
        LogLevel::Info => wit_types::LogLevel::Info,
        LogLevel::Warn => wit_types::LogLevel::Warn,
        LogLevel::Error => wit_types::LogLevel::Error,
    };
    on_host!(wit::log(wit_level, message), |f| f
        .logs
        .push((level, message.to_owned())))
}
