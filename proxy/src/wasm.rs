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

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, Store, StoreLimits, StoreLimitsBuilder, Trap};

use crate::error::PluginError;
use crate::stats::BackendStats;

/// `veer:balancer@0.1.0`, frozen: kept so plugins built for it keep working.
#[allow(missing_docs)]
mod v0_1 {
    wasmtime::component::bindgen!({
        path: "../wit/0.1.0",
        world: "veer:balancer/balancer@0.1.0",
    });
}

/// `veer:balancer@0.2.0`, the current world (what `veer-sdk` builds).
#[allow(missing_docs)]
mod v0_2 {
    wasmtime::component::bindgen!({
        path: "../wit/0.2.0",
        world: "veer:balancer/balancer@0.2.0",
    });
}

/// The worlds this host serves, newest first.
pub const WORLDS: &str = "veer:balancer@0.2.0 and veer:balancer@0.1.0";

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
const MAX_RESPONSE_HEADERS: usize = 8;

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

/// Conversions from host types into one world's generated types; the two
/// worlds have the same shapes under different paths.
macro_rules! world_conversions {
    ($world:ident) => {
        impl $world::veer::balancer::types::Method {
            fn from_http(method: &http::Method) -> Self {
                use $world::veer::balancer::types::Method as M;
                match *method {
                    http::Method::GET => M::Get,
                    http::Method::HEAD => M::Head,
                    http::Method::POST => M::Post,
                    http::Method::PUT => M::Put,
                    http::Method::DELETE => M::Delete,
                    http::Method::CONNECT => M::Connect,
                    http::Method::OPTIONS => M::Options,
                    http::Method::TRACE => M::Trace,
                    http::Method::PATCH => M::Patch,
                    ref other => M::Other(other.as_str().to_owned()),
                }
            }
        }

        impl From<std::net::IpAddr> for $world::veer::balancer::types::IpAddress {
            fn from(ip: std::net::IpAddr) -> Self {
                use $world::veer::balancer::types::IpAddress as A;
                match ip {
                    std::net::IpAddr::V4(v4) => {
                        let [a, b, c, d] = v4.octets();
                        A::Ipv4((a, b, c, d))
                    }
                    std::net::IpAddr::V6(v6) => {
                        let [a, b, c, d, e, f, g, h] = v6.segments();
                        A::Ipv6((a, b, c, d, e, f, g, h))
                    }
                }
            }
        }

        impl From<&BackendInfo> for $world::veer::balancer::types::Backend {
            fn from(b: &BackendInfo) -> Self {
                Self {
                    id: b.id,
                    address: b.address.clone(),
                    weight: b.weight,
                    labels: b.labels.clone(),
                }
            }
        }

        impl From<$world::veer::balancer::types::LogLevel> for tracing::Level {
            fn from(level: $world::veer::balancer::types::LogLevel) -> Self {
                use $world::veer::balancer::types::LogLevel as L;
                match level {
                    L::Debug => tracing::Level::DEBUG,
                    L::Info => tracing::Level::INFO,
                    L::Warn => tracing::Level::WARN,
                    L::Error => tracing::Level::ERROR,
                }
            }
        }

        impl $world::veer::balancer::types::Host for HostState {}
    };
}

world_conversions!(v0_1);
world_conversions!(v0_2);

/// A type-checked component, ready to instantiate, in its world.
enum Pre {
    V0_1(v0_1::BalancerPre<HostState>),
    V0_2(v0_2::BalancerPre<HostState>),
}

/// An instance's exports, in its world.
enum Exports {
    V0_1(v0_1::Balancer),
    V0_2(v0_2::Balancer),
}

/// The world a component was built for, from the version of the
/// `veer:balancer/…` interfaces it imports (`None`: it imports none).
fn world_of(component: &Component, engine: &Engine) -> Option<String> {
    component
        .component_type()
        .imports(engine)
        .find_map(|(name, _)| {
            let rest = name.strip_prefix("veer:balancer/")?;
            Some(
                rest.split_once('@')
                    .map_or("(unversioned)", |(_, v)| v)
                    .to_string(),
            )
        })
}

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
    cache: Option<Arc<Cache>>,
    _ticker: Arc<Ticker>,
}

/// Compiled components on disk, keyed by the SHA-256 of the component and the
/// engine's settings. Each entry starts with the SHA-256 of the artifact, which
/// is checked before the artifact is trusted.
struct Cache {
    dir: std::path::PathBuf,
    /// Hash of the engine settings compiled code depends on.
    engine_key: u64,
    hits: std::sync::atomic::AtomicU64,
    compiles: std::sync::atomic::AtomicU64,
}

const DIGEST: usize = 32;

