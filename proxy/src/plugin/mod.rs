//! The Wasm runtime: owns wasmtime's `bindgen!` for every world this host
//! serves (`veer:balancer@0.1.0` and `@0.2.0`), the engine, the epoch ticker,
//! compiled plugins and instances.
//!
//! Nothing outside this module touches wasmtime, and nothing outside it sees a
//! world version: plugins of either version look the same to the rest of the
//! proxy (0.1.0 plugins simply never call the newer imports). A [`Plugin`] is a compiled,
//! type-checked component (compiled once per load, off the request path); an
//! [`Instance`] is one instantiation of it with its own `Store`, owned by one
//! worker thread. Every call into an instance runs under an epoch deadline and
//! the instance's memory cap.
//!
//! Files: [`bindings`] (the generated code, one module per world), [`host`]
//! (the imports plugins call), [`cache`] (compiled plugins on disk),
//! [`ticker`] (the epoch that makes deadlines fire), [`balancer`] (one pool's
//! plugin per worker, with the failure policy).

pub mod balancer;
mod bindings;
mod cache;
mod host;
mod limits;
pub mod log;
mod ticker;
mod wasi;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, Store, Trap};

use crate::error::PluginError;
use crate::stats::BackendStats;
pub use bindings::{Answer, MAX_ANSWER, Order, Verdict};
use bindings::{Exports, Pre, v0_1, v0_2, v0_3, world_of};
use cache::Cache;
pub use host::{HostState, MAX_HOST_CALLS, RequestScope};
use limits::{Limiter, MemoryBudget};
use ticker::{EPOCH_TICK, Ticker};

/// The worlds this host serves, newest first.
pub const WORLDS: &str = "veer:balancer@0.3.0, veer:balancer@0.2.0 and veer:balancer@0.1.0";

/// A backend as pushed to plugins (any world version).
#[derive(Debug, Clone)]
pub struct BackendInfo {
    /// Dense id, the backend's position in the pool.
    pub id: u32,
    /// `host:port` as configured.
    pub address: String,
    /// At least 1.
    pub weight: u32,
    /// Sorted by key.
    pub labels: Vec<(String, String)>,
}

/// Limits applied to every plugin instance (validated `[plugins]` settings).
pub type Limits = crate::config::PluginLimits;

/// Fuel given to each call: far more than any deadline lets a call burn.
const CALL_FUEL: u64 = u64::MAX / 2;
/// A call over `plugins.slow_call_us` is held against the plugin only if it
/// also burnt at least this much fuel per µs of that budget: a plugin doing
/// little is not blamed for a host that was descheduled or slow.
pub const SLOW_FUEL_PER_US: u64 = 100;

/// Whether a call that took `took` against `budget` was slow by its own
/// doing, judged by the `fuel` it burnt (see [`SLOW_FUEL_PER_US`]).
pub fn slow_by_fuel(budget: Duration, took: Duration, fuel: u64) -> bool {
    took > budget && fuel >= budget.as_micros() as u64 * SLOW_FUEL_PER_US
}

/// A deadline in whole epoch ticks.
fn ticks(timeout: Duration) -> u64 {
    // +1: the current tick may be about to end.
    (timeout.as_nanos() / EPOCH_TICK.as_nanos()).max(1) as u64 + 1
}

/// The engine plus what every instance is linked against. Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    engine: Engine,
    linker: Arc<Linker<HostState>>,
    cache: Option<Arc<Cache>>,
    /// Linear memory of all instances, against `plugins.total_memory_mib`.
    memory: Arc<MemoryBudget>,
    _ticker: Arc<Ticker>,
}

impl Runtime {
    /// Creates the engine (one configuration for all plugins: compiled code is
    /// only valid for the settings it was compiled with) and starts the ticker.
    /// `cache_dir` keeps compiled plugins across restarts, capped at the
    /// default `plugins.cache_max_mib`.
    pub fn new(cache_dir: Option<std::path::PathBuf>) -> Result<Runtime, PluginError> {
        let default_mib = crate::config::PluginsSection::default().cache_max_mib;
        Runtime::with_cache(cache_dir, default_mib << 20)
    }

