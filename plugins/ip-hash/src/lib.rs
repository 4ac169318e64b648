//! `ip-hash`: a client always reaches the same backend (while the set is
//! unchanged), chosen by a hash of its address in proportion to weight. As
//! NGINX's `ip_hash`, by default only the first three octets of an IPv4
//! address count (clients of one /24 share a backend); `mask = "full"` uses
//! the whole address. IPv6 addresses are used whole. Fallbacks follow in ring
//! order.
//!
//! `compat = "nginx"` picks exactly as NGINX 1.22's `ip_hash` does for the
//! same `server` lines and weights (see [`nginx_order`]): a hash from 89 over
//! the first three octets of an IPv4 address (all 16 of an IPv6 one),
//! `hash = (hash × 113 + byte) % 6271`, the backend is where `hash %
//! total_weight` falls among the weights in configuration order, and when
//! that backend cannot be used the hash is taken again from its last value.
//! The answer is the distinct backends of NGINX's first 21 tries, in its
//! order, so the first healthy one is NGINX's choice; then the others in
//! ring order, where NGINX falls back to round robin. `compat = "veer"`
//! (the default) is Veer's own hash; `mask = "full"` cannot be combined with
//! `compat = "nginx"`.
use std::net::IpAddr;

use serde::Deserialize;
use veer_sdk::{
    Backend, BackendId, Candidates, Config, Rejection, Request, Strategy, export_strategy,
};
use veer_strategy_kit::{MAX_CANDIDATES, hash, rotate_into, weighted_index};

/// `strategy_config` of `ip-hash`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// `"nginx"` (IPv4 /24, the default) or `"full"`.
    pub mask: Option<String>,
    /// `"veer"` (Veer's hash, the default) or `"nginx"` (NGINX's `ip_hash`,
    /// exactly).
    pub compat: Option<String>,
}

/// NGINX's hash tries per request before it falls back to round robin
/// (`tries > 20`).
pub const NGINX_TRIES: usize = 21;

/// The backends in the order NGINX 1.22's `ip_hash` tries them for a client
/// at `ip`, over backends of `weights` (configuration order; the answer is
/// their indices). The first three octets of IPv4 (all 16 bytes of IPv6)
/// are hashed from 89 with `hash = (hash * 113 + byte) % 6271`; the backend
/// is the one `hash % Σweights` falls in, walking the weights in order.
/// NGINX moves on to the next hash, computed the same way from the last
/// one, when that backend is down or already tried, for [`NGINX_TRIES`]
/// hashes in all; then it uses round robin. So: the distinct backends of
/// those hashes, in order, then the others (at most [`MAX_CANDIDATES`] more)
/// in ring order after the first.
pub fn nginx_order(ip: IpAddr, weights: &[u32]) -> Vec<u32> {
    let n = weights.len();
    let total: u64 = weights.iter().map(|&w| w.max(1) as u64).sum();
    let mut order: Vec<u32> = Vec::new();
    if n == 0 {
        return order;
    }
    let (v4, v6);
    let bytes: &[u8] = match ip {
        IpAddr::V4(a) => {
            v4 = a.octets();
            &v4[..3]
        }
        IpAddr::V6(a) => {
            v6 = a.octets();
            &v6
        }
    };
    let mut seen = vec![false; n];
    let mut hash: u64 = 89;
    for _ in 0..NGINX_TRIES {
        for &b in bytes {
            hash = (hash * 113 + b as u64) % 6271;
        }
        let mut w = hash % total;
        let mut p = 0;
        while w >= weights[p].max(1) as u64 {
            w -= weights[p].max(1) as u64;
            p += 1;
        }
        if !seen[p] {
            seen[p] = true;
            order.push(p as u32);
            if order.len() == n {
                return order;
            }
        }
    }
    let first = order[0] as usize;
    order.extend(
        (1..n)
            .map(|k| (first + k) % n)
            .filter(|&i| !seen[i])
            .take(MAX_CANDIDATES)
            .map(|i| i as u32),
    );
    order
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
    nginx: bool,
    ids: Vec<BackendId>,
    weights: Vec<u32>,
}

