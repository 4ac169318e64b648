//! The `/metrics` page (Prometheus text, OpenMetrics flavour), made at
//! scrape time by a `prometheus-client` collector that sums the per-thread
//! counters and reads the live per-backend state: nothing on the request
//! path is shared with the scraper but the atomics it already writes.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use super::histogram::HistogramSum;
use super::traffic::CLASSES;
use crate::state::{Shared, State};

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Everything Veer counts, as Prometheus text.
pub fn render(shared: &Arc<Shared>) -> String {
    let mut registry = Registry::with_prefix("veer");
    registry.register_collector(Box::new(Scrape(shared.clone())));
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
    text
}

struct Scrape(Arc<Shared>);

impl std::fmt::Debug for Scrape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scrape")
    }
}

type Fmt = Result<(), std::fmt::Error>;

fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> Fmt {
    let c = ConstCounter::new(value);
    c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: i64) -> Fmt {
    let g = ConstGauge::new(value);
    g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
}

/// One family: `rows` of (labels, value).
fn family<L: prometheus_client::encoding::EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    rows: &[(L, u64)],
) -> Fmt {
    if rows.is_empty() {
        return Ok(());
    }
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in rows {
        let mut row = metric.encode_family(labels)?;
        match kind {
            MetricType::Counter => row.encode_counter::<NoLabelSet, _, u64>(value, None)?,
            _ => row.encode_gauge(&(*value as i64))?,
        }
    }
    Ok(())
}

fn histograms<L: prometheus_client::encoding::EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(L, HistogramSum)],
) -> Fmt {
    if rows.is_empty() {
        return Ok(());
    }
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (labels, h) in rows {
        metric
            .encode_family(labels)?
            .encode_histogram::<NoLabelSet>(h.sum_seconds(), h.count(), &h.cumulative(), None)?;
    }
    Ok(())
}

type Labels = Vec<(&'static str, String)>;

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Fmt {
        let shared = &self.0;
        let snapshot = shared.metrics.snapshot();
        gauge(
            &mut encoder,
            "client_connections_open",
            "Client connections open now.",
            snapshot.client_connections_open as i64,
        )?;
        gauge(
            &mut encoder,
            "client_connections_peak",
            "The most client connections open at once since start.",
            snapshot.client_connections_peak as i64,
        )?;
        for (name, help, value) in snapshot.counters() {
            let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
            counter(&mut encoder, name, &help, value)?;
        }
        let state = shared.state.load_full();
        routes(&mut encoder, &state)?;
        backends(&mut encoder, &state)?;
        plugins(&mut encoder, &state)
    }
}

/// A route as a label: `host/prefix` (`*` for any host).
pub fn route_label(state: &State, index: usize) -> String {
    match state.routes.get(index) {
        Some(r) => format!("{}{}", r.host.as_deref().unwrap_or("*"), r.path_prefix),
        None => "(none)".to_string(),
    }
}

fn routes(encoder: &mut DescriptorEncoder, state: &State) -> Fmt {
    let sums = state.traffic.sum();
    let mut answers: Vec<(Labels, u64)> = Vec::new();
    let mut durations: Vec<(Labels, HistogramSum)> = Vec::new();
    for (index, sum) in sums.iter().enumerate() {
        let route = route_label(state, index);
        let pool = state
            .routes
            .get(index)
            .map_or_else(String::new, |r| state.pools[r.pool].config.name.clone());
        for (class, n) in CLASSES.iter().zip(sum.answers) {
            if n > 0 {
                answers.push((
                    vec![
                        ("route", route.clone()),
                        ("pool", pool.clone()),
                        ("class", class.to_string()),
                    ],
                    n,
                ));
            }
        }
        if sum.duration.count() > 0 {
            durations.push((
                vec![("route", route.clone()), ("pool", pool)],
                sum.duration.clone(),
            ));
        }
    }
    family(
        encoder,
        "route_requests",
        "Requests by route and the status class of their answer (route \"(none)\": answered before a route applied: no route matched, a malformed request, a redirect to HTTPS, an ACME challenge).",
        MetricType::Counter,
        &answers,
    )?;
    histograms(
        encoder,
        "route_request_duration_seconds",
        "Time from a request's head to its response's head, by route.",
        &durations,
    )
}

