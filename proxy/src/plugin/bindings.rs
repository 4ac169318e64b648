//! wasmtime's `bindgen!` for every world this host serves, and conversions
//! from host types into each world's generated types. Nothing outside
//! `plugin/` sees these: plugins of every version look the same to the proxy.

use wasmtime::component::{Component, ComponentExportIndex, Func, InstancePre, TypedFunc};
use wasmtime::{Engine, Store};

use super::BackendInfo;
use super::host::HostState;

/// `veer:balancer@0.1.0`, frozen: kept so plugins built for it keep working.
#[allow(missing_docs)]
pub(super) mod v0_1 {
    wasmtime::component::bindgen!({
        path: "../wit/0.1.0",
        world: "veer:balancer/balancer@0.1.0",
    });
}

/// `veer:balancer@0.2.0`, frozen.
#[allow(missing_docs)]
pub(super) mod v0_2 {
    wasmtime::component::bindgen!({
        path: "../wit/0.2.0",
        world: "veer:balancer/balancer@0.2.0",
    });
}

/// `veer:balancer@0.3.0` with `veer:http@0.1.0`, the current world (what
/// `veer-sdk` builds). The request resource is the request lent to the
/// instance for a `select` call.
#[allow(missing_docs)]
pub(super) mod v0_3 {
    wasmtime::component::bindgen!({
        path: "../wit/0.3.0",
        world: "veer:balancer/balancer@0.3.0",
        with: {
            "veer:http/types.request": super::super::host::LentRequest,
        },
    });
}

