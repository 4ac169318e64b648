//! Live changes without a restart or a dropped request: plugin files dropped
//! into (changed in, removed from) the plugin folder, and configuration
//! reloads (the file changed, SIGHUP, or [`Handle::reload`]).
//!
//! Every change builds a new [`State`] off the request path (compiling on a
//! blocking thread) and swaps it in atomically. Requests that started before
//! keep the `Arc<Pool>` they took, so they finish on the old generation, which
//! is freed (plugin instances included) when its last request ends. A change
//! that fails (bad file, refused configuration) is logged with the file and
//! the reason, counted, and changes nothing.
//!
//! File events are debounced: a path must stay quiet for `plugins.debounce_ms`
//! before it is read, so a writer copying in place and one renaming into place
//! both work.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use notify::Watcher;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::listen::tls::CertStore;

/// The debounce key of certificate reloads (not a real path).
const CERTS: &str = "\0tls-certificates";
use crate::control::registry::{Registry, is_plugin_file};
use crate::metrics::Metrics;
use crate::state::Shared;

/// What the controller is asked to do.
#[derive(Debug)]
pub(crate) enum Command {
    /// Reload the configuration from its file.
    ReloadConfig,
    /// A watched path changed.
    Changed(PathBuf),
    /// Something changed in a folder holding TLS certificates or keys.
    CertsChanged,
}

/// Asks a running server to change. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Handle {
    pub(crate) tx: mpsc::UnboundedSender<Command>,
}

impl Handle {
    /// Reloads the configuration from its file (as SIGHUP does). The outcome
    /// is logged and counted (`config_reloads` / `config_reload_refusals`).
    pub fn reload(&self) {
        let _ = self.tx.send(Command::ReloadConfig);
    }
}

/// Owns the registry and the current configuration; applies changes.
pub(crate) struct Controller {
    /// The HTTPS listener's certificates, reloaded when their files change.
    pub certs: Option<Arc<CertStore>>,
    pub registry: Registry,
    pub config: Config,
    pub shared: Arc<Shared>,
    /// Kept alive while the controller runs; made by [`watch`] when the
    /// server is bound, so no change made after that is missed.
    pub watcher: Option<notify::RecommendedWatcher>,
}

