//! Where log lines go: Veer's own log (text on stderr, filtered by
//! `RUST_LOG`, `info` by default) and the access log (`veer::access` lines,
//! on their own output: stdout, stderr or a file). Access lines are handed
//! to a background thread that writes them in batches, so a request never
//! waits on a log write; under a flood the oldest-first queue drops lines
//! rather than slow requests down.

use std::io::Write;

use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, fmt};

use crate::config::AccessLog;

/// Keeps the access log's writer thread; dropping it flushes what is queued.
pub struct LogGuard {
    _writer: Option<tracing_appender::non_blocking::WorkerGuard>,
}

/// Installs the process's logging. With `access` (the output of
/// `[access_log]`, read once here), access lines go to that output,
/// whether the access log is on now or is turned on by a later reload.
pub fn init(access_output: Option<&str>) -> std::io::Result<LogGuard> {
    let own_filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info"))
        .add_directive("veer::access=off".parse().expect("a valid directive"));
    let own = fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(own_filter);
    let Some(output) = access_output else {
        tracing_subscriber::registry().with(own).init();
        return Ok(LogGuard { _writer: None });
    };
    let sink: Box<dyn Write + Send> = match output {
        "stdout" => Box::new(std::io::stdout()),
        "stderr" => Box::new(std::io::stderr()),
        path => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?,
        ),
    };
    let (writer, guard) = tracing_appender::non_blocking(std::io::BufWriter::new(sink));
    let access = fmt::layer()
        .with_writer(writer)
        .with_ansi(false)
        .without_time()
        .with_level(false)
        .with_target(false)
        .with_filter(Targets::new().with_target("veer::access", tracing::Level::INFO));
    tracing_subscriber::registry().with(own).with(access).init();
    Ok(LogGuard {
        _writer: Some(guard),
    })
}

/// The access log's output for a configuration (its default when off).
pub fn access_output(access_log: Option<&AccessLog>) -> &str {
    access_log.map_or("stdout", |log| log.output.as_str())
}