    /// As [`Runtime::new`], the cache capped at `cache_max_bytes` (see
    /// `PluginSettings::cache_max_bytes`). A cache folder that may not be
    /// trusted is not used (a warning says why): plugins are then compiled
    /// in memory.
    pub fn with_cache(
        cache_dir: Option<std::path::PathBuf>,
        cache_max_bytes: u64,
    ) -> Result<Runtime, PluginError> {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        // One linear memory per plugin: the memory cap is per memory.
        config.wasm_multi_memory(false);
        // Fuel counts the Wasm a call executes (about one unit per
        // instruction): how a slow call is told from a slow host.
        config.consume_fuel(true);
        let engine = Engine::new(&config).map_err(PluginError::engine)?;

        let mut linker = Linker::new(&engine);
        type Data = wasmtime::component::HasSelf<HostState>;
        v0_1::Balancer::add_to_linker::<HostState, Data>(&mut linker, |state| state)
            .map_err(PluginError::engine)?;
        v0_2::Balancer::add_to_linker::<HostState, Data>(&mut linker, |state| state)
            .map_err(PluginError::engine)?;
        v0_3::Balancer::add_to_linker::<HostState, Data>(&mut linker, |state| state)
            .map_err(PluginError::engine)?;

        let ticker = Ticker::start(&engine).map_err(|e| PluginError::engine(e.into()))?;

        let cache = cache_dir.and_then(|dir| {
            use std::hash::{Hash, Hasher};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            engine.precompile_compatibility_hash().hash(&mut hasher);
            Cache::open(dir, hasher.finish(), cache_max_bytes).map(Arc::new)
        });
        Ok(Runtime {
            engine,
            linker: Arc::new(linker),
            cache,
            memory: Arc::new(MemoryBudget::default()),
            _ticker: Arc::new(ticker),
        })
    }

    /// (cache hits, compilations) since start, when there is a cache.
    pub fn cache_counts(&self) -> Option<(u64, u64)> {
        self.cache.as_ref().map(|c| {
            (
                c.hits.load(Ordering::Relaxed),
                c.compiles.load(Ordering::Relaxed),
            )
        })
    }

    /// Compiles `bytes`, or takes the compilation from the cache.
    fn compile(&self, bytes: &[u8]) -> wasmtime::Result<Component> {
        let Some(cache) = &self.cache else {
            return Component::new(&self.engine, bytes);
        };
        if let Some(component) = cache.get(&self.engine, bytes) {
            return Ok(component);
        }
        cache.compiles.fetch_add(1, Ordering::Relaxed);
        let artifact = self.engine.precompile_component(bytes)?;
        cache.put(bytes, &artifact);
        // SAFETY: the artifact was produced just now by this engine's
        // `precompile_component`.
        #[allow(unsafe_code)]
        let component = unsafe { Component::deserialize(&self.engine, &artifact) };
        component
    }

