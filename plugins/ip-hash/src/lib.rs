//! `ip-hash`: a client always reaches the same backend (while the set is
//! unchanged), chosen by a hash of its address in proportion to weight. As
//! NGINX's `ip_hash`, by default only the first three octets of an IPv4
//! address count (clients of one /24 share a backend); `mask = "full"` uses
//! the whole address. IPv6 addresses are used whole. Fallbacks follow in ring
//! order.
use std::net::IpAddr;

use serde::Deserialize;
use veer_sdk::{Backend, BackendId, Config, Request, Strategy, export_strategy};
use veer_strategy_kit::{hash, rotate_from, weighted_index};

/// `strategy_config` of `ip-hash`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// `"nginx"` (IPv4 /24, default) or `"full"`.
    pub mask: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            mask: "nginx".into(),
        }
    }
}

/// The key bytes of a client address.
pub fn key(ip: IpAddr, full: bool) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) if !full => v4.octets()[..3].to_vec(),
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// Backends, weights and the mask.
#[derive(Debug)]
pub struct IpHash {
    full: bool,
    ids: Vec<BackendId>,
    weights: Vec<u32>,
}

impl IpHash {
    /// The order for a client.
    pub fn order(&self, client: IpAddr) -> Vec<BackendId> {
        rotate_from(
            &self.ids,
            weighted_index(&self.weights, hash(&key(client, self.full))),
        )
    }
}

impl Strategy for IpHash {
    const NAME: &'static str = "ip-hash";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn new(config: Config) -> Result<Self, String> {
        let s: Settings = config.parse()?;
        let full = match s.mask.as_str() {
            "nginx" => false,
            "full" => true,
            other => {
                return Err(format!(
                    "\"mask\" must be \"nginx\" or \"full\", got {other:?}"
                ));
            }
        };
        Ok(IpHash {
            full,
            ids: Vec::new(),
            weights: Vec::new(),
        })
    }

    fn set_backends(&mut self, backends: Vec<Backend>) {
        self.ids = backends.iter().map(|b| b.id).collect();
        self.weights = backends.iter().map(|b| b.weight).collect();
    }

    fn select(&mut self, request: &Request) -> Vec<BackendId> {
        self.order(request.client)
    }
}

export_strategy!(IpHash);

#[cfg(test)]
mod tests {
    use super::*;

    fn strategy(mask: &str, n: u32) -> IpHash {
        let mut s = IpHash::new(Config::new(format!(r#"{{"mask":"{mask}"}}"#))).unwrap();
        s.set_backends(veer_sdk::testing::backends(n));
        s
    }

    #[test]
    fn nginx_mask_keeps_a_slash_24_together_and_full_tells_them_apart() {
        let nginx = strategy("nginx", 16);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.250".parse().unwrap();
        assert_eq!(nginx.order(a)[0], nginx.order(b)[0]);
        let full = strategy("full", 16);
        let firsts: std::collections::HashSet<u32> = (1..=50)
            .map(|i| full.order(format!("192.0.2.{i}").parse().unwrap())[0])
            .collect();
        assert!(
            firsts.len() > 8,
            "the whole address spreads one /24: {firsts:?}"
        );
    }

    #[test]
    fn an_unknown_mask_is_refused() {
        assert!(
            IpHash::new(Config::new(r#"{"mask":"/16"}"#))
                .unwrap_err()
                .contains("mask")
        );
    }
}