impl Controller {
    /// Watches the plugin folder and the configuration file and applies
    /// changes until `cancel`.
    pub async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Command>,
        cancel: CancellationToken,
    ) {
        let _watcher = self.watcher.take();
        let debounce = self.config.plugins.debounce;
        let mut due: HashMap<PathBuf, Instant> = HashMap::new();
        loop {
            let next = due.values().min().copied();
            tokio::select! {
                _ = cancel.cancelled() => break,
                command = rx.recv() => match command {
                    None => break,
                    Some(Command::ReloadConfig) => self.reload_config().await,
                    Some(Command::Changed(path)) => {
                        due.insert(path, Instant::now() + debounce);
                    }
                    Some(Command::CertsChanged) => {
                        due.insert(PathBuf::from(CERTS), Instant::now() + debounce);
                    }
                },
                _ = tokio::time::sleep_until(next.unwrap_or_else(Instant::now).into()), if next.is_some() => {
                    let now = Instant::now();
                    let ready: Vec<PathBuf> = due.iter().filter(|(_, at)| **at <= now).map(|(p, _)| p.clone()).collect();
                    for path in ready {
                        due.remove(&path);
                        if path.as_os_str() == CERTS {
                            self.reload_certs();
                        } else if self.is_config(&path) {
                            self.reload_config().await;
                        } else {
                            self.plugin_changed(&path).await;
                        }
                    }
                }
            }
        }
    }

    /// Reads the certificate files again; a broken file leaves the old
    /// certificates serving.
    fn reload_certs(&self) {
        let Some(certs) = &self.certs else { return };
        let metrics = &self.shared.metrics;
        match certs.reload() {
            Ok(()) => {
                Metrics::inc(&metrics.tls_certificate_reloads);
                tracing::info!(names = ?certs.names(), "TLS certificates reloaded");
            }
            Err(reason) => {
                Metrics::inc(&metrics.tls_certificate_reload_refusals);
                tracing::warn!("new TLS certificates refused, the old ones keep serving: {reason}");
            }
        }
    }

    fn is_config(&self, path: &Path) -> bool {
        self.config
            .source
            .as_deref()
            .is_some_and(|c| same_file(c, path))
    }

    /// A plugin file appeared, changed or went away.
    async fn plugin_changed(&mut self, path: &Path) {
        let metrics = self.shared.metrics.clone();
        let started = Instant::now();
        if !path.exists() {
            let Some(removed) = self.registry.remove_folder(path) else {
                return;
            };
            match self.rebuild() {
                Ok(()) => {
                    tracing::info!(plugin = removed.name(), file = %path.display(), "plugin file removed; its pools use what the configuration names")
                }
                Err(reason) => {
                    self.registry.put_folder(path, removed.clone());
                    Metrics::inc(&metrics.plugin_refusals);
                    tracing::warn!(plugin = removed.name(), file = %path.display(), "plugin file removed, but it is still needed ({reason}); it keeps serving until the configuration stops naming it");
                }
            }
            return;
        }
        // Compile off the control loop: a large plugin takes a while.
        let runtime = self.registry.runtime().clone();
        let limits = self.config.plugins.limits;
        let file = path.to_path_buf();
        let loaded = tokio::task::spawn_blocking(move || {
            let bytes = std::fs::read(&file).map_err(|e| format!("could not read it: {e}"))?;
            runtime
                .load(&file.display().to_string(), &bytes, limits)
                .map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|e| Err(format!("loading panicked: {e}")));
        let plugin = match loaded
            .and_then(|p| self.registry.check_folder_name(path, &p).map(|()| p))
        {
            Ok(plugin) => Arc::new(plugin.into_folder_plugin()),
            Err(reason) => {
                Metrics::inc(&metrics.plugin_refusals);
                tracing::warn!(file = %path.display(), "plugin refused, the running one keeps serving: {reason}");
                return;
            }
        };
        let previous = self.registry.put_folder(path, plugin.clone());
        match self.rebuild() {
            Ok(()) => {
                Metrics::inc(&metrics.plugin_swaps);
                tracing::info!(
                    plugin = plugin.name(),
                    version = plugin.version(),
                    world = plugin.world(),
                    file = %path.display(),
                    took_ms = started.elapsed().as_millis() as u64,
                    "plugin swapped in"
                );
            }
            Err(reason) => {
                match previous {
                    Some(previous) => self.registry.put_folder(path, previous),
                    None => self.registry.remove_folder(path),
                };
                Metrics::inc(&metrics.plugin_refusals);
                tracing::warn!(file = %path.display(), "plugin refused, the running one keeps serving: {reason}");
            }
        }
    }

    /// Rebuilds the state from the current configuration and registry and
    /// swaps it in.
    fn rebuild(&mut self) -> Result<(), String> {
        let current = self.shared.state.load_full();
        let state = self
            .registry
            .build_state(&self.config, &self.shared.metrics, Some(&current))
            .map_err(|e| e.to_string())?;
        self.shared.state.store(Arc::new(state));
        Ok(())
    }

    /// Reloads the configuration file; a bad one changes nothing.
    async fn reload_config(&mut self) {
        let metrics = self.shared.metrics.clone();
        let Some(path) = self.config.source.clone() else {
            tracing::warn!("reload asked, but this configuration was not read from a file");
            return;
        };
        let refuse = |reason: String| {
            Metrics::inc(&metrics.config_reload_refusals);
            tracing::warn!(file = %path.display(), "new configuration refused, the running one stays: {reason}");
        };
        let new = match Config::load(&path) {
            Ok(new) => new,
            Err(e) => return refuse(e.to_string()),
        };
        if new.server.listen != self.config.server.listen
            || new.server.workers != self.config.server.workers
        {
            tracing::warn!(
                "server.listen and server.workers change only with a restart; keeping {} with {} workers",
                self.config.server.listen,
                self.config.server.workers
            );
        }
        let old_settings = self.config.plugins.clone();
        if let Err(e) = self.registry.reconfigure(&new.plugins) {
            return refuse(e.to_string());
        }
        let current = self.shared.state.load_full();
        match self.registry.build_state(&new, &metrics, Some(&current)) {
            Ok(state) => {
                self.shared.state.store(Arc::new(state));
                // Listening settings stay until a restart; the others apply.
                let mut new = new;
                new.server.listen = self.config.server.listen;
                new.server.workers = self.config.server.workers;
                self.config = new;
                Metrics::inc(&metrics.config_reloads);
                tracing::info!(file = %path.display(), "configuration reloaded");
            }
            Err(e) => {
                let _ = self.registry.reconfigure(&old_settings);
                refuse(e.to_string());
            }
        }
    }
}

