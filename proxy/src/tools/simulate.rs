//! `veer plugin simulate`: a plugin against synthetic traffic, under the
//! real host and limits, before it meets production. It prints the share of
//! requests each backend got, what a `select` cost, and every rejection and
//! failure.
//!
//! Requests are sent one after another (nothing is in flight when the next
//! is selected); each one's first choice "answers" after the latency given
//! for that backend, which feeds the host's latency averages and, for
//! plugins that ask, `on-outcome`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::error::{Error, PluginError};
use crate::plugin::{self, AttemptOutcome, BackendInfo, Call, CallError, Instance, Verdict};
use crate::stats::BackendStats;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct Simulation {
    /// The strategy configuration, as JSON.
    pub config_json: String,
    /// The backends: a count, or a TOML file listing them.
    pub backends: Backends,
    /// How many requests.
    pub requests: u32,
    /// Headers drawn for each request.
    pub headers: Vec<HeaderDraw>,
    /// Time to response of each backend, by id (default 1 ms).
    pub latency: BTreeMap<u32, Duration>,
    /// Seeds the draws and the plugin's `random`.
    pub seed: u64,
}

/// Where the backend set comes from.
#[derive(Debug, Clone)]
pub enum Backends {
    /// `n` backends `10.0.0.1:80`, `10.0.0.2:80`, …, weight 1, label
    /// `zone` `a` for the first half and `b` for the rest.
    Count(u32),
    /// A TOML file: `backends = [{ address = "…", weight = 2, labels = { zone = "a" } }, …]`.
    File(PathBuf),
}

impl Backends {
    /// `"N"` or a file path.
    pub fn parse(text: &str) -> Backends {
        match text.parse() {
            Ok(n) => Backends::Count(n),
            Err(_) => Backends::File(PathBuf::from(text)),
        }
    }

    fn load(&self) -> Result<Vec<BackendInfo>, String> {
        let n = match self {
            Backends::Count(0) => return Err("--backends: at least 1".into()),
            Backends::Count(n) => *n,
            Backends::File(path) => return read_backends(path),
        };
        Ok((0..n)
            .map(|id| BackendInfo {
                id,
                address: format!("10.0.0.{}:80", id + 1),
                weight: 1,
                labels: vec![(
                    "zone".to_string(),
                    if id < n.div_ceil(2) { "a" } else { "b" }.to_string(),
                )],
            })
            .collect())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BackendFile {
    backends: Vec<BackendEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BackendEntry {
    address: String,
    #[serde(default = "one")]
    weight: u32,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

fn one() -> u32 {
    1
}

fn read_backends(path: &Path) -> Result<Vec<BackendInfo>, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("--backends {}: {e}", path.display()))?;
    let file: BackendFile =
        toml::from_str(&text).map_err(|e| format!("--backends {}: {e}", path.display()))?;
    if file.backends.is_empty() {
        return Err(format!("--backends {}: no backends", path.display()));
    }
    Ok(file
        .backends
        .into_iter()
        .enumerate()
        .map(|(id, b)| BackendInfo {
            id: id as u32,
            address: b.address,
            weight: b.weight.max(1),
            labels: b.labels.into_iter().collect(),
        })
        .collect())
}

/// One header's values and their weights, e.g. `x-version=v1:90,v2:10`
/// (`-` for the header being absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderDraw {
    name: http::HeaderName,
    values: Vec<(Option<http::HeaderValue>, u32)>,
}

impl HeaderDraw {
    /// Parses `NAME=VALUE[:WEIGHT],…`.
    pub fn parse(text: &str) -> Result<HeaderDraw, String> {
        let (name, values) = text
            .split_once('=')
            .ok_or_else(|| format!("--header {text:?}: expected NAME=VALUE[:WEIGHT],…"))?;
        let name = http::HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| format!("--header {text:?}: {name:?} is not a header name"))?;
        let values = values
            .split(',')
            .map(|entry| {
                let (value, weight) = match entry.rsplit_once(':') {
                    Some((v, w)) if w.parse::<u32>().is_ok() => (v, w.parse().unwrap()),
                    _ => (entry, 1),
                };
                let value =
                    match value.trim() {
                        "-" => None,
                        v => Some(http::HeaderValue::from_str(v).map_err(|_| {
                            format!("--header {text:?}: {v:?} is not a header value")
                        })?),
                    };
                Ok((value, weight))
            })
            .collect::<Result<Vec<_>, String>>()?;
        if values.iter().all(|(_, w)| *w == 0) {
            return Err(format!("--header {text:?}: every weight is 0"));
        }
        Ok(HeaderDraw { name, values })
    }