/// Conversions from host types into one world's generated types; the two
/// worlds have the same shapes under different paths.
macro_rules! world_conversions {
    ($world:ident) => {
        impl $world::veer::balancer::types::Method {
            pub(super) fn from_http(method: &http::Method) -> Self {
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

impl v0_3::veer::http::types::Method {
    pub(super) fn from_http(method: &http::Method) -> Self {
        use v0_3::veer::http::types::Method as M;
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

impl From<std::net::IpAddr> for v0_3::veer::http::types::IpAddress {
    fn from(ip: std::net::IpAddr) -> Self {
        use v0_3::veer::http::types::IpAddress as A;
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

impl From<&BackendInfo> for v0_3::veer::balancer::types::Backend {
    fn from(b: &BackendInfo) -> Self {
        Self {
            id: b.id,
            address: b.address.clone(),
            weight: b.weight,
            labels: b.labels.clone(),
        }
    }
}

impl From<v0_3::veer::balancer::types::LogLevel> for tracing::Level {
    fn from(level: v0_3::veer::balancer::types::LogLevel) -> Self {
        use v0_3::veer::balancer::types::LogLevel as L;
        match level {
            L::Debug => tracing::Level::DEBUG,
            L::Info => tracing::Level::INFO,
            L::Warn => tracing::Level::WARN,
            L::Error => tracing::Level::ERROR,
        }
    }
}

impl v0_3::veer::balancer::types::Host for HostState {}

/// A type-checked component, ready to instantiate, in its world.
pub(super) struct Pre {
    instance_pre: InstancePre<HostState>,
    world: PreWorld,
    /// `select`, called through [`Answer`] rather than the generated
    /// binding, which would copy the whole answer.
    select: ComponentExportIndex,
}

/// The generated export indices of one world.
enum PreWorld {
    V0_1(v0_1::BalancerIndices),
    V0_2(v0_2::BalancerIndices),
    V0_3(v0_3::BalancerIndices),
}

/// An instance's exports, in its world.
pub(super) enum Exports {
    V0_1(v0_1::Balancer),
    V0_2(v0_2::Balancer),
    V0_3(v0_3::Balancer),
}

impl Pre {
    /// `instance_pre` as a `veer:balancer@0.2.0` plugin; fails if its
    /// exports do not match that world.
    pub(super) fn v0_2(instance_pre: InstancePre<HostState>) -> wasmtime::Result<Pre> {
        let indices = v0_2::BalancerIndices::new(&instance_pre)?;
        Pre::new(instance_pre, PreWorld::V0_2(indices))
    }

    /// The same for `veer:balancer@0.3.0`.
    pub(super) fn v0_3(instance_pre: InstancePre<HostState>) -> wasmtime::Result<Pre> {
        let indices = v0_3::BalancerIndices::new(&instance_pre)?;
        Pre::new(instance_pre, PreWorld::V0_3(indices))
    }

    /// The same for `veer:balancer@0.1.0`.
    pub(super) fn v0_1(instance_pre: InstancePre<HostState>) -> wasmtime::Result<Pre> {
        let indices = v0_1::BalancerIndices::new(&instance_pre)?;
        Pre::new(instance_pre, PreWorld::V0_1(indices))
    }

    fn new(instance_pre: InstancePre<HostState>, world: PreWorld) -> wasmtime::Result<Pre> {
        let component = instance_pre.component();
        // 0.3.0 exports its calls in the interface `strategy`.
        let interface = match world {
            PreWorld::V0_3(_) => Some(
                component
                    .get_export_index(None, "veer:balancer/strategy@0.3.0")
                    .ok_or_else(|| wasmtime::format_err!("no `strategy` export"))?,
            ),
            _ => None,
        };
        let select = component
            .get_export_index(interface.as_ref(), "select")
            .ok_or_else(|| wasmtime::format_err!("no `select` export"))?;
        Ok(Pre {
            instance_pre,
            world,
            select,
        })
    }

    /// The world, e.g. `veer:balancer@0.2.0`.
    pub(super) fn world(&self) -> &'static str {
        match self.world {
            PreWorld::V0_1(_) => "veer:balancer@0.1.0",
            PreWorld::V0_2(_) => "veer:balancer@0.2.0",
            PreWorld::V0_3(_) => "veer:balancer@0.3.0",
        }
    }

    /// Whether the world lets a plugin ask for optional calls
    /// (`capabilities`, 0.3.0 and later).
    pub(super) fn has_capabilities(&self) -> bool {
        match self.world {
            PreWorld::V0_1(_) | PreWorld::V0_2(_) => false,
            PreWorld::V0_3(_) => true,
        }
    }

    /// Instantiates the component in `store`: its exports and `select`.
    pub(super) fn instantiate(
        &self,
        store: &mut Store<HostState>,
    ) -> wasmtime::Result<(Exports, Func)> {
        let instance = self.instance_pre.instantiate(&mut *store)?;
        let select = instance
            .get_func(&mut *store, self.select)
            .ok_or_else(|| wasmtime::format_err!("no `select` export"))?;
        // Checked once per instance, so the calls below can skip it.
        let exports = match &self.world {
            PreWorld::V0_1(indices) => {
                select.typed::<SelectParams<'_, v0_1::veer::balancer::types::Method>, (Answer,)>(
                    &*store,
                )?;
                Exports::V0_1(indices.load(&mut *store, &instance)?)
            }
            PreWorld::V0_2(indices) => {
                select.typed::<SelectParams<'_, v0_2::veer::balancer::types::Method>, (Answer,)>(
                    &*store,
                )?;
                Exports::V0_2(indices.load(&mut *store, &instance)?)
            }
            PreWorld::V0_3(indices) => {
                select
                    .typed::<SelectV0_3, (Result<Answer, v0_3::veer::balancer::types::Rejection>,)>(
                        &*store,
                    )?;
                Exports::V0_3(indices.load(&mut *store, &instance)?)
            }
        };
        Ok((exports, select))
    }
}

/// `select`'s parameters in `veer:balancer@0.3.0`: the lent request.
type SelectV0_3 = (wasmtime::component::Resource<super::host::LentRequest>,);

/// What `select` answered.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Backends to try, best first.
    Order(Answer),
    /// No backend of the pool may serve the request (0.3.0 `refuse`).
    Refuse(String),
    /// The plugin cannot decide (0.3.0 `defer`): the failure policy serves.
    Defer(String),
}

/// `select`'s parameters in a world whose `method` type is `M`.
type SelectParams<'a, M> = (&'a M, &'a str, &'a str, IpAddressOf<M>);

/// Each world's `ip-address` type, found from its `method` type.
type IpAddressOf<M> = <M as WorldTypes>::IpAddress;

/// The types of one world that `select` takes.
trait WorldTypes {
    type IpAddress: wasmtime::component::Lower;
}

impl WorldTypes for v0_1::veer::balancer::types::Method {
    type IpAddress = v0_1::veer::balancer::types::IpAddress;
}

impl WorldTypes for v0_2::veer::balancer::types::Method {
    type IpAddress = v0_2::veer::balancer::types::IpAddress;
}

/// Calls `select` (from [`Pre::instantiate`], in the world of `exports`).
/// For 0.3.0 the request is what `store`'s data has lent.
pub(super) fn select(
    exports: &Exports,
    select: Func,
    store: &mut Store<HostState>,
    call: &super::Call<'_>,
) -> wasmtime::Result<Verdict> {
    match exports {
        Exports::V0_1(_) => {
            type M = v0_1::veer::balancer::types::Method;
            // SAFETY: `Pre::instantiate` checked `select` against these
            // types for this instance.
            #[allow(unsafe_code)]
            let typed =
                unsafe { TypedFunc::<SelectParams<'_, M>, (Answer,)>::new_unchecked(select) };
            let method = M::from_http(call.method);
            typed
                .call(store, (&method, call.host, call.path, call.client.into()))
                .map(|(a,)| Verdict::Order(a))
        }
        Exports::V0_2(_) => {
            type M = v0_2::veer::balancer::types::Method;
            // SAFETY: as above.
            #[allow(unsafe_code)]
            let typed =
                unsafe { TypedFunc::<SelectParams<'_, M>, (Answer,)>::new_unchecked(select) };
            let method = M::from_http(call.method);
            typed
                .call(store, (&method, call.host, call.path, call.client.into()))
                .map(|(a,)| Verdict::Order(a))
        }
        Exports::V0_3(_) => {
            use v0_3::veer::balancer::types::Rejection;
            // SAFETY: as above.
            #[allow(unsafe_code)]
            let typed = unsafe {
                TypedFunc::<SelectV0_3, (Result<Answer, Rejection>,)>::new_unchecked(select)
            };
            let lent = wasmtime::component::Resource::new_borrow(0);
            typed.call(store, (lent,)).map(|(answer,)| match answer {
                Ok(answer) => Verdict::Order(answer),
                Err(Rejection::Refuse(reason)) => Verdict::Refuse(reason),
                Err(Rejection::Defer(reason)) => Verdict::Defer(reason),
            })
        }
    }
}

/// The world a component was built for, from the version of the
/// `veer:balancer/…` interfaces it imports (`None`: it imports none).
pub(super) fn world_of(component: &Component, engine: &Engine) -> Option<String> {
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

/// The most backend ids the host reads from one `select` answer. The rest
/// of a longer answer stays in the plugin's memory, never copied: a plugin
/// answering millions of ids costs the host no more than one answering
/// this many. No strategy needs more (the host tries at most a few; pools
/// are not that large), and a longer answer is counted
/// (`plugin_long_answers`).
pub const MAX_ANSWER: usize = 1024;

/// A strategy's order of backend ids: on the stack up to 16 (most pools),
/// so a request's order costs no allocation.
pub type Order = smallvec::SmallVec<[u32; 16]>;

/// `select`'s answer as the host reads it: the first [`MAX_ANSWER`] ids at
/// most, and how many the plugin gave.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Answer {
    /// The ids read, in the plugin's order.
    pub ids: Order,
    /// How many ids the plugin answered (more than `ids.len()` when cut).
    pub len: usize,
}

impl Answer {
    /// Reads the list of `len` `u32`s at `ptr` in `memory` (a plugin's
    /// linear memory), as the canonical ABI lays it out, up to
    /// [`MAX_ANSWER`] of them. The whole list must lie in memory and be
    /// aligned, as the component model requires of any list; only its head
    /// is copied.
    fn read(memory: &[u8], ptr: usize, len: usize) -> wasmtime::Result<Answer> {
        let end = len.checked_mul(4).and_then(|bytes| ptr.checked_add(bytes));
        if end.is_none_or(|end| end > memory.len()) {
            wasmtime::bail!("select's answer lies outside the plugin's memory");
        }
        if !ptr.is_multiple_of(4) {
            wasmtime::bail!("select's answer is not aligned");
        }
        let head = &memory[ptr..ptr + 4 * len.min(MAX_ANSWER)];
        let ids = head
            .chunks_exact(4)
            .map(|id| u32::from_le_bytes([id[0], id[1], id[2], id[3]]))
            .collect();
        Ok(Answer { ids, len })
    }
}

// SAFETY: `Answer` has the canonical ABI of `list<u32>` (a pointer and a
// length, both `u32`): `Lower` and `ABI` are those of `[u32]`, and
// `typecheck` accepts exactly what `[u32]` accepts.
#[allow(unsafe_code)]
unsafe impl wasmtime::component::ComponentType for Answer {
    type Lower = [wasmtime::ValRaw; 2];

    const ABI: wasmtime::component::__internal::CanonicalAbiInfo =
        wasmtime::component::__internal::CanonicalAbiInfo::POINTER_PAIR;

    fn typecheck(
        ty: &wasmtime::component::__internal::InterfaceType,
        types: &wasmtime::component::__internal::InstanceType<'_>,
    ) -> wasmtime::Result<()> {
        <[u32] as wasmtime::component::ComponentType>::typecheck(ty, types)
    }
}

// SAFETY: both lifts read the pointer and length where the canonical ABI
// puts them (flat: two `u32` values; in memory: two little-endian `u32`s)
// and check the list against the memory before reading any of it.
#[allow(unsafe_code)]
unsafe impl wasmtime::component::Lift for Answer {
    fn linear_lift_from_flat(
        cx: &mut wasmtime::component::__internal::LiftContext<'_>,
        _ty: wasmtime::component::__internal::InterfaceType,
        src: &Self::Lower,
    ) -> wasmtime::Result<Self> {
        let ptr = src[0].get_u32() as usize;
        let len = src[1].get_u32() as usize;
        Answer::read(cx.memory(), ptr, len)
    }

    fn linear_lift_from_memory(
        cx: &mut wasmtime::component::__internal::LiftContext<'_>,
        _ty: wasmtime::component::__internal::InterfaceType,
        bytes: &[u8],
    ) -> wasmtime::Result<Self> {
        let word = |at: usize| {
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        Answer::read(cx.memory(), word(0) as usize, word(4) as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Released WIT is never edited: every file under a released version's
    /// folder is listed in `wit/RELEASED.sha256` with its hash, and nothing
    /// else is there. (A new version gets its lines when it is released.)
    #[test]
    fn released_wit_files_are_never_edited() {
        use sha2::Digest;
        let wit = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit");
        let listed = std::fs::read_to_string(wit.join("RELEASED.sha256")).unwrap();
        let mut versions = std::collections::BTreeSet::new();
        let mut files = std::collections::BTreeSet::new();
        for line in listed.lines().filter(|l| !l.trim().is_empty()) {
            let (hash, path) = line.split_once("  ").expect("`sha256  path` lines");
            let bytes = std::fs::read(wit.join(path))
                .unwrap_or_else(|e| panic!("released file {path} is gone: {e}"));
            let actual: String = sha2::Sha256::digest(&bytes)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            assert_eq!(
                actual, hash,
                "{path} was edited after release: put changes in a new version"
            );
            versions.insert(path.split('/').next().unwrap().to_string());
            files.insert(path.to_string());
        }
        assert!(
            ["0.1.0", "0.2.0", "0.3.0"]
                .iter()
                .all(|v| versions.contains(*v))
        );
        for version in &versions {
            let mut stack = vec![wit.join(version)];
            while let Some(dir) = stack.pop() {
                for entry in std::fs::read_dir(&dir).unwrap() {
                    let path = entry.unwrap().path();
                    if path.is_dir() {
                        stack.push(path);
                        continue;
                    }
                    let relative = path
                        .strip_prefix(&wit)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned();
                    assert!(
                        files.contains(&relative),
                        "{relative} was added to released version {version}"
                    );
                }
            }
        }
    }

    /// `n` little-endian ids 0, 1, 2, … at `ptr` in a memory of `size` bytes.
    fn memory_with_list(size: usize, ptr: usize, n: u32) -> Vec<u8> {
        let mut memory = vec![0; size];
        for id in 0..n {
            let at = ptr + 4 * id as usize;
            memory[at..at + 4].copy_from_slice(&id.to_le_bytes());
        }
        memory
    }

    #[test]
    fn a_short_answer_is_read_whole() {
        let memory = memory_with_list(64, 8, 3);
        let answer = Answer::read(&memory, 8, 3).unwrap();
        assert_eq!(
            answer,
            Answer {
                ids: Order::from_slice(&[0, 1, 2]),
                len: 3
            }
        );
    }

    #[test]
    fn only_the_head_of_a_four_million_id_answer_is_read() {
        let n = 4_000_000;
        let memory = memory_with_list(16 << 20, 0, n);
        let answer = Answer::read(&memory, 0, n as usize).unwrap();
        assert_eq!(answer.len, n as usize, "the length the plugin gave");
        assert_eq!(answer.ids.len(), MAX_ANSWER);
        assert_eq!(answer.ids.capacity(), MAX_ANSWER, "no more was allocated");
        assert_eq!(answer.ids[..3], [0, 1, 2], "in the plugin's order");
    }

    #[test]
    fn an_answer_reaching_past_memory_is_refused_even_if_its_head_is_inside() {
        let memory = memory_with_list(4096, 0, 8);
        let err = Answer::read(&memory, 0, 1025).unwrap_err();
        assert!(err.to_string().contains("outside"), "{err}");
        assert!(Answer::read(&memory, 4096, 0).is_ok(), "empty, at the end");
        assert!(Answer::read(&memory, usize::MAX - 2, usize::MAX / 2).is_err());
    }

    #[test]
    fn a_misaligned_answer_is_refused() {
        let memory = memory_with_list(64, 0, 8);
        let err = Answer::read(&memory, 2, 1).unwrap_err();
        assert!(err.to_string().contains("aligned"), "{err}");
    }
}
