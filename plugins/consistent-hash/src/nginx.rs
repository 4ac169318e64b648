//! `ring = "nginx"`: the placement of NGINX's `hash $key consistent`
//! (ngx_http_upstream_hash_module, as in NGINX 1.22), reimplemented.
//!
//! - A key is hashed with CRC-32 (IEEE, as `ngx_crc32_long`).
//! - Each server's text, as written (`127.0.0.1:8081`), is split into a host
//!   and a port ([`split_server`]); its base is the CRC-32 state after
//!   `host`, one zero byte and `port`. It gets `weight × 160` points: point
//!   `j` is that state continued over the four little-endian bytes of point
//!   `j - 1` (0 for the first), finalised.
//! - Points are sorted by hash; of equal hashes only the first (in server
//!   order, then point order) is kept.
//! - A key starts at the first point whose hash is `>=` its CRC-32, wrapping
//!   to the first point. When that point's server cannot be used, NGINX
//!   moves to the next point, and so on, for at most 21 points per request
//!   (its `tries > 20` limit, shared by retries); then it falls back to
//!   round robin.

/// The CRC-32 table of the reflected IEEE polynomial.
const TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut bit = 0;
        while bit < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            bit += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// A CRC-32 in progress: start from [`CRC_INIT`], feed bytes with
/// [`crc_update`], finish with `!state`.
pub const CRC_INIT: u32 = 0xFFFF_FFFF;

/// Feeds `bytes` into a CRC-32 `state`.
pub fn crc_update(mut state: u32, bytes: &[u8]) -> u32 {
    for &b in bytes {
        state = TABLE[((state ^ b as u32) & 0xFF) as usize] ^ (state >> 8);
    }
    state
}

/// The CRC-32 (IEEE 802.3, as zlib and `ngx_crc32_long`) of `bytes`.
pub fn crc32(bytes: &[u8]) -> u32 {
    !crc_update(CRC_INIT, bytes)
}

/// A server's text split as NGINX splits it for the ring: `unix:PATH` gives
/// host `PATH` and no port (the prefix in any case); otherwise, when the
/// text ends in `:` followed only by digits (none is fine), host is what
/// comes before that last `:` and port the digits; otherwise the whole text
/// is the host and the port is empty (`[::1]`, `example.com`).
pub fn split_server(text: &str) -> (&[u8], &[u8]) {
    let bytes = text.as_bytes();
    if bytes.len() >= 5 && bytes[..5].eq_ignore_ascii_case(b"unix:") {
        return (&bytes[5..], b"");
    }
    for (at, &c) in bytes.iter().enumerate().rev() {
        if c == b':' {
            return (&bytes[..at], &bytes[at + 1..]);
        }
        if !c.is_ascii_digit() {
            break;
        }
    }
    (bytes, b"")
}

/// The value of `$arg_NAME` in `query` (the raw text after `?`), found as
/// NGINX finds it: the first `NAME=` (name in any case) at the start or
/// after a `&`, up to the next `&`, still percent-encoded. A parameter
/// without `=` is not a match.
pub fn query_arg<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    let (q, n) = (query.as_bytes(), name.as_bytes());
    if n.is_empty() {
        return None;
    }
    let mut at = 0;
    while at + n.len() < q.len() {
        if (at == 0 || q[at - 1] == b'&')
            && q[at..at + n.len()].eq_ignore_ascii_case(n)
            && q[at + n.len()] == b'='
        {
            let value = &query[at + n.len() + 1..];
            return Some(value.split('&').next().unwrap_or(""));
        }
        at += 1;
    }
    None
}

/// Points per weight unit, fixed in NGINX.
pub const POINTS_PER_WEIGHT: u32 = 160;

/// Points NGINX looks at for one request before it gives up on the ring.
pub const WINDOW: usize = 21;

/// Distinct backends listed after the window, for the round-robin fallback.
pub const AFTER_WINDOW: usize = 8;

/// NGINX's consistent-hash ring.
#[derive(Debug, Clone, Default)]
pub struct NginxRing {
    /// Point hashes, sorted, distinct.
    hashes: Vec<u32>,
    /// The backend id of each point.
    ids: Vec<u32>,
    /// Ids are below this.
    backends: usize,
}

impl NginxRing {
    /// Builds the ring. `backends` are (id, server text, weight), in
    /// configuration order (the order decides which of two equal points is
    /// kept, as in NGINX).
    pub fn new(backends: &[(u32, &str, u32)]) -> NginxRing {
        let total: usize = backends
            .iter()
            .map(|b| (b.2.max(1) * POINTS_PER_WEIGHT) as usize)
            .sum();
        let mut points: Vec<(u32, u32)> = Vec::with_capacity(total);
        for &(id, text, weight) in backends {
            let (host, port) = split_server(text);
            let base = crc_update(crc_update(crc_update(CRC_INIT, host), &[0]), port);
            let mut previous = 0u32;
            for _ in 0..weight.max(1) * POINTS_PER_WEIGHT {
                let point = !crc_update(base, &previous.to_le_bytes());
                points.push((point, id));
                previous = point;
            }
        }
        // Stable: of equal hashes, the one made first comes first and stays.
        points.sort_by_key(|&(hash, _)| hash);
        points.dedup_by_key(|&mut (hash, _)| hash);
        let (hashes, ids) = points.into_iter().unzip();
        NginxRing {
            hashes,
            ids,
            backends: backends.iter().map(|b| b.0 as usize + 1).max().unwrap_or(0),
        }
    }

