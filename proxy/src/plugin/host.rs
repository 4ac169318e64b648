//! The `host` imports plugins call (`header`, `cookie`, `live-stats`,
//! `set-response-header`, …), implemented once and wired to every world.

use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, Uri};

use super::bindings::{v0_1, v0_2, v0_3};
use crate::stats::BackendStats;

/// Headers a plugin may not set on a response: framing and hop-by-hop.
const FORBIDDEN_RESPONSE_HEADERS: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "host",
];
/// Most response headers one `select` may add.
pub const MAX_RESPONSE_HEADERS: usize = 8;
/// Longest response header name a plugin may set, bytes.
pub const MAX_HEADER_NAME_BYTES: usize = 256;
/// Longest response header value a plugin may set, bytes.
pub const MAX_HEADER_VALUE_BYTES: usize = 4096;
/// Most host calls (`header`, `live-stats`, `log`, …) in one plugin call;
/// past it every host call answers nothing and the plugin call counts as
/// failed.
pub const MAX_HOST_CALLS: u32 = 1000;
/// Most bytes one host call may carry from the plugin (a header name, a log
/// message, …): wasmtime's "hostcall fuel", 128 MiB by default. A call
/// carrying more traps before the host copies any of it. The caps above
/// still apply to what gets through.
pub const MAX_HOST_CALL_BYTES: usize = 2 << 20;

/// The request a `select` call is about, lent to the instance for the call so
/// the `host` imports can answer from it without copying it.
#[derive(Default)]
pub struct RequestScope {
    /// The request's headers (moved in for the call, moved back after).
    pub headers: HeaderMap,
    /// The request's URI, for query parameters.
    pub uri: Uri,
    /// Headers the plugin asked to add to the response.
    pub response_headers: Vec<(HeaderName, HeaderValue)>,
    /// Set when the order came from the host's round robin or the last good
    /// version, not the plugin (it failed, or is rested).
    pub fell_back: bool,
    /// Set when the plugin failed and the pool's policy is `reject`: the
    /// order is empty and the request gets a 503.
    pub rejected: bool,
    /// Set, with the plugin's reason, when the plugin refused the request
    /// (0.3.0 `refuse`): the order is empty and the request gets a 503.
    pub refused: Option<String>,
    /// The instance whose answer is used, when its plugin asked to hear how
    /// each attempt went (0.3.0 `on-outcome`).
    pub answered_by: Option<u64>,
}

/// The request lent to a `veer:balancer@0.3.0` plugin for a `select`
/// call: a handle with no data of its own (its methods answer from the
/// instance's [`Lent`] and [`RequestScope`]).
pub struct LentRequest;

/// The parts of the request a 0.3.0 request handle answers that are not in
/// the [`RequestScope`], copied in per call into buffers kept between calls
/// (no allocation once warm).
#[derive(Default)]
pub struct Lent {
    method: http::Method,
    authority: String,
    path: String,
    client: Option<std::net::IpAddr>,
    tls: Option<LentTls>,
}

/// [`super::TlsSeen`], owned.
#[derive(Default)]
struct LentTls {
    server_name: Option<String>,
    alpn: Option<&'static str>,
    client_subject: Option<String>,
}

impl Lent {
    /// Takes in what `call` says of the request.
    pub(super) fn fill(&mut self, call: &super::Call<'_>) {
        fn set(buffer: &mut String, text: &str) {
            buffer.clear();
            buffer.push_str(text);
        }
        fn set_option(buffer: &mut Option<String>, text: Option<&str>) {
            match text {
                Some(text) => set(buffer.get_or_insert_with(String::new), text),
                None => *buffer = None,
            }
        }
        self.method.clone_from(call.method);
        set(&mut self.authority, call.host);
        set(&mut self.path, call.path);
        self.client = Some(call.client);
        match &call.tls {
            Some(seen) => {
                let tls = self.tls.get_or_insert_with(LentTls::default);
                set_option(&mut tls.server_name, seen.server_name);
                tls.alpn = seen.alpn;
                set_option(&mut tls.client_subject, seen.client_subject);
            }
            None => self.tls = None,
        }
    }
}