    /// Compiles and type-checks a component, then asks it its name and version.
    /// `source` names where the bytes came from, for messages.
    pub fn load(&self, source: &str, bytes: &[u8], limits: Limits) -> Result<Plugin, PluginError> {
        if !bytes.starts_with(b"\0asm") {
            return Err(PluginError::Invalid {
                origin: source.into(),
                reason: "it is not WebAssembly (no \\0asm header); build it with `cargo build --target wasm32-wasip2`".into(),
            });
        }
        let component = self.compile(bytes).map_err(|e| PluginError::Invalid {
            origin: source.into(),
            reason: format!("{e:#}"),
        })?;
        // Plugins built for wasm32-wasip2 import WASI interfaces even when they
        // never use them. Those imports are linked to functions that trap:
        // plugins get no ambient capabilities.
        let mut linker = (*self.linker).clone();
        for version in wasi::versions_imported(&component, &self.engine) {
            wasi::add_to_linker(&mut linker, &version).map_err(|e| PluginError::Invalid {
                origin: source.into(),
                reason: format!("{e:#}"),
            })?;
        }
        linker
            .define_unknown_imports_as_traps(&component)
            .map_err(|e| PluginError::Invalid {
                origin: source.into(),
                reason: format!("{e:#}"),
            })?;
        let instance_pre =
            linker
                .instantiate_pre(&component)
                .map_err(|e| PluginError::WrongWorld {
                    served: WORLDS,
                    origin: source.into(),
                    reason: format!("{e:#}"),
                })?;
        let world = world_of(&component, &self.engine);
        let wrong = |version: &str, e: wasmtime::Error| PluginError::WrongWorld {
            served: WORLDS,
            origin: source.into(),
            reason: format!(
                "it was built for veer:balancer@{version} but does not match it: {e:#}"
            ),
        };
        let pre = match world.as_deref() {
            Some("0.3.0") => Pre::v0_3(instance_pre).map_err(|e| wrong("0.3.0", e))?,
            Some("0.2.0") => Pre::v0_2(instance_pre).map_err(|e| wrong("0.2.0", e))?,
            Some("0.1.0") => Pre::v0_1(instance_pre).map_err(|e| wrong("0.1.0", e))?,
            Some(other) => {
                return Err(PluginError::WrongWorld {
                    served: WORLDS,
                    origin: source.into(),
                    reason: format!(
                        "it was built for veer:balancer@{other}, which this Veer does not serve"
                    ),
                });
            }
            None => Pre::v0_3(instance_pre.clone())
                .or_else(|e3| Pre::v0_2(instance_pre.clone()).map_err(|e2| (e3, e2)))
                .or_else(|(e3, e2)| {
                    Pre::v0_1(instance_pre).map_err(|e1| PluginError::WrongWorld {
                        served: WORLDS,
                        origin: source.into(),
                        reason: format!("its exports match no world: {e3:#}; {e2:#}; {e1:#}"),
                    })
                })?,
        };
        static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let mut plugin = Plugin {
            pre,
            engine: self.engine.clone(),
            name: Arc::from(source),
            version: String::new(),
            source: source.into(),
            kind: if source.starts_with("builtin:") {
                "built-in"
            } else {
                "file"
            },
            sha256: {
                use sha2::Digest;
                let digest: [u8; 32] = sha2::Sha256::digest(bytes).into();
                digest.iter().map(|b| format!("{b:02x}")).collect()
            },
            generation: GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1,
            loaded_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            log_budget: Arc::new(log::LogBudget::new(log::PLUGIN_LINES_PER_SECOND)),
            memory: self.memory.clone(),
            capabilities: Capabilities::OLDER_WORLDS,
        };
        let mut probe = Instance::new(&plugin, Arc::from([]), limits, 0)?;
        probe.start_call(limits.setup_timeout);
        let (name, version, capabilities) = match &probe.exports {
            Exports::V0_1(b) => b
                .call_info(&mut probe.store)
                .map(|i| (i.name, i.version, Capabilities::OLDER_WORLDS)),
            Exports::V0_2(b) => b
                .call_info(&mut probe.store)
                .map(|i| (i.name, i.version, Capabilities::OLDER_WORLDS)),
            Exports::V0_3(b) => b
                .veer_balancer_strategy()
                .call_info(&mut probe.store)
                .map(|i| {
                    use v0_3::veer::balancer::types::Capabilities as C;
                    let asked = Capabilities {
                        outcomes: i.capabilities.contains(C::OUTCOMES),
                        hand_over: i.capabilities.contains(C::HAND_OVER),
                        peak_latency: i.capabilities.contains(C::PEAK_LATENCY),
                    };
                    (i.name, i.version, asked)
                }),
        }
        .map_err(|e| PluginError::Trapped {
            plugin: source.into(),
            call: "info",
            reason: describe_trap(&e),
        })?;
        if !valid_name(&name) {
            return Err(PluginError::Invalid {
                origin: source.into(),
                reason: format!(
                    "its name {name:?} is not usable as a strategy name (lowercase letters, digits and `-`)"
                ),
            });
        }
        plugin.name = Arc::from(name.as_str());
        plugin.version = version;
        plugin.capabilities = capabilities;
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
    pre: Pre,
    engine: Engine,
    name: Arc<str>,
    version: String,
    source: String,
    kind: &'static str,
    sha256: String,
    generation: u64,
    loaded_unix_ms: u64,
    /// Lines it may log itself (shared by all its instances).
    log_budget: Arc<log::LogBudget>,
    /// The process's plugin memory (the runtime's).
    memory: Arc<MemoryBudget>,
    /// The optional calls it asked for (0.3.0 and later).
    capabilities: Capabilities,
}

/// The optional calls a plugin asks the host to make (`veer:balancer@0.3.0`
/// `capabilities`); none for older worlds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// `on-outcome` after every attempt.
    pub outcomes: bool,
    /// `export-state` / `import-state` across a swap.
    pub hand_over: bool,
    /// The pool's backends keep a peak-EWMA latency.
    pub peak_latency: bool,
}

