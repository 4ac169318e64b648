//! The compiled-plugin cache holds native code, so what another user could
//! have written is not run: entries planted by another user or made
//! group-writable are refused, said so in the log, recompiled and replaced,
//! and the proxy serves all along.

use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

/// A `veer run` process, killed (and reaped) on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the real `veer` binary on `config` until it serves one request
/// through the `swapped` plugin, then stops it; returns its log.
async fn serve_once(config: &Path, log: &Path) -> String {
    let mut veer = Running(
        Command::new(env!("CARGO_BIN_EXE_veer"))
            .args(["run", "--config"])
            .arg(config)
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    let addr = loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(addr) = serving_addr(&text) {
            break addr;
        }
        if let Ok(Some(status)) = veer.0.try_wait() {
            panic!("veer ended ({status}) before serving:\n{text}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "veer did not start serving:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let answer = Client::h1(addr).await.get("/").await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.backend(), "a");
    drop(veer);
    std::fs::read_to_string(log).unwrap()
}

/// The address in the `veer is serving addr=…` log line, once logged.
fn serving_addr(log: &str) -> Option<SocketAddr> {
    let line = log.lines().find(|l| l.contains("veer is serving"))?;
    let (_, rest) = line.split_once("addr=")?;
    rest.split_whitespace().next()?.parse().ok()
}

/// The cache entries (compiled plugins) in `cache`.
fn entries(cache: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect()
}

fn refusals(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("compiled-plugin cache entry") && l.contains("refused"))
        .collect()
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[tokio::test]
async fn cache_entries_planted_by_another_user_or_made_group_writable_are_refused_and_recompiled() {
    let dir = TempDir::new("plugin-cache");
    let cache = dir.join("cache");
    let [a] = start_backends(["a"]).await;
    let config = dir.join("veer.toml");
    std::fs::write(
        &config,
        format!(
            "{SERVER}[admin]\nlisten = \"\"\n\
             [plugins]\ndir = \"\"\ncache_dir = \"{}\"\nload = [\"{}\"]\n\
             [pools.web]\nstrategy = \"swapped\"\nbackends = [{}]\n",
            cache.display(),
            test_plugin("swap-a"),
            addresses(&[&a])
        ),
    )
    .unwrap();
    let log = dir.join("veer.log");
    let me = rustix::process::geteuid().as_raw();

    // First start: compiled and stored, private to this user.
    let text = serve_once(&config, &log).await;
    assert!(refusals(&text).is_empty(), "{text}");
    let stored = entries(&cache);
    assert_eq!(stored.len(), 1, "one plugin compiled: {stored:?}");
    let entry = stored[0].clone();
    let private = |what: &str| {
        let meta = std::fs::symlink_metadata(&entry).unwrap();
        assert!(meta.is_file(), "{what}");
        assert_eq!(meta.uid(), me, "{what}: owned by this user");
        assert_eq!(meta.mode() & 0o777, 0o600, "{what}: mode 0600");
    };
    private("stored");
    assert_eq!(
        std::fs::metadata(cache.join("key")).unwrap().mode() & 0o777,
        0o600
    );

    // Planted by another user: only root can give a file away.
    if me == 0 {
        std::os::unix::fs::chown(&entry, Some(65534), Some(65534)).unwrap();
        let text = serve_once(&config, &log).await;
        let refused = refusals(&text);
        assert_eq!(refused.len(), 1, "{text}");
        assert!(
            refused[0].contains(&entry.display().to_string())
                && refused[0].contains("belongs to uid 65534"),
            "{text}"
        );
        private("replaced after a foreign owner");
    } else {
        eprintln!("not root: the entry of another user is not tried");
    }

    // Made group-writable.
    chmod(&entry, 0o664);
    let text = serve_once(&config, &log).await;
    let refused = refusals(&text);
    assert_eq!(refused.len(), 1, "{text}");
    assert!(
        refused[0].contains(&entry.display().to_string())
            && refused[0].contains("group or others may write"),
        "{text}"
    );
    private("replaced after group-writable");

    // The replacement is sound: used, not refused.
    let text = serve_once(&config, &log).await;
    assert!(refusals(&text).is_empty(), "{text}");
    assert_eq!(entries(&cache), vec![entry]);
}

#[test]
fn a_group_writable_entry_is_compiled_again_and_the_replacement_is_used() {
    let dir = TempDir::new("plugin-cache-counts");
    let bytes = std::fs::read(test_plugin("swap-a")).unwrap();
    let limits = veer::config::PluginsSection::default().limits();
    let load = |expect: (u64, u64)| {
        let runtime = veer::internals::Runtime::new(Some(dir.join("cache"))).unwrap();
        runtime.load("swap-a", &bytes, limits).unwrap();
        assert_eq!(runtime.cache_counts(), Some(expect), "(hits, compiles)");
    };
    load((0, 1)); // first start: compiled and stored
    load((1, 0)); // restart: taken from the cache
    let stored = entries(&dir.join("cache"));
    assert_eq!(stored.len(), 1, "{stored:?}");
    chmod(&stored[0], 0o664);
    load((0, 1)); // refused: compiled again, and replaced
    load((1, 0)); // the replacement is used
}

#[test]
fn a_group_writable_cache_folder_turns_the_cache_off_and_plugins_still_load() {
    let dir = TempDir::new("plugin-cache-folder");
    let cache = dir.join("cache");
    std::fs::create_dir(&cache).unwrap();
    chmod(&cache, 0o775);
    let runtime = veer::internals::Runtime::new(Some(cache.clone())).unwrap();
    assert_eq!(runtime.cache_counts(), None, "no cache");
    let bytes = std::fs::read(test_plugin("swap-a")).unwrap();
    let limits = veer::config::PluginsSection::default().limits();
    let plugin = runtime.load("swap-a", &bytes, limits).unwrap();
    assert_eq!(plugin.name(), "swapped");
    assert!(entries(&cache).is_empty(), "nothing written there");
    assert!(!cache.join("key").exists());
}
