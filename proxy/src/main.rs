//! The `veer` binary: parses arguments and hands over to the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use veer::Verdict;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// Veer: a reverse proxy whose load balancing is programmed in WebAssembly.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve with a configuration file.
    Run {
        /// The TOML configuration.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a configuration file (plugins included) without serving.
    Check {
        /// The TOML configuration.
        config: PathBuf,
    },
    /// Work with plugin files.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Start three demo backends and the proxy in front of them; no file needed.
    Demo {
        /// Where the proxy listens (plain HTTP).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Where it listens for HTTPS (a self-signed certificate).
        #[arg(long, default_value = "127.0.0.1:8443")]
        tls_listen: SocketAddr,
        /// Where the admin listener (dashboard, metrics, API) listens.
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin_listen: SocketAddr,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Validate a plugin offline: prints its name, version, WIT world and
    /// what its `init` says of a configuration.
    Check {
        /// The `.wasm` component.
        file: PathBuf,
        /// The strategy configuration to try, as JSON.
        #[arg(long, default_value = "{}")]
        config: String,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("veer: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    // `run` logs requests too (to the access log's output); the rest only
    // Veer's own lines.
    let _logs = match &cli.command {
        Command::Run { .. } => None,
        _ => Some(veer::logging::init(None).context("logging could not start")?),
    };
    match cli.command {
        Command::Check { config } => {
            let loaded = veer::Config::load(&config)
                .with_context(|| format!("{} is not valid", config.display()))?;
            let report = veer::check(&loaded)
                .with_context(|| format!("{} is not valid", config.display()))?;
            println!("{}: ok", config.display());
            for line in report.pools {
                println!("  {line}");
            }
            Ok(())
        }
        Command::Run { config } => {
            let loaded = veer::Config::load(&config)
                .with_context(|| format!("{} is not valid", config.display()))?;
            let output = loaded.access_log_output.as_str();
            let _logs = veer::logging::init(Some(output))
                .with_context(|| format!("access_log.output {output:?} could not be opened"))?;
            control_runtime()?
                .block_on(veer::serve(loaded))
                .context("veer stopped")
        }
        Command::Plugin(PluginCommand::Check { file, config }) => {
            let report = veer::check_plugin(&file, &config)
                .with_context(|| format!("{} is not usable", file.display()))?;
            println!("plugin: {} {}", report.name, report.version);
            println!("world:  {}", report.world);
            if let Err(message) = report.init {
                println!("init:   refused {config}: {message}");
                anyhow::bail!("{} refuses this configuration", report.name)
            }
            println!("init:   ok with {config}");
            let backends: Vec<String> = veer::CHECK_BACKENDS
                .iter()
                .enumerate()
                .map(|(id, (address, weight, zone))| {
                    format!("{id}={address} (weight {weight}, zone {zone})")
                })
                .collect();
            println!("set-backends: ok with {}", backends.join(", "));
            let mut failed = 0;
            for probe in &report.selects {
                let answer = match &probe.answer {
                    Ok(Verdict::Order(a)) if a.len == 0 => {
                        "[] (no backend: the pool's failure policy would serve)".to_string()
                    }
                    Ok(Verdict::Order(a)) if a.len > veer::MAX_ANSWER => format!(
                        "{:?}… ({} ids; Veer reads the first {} only)",
                        &a.ids[..16],
                        a.len,
                        veer::MAX_ANSWER
                    ),
                    Ok(Verdict::Order(a)) if a.len > 16 => {
                        format!("{:?}… ({} ids)", &a.ids[..16], a.len)
                    }
                    Ok(Verdict::Order(a)) => format!("{:?}", a.ids),
                    Ok(Verdict::Refuse(reason)) => {
                        format!("refused: {reason} (the client would get a 503)")
                    }
                    Ok(Verdict::Defer(reason)) => {
                        format!("deferred: {reason} (the pool's failure policy would serve)")
                    }
                    Err(e) => {
                        failed += 1;
                        format!("FAILED: {e}")
                    }
                };
                let fuel = match probe.answer {
                    Ok(_) => format!(", {} fuel", probe.fuel),
                    Err(_) => String::new(),
                };
                println!(
                    "select: {} -> {answer} in {} µs{fuel}{}",
                    probe.request,
                    probe.took.as_micros(),
                    probe
                        .strike
                        .as_deref()
                        .map(|s| format!(" — {s}: counts toward the backoff"))
                        .unwrap_or_default()
                );
            }
            if failed > 0 {
                anyhow::bail!(
                    "{} failed {failed} of {} select calls under the real limits",
                    report.name,
                    report.selects.len()
                )
            }
            Ok(())
        }
        Command::Demo {
            listen,
            tls_listen,
            admin_listen,
        } => control_runtime()?
            .block_on(veer::demo::serve(listen, tls_listen, admin_listen))
            .context("the demo stopped"),
    }
}

/// The small runtime that waits for signals and supervises the workers (which
/// run their own event loops).
fn control_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("could not start the control event loop")
}
