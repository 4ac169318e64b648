//! Where log lines go: Veer's own log (text on stderr, filtered by
//! `RUST_LOG`, `info` by default) and the access log (`veer::access`
//! events, on their own output: stdout, stderr or a file).
//!
//! The access log is built for one line per request at full load: each
//! thread appends lines to a buffer of its own (no lock shared with other
//! workers, no hand-off per line), written out in one `write` when it holds
//! 64 KiB, or by a flusher thread every 200 ms, and at exit.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::field::{Field, Visit};
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, fmt};

/// A thread's buffer is written out once it holds this much.
const FLUSH_AT: usize = 64 * 1024;
/// And at least this often.
const FLUSH_EVERY: Duration = Duration::from_millis(200);

type Buffer = Arc<Mutex<Vec<u8>>>;

/// The access log's output and every thread's buffer.
struct Sink {
    out: Mutex<Box<dyn Write + Send>>,
    buffers: Mutex<Vec<Buffer>>,
}

impl Sink {
    /// Writes out `buffer` (its lock held by the caller).
    fn drain(&self, buffer: &mut Vec<u8>) {
        if buffer.is_empty() {
            return;
        }
        if let Ok(mut out) = self.out.lock() {
            let _ = out.write_all(buffer);
            let _ = out.flush();
        }
        buffer.clear();
    }

    fn flush_all(&self) {
        let buffers = self.buffers.lock().map(|b| b.clone()).unwrap_or_default();
        for buffer in buffers {
            if let Ok(mut buffer) = buffer.lock() {
                self.drain(&mut buffer);
            }
        }
    }
}

/// Appends `veer::access` events' `line` field to the calling thread's
/// buffer.
struct AccessLayer {
    sink: Arc<Sink>,
}

thread_local! {
    static MINE: std::cell::OnceCell<Buffer> = const { std::cell::OnceCell::new() };
}

struct Line<'a>(&'a mut Vec<u8>);

impl Visit for Line<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "line" {
            self.0.extend_from_slice(value.as_bytes());
            self.0.push(b'\n');
        }
    }

    fn record_debug(&mut self, _: &Field, _: &dyn std::fmt::Debug) {}
}

impl<S: tracing::Subscriber> Layer<S> for AccessLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        MINE.with(|mine| {
            let buffer = mine.get_or_init(|| {
                let buffer = Buffer::default();
                if let Ok(mut all) = self.sink.buffers.lock() {
                    all.push(buffer.clone());
                }
                buffer
            });
            let Ok(mut buffer) = buffer.lock() else {
                return;
            };
            event.record(&mut Line(&mut buffer));
            if buffer.len() >= FLUSH_AT {
                self.sink.drain(&mut buffer);
            }
        });
    }
}

/// Keeps the access log's flusher; dropping it writes out what is buffered.
pub struct LogGuard {
    sink: Option<Arc<Sink>>,
    stop: Option<std::sync::mpsc::Sender<()>>,
    flusher: Option<std::thread::JoinHandle<()>>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(flusher) = self.flusher.take() {
            let _ = flusher.join();
        }
        if let Some(sink) = &self.sink {
            sink.flush_all();
        }
    }
}

/// Installs the process's logging. With `access_output` (the output of
/// `[access_log]`, read once here), access lines go there, whether the
/// access log is on now or is turned on by a later reload.
pub fn init(access_output: Option<&str>) -> std::io::Result<LogGuard> {
    let own_filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info"))
        .add_directive("veer::access=off".parse().expect("a valid directive"));
    let own = fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(own_filter);
    let Some(output) = access_output else {
        tracing_subscriber::registry().with(own).init();
        return Ok(LogGuard {
            sink: None,
            stop: None,
            flusher: None,
        });
    };
    let out: Box<dyn Write + Send> = match output {
        "stdout" => Box::new(std::io::stdout()),
        "stderr" => Box::new(std::io::stderr()),
        path => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?,
        ),
    };
    let sink = Arc::new(Sink {
        out: Mutex::new(out),
        buffers: Mutex::new(Vec::new()),
    });
    let access = AccessLayer { sink: sink.clone() }
        .with_filter(Targets::new().with_target("veer::access", tracing::Level::INFO));
    tracing_subscriber::registry().with(own).with(access).init();
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let flusher = {
        let sink = sink.clone();
        std::thread::Builder::new()
            .name("veer-access-log".into())
            .spawn(move || {
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(FLUSH_EVERY)
                {
                    sink.flush_all();
                }
            })?
    };
    Ok(LogGuard {
        sink: Some(sink),
        stop: Some(stop),
        flusher: Some(flusher),
    })
}
