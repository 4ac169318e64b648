//! The few WASI functions a plugin built for `wasm32-wasip2` needs for the
//! standard library to work, answered without giving it anything of the
//! host's:
//!
//! - `wasi:random/insecure-seed` and `wasi:random/random`: from the
//!   instance's seeded generator (`HashMap`'s seed; Python's `random`),
//!   which is no secret;
//! - `wasi:cli/environment`: an empty environment, no arguments, no working
//!   directory;
//! - `wasi:cli/stdout` and `wasi:cli/stderr`: streams whose lines go to
//!   Veer's log as the plugin's own (cut and rate-limited like `log`).
//!
//! Every other WASI import stays linked to a function that traps: no files,
//! clocks, sockets or stdin. They are defined at each 0.2.x version a plugin
//! imports ([`versions_imported`]).

use wasmtime::component::{ComponentType, Linker, Lower, Resource, ResourceType};

use super::host::HostState;

/// Longest line kept from a plugin's stdout or stderr; the rest of the
/// line is dropped.
const MAX_LINE_BYTES: usize = 1024;

/// The host type of every WASI resource here (a stream, an error, a
/// pollable): the one `define_unknown_imports_as_traps` gives the resources
/// of the interfaces left to traps, which `use` these same types (a clock's
/// pollable, a file's streams): one type, or linking fails. A handle's rep
/// says what it is: stdout 1, stderr 2, a pollable 0.
type Wasi = ();
type OutputStream = Wasi;
type IoError = Wasi;
type Pollable = Wasi;

/// `wasi:io/streams`'s `stream-error`.
#[derive(ComponentType, Lower)]
#[component(variant)]
enum StreamError {
    #[component(name = "last-operation-failed")]
    #[allow(dead_code)]
    LastOperationFailed(Resource<IoError>),
    #[component(name = "closed")]
    #[allow(dead_code)]
    Closed,
}

/// The most random bytes one call returns.
const MAX_RANDOM_BYTES: u64 = 64 << 10;

const STDOUT: u32 = 1;
const STDERR: u32 = 2;

/// What each instance keeps of its stdout and stderr: the line being
/// written.
#[derive(Default)]
pub struct Streams {
    lines: [Vec<u8>; 2],
}

impl HostState {
    /// Takes `bytes` written to stream `rep`; whole lines go to the log.
    fn write_stream(&mut self, rep: u32, bytes: &[u8]) {
        let index = usize::from(rep == STDERR);
        for &byte in bytes {
            if byte == b'\n' {
                let line = std::mem::take(&mut self.streams.lines[index]);
                let level = if rep == STDERR {
                    tracing::Level::WARN
                } else {
                    tracing::Level::INFO
                };
                self.log(level, &String::from_utf8_lossy(&line));
                continue;
            }
            let line = &mut self.streams.lines[index];
            if line.len() < MAX_LINE_BYTES {
                line.push(byte);
            }
        }
    }
}

/// The WASI 0.2 versions `component` imports, e.g. `0.2.6`.
pub fn versions_imported(
    component: &wasmtime::component::Component,
    engine: &wasmtime::Engine,
) -> Vec<String> {
    let mut versions: Vec<String> = component
        .component_type()
        .imports(engine)
        .filter_map(|(name, _)| {
            let (interface, version) = name.split_once('@')?;
            (interface.starts_with("wasi:") && version.starts_with("0.2."))
                .then(|| version.to_string())
        })
        .collect();
    versions.sort();
    versions.dedup();
    versions
}