/// Starts watching; events become [`Command::Changed`]. `None` when there
/// is nothing to watch or the OS refuses (logged: serving goes on).
pub(crate) fn watch(
    config: &Config,
    tx: mpsc::UnboundedSender<Command>,
) -> Option<notify::RecommendedWatcher> {
    let dir = config.plugins.dir.clone();
    let config_file = config.source.clone();
    // Folders of certificate and key files: any change there (a file
    // rewritten, a Kubernetes `..data` symlink swapped) reloads them.
    let mut cert_dirs: Vec<PathBuf> = config
        .tls
        .iter()
        .flat_map(|t| t.certificates.iter())
        .flat_map(|(c, k)| [c, k])
        .filter_map(|p| {
            let dir = p.parent()?;
            // A bare file name lives in the working folder.
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            Some(dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf()))
        })
        .collect();
    cert_dirs.sort();
    cert_dirs.dedup();
    let cert_dirs_for_events = cert_dirs.clone();
    let cert_names_for_events: Vec<std::ffi::OsString> = config
        .tls
        .iter()
        .flat_map(|t| t.certificates.iter())
        .flat_map(|(c, k)| [c, k])
        .filter_map(|p| p.file_name().map(|n| n.to_os_string()))
        .collect();
    let dir_for_events = dir.clone();
    let config_for_events = config_file.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if event.kind.is_access() {
            return;
        }
        for path in event.paths {
            let in_folder = dir_for_events
                .as_deref()
                .is_some_and(|d| path.parent().is_some_and(|p| same_file(p, d)));
            let is_config = config_for_events
                .as_deref()
                .is_some_and(|c| same_file(c, &path));
            if (in_folder && is_plugin_file(&path)) || is_config {
                let _ = tx.send(Command::Changed(path.clone()));
            }
            // Only the certificate and key files themselves, or the hidden
            // `..data`-style names of a Kubernetes volume swap: other files in
            // the folder (a log, say) do not trigger reloads.
            let relevant = path.file_name().is_some_and(|name| {
                name.to_str().is_some_and(|n| n.starts_with(".."))
                    || cert_names_for_events.iter().any(|c| c == name)
            });
            if relevant
                && path
                    .parent()
                    .is_some_and(|p| cert_dirs_for_events.iter().any(|d| same_file(p, d)))
            {
                let _ = tx.send(Command::CertsChanged);
            }
        }
    })
    .map_err(|e| {
        tracing::warn!(
            "cannot watch files ({e}); plugin folder and config changes need SIGHUP or a restart"
        )
    })
    .ok()?;
    if let Some(dir) = dir.filter(|d| d.is_dir()) {
        match watcher.watch(&dir, notify::RecursiveMode::NonRecursive) {
            Ok(()) => tracing::info!(dir = %dir.display(), "watching the plugin folder"),
            Err(e) => tracing::warn!(dir = %dir.display(), "cannot watch the plugin folder: {e}"),
        }
    }
    for dir in &cert_dirs {
        if let Err(e) = watcher.watch(dir, notify::RecursiveMode::NonRecursive) {
            tracing::warn!(dir = %dir.display(), "cannot watch the certificate folder: {e}; restart to pick up new certificates");
        }
    }
    // The configuration's folder, not the file: editors replace files.
    if let Some(parent) = config_file.as_deref().and_then(Path::parent) {
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        if let Err(e) = watcher.watch(parent, notify::RecursiveMode::NonRecursive) {
            tracing::warn!(dir = %parent.display(), "cannot watch the configuration file: {e}; use SIGHUP to reload");
        }
    }
    Some(watcher)
}

fn same_file(a: &Path, b: &Path) -> bool {
    a == b
        || (a
            .canonicalize()
            .ok()
            .is_some_and(|a| b.canonicalize().is_ok_and(|b| a == b)))
}