fn sha256(bytes: &[u8]) -> [u8; DIGEST] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Cache {
    fn path(&self, component: &[u8]) -> std::path::PathBuf {
        self.dir.join(format!(
            "{}-{:016x}.cwasm",
            hex(&sha256(component)),
            self.engine_key
        ))
    }

    /// A cached compilation of `bytes`, if a sound one is there.
    fn get(&self, engine: &Engine, bytes: &[u8]) -> Option<Component> {
        let path = self.path(bytes);
        let entry = std::fs::read(&path).ok()?;
        let sound = entry.len() > DIGEST && entry[..DIGEST] == sha256(&entry[DIGEST..]);
        if !sound {
            tracing::warn!(entry = %path.display(), "corrupt compiled-plugin cache entry; recompiling");
            return None;
        }
        // SAFETY: `deserialize` runs machine code from the artifact, so it must
        // be one wasmtime produced. This one is: it was written by `put` below
        // from `precompile_component`, and its SHA-256 was just checked, so it
        // is byte for byte what was written (a truncated or altered file is
        // refused above). wasmtime itself refuses artifacts of another
        // version or settings. The cache folder is the operator's, like the
        // binary.
        #[allow(unsafe_code)]
        let component = unsafe { Component::deserialize(engine, &entry[DIGEST..]) };
        match component {
            Ok(component) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                Some(component)
            }
            Err(e) => {
                tracing::info!(entry = %path.display(), "stale compiled-plugin cache entry ({e}); recompiling");
                None
            }
        }
    }

    /// Stores a compilation, atomically (write aside, then rename).
    fn put(&self, bytes: &[u8], artifact: &[u8]) {
        let path = self.path(bytes);
        // Unique per writer: threads of one process may store the same entry.
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = WRITES.fetch_add(1, Ordering::Relaxed);
        let aside = path.with_extension(format!("tmp{}-{n}", std::process::id()));
        let mut entry = Vec::with_capacity(DIGEST + artifact.len());
        entry.extend_from_slice(&sha256(artifact));
        entry.extend_from_slice(artifact);
        let written = std::fs::create_dir_all(&self.dir)
            .and_then(|()| std::fs::write(&aside, &entry))
            .and_then(|()| std::fs::rename(&aside, &path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&aside);
            tracing::warn!(dir = %self.dir.display(), "could not write the compiled-plugin cache: {e}");
        }
    }
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
    /// `cache_dir` keeps compiled plugins across restarts.
    pub fn new(cache_dir: Option<std::path::PathBuf>) -> Result<Runtime, PluginError> {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        let engine = Engine::new(&config).map_err(PluginError::engine)?;

        let mut linker = Linker::new(&engine);
        type Data = wasmtime::component::HasSelf<HostState>;
        v0_1::Balancer::add_to_linker::<HostState, Data>(&mut linker, |state| state)
            .map_err(PluginError::engine)?;
        v0_2::Balancer::add_to_linker::<HostState, Data>(&mut linker, |state| state)
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

        let cache = cache_dir.map(|dir| {
            use std::hash::{Hash, Hasher};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            engine.precompile_compatibility_hash().hash(&mut hasher);
            Arc::new(Cache {
                dir,
                engine_key: hasher.finish(),
                hits: Default::default(),
                compiles: Default::default(),
            })
        });
        Ok(Runtime {
            engine,
            linker: Arc::new(linker),
            cache,
            _ticker: Arc::new(Ticker { stop }),
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
                    origin: source.into(),
                    reason: format!("{e:#}"),
                })?;
        let world = world_of(&component, &self.engine);
        let wrong = |version: &str, e: wasmtime::Error| PluginError::WrongWorld {
            origin: source.into(),
            reason: format!(
                "it was built for veer:balancer@{version} but does not match it: {e:#}"
            ),
        };
        let pre = match world.as_deref() {
            Some("0.2.0") => {
                Pre::V0_2(v0_2::BalancerPre::new(instance_pre).map_err(|e| wrong("0.2.0", e))?)
            }
            Some("0.1.0") => {
                Pre::V0_1(v0_1::BalancerPre::new(instance_pre).map_err(|e| wrong("0.1.0", e))?)
            }
            Some(other) => {
                return Err(PluginError::WrongWorld {
                    origin: source.into(),
                    reason: format!(
                        "it was built for veer:balancer@{other}, which this Veer does not serve"
                    ),
                });
            }
            None => match v0_2::BalancerPre::new(instance_pre.clone()) {
                Ok(pre) => Pre::V0_2(pre),
                Err(e2) => Pre::V0_1(v0_1::BalancerPre::new(instance_pre).map_err(|e1| {
                    PluginError::WrongWorld {
                        origin: source.into(),
                        reason: format!("its exports match neither world: {e2:#}; {e1:#}"),
                    }
                })?),
            },
        };
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
        let (name, version) = match &probe.exports {
            Exports::V0_1(b) => b.call_info(&mut probe.store).map(|i| (i.name, i.version)),
            Exports::V0_2(b) => b.call_info(&mut probe.store).map(|i| (i.name, i.version)),
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
    /// The world it was built for, e.g. `veer:balancer@0.2.0`.
    pub fn world(&self) -> &'static str {
        match self.pre {
            Pre::V0_1(_) => "veer:balancer@0.1.0",
            Pre::V0_2(_) => "veer:balancer@0.2.0",
        }
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
    /// Headers the plugin asked to add to the response.
    pub response_headers: Vec<(HeaderName, HeaderValue)>,
}

/// One instance of a plugin with its own `Store`. Not shared between threads.
pub struct Instance {
    store: Store<HostState>,
    exports: Exports,
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
        let exports = match &plugin.pre {
            Pre::V0_1(pre) => pre.instantiate(&mut store).map(Exports::V0_1),
            Pre::V0_2(pre) => pre.instantiate(&mut store).map(Exports::V0_2),
        }
        .map_err(|e| PluginError::Trapped {
            plugin: plugin.name.to_string(),
            call: "instantiate",
            reason: describe_trap(&e),
        })?;
        Ok(Instance {
            store,
            exports,
            limits,
        })
    }

    /// Calls `init` with the pool's config (JSON). `Ok(Err(msg))` is the
    /// plugin refusing its configuration.
    pub fn init(&mut self, config_json: &str) -> Result<Result<(), String>, CallError> {
        self.store
            .set_epoch_deadline(Limits::ticks(self.limits.setup_timeout));
        match &self.exports {
            Exports::V0_1(b) => b.call_init(&mut self.store, config_json),
            Exports::V0_2(b) => b.call_init(&mut self.store, config_json),
        }
        .map_err(classify)
    }

    /// Pushes the backend set.
    pub fn set_backends(&mut self, backends: &[BackendInfo]) -> Result<(), CallError> {
        self.store
            .set_epoch_deadline(Limits::ticks(self.limits.setup_timeout));
        match &self.exports {
            Exports::V0_1(b) => {
                let list: Vec<_> = backends.iter().map(Into::into).collect();
                b.call_set_backends(&mut self.store, &list)
            }
            Exports::V0_2(b) => {
                let list: Vec<_> = backends.iter().map(Into::into).collect();
                b.call_set_backends(&mut self.store, &list)
            }
        }
        .map_err(classify)
    }

    /// Calls `select`. `scope` is lent to the plugin for the call and handed
    /// back in all cases.
    pub fn select(
        &mut self,
        method: &http::Method,
        host: &str,
        path: &str,
        client: std::net::IpAddr,
        scope: &mut RequestScope,
    ) -> Result<Vec<u32>, CallError> {
        self.store
            .set_epoch_deadline(Limits::ticks(self.limits.select_timeout));
        self.store.data_mut().request = Some(std::mem::take(scope));
        let result = match &self.exports {
            Exports::V0_1(b) => {
                let method = v0_1::veer::balancer::types::Method::from_http(method);
                b.call_select(&mut self.store, &method, host, path, client.into())
            }
            Exports::V0_2(b) => {
                let method = v0_2::veer::balancer::types::Method::from_http(method);
                b.call_select(&mut self.store, &method, host, path, client.into())
            }
        };
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

/// What the `host` imports do, shared by every world version.
impl HostState {
    fn header(&self, name: &str) -> Option<String> {
        let value = self.request.as_ref()?.headers.get(name)?;
        value.to_str().ok().map(str::to_owned)
    }

    fn cookie(&self, name: &str) -> Option<String> {
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

    fn query_param(&self, name: &str) -> Option<String> {
        let query = self.request.as_ref()?.uri.query()?;
        query.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (key == name).then(|| value.to_owned())
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

    fn log(&self, level: tracing::Level, message: &str) {
        if !crate::stats::plugin_log_allowed() {
            return;
        }
        let plugin = &*self.plugin;
        match level {
            tracing::Level::DEBUG => tracing::debug!(plugin, "{message}"),
            tracing::Level::INFO => tracing::info!(plugin, "{message}"),
            tracing::Level::WARN => tracing::warn!(plugin, "{message}"),
            _ => tracing::error!(plugin, "{message}"),
        }
    }

    fn set_response_header(&mut self, name: &str, value: &str) -> Result<(), String> {
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
        let stats = self.stats.get(id as usize)?;
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
        self.stats.get(id as usize).map(|s| stats_v0_2(s))
    }
    fn all_in_flight(&mut self) -> Vec<u32> {
        self.stats.iter().map(|s| s.in_flight()).collect()
    }
    fn all_stats(&mut self) -> Vec<v0_2::veer::balancer::types::BackendStats> {
        self.stats.iter().map(|s| stats_v0_2(s)).collect()
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
