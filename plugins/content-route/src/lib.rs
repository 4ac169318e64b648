//! `content-route`: content-based routing inside a pool. `rules` are tried in
//! order; the first that matches the request picks the backends whose labels
//! include the rule's `labels` (e.g. `x-version: v2` → `version = "v2"`). A
//! rule matches when all the conditions it gives hold: `header`, `cookie` or
//! `query` (a name; with `equals`, the value must equal it, else it must be
//! present), `path_prefix`, `method`. When no rule matches, `split` (if
//! given) picks a subset at random by weight, e.g. 90/10 for a canary;
//! otherwise every backend is eligible. Within the subset, `inner`
//! (`round-robin`, `random`, `least-connections`) orders them; only the
//! subset is returned, so traffic never leaks to another version.
use std::collections::BTreeMap;

use serde::Deserialize;
use veer_sdk::{Backend, BackendId, Config, Method, Request, Strategy, export_strategy};
use veer_strategy_kit::{Inner, weighted_index};

/// `strategy_config` of `content-route`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Tried in order; the first match decides.
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// Weighted subsets for requests no rule matched.
    #[serde(default)]
    pub split: Vec<Split>,
    /// Order within the subset (default `round-robin`).
    #[serde(default = "round_robin")]
    pub inner: String,
}

fn round_robin() -> String {
    "round-robin".into()
}

/// One rule.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Header name to test.
    pub header: Option<String>,
    /// Cookie name to test.
    pub cookie: Option<String>,
    /// Query parameter name to test.
    pub query: Option<String>,
    /// Value the header/cookie/query must equal (else: must be present).
    pub equals: Option<String>,
    /// Path prefix the request must have.
    pub path_prefix: Option<String>,
    /// Method the request must have, e.g. `"POST"`.
    pub method: Option<String>,
    /// Labels a backend must carry to be in the subset.
    pub labels: BTreeMap<String, String>,
}

/// One subset of a split.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Split {
    /// Labels a backend must carry to be in the subset.
    pub labels: BTreeMap<String, String>,
    /// Share of unmatched requests (relative to the others).
    pub weight: u32,
}

/// Settings, and the subsets computed for the current backends.
#[derive(Debug)]
pub struct ContentRoute {
    settings: Settings,
    inner: Inner,
    all: Vec<BackendId>,
    weights: Vec<u32>,
    rule_subsets: Vec<Vec<BackendId>>,
    split_subsets: Vec<Vec<BackendId>>,
    split_weights: Vec<u32>,
    turns: Vec<usize>,
}

/// The request facts a rule may test; asked of the host lazily.
pub trait Facts {
    /// The request method.
    fn method(&self) -> &str;
    /// The path.
    fn path(&self) -> &str;
    /// A header, cookie or query value (`kind`: 0, 1, 2).
    fn value(&self, kind: usize, name: &str) -> Option<String>;
}

impl Rule {
    fn matches(&self, facts: &dyn Facts) -> bool {
        let named = [&self.header, &self.cookie, &self.query];
        let value_ok = named.iter().enumerate().all(|(kind, name)| match name {
            None => true,
            Some(name) => match (facts.value(kind, name), &self.equals) {
                (Some(v), Some(want)) => v == *want,
                (Some(_), None) => true,
                (None, _) => false,
            },
        });
        value_ok
            && self
                .path_prefix
                .as_deref()
                .is_none_or(|p| facts.path().starts_with(p))
            && self
                .method
                .as_deref()
                .is_none_or(|m| m.eq_ignore_ascii_case(facts.method()))
    }
}

fn subset(backends: &[Backend], labels: &BTreeMap<String, String>) -> Vec<BackendId> {
    backends
        .iter()
        .filter(|b| {
            labels
                .iter()
                .all(|(k, v)| b.labels.iter().any(|(bk, bv)| bk == k && bv == v))
        })
        .map(|b| b.id)
        .collect()
}

impl ContentRoute {
    /// The order for a request; `r` is a random number, `in_flight` by id
    /// (read only for `least-connections`).
    pub fn order(
        &mut self,
        facts: &dyn Facts,
        r: u64,
        in_flight: impl FnOnce() -> Vec<u32>,
    ) -> Vec<BackendId> {
        let slot = match self
            .settings
            .rules
            .iter()
            .position(|rule| rule.matches(facts))
        {
            Some(i) => i,
            None if !self.split_subsets.is_empty() => {
                self.rule_subsets.len() + weighted_index(&self.split_weights, r)
            }
            None => self.rule_subsets.len() + self.split_subsets.len(),
        };
        let ids = match slot {
            s if s < self.rule_subsets.len() => &self.rule_subsets[s],
            s if s < self.rule_subsets.len() + self.split_subsets.len() => {
                &self.split_subsets[s - self.rule_subsets.len()]
            }
            _ => &self.all,
        };
        self.turns[slot] = self.turns[slot].wrapping_add(1);
        let load = if self.inner.needs_load() {
            in_flight()
        } else {
            Vec::new()
        };
        // Mix the random number so the split's draw does not pick the start.
        self.inner.order(
            ids,
            &self.weights,
            &load,
            self.turns[slot],
            r.rotate_left(32),
        )
    }
}

