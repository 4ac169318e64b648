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
        /// Zero-downtime upgrade: take the listening sockets over from the
        /// Veer process waiting at this Unix socket (its
        /// `server.upgrade_socket`); it drains and exits once this one serves.
        #[arg(long, value_name = "PATH")]
        take_over: Option<PathBuf>,
    },
    /// Validate a configuration file (plugins included) without serving.
    Check {
        /// The TOML configuration.
        config: PathBuf,
    },
    /// Work with plugin files.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Turn another proxy's configuration into a `veer.toml`.
    #[command(subcommand)]
    Import(ImportCommand),
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
enum ImportCommand {
    /// Read an NGINX configuration and write the equivalent `veer.toml`;
    /// what could not be carried over is listed on stderr (and at the top
    /// of the TOML), each with its line.
    Nginx {
        /// The NGINX configuration (`include` is not followed).
        file: PathBuf,
        /// Where to write the TOML (default: stdout).
        #[arg(long, short)]
        output: Option<PathBuf>,
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
    /// Run a plugin against synthetic traffic under the real host and
    /// limits: the share each backend gets, what a `select` costs,
    /// rejections and failures.
    Simulate {
        /// The `.wasm` component.
        file: PathBuf,
        /// The strategy configuration, as JSON.
        #[arg(long, default_value = "{}")]
        config: String,
        /// How many backends (`10.0.0.1:80`, …; label `zone` `a` for the
        /// first half, `b` for the rest), or a TOML file:
        /// `backends = [{ address = "…", weight = 2, labels = { zone = "a" } }]`.
        #[arg(long, default_value = "4")]
        backends: String,
        /// How many requests.
        #[arg(long, default_value_t = 10_000)]
        requests: u32,
        /// A header drawn for each request, as `NAME=VALUE[:WEIGHT],…`
        /// (`-` for absent), e.g. `x-version=v1:90,v2:10`. Repeatable.
        #[arg(long = "header", value_name = "NAME=VALUE:WEIGHT,…")]
        headers: Vec<String>,
        /// Each backend's time to response, as `ID=MS,…` (default 1 ms).
        #[arg(long, value_name = "ID=MS,…")]
        latency: Option<String>,
        /// Seeds the draws and the plugin's `random`.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Make a new plugin crate NAME in the current folder (or `--dir`),
    /// ready for `cargo build --release`.
    New {
        /// The strategy name: lowercase letters, digits and `-`.
        name: String,
        /// Depend on the `sdk` folder of a Veer checkout.
        #[arg(long, conflicts_with = "git")]
        sdk: Option<PathBuf>,
        /// Depend on the Veer repository at this git URL.
        #[arg(long)]
        git: Option<String>,
        /// Where to make it.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
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
        Command::Run { config, take_over } => {
            let loaded = veer::Config::load(&config)
                .with_context(|| format!("{} is not valid", config.display()))?;
            let output = loaded.access_log_output.as_str();
            let _logs = veer::logging::init(Some(output))
                .with_context(|| format!("access_log.output {output:?} could not be opened"))?;
            let runtime = control_runtime()?;
            match take_over {
                None => runtime.block_on(veer::serve(loaded)),
                Some(from) => runtime.block_on(veer::take_over(loaded, &from)),
            }
            .context("veer stopped")
        }
        Command::Plugin(PluginCommand::Simulate {
            file,
            config,
            backends,
            requests,
            headers,
            latency,
            seed,
        }) => {
            use veer::tools::simulate::{Backends, HeaderDraw, Simulation, parse_latency};
            let simulation = Simulation {
                config_json: config,
                backends: Backends::parse(&backends),
                requests,
                headers: headers
                    .iter()
                    .map(|h| HeaderDraw::parse(h))
                    .collect::<Result<_, _>>()
                    .map_err(anyhow::Error::msg)?,
                latency: latency
                    .as_deref()
                    .map(parse_latency)
                    .transpose()
                    .map_err(anyhow::Error::msg)?
                    .unwrap_or_default(),
                seed,
            };
            let report = veer::tools::simulate::simulate(&file, &simulation)
                .with_context(|| format!("{} could not be simulated", file.display()))?;
            print!("{report}");
            Ok(())
        }
        Command::Plugin(PluginCommand::New {
            name,
            sdk,
            git,
            dir,
        }) => {
            use veer::tools::scaffold::{Sdk, scaffold};
            let sdk = match (sdk, git) {
                (Some(path), _) => Sdk::Path(path),
                (None, Some(url)) => Sdk::Git(url),
                (None, None) => anyhow::bail!(
                    "say where veer-sdk comes from: --sdk PATH (the sdk folder of a Veer checkout) or --git URL"
                ),
            };
            let made = scaffold(&name, &dir, &sdk).map_err(anyhow::Error::msg)?;
            println!(
                "made {}; next: cd there, then `cargo build --release` and `cargo unit`",
                made.display()
            );
            Ok(())
        }
        Command::Plugin(PluginCommand::Check { file, config }) => {
            let report = veer::check_plugin(&file, &config)
                .with_context(|| format!("{} is not usable", file.display()))?;
            println!("plugin: {} {}", report.name, report.version);
            println!("world:  {}", report.world);
            if !report.asks.is_empty() {
                println!("asks:   {}", report.asks.join(", "));
            }
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
        Command::Import(ImportCommand::Nginx { file, output }) => {
            let imported =
                veer::tools::import_nginx::import_file(&file).map_err(anyhow::Error::msg)?;
            match &output {
                Some(out) => std::fs::write(out, &imported.toml)
                    .with_context(|| format!("{} could not be written", out.display()))?,
                None => print!("{}", imported.toml),
            }
            let origin = file.display().to_string();
            for line in imported.report(&origin) {
                eprintln!("{line}");
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
