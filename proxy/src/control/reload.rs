//! Live changes without a restart or a dropped request: plugin files dropped
//! into (changed in, removed from) the plugin folder, and configuration
//! reloads (the file changed, SIGHUP, or [`Handle::reload`]).
//!
//! Every change builds a new [`State`] off the request path (reading and
//! compiling on a blocking thread) and swaps it in atomically. Requests that
//! started before keep the `Arc<Pool>` they took, so they finish on the old
//! generation, which is freed (plugin instances included) when its last
//! request ends. A change that fails (bad file, refused configuration) is
//! logged with the file and the reason, counted, and changes nothing.
//!
//! Any event in the plugin folder (hidden names included: a Kubernetes
//! ConfigMap volume changes by swapping its `..data` symlink) makes the whole
//! folder looked at again, and what changed by content is applied together
//! (see [`folder`](crate::control::folder)); if that is refused, each change
//! alone. Refusals are remembered: every configuration reload tries the
//! refused files again with the new configuration, and a configuration
//! refused earlier is tried again when the folder changes, so a plugin and
//! the configuration it needs can arrive in either order.
//!
//! File events are debounced: the folder (or the configuration file) must
//! stay quiet for `plugins.debounce_ms` before it is read, so a writer copying
//! in place and one renaming into place both work.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use notify::Watcher;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, PluginSettings};
use crate::control::discovery::{self, Known};
use crate::control::folder::{Change, Diff, Found, Look};
use crate::control::registry::Registry;
use crate::listen::tls::CertStore;
use crate::metrics::Metrics;
use crate::state::Shared;

/// The debounce key of certificate reloads (not a real path).
const CERTS: &str = "\0tls-certificates";
/// The debounce key of plugin folder rescans (not a real path).
const FOLDER: &str = "\0plugin-folder";
/// However busy a watched path stays, it is acted on at most this many
/// debounce periods after its first event: a log written into the plugin
/// folder nonstop must not hold back plugin swaps for ever.
const MAX_DEFERRAL: u32 = 10;

