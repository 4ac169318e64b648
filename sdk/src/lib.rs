//! Write a Veer load-balancing strategy as a WebAssembly component.
//!
//! A strategy *orders* the backends of a pool for each request; the Veer host
//! does everything else (connections, health, retries, live counters). You
//! implement [`Strategy`] and export it with [`export_strategy!`]:
//!
//! ```
//! use veer_sdk::{export_strategy, Backend, BackendId, Candidates, Config, Rejection, Request, Strategy};
//!
//! /// Always prefers the first backend; the others are fallbacks in order.
//! struct FirstUp(Vec<BackendId>);
//!
//! impl Strategy for FirstUp {
//!     const NAME: &'static str = "first-up";
//!     const VERSION: &'static str = "1.0.0";
//!
//!     fn new(config: Config) -> Result<Self, String> {
//!         config.expect_empty()?;
//!         Ok(FirstUp(Vec::new()))
//!     }
//!     fn set_backends(&mut self, backends: &[Backend]) {
//!         self.0 = backends.iter().map(|b| b.id).collect();
//!     }
//!     fn select(&mut self, _request: &Request<'_>, out: &mut Candidates) -> Result<(), Rejection> {
//!         out.extend(self.0.iter().copied());
//!         Ok(())
//!     }
//! }
//!
//! export_strategy!(FirstUp);
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2` (crate type
//! `cdylib`) and drop the `.wasm` file where the Veer configuration names it.
//! Test it natively with [`testing::FakeHost`].
//!
//! The WIT contract behind this crate is `veer:balancer@0.3.0` (`wit/0.3.0/`
//! in the Veer repository); its documentation is the reference for every
//! call. The types here are the SDK's own, not the generated ones, so your
//! source keeps building when the SDK moves to a newer contract.
#![deny(missing_docs)]

mod host;
pub mod testing;
mod types;

pub use host::{
    Request, all_in_flight, all_stats, backend_stats, log, random, set_response_header,
};
pub use types::{
    Backend, BackendId, BackendStats, Candidates, Capabilities, Failure, LogLevel, Method, Outcome,
    Rejection, TlsInfo,
};

/// A load-balancing strategy: orders a pool's backends for each request.
///
/// The host keeps one instance per worker thread and never calls one
/// concurrently, so `&mut self` is all the synchronisation you need.
pub trait Strategy: Sized + 'static {
    /// The name users give in a pool's `strategy` key, e.g. `"round-robin"`.
    const NAME: &'static str;
    /// This plugin's version, e.g. `env!("CARGO_PKG_VERSION")`.
    const VERSION: &'static str;
    /// Optional calls this strategy wants from the host:
    /// [`Capabilities::OUTCOMES`] for [`Strategy::on_outcome`],
    /// [`Capabilities::HAND_OVER`] for [`Strategy::export_state`] and
    /// [`Strategy::import_state`], [`Capabilities::PEAK_LATENCY`] to read
    /// [`BackendStats::latency_peak_ewma_us`]. None by default.
    const CAPABILITIES: Capabilities = Capabilities::NONE;

    /// Builds the strategy from the pool's `strategy_config`. Return
    /// `Err(message)` to refuse it; the operator sees the message next to the
    /// pool's name, so say what is wrong and what is accepted.
    fn new(config: Config) -> Result<Self, String>;

    /// Replaces the backend set (at start and when the pool changes; never
    /// per request). Never empty; ids are dense from 0.
    fn set_backends(&mut self, backends: &[Backend]);

    /// Puts the backends for this request in `out`, best first; the host
    /// tries them in order. Leaving `out` empty counts as a plugin failure
    /// (the pool's failure policy serves the request); `Err` says why no
    /// backend is named (see [`Rejection`]).
    fn select(&mut self, request: &Request<'_>, out: &mut Candidates) -> Result<(), Rejection>;

    /// How an attempt from this instance's answer went. Called only with
    /// [`Capabilities::OUTCOMES`], once per attempt. Keep it cheap.
    fn on_outcome(&mut self, outcome: &Outcome) {
        let _ = outcome;
    }

    /// State for the instance replacing this one on its worker (at most
    /// 1 MiB) when the pool is rebuilt (a new version swapped in, or a
    /// reload) and both versions ask for [`Capabilities::HAND_OVER`].
    fn export_state(&self) -> Vec<u8> {
        Vec::new()
    }

    /// State from the instance this one replaces on its worker, after `new`
    /// and `set_backends`, before the first `select`. `Err` for state it
    /// cannot read: the instance starts cold and the message is logged.
    fn import_state(&mut self, state: &[u8]) -> Result<(), String> {
        let _ = state;
        Ok(())
    }
}

/// A pool's strategy configuration, as the JSON text of a TOML table.
#[derive(Debug, Clone)]
pub struct Config {
    json: String,
}

impl Config {
    /// A configuration from JSON text, as the host passes it. Useful to unit
    /// test a strategy natively (`cargo test`) without a host.
    pub fn new(json: impl Into<String>) -> Config {
        Config { json: json.into() }
    }

    /// The configuration as JSON text (an object; `{}` when none was given).
    pub fn as_json(&self) -> &str {
        &self.json
    }

    /// Whether the configuration is the empty object.
    pub fn is_empty(&self) -> bool {
        let inner = self.json.trim();
        inner
            .strip_prefix('{')
            .and_then(|s| s.strip_suffix('}'))
            .is_some_and(|s| s.trim().is_empty())
    }

    /// Parses the configuration into `T` (derive `serde::Deserialize`; add
    /// `#[serde(deny_unknown_fields)]` so typos are refused). The error is
    /// ready to return from [`Strategy::new`].
    #[cfg(feature = "json")]
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, String> {
        serde_json::from_str(&self.json).map_err(|e| format!("invalid strategy_config: {e}"))
    }

    /// Refuses any configuration: for strategies that take none.
    pub fn expect_empty(&self) -> Result<(), String> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "this strategy takes no configuration; remove `strategy_config` (got {})",
                self.json
            ))
        }
    }
}

