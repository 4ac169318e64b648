//! The SDK's own types: what a strategy sees and answers. They are not the
//! generated WIT types, so a strategy's source survives new WIT versions;
//! types expected to grow are `#[non_exhaustive]` (build them with their
//! constructors).

/// A backend's id: stable for the life of a backend set, dense from 0 (the
/// first backend of the pool in configuration order is 0).
pub type BackendId = u32;

/// A backend of the pool, as the host pushes it in
/// [`Strategy::set_backends`](crate::Strategy::set_backends).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Backend {
    /// Stable id; answers name backends by it.
    pub id: BackendId,
    /// The address the host connects to, e.g. `10.0.0.7:8080`: a stable
    /// hash key.
    pub address: String,
    /// Relative weight from the configuration, at least 1.
    pub weight: u32,
    /// Labels from the configuration, e.g. `("zone", "eu-1")`, sorted by key.
    pub labels: Vec<(String, String)>,
}

impl Backend {
    /// Backend `id` at `address`, weight 1, no labels.
    pub fn new(id: BackendId, address: impl Into<String>) -> Backend {
        Backend {
            id,
            address: address.into(),
            weight: 1,
            labels: Vec::new(),
        }
    }

    /// The same with `weight` (at least 1).
    pub fn with_weight(mut self, weight: u32) -> Backend {
        self.weight = weight.max(1);
        self
    }

    /// The same with label `key` = `value` (labels stay sorted by key).
    pub fn with_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Backend {
        let key = key.into();
        self.labels.retain(|(k, _)| *k != key);
        self.labels.push((key, value.into()));
        self.labels.sort();
        self
    }

    /// The value of label `key`, if the backend has it.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// What the host knows live about one backend, shared by all workers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackendStats {
    /// Requests sent to the backend whose response has not finished.
    pub in_flight: u32,
    /// Moving average of the time to response headers, µs (0: none yet).
    pub latency_ewma_us: u64,
    /// Peak-EWMA of the time to response headers, µs: jumps up with a slow
    /// response, decays back (0: none yet). Kept only for a strategy that
    /// asks for [`Capabilities::PEAK_LATENCY`]; 0 otherwise.
    pub latency_peak_ewma_us: u64,
    /// False while the host considers the backend down (it skips such
    /// backends on its own).
    pub healthy: bool,
}

impl BackendStats {
    /// A healthy backend with nothing in flight and no latency yet.
    pub fn new() -> BackendStats {
        BackendStats {
            healthy: true,
            ..BackendStats::default()
        }
    }

    /// The same with `in_flight` requests.
    pub fn with_in_flight(mut self, in_flight: u32) -> BackendStats {
        self.in_flight = in_flight;
        self
    }

    /// The same with both latencies at `us`.
    pub fn with_latency_us(mut self, us: u64) -> BackendStats {
        self.latency_ewma_us = us;
        self.latency_peak_ewma_us = us;
        self
    }

    /// The same, down.
    pub fn down(mut self) -> BackendStats {
        self.healthy = false;
        self
    }
}

/// The request method.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Method {
    /// `GET`
    Get,
    /// `HEAD`
    Head,
    /// `POST`
    Post,
    /// `PUT`
    Put,
    /// `DELETE`
    Delete,
    /// `CONNECT`
    Connect,
    /// `OPTIONS`
    Options,
    /// `TRACE`
    Trace,
    /// `PATCH`
    Patch,
    /// Any other method, as sent.
    Other(String),
}

impl Method {
    /// The method as it is written in a request.
    pub fn as_str(&self) -> &str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Connect => "CONNECT",
            Method::Options => "OPTIONS",
            Method::Trace => "TRACE",
            Method::Patch => "PATCH",
            Method::Other(other) => other,
        }
    }
}

/// How serious a log line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Detail for debugging.
    Debug,
    /// Normal events.
    Info,
    /// Something looks wrong.
    Warn,
    /// Something failed.
    Error,
}

/// What the client's TLS connection to the proxy says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsInfo {
    /// The server name the client asked for (SNI).
    pub server_name: Option<String>,
    /// The protocol agreed by ALPN, e.g. `h2`.
    pub alpn: Option<String>,
    /// The subject of the client's verified certificate (RFC 4514).
    pub client_subject: Option<String>,
}

/// Why [`Strategy::select`](crate::Strategy::select) names no backend.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rejection {
    /// No backend of this pool may serve this request: the client gets a
    /// 503 with this reason, and the request goes nowhere else whatever the
    /// pool's failure policy. Not a plugin failure.
    Refuse(String),
    /// The strategy cannot decide for this request: the pool's failure
    /// policy serves it, and it counts as a plugin failure (reason logged).
    Defer(String),
}

/// How an attempt failed before a response arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Failure {
    /// No connection could be made.
    Connect,
    /// No response in time.
    Timeout,
    /// The connection broke.
    Reset,
    /// The backend's answer was not valid HTTP.
    Protocol,
}

/// How one attempt went, for strategies that ask for
/// [`Capabilities::OUTCOMES`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Outcome {
    /// The backend the attempt went to.
    pub backend: BackendId,
    /// 1 for a request's first attempt, 2 for its first retry, …
    pub attempt: u32,
    /// The response status, when response headers arrived.
    pub status: Option<u16>,
    /// Time to the response headers (or the failure), µs.
    pub latency_us: u64,
    /// Why no response arrived; `None` when one did.
    pub failure: Option<Failure>,
}