    /// Number of points (after duplicates are dropped).
    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    /// Whether the ring has no points.
    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// The index of the first point whose hash is `>= key_hash`, wrapped to
    /// 0 past the last.
    pub fn start(&self, key_hash: u32) -> usize {
        if self.hashes.is_empty() {
            return 0;
        }
        self.hashes.partition_point(|&p| p < key_hash) % self.hashes.len()
    }

    /// The backend of the point `key_hash` lands on (`None`: empty ring).
    pub fn owner(&self, key_hash: u32) -> Option<u32> {
        self.ids.get(self.start(key_hash)).copied()
    }

    /// The backends in the order NGINX tries them for a key of CRC-32
    /// `key_hash`: the distinct backends of the [`WINDOW`] points from the
    /// key's, in walking order, so that the first usable one is NGINX's
    /// choice. Then, where NGINX would fall back to round robin, up to
    /// [`AFTER_WINDOW`] further distinct backends in ring order.
    pub fn order(&self, key_hash: u32) -> Vec<u32> {
        let n = self.hashes.len();
        let mut order = Vec::new();
        if n == 0 {
            return order;
        }
        let start = self.start(key_hash);
        let mut seen = vec![0u64; self.backends.div_ceil(64)];
        let mut push = |id: u32, order: &mut Vec<u32>| {
            let (word, bit) = (id as usize / 64, 1u64 << (id % 64));
            if seen[word] & bit == 0 {
                seen[word] |= bit;
                order.push(id);
            }
        };
        for step in 0..WINDOW.min(n) {
            push(self.ids[(start + step) % n], &mut order);
        }
        let in_window = order.len();
        for step in WINDOW..n {
            if order.len() >= in_window + AFTER_WINDOW || order.len() >= self.backends {
                break;
            }
            push(self.ids[(start + step) % n], &mut order);
        }
        order
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_is_the_ieee_one() {
        // The standard check value, and zlib's crc32(b"hello").
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b"hello"), 0x3610_A686);
        assert_eq!(crc32(b""), 0);
        // Feeding in pieces is the same as feeding at once.
        assert_eq!(
            !crc_update(crc_update(CRC_INIT, b"1234"), b"56789"),
            0xCBF4_3926
        );
    }

    #[test]
    fn server_text_splits_as_nginx_splits_it() {
        let split = |t| {
            let (h, p) = split_server(t);
            (
                std::str::from_utf8(h).unwrap(),
                std::str::from_utf8(p).unwrap(),
            )
        };
        assert_eq!(split("127.0.0.1:8081"), ("127.0.0.1", "8081"));
        assert_eq!(split("backend.example:80"), ("backend.example", "80"));
        assert_eq!(split("127.0.0.2"), ("127.0.0.2", ""));
        assert_eq!(split("example.com"), ("example.com", ""));
        assert_eq!(split("[::1]:8080"), ("[::1]", "8080"));
        assert_eq!(split("[::1]"), ("[::1]", ""));
        assert_eq!(split("::1"), (":", "1"), "digits after the last ':'");
        assert_eq!(split("host:"), ("host", ""));
        assert_eq!(split("unix:/run/app.sock"), ("/run/app.sock", ""));
        assert_eq!(split("UNIX:/run/a:80"), ("/run/a:80", ""));
        assert_eq!(split("8080"), ("8080", ""));
        assert_eq!(split(""), ("", ""));
    }

    #[test]
    fn query_args_are_found_as_nginx_finds_them() {
        assert_eq!(query_arg("key=a&b=2", "key"), Some("a"));
        assert_eq!(query_arg("b=2&key=a%20b", "key"), Some("a%20b"));
        assert_eq!(query_arg("KEY=x", "key"), Some("x"), "any case");
        assert_eq!(query_arg("key&key=x", "key"), Some("x"), "needs '='");
        assert_eq!(query_arg("mykey=1&key=2", "key"), Some("2"));
        assert_eq!(query_arg("key=", "key"), Some(""));
        assert_eq!(query_arg("key", "key"), None);
        assert_eq!(query_arg("", "key"), None);
    }

    #[test]
    fn the_ring_has_160_points_per_weight_unit_and_the_window_is_distinct() {
        let ring = NginxRing::new(&[(0, "127.0.0.1:1", 1), (1, "127.0.0.1:2", 3)]);
        assert_eq!(ring.len(), 640);
        for key in 0..200u32 {
            let order = ring.order(crc32(&key.to_le_bytes()));
            assert!(!order.is_empty() && order.len() <= 2, "{order:?}");
            assert_eq!(Some(order[0]), ring.owner(crc32(&key.to_le_bytes())));
        }
        // A key past the last point wraps to the first.
        assert_eq!(ring.start(u32::MAX), ring.start(0));
    }
}