/// The data of each instance's `Store`: what the `host` imports read.
pub struct HostState {
    /// The request's parts a 0.3.0 request handle reads.
    pub(super) lent: Lent,
    /// The lines being written to stdout and stderr (wasip2 plugins).
    pub(super) streams: super::wasi::Streams,
    pub(super) limits: super::limits::Limiter,
    pub(super) request: Option<RequestScope>,
    pub(super) stats: Arc<[Arc<BackendStats>]>,
    pub(super) rng: u64,
    pub(super) plugin: Arc<str>,
    /// The plugin's own log lines per second.
    pub(super) log_budget: Arc<super::log::LogBudget>,
    /// Host calls made in the current plugin call.
    pub(super) calls: u32,
    /// Set once the current call reached its deadline (see `on_deadline`).
    pub(super) overtime: Option<super::Overtime>,
    /// Epoch ticks of one window past the deadline.
    pub(super) window_ticks: u64,
}

/// What the `host` imports do, shared by every world version.
impl HostState {
    /// Counts a host call; `true` once the plugin call has made too many.
    fn over_cap(&mut self) -> bool {
        self.calls = self.calls.saturating_add(1);
        self.calls > MAX_HOST_CALLS
    }

    /// Whether the current plugin call went over [`MAX_HOST_CALLS`].
    pub(super) fn stormed(&self) -> bool {
        self.calls > MAX_HOST_CALLS
    }

    fn header(&mut self, name: &str) -> Option<String> {
        if self.over_cap() {
            return None;
        }
        let value = self.request.as_ref()?.headers.get(name)?;
        value.to_str().ok().map(str::to_owned)
    }

    fn cookie(&mut self, name: &str) -> Option<String> {
        if self.over_cap() {
            return None;
        }
        let headers = &self.request.as_ref()?.headers;
        headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|pair| {
                let (key, value) = pair.trim().split_once('=')?;
                (key == name).then(|| value.to_owned())
            })
    }

    fn query_param(&mut self, name: &str) -> Option<String> {
        if self.over_cap() {
            return None;
        }
        let query = self.request.as_ref()?.uri.query()?;
        query.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (key == name).then(|| value.to_owned())
        })
    }

    fn random(&mut self) -> u64 {
        self.over_cap();
        self.next_random()
    }

    /// The next number of the instance's generator.
    pub(super) fn next_random(&mut self) -> u64 {
        // splitmix64: tiny, fast, good enough to spread load; not for secrets.
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub(super) fn log(&mut self, level: tracing::Level, message: &str) {
        if self.over_cap() {
            return;
        }
        let Some(dropped) = self.log_budget.allow() else {
            return;
        };
        let plugin = &*self.plugin;
        let message = super::log::cut(message);
        let dropped = (dropped > 0).then_some(dropped);
        match level {
            tracing::Level::DEBUG => tracing::debug!(plugin, dropped, "{message}"),
            tracing::Level::INFO => tracing::info!(plugin, dropped, "{message}"),
            tracing::Level::WARN => tracing::warn!(plugin, dropped, "{message}"),
            _ => tracing::error!(plugin, dropped, "{message}"),
        }
    }

    fn live_stats(&mut self, id: u32) -> Option<&BackendStats> {
        if self.over_cap() {
            return None;
        }
        self.stats.get(id as usize).map(|s| &**s)
    }

    /// Every backend's stats, for `all-*` calls (none once over the cap).
    fn all_stats(&mut self) -> &[Arc<BackendStats>] {
        if self.over_cap() {
            return &[];
        }
        &self.stats
    }

    fn set_response_header(&mut self, name: &str, value: &str) -> Result<(), String> {
        if self.over_cap() {
            return Err(format!("more than {MAX_HOST_CALLS} host calls in one call"));
        }
        if name.len() > MAX_HEADER_NAME_BYTES || value.len() > MAX_HEADER_VALUE_BYTES {
            return Err(format!(
                "a response header name may have at most {MAX_HEADER_NAME_BYTES} bytes and its value {MAX_HEADER_VALUE_BYTES}"
            ));
        }
        let scope = self.request.as_mut().ok_or("only during select")?;
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("{name:?} is not a valid header name"))?;
        if FORBIDDEN_RESPONSE_HEADERS.contains(&name.as_str()) {
            return Err(format!("{name} is managed by the proxy"));
        }
        let value = HeaderValue::from_str(value)
            .map_err(|_| format!("the value for {name} is not a valid header value"))?;
        if scope.response_headers.len() >= MAX_RESPONSE_HEADERS {
            return Err(format!(
                "at most {MAX_RESPONSE_HEADERS} response headers per request"
            ));
        }
        scope.response_headers.push((name, value));
        Ok(())
    }
}

