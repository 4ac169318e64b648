//! `consistent-hash`: requests with the same key go to the same backend, and
//! when a backend joins or leaves only about 1/n of keys move. The key is
//! `client-ip`, `path`, `header:NAME`, `cookie:NAME` or `query:NAME` (a
//! request without it is keyed by its client address). The ring is `ketama`
//! (NGINX-style, `points_per_weight` points per weight unit) or `maglev`
//! (Google's lookup table, `table_size` slots). With `bounded_load = c` (e.g.
//! 1.25) no backend takes more than c × its share of the in-flight load: a
//! hot key spills to the next backends on the ring.
//!
//! A backend's place on the ring comes from its `hash_key` label when it has
//! one, else from its address: give backends a `hash_key` to keep their keys
//! when their address changes.
use serde::Deserialize;
use veer_sdk::{
    Backend, BackendId, Candidates, Config, Rejection, Request, Strategy, export_strategy,
};
use veer_strategy_kit::{Distinct, Ketama, Maglev, bounded, hash};

/// `strategy_config` of `consistent-hash`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// What to hash (default `client-ip`).
    pub key: String,
    /// `ketama` (default) or `maglev`.
    pub ring: String,
    /// Ketama points per weight unit (default 160, as NGINX).
    pub points_per_weight: u32,
    /// Maglev table size, a prime (default 65537, as Envoy).
    pub table_size: usize,
    /// Bounded-load factor c ≥ 1 (default: unbounded).
    pub bounded_load: Option<f64>,
    /// Fallback backends listed after the owner (default 2).
    pub fallbacks: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            key: "client-ip".into(),
            ring: "ketama".into(),
            points_per_weight: 160,
            table_size: 65537,
            bounded_load: None,
            fallbacks: 2,
        }
    }
}

/// Where the key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// The client's address.
    ClientIp,
    /// The path.
    Path,
    /// A request header.
    Header(String),
    /// A cookie.
    Cookie(String),
    /// A query parameter.
    Query(String),
}

impl Key {
    /// Parses `client-ip`, `path`, `header:NAME`, `cookie:NAME`, `query:NAME`.
    pub fn parse(text: &str) -> Result<Key, String> {
        let named = |prefix: &str| {
            text.strip_prefix(prefix)
                .filter(|n| !n.is_empty())
                .map(str::to_string)
        };
        match text {
            "client-ip" => Ok(Key::ClientIp),
            "path" => Ok(Key::Path),
            _ => named("header:")
                .map(Key::Header)
                .or_else(|| named("cookie:").map(Key::Cookie))
                .or_else(|| named("query:").map(Key::Query))
                .ok_or_else(|| format!("\"key\" {text:?} is not client-ip, path, header:NAME, cookie:NAME or query:NAME")),
        }
    }
}

/// Either ring.
#[derive(Debug)]
pub enum Ring {
    /// Ketama.
    Ketama(Ketama),
    /// Maglev.
    Maglev(Maglev),
}

impl Ring {
    fn walk(&self, h: u64) -> Distinct<'_> {
        match self {
            Ring::Ketama(r) => r.walk(h),
            Ring::Maglev(r) => r.walk(h),
        }
    }
}

/// Settings and the ring built for the current backends.
#[derive(Debug)]
pub struct ConsistentHash {
    settings: Settings,
    key: Key,
    ring: Ring,
    weights: Vec<u32>,
}

impl ConsistentHash {
    /// Builds the ring for `backends`, each placed by its `hash_key` label or
    /// else its address.
    pub fn build(&mut self, backends: &[Backend]) {
        let ring_name = |b: &'_ Backend| -> String {
            b.labels
                .iter()
                .find(|(k, _)| k == "hash_key")
                .map_or_else(|| b.address.clone(), |(_, v)| v.clone())
        };
        let names: Vec<String> = backends.iter().map(ring_name).collect();
        let set: Vec<(u32, &str, u32)> = backends
            .iter()
            .zip(&names)
            .map(|(b, name)| (b.id, name.as_str(), b.weight))
            .collect();
        self.ring = match self.settings.ring.as_str() {
            "maglev" => Ring::Maglev(Maglev::new(&set, self.settings.table_size)),
            _ => Ring::Ketama(Ketama::new(&set, self.settings.points_per_weight)),
        };
        self.weights = backends.iter().map(|b| b.weight).collect();
    }

    /// The order for key bytes; `in_flight` (by id) is read only with
    /// bounded load.
    pub fn order(&self, key: &[u8], in_flight: impl FnOnce() -> Vec<u32>) -> Vec<BackendId> {
        let want = 1 + self.settings.fallbacks;
        let walk = self.ring.walk(hash(key));
        match self.settings.bounded_load {
            Some(factor) => bounded(walk, &in_flight(), &self.weights, factor, want),
            None => walk.take(want).collect(),
        }
    }
}

