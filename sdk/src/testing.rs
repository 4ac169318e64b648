//! Unit-test a strategy natively with `cargo test`: a [`FakeHost`] answers
//! everything the real host would (live stats, randomness, logs, response
//! headers) and [`FakeRequest`] makes requests with headers, cookies, a
//! query and TLS.
//!
//! ```
//! use veer_sdk::testing::{FakeHost, FakeRequest, backends};
//! use veer_sdk::{BackendStats, Candidates, Config, Request, Rejection, Strategy};
//!
//! /// The backend with the fewest requests in flight.
//! struct Least(Vec<u32>);
//!
//! impl Strategy for Least {
//!     const NAME: &'static str = "least";
//!     const VERSION: &'static str = "1.0.0";
//!     fn new(_: Config) -> Result<Self, String> {
//!         Ok(Least(Vec::new()))
//!     }
//!     fn set_backends(&mut self, backends: &[veer_sdk::Backend]) {
//!         self.0 = backends.iter().map(|b| b.id).collect();
//!     }
//!     fn select(&mut self, _: &Request<'_>, out: &mut Candidates) -> Result<(), Rejection> {
//!         let load = veer_sdk::all_in_flight();
//!         out.extend(self.0.iter().copied().min_by_key(|&id| load[id as usize]));
//!         Ok(())
//!     }
//! }
//!
//! let mut host = FakeHost::new()
//!     .with_stats(vec![BackendStats::new().with_in_flight(5), BackendStats::new()]);
//! let mut least = Least::new(Config::new("{}")).unwrap();
//! least.set_backends(&backends(2));
//! assert_eq!(host.select(&mut least, &FakeRequest::get("/")), Ok(vec![1]));
//! ```

use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr};
use std::rc::Rc;

use crate::{
    Backend, BackendId, BackendStats, Candidates, LogLevel, Method, Rejection, Request, Strategy,
    TlsInfo,
};

/// `n` backends: ids `0..n`, addresses `10.0.0.<id>:80`, weight 1, no labels.
pub fn backends(n: u32) -> Vec<Backend> {
    (0..n)
        .map(|id| Backend::new(id, format!("10.0.0.{id}:80")))
        .collect()
}

/// `GET /` for `example.com` from 192.0.2.1, as a [`FakeRequest`].
pub fn request() -> FakeRequest {
    FakeRequest::get("/")
}

/// A made-up request: build it, then lend it with [`Request::fake`] or
/// [`FakeHost::select`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeRequest {
    pub(crate) method: Method,
    pub(crate) authority: String,
    pub(crate) path: String,
    pub(crate) query: String,
    pub(crate) client: IpAddr,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) tls: Option<TlsInfo>,
}

impl FakeRequest {
    /// `method` for `target` (a path with an optional `?query`), host
    /// `example.com`, from 192.0.2.1, no headers, plain HTTP.
    pub fn new(method: Method, target: &str) -> FakeRequest {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        FakeRequest {
            method,
            authority: "example.com".into(),
            path: path.into(),
            query: query.into(),
            client: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
            headers: Vec::new(),
            tls: None,
        }
    }

    /// `GET target`.
    pub fn get(target: &str) -> FakeRequest {
        FakeRequest::new(Method::Get, target)
    }

    /// `POST target`.
    pub fn post(target: &str) -> FakeRequest {
        FakeRequest::new(Method::Post, target)
    }

    /// The same with header `name: value` (added after any of that name).
    pub fn header(mut self, name: &str, value: &str) -> FakeRequest {
        self.headers.push((name.to_ascii_lowercase(), value.into()));
        self
    }

    /// The same with cookie `name=value` (in a `Cookie` header).
    pub fn cookie(self, name: &str, value: &str) -> FakeRequest {
        self.header("cookie", &format!("{name}={value}"))
    }

    /// The same for host `authority`.
    pub fn authority(mut self, authority: &str) -> FakeRequest {
        self.authority = authority.to_ascii_lowercase();
        self
    }

    /// The same from `client`.
    pub fn client(mut self, client: impl Into<IpAddr>) -> FakeRequest {
        self.client = client.into();
        self
    }

    /// The same over TLS with `tls`.
    pub fn tls(mut self, tls: TlsInfo) -> FakeRequest {
        self.tls = Some(tls);
        self
    }