impl Capabilities {
    /// What 0.1.0 and 0.2.0 plugins get without asking: no optional calls,
    /// and every statistic their `live-stats` may read.
    pub const OLDER_WORLDS: Capabilities = Capabilities {
        outcomes: false,
        hand_over: false,
        peak_latency: true,
    };

    /// What it asks for, by WIT name (for `veer plugin check`).
    pub fn names(self) -> Vec<&'static str> {
        [
            (self.outcomes, "outcomes"),
            (self.hand_over, "hand-over"),
            (self.peak_latency, "peak-latency"),
        ]
        .into_iter()
        .filter_map(|(asked, name)| asked.then_some(name))
        .collect()
    }
}

/// Largest state handed from one plugin version to the next (0.3.0
/// `export-state`): a larger one is not handed over.
pub const MAX_STATE_BYTES: usize = 1 << 20;

/// How one attempt went, for plugins that ask (0.3.0 `on-outcome`).
#[derive(Debug, Clone, Copy)]
pub struct AttemptOutcome {
    /// The backend tried.
    pub backend: u32,
    /// 1 for the first attempt of a request.
    pub attempt: u32,
    /// The response status, when response headers arrived.
    pub status: Option<u16>,
    /// To the response headers or the failure.
    pub latency: Duration,
    /// Why no response came.
    pub failure: Option<AttemptFailure>,
}

/// How an attempt failed before a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptFailure {
    /// No connection.
    Connect,
    /// No response in time.
    Timeout,
    /// The connection broke.
    Reset,
    /// Not valid HTTP.
    Protocol,
}

/// The request a `select` is about, as the plugin may see it.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    /// The method.
    pub method: &'a http::Method,
    /// The host, without a port, lowercased ("" when the request has none).
    pub host: &'a str,
    /// The normalised path, without the query.
    pub path: &'a str,
    /// The client's address.
    pub client: std::net::IpAddr,
    /// The client's TLS connection, `None` for plain HTTP.
    pub tls: Option<TlsSeen<'a>>,
}

/// What a request's TLS connection says.
#[derive(Debug, Clone, Copy, Default)]
pub struct TlsSeen<'a> {
    /// The SNI the client sent.
    pub server_name: Option<&'a str>,
    /// The protocol agreed by ALPN.
    pub alpn: Option<&'static str>,
    /// The verified client certificate's subject.
    pub client_subject: Option<&'a str>,
}

