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
//!
//! `ring = "nginx"` places keys exactly as NGINX 1.22's `hash KEY
//! consistent` does for the same `server` lines and weights (see
//! [`nginx`]): CRC-32 of the key, `weight × 160` CRC-32 points per server
//! from its address text (host, a zero byte, port). The answer is the
//! distinct backends of the 21 points NGINX would walk, in its order, so the
//! first healthy one is NGINX's choice; then a few more, where NGINX falls
//! back to round robin. As in NGINX, a request whose key is missing or empty
//! is served in (smooth weighted) round robin, not keyed by client address;
//! `fallbacks` does not apply, `points_per_weight` stays 160 and
//! `bounded_load` is refused. For the same keys use the same key source:
//! `query:NAME` for `$arg_NAME`, `header:NAME` for `$http_NAME`,
//! `cookie:NAME` for `$cookie_NAME`, `client-ip` for `$remote_addr`.
use serde::Deserialize;
use veer_sdk::{
    Backend, BackendId, Candidates, Config, Rejection, Request, Strategy, export_strategy,
};
use veer_strategy_kit::{Distinct, Ketama, Maglev, SmoothWeighted, bounded, hash, rotate_into};

pub mod nginx;

use nginx::NginxRing;

/// `strategy_config` of `consistent-hash`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// What to hash (default `client-ip`).
    pub key: String,
    /// `ketama` (default), `maglev` or `nginx`.
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

/// The ring in use.
#[derive(Debug)]
pub enum Ring {
    /// Ketama.
    Ketama(Ketama),
    /// Maglev.
    Maglev(Maglev),
    /// NGINX's `hash … consistent`.
    Nginx(NginxRing),
}

