//! A plugin that misbehaves on purpose, to test that the host survives it.
//! Its config picks how: `{"mode": "trap"}`, `"spin"`, `"grow"`, `"empty"`, `"unknown"`,
//! `"refuse"` (refuses its config in `init`), or `"first"` (behaves: always
//! the first backend).
use veer_sdk::{Backend, BackendId, Config, Request, Strategy, export_strategy};

/// What to do wrong.
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// `select` panics, which is a Wasm trap (`panic = "abort"`).
    Trap,
    /// `select` never returns.
    Spin,
    /// `select` tries to allocate 64 MiB (over the host's memory cap).
    Grow,
    /// `select` returns no candidates.
    Empty,
    /// `select` returns an id no backend has.
    Unknown,
    /// Behaves: the first backend only.
    First,
}

/// The misbehaving strategy.
#[derive(Debug)]
pub struct Misbehave {
    mode: Mode,
    ids: Vec<BackendId>,
}

impl Mode {
    /// Reads the mode from a config such as `{"mode":"trap"}` (no JSON
    /// library: keeps the test plugin tiny).
    pub fn from_config(json: &str) -> Result<Mode, String> {
        let compact: String = json.chars().filter(|c| !c.is_whitespace()).collect();
        let mode = compact
            .strip_prefix("{\"mode\":\"")
            .and_then(|s| s.strip_suffix("\"}"))
            .ok_or_else(|| format!("expected {{\"mode\": \"...\"}}, got {json}"))?;
        match mode {
            "trap" => Ok(Mode::Trap),
            "spin" => Ok(Mode::Spin),
            "grow" => Ok(Mode::Grow),
            "empty" => Ok(Mode::Empty),
            "unknown" => Ok(Mode::Unknown),
            "first" => Ok(Mode::First),
            "refuse" => Err("refused on purpose: mode is \"refuse\"".to_string()),
            other => Err(format!(
                "unknown mode {other:?}; use trap, spin, empty, unknown, first or refuse"
            )),
        }
    }
}

impl Strategy for Misbehave {
    const NAME: &'static str = "misbehave";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn new(config: Config) -> Result<Self, String> {
        Ok(Misbehave {
            mode: Mode::from_config(config.as_json())?,
            ids: Vec::new(),
        })
    }

    fn set_backends(&mut self, backends: Vec<Backend>) {
        self.ids = backends.iter().map(|b| b.id).collect();
    }

    fn select(&mut self, _request: &Request) -> Vec<BackendId> {
        match self.mode {
            Mode::Trap => panic!("misbehave: trapping on purpose"),
            Mode::Spin => loop {
                std::hint::black_box(&self.ids);
            },
            Mode::Grow => {
                let hog = vec![1u8; 64 << 20];
                vec![std::hint::black_box(hog)[0] as u32 - 1]
            }
            Mode::Empty => Vec::new(),
            Mode::Unknown => vec![u32::MAX],
            Mode::First => self.ids.first().copied().into_iter().collect(),
        }
    }
}

export_strategy!(Misbehave);
