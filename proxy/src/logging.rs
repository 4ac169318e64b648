//! Where log lines go: Veer's own log (through `tracing`: text on stderr,
//! filtered by `RUST_LOG`, `info` by default) and the access log (on its own
//! output: stdout, stderr or a file).
//!
//! The access log is built for one line per request at full load: the
//! request path formats its line straight into a buffer its thread owns (no
//! lock shared with other workers, no hand-off or copy per line), written
//! out in one `write` when it holds 64 KiB, or by a flusher thread every
//! 200 ms, and at exit. It does not go through `tracing`'s dispatch: with
//! the per-layer filters that keep access lines out of Veer's own log, that
//! cost ~560 instructions per request, a fifth of the access log's budget
//! (bench/results/2026-11-22-access-log.tsv).

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tracing_subscriber::filter::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
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

/// The access log's sink, once `init` installed one.
static ACCESS: OnceLock<Arc<Sink>> = OnceLock::new();

thread_local! {
    static MINE: std::cell::OnceCell<Buffer> = const { std::cell::OnceCell::new() };
}

/// Appends one access log line to the calling thread's buffer: `write`
/// adds the line's text, this adds the newline. Does nothing when the
/// process has no access log output (`veer check`, tests of the library).
pub fn access_line(write: impl FnOnce(&mut Vec<u8>)) {
    let Some(sink) = ACCESS.get() else {
        return;
    };
    MINE.with(|mine| {
        let buffer = mine.get_or_init(|| {
            let buffer = Buffer::default();
            if let Ok(mut all) = sink.buffers.lock() {
                all.push(buffer.clone());
            }
            buffer
        });
        let Ok(mut buffer) = buffer.lock() else {
            return;
        };
        write(&mut buffer);
        buffer.push(b'\n');
        if buffer.len() >= FLUSH_AT {
            sink.drain(&mut buffer);
        }
    });
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
    let own_filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a terminal: not in files, journald or `docker logs`.
    let own = fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .with_filter(own_filter);
    tracing_subscriber::registry().with(own).init();
    let Some(output) = access_output else {
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
    // One sink per process: `init` runs once.
    let sink = ACCESS.get_or_init(|| sink).clone();
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