    fn draw(&self, r: u64) -> Option<&http::HeaderValue> {
        let total: u64 = self.values.iter().map(|(_, w)| *w as u64).sum();
        let mut point = r % total;
        for (value, weight) in &self.values {
            if point < *weight as u64 {
                return value.as_ref();
            }
            point -= *weight as u64;
        }
        None
    }
}

/// Parses `ID=MS,…` into per-backend latencies.
pub fn parse_latency(text: &str) -> Result<BTreeMap<u32, Duration>, String> {
    text.split(',')
        .map(|entry| {
            let (id, ms) = entry
                .split_once('=')
                .ok_or_else(|| format!("--latency {entry:?}: expected ID=MS"))?;
            let id = id
                .trim()
                .parse()
                .map_err(|_| format!("--latency {entry:?}: bad id"))?;
            let ms: f64 = ms
                .trim()
                .parse()
                .map_err(|_| format!("--latency {entry:?}: bad ms"))?;
            if !(0.0..=60_000.0).contains(&ms) {
                return Err(format!("--latency {entry:?}: 0 to 60000 ms"));
            }
            Ok((id, Duration::from_secs_f64(ms / 1000.0)))
        })
        .collect()
}

/// What happened.
#[derive(Debug)]
pub struct SimulationReport {
    /// `name version (world)`.
    pub plugin: String,
    /// Each backend's address and labels, by id.
    pub backends: Vec<String>,
    /// Requests whose first choice was each backend, by id.
    pub first_choices: Vec<u64>,
    /// Requests sent.
    pub requests: u32,
    /// `select` answered `refuse`.
    pub refused: u64,
    /// `select` answered `defer`.
    pub deferred: u64,
    /// Calls that failed, by how (trap, missed deadline, no usable id).
    pub failures: BTreeMap<&'static str, u64>,
    /// One failure's message of each kind.
    pub examples: BTreeMap<&'static str, String>,
    /// Calls over `plugins.slow_call_us` that burnt the fuel to show for it.
    pub slow: u64,
    /// Wall time of each `select`, sorted.
    pub call_times: Vec<Duration>,
    /// Fuel of each `select`, sorted.
    pub fuel: Vec<u64>,
}

/// Runs `simulation` on the plugin in `path`.
pub fn simulate(path: &Path, simulation: &Simulation) -> Result<SimulationReport, Error> {
    let invalid = |reason: String| PluginError::Invalid {
        origin: path.display().to_string(),
        reason,
    };
    let backends = simulation.backends.load().map_err(invalid)?;
    let runtime = plugin::Runtime::new(None)?;
    let bytes = std::fs::read(path).map_err(|e| invalid(format!("could not read it: {e}")))?;
    let limits = crate::config::PluginsSection::default().limits();
    let plugin = runtime.load(&path.display().to_string(), &bytes, limits)?;
    let stats: Arc<[Arc<BackendStats>]> = backends.iter().map(|_| Default::default()).collect();
    for s in stats.iter() {
        s.keep_peak_latency(plugin.capabilities().peak_latency);
    }
    let trapped = |call, e: CallError| PluginError::Trapped {
        plugin: plugin.name().to_string(),
        call,
        reason: e.to_string(),
    };
    let fresh = || -> Result<Instance, Error> {
        let mut instance = Instance::new(&plugin, stats.clone(), limits, simulation.seed)?;
        instance
            .init(&simulation.config_json)
            .map_err(|e| trapped("init", e))?
            .map_err(|message| PluginError::Refused {
                plugin: plugin.name().to_string(),
                message,
            })?;
        instance
            .set_backends(&backends)
            .map_err(|e| trapped("set-backends", e))?;
        Ok(instance)
    };
    let mut instance = fresh()?;
    let mut report = SimulationReport {
        plugin: format!(
            "{} {} ({})",
            plugin.name(),
            plugin.version(),
            plugin.world()
        ),
        backends: backends
            .iter()
            .map(|b| {
                let labels: Vec<String> =
                    b.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                match labels.is_empty() {
                    true => b.address.clone(),
                    false => format!("{} ({})", b.address, labels.join(", ")),
                }
            })
            .collect(),
        first_choices: vec![0; backends.len()],
        requests: simulation.requests,
        refused: 0,
        deferred: 0,
        failures: BTreeMap::new(),
        examples: BTreeMap::new(),
        slow: 0,
        call_times: Vec::with_capacity(simulation.requests as usize),
        fuel: Vec::with_capacity(simulation.requests as usize),
    };
    let mut rng = simulation.seed;
    let mut next = move || {
        rng = rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let failed = |report: &mut SimulationReport, kind: &'static str, what: String| {
        *report.failures.entry(kind).or_default() += 1;
        report.examples.entry(kind).or_insert(what);
    };
    for _ in 0..simulation.requests {
        let mut scope = plugin::RequestScope {
            uri: http::Uri::from_static("/"),
            ..Default::default()
        };
        for draw in &simulation.headers {
            if let Some(value) = draw.draw(next()) {
                scope.headers.append(draw.name.clone(), value.clone());
            }
        }
        let client = std::net::Ipv4Addr::new(198, 51, 100, (next() % 254) as u8 + 1);
        let call = Call {
            method: &http::Method::GET,
            host: "example.com",
            path: "/",
            client: client.into(),
            tls: None,
        };
        let started = Instant::now();
        let answer = instance.select(&call, &mut scope);
        let took = started.elapsed();
        report.call_times.push(took);
        report.fuel.push(instance.fuel_used());
        if plugin::slow_by_fuel(limits.slow_call, took, instance.fuel_used()) {
            report.slow += 1;
        }
        match answer {
            Ok(Verdict::Order(answer)) => {
                let Some(&first) = answer
                    .ids
                    .iter()
                    .find(|&&id| (id as usize) < backends.len())
                else {
                    failed(
                        &mut report,
                        "no usable id",
                        format!("answered {:?}", answer.ids),
                    );
                    continue;
                };
                report.first_choices[first as usize] += 1;
                let latency = simulation
                    .latency
                    .get(&first)
                    .copied()
                    .unwrap_or(Duration::from_millis(1));
                stats[first as usize].record_latency(latency);
                if plugin.capabilities().outcomes {
                    let outcome = AttemptOutcome {
                        backend: first,
                        attempt: 1,
                        status: Some(200),
                        latency,
                        failure: None,
                    };
                    if let Err(e) = instance.on_outcome(&outcome) {
                        failed(&mut report, "on-outcome failed", e.to_string());
                        instance = fresh()?;
                    }
                }
            }
            Ok(Verdict::Refuse(_)) => report.refused += 1,
            Ok(Verdict::Defer(_)) => report.deferred += 1,
            Err(e) => {
                let kind = match e {
                    CallError::Trap(_) => "trap",
                    _ => "missed deadline",
                };
                failed(&mut report, kind, e.to_string());
                instance = fresh()?;
            }
        }
    }
    report.call_times.sort();
    report.fuel.sort();
    Ok(report)
}