impl Plugin {
    /// Marks a plugin as loaded from the watched plugin folder.
    pub fn into_folder_plugin(mut self) -> Plugin {
        self.kind = "folder";
        self
    }
    /// `built-in`, `file` (named by the configuration) or `folder`.
    pub fn kind(&self) -> &'static str {
        self.kind
    }
    /// The SHA-256 of the component's bytes, hex.
    pub fn hash(&self) -> &str {
        &self.sha256
    }
    /// A process-wide load counter: each load (also of the same file again)
    /// gets a higher one.
    pub fn generation(&self) -> u64 {
        self.generation
    }
    /// When it was loaded, ms since the Unix epoch.
    pub fn loaded_unix_ms(&self) -> u64 {
        self.loaded_unix_ms
    }
    /// The strategy name the plugin gives itself.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The version the plugin gives itself.
    pub fn version(&self) -> &str {
        &self.version
    }
    /// The optional calls it asked for.
    pub fn capabilities(&self) -> Capabilities {
        self.capabilities
    }
    /// What it asked for, if its world lets it ask (0.3.0 and later); older
    /// worlds get [`Capabilities::OLDER_WORLDS`] without asking.
    pub fn asked(&self) -> Option<Capabilities> {
        self.pre.has_capabilities().then_some(self.capabilities)
    }
    /// The process's plugin memory, against `plugins.total_memory_mib`.
    pub fn memory(&self) -> &MemoryBudget {
        &self.memory
    }
    /// Where it was loaded from (`builtin:NAME` or a file path).
    pub fn source(&self) -> &str {
        &self.source
    }
    /// The world it was built for, e.g. `veer:balancer@0.2.0`.
    pub fn world(&self) -> &'static str {
        self.pre.world()
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
    /// The call ran past its deadline, running all along.
    Timeout,
    /// The call ran past its deadline because the worker thread was not
    /// running (descheduled): not held against the plugin.
    Descheduled,
    /// The guest trapped (panic, out-of-bounds, memory cap, …).
    Trap(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Timeout => f.write_str("ran past its deadline"),
            CallError::Descheduled => {
                f.write_str("missed its deadline while the worker thread was descheduled")
            }
            CallError::Trap(reason) => write!(f, "trapped: {reason}"),
        }
    }
}

fn classify(err: wasmtime::Error) -> CallError {
    if err.downcast_ref::<Descheduled>().is_some() {
        return CallError::Descheduled;
    }
    match err.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => CallError::Timeout,
        _ => CallError::Trap(describe_trap(&err)),
    }
}

/// Why a call was stopped when the thread ran too little of its deadline.
#[derive(Debug)]
struct Descheduled;

impl std::fmt::Display for Descheduled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the worker thread was descheduled past the plugin's deadline")
    }
}

impl std::error::Error for Descheduled {}

/// The calling thread's CPU time (`None` if the clock cannot be read).
pub(crate) fn thread_cpu() -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `clock_gettime` writes one `timespec` through a valid pointer.
    #[allow(unsafe_code)]
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } == 0;
    ok.then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

/// When a call reaches its deadline: measured afresh for another window
/// (`window` ticks). A call is stopped as over its deadline only once a
/// whole window passed with the thread running it at least half the time;
/// a window mostly spent descheduled is given again, up to
/// [`MAX_DESCHEDULED_WINDOWS`], then the call is stopped as
/// [`CallError::Descheduled`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Overtime {
    /// The thread's CPU time and the wall clock when the window began.
    cpu: Duration,
    wall: std::time::Instant,
    /// Windows given so far.
    windows: u32,
}

/// Windows a descheduled call may be given before it is stopped anyway.
const MAX_DESCHEDULED_WINDOWS: u32 = 4;

fn on_deadline(state: &mut HostState) -> wasmtime::Result<wasmtime::UpdateDeadline> {
    let window = state.window_ticks;
    // Without the thread's clock, nothing says it was descheduled: the
    // deadline stands.
    let Some(cpu) = thread_cpu() else {
        return Err(Trap::Interrupt.into());
    };
    let now = (cpu, std::time::Instant::now());
    let Some(overtime) = state.overtime else {
        state.overtime = Some(Overtime {
            cpu: now.0,
            wall: now.1,
            windows: 1,
        });
        return Ok(wasmtime::UpdateDeadline::Continue(window));
    };
    let ran = now.0.saturating_sub(overtime.cpu);
    let passed = now.1.saturating_duration_since(overtime.wall);
    if ran * 2 >= passed {
        return Err(Trap::Interrupt.into());
    }
    if overtime.windows >= MAX_DESCHEDULED_WINDOWS {
        return Err(Descheduled.into());
    }
    state.overtime = Some(Overtime {
        cpu: now.0,
        wall: now.1,
        windows: overtime.windows + 1,
    });
    Ok(wasmtime::UpdateDeadline::Continue(window))
}

