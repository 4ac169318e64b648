//! The Wasm runtime: owns wasmtime's `bindgen!` for `veer:balancer@0.1.0`, the
//! engine, the epoch ticker, compiled plugins and instances.
//!
//! Nothing outside this module touches wasmtime. A [`Plugin`] is a compiled,
//! type-checked component (compiled once per load, off the request path); an
//! [`Instance`] is one instantiation of it with its own `Store`, owned by one
//! worker thread. Every call into an instance runs under an epoch deadline and
//! the instance's memory cap.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::{HeaderMap, Uri};
use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, Store, StoreLimits, StoreLimitsBuilder, Trap};

use crate::error::PluginError;
use crate::stats::BackendStats;

#[allow(missing_docs)]
mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "veer:balancer/balancer@0.1.0",
    });
}

use bindings::veer::balancer::types::BackendStats as WitBackendStats;
pub use bindings::veer::balancer::types::{Backend as WitBackend, IpAddress, LogLevel, Method};
use bindings::{Balancer, BalancerPre};

/// The WIT world this host serves, as plugins must name it.
pub const WORLD: &str = "veer:balancer/balancer@0.1.0";

/// How often the epoch ticks. Deadlines are whole ticks, so this is their
/// resolution; a 1 ms tick costs ~1000 wake-ups a second on one thread.
const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Limits applied to every plugin instance.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Deadline of one `select` call.
    pub select_timeout: Duration,
    /// Deadline of `info`, `init` and `set-backends` (they may build tables).
    pub setup_timeout: Duration,
    /// Linear memory cap per instance, in bytes.
    pub memory_bytes: usize,
}

impl Limits {
    fn ticks(timeout: Duration) -> u64 {
        // +1: the current tick may be about to end.
        (timeout.as_nanos() / EPOCH_TICK.as_nanos()).max(1) as u64 + 1
    }
}

/// The engine plus what every instance is linked against. Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    engine: Engine,
    linker: Arc<Linker<HostState>>,
    _ticker: Arc<Ticker>,
}

/// Increments the engine's epoch every [`EPOCH_TICK`] on a thread of its own
/// until dropped.
struct Ticker {
    stop: Arc<AtomicBool>,
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Runtime {
    /// Creates the engine (one configuration for all plugins: compiled code is
    /// only valid for the settings it was compiled with) and starts the ticker.
    pub fn new() -> Result<Runtime, PluginError> {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        let engine = Engine::new(&config).map_err(PluginError::engine)?;

        let mut linker = Linker::new(&engine);
        Balancer::add_to_linker::<HostState, wasmtime::component::HasSelf<HostState>>(
            &mut linker,
            |state| state,
        )
        .map_err(PluginError::engine)?;

        let stop = Arc::new(AtomicBool::new(false));
        let ticker_engine = engine.weak();
        let ticker_stop = stop.clone();
        std::thread::Builder::new()
            .name("veer-epoch".into())
            .spawn(move || {
                while !ticker_stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    match ticker_engine.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })
            .map_err(|e| PluginError::engine(e.into()))?;

        Ok(Runtime {
            engine,
            linker: Arc::new(linker),
            _ticker: Arc::new(Ticker { stop }),
        })
    }

    /// Compiles and type-checks a component, then asks it its name and version.
    /// `source` names where the bytes came from, for messages.
    pub fn load(&self, source: &str, bytes: &[u8], limits: Limits) -> Result<Plugin, PluginError> {
        let component = Component::new(&self.engine, bytes).map_err(|e| PluginError::Invalid {
            origin: source.into(),
            reason: format!("{e:#}"),
        })?;
        // Plugins built for wasm32-wasip2 import WASI interfaces even when they
        // never use them. Those imports are linked to functions that trap:
        // plugins get no ambient capabilities.
        let mut linker = (*self.linker).clone();
        linker
            .define_unknown_imports_as_traps(&component)
            .map_err(|e| PluginError::Invalid {
                origin: source.into(),
                reason: format!("{e:#}"),
            })?;
        let pre = linker
            .instantiate_pre(&component)
            .and_then(BalancerPre::new)
            .map_err(|e| PluginError::WrongWorld {
                origin: source.into(),
                reason: format!("{e:#}"),
            })?;
        let mut plugin = Plugin {
            pre,
            engine: self.engine.clone(),
            name: Arc::from(source),
            version: String::new(),
            source: source.into(),
        };
        let mut probe = Instance::new(&plugin, Arc::from([]), limits, 0)?;
        probe
            .store
            .set_epoch_deadline(Limits::ticks(limits.setup_timeout));
        let info =
            probe
                .bindings
                .call_info(&mut probe.store)
                .map_err(|e| PluginError::Trapped {
                    plugin: source.into(),
                    call: "info",
                    reason: describe_trap(&e),
                })?;
        if !valid_name(&info.name) {
            return Err(PluginError::Invalid {
                origin: source.into(),
                reason: format!(
                    "its name {:?} is not usable as a strategy name (lowercase letters, digits and `-`)",
                    info.name
                ),
            });
        }
        plugin.name = Arc::from(info.name.as_str());
        plugin.version = info.version;
        Ok(plugin)
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A compiled, type-checked plugin, ready to instantiate (~10 µs each).
pub struct Plugin {
    pre: BalancerPre<HostState>,
    engine: Engine,
    name: Arc<str>,
    version: String,
    source: String,
}

impl Plugin {
    /// The strategy name the plugin gives itself.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The version the plugin gives itself.
    pub fn version(&self) -> &str {
        &self.version
    }
    /// Where it was loaded from (`builtin:NAME` or a file path).
    pub fn source(&self) -> &str {
        &self.source
    }
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Plugin({} {} from {})",
            self.name, self.version, self.source
        )
    }
}

/// Why a call into an instance failed. After any of these the instance must
/// be discarded: a trapped component cannot be entered again.
#[derive(Debug)]
pub enum CallError {
    /// The call ran past its deadline.
    Timeout,
    /// The guest trapped (panic, out-of-bounds, memory cap, …).
    Trap(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Timeout => f.write_str("ran past its deadline"),
            CallError::Trap(reason) => write!(f, "trapped: {reason}"),
        }
    }
}

