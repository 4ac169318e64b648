//! `sticky`: session affinity by cookie. A client without the cookie is
//! placed by `inner` (`round-robin`, `random`, `least-connections`) and gets
//! a cookie naming its backend (a hash of the backend's address, not the
//! address itself). Later requests with the cookie go to that backend while
//! the host reports it healthy; when it is down, the client is placed again
//! and gets a new cookie.
use serde::Deserialize;
use veer_sdk::{
    Backend, BackendId, Candidates, Config, Rejection, Request, Strategy, export_strategy,
};
use veer_strategy_kit::{Inner, hash};

/// `strategy_config` of `sticky`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Cookie name (default `veer-sticky`).
    pub cookie: String,
    /// Attributes appended to the cookie (default `Path=/; HttpOnly; SameSite=Lax`).
    pub attributes: String,
    /// How new clients are placed (default `round-robin`).
    pub inner: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            cookie: "veer-sticky".into(),
            attributes: "Path=/; HttpOnly; SameSite=Lax".into(),
            inner: "round-robin".into(),
        }
    }
}

/// The token a cookie carries for a backend address.
pub fn token(address: &str) -> String {
    format!("{:016x}", hash(address.as_bytes()))
}

/// Settings and the backends' tokens.
#[derive(Debug)]
pub struct Sticky {
    settings: Settings,
    inner: Inner,
    ids: Vec<BackendId>,
    tokens: Vec<String>,
    weights: Vec<u32>,
    turn: usize,
}

impl Sticky {
    /// The order for a request carrying `cookie` (if any). `healthy(id)` and
    /// `in_flight()` read the host. Returns the order and, for a new
    /// placement, the `set-cookie` value to send.
    pub fn order(
        &mut self,
        cookie: Option<&str>,
        r: u64,
        healthy: impl Fn(BackendId) -> bool,
        in_flight: impl FnOnce() -> Vec<u32>,
    ) -> (Vec<BackendId>, Option<String>) {
        let pinned = cookie
            .and_then(|c| self.tokens.iter().position(|t| t == c))
            .map(|i| self.ids[i])
            .filter(|&id| healthy(id));
        self.turn = self.turn.wrapping_add(1);
        let load = if self.inner.needs_load() {
            in_flight()
        } else {
            Vec::new()
        };
        let placed = self
            .inner
            .order(&self.ids, &self.weights, &load, self.turn, r);
        match pinned {
            Some(id) => (
                std::iter::once(id)
                    .chain(placed.into_iter().filter(|&o| o != id))
                    .collect(),
                None,
            ),
            None => {
                let first = placed.first().copied();
                let set = first.map(|id| {
                    format!(
                        "{}={}; {}",
                        self.settings.cookie, self.tokens[id as usize], self.settings.attributes
                    )
                });
                (placed, set)
            }
        }
    }
}

impl Strategy for Sticky {
    const NAME: &'static str = "sticky";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn new(config: Config) -> Result<Self, String> {
        let settings: Settings = config.parse()?;
        let inner = Inner::parse(&settings.inner)?;
        if settings.cookie.is_empty()
            || !settings
                .cookie
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!(
                "\"cookie\" must be letters, digits, '-' or '_', got {:?}",
                settings.cookie
            ));
        }
        Ok(Sticky {
            settings,
            inner,
            ids: Vec::new(),
            tokens: Vec::new(),
            weights: Vec::new(),
            turn: 0,
        })
    }

    fn set_backends(&mut self, backends: &[Backend]) {
        self.ids = backends.iter().map(|b| b.id).collect();
        self.tokens = backends.iter().map(|b| token(&b.address)).collect();
        self.weights = backends.iter().map(|b| b.weight).collect();
    }

    fn select(&mut self, request: &Request<'_>, out: &mut Candidates) -> Result<(), Rejection> {
        let cookie = request.cookie(&self.settings.cookie);
        let (order, set_cookie) = self.order(
            cookie.as_deref(),
            veer_sdk::random(),
            |id| veer_sdk::backend_stats(id).is_some_and(|s| s.healthy),
            veer_sdk::all_in_flight,
        );
        if let Some(value) = set_cookie
            && let Err(e) = veer_sdk::set_response_header("set-cookie", &value)
        {
            veer_sdk::log(
                veer_sdk::LogLevel::Warn,
                &format!("could not set the sticky cookie: {e}"),
            );
        }
        out.extend(order);
        Ok(())
    }
}

export_strategy!(Sticky);

#[cfg(test)]
mod tests {
    use super::*;
    use veer_sdk::BackendStats;
    use veer_sdk::testing::{FakeHost, FakeRequest, backends, request};

    fn strategy() -> Sticky {
        let mut s = Sticky::new(Config::new("{}")).unwrap();
        s.set_backends(&backends(3));
        s
    }

    fn healthy() -> FakeHost {
        FakeHost::new().with_stats(vec![BackendStats::new(); 3])
    }

    #[test]
    fn a_new_client_is_placed_and_given_a_cookie_naming_its_backend() {
        let mut host = healthy();
        let mut s = strategy();
        let order = host.select(&mut s, &request()).unwrap();
        let headers = host.response_headers();
        let (name, cookie) = headers.first().expect("a new placement sets the cookie");
        assert_eq!(name, "set-cookie");
        assert!(
            cookie.starts_with(&format!(
                "veer-sticky={}; Path=/",
                token(&format!("10.0.0.{}:80", order[0]))
            )),
            "{cookie}"
        );
    }

    #[test]
    fn a_client_with_the_cookie_stays_while_healthy_and_moves_when_not() {
        let mut host = healthy();
        let mut s = strategy();
        let with_cookie = FakeRequest::get("/").cookie("veer-sticky", &token("10.0.0.1:80"));
        for _ in 0..5 {
            assert_eq!(host.select(&mut s, &with_cookie).unwrap()[0], 1);
            assert!(host.response_headers().is_empty(), "no new cookie");
        }
        host.set_stats(1, BackendStats::new().down());
        assert_ne!(host.select(&mut s, &with_cookie).unwrap()[0], 1);
        assert!(
            !host.response_headers().is_empty(),
            "re-placed clients get a new cookie"
        );
    }
}