/// What the controller is asked to do.
#[derive(Debug)]
pub(crate) enum Command {
    /// Reload the configuration from its file.
    ReloadConfig,
    /// The configuration file changed.
    Changed(PathBuf),
    /// Something changed in the plugin folder.
    FolderChanged,
    /// Something changed in a folder holding TLS certificates or keys.
    CertsChanged,
    /// A discovered pool's lookup found a new backend set.
    Discovered(Known),
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
    /// Where discovery tasks send what they find.
    pub commands: mpsc::UnboundedSender<Command>,
    /// The running discovery tasks (one per discovered pool) and what
    /// stops them: replaced at each reload.
    pub discovery: Option<(CancellationToken, TaskTracker)>,
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
        self.restart_discovery(&cancel).await;
        let debounce = self.config.plugins.debounce;
        // Key -> (first event not acted on yet, when to act).
        let mut due: HashMap<PathBuf, (Instant, Instant)> = HashMap::new();
        let defer = |due: &mut HashMap<PathBuf, (Instant, Instant)>, key: PathBuf| {
            let now = Instant::now();
            let (first, at) = due.entry(key).or_insert((now, now));
            *at = (now + debounce).min(*first + debounce * MAX_DEFERRAL);
        };
        // The configuration file holds one that was refused: tried again
        // when the plugin folder changes (it may wait for a plugin).
        let mut config_waits = false;
        loop {
            let next = due.values().map(|(_, at)| *at).min();
            tokio::select! {
                _ = cancel.cancelled() => break,
                command = rx.recv() => match command {
                    None => break,
                    Some(Command::ReloadConfig) => {
                        config_waits = !self.reload_config(false).await;
                        self.restart_discovery(&cancel).await;
                    }
                    Some(Command::Discovered(found)) => self.discovered(found),
                    Some(Command::Changed(path)) => defer(&mut due, path),
                    Some(Command::FolderChanged) => defer(&mut due, PathBuf::from(FOLDER)),
                    Some(Command::CertsChanged) => defer(&mut due, PathBuf::from(CERTS)),
                },
                _ = tokio::time::sleep_until(next.unwrap_or_else(Instant::now).into()), if next.is_some() => {
                    let now = Instant::now();
                    let ready: Vec<PathBuf> = due.iter().filter(|(_, (_, at))| *at <= now).map(|(p, _)| p.clone()).collect();
                    for path in ready {
                        due.remove(&path);
                        if path.as_os_str() == CERTS {
                            self.reload_certs();
                        } else if path.as_os_str() == FOLDER {
                            if config_waits {
                                config_waits = !self.reload_config(true).await;
                                self.restart_discovery(&cancel).await;
                            } else {
                                self.rescan().await;
                            }
                        } else if self.is_config(&path) {
                            config_waits = !self.reload_config(false).await;
                            self.restart_discovery(&cancel).await;
                        }
                    }
                }
            }
        }
        // Discovery stops with the controller (its tasks see `cancel` too).
        self.restart_discovery(&cancel).await;
    }

    /// Stops the discovery tasks and starts one per discovered pool of the
    /// running configuration (whose backends are its starting point). Cheap
    /// when nothing is discovered.
    async fn restart_discovery(&mut self, cancel: &CancellationToken) {
        if let Some((stop, tasks)) = self.discovery.take() {
            stop.cancel();
            tasks.close();
            tasks.wait().await;
        }
        let known = discovery::known(&self.config);
        if known.is_empty() || cancel.is_cancelled() {
            return;
        }
        let (stop, tasks) = (cancel.child_token(), TaskTracker::new());
        for k in known {
            tasks.spawn(discovery::watch(
                k,
                self.commands.clone(),
                self.shared.metrics.clone(),
                stop.clone(),
            ));
        }
        self.discovery = Some((stop, tasks));
    }

    /// A discovered pool found a new set: that pool is rebuilt with it (the
    /// others stay as they are); refused, the pool keeps its set.
    fn discovered(&mut self, found: Known) {
        let Some(i) =
            self.config.pools.iter().position(|p| {
                p.name == found.pool && p.discovery.as_ref() == Some(&found.discovery)
            })
        else {
            return; // from before a reload changed the pool
        };
        if self.config.pools[i].backends == found.backends {
            return;
        }
        let mut new = self.config.clone();
        let change = discovery::difference(&new.pools[i].backends, &found.backends);
        new.pools[i].backends = found.backends;
        match self.try_apply(Some(&new), &[]) {
            Ok(()) => {
                Metrics::inc(&self.shared.metrics.discovery_changes);
                tracing::info!(pool = %found.pool, backends = new.pools[i].backends.len(), "discovered backends changed: {change}");
                self.config = new;
            }
            Err(reason) => {
                Metrics::inc(&self.shared.metrics.discovery_failures);
                tracing::warn!(pool = %found.pool, "discovered backends refused, the pool keeps its set: {reason}");
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

    /// Looks at the plugin folder on a blocking thread: every plugin file is
    /// read, and those whose content is new are compiled with `settings`.
    /// With `retry`, files refused before count as new. `None` when there is
    /// no folder or it cannot be listed (logged).
    async fn look(
        &self,
        settings: &PluginSettings,
        retry: bool,
    ) -> Option<BTreeMap<PathBuf, Found>> {
        let dir = settings.dir.clone()?;
        let loaded = self.registry.folder_hashes();
        let refused = match retry {
            true => BTreeMap::new(),
            false => self.registry.refused().clone(),
        };
        let runtime = self.registry.runtime().clone();
        let (limits, max_file_bytes) = (settings.limits, settings.max_file_bytes);
        let found = tokio::task::spawn_blocking(move || {
            Look {
                dir: &dir,
                loaded: &loaded,
                refused: &refused,
                runtime: &runtime,
                limits,
                max_file_bytes,
            }
            .run()
        })
        .await;
        match found {
            Ok(Ok(found)) => Some(found),
            Ok(Err(e)) => {
                tracing::warn!(dir = ?settings.dir, "cannot list the plugin folder, nothing changes: {e}");
                None
            }
            Err(e) => {
                tracing::warn!("looking at the plugin folder panicked, nothing changes: {e}");
                None
            }
        }
    }

    /// Compares a look at the folder with what is in use; remembers the
    /// files that cannot be plugins and forgets refusals that no longer hold.
    /// Returns the changes to try.
    fn diff(&mut self, found: Option<BTreeMap<PathBuf, Found>>, retry: bool) -> Vec<Change> {
        let Some(found) = found else {
            return Vec::new();
        };
        let diff = Diff::new(
            found,
            &self.registry.folder_hashes(),
            self.registry.refused(),
            retry,
        );
        for path in &diff.settled {
            self.registry.forget_refused(path);
        }
        for (path, record, reason) in diff.bad {
            if self.registry.note_refused(&path, record) {
                Metrics::inc(&self.shared.metrics.plugin_refusals);
                tracing::warn!(file = %path.display(), "plugin refused, the running one keeps serving: {reason}");
            }
        }
        diff.changes
    }

    /// Something changed in the plugin folder: looks at all of it and applies
    /// what changed.
    async fn rescan(&mut self) {
        let started = Instant::now();
        let settings = self.config.plugins.clone();
        let found = self.look(&settings, false).await;
        let changes = self.diff(found, false);
        self.apply_changes(changes, started);
    }

    /// Applies folder changes with the running configuration: all together
    /// (a plugin moving from one file to another is both at once), else each
    /// alone, so one bad file does not hold back the others.
    fn apply_changes(&mut self, changes: Vec<Change>, started: Instant) {
        if changes.len() > 1 && self.try_apply(None, &changes).is_ok() {
            changes.iter().for_each(|c| self.accepted(c, started));
            return;
        }
        for change in changes {
            match self.try_apply(None, std::slice::from_ref(&change)) {
                Ok(()) => self.accepted(&change, started),
                Err(reason) => self.refused(&change, &reason),
            }
        }
    }

    /// Builds the state `new` (else the running configuration) and the
    /// folder with `changes` give, and swaps it in. On failure the folder
    /// plugins are left as they were.
    fn try_apply(&mut self, new: Option<&Config>, changes: &[Change]) -> Result<(), String> {
        let before = self.registry.apply_folder(changes)?;
        let config = new.unwrap_or(&self.config);
        let current = self.shared.state.load_full();
        match self
            .registry
            .build_state(config, &self.shared.metrics, Some(&current))
        {
            Ok(state) => {
                self.shared.state.store(Arc::new(state));
                Ok(())
            }
            Err(e) => {
                self.registry.restore_folder(before);
                Err(e.to_string())
            }
        }
    }

    fn accepted(&mut self, change: &Change, started: Instant) {
        self.registry.forget_refused(change.path());
        let file = change.path().display();
        match change {
            Change::Put(_, plugin) => {
                Metrics::inc(&self.shared.metrics.plugin_swaps);
                tracing::info!(
                    plugin = plugin.name(),
                    version = plugin.version(),
                    world = plugin.world(),
                    file = %file,
                    took_ms = started.elapsed().as_millis() as u64,
                    "plugin swapped in"
                );
            }
            Change::Remove(_) => {
                tracing::info!(file = %file, "plugin file removed; its pools use what the configuration names")
            }
        }
    }

    /// Remembers a refused change; logged and counted once per content.
    fn refused(&mut self, change: &Change, reason: &str) {
        let file = change.path().display();
        if !self.registry.note_refused(change.path(), change.record()) {
            tracing::info!(file = %file, "plugin file still refused: {reason}");
            return;
        }
        Metrics::inc(&self.shared.metrics.plugin_refusals);
        match change {
            Change::Put(..) => {
                tracing::warn!(file = %file, "plugin refused, the running one keeps serving: {reason}")
            }
            Change::Remove(_) => {
                tracing::warn!(file = %file, "plugin file removed, but it is still needed ({reason}); it keeps serving until the configuration stops naming it")
            }
        }
    }

    /// Reloads the configuration file, trying again every plugin file
    /// refused so far with it; a bad configuration changes nothing. `retry`:
    /// this file was refused before and the folder changed (a refusal again
    /// is not counted again). Returns whether the file's configuration is the
    /// running one now.
    async fn reload_config(&mut self, retry: bool) -> bool {
        let started = Instant::now();
        let metrics = self.shared.metrics.clone();
        let Some(path) = self.config.source.clone() else {
            tracing::warn!("reload asked, but this configuration was not read from a file");
            return true;
        };
        let refuse = |reason: &str| match retry {
            true => {
                tracing::info!(file = %path.display(), "the configuration refused earlier still does not apply: {reason}")
            }
            false => {
                Metrics::inc(&metrics.config_reload_refusals);
                tracing::warn!(file = %path.display(), "new configuration refused, the running one stays: {reason}");
            }
        };
        // Read, and the files of `plugins.load` compiled, off the loop.
        let runtime = self.registry.runtime().clone();
        let file = path.clone();
        let known = discovery::known(&self.config);
        let read = tokio::task::spawn_blocking(move || {
            let mut new = Config::load(&file).map_err(|e| e.to_string())?;
            discovery::fill(&mut new, &known).map_err(|e| e.to_string())?;
            let loaded =
                Registry::read_load_files(&runtime, &new.plugins).map_err(|e| e.to_string())?;
            Ok((new, loaded))
        })
        .await
        .unwrap_or_else(|e| Err(format!("loading panicked: {e}")));
        let (mut new, loaded) = match read {
            Ok(read) => read,
            Err(reason) => {
                refuse(&reason);
                if retry {
                    // What the folder event was about still applies.
                    self.rescan().await;
                }
                return false;
            }
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
        if new.plugins.dir != self.config.plugins.dir {
            tracing::warn!(
                "plugins.dir changes only with a restart; keeping {:?}",
                self.config.plugins.dir
            );
            new.plugins.dir = self.config.plugins.dir.clone();
        }
        // Every folder file refused so far is tried again, with this
        // configuration.
        let found = self.look(&new.plugins, true).await;
        let changes = self.diff(found, true);
        let previous = self.registry.swap_settings(new.plugins.clone(), loaded);
        let outcome = match self.try_apply(Some(&new), &changes) {
            Ok(()) => Ok(true),
            Err(reason) if changes.is_empty() => Err(reason),
            Err(with_folder) => match self.try_apply(Some(&new), &[]) {
                Ok(()) => Ok(false),
                Err(reason) if reason == with_folder => Err(reason),
                Err(reason) => Err(format!(
                    "{reason} (with the plugin folder's new and refused files: {with_folder})"
                )),
            },
        };
        match outcome {
            Ok(folder_taken) => {
                // Listening settings stay until a restart; the others apply.
                new.server.listen = self.config.server.listen;
                new.server.workers = self.config.server.workers;
                self.config = new;
                Metrics::inc(&metrics.config_reloads);
                tracing::info!(file = %path.display(), "configuration reloaded");
                match folder_taken {
                    true => changes.iter().for_each(|c| self.accepted(c, started)),
                    false => self.apply_changes(changes, started),
                }
                true
            }
            Err(reason) => {
                self.registry.swap_settings(previous.0, previous.1);
                refuse(&reason);
                // What changed in the folder meanwhile still applies, read
                // and checked under the running configuration.
                self.rescan().await;
                false
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
            // Any name, hidden ones too: a ConfigMap volume changes through
            // `..data`, and a look at the folder costs little.
            if in_folder {
                let _ = tx.send(Command::FolderChanged);
            }
            if is_config {
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