fn classify(err: wasmtime::Error) -> CallError {
    match err.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => CallError::Timeout,
        _ => CallError::Trap(describe_trap(&err)),
    }
}

fn describe_trap(err: &wasmtime::Error) -> String {
    // The root cause is the trap code; the context holds the guest backtrace.
    match err.downcast_ref::<Trap>() {
        Some(trap) => format!("{trap}"),
        None => format!("{err:#}"),
    }
}

/// The request a `select` call is about, lent to the instance for the call so
/// the `host` imports can answer from it without copying it.
#[derive(Default)]
pub struct RequestScope {
    /// The request's headers (moved in for the call, moved back after).
    pub headers: HeaderMap,
    /// The request's URI, for query parameters.
    pub uri: Uri,
}

/// One instance of a plugin with its own `Store`. Not shared between threads.
pub struct Instance {
    store: Store<HostState>,
    bindings: Balancer,
    limits: Limits,
}

impl Instance {
    /// Instantiates `plugin`. `stats` are the live stats of the pool's
    /// backends, by id; `seed` seeds the `random` import.
    pub fn new(
        plugin: &Plugin,
        stats: Arc<[Arc<BackendStats>]>,
        limits: Limits,
        seed: u64,
    ) -> Result<Instance, PluginError> {
        let state = HostState {
            limits: StoreLimitsBuilder::new()
                .memory_size(limits.memory_bytes)
                .trap_on_grow_failure(true)
                .build(),
            request: None,
            stats,
            rng: seed,
            plugin: plugin.name.clone(),
        };
        let mut store = Store::new(&plugin.engine, state);
        store.limiter(|state| &mut state.limits);
        store.set_epoch_deadline(Limits::ticks(limits.setup_timeout));
        let bindings = plugin
            .pre
            .instantiate(&mut store)
            .map_err(|e| PluginError::Trapped {
                plugin: plugin.name.to_string(),
                call: "instantiate",
                reason: describe_trap(&e),
            })?;
        Ok(Instance {
            store,
            bindings,
            limits,
        })
    }

