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
//!
//! A rule or split entry whose labels no backend carries refuses its
//! requests (`Rejection::Refuse`: the client gets a 503 naming the labels)
//! rather than send them to other backends. Backends of the subset that are
//! down are the host's to skip, under the pool's `when_all_down`.
use std::collections::BTreeMap;

use serde::Deserialize;
use veer_sdk::{
    Backend, BackendId, Candidates, Config, Rejection, Request, Strategy, export_strategy,
};
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

impl Rule {
    /// Whether `request` meets every condition given; each value is asked
    /// of the host only when a condition needs it.
    fn matches(&self, request: &Request<'_>) -> bool {
        type Lookup = fn(&Request<'_>, &str) -> Option<String>;
        let lookups: [(&Option<String>, Lookup); 3] = [
            (&self.header, |r, n| r.header(n)),
            (&self.cookie, |r, n| r.cookie(n)),
            (&self.query, |r, n| r.query_param(n)),
        ];
        let value_ok = lookups.iter().all(|(name, look)| match name {
            None => true,
            Some(name) => match (look(request, name), &self.equals) {
                (Some(v), Some(want)) => v == *want,
                (Some(_), None) => true,
                (None, _) => false,
            },
        });
        value_ok
            && self
                .path_prefix
                .as_deref()
                .is_none_or(|p| request.path().starts_with(p))
            && self
                .method
                .as_deref()
                .is_none_or(|m| m.eq_ignore_ascii_case(request.method().as_str()))
    }
}

/// `k=v, …` for a refusal's reason.
fn describe(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
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
    /// The subset for `request` ordered into `out`, or a refusal when the
    /// subset it belongs to is empty.
    fn order(&mut self, request: &Request<'_>, out: &mut Candidates) -> Result<(), Rejection> {
        let r = veer_sdk::random();
        let slot = match self
            .settings
            .rules
            .iter()
            .position(|rule| rule.matches(request))
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
        if ids.is_empty() {
            let labels = match slot {
                s if s < self.rule_subsets.len() => &self.settings.rules[s].labels,
                s => &self.settings.split[s - self.rule_subsets.len()].labels,
            };
            return Err(Rejection::Refuse(format!(
                "no backend of this pool has the labels {} this request is routed to",
                describe(labels)
            )));
        }
        self.turns[slot] = self.turns[slot].wrapping_add(1);
        let load = if self.inner.needs_load() {
            veer_sdk::all_in_flight()
        } else {
            Vec::new()
        };
        // Mix the random number so the split's draw does not pick the start.
        out.extend(self.inner.order(
            ids,
            &self.weights,
            &load,
            self.turns[slot],
            r.rotate_left(32),
        ));
        Ok(())
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

    fn set_backends(&mut self, backends: &[Backend]) {
        self.all = backends.iter().map(|b| b.id).collect();
        self.weights = backends.iter().map(|b| b.weight).collect();
        // A subset no backend carries the labels of stays empty: its
        // requests are refused, never sent elsewhere.
        self.rule_subsets = self
            .settings
            .rules
            .iter()
            .map(|r| subset(backends, &r.labels))
            .collect();
        self.split_subsets = self
            .settings
            .split
            .iter()
            .map(|s| subset(backends, &s.labels))
            .collect();
    }

    fn select(&mut self, request: &Request<'_>, out: &mut Candidates) -> Result<(), Rejection> {
        self.order(request, out)
    }
}

export_strategy!(ContentRoute);

#[cfg(test)]
mod tests {
    use super::*;
    use veer_sdk::testing::{FakeHost, FakeRequest, request};

    fn strategy(json: &str) -> ContentRoute {
        let mut s = ContentRoute::new(Config::new(json)).unwrap();
        let version =
            |id: u32, v: &str| Backend::new(id, format!("b{id}")).with_label("version", v);
        s.set_backends(&[version(0, "v1"), version(1, "v1"), version(2, "v2")]);
        s
    }

    const V2_RULE: &str =
        r#"{"rules":[{"header":"x-version","equals":"v2","labels":{"version":"v2"}}]}"#;

    #[test]
    fn a_matching_header_rule_picks_only_the_labelled_subset() {
        let mut host = FakeHost::new();
        let mut s = strategy(V2_RULE);
        let v2 = FakeRequest::get("/").header("x-version", "v2");
        assert_eq!(host.select(&mut s, &v2), Ok(vec![2]));
        let other = FakeRequest::get("/").header("x-version", "v1");
        assert_eq!(
            host.select(&mut s, &other).unwrap().len(),
            3,
            "no rule matched: all backends"
        );
    }

    #[test]
    fn a_rule_whose_labels_no_backend_has_refuses_rather_than_leak() {
        let mut host = FakeHost::new();
        let mut s = strategy(V2_RULE);
        // v2 is gone from the pool: v2 requests must not reach v1.
        s.set_backends(&[
            Backend::new(0, "b0").with_label("version", "v1"),
            Backend::new(1, "b1").with_label("version", "v1"),
        ]);
        let v2 = FakeRequest::get("/").header("x-version", "v2");
        match host.select(&mut s, &v2) {
            Err(Rejection::Refuse(reason)) => assert!(reason.contains("version=v2"), "{reason}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert_eq!(host.select(&mut s, &request()).unwrap().len(), 2);
    }

    #[test]
    fn rules_test_cookies_queries_paths_and_methods() {
        let mut host = FakeHost::new();
        let mut s = strategy(
            r#"{"rules":[
                {"cookie":"beta","labels":{"version":"v2"}},
                {"query":"canary","equals":"1","labels":{"version":"v2"}},
                {"path_prefix":"/new/","method":"POST","labels":{"version":"v2"}}
            ]}"#,
        );
        let to_v2 = |host: &mut FakeHost, s: &mut ContentRoute, r: FakeRequest| {
            host.select(s, &r).unwrap() == vec![2]
        };
        assert!(to_v2(
            &mut host,
            &mut s,
            FakeRequest::get("/").cookie("beta", "yes")
        ));
        assert!(to_v2(&mut host, &mut s, FakeRequest::get("/x?canary=1")));
        assert!(!to_v2(&mut host, &mut s, FakeRequest::get("/x?canary=0")));
        assert!(to_v2(&mut host, &mut s, FakeRequest::post("/new/order")));
        assert!(!to_v2(&mut host, &mut s, FakeRequest::get("/new/order")));
    }

    #[test]
    fn a_split_sends_traffic_in_proportion() {
        let mut host = FakeHost::new().with_seed(11);
        let mut s = strategy(
            r#"{"split":[{"labels":{"version":"v1"},"weight":9},{"labels":{"version":"v2"},"weight":1}]}"#,
        );
        let to_v2 = (0..2000)
            .filter(|_| host.select(&mut s, &request()).unwrap()[0] == 2)
            .count();
        assert!(
            (140..260).contains(&to_v2),
            "weights 9:1 over 2000 draws: {to_v2}"
        );
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