fn describe_trap(err: &wasmtime::Error) -> String {
    // The root cause is the trap code; the context holds the guest backtrace,
    // whose function names are the plugin's own text: one escaped line, cut.
    match err.downcast_ref::<Trap>() {
        Some(trap) => format!("{trap}"),
        None => log::cut(&format!("{err:#}")).into_owned(),
    }
}

/// One instance of a plugin with its own `Store`. Not shared between threads.
pub struct Instance {
    /// Unique in the process: tells an outcome's instance from a newer one.
    id: u64,
    store: Store<HostState>,
    exports: Exports,
    select: wasmtime::component::Func,
    limits: Limits,
    /// `select`'s deadline and overtime window, in epoch ticks (worked out
    /// once: a 128-bit division per call is not free).
    select_ticks: (u64, u64),
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
            lent: host::Lent::default(),
            streams: wasi::Streams::default(),
            limits: Limiter::new(limits.memory_bytes, plugin.memory.clone()),
            request: None,
            stats,
            rng: seed,
            plugin: plugin.name.clone(),
            log_budget: plugin.log_budget.clone(),
            calls: 0,
            overtime: None,
            window_ticks: ticks(limits.setup_timeout),
        };
        plugin.memory.set_cap(limits.total_memory_bytes);
        let mut store = Store::new(&plugin.engine, state);
        store.limiter(|state| &mut state.limits);
        store.set_hostcall_fuel(host::MAX_HOST_CALL_BYTES);
        store.epoch_deadline_callback(|mut store| on_deadline(store.data_mut()));
        // Instantiation runs start functions: they burn fuel too.
        store.set_fuel(CALL_FUEL).map_err(PluginError::engine)?;
        store.set_epoch_deadline(ticks(limits.setup_timeout));
        let (exports, select) =
            plugin
                .pre
                .instantiate(&mut store)
                .map_err(|e| PluginError::Trapped {
                    plugin: plugin.name.to_string(),
                    call: "instantiate",
                    reason: describe_trap(&e),
                })?;
        static INSTANCES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        Ok(Instance {
            id: INSTANCES.fetch_add(1, Ordering::Relaxed),
            store,
            exports,
            select,
            limits,
            select_ticks: (
                ticks(limits.select_timeout),
                ticks(limits.select_timeout / 2),
            ),
        })
    }

    /// Arms the deadline and resets the per-call counters for a call that
    /// may take `timeout`.
    fn start_call(&mut self, timeout: Duration) {
        // A window after the deadline is half the deadline again.
        self.start_call_ticks((ticks(timeout), ticks(timeout / 2)));
    }

    /// The same, with the deadline and window already in ticks.
    fn start_call_ticks(&mut self, (deadline, window): (u64, u64)) {
        // Fuel does not stop a call (the deadline does): it is only read.
        let _ = self.store.set_fuel(CALL_FUEL);
        let state = self.store.data_mut();
        state.calls = 0;
        state.overtime = None;
        state.window_ticks = window;
        self.store.set_epoch_deadline(deadline);
    }

    /// This instance's process-unique id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Fuel (≈ Wasm instructions) the last call burnt.
    pub fn fuel_used(&self) -> u64 {
        CALL_FUEL.saturating_sub(self.store.get_fuel().unwrap_or(CALL_FUEL))
    }

    /// Whether the last call made more host calls than allowed.
    pub fn stormed(&self) -> bool {
        self.store.data().stormed()
    }

    /// Calls `init` with the pool's config (JSON). `Ok(Err(msg))` is the
    /// plugin refusing its configuration.
    pub fn init(&mut self, config_json: &str) -> Result<Result<(), String>, CallError> {
        self.start_call(self.limits.setup_timeout);
        match &self.exports {
            Exports::V0_1(b) => b.call_init(&mut self.store, config_json),
            Exports::V0_2(b) => b.call_init(&mut self.store, config_json),
            Exports::V0_3(b) => b
                .veer_balancer_strategy()
                .call_init(&mut self.store, config_json),
        }
        .map_err(classify)
    }

    /// Pushes the backend set.
    pub fn set_backends(&mut self, backends: &[BackendInfo]) -> Result<(), CallError> {
        self.start_call(self.limits.setup_timeout);
        match &self.exports {
            Exports::V0_1(b) => {
                let list: Vec<_> = backends.iter().map(Into::into).collect();
                b.call_set_backends(&mut self.store, &list)
            }
            Exports::V0_2(b) => {
                let list: Vec<_> = backends.iter().map(Into::into).collect();
                b.call_set_backends(&mut self.store, &list)
            }
            Exports::V0_3(b) => {
                let list: Vec<_> = backends.iter().map(Into::into).collect();
                b.veer_balancer_strategy()
                    .call_set_backends(&mut self.store, &list)
            }
        }
        .map_err(classify)
    }

    /// Tells the plugin how an attempt from its answer went (0.3.0
    /// `on-outcome`, under `select`'s deadline). Only for plugins that ask;
    /// older worlds have no such call.
    pub fn on_outcome(&mut self, outcome: &AttemptOutcome) -> Result<(), CallError> {
        if !matches!(self.exports, Exports::V0_3(_)) {
            return Ok(());
        }
        use v0_3::veer::balancer::types::{Failure, Outcome};
        let outcome = Outcome {
            backend: outcome.backend,
            attempt: outcome.attempt,
            status: outcome.status,
            latency_us: outcome.latency.as_micros().min(u64::MAX as u128) as u64,
            failure: outcome.failure.map(|f| match f {
                AttemptFailure::Connect => Failure::Connect,
                AttemptFailure::Timeout => Failure::Timeout,
                AttemptFailure::Reset => Failure::Reset,
                AttemptFailure::Protocol => Failure::Protocol,
            }),
        };
        self.start_call_ticks(self.select_ticks);
        let Exports::V0_3(b) = &self.exports else {
            return Ok(());
        };
        b.veer_balancer_strategy()
            .call_on_outcome(&mut self.store, outcome)
            .map_err(classify)
    }

    /// The plugin's state for its next version (0.3.0 `export-state`, under
    /// `timeout`);
    /// `None` for older worlds or a state over [`MAX_STATE_BYTES`].
    pub fn export_state(&mut self, timeout: Duration) -> Result<Option<Vec<u8>>, CallError> {
        self.start_call(timeout);
        let Exports::V0_3(b) = &self.exports else {
            return Ok(None);
        };
        let state = b
            .veer_balancer_strategy()
            .call_export_state(&mut self.store)
            .map_err(classify)?;
        Ok((state.len() <= MAX_STATE_BYTES).then_some(state))
    }

    /// Gives the plugin its previous version's state (0.3.0
    /// `import-state`, under `timeout`). `Ok(Err(msg))`: the plugin could not read it.
    pub fn import_state(
        &mut self,
        state: &[u8],
        timeout: Duration,
    ) -> Result<Result<(), String>, CallError> {
        self.start_call(timeout);
        let Exports::V0_3(b) = &self.exports else {
            return Ok(Ok(()));
        };
        b.veer_balancer_strategy()
            .call_import_state(&mut self.store, state)
            .map_err(classify)
    }

    /// Calls `select`. `scope` is lent to the plugin for the call and handed
    /// back in all cases.
    pub fn select(
        &mut self,
        call: &Call<'_>,
        scope: &mut RequestScope,
    ) -> Result<Verdict, CallError> {
        self.start_call_ticks(self.select_ticks);
        let state = self.store.data_mut();
        state.request = Some(std::mem::take(scope));
        if let Exports::V0_3(_) = self.exports {
            // The request handle reads these; buffers are reused.
            state.lent.fill(call);
        }
        let result = bindings::select(&self.exports, self.select, &mut self.store, call);
        if let Some(lent) = self.store.data_mut().request.take() {
            *scope = lent;
        }
        result.map_err(classify)
    }
}