    /// Calls `init` with the pool's config (JSON). `Ok(Err(msg))` is the
    /// plugin refusing its configuration.
    pub fn init(&mut self, config_json: &str) -> Result<Result<(), String>, CallError> {
        self.store
            .set_epoch_deadline(Limits::ticks(self.limits.setup_timeout));
        self.bindings
            .call_init(&mut self.store, config_json)
            .map_err(classify)
    }

    /// Pushes the backend set.
    pub fn set_backends(&mut self, backends: &[WitBackend]) -> Result<(), CallError> {
        self.store
            .set_epoch_deadline(Limits::ticks(self.limits.setup_timeout));
        self.bindings
            .call_set_backends(&mut self.store, backends)
            .map_err(classify)
    }

    /// Calls `select`. `scope` is lent to the plugin for the call and handed
    /// back in all cases.
    pub fn select(
        &mut self,
        method: &Method,
        host: &str,
        path: &str,
        client: IpAddress,
        scope: &mut RequestScope,
    ) -> Result<Vec<u32>, CallError> {
        self.store
            .set_epoch_deadline(Limits::ticks(self.limits.select_timeout));
        self.store.data_mut().request = Some(std::mem::take(scope));
        let result = self
            .bindings
            .call_select(&mut self.store, method, host, path, client);
        if let Some(lent) = self.store.data_mut().request.take() {
            *scope = lent;
        }
        result.map_err(classify)
    }
}

/// The data of each instance's `Store`: what the `host` imports read.
pub struct HostState {
    limits: StoreLimits,
    request: Option<RequestScope>,
    stats: Arc<[Arc<BackendStats>]>,
    rng: u64,
    plugin: Arc<str>,
}

impl bindings::veer::balancer::types::Host for HostState {}

impl bindings::veer::balancer::host::Host for HostState {
    fn header(&mut self, name: String) -> Option<String> {
        let value = self.request.as_ref()?.headers.get(name.as_str())?;
        value.to_str().ok().map(str::to_owned)
    }

    fn cookie(&mut self, name: String) -> Option<String> {
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

    fn query_param(&mut self, name: String) -> Option<String> {
        let query = self.request.as_ref()?.uri.query()?;
        query.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (key == name).then(|| value.to_owned())
        })
    }

    fn live_stats(&mut self, id: u32) -> Option<WitBackendStats> {
        let stats = self.stats.get(id as usize)?;
        Some(WitBackendStats {
            in_flight: stats.in_flight(),
            latency_ewma_us: stats.latency_ewma_us(),
            healthy: stats.is_up(),
        })
    }

    fn random(&mut self) -> u64 {
        // splitmix64: tiny, fast, good enough to spread load; not for secrets.
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn log(&mut self, level: LogLevel, message: String) {
        if !crate::stats::plugin_log_allowed() {
            return;
        }
        let plugin = &*self.plugin;
        match level {
            LogLevel::Debug => tracing::debug!(plugin, "{message}"),
            LogLevel::Info => tracing::info!(plugin, "{message}"),
            LogLevel::Warn => tracing::warn!(plugin, "{message}"),
            LogLevel::Error => tracing::error!(plugin, "{message}"),
        }
    }
}

impl Method {
    /// The WIT method of an HTTP method, without allocating for common ones.
    pub fn from_http(method: &http::Method) -> Method {
        match *method {
            http::Method::GET => Method::Get,
            http::Method::HEAD => Method::Head,
            http::Method::POST => Method::Post,
            http::Method::PUT => Method::Put,
            http::Method::DELETE => Method::Delete,
            http::Method::CONNECT => Method::Connect,
            http::Method::OPTIONS => Method::Options,
            http::Method::TRACE => Method::Trace,
            http::Method::PATCH => Method::Patch,
            ref other => Method::Other(other.as_str().to_owned()),
        }
    }
}

impl From<std::net::IpAddr> for IpAddress {
    fn from(ip: std::net::IpAddr) -> IpAddress {
        match ip {
            std::net::IpAddr::V4(v4) => {
                let [a, b, c, d] = v4.octets();
                IpAddress::Ipv4((a, b, c, d))
            }
            std::net::IpAddr::V6(v6) => {
                let [a, b, c, d, e, f, g, h] = v6.segments();
                IpAddress::Ipv6((a, b, c, d, e, f, g, h))
            }
        }
    }
}