/// Settings and the ring built for the current backends.
#[derive(Debug)]
pub struct ConsistentHash {
    settings: Settings,
    key: Key,
    ring: Ring,
    weights: Vec<u32>,
    /// Ids in configuration order, for the round robin of keyless requests
    /// (`ring = "nginx"`).
    ids: Vec<BackendId>,
    /// That round robin's turn (`ring = "nginx"`).
    turn: SmoothWeighted,
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
            "nginx" => Ring::Nginx(NginxRing::new(&set)),
            _ => Ring::Ketama(Ketama::new(&set, self.settings.points_per_weight)),
        };
        self.weights = backends.iter().map(|b| b.weight).collect();
        self.ids = backends.iter().map(|b| b.id).collect();
        self.turn = SmoothWeighted::new(&self.weights);
    }

    /// The order for key bytes; `in_flight` (by id) is read only with
    /// bounded load.
    pub fn order(&self, key: &[u8], in_flight: impl FnOnce() -> Vec<u32>) -> Vec<BackendId> {
        let want = 1 + self.settings.fallbacks;
        let walk: Distinct<'_> = match &self.ring {
            Ring::Ketama(r) => r.walk(hash(key)),
            Ring::Maglev(r) => r.walk(hash(key)),
            Ring::Nginx(r) => return r.order(nginx::crc32(key)),
        };
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
        if !matches!(settings.ring.as_str(), "ketama" | "maglev" | "nginx") {
            return Err(format!(
                "\"ring\" must be \"ketama\", \"maglev\" or \"nginx\", got {:?}",
                settings.ring
            ));
        }
        if settings.ring == "nginx" {
            if settings.points_per_weight != nginx::POINTS_PER_WEIGHT {
                return Err(format!(
                    "\"points_per_weight\" is fixed at 160 with ring = \"nginx\" (as in NGINX), got {}",
                    settings.points_per_weight
                ));
            }
            if settings.bounded_load.is_some() {
                return Err(
                    "\"bounded_load\" cannot be used with ring = \"nginx\" (NGINX has no bounded load); \
                     remove it, or use ring = \"ketama\" or \"maglev\""
                        .into(),
                );
            }
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
            ids: Vec::new(),
            turn: SmoothWeighted::default(),
        })
    }

    fn set_backends(&mut self, backends: &[Backend]) {
        self.build(backends);
    }

    fn select(&mut self, request: &Request<'_>, out: &mut Candidates) -> Result<(), Rejection> {
        if matches!(self.ring, Ring::Nginx(_)) {
            // As NGINX: the key's text (`client-ip` is `$remote_addr`,
            // `query:NAME` is `$arg_NAME`, found as NGINX finds it); a
            // missing or empty key is served in round robin.
            let key = match &self.key {
                Key::ClientIp => Some(request.client().to_string()),
                Key::Path => Some(request.path()),
                Key::Header(name) => request.header(name),
                Key::Cookie(name) => request.cookie(name),
                Key::Query(name) => nginx::query_arg(&request.query(), name).map(str::to_owned),
            };
            match key.filter(|k| !k.is_empty()) {
                Some(key) => out.extend(self.order(key.as_bytes(), Vec::new)),
                None => {
                    let first = self.turn.pick().unwrap_or(0);
                    rotate_into(&self.ids, first, out);
                }
            }
            return Ok(());
        }
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

    use veer_sdk::BackendStats;
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
        assert!(
            ConsistentHash::new(Config::new(r#"{"ring":"jump"}"#))
                .unwrap_err()
                .contains("\"ketama\", \"maglev\" or \"nginx\"")
        );
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

    // ---- ring = "nginx": known answers from a real NGINX ----
    //
    // `nginx-1.22.1-known-answers.txt` was recorded from the real
    // /usr/sbin/nginx 1.22.1 by a throwaway script (not in the repository):
    // nginx itself ran the backends (server blocks answering `return 200
    // "<index>"`) and, per scenario, an `upstream { hash $arg_key
    // consistent; server TEXT weight=W [down]; … }` proxied to them; the
    // script sent `GET /?key=<key(i)>` for i in 0..1000 and wrote, per
    // scenario, one digit per key: the index in NGINX_SERVERS of the backend
    // that answered. Scenarios: all six servers; server 1 removed; server 2
    // marked `down`; servers 2 and 1 `down`.

    const KNOWN: &str = include_str!("nginx-1.22.1-known-answers.txt");

    /// The `server` lines of the recording: text as written, weight.
    const NGINX_SERVERS: [(&str, u32); 6] = [
        ("127.0.0.1:18081", 1),
        ("127.0.0.1:18082", 2),
        ("127.0.0.1:18083", 3),
        ("127.0.0.1:18084", 1),
        ("127.0.0.2", 2),
        ("unix:/tmp/nginx-vectors/run/b5.sock", 1),
    ];

    /// Key number `i` of the recording.
    fn recorded_key(i: u32) -> String {
        if i < 500 {
            format!("user-{i}")
        } else {
            format!("{:x}/{i}", (i as u64 * 2_654_435_761) % (1 << 32))
        }
    }

    fn known(scenario: &str) -> Vec<usize> {
        let line = KNOWN
            .lines()
            .find_map(|l| l.strip_prefix(scenario)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no scenario {scenario}"));
        line.bytes().map(|b| (b - b'0') as usize).collect()
    }

    /// Keys on which an `ring = "nginx"` strategy over `servers` (indices in
    /// NGINX_SERVERS), with `down` ones unhealthy, picks as NGINX did: the
    /// first healthy backend of its answer, as the host takes it.
    fn agreement(scenario: &str, servers: &[usize], down: &[usize]) -> (usize, usize) {
        let expected = known(scenario);
        let backends: Vec<Backend> = servers
            .iter()
            .enumerate()
            .map(|(id, &s)| {
                Backend::new(id as u32, NGINX_SERVERS[s].0).with_weight(NGINX_SERVERS[s].1)
            })
            .collect();
        let mut s =
            ConsistentHash::new(Config::new(r#"{"key":"query:key","ring":"nginx"}"#)).unwrap();
        s.set_backends(&backends);
        let healthy = |id: u32| !down.contains(&servers[id as usize]);
        let mut host = FakeHost::new().with_stats(
            (0..servers.len() as u32)
                .map(|id| {
                    if healthy(id) {
                        BackendStats::new()
                    } else {
                        BackendStats::new().down()
                    }
                })
                .collect(),
        );
        let agree = (0..expected.len() as u32)
            .filter(|&i| {
                let request = FakeRequest::get(&format!("/?key={}", recorded_key(i)));
                let answer = host.select(&mut s, &request).unwrap();
                let mut seen = std::collections::HashSet::new();
                assert!(
                    answer.iter().all(|id| seen.insert(*id)),
                    "distinct: {answer:?}"
                );
                let pick = answer.iter().copied().find(|&id| healthy(id));
                pick.map(|id| servers[id as usize]) == Some(expected[i as usize])
            })
            .count();
        (agree, expected.len())
    }

    #[test]
    fn nginx_ring_places_1000_keys_as_nginx_1_22_with_unequal_weights() {
        assert_eq!(
            agreement("chash_all", &[0, 1, 2, 3, 4, 5], &[]),
            (1000, 1000)
        );
    }

    #[test]
    fn nginx_ring_places_keys_as_nginx_after_a_server_is_removed() {
        assert_eq!(
            agreement("chash_removed", &[0, 2, 3, 4, 5], &[]),
            (1000, 1000)
        );
    }

    #[test]
    fn nginx_ring_answers_in_nginx_walking_order_so_a_down_server_is_skipped_as_nginx_does() {
        let all = [0, 1, 2, 3, 4, 5];
        assert_eq!(agreement("chash_down", &all, &[2]), (1000, 1000));
        assert_eq!(agreement("chash_down2", &all, &[2, 1]), (1000, 1000));
    }

    #[test]
    fn nginx_ring_serves_a_missing_or_empty_key_in_weighted_round_robin() {
        let mut s =
            ConsistentHash::new(Config::new(r#"{"key":"query:key","ring":"nginx"}"#)).unwrap();
        s.set_backends(&[
            Backend::new(0, "127.0.0.1:1").with_weight(5),
            Backend::new(1, "127.0.0.1:2"),
            Backend::new(2, "127.0.0.1:3"),
        ]);
        let mut host = FakeHost::new();
        let firsts: String = ["/", "/?key=", "/?other=1", "/", "/?key=", "/", "/"]
            .iter()
            .map(|t| (b'a' + host.select(&mut s, &FakeRequest::get(t)).unwrap()[0] as u8) as char)
            .collect();
        assert_eq!(firsts, "aabacaa", "NGINX's smooth weighted round robin");
        // A key is hashed, whatever the turn.
        let keyed = host
            .select(&mut s, &FakeRequest::get("/?key=user-1"))
            .unwrap();
        assert_eq!(
            host.select(&mut s, &FakeRequest::get("/?key=user-1"))
                .unwrap(),
            keyed
        );
        // `$arg_key` is found as NGINX finds it: any case, `=` needed.
        assert_eq!(
            host.select(&mut s, &FakeRequest::get("/?KEY=user-1"))
                .unwrap(),
            keyed
        );
        assert_eq!(
            host.select(&mut s, &FakeRequest::get("/?key&key=user-1"))
                .unwrap(),
            keyed
        );
    }

    #[test]
    fn nginx_ring_refuses_settings_nginx_has_not() {
        let err = |c: &str| ConsistentHash::new(Config::new(c)).unwrap_err();
        assert!(err(r#"{"ring":"nginx","bounded_load":1.25}"#).contains("bounded_load"));
        assert!(err(r#"{"ring":"nginx","points_per_weight":100}"#).contains("160"));
        let bad = err(r#"{"ring":"nginx2"}"#);
        assert!(
            bad.contains("\"ring\"") && bad.contains("\"nginx\""),
            "{bad}"
        );
        assert!(
            ConsistentHash::new(Config::new(r#"{"ring":"nginx","points_per_weight":160}"#)).is_ok()
        );
    }

    #[test]
    fn nginx_ring_lists_the_window_then_a_few_more() {
        // 20 equal servers: the 21-point window holds several, and the
        // answer never repeats one.
        let backends: Vec<Backend> = (0..20)
            .map(|i| Backend::new(i, format!("10.0.0.{i}:80")))
            .collect();
        let mut s = ConsistentHash::new(Config::new(r#"{"ring":"nginx"}"#)).unwrap();
        s.set_backends(&backends);
        let order = s.order(b"user-7", Vec::new);
        let mut sorted = order.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), order.len());
        assert!(
            order.len() > nginx::AFTER_WINDOW && order.len() <= 20,
            "{order:?}"
        );
    }
}
