//! A plugin that misbehaves on purpose, to test that the host survives it.
//! Its config picks how: `{"mode": "trap"}`, `"spin"`, `"grow"`, `"empty"`, `"unknown"`,
//! `"slow"`, `"storm"`, `"long"`, `"big-header"`, `"spam"`, `"huge-log"`,
//! `"heavy-log"`, `"trap-init"`, `"refuse"` (refuses its config in `init`),
//! `"reject"` (`select` refuses every request), `"defer"` (`select` defers
//! every request), or `"first"` (behaves: always the first backend).
//!
//! It never asks for outcomes, and traps if `on_outcome` is called anyway.
use veer_sdk::{
    Backend, BackendId, Candidates, Config, LogLevel, Outcome, Rejection, Request, Strategy,
    export_strategy, log, set_response_header,
};

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
    /// Legal but slow: burns a few milliseconds of CPU, then the first
    /// backend.
    Slow,
    /// Calls the `header` import 5,000 times, then the first backend.
    Storm,
    /// Answers 10,000 ids (the first backend's first).
    Long,
    /// Sets a 1 MiB response header, then the first backend.
    BigHeader,
    /// Logs 50 lines per call, then the first backend.
    Spam,
    /// Logs one 3 MiB message, then the first backend.
    HugeLog,
    /// `select` refuses every request (no backend may serve it).
    Reject,
    /// `select` defers every request (the failure policy serves).
    Defer,
    /// Legal but slow in a way fuel does not see: logs a 1 MiB message
    /// (built once) 16 times, so the time goes into the host copying it,
    /// then the first backend.
    HeavyLog,
}

/// The misbehaving strategy.
#[derive(Debug)]
pub struct Misbehave {
    mode: Mode,
    ids: Vec<BackendId>,
    /// What `heavy-log` logs.
    message: String,
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
            "slow" => Ok(Mode::Slow),
            "storm" => Ok(Mode::Storm),
            "long" => Ok(Mode::Long),
            "big-header" => Ok(Mode::BigHeader),
            "spam" => Ok(Mode::Spam),
            "huge-log" => Ok(Mode::HugeLog),
            "heavy-log" => Ok(Mode::HeavyLog),
            "reject" => Ok(Mode::Reject),
            "defer" => Ok(Mode::Defer),
            "trap-init" => panic!("misbehave: trapping in init on purpose"),
            "refuse" => Err("refused on purpose: mode is \"refuse\"".to_string()),
            other => Err(format!(
                "unknown mode {other:?}; use trap, spin, grow, empty, unknown, first, slow, \
                 heavy-log, storm, long, big-header, spam, huge-log, trap-init, refuse, reject or defer"
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
            message: String::new(),
        })
    }

    fn set_backends(&mut self, backends: &[Backend]) {
        self.ids = backends.iter().map(|b| b.id).collect();
    }

    fn select(&mut self, request: &Request<'_>, out: &mut Candidates) -> Result<(), Rejection> {
        let order: Vec<BackendId> = match self.mode {
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
            Mode::Slow => {
                let mut x = 1u64;
                for i in 0..3_000_000u64 {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
                }
                std::hint::black_box(x);
                self.ids.first().copied().into_iter().collect()
            }
            Mode::Storm => {
                for _ in 0..5_000 {
                    std::hint::black_box(request.header("x-storm"));
                }
                self.ids.first().copied().into_iter().collect()
            }
            Mode::Long => {
                let first = self.ids.first().copied().unwrap_or(0);
                vec![first; 10_000]
            }
            Mode::BigHeader => {
                let _ = set_response_header("x-big", &"x".repeat(1 << 20));
                self.ids.first().copied().into_iter().collect()
            }
            Mode::Spam => {
                for i in 0..50 {
                    log(LogLevel::Info, &format!("misbehave: spam line {i}"));
                }
                self.ids.first().copied().into_iter().collect()
            }
            Mode::HeavyLog => {
                if self.message.is_empty() {
                    self.message = "x".repeat(1 << 20);
                }
                for _ in 0..16 {
                    log(LogLevel::Debug, &self.message);
                }
                self.ids.first().copied().into_iter().collect()
            }
            Mode::HugeLog => {
                log(LogLevel::Info, &"x".repeat(3 << 20));
                self.ids.first().copied().into_iter().collect()
            }
            Mode::Reject => {
                return Err(Rejection::Refuse("misbehave refuses on purpose".into()));
            }
            Mode::Defer => return Err(Rejection::Defer("misbehave defers on purpose".into())),
        };
        out.extend(order);
        Ok(())
    }

    fn on_outcome(&mut self, _outcome: &Outcome) {
        panic!("misbehave: on_outcome called, but it never asked for outcomes")
    }
}

export_strategy!(Misbehave);
