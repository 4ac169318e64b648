//! `zone-affinity`: requests carrying a zone header (default `x-zone`) go to
//! backends labelled with that `zone`, in turn; every other backend follows as
//! a fallback. Requests without the header are spread over all backends.
//!
//! The groups are worked out when the backends change, so a request costs
//! one header lookup and no allocation.
use serde::Deserialize;
use veer_sdk::{
    Backend, BackendId, Candidates, Config, Rejection, Request, Strategy, export_strategy,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default = "default_header")]
    header: String,
}

fn default_header() -> String {
    "x-zone".into()
}

/// One zone's backends, and the others in pool order.
struct Zone {
    name: String,
    local: Vec<BackendId>,
    others: Vec<BackendId>,
}

/// The strategy: the header to read and the zones of the current backends.
pub struct ZoneAffinity {
    header: String,
    zones: Vec<Zone>,
    all: Vec<BackendId>,
    turn: usize,
}

impl Strategy for ZoneAffinity {
    const NAME: &'static str = "zone-affinity";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn new(config: Config) -> Result<Self, String> {
        let settings: Settings = config.parse()?;
        Ok(ZoneAffinity {
            header: settings.header,
            zones: Vec::new(),
            all: Vec::new(),
            turn: 0,
        })
    }

    fn set_backends(&mut self, backends: &[Backend]) {
        self.all = backends.iter().map(|b| b.id).collect();
        self.zones.clear();
        for backend in backends {
            let Some(name) = backend.label("zone") else {
                continue;
            };
            if self.zones.iter().any(|z| z.name == name) {
                continue;
            }
            let (local, others) = backends
                .iter()
                .map(|b| (b.id, b.label("zone") == Some(name)))
                .partition::<Vec<_>, _>(|&(_, here)| here);
            self.zones.push(Zone {
                name: name.to_string(),
                local: local.into_iter().map(|(id, _)| id).collect(),
                others: others.into_iter().map(|(id, _)| id).collect(),
            });
        }
    }

    fn select(&mut self, request: &Request<'_>, out: &mut Candidates) -> Result<(), Rejection> {
        self.turn = self.turn.wrapping_add(1);
        let zone = request
            .header(&self.header)
            .and_then(|name| self.zones.iter().find(|z| z.name == name));
        let (local, others): (&[BackendId], &[BackendId]) = match zone {
            Some(zone) => (&zone.local, &zone.others),
            None => (&[], &self.all),
        };
        // Each group in turn: the zone's backends first, then the rest.
        for group in [local, others] {
            let n = group.len();
            out.extend((0..n).map(|i| group[(self.turn + i) % n]));
        }
        Ok(())
    }
}

export_strategy!(ZoneAffinity);

#[cfg(test)]
mod tests {
    use super::*;
    use veer_sdk::testing::{FakeHost, FakeRequest, request};

    fn strategy() -> ZoneAffinity {
        let mut s = ZoneAffinity::new(Config::new("{}")).unwrap();
        s.set_backends(&[
            Backend::new(0, "a:1").with_label("zone", "east"),
            Backend::new(1, "b:1").with_label("zone", "west"),
            Backend::new(2, "c:1").with_label("zone", "west"),
        ]);
        s
    }

    #[test]
    fn a_zoned_request_goes_to_its_zone_in_turn_with_the_others_as_fallbacks() {
        let mut host = FakeHost::new();
        let mut s = strategy();
        let west = FakeRequest::get("/").header("x-zone", "west");
        assert_eq!(host.select(&mut s, &west), Ok(vec![2, 1, 0]));
        assert_eq!(host.select(&mut s, &west), Ok(vec![1, 2, 0]));
    }

    #[test]
    fn a_request_without_a_known_zone_is_spread_over_all_backends() {
        let mut host = FakeHost::new();
        let mut s = strategy();
        let firsts: Vec<u32> = (0..3)
            .map(|_| host.select(&mut s, &request()).unwrap()[0])
            .collect();
        assert_eq!(firsts, [1, 2, 0]);
        let north = FakeRequest::get("/").header("x-zone", "north");
        assert_eq!(host.select(&mut s, &north).unwrap().len(), 3);
    }
}
