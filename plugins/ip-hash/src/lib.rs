//! `ip-hash`: a client always reaches the same backend (while the set is
//! unchanged), chosen by a hash of its address in proportion to weight. As
//! NGINX's `ip_hash`, by default only the first three octets of an IPv4
//! address count (clients of one /24 share a backend); `mask = "full"` uses
//! the whole address. IPv6 addresses are used whole. Fallbacks follow in ring
//! order.
use std::net::IpAddr;

use serde::Deserialize;
use veer_sdk::{
    Backend, BackendId, Candidates, Config, Rejection, Request, Strategy, export_strategy,
};
use veer_strategy_kit::{hash, rotate_into, weighted_index};

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

    fn set_backends(&mut self, backends: &[Backend]) {
        self.ids = backends.iter().map(|b| b.id).collect();
        self.weights = backends.iter().map(|b| b.weight).collect();
    }

    fn select(&mut self, request: &Request<'_>, out: &mut Candidates) -> Result<(), Rejection> {
        let start = weighted_index(&self.weights, hash(&key(request.client(), self.full)));
        rotate_into(&self.ids, start, out);
        Ok(())
    }
}

export_strategy!(IpHash);

#[cfg(test)]
mod tests {
    use super::*;

    use veer_sdk::testing::{FakeHost, FakeRequest, backends};

    fn strategy(mask: &str, n: u32) -> IpHash {
        let mut s = IpHash::new(Config::new(format!(r#"{{"mask":"{mask}"}}"#))).unwrap();
        s.set_backends(&backends(n));
        s
    }

    /// The first choice for a request from `client`.
    fn first(s: &mut IpHash, client: &str) -> u32 {
        let request = FakeRequest::get("/").client(client.parse::<IpAddr>().unwrap());
        FakeHost::new().select(s, &request).unwrap()[0]
    }

    #[test]
    fn nginx_mask_keeps_a_slash_24_together_and_full_tells_them_apart() {
        let mut nginx = strategy("nginx", 16);
        assert_eq!(
            first(&mut nginx, "192.0.2.1"),
            first(&mut nginx, "192.0.2.250")
        );
        let mut full = strategy("full", 16);
        let firsts: std::collections::HashSet<u32> = (1..=50)
            .map(|i| first(&mut full, &format!("192.0.2.{i}")))
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