impl v0_1::veer::balancer::host::Host for HostState {
    fn header(&mut self, name: String) -> Option<String> {
        HostState::header(self, &name)
    }
    fn cookie(&mut self, name: String) -> Option<String> {
        HostState::cookie(self, &name)
    }
    fn query_param(&mut self, name: String) -> Option<String> {
        HostState::query_param(self, &name)
    }
    fn live_stats(&mut self, id: u32) -> Option<v0_1::veer::balancer::types::BackendStats> {
        let stats = HostState::live_stats(self, id)?;
        Some(v0_1::veer::balancer::types::BackendStats {
            in_flight: stats.in_flight(),
            latency_ewma_us: stats.latency_ewma_us(),
            healthy: stats.is_up(),
        })
    }
    fn random(&mut self) -> u64 {
        HostState::random(self)
    }
    fn log(&mut self, level: v0_1::veer::balancer::types::LogLevel, message: String) {
        HostState::log(self, level.into(), &message)
    }
}

fn stats_v0_2(stats: &BackendStats) -> v0_2::veer::balancer::types::BackendStats {
    v0_2::veer::balancer::types::BackendStats {
        in_flight: stats.in_flight(),
        latency_ewma_us: stats.latency_ewma_us(),
        latency_peak_ewma_us: stats.latency_peak_ewma_us(),
        healthy: stats.is_up(),
    }
}

impl v0_2::veer::balancer::host::Host for HostState {
    fn header(&mut self, name: String) -> Option<String> {
        HostState::header(self, &name)
    }
    fn cookie(&mut self, name: String) -> Option<String> {
        HostState::cookie(self, &name)
    }
    fn query_param(&mut self, name: String) -> Option<String> {
        HostState::query_param(self, &name)
    }
    fn live_stats(&mut self, id: u32) -> Option<v0_2::veer::balancer::types::BackendStats> {
        HostState::live_stats(self, id).map(stats_v0_2)
    }
    fn all_in_flight(&mut self) -> Vec<u32> {
        HostState::all_stats(self)
            .iter()
            .map(|s| s.in_flight())
            .collect()
    }
    fn all_stats(&mut self) -> Vec<v0_2::veer::balancer::types::BackendStats> {
        HostState::all_stats(self)
            .iter()
            .map(|s| stats_v0_2(s))
            .collect()
    }
    fn set_response_header(&mut self, name: String, value: String) -> Result<(), String> {
        HostState::set_response_header(self, &name, &value)
    }
    fn random(&mut self) -> u64 {
        HostState::random(self)
    }
    fn log(&mut self, level: v0_2::veer::balancer::types::LogLevel, message: String) {
        HostState::log(self, level.into(), &message)
    }
}

fn stats_v0_3(stats: &BackendStats) -> v0_3::veer::balancer::types::BackendStats {
    v0_3::veer::balancer::types::BackendStats {
        in_flight: stats.in_flight(),
        latency_ewma_us: stats.latency_ewma_us(),
        latency_peak_ewma_us: stats.latency_peak_ewma_us(),
        healthy: stats.is_up(),
    }
}