fn backends(encoder: &mut DescriptorEncoder, state: &State) -> Fmt {
    let mut responses: Vec<(Labels, u64)> = Vec::new();
    let mut failures: Vec<(Labels, u64)> = Vec::new();
    let mut latency: Vec<(Labels, HistogramSum)> = Vec::new();
    let mut in_flight: Vec<(Labels, u64)> = Vec::new();
    let mut up: Vec<(Labels, u64)> = Vec::new();
    let mut ejected: Vec<(Labels, u64)> = Vec::new();
    let mut unhealthy: Vec<(Labels, u64)> = Vec::new();
    let mut drained: Vec<(Labels, u64)> = Vec::new();
    let mut ejections: Vec<(Labels, u64)> = Vec::new();
    for pool in &state.pools {
        let sums = pool.traffic.sum();
        for (id, (backend, sum)) in pool.config.backends.iter().zip(sums).enumerate() {
            let labels = || -> Labels {
                vec![
                    ("pool", pool.config.name.clone()),
                    ("backend", backend.address.clone()),
                ]
            };
            for (class, n) in CLASSES.iter().zip(sum.responses) {
                if n > 0 {
                    let mut l = labels();
                    l.push(("class", class.to_string()));
                    responses.push((l, n));
                }
            }
            failures.push((labels(), sum.failures));
            latency.push((labels(), sum.latency));
            let stats = &pool.stats[id];
            in_flight.push((labels(), stats.in_flight() as u64));
            up.push((labels(), stats.is_up() as u64));
            ejected.push((labels(), stats.is_ejected() as u64));
            unhealthy.push((labels(), stats.check_failed() as u64));
            drained.push((labels(), stats.is_drained() as u64));
            ejections.push((labels(), stats.ejections_total()));
        }
    }
    family(
        encoder,
        "backend_responses",
        "Responses from each backend, by status class.",
        MetricType::Counter,
        &responses,
    )?;
    family(
        encoder,
        "backend_failures",
        "Attempts on each backend that failed before a response (connect errors, resets, timeouts).",
        MetricType::Counter,
        &failures,
    )?;
    histograms(
        encoder,
        "backend_response_seconds",
        "Time from sending a request to a backend to its response head.",
        &latency,
    )?;
    family(
        encoder,
        "backend_in_flight",
        "Requests in flight to each backend.",
        MetricType::Gauge,
        &in_flight,
    )?;
    family(
        encoder,
        "backend_up",
        "1 when a backend takes requests (not ejected, not failing health checks, not drained).",
        MetricType::Gauge,
        &up,
    )?;
    family(
        encoder,
        "backend_ejected",
        "1 while passive health has ejected a backend.",
        MetricType::Gauge,
        &ejected,
    )?;
    family(
        encoder,
        "backend_unhealthy",
        "1 while a backend fails its active health checks.",
        MetricType::Gauge,
        &unhealthy,
    )?;
    family(
        encoder,
        "backend_drained",
        "1 while a backend is drained through the admin API.",
        MetricType::Gauge,
        &drained,
    )?;
    family(
        encoder,
        "backend_ejections",
        "Times each backend was ejected.",
        MetricType::Counter,
        &ejections,
    )
}

fn plugins(encoder: &mut DescriptorEncoder, state: &State) -> Fmt {
    let mut select: Vec<(Labels, HistogramSum)> = Vec::new();
    let mut events: Vec<(Labels, u64)> = Vec::new();
    let mut info: Vec<(Labels, u64)> = Vec::new();
    for pool in &state.pools {
        let plugin = pool.balancer.plugin();
        let labels = || -> Labels {
            vec![
                ("pool", pool.config.name.clone()),
                ("plugin", plugin.name().to_string()),
            ]
        };
        let sum = pool.balancer.traffic().sum();
        select.push((labels(), sum.select));
        for (event, n) in [
            ("trap", sum.traps),
            ("timeout", sum.timeouts),
            ("bad_answer", sum.bad_answers),
            ("fallback", sum.fallbacks),
            ("rest", sum.rests),
        ] {
            let mut l = labels();
            l.push(("event", event.to_string()));
            events.push((l, n));
        }
        let mut l = labels();
        l.push(("version", plugin.version().to_string()));
        l.push(("world", plugin.world().to_string()));
        l.push(("source", plugin.source().to_string()));
        info.push((l, 1));
    }
    histograms(
        encoder,
        "plugin_select_seconds",
        "Time a pool's plugin took to order the candidates of a request.",
        &select,
    )?;
    family(
        encoder,
        "plugin_events",
        "A pool's plugin calls that trapped, ran past their deadline or answered nothing usable; requests ordered by the host's fallback instead; and times the plugin was rested.",
        MetricType::Counter,
        &events,
    )?;
    family(
        encoder,
        "plugin_info",
        "The plugin serving each pool (always 1).",
        MetricType::Gauge,
        &info,
    )?;
    // One budget for the process: any pool's plugin reaches it.
    if let Some(pool) = state.pools.first() {
        let memory = pool.balancer.plugin().memory();
        gauge(
            encoder,
            "plugin_memory_bytes",
            "Linear memory held by all plugin instances together.",
            memory.used() as i64,
        )?;
        gauge(
            encoder,
            "plugin_memory_limit_bytes",
            "plugins.total_memory_mib, in bytes.",
            memory.cap() as i64,
        )?;
    }
    Ok(())
}
