//! Write a Veer load-balancing strategy as a WebAssembly component.
//!
//! A strategy *orders* the backends of a pool for each request; the Veer host
//! does everything else (connections, health, retries, live counters). You
//! implement [`Strategy`] and export it with [`export_strategy!`]:
//!
//! ```
//! use veer_sdk::{export_strategy, Backend, BackendId, Config, Request, Strategy};
//!
//! /// Always prefers the first backend, the others are fallbacks in order.
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
//!     fn set_backends(&mut self, backends: Vec<Backend>) {
//!         self.0 = backends.iter().map(|b| b.id).collect();
//!     }
//!     fn select(&mut self, _request: &Request) -> Vec<BackendId> {
//!         self.0.clone()
//!     }
//! }
//!
//! export_strategy!(FirstUp);
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2` (crate type
//! `cdylib`) and drop the `.wasm` file where the Veer configuration names it.
//! The WIT contract behind this crate is `veer:balancer@0.2.0`
//! (`wit/0.2.0/` in the Veer repository); its documentation is the reference
//! for every call.
#![deny(missing_docs)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

#[doc(hidden)]
pub mod __private {
    //! Generated bindings and the glue `export_strategy!` expands to. Not a
    //! public API: it changes with the WIT world.
    #![allow(missing_docs)]

    #[allow(clippy::too_many_arguments)] // generated: ipv6 is a tuple of eight u16s
    pub mod bindings {
        wit_bindgen::generate!({
            world: "veer:balancer/balancer@0.2.0",
            path: "../wit/0.2.0",
            pub_export_macro: true,
            export_macro_name: "__veer_export_balancer",
            default_bindings_module: "veer_sdk::__private::bindings",
        });
    }

    pub use bindings::Guest;
    pub use bindings::veer::balancer::types::PluginInfo;
    pub use std::cell::RefCell;

    use super::*;

    /// The state of the one strategy instance in this component.
    pub type Slot<T> = RefCell<Option<T>>;

    pub fn info<T: Strategy>() -> PluginInfo {
        PluginInfo {
            name: T::NAME.to_string(),
            version: T::VERSION.to_string(),
        }
    }

    pub fn init<T: Strategy>(slot: &Slot<T>, config: String) -> Result<(), String> {
        let strategy = T::new(Config { json: config })?;
        *slot.borrow_mut() = Some(strategy);
        Ok(())
    }

    pub fn set_backends<T: Strategy>(slot: &Slot<T>, backends: Vec<Backend>) {
        if let Some(strategy) = slot.borrow_mut().as_mut() {
            strategy.set_backends(backends);
        }
    }

    pub fn select<T: Strategy>(
        slot: &Slot<T>,
        method: Method,
        host: String,
        path: String,
        client: IpAddress,
    ) -> Vec<BackendId> {
        let request = Request {
            method,
            host,
            path,
            client: client.into(),
        };
        match slot.borrow_mut().as_mut() {
            Some(strategy) => strategy.select(&request),
            // `select` before `init` breaks the host contract; an empty
            // answer makes the host fall back, which is the safe reaction.
            None => Vec::new(),
        }
    }
}

use __private::bindings::veer::balancer::host;
use __private::bindings::veer::balancer::types::IpAddress;
pub use __private::bindings::veer::balancer::types::{
    Backend, BackendId, BackendStats, LogLevel, Method,
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

    /// Builds the strategy from the pool's `strategy_config`. Return
    /// `Err(message)` to refuse it; the operator sees the message next to the
    /// pool's name, so say what is wrong and what is accepted.
    fn new(config: Config) -> Result<Self, String>;

    /// Replaces the backend set (at start and when the pool changes; never per
    /// request). Never empty; ids are dense from 0.
    fn set_backends(&mut self, backends: Vec<Backend>);

    /// Returns backend ids for this request, best first; the host tries them in
    /// order. An empty answer makes the host use its own round robin and
    /// counts as a plugin failure.
    fn select(&mut self, request: &Request) -> Vec<BackendId>;
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

/// The request a backend is being chosen for.
///
/// The fields are what every strategy may need; anything else is asked of the
/// host on demand ([`Request::header`], [`Request::cookie`],
/// [`Request::query_param`]), so unused parts of a request cost nothing.
#[derive(Debug)]
pub struct Request {
    /// The request method.
    pub method: Method,
    /// The host the client asked for, without a port.
    pub host: String,
    /// The path, without the query string.
    pub path: String,
    /// The client's address (the proxy's downstream peer).
    pub client: IpAddr,
}

impl Request {
    /// The first value of header `name` (case-insensitive), if any.
    pub fn header(&self, name: &str) -> Option<String> {
        host::header(name)
    }

    /// The value of cookie `name`, if any.
    pub fn cookie(&self, name: &str) -> Option<String> {
        host::cookie(name)
    }

    /// The first value of query parameter `name`, still percent-encoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        host::query_param(name)
    }
}

impl From<IpAddress> for IpAddr {
    fn from(ip: IpAddress) -> IpAddr {
        match ip {
            IpAddress::Ipv4((a, b, c, d)) => IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
            IpAddress::Ipv6((a, b, c, d, e, f, g, h)) => {
                IpAddr::V6(Ipv6Addr::new(a, b, c, d, e, f, g, h))
            }
        }
    }
}

/// Live statistics the host keeps for backend `id` of this pool (in-flight
/// requests, latency, health), shared by all workers; `None` for an unknown id.
pub fn backend_stats(id: BackendId) -> Option<BackendStats> {
    host::live_stats(id)
}

/// Live statistics of every backend of this pool, indexed by id (one host call).
pub fn all_stats() -> Vec<BackendStats> {
    host::all_stats()
}

/// In-flight requests of every backend of this pool, indexed by id: the
/// cheapest way to compare load across a large pool.
pub fn all_in_flight() -> Vec<u32> {
    host::all_in_flight()
}

/// Adds a header to the response the client gets for the request being
/// selected for (e.g. `set-cookie`). Only valid inside
/// [`Strategy::select`]; the error says why a header was refused.
pub fn set_response_header(name: &str, value: &str) -> Result<(), String> {
    host::set_response_header(name, value)
}

/// A random number from the host (seedable there for reproducible tests).
pub fn random() -> u64 {
    host::random()
}

/// Writes `message` to the proxy's log, tagged with this plugin's name.
/// The host rate-limits plugin logs: do not log per request.
pub fn log(level: LogLevel, message: &str) {
    host::log(level, message)
}

/// Helpers to unit-test a strategy natively with `cargo test`, without a
/// host. (Host functions such as [`Request::header`] or [`random`] are not
/// available there: keep the algorithm in functions that take what they need.)
pub mod testing {
    use super::{Backend, Method, Request};

    /// `n` backends: ids `0..n`, addresses `10.0.0.<id>:80`, weight 1, no labels.
    pub fn backends(n: u32) -> Vec<Backend> {
        (0..n)
            .map(|id| Backend {
                id,
                address: format!("10.0.0.{id}:80"),
                weight: 1,
                labels: Vec::new(),
            })
            .collect()
    }

    /// `GET /` for host `example.com` from 192.0.2.1.
    pub fn request() -> Request {
        Request {
            method: Method::Get,
            host: "example.com".into(),
            path: "/".into(),
            client: std::net::Ipv4Addr::new(192, 0, 2, 1).into(),
        }
    }
}

/// Exports a [`Strategy`] implementation as this component's balancer.
///
/// Use it once per plugin crate, at the crate root:
/// `veer_sdk::export_strategy!(MyStrategy);`
#[macro_export]
macro_rules! export_strategy {
    ($strategy:ty) => {
        const _: () = {
            struct __VeerExport;

            ::std::thread_local! {
                static __VEER_SLOT: $crate::__private::Slot<$strategy> =
                    const { $crate::__private::RefCell::new(None) };
            }

            impl $crate::__private::Guest for __VeerExport {
                fn info() -> $crate::__private::PluginInfo {
                    $crate::__private::info::<$strategy>()
                }
                fn init(config: ::std::string::String) -> ::std::result::Result<(), ::std::string::String> {
                    __VEER_SLOT.with(|slot| $crate::__private::init::<$strategy>(slot, config))
                }
                fn set_backends(backends: ::std::vec::Vec<$crate::Backend>) {
                    __VEER_SLOT.with(|slot| $crate::__private::set_backends::<$strategy>(slot, backends))
                }
                fn select(
                    method: $crate::Method,
                    host: ::std::string::String,
                    path: ::std::string::String,
                    client: $crate::__private::bindings::veer::balancer::types::IpAddress,
                ) -> ::std::vec::Vec<$crate::BackendId> {
                    __VEER_SLOT.with(|slot| $crate::__private::select::<$strategy>(slot, method, host, path, client))
                }
            }

            $crate::__private::bindings::__veer_export_balancer!(__VeerExport with_types_in $crate::__private::bindings);
        };
    };
}
