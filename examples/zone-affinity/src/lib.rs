//! `zone-affinity`: requests carrying a zone header (default `x-zone`) go to
//! backends labelled with that `zone`, in turn; every other backend follows as
//! a fallback. Requests without the header are spread over all backends.
use serde::Deserialize;
use veer_sdk::{Backend, BackendId, Config, Request, Strategy, export_strategy};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default = "default_header")]
    header: String,
}

fn default_header() -> String {
    "x-zone".into()
}

pub struct ZoneAffinity {
    header: String,
    backends: Vec<(BackendId, Option<String>)>,
    turn: usize,
}

impl Strategy for ZoneAffinity {
    const NAME: &'static str = "zone-affinity";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn new(config: Config) -> Result<Self, String> {
        let settings: Settings = config.parse()?;
        Ok(ZoneAffinity {
            header: settings.header,
            backends: Vec::new(),
            turn: 0,
        })
    }

    fn set_backends(&mut self, backends: Vec<Backend>) {
        let zone = |b: &Backend| {
            b.labels
                .iter()
                .find(|(k, _)| k == "zone")
                .map(|(_, v)| v.clone())
        };
        self.backends = backends.iter().map(|b| (b.id, zone(b))).collect();
    }

    fn select(&mut self, request: &Request) -> Vec<BackendId> {
        self.turn = self.turn.wrapping_add(1);
        let zone = request.header(&self.header);
        let (local, others): (Vec<_>, Vec<_>) = self
            .backends
            .iter()
            .partition(|(_, z)| zone.is_some() && *z == zone);
        // Each group in turn: the zone's backends first, then the rest.
        let mut order = Vec::with_capacity(self.backends.len());
        for group in [local, others] {
            let n = group.len();
            order.extend((0..n).map(|i| group[(self.turn + i) % n].0));
        }
        order
    }
}

export_strategy!(ZoneAffinity);