    pub(crate) fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn cookie_named(&self, name: &str) -> Option<String> {
        self.headers_named("cookie")
            .flat_map(|v| v.split(';'))
            .find_map(|pair| {
                let (key, value) = pair.trim().split_once('=')?;
                (key == name).then(|| value.to_owned())
            })
    }

    pub(crate) fn query_param(&self, name: &str) -> Option<String> {
        self.query.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (key == name && !key.is_empty()).then(|| value.to_owned())
        })
    }
}

/// What a fake host holds; host calls made natively read and write it.
#[derive(Debug, Default)]
pub(crate) struct FakeState {
    pub(crate) stats: Vec<BackendStats>,
    pub(crate) rng: u64,
    pub(crate) logs: Vec<(LogLevel, String)>,
    pub(crate) response_headers: Vec<(String, String)>,
}

impl FakeState {
    /// splitmix64, as the real host uses.
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    pub(crate) fn next_random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

thread_local! {
    static CURRENT: RefCell<Option<Rc<RefCell<FakeState>>>> = const { RefCell::new(None) };
}

/// Runs `f` on the fake host installed on this thread.
#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
pub(crate) fn with_fake<R>(f: impl FnOnce(&mut FakeState) -> R) -> R {
    let state = CURRENT.with(|current| current.borrow().clone());
    let state = state.expect(
        "veer-sdk: a host function was called outside a plugin with no FakeHost: \
         run the code under `veer_sdk::testing::FakeHost::run` or `FakeHost::select`",
    );
    let mut state = state.borrow_mut();
    f(&mut state)
}

/// Stands in for Veer in native tests: live stats, a seeded random number
/// generator, and a record of logs and response headers. Host functions
/// answer from it while it runs code ([`FakeHost::run`],
/// [`FakeHost::select`]).
#[derive(Debug, Default)]
pub struct FakeHost {
    state: Rc<RefCell<FakeState>>,
}

impl FakeHost {
    /// No backends' stats, random numbers seeded with 0.
    pub fn new() -> FakeHost {
        FakeHost::default()
    }

    /// The same with live stats for backends `0..stats.len()`.
    pub fn with_stats(self, stats: Vec<BackendStats>) -> FakeHost {
        self.state.borrow_mut().stats = stats;
        self
    }

    /// The same with random numbers seeded with `seed`.
    pub fn with_seed(self, seed: u64) -> FakeHost {
        self.state.borrow_mut().rng = seed;
        self
    }

    /// Replaces backend `id`'s stats (growing the list as needed).
    pub fn set_stats(&mut self, id: BackendId, stats: BackendStats) {
        let mut state = self.state.borrow_mut();
        let id = id as usize;
        if state.stats.len() <= id {
            state.stats.resize(id + 1, BackendStats::new());
        }
        state.stats[id] = stats;
    }

    /// Runs `f` with this host answering host calls.
    pub fn run<R>(&mut self, f: impl FnOnce() -> R) -> R {
        struct Restore(Option<Rc<RefCell<FakeState>>>);
        impl Drop for Restore {
            fn drop(&mut self) {
                let previous = self.0.take();
                CURRENT.with(|current| *current.borrow_mut() = previous);
            }
        }
        let previous = CURRENT.with(|current| current.borrow_mut().replace(self.state.clone()));
        let _restore = Restore(previous);
        f()
    }

    /// Calls `strategy.select` for `request` as the host would (a fresh
    /// [`Candidates`], this host answering host calls) and returns its
    /// answer.
    pub fn select<S: Strategy>(
        &mut self,
        strategy: &mut S,
        request: &FakeRequest,
    ) -> Result<Vec<BackendId>, Rejection> {
        self.run(|| {
            let mut candidates = Candidates::new();
            strategy.select(&Request::fake(request), &mut candidates)?;
            Ok(candidates.to_vec())
        })
    }

    /// Lines logged so far, in order.
    pub fn logs(&self) -> Vec<(LogLevel, String)> {
        self.state.borrow().logs.clone()
    }

    /// Response headers set so far, in order.
    pub fn response_headers(&self) -> Vec<(String, String)> {
        self.state.borrow().response_headers.clone()
    }

    /// Forgets logs and response headers.
    pub fn clear(&mut self) {
        let mut state = self.state.borrow_mut();
        state.logs.clear();
        state.response_headers.clear();
    }
}