/// Adds the functions above to `linker`, at WASI version `VERSION`.
#[allow(non_snake_case)]
pub fn add_to_linker(linker: &mut Linker<HostState>, VERSION: &str) -> wasmtime::Result<()> {
    let mut random = linker.instance(&format!("wasi:random/insecure-seed@{VERSION}"))?;
    random.func_wrap("insecure-seed", |mut store, (): ()| {
        let state = store.data_mut();
        Ok(((state.next_random(), state.next_random()),))
    })?;

    // Python's `random` and `os.urandom` read this.
    let mut bytes = linker.instance(&format!("wasi:random/random@{VERSION}"))?;
    bytes.func_wrap("get-random-bytes", |mut store, (len,): (u64,)| {
        let state = store.data_mut();
        let len = len.min(MAX_RANDOM_BYTES) as usize;
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&state.next_random().to_le_bytes());
        }
        out.truncate(len);
        Ok((out,))
    })?;
    bytes.func_wrap("get-random-u64", |mut store, (): ()| {
        Ok((store.data_mut().next_random(),))
    })?;

    let mut environment = linker.instance(&format!("wasi:cli/environment@{VERSION}"))?;
    environment.func_wrap("get-environment", |_, (): ()| {
        Ok((Vec::<(String, String)>::new(),))
    })?;
    environment.func_wrap("get-arguments", |_, (): ()| Ok((Vec::<String>::new(),)))?;
    environment.func_wrap("initial-cwd", |_, (): ()| Ok((None::<String>,)))?;

    let mut error = linker.instance(&format!("wasi:io/error@{VERSION}"))?;
    error.resource("error", ResourceType::host::<IoError>(), |_, _| Ok(()))?;

    let mut poll = linker.instance(&format!("wasi:io/poll@{VERSION}"))?;
    poll.resource("pollable", ResourceType::host::<Pollable>(), |_, _| Ok(()))?;
    poll.func_wrap(
        "[method]pollable.ready",
        |_, (_,): (Resource<Pollable>,)| Ok((true,)),
    )?;
    poll.func_wrap(
        "[method]pollable.block",
        |_, (_,): (Resource<Pollable>,)| Ok(()),
    )?;
    poll.func_wrap("poll", |_, (all,): (Vec<Resource<Pollable>>,)| {
        Ok(((0..all.len() as u32).collect::<Vec<u32>>(),))
    })?;

    // An interface that `use`s a type exports it too: the same host type
    // everywhere, or linking fails.
    let mut streams = linker.instance(&format!("wasi:io/streams@{VERSION}"))?;
    streams.resource("error", ResourceType::host::<IoError>(), |_, _| Ok(()))?;
    streams.resource("pollable", ResourceType::host::<Pollable>(), |_, _| Ok(()))?;
    streams.func_wrap(
        "[method]output-stream.subscribe",
        |_, (_,): (Resource<OutputStream>,)| Ok((Resource::<Pollable>::new_own(0),)),
    )?;
    streams.resource(
        "output-stream",
        ResourceType::host::<OutputStream>(),
        |_, _| Ok(()),
    )?;
    type Stream = Resource<OutputStream>;
    // Room to write: plenty, always.
    streams.func_wrap("[method]output-stream.check-write", |_, (_,): (Stream,)| {
        Ok((Ok::<u64, StreamError>(64 << 10),))
    })?;
    streams.func_wrap(
        "[method]output-stream.write",
        |mut store, (stream, bytes): (Stream, Vec<u8>)| {
            store.data_mut().write_stream(stream.rep(), &bytes);
            Ok((Ok::<(), StreamError>(()),))
        },
    )?;
    streams.func_wrap(
        "[method]output-stream.blocking-write-and-flush",
        |mut store, (stream, bytes): (Stream, Vec<u8>)| {
            store.data_mut().write_stream(stream.rep(), &bytes);
            Ok((Ok::<(), StreamError>(()),))
        },
    )?;
    for flush in [
        "[method]output-stream.flush",
        "[method]output-stream.blocking-flush",
    ] {
        streams.func_wrap(flush, |_, (_,): (Stream,)| Ok((Ok::<(), StreamError>(()),)))?;
    }

    let mut stdout = linker.instance(&format!("wasi:cli/stdout@{VERSION}"))?;
    stdout.resource(
        "output-stream",
        ResourceType::host::<OutputStream>(),
        |_, _| Ok(()),
    )?;
    stdout.func_wrap("get-stdout", |_, (): ()| {
        Ok((Resource::<OutputStream>::new_own(STDOUT),))
    })?;
    let mut stderr = linker.instance(&format!("wasi:cli/stderr@{VERSION}"))?;
    stderr.resource(
        "output-stream",
        ResourceType::host::<OutputStream>(),
        |_, _| Ok(()),
    )?;
    stderr.func_wrap("get-stderr", |_, (): ()| {
        Ok((Resource::<OutputStream>::new_own(STDERR),))
    })?;
    Ok(())
}