impl Strategy for IpHash {
    const NAME: &'static str = "ip-hash";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn new(config: Config) -> Result<Self, String> {
        let s: Settings = config.parse()?;
        let full = match s.mask.as_deref().unwrap_or("nginx") {
            "nginx" => false,
            "full" => true,
            other => {
                return Err(format!(
                    "\"mask\" must be \"nginx\" or \"full\", got {other:?}"
                ));
            }
        };
        let nginx = match s.compat.as_deref().unwrap_or("veer") {
            "veer" => false,
            "nginx" => true,
            other => {
                return Err(format!(
                    "\"compat\" must be \"veer\" or \"nginx\", got {other:?}"
                ));
            }
        };
        if nginx && full {
            return Err(
                "\"mask\" = \"full\" cannot be used with \"compat\" = \"nginx\" \
                 (NGINX's ip_hash hashes the first three octets of IPv4); remove one"
                    .into(),
            );
        }
        Ok(IpHash {
            full,
            nginx,
            ids: Vec::new(),
            weights: Vec::new(),
        })
    }

    fn set_backends(&mut self, backends: &[Backend]) {
        self.ids = backends.iter().map(|b| b.id).collect();
        self.weights = backends.iter().map(|b| b.weight).collect();
    }

    fn select(&mut self, request: &Request<'_>, out: &mut Candidates) -> Result<(), Rejection> {
        if self.nginx {
            let order = nginx_order(request.client(), &self.weights);
            out.extend(order.into_iter().map(|i| self.ids[i as usize]));
            return Ok(());
        }
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

    // ---- compat = "nginx": known answers from a real NGINX ----
    //
    // `nginx-1.22.1-known-answers.txt` was recorded from the real
    // /usr/sbin/nginx 1.22.1 by a throwaway script (not in the repository):
    // nginx ran the backends (server blocks answering `return 200
    // "<index>"`) and, per scenario, an `upstream { ip_hash; server TEXT
    // weight=W [down]; … }` proxied to them; the script connected from
    // `127.A.B.1` (see `client`) for 256 distinct /24 networks and wrote one
    // digit per client: the index in WEIGHTS of the backend that answered.
    // Scenarios: servers 0-3; server 1 removed; server 2 `down`; servers 2
    // and 1 `down`; servers 0-5.

    const KNOWN: &str = include_str!("nginx-1.22.1-known-answers.txt");

    /// The weights of the recording's servers, in configuration order.
    const WEIGHTS: [u32; 6] = [1, 2, 3, 1, 2, 1];

    /// Client number `j` of the recording: 256 different /24 networks.
    fn client(j: u32) -> IpAddr {
        IpAddr::from([127, ((j * 73) % 256) as u8, ((j * 151 + 7) % 256) as u8, 1])
    }

    fn known(scenario: &str) -> Vec<usize> {
        let line = KNOWN
            .lines()
            .find_map(|l| l.strip_prefix(scenario)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no scenario {scenario}"));
        line.bytes().map(|b| (b - b'0') as usize).collect()
    }

    /// Clients for which `compat = "nginx"` over `servers` (indices in
    /// WEIGHTS), with `down` ones unhealthy, picks as NGINX did: the first
    /// healthy backend of its answer, as the host takes it.
    fn agreement(scenario: &str, servers: &[usize], down: &[usize]) -> (usize, usize) {
        let expected = known(scenario);
        let backends: Vec<Backend> = servers
            .iter()
            .enumerate()
            .map(|(id, &s)| {
                Backend::new(id as u32, format!("127.0.0.1:{}", 18081 + s)).with_weight(WEIGHTS[s])
            })
            .collect();
        let mut s = IpHash::new(Config::new(r#"{"compat":"nginx"}"#)).unwrap();
        s.set_backends(&backends);
        let healthy = |id: u32| !down.contains(&servers[id as usize]);
        let mut host = FakeHost::new();
        let agree = (0..expected.len() as u32)
            .filter(|&j| {
                let answer = host
                    .select(&mut s, &FakeRequest::get("/").client(client(j)))
                    .unwrap();
                let mut seen = std::collections::HashSet::new();
                assert!(
                    answer.iter().all(|id| seen.insert(*id)),
                    "distinct: {answer:?}"
                );
                assert_eq!(answer.len(), servers.len(), "all of a small pool");
                let pick = answer.iter().copied().find(|&id| healthy(id));
                pick.map(|id| servers[id as usize]) == Some(expected[j as usize])
            })
            .count();
        (agree, expected.len())
    }

    #[test]
    fn nginx_compat_picks_as_nginx_1_22_for_256_networks_with_unequal_weights() {
        assert_eq!(agreement("ip_all", &[0, 1, 2, 3], &[]), (256, 256));
        assert_eq!(
            agreement("ip_weighted6", &[0, 1, 2, 3, 4, 5], &[]),
            (256, 256)
        );
    }

    #[test]
    fn nginx_compat_picks_as_nginx_after_a_server_is_removed() {
        assert_eq!(agreement("ip_removed", &[0, 2, 3], &[]), (256, 256));
    }

    #[test]
    fn nginx_compat_answers_in_nginx_rehash_order_so_a_down_server_is_skipped_as_nginx_does() {
        assert_eq!(agreement("ip_down", &[0, 1, 2, 3], &[2]), (256, 256));
        assert_eq!(agreement("ip_down2", &[0, 1, 2, 3], &[2, 1]), (256, 256));
    }

    #[test]
    fn nginx_compat_hashes_three_octets_of_ipv4_and_all_of_ipv6() {
        let weights = [1, 1, 1, 1, 1, 1, 1];
        // Worked by hand: 89 → (89·113 + 192) % 6271 = 3978 → (3978·113 + 0) % 6271
        // = 4273 → (4273·113 + 2) % 6271 = 6255; 6255 % 7 = 4.
        assert_eq!(nginx_order("192.0.2.1".parse().unwrap(), &weights)[0], 4);
        let same_24 = nginx_order("192.0.2.250".parse().unwrap(), &weights);
        assert_eq!(same_24, nginx_order("192.0.2.1".parse().unwrap(), &weights));
        let v6 = |a: &str| nginx_order(a.parse().unwrap(), &weights)[0];
        let firsts: std::collections::HashSet<u32> =
            (1..40).map(|i| v6(&format!("2001:db8::{i:x}"))).collect();
        assert!(firsts.len() > 3, "the last IPv6 bytes count: {firsts:?}");
    }

    #[test]
    fn nginx_compat_lists_everyone_once_and_refuses_what_nginx_has_not() {
        let order = nginx_order("10.1.2.3".parse().unwrap(), &[1; 40]);
        let mut sorted = order.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), order.len());
        assert!(
            order.len() <= NGINX_TRIES + MAX_CANDIDATES,
            "{}",
            order.len()
        );
        assert_eq!(nginx_order("10.1.2.3".parse().unwrap(), &[3]), vec![0]);
        let err = |c: &str| IpHash::new(Config::new(c)).unwrap_err();
        let bad = err(r#"{"compat":"haproxy"}"#);
        assert!(
            bad.contains("\"compat\"") && bad.contains("\"veer\" or \"nginx\""),
            "{bad}"
        );
        assert!(err(r#"{"compat":"nginx","mask":"full"}"#).contains("mask"));
        assert!(IpHash::new(Config::new(r#"{"compat":"nginx","mask":"nginx"}"#)).is_ok());
        assert!(IpHash::new(Config::new(r#"{"compat":"veer","mask":"full"}"#)).is_ok());
    }
}