impl Strategy for ContentRoute {
    const NAME: &'static str = "content-route";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn new(config: Config) -> Result<Self, String> {
        let settings: Settings = config.parse()?;
        let inner = Inner::parse(&settings.inner)?;
        if settings.split.iter().any(|s| s.weight == 0) {
            return Err("every \"split\" entry needs a weight of at least 1".into());
        }
        let slots = settings.rules.len() + settings.split.len() + 1;
        Ok(ContentRoute {
            inner,
            all: Vec::new(),
            weights: Vec::new(),
            rule_subsets: Vec::new(),
            split_subsets: Vec::new(),
            split_weights: settings.split.iter().map(|s| s.weight).collect(),
            turns: vec![0; slots],
            settings,
        })
    }

    fn set_backends(&mut self, backends: Vec<Backend>) {
        self.all = backends.iter().map(|b| b.id).collect();
        self.weights = backends.iter().map(|b| b.weight).collect();
        // A subset no backend carries the labels of falls back to all.
        let or_all = |s: Vec<BackendId>| if s.is_empty() { self.all.clone() } else { s };
        self.rule_subsets = self
            .settings
            .rules
            .iter()
            .map(|r| or_all(subset(&backends, &r.labels)))
            .collect();
        self.split_subsets = self
            .settings
            .split
            .iter()
            .map(|s| or_all(subset(&backends, &s.labels)))
            .collect();
    }

    fn select(&mut self, request: &Request) -> Vec<BackendId> {
        struct Live<'a>(&'a Request, String);
        impl Facts for Live<'_> {
            fn method(&self) -> &str {
                &self.1
            }
            fn path(&self) -> &str {
                &self.0.path
            }
            fn value(&self, kind: usize, name: &str) -> Option<String> {
                match kind {
                    0 => self.0.header(name),
                    1 => self.0.cookie(name),
                    _ => self.0.query_param(name),
                }
            }
        }
        let method = match &request.method {
            Method::Get => "GET".to_string(),
            Method::Head => "HEAD".into(),
            Method::Post => "POST".into(),
            Method::Put => "PUT".into(),
            Method::Delete => "DELETE".into(),
            Method::Connect => "CONNECT".into(),
            Method::Options => "OPTIONS".into(),
            Method::Trace => "TRACE".into(),
            Method::Patch => "PATCH".into(),
            Method::Other(m) => m.clone(),
        };
        let facts = Live(request, method);
        self.order(&facts, veer_sdk::random(), veer_sdk::all_in_flight)
    }
}

export_strategy!(ContentRoute);

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake {
        header: Option<&'static str>,
        path: &'static str,
    }
    impl Facts for Fake {
        fn method(&self) -> &str {
            "GET"
        }
        fn path(&self) -> &str {
            self.path
        }
        fn value(&self, kind: usize, _name: &str) -> Option<String> {
            (kind == 0).then_some(self.header?.to_string())
        }
    }

    fn strategy(json: &str) -> ContentRoute {
        let mut s = ContentRoute::new(Config::new(json)).unwrap();
        let version = |id: u32, v: &str| Backend {
            id,
            address: format!("b{id}"),
            weight: 1,
            labels: vec![("version".into(), v.into())],
        };
        s.set_backends(vec![version(0, "v1"), version(1, "v1"), version(2, "v2")]);
        s
    }

    #[test]
    fn a_matching_header_rule_picks_only_the_labelled_subset() {
        let mut s = strategy(
            r#"{"rules":[{"header":"x-version","equals":"v2","labels":{"version":"v2"}}]}"#,
        );
        let v2 = Fake {
            header: Some("v2"),
            path: "/",
        };
        assert_eq!(s.order(&v2, 0, Vec::new), vec![2]);
        let other = Fake {
            header: Some("v1"),
            path: "/",
        };
        assert_eq!(
            s.order(&other, 0, Vec::new).len(),
            3,
            "no rule matched: all backends"
        );
    }

    #[test]
    fn a_split_sends_traffic_in_proportion() {
        let mut s = strategy(
            r#"{"split":[{"labels":{"version":"v1"},"weight":9},{"labels":{"version":"v2"},"weight":1}]}"#,
        );
        let plain = Fake {
            header: None,
            path: "/",
        };
        let to_v2 = (0..1000u64)
            .filter(|&r| s.order(&plain, r, Vec::new)[0] == 2)
            .count();
        assert_eq!(to_v2, 100, "weights 9:1 over 1000 consecutive draws");
    }

    #[test]
    fn bad_inner_strategies_and_zero_weights_are_refused() {
        assert!(
            ContentRoute::new(Config::new(r#"{"inner":"fastest"}"#))
                .unwrap_err()
                .contains("fastest")
        );
        assert!(ContentRoute::new(Config::new(r#"{"split":[{"labels":{},"weight":0}]}"#)).is_err());
    }
}