#[doc(hidden)]
pub mod __private {
    //! Generated bindings and the glue `export_strategy!` expands to. Not a
    //! public API: it changes with the WIT world.
    #![allow(missing_docs)]

    pub mod bindings {
        wit_bindgen::generate!({
            world: "veer:balancer/balancer@0.3.0",
            path: "../wit/0.3.0",
            pub_export_macro: true,
            export_macro_name: "__veer_export_balancer",
            default_bindings_module: "veer_sdk::__private::bindings",
            generate_all,
        });
    }

    pub use bindings::exports::veer::balancer::strategy as exported;
    pub use bindings::exports::veer::balancer::strategy::Guest;
    use bindings::veer::balancer::types as wit;
    pub use bindings::veer::http::types::Request as HostRequest;
    pub use std::cell::RefCell;

    use super::*;

    /// The one strategy instance in this component and its reused answer.
    pub struct Slot<T> {
        strategy: Option<T>,
        candidates: Candidates,
    }

    impl<T> Default for Slot<T> {
        fn default() -> Slot<T> {
            Slot::new()
        }
    }

    impl<T> Slot<T> {
        pub const fn new() -> Slot<T> {
            Slot {
                strategy: None,
                candidates: Candidates { ids: Vec::new() },
            }
        }
    }

    pub fn info<T: Strategy>() -> wit::PluginInfo {
        let mut capabilities = wit::Capabilities::empty();
        if T::CAPABILITIES.contains(Capabilities::OUTCOMES) {
            capabilities = capabilities | wit::Capabilities::OUTCOMES;
        }
        if T::CAPABILITIES.contains(Capabilities::HAND_OVER) {
            capabilities = capabilities | wit::Capabilities::HAND_OVER;
        }
        if T::CAPABILITIES.contains(Capabilities::PEAK_LATENCY) {
            capabilities = capabilities | wit::Capabilities::PEAK_LATENCY;
        }
        wit::PluginInfo {
            name: T::NAME.to_string(),
            version: T::VERSION.to_string(),
            capabilities,
        }
    }

    pub fn init<T: Strategy>(slot: &RefCell<Slot<T>>, config: String) -> Result<(), String> {
        panics_to_the_log();
        let strategy = T::new(Config { json: config })?;
        slot.borrow_mut().strategy = Some(strategy);
        Ok(())
    }

    pub fn set_backends<T: Strategy>(slot: &RefCell<Slot<T>>, backends: Vec<wit::Backend>) {
        let backends: Vec<Backend> = backends
            .into_iter()
            .map(|b| Backend {
                id: b.id,
                address: b.address,
                weight: b.weight,
                labels: b.labels,
            })
            .collect();
        if let Some(strategy) = slot.borrow_mut().strategy.as_mut() {
            strategy.set_backends(&backends);
        }
    }

    pub fn select<T: Strategy>(
        slot: &RefCell<Slot<T>>,
        request: &HostRequest,
    ) -> Result<Vec<BackendId>, wit::Rejection> {
        let mut slot = slot.borrow_mut();
        let Slot {
            strategy,
            candidates,
        } = &mut *slot;
        let Some(strategy) = strategy.as_mut() else {
            // `select` before `init` breaks the host contract.
            return Err(wit::Rejection::Defer("select before init".into()));
        };
        candidates.clear();
        match strategy.select(&Request::from_host(request), candidates) {
            Ok(()) => Ok(candidates.to_vec()),
            Err(Rejection::Refuse(reason)) => Err(wit::Rejection::Refuse(reason)),
            Err(Rejection::Defer(reason)) => Err(wit::Rejection::Defer(reason)),
        }
    }