impl v0_3::veer::balancer::host::Host for HostState {
    fn live_stats(&mut self, id: u32) -> Option<v0_3::veer::balancer::types::BackendStats> {
        HostState::live_stats(self, id).map(stats_v0_3)
    }
    fn all_in_flight(&mut self) -> Vec<u32> {
        HostState::all_stats(self)
            .iter()
            .map(|s| s.in_flight())
            .collect()
    }
    fn all_stats(&mut self) -> Vec<v0_3::veer::balancer::types::BackendStats> {
        HostState::all_stats(self)
            .iter()
            .map(|s| stats_v0_3(s))
            .collect()
    }
    fn set_response_header(&mut self, name: String, value: String) -> Result<(), String> {
        HostState::set_response_header(self, &name, &value)
    }
    fn random(&mut self) -> u64 {
        HostState::random(self)
    }
    fn log(&mut self, level: v0_3::veer::balancer::types::LogLevel, message: String) {
        HostState::log(self, level.into(), &message)
    }
}

impl v0_3::veer::http::types::Host for HostState {}

/// The request handle's methods. The handle is only ever lent during
/// `select` (a borrow the host made); outside a call there is no request
/// and lookups answer nothing.
impl v0_3::veer::http::types::HostRequest for HostState {
    fn method(
        &mut self,
        _: wasmtime::component::Resource<LentRequest>,
    ) -> v0_3::veer::http::types::Method {
        self.over_cap();
        v0_3::veer::http::types::Method::from_http(&self.lent.method)
    }

    fn authority(&mut self, _: wasmtime::component::Resource<LentRequest>) -> String {
        if self.over_cap() {
            return String::new();
        }
        self.lent.authority.clone()
    }

    fn path(&mut self, _: wasmtime::component::Resource<LentRequest>) -> String {
        if self.over_cap() {
            return String::new();
        }
        self.lent.path.clone()
    }

    fn query(&mut self, _: wasmtime::component::Resource<LentRequest>) -> String {
        if self.over_cap() {
            return String::new();
        }
        self.request
            .as_ref()
            .and_then(|r| r.uri.query())
            .unwrap_or("")
            .to_owned()
    }

    fn client(
        &mut self,
        _: wasmtime::component::Resource<LentRequest>,
    ) -> v0_3::veer::http::types::IpAddress {
        self.over_cap();
        self.lent
            .client
            .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into())
            .into()
    }

    fn header(
        &mut self,
        _: wasmtime::component::Resource<LentRequest>,
        name: String,
    ) -> Option<String> {
        HostState::header(self, &name)
    }

    fn header_all(
        &mut self,
        _: wasmtime::component::Resource<LentRequest>,
        name: String,
    ) -> Vec<String> {
        if self.over_cap() {
            return Vec::new();
        }
        let Some(request) = self.request.as_ref() else {
            return Vec::new();
        };
        request
            .headers
            .get_all(name.as_str())
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_owned))
            .collect()
    }

    fn cookie(
        &mut self,
        _: wasmtime::component::Resource<LentRequest>,
        name: String,
    ) -> Option<String> {
        HostState::cookie(self, &name)
    }

    fn query_param(
        &mut self,
        _: wasmtime::component::Resource<LentRequest>,
        name: String,
    ) -> Option<String> {
        HostState::query_param(self, &name)
    }

    fn tls(
        &mut self,
        _: wasmtime::component::Resource<LentRequest>,
    ) -> Option<v0_3::veer::http::types::TlsInfo> {
        if self.over_cap() {
            return None;
        }
        let tls = self.lent.tls.as_ref()?;
        Some(v0_3::veer::http::types::TlsInfo {
            server_name: tls.server_name.clone(),
            alpn: tls.alpn.map(str::to_owned),
            client_subject: tls.client_subject.clone(),
        })
    }

    fn drop(&mut self, _: wasmtime::component::Resource<LentRequest>) -> wasmtime::Result<()> {
        // Only ever lent: the plugin never owns one to drop.
        Ok(())
    }
}
