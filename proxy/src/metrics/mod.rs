//! Process counters, kept per thread: each worker (and each control-plane
//! thread) counts on cache lines of its own, so the request path takes no
//! lock and writes no cache line another thread reads. A scrape or a
//! [`Metrics::snapshot`] sums the threads. Counters are named once, in the
//! list below, with their meaning; the Prometheus exporter (`export`) and
//! the snapshot are made from the same list.
//!
//! Files: `histogram` (latency histograms, per thread), `traffic` (per
//! pool, backend, route and plugin counters), `export` (the `/metrics`
//! page).

pub mod export;
pub mod histogram;
pub mod traffic;

use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use thread_local::ThreadLocal;

/// Declares `Counters` (one thread's counters) and [`MetricsSnapshot`] (a
/// sum of them) from one list, so the two cannot drift apart.
macro_rules! metrics {
    ($($(#[doc = $doc:literal])* $name:ident,)*) => {
        /// One thread's share of the process counters, aligned to keep it
        /// off other threads' cache lines.
        #[derive(Debug, Default)]
        #[repr(align(128))]
        pub struct Counters {
            $($(#[doc = $doc])* pub $name: AtomicU64,)*
        }

        /// Every counter, summed over threads, at one moment.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
        pub struct MetricsSnapshot {
            /// Client connections open now (a gauge).
            pub client_connections_open: u64,
            /// The most client connections open at once since start.
            pub client_connections_peak: u64,
            $($(#[doc = $doc])* pub $name: u64,)*
        }

        impl Metrics {
            /// Reads every counter.
            pub fn snapshot(&self) -> MetricsSnapshot {
                let mut sum = MetricsSnapshot {
                    client_connections_open: self.open.load(Relaxed),
                    client_connections_peak: self.peak.load(Relaxed),
                    ..MetricsSnapshot::default()
                };
                for thread in self.threads.iter() {
                    $(sum.$name = sum.$name.wrapping_add(thread.$name.load(Relaxed));)*
                }
                sum
            }

        }

        impl MetricsSnapshot {
            /// Every counter's name, meaning and value, in the order of the
            /// list.
            pub fn counters(&self) -> Vec<(&'static str, &'static str, u64)> {
                vec![$((stringify!($name), concat!($($doc, "\n"),*), self.$name),)*]
            }
        }
    };
}

/// Process-wide counters (see the module docs). Counting goes to the
/// calling thread's `Counters` (through `Deref`); read them with
/// [`Metrics::snapshot`].
#[derive(Debug, Default)]
pub struct Metrics {
    threads: ThreadLocal<Counters>,
    /// Client connections open now: one gauge for all threads, as a
    /// connection may close on another thread than it opened (changed per
    /// connection, not per request).
    open: AtomicU64,
    /// The most open at once.
    peak: AtomicU64,
}

impl Deref for Metrics {
    type Target = Counters;

    /// This thread's counters.
    fn deref(&self) -> &Counters {
        self.threads.get_or(Counters::default)
    }
}

metrics! {
    /// Requests received downstream.
    requests,
    /// Client connections accepted.
    client_connections_accepted,
    /// Client connections closed because no complete request head arrived
    /// within `first_request_timeout_ms` of the accept.
    client_first_request_timeouts,
    /// Client connections closed because a request head, once begun, was not
    /// complete within `header_read_timeout_ms`.
    client_header_timeouts,
    /// Idle client connections closed after `keepalive_timeout_ms`.
    client_idle_closes,
    /// Client connections closed because the client stopped reading a
    /// response for `client_send_timeout_ms`.
    client_send_timeouts,
    /// Requests refused by the proxy itself as malformed or too large
    /// (400, 405, 413, 431).
    bad_requests,
    /// Request bodies that stalled for `client_body_timeout_ms` (408).
    client_body_timeouts,
    /// TLS handshakes completed.
    tls_handshakes,
    /// TLS handshakes that failed (garbage, no shared protocol, a refused
    /// client certificate, …).
    tls_handshake_failures,
    /// TLS handshakes not completed within `tls.handshake_timeout_ms`.
    tls_handshake_timeouts,
    /// Certificate reloads applied.
    tls_certificate_reloads,
    /// Certificate reloads refused (the old certificates kept serving).
    tls_certificate_reload_refusals,
    /// Certificates issued by ACME.
    acme_certificates,
    /// ACME orders that failed (retried with backoff).
    acme_failures,
    /// ACME challenges answered (HTTP-01 tokens served, TLS-ALPN-01
    /// handshakes): the CA's validator really reached Veer.
    acme_challenge_answers,
    /// Plugin calls that trapped.
    plugin_traps,
    /// Plugin calls that ran past their deadline.
    plugin_timeouts,
    /// `select` answers with no usable backend id (0.3.0 `defer` included).
    plugin_bad_answers,
    /// Plugin calls that took longer than `plugins.slow_call_us` (counted
    /// toward the backoff like failures; the answer is used).
    plugin_slow_calls,
    /// Plugin calls that made more host calls than allowed (counted toward
    /// the backoff like failures).
    plugin_host_call_storms,
    /// `select` answers longer than the pool (only its length is read).
    plugin_long_answers,
    /// Plugin calls stopped past their deadline while the worker thread was
    /// descheduled: not held against the plugin.
    plugin_descheduled_calls,
    /// New plugin versions rolled back to the last good one (failing
    /// repeatedly soon after their swap).
    plugin_rollbacks,
    /// Requests ordered by the last good plugin version (policy `last-good`,
    /// or after a rollback).
    last_good_selections,
    /// Requests answered 503 because the plugin failed and the pool's
    /// policy is `reject`.
    plugin_rejections,
    /// Requests answered 503 because the plugin refused them (0.3.0
    /// `refuse`: no backend of the pool may serve them).
    plugin_refused_requests,
    /// Plugin instances that took over the state of the instance they
    /// replaced on their worker (0.3.0 `hand-over`).
    plugin_state_hand_overs,
    /// Requests whose backend order came from the host's round robin instead
    /// of the plugin (after a failure, or while the plugin is backing off).
    fallback_selections,
    /// Plugin instances created (per worker, after a failure, on reload).
    plugin_instantiations,
    /// New connections to backends attempted (pooled ones reused don't count).
    upstream_connects,
    /// Connections to backends that could not be made.
    upstream_connect_errors,
    /// Attempts on a further candidate after a failed one (or one that
    /// answered a status in `retry.on_statuses`).
    retries,
    /// Retries not made because the pool's retry budget was spent.
    retry_budget_exhausted,
    /// Backends ejected by passive health (failures in a row).
    ejections,
    /// Active health checks run.
    health_checks,
    /// Active health checks that failed.
    health_check_failures,
    /// Backends whose health checks made them unhealthy (flips).
    backends_marked_unhealthy,
    /// Requests sent again on a fresh connection to the same backend after a
    /// reused connection closed without a response (not counted in `retries`).
    fresh_connection_retries,
    /// Response bodies from a backend that stalled for `read_timeout_ms`; the
    /// client's stream was closed.
    upstream_body_timeouts,
    /// Response bodies from a backend that broke off mid-way; the client's
    /// stream was closed.
    upstream_body_errors,
    /// Upgraded connections (WebSocket, …) tunnelled to a backend.
    tunnels,
    /// Tunnels closed after `read_timeout_ms` without a byte either way.
    tunnel_idle_closes,
    /// Plugin files swapped in from the plugin folder.
    plugin_swaps,
    /// Plugin files refused (not Wasm, wrong world, trapped or refused in
    /// `init`, name taken); the running plugin kept serving.
    plugin_refusals,
    /// Configuration reloads applied.
    config_reloads,
    /// Configuration reloads refused; the running configuration stayed.
    config_reload_refusals,
    /// Discovered pools whose backend set changed (and was swapped in).
    discovery_changes,
    /// Discovery lookups that failed or found nothing; the pool kept its
    /// last known backends.
    discovery_failures,
    /// 502 answers.
    bad_gateway,
    /// 503 answers.
    service_unavailable,
    /// 504 answers.
    gateway_timeout,
}

impl Metrics {
    /// Adds one to a counter (of this thread's `Counters`: its cache
    /// line is not contended, so the atomic add is cheap).
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    /// Counts a client connection open (and the high-water mark).
    pub fn connection_opened(&self) {
        Metrics::inc(&self.client_connections_accepted);
        let now = self.open.fetch_add(1, Relaxed) + 1;
        if now > self.peak.load(Relaxed) {
            self.peak.fetch_max(now, Relaxed);
        }
    }

    /// Counts a client connection closed.
    pub fn connection_closed(&self) {
        self.open.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_from_many_threads_add_up_in_the_snapshot() {
        let metrics = std::sync::Arc::new(Metrics::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let metrics = metrics.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        Metrics::inc(&metrics.requests);
                    }
                    metrics.connection_opened();
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        metrics.connection_closed();
        let s = metrics.snapshot();
        assert_eq!(s.requests, 4000);
        assert_eq!(s.client_connections_accepted, 4);
        assert_eq!(
            (s.client_connections_open, s.client_connections_peak),
            (3, 4)
        );
        let counters = s.counters();
        let requests = counters
            .iter()
            .find(|(name, _, _)| *name == "requests")
            .unwrap();
        assert_eq!(requests.2, 4000);
        assert!(requests.1.contains("Requests received"), "{}", requests.1);
    }
}