    pub fn on_outcome<T: Strategy>(slot: &RefCell<Slot<T>>, outcome: wit::Outcome) {
        let outcome = Outcome {
            backend: outcome.backend,
            attempt: outcome.attempt,
            status: outcome.status,
            latency_us: outcome.latency_us,
            failure: outcome.failure.map(|f| match f {
                wit::Failure::Connect => Failure::Connect,
                wit::Failure::Timeout => Failure::Timeout,
                wit::Failure::Reset => Failure::Reset,
                wit::Failure::Protocol => Failure::Protocol,
            }),
        };
        if let Some(strategy) = slot.borrow_mut().strategy.as_mut() {
            strategy.on_outcome(&outcome);
        }
    }

    pub fn export_state<T: Strategy>(slot: &RefCell<Slot<T>>) -> Vec<u8> {
        slot.borrow()
            .strategy
            .as_ref()
            .map(|s| s.export_state())
            .unwrap_or_default()
    }

    pub fn import_state<T: Strategy>(
        slot: &RefCell<Slot<T>>,
        state: Vec<u8>,
    ) -> Result<(), String> {
        match slot.borrow_mut().strategy.as_mut() {
            Some(strategy) => strategy.import_state(&state),
            None => Err("import-state before init".into()),
        }
    }

    /// A panic becomes one line in Veer's log, with its message and place,
    /// before the plugin traps (the default hook would read the
    /// environment and write to stderr, which a plugin has not).
    fn panics_to_the_log() {
        #[cfg(target_arch = "wasm32")]
        std::panic::set_hook(Box::new(|info| {
            let message = info
                .payload()
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
                .unwrap_or("(no message)");
            let place = info
                .location()
                .map(|l| format!(" at {}:{}:{}", l.file(), l.line(), l.column()))
                .unwrap_or_default();
            crate::log(LogLevel::Error, &format!("panicked{place}: {message}"));
        }));
    }
}

/// Exports a [`Strategy`] implementation as this component's balancer.
///
/// Use it once per plugin crate, at the crate root:
/// `veer_sdk::export_strategy!(MyStrategy);`. It expands to nothing outside
/// Wasm, so native unit tests build as usual.
#[macro_export]
macro_rules! export_strategy {
    ($strategy:ty) => {
        // Only in the plugin: a native build (`cargo test`) has no host to
        // export to, and the exports' names (`veer:balancer/strategy@…#select`)
        // are not symbols a native linker takes.
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct __VeerExport;

            ::std::thread_local! {
                static __VEER_SLOT: $crate::__private::RefCell<$crate::__private::Slot<$strategy>> =
                    const { $crate::__private::RefCell::new($crate::__private::Slot::new()) };
            }

            impl $crate::__private::Guest for __VeerExport {
                fn info() -> $crate::__private::bindings::veer::balancer::types::PluginInfo {
                    $crate::__private::info::<$strategy>()
                }
                fn init(config: ::std::string::String) -> ::std::result::Result<(), ::std::string::String> {
                    __VEER_SLOT.with(|slot| $crate::__private::init::<$strategy>(slot, config))
                }
                fn set_backends(backends: ::std::vec::Vec<$crate::__private::bindings::veer::balancer::types::Backend>) {
                    __VEER_SLOT.with(|slot| $crate::__private::set_backends::<$strategy>(slot, backends))
                }
                fn select(
                    request: &$crate::__private::HostRequest,
                ) -> ::std::result::Result<::std::vec::Vec<$crate::BackendId>, $crate::__private::bindings::veer::balancer::types::Rejection> {
                    __VEER_SLOT.with(|slot| $crate::__private::select::<$strategy>(slot, request))
                }
                fn on_outcome(outcome: $crate::__private::bindings::veer::balancer::types::Outcome) {
                    __VEER_SLOT.with(|slot| $crate::__private::on_outcome::<$strategy>(slot, outcome))
                }
                fn export_state() -> ::std::vec::Vec<u8> {
                    __VEER_SLOT.with(|slot| $crate::__private::export_state::<$strategy>(slot))
                }
                fn import_state(state: ::std::vec::Vec<u8>) -> ::std::result::Result<(), ::std::string::String> {
                    __VEER_SLOT.with(|slot| $crate::__private::import_state::<$strategy>(slot, state))
                }
            }

            $crate::__private::bindings::__veer_export_balancer!(__VeerExport with_types_in $crate::__private::bindings);
        };
    };
}