impl Strategy for ConsistentHash {
    const NAME: &'static str = "consistent-hash";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn new(config: Config) -> Result<Self, String> {
        let settings: Settings = config.parse()?;
        let key = Key::parse(&settings.key)?;
        if !matches!(settings.ring.as_str(), "ketama" | "maglev") {
            return Err(format!(
                "\"ring\" must be \"ketama\" or \"maglev\", got {:?}",
                settings.ring
            ));
        }
        if !(1..=10_000).contains(&settings.points_per_weight) {
            return Err(format!(
                "\"points_per_weight\" must be 1 to 10000, got {}",
                settings.points_per_weight
            ));
        }
        if !(7..=1_000_003).contains(&settings.table_size) {
            return Err(format!(
                "\"table_size\" must be 7 to 1000003, got {}",
                settings.table_size
            ));
        }
        if let Some(c) = settings.bounded_load
            && !(c >= 1.0 && c.is_finite())
        {
            return Err(format!(
                "\"bounded_load\" must be at least 1.0 (e.g. 1.25), got {c}"
            ));
        }
        Ok(ConsistentHash {
            settings,
            key,
            ring: Ring::Ketama(Ketama::default()),
            weights: Vec::new(),
        })
    }

    fn set_backends(&mut self, backends: &[Backend]) {
        self.build(backends);
    }

    fn select(&mut self, request: &Request<'_>, out: &mut Candidates) -> Result<(), Rejection> {
        let value = match &self.key {
            Key::ClientIp => None,
            Key::Path => Some(request.path()),
            Key::Header(name) => request.header(name),
            Key::Cookie(name) => request.cookie(name),
            Key::Query(name) => request.query_param(name),
        };
        let key = value.map_or_else(
            || request.client().to_string().into_bytes(),
            String::into_bytes,
        );
        out.extend(self.order(&key, veer_sdk::all_in_flight));
        Ok(())
    }
}

export_strategy!(ConsistentHash);

#[cfg(test)]
mod tests {
    use super::*;

    use veer_sdk::testing::{FakeHost, FakeRequest, backends};

    fn strategy(config: &str, n: u32) -> ConsistentHash {
        let mut s = ConsistentHash::new(Config::new(config)).unwrap();
        s.set_backends(&backends(n));
        s
    }

    #[test]
    fn the_same_user_header_always_goes_to_the_same_backend_and_users_spread() {
        let mut host = FakeHost::new();
        let mut s = strategy(r#"{"key":"header:x-user"}"#, 8);
        let mut owner = |user: &str| {
            host.select(&mut s, &FakeRequest::get("/").header("x-user", user))
                .unwrap()[0]
        };
        let alice = owner("alice");
        assert!((0..20).all(|_| owner("alice") == alice));
        let owners: std::collections::HashSet<u32> =
            (0..100).map(|i| owner(&format!("user-{i}"))).collect();
        assert!(owners.len() >= 6, "{owners:?}");
    }

    #[test]
    fn without_the_key_the_client_address_is_hashed() {
        let mut host = FakeHost::new();
        let mut s = strategy(r#"{"key":"cookie:session"}"#, 8);
        let from = |ip: [u8; 4]| FakeRequest::get("/").client(std::net::Ipv4Addr::from(ip));
        let a = host.select(&mut s, &from([192, 0, 2, 1])).unwrap();
        assert_eq!(host.select(&mut s, &from([192, 0, 2, 1])).unwrap(), a);
        let with_cookie = from([192, 0, 2, 1]).cookie("session", "s-1");
        let b = host.select(&mut s, &with_cookie).unwrap();
        assert_eq!(
            host.select(&mut s, &from([198, 51, 100, 9]).cookie("session", "s-1"))
                .unwrap(),
            b
        );
    }

    #[test]
    fn keys_parse_and_bad_ones_are_refused_with_the_choices() {
        assert_eq!(
            Key::parse("header:x-user").unwrap(),
            Key::Header("x-user".into())
        );
        assert!(Key::parse("header:").unwrap_err().contains("header:NAME"));
        assert!(ConsistentHash::new(Config::new(r#"{"ring":"jump"}"#)).is_err());
        assert!(ConsistentHash::new(Config::new(r#"{"bounded_load":0.5}"#)).is_err());
    }

    #[test]
    fn both_rings_list_the_owner_and_distinct_fallbacks() {
        for ring in ["ketama", "maglev"] {
            let s = strategy(&format!(r#"{{"ring":"{ring}","fallbacks":3}}"#), 5);
            let order = s.order(b"user-7", Vec::new);
            assert_eq!(order.len(), 4, "{ring}");
            let mut sorted = order.clone();
            sorted.dedup();
            assert_eq!(sorted.len(), 4, "{ring}: {order:?}");
        }
    }

    #[test]
    fn a_hash_key_label_places_a_backend_whatever_its_address() {
        let backend = |address: &str| Backend::new(0, address).with_label("hash_key", "a");
        let other = Backend::new(1, "10.0.0.9:80");
        let mut s = ConsistentHash::new(Config::new("{}")).unwrap();
        s.set_backends(&[backend("10.0.0.1:80"), other.clone()]);
        let before: Vec<u32> = (0..50u32)
            .map(|k| s.order(&k.to_le_bytes(), Vec::new)[0])
            .collect();
        s.set_backends(&[backend("10.9.9.9:8080"), other]);
        let after: Vec<u32> = (0..50u32)
            .map(|k| s.order(&k.to_le_bytes(), Vec::new)[0])
            .collect();
        assert_eq!(before, after);
    }

    #[test]
    fn bounded_load_moves_a_hot_key_off_a_full_backend() {
        let s = strategy(r#"{"bounded_load":1.25}"#, 4);
        let owner = s.order(b"hot", || vec![0; 4])[0];
        let mut load = vec![0u32; 4];
        load[owner as usize] = 10; // cap: ceil(1.25 × 11 / 4) = 4
        assert_ne!(s.order(b"hot", || load.clone())[0], owner);
    }
}
