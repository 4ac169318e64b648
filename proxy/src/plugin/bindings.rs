//! wasmtime's `bindgen!` for every world this host serves, and conversions
//! from host types into each world's generated types. Nothing outside
//! `plugin/` sees these: plugins of every version look the same to the proxy.

use wasmtime::Engine;
use wasmtime::component::Component;

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

/// `veer:balancer@0.2.0`, the current world (what `veer-sdk` builds).
#[allow(missing_docs)]
pub(super) mod v0_2 {
    wasmtime::component::bindgen!({
        path: "../wit/0.2.0",
        world: "veer:balancer/balancer@0.2.0",
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

/// A type-checked component, ready to instantiate, in its world.
pub(super) enum Pre {
    V0_1(v0_1::BalancerPre<HostState>),
    V0_2(v0_2::BalancerPre<HostState>),
}

/// An instance's exports, in its world.
pub(super) enum Exports {
    V0_1(v0_1::Balancer),
    V0_2(v0_2::Balancer),
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
