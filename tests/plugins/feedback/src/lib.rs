//! A plugin that asks for outcomes and state hand-over, and tells what it
//! got: every response carries `x-outcomes` (attempt outcomes this instance
//! and those it took state from heard so far), `x-failures` (of those, the
//! ones without a response) and `x-imported` (the state it was handed, or
//! `none`). It answers the backends in order: 0 first.
use veer_sdk::{
    Backend, BackendId, Candidates, Capabilities, Config, Outcome, Rejection, Request, Strategy,
    export_strategy, set_response_header,
};

/// What it heard.
#[derive(Debug, Default)]
pub struct Feedback {
    ids: Vec<BackendId>,
    outcomes: u64,
    failures: u64,
    imported: Option<String>,
}

impl Strategy for Feedback {
    const NAME: &'static str = "feedback";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const CAPABILITIES: Capabilities = Capabilities::OUTCOMES.and(Capabilities::HAND_OVER);

    fn new(_config: Config) -> Result<Self, String> {
        Ok(Feedback::default())
    }

    fn set_backends(&mut self, backends: &[Backend]) {
        self.ids = backends.iter().map(|b| b.id).collect();
    }

    fn select(&mut self, _request: &Request<'_>, out: &mut Candidates) -> Result<(), Rejection> {
        let _ = set_response_header("x-outcomes", &self.outcomes.to_string());
        let _ = set_response_header("x-failures", &self.failures.to_string());
        let _ = set_response_header("x-imported", self.imported.as_deref().unwrap_or("none"));
        out.extend(self.ids.iter().copied());
        Ok(())
    }

    fn on_outcome(&mut self, outcome: &Outcome) {
        self.outcomes += 1;
        if outcome.status.is_none() {
            self.failures += 1;
        }
    }

    fn export_state(&self) -> Vec<u8> {
        format!("{} {}", self.outcomes, self.failures).into_bytes()
    }

    fn import_state(&mut self, state: &[u8]) -> Result<(), String> {
        let text = std::str::from_utf8(state).map_err(|e| e.to_string())?;
        let (outcomes, failures) = text
            .split_once(' ')
            .ok_or_else(|| format!("expected `outcomes failures`, got {text:?}"))?;
        self.outcomes = outcomes.parse().map_err(|e| format!("{e}"))?;
        self.failures = failures.parse().map_err(|e| format!("{e}"))?;
        self.imported = Some(text.to_string());
        Ok(())
    }
}

export_strategy!(Feedback);

#[cfg(test)]
mod tests {
    use super::*;
    use veer_sdk::testing::{FakeHost, backends, request};

    #[test]
    fn it_tells_how_many_outcomes_it_heard_and_hands_them_on() {
        let mut host = FakeHost::new();
        let mut old = Feedback::new(Config::new("{}")).unwrap();
        old.set_backends(&backends(2));
        old.on_outcome(&Outcome::response(0, 200, 100));
        old.on_outcome(&Outcome::failed(0, veer_sdk::Failure::Connect, 5));
        assert_eq!(host.select(&mut old, &request()), Ok(vec![0, 1]));
        assert!(
            host.response_headers()
                .contains(&("x-outcomes".into(), "2".into()))
        );

        let mut new = Feedback::new(Config::new("{}")).unwrap();
        new.import_state(&old.export_state()).unwrap();
        host.clear();
        host.select(&mut new, &request()).unwrap();
        let headers = host.response_headers();
        assert!(
            headers.contains(&("x-failures".into(), "1".into())),
            "{headers:?}"
        );
        assert!(
            headers.contains(&("x-imported".into(), "2 1".into())),
            "{headers:?}"
        );
    }
}