impl Outcome {
    /// A response with `status` from `backend` after `latency_us`, first
    /// attempt.
    pub fn response(backend: BackendId, status: u16, latency_us: u64) -> Outcome {
        Outcome {
            backend,
            attempt: 1,
            status: Some(status),
            latency_us,
            failure: None,
        }
    }

    /// An attempt on `backend` that failed with `failure`, first attempt.
    pub fn failed(backend: BackendId, failure: Failure, latency_us: u64) -> Outcome {
        Outcome {
            backend,
            attempt: 1,
            status: None,
            latency_us,
            failure: Some(failure),
        }
    }

    /// The same as attempt `attempt`.
    pub fn with_attempt(mut self, attempt: u32) -> Outcome {
        self.attempt = attempt;
        self
    }
}

/// Optional calls a strategy asks the host to make
/// ([`Strategy::CAPABILITIES`](crate::Strategy::CAPABILITIES)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capabilities {
    bits: u8,
}

impl Capabilities {
    /// None: the host never calls `on_outcome`, hands no state over and
    /// keeps no peak-EWMA latency.
    pub const NONE: Capabilities = Capabilities { bits: 0 };
    /// [`Strategy::on_outcome`](crate::Strategy::on_outcome) after every
    /// attempt.
    pub const OUTCOMES: Capabilities = Capabilities { bits: 1 };
    /// [`Strategy::export_state`](crate::Strategy::export_state) on the
    /// version being replaced and
    /// [`Strategy::import_state`](crate::Strategy::import_state) on the new
    /// one (both must ask).
    pub const HAND_OVER: Capabilities = Capabilities { bits: 2 };
    /// Keep [`BackendStats::latency_peak_ewma_us`] for the pool's backends:
    /// without it that field reads 0 (the host saves a clock read and an
    /// exponential per response).
    pub const PEAK_LATENCY: Capabilities = Capabilities { bits: 4 };

    /// Both sets.
    pub const fn and(self, other: Capabilities) -> Capabilities {
        Capabilities {
            bits: self.bits | other.bits,
        }
    }

    /// Whether all of `other` is in this set.
    pub const fn contains(self, other: Capabilities) -> bool {
        self.bits & other.bits == other.bits
    }
}

/// The backends a strategy answers, best first: the first is the first
/// choice, the rest are tried in order when an attempt fails and may be
/// retried.
///
/// Bounded: it holds at most [`Candidates::MAX`] ids, and the SDK reuses one
/// per instance, so filling it allocates nothing once warm. Answer only as
/// many as make sense: the host tries at most `retries + 1` (3 by default).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Candidates {
    pub(crate) ids: Vec<BackendId>,
}

impl Candidates {
    /// The most ids an answer holds (the most the host reads).
    pub const MAX: usize = 1024;

    /// An empty answer (the SDK makes one per instance; tests make their
    /// own).
    pub fn new() -> Candidates {
        Candidates {
            ids: Vec::with_capacity(16),
        }
    }

    /// Appends `id`; `false` (and nothing added) once full.
    pub fn push(&mut self, id: BackendId) -> bool {
        if self.ids.len() >= Self::MAX {
            return false;
        }
        self.ids.push(id);
        true
    }

    /// Appends `ids` in order, as far as there is room.
    pub fn extend(&mut self, ids: impl IntoIterator<Item = BackendId>) {
        let room = Self::MAX - self.ids.len();
        self.ids.extend(ids.into_iter().take(room));
    }

    /// The ids so far.
    pub fn as_slice(&self) -> &[BackendId] {
        &self.ids
    }

    /// How many ids there are.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Whether `id` is among them.
    pub fn contains(&self, id: BackendId) -> bool {
        self.ids.contains(&id)
    }

    /// Keeps the first `n`.
    pub fn truncate(&mut self, n: usize) {
        self.ids.truncate(n);
    }

    /// Empties it, keeping its room.
    pub fn clear(&mut self) {
        self.ids.clear();
    }

    /// The ids, as the answer to hand to the host.
    #[doc(hidden)]
    pub fn to_vec(&self) -> Vec<BackendId> {
        self.ids.clone()
    }
}

/// Bounded like [`Candidates::extend`]: ids past [`Candidates::MAX`] are
/// dropped.
impl Extend<BackendId> for Candidates {
    fn extend<I: IntoIterator<Item = BackendId>>(&mut self, ids: I) {
        Candidates::extend(self, ids);
    }
}

impl std::ops::Deref for Candidates {
    type Target = [BackendId];
    fn deref(&self) -> &[BackendId] {
        &self.ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_stop_at_their_bound() {
        let mut c = Candidates::new();
        c.extend(0..2000);
        assert_eq!(c.len(), Candidates::MAX);
        assert!(!c.push(7), "full");
        assert_eq!(c[..3], [0, 1, 2]);
        c.clear();
        assert!(c.is_empty() && c.push(7));
    }

    #[test]
    fn labels_stay_sorted_and_a_repeated_key_replaces_its_value() {
        let b = Backend::new(0, "10.0.0.1:80")
            .with_label("zone", "a")
            .with_label("version", "v1")
            .with_label("zone", "b");
        assert_eq!(b.label("zone"), Some("b"));
        assert_eq!(b.labels[0].0, "version");
    }

    #[test]
    fn capabilities_combine() {
        let both = Capabilities::OUTCOMES.and(Capabilities::HAND_OVER);
        assert!(both.contains(Capabilities::OUTCOMES));
        assert!(!Capabilities::NONE.contains(Capabilities::HAND_OVER));
    }
}