/// The `q`-quantile of sorted `values`.
fn quantile<T: Copy + Default>(values: &[T], q: f64) -> T {
    if values.is_empty() {
        return T::default();
    }
    values[((values.len() - 1) as f64 * q).round() as usize]
}

impl fmt::Display for SimulationReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "plugin: {}", self.plugin)?;
        writeln!(f, "requests: {}", self.requests)?;
        writeln!(f, "first choice per backend:")?;
        let total = self.requests.max(1) as f64;
        for (id, (backend, n)) in self.backends.iter().zip(&self.first_choices).enumerate() {
            writeln!(
                f,
                "  {id:>3} {backend:<40} {n:>8} {:>6.1}%",
                *n as f64 * 100.0 / total
            )?;
        }
        writeln!(
            f,
            "refused: {}   deferred: {}   slow calls: {}",
            self.refused, self.deferred, self.slow
        )?;
        if self.failures.is_empty() {
            writeln!(f, "failures: none")?;
        }
        for (kind, n) in &self.failures {
            writeln!(f, "failures: {n} {kind}, e.g. {}", self.examples[kind])?;
        }
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        writeln!(
            f,
            "select: p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs; fuel p50 {}, p99 {}, max {}",
            us(quantile(&self.call_times, 0.5)),
            us(quantile(&self.call_times, 0.99)),
            us(quantile(&self.call_times, 1.0)),
            quantile(&self.fuel, 0.5),
            quantile(&self.fuel, 0.99),
            quantile(&self.fuel, 1.0),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_draws_parse_values_weights_and_absence() {
        let draw = HeaderDraw::parse("x-version=v1:90,v2:10,-").unwrap();
        assert_eq!(draw.values.len(), 3);
        assert_eq!(draw.values[2], (None, 1));
        let counts = (0..101u64).fold([0; 3], |mut c, r| {
            match draw.draw(r).map(|v| v.to_str().unwrap().to_string()) {
                Some(v) if v == "v1" => c[0] += 1,
                Some(_) => c[1] += 1,
                None => c[2] += 1,
            }
            c
        });
        assert_eq!(counts, [90, 10, 1]);
        assert!(HeaderDraw::parse("no-equals").is_err());
        assert!(HeaderDraw::parse("x=a:0").is_err());
    }

    #[test]
    fn latencies_parse_by_backend_id() {
        let latency = parse_latency("0=5,2=0.5").unwrap();
        assert_eq!(latency[&0], Duration::from_millis(5));
        assert_eq!(latency[&2], Duration::from_micros(500));
        assert!(parse_latency("0=-1").is_err());
        assert!(parse_latency("x").is_err());
    }
}
