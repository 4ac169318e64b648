//! The plugin folder as operators really fill it, under load: things in it
//! that are not plugin files (a FIFO, a symlink to `/dev/zero`, a huge file)
//! neither hang nor flood the proxy; a Kubernetes ConfigMap volume, whose
//! files change behind a `..data` symlink, is followed; and a plugin whose new
//! version needs a new configuration can be rolled out live, file first or
//! configuration first.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::*;

/// Compiles the test plugins `names` into the cache in `dir`, so that a
/// swap measures the folder handling, not the compiler.
fn warm_cache(dir: &TempDir, names: &[&str]) {
    let runtime = veer::internals::Runtime::new(Some(dir.join("cache"))).unwrap();
    let limits = veer::config::PluginsSection::default().limits();
    for name in names {
        runtime.load(name, &plugin_bytes(name), limits).unwrap();
    }
}

/// A configuration whose plugin folder and cache live in `dir`, with one
/// pool `web` over `backends` using `strategy` (TOML lines). The backend that
/// answers tells which plugin serves, so a `select` slowed down by a busy
/// machine (a debug build, tests side by side) must not be rested and
/// replaced by the host's round robin: generous deadlines.
fn config_text(dir: &TempDir, strategy: &str, backends: &[&Backend]) -> String {
    format!(
        "{SERVER}[plugins]\ndir = \"{}\"\ndebounce_ms = 20\ncache_dir = \"{}\"\n\
         select_timeout_ms = 1000\nslow_call_us = 1000000\n\
         [pools.web]\n{strategy}\nbackends = [{}]\n",
        dir.join("plugins").display(),
        dir.join("cache").display(),
        addresses(backends)
    )
}

const SWAPPED: &str = "strategy = \"swapped\"";

/// Writes the configuration file and asks for a reload, as SIGHUP does.
fn reconfigure(path: &Path, handle: &veer::Handle, text: &str) {
    std::fs::write(path, text).unwrap();
    handle.reload();
}

fn mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success(), "mkfifo {}", path.display());
}

/// Opens the FIFOs it is given every few seconds (read-write: never blocks),
/// which releases a reader stuck opening or reading one. A proxy that blocks
/// on a FIFO then fails these tests by being slow instead of hanging them.
struct FifoRescuer {
    stop: Arc<AtomicBool>,
    fifos: Arc<Mutex<Vec<PathBuf>>>,
}

impl FifoRescuer {
    fn start() -> FifoRescuer {
        let stop = Arc::new(AtomicBool::new(false));
        let fifos: Arc<Mutex<Vec<PathBuf>>> = Arc::default();
        let (stopped, paths) = (stop.clone(), fifos.clone());
        std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                for _ in 0..50 {
                    std::thread::sleep(Duration::from_millis(100));
                    if stopped.load(Ordering::Relaxed) {
                        return;
                    }
                }
                for fifo in paths.lock().unwrap().iter() {
                    let _ = std::fs::OpenOptions::new()
                        .read(true)
                        .write(true)
                        .open(fifo);
                }
            }
        });
        FifoRescuer { stop, fifos }
    }

    fn add(&self, fifo: PathBuf) {
        self.fifos.lock().unwrap().push(fifo);
    }
}

impl Drop for FifoRescuer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[tokio::test]
async fn a_fifo_in_the_folder_blocks_neither_startup_nor_reloads_nor_swaps() {
    let [a, b] = start_backends(["a", "b"]).await;
    let dir = TempDir::new("fifo");
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    warm_cache(&dir, &["swap-a", "swap-b"]);
    let rescuer = FifoRescuer::start();
    rescuer.add(plugins.join("x.wasm"));
    mkfifo(&plugins.join("x.wasm"));
    install_by_rename(&plugins.join("swapped.wasm"), &plugin_bytes("swap-a"));
    let path = dir.join("veer.toml");
    std::fs::write(&path, config_text(&dir, SWAPPED, &[&a, &b])).unwrap();

    let started = Instant::now();
    let (proxy, handle) = Proxy::start_file(&path).await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "starting took {:?}: something waited on the FIFO",
        started.elapsed()
    );
    until_served_by(proxy.addr, "a", Duration::from_secs(5)).await;
    let load = Load::start(proxy.addr, 4, Duration::from_secs(60));

    // A FIFO appearing while serving is seen, refused, and blocks nothing.
    rescuer.add(plugins.join("y.wasm"));
    mkfifo(&plugins.join("y.wasm"));
    wait_for(Duration::from_secs(4), || {
        proxy.metrics.snapshot().plugin_refusals >= 1
    })
    .await;

    // A configuration reload (backends reversed: swap-a now picks b).
    let reloaded = Instant::now();
    reconfigure(&path, &handle, &config_text(&dir, SWAPPED, &[&b, &a]));
    let took = until_served_by(proxy.addr, "b", Duration::from_secs(10)).await;
    assert!(
        reloaded.elapsed() < Duration::from_secs(1),
        "the reload took {took:?} to take effect"
    );

    // A plugin swap (swap-b prefers the second backend: a).
    let swapped = Instant::now();
    install_by_rename(&plugins.join("swapped.wasm"), &plugin_bytes("swap-b"));
    until_served_by(proxy.addr, "a", Duration::from_secs(10)).await;
    assert!(
        swapped.elapsed() < Duration::from_secs(1),
        "the swap took {:?} to take effect",
        swapped.elapsed()
    );

    let (ok, failed) = load.finish().await;
    assert_eq!(failed, 0, "{failed} of {} requests failed", ok + failed);
    assert_eq!(proxy.metrics.snapshot().plugin_swaps, 1);
}

#[tokio::test]
async fn a_file_written_nonstop_in_the_folder_does_not_hold_back_swaps() {
    let [a, b] = start_backends(["a", "b"]).await;
    let dir = TempDir::new("busy");
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    warm_cache(&dir, &["swap-a", "swap-b"]);
    install_by_rename(&plugins.join("swapped.wasm"), &plugin_bytes("swap-a"));
    let proxy = Proxy::start(&config_text(&dir, SWAPPED, &[&a, &b])).await;
    until_served_by(proxy.addr, "a", Duration::from_secs(5)).await;
    let load = Load::start(proxy.addr, 4, Duration::from_secs(60));

    // A log line every 5 ms: never quiet for the 20 ms debounce.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = std::thread::spawn({
        let (stop, log) = (stop.clone(), plugins.join("notes.log"));
        move || {
            use std::io::Write;
            let mut file = std::fs::File::create(log).unwrap();
            while !stop.load(Ordering::Relaxed) {
                writeln!(file, "still here").unwrap();
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    });
    install_by_rename(&plugins.join("swapped.wasm"), &plugin_bytes("swap-b"));
    let took = until_served_by(proxy.addr, "b", Duration::from_secs(10)).await;
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    assert!(
        took < Duration::from_secs(1),
        "the swap waited {took:?} for the folder to be quiet"
    );

    let (ok, failed) = load.finish().await;
    assert_eq!(failed, 0, "{failed} of {} requests failed", ok + failed);
}

/// `veer run` in its own process, so its memory can be measured alone; its
/// log lines are collected. Killed on drop.
struct VeerProcess {
    child: std::process::Child,
    addr_rx: std::sync::mpsc::Receiver<String>,
    log: Arc<Mutex<Vec<String>>>,
}

impl VeerProcess {
    fn spawn(config: &Path) -> VeerProcess {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_veer"))
            .args(["run", "--config", config.to_str().unwrap()])
            .env("RUST_LOG", "veer=info")
            .env("NO_COLOR", "1")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(rest) = line.split("addr=").nth(1) {
                    let _ = addr_tx.send(rest.split_whitespace().next().unwrap().to_string());
                }
                lines.lock().unwrap().push(line);
            }
        });
        VeerProcess {
            child,
            addr_rx,
            log,
        }
    }

    /// Its address, once it has bound it (within `limit`).
    async fn addr(&self, limit: Duration) -> std::net::SocketAddr {
        let started = Instant::now();
        loop {
            match self.addr_rx.try_recv() {
                Ok(addr) => return addr.parse().unwrap(),
                Err(std::sync::mpsc::TryRecvError::Disconnected) => panic!(
                    "veer exited before serving; its log:\n{}",
                    self.log.lock().unwrap().join("\n")
                ),
                Err(std::sync::mpsc::TryRecvError::Empty) => {}
            }
            assert!(
                started.elapsed() < limit,
                "veer did not start within {limit:?}; its log:\n{}",
                self.log.lock().unwrap().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until a log line contains every one of `words`; returns it.
    async fn logged(&self, words: &[&str], limit: Duration) -> String {
        let started = Instant::now();
        loop {
            if let Some(line) = self
                .log
                .lock()
                .unwrap()
                .iter()
                .find(|l| words.iter().all(|w| l.contains(w)))
            {
                return line.clone();
            }
            assert!(
                started.elapsed() < limit,
                "no log line with {words:?} within {limit:?}; the log:\n{}",
                self.log.lock().unwrap().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for VeerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Kills process `pid` if its resident memory passes `limit_kib` (checked
/// every 2 ms), so a proxy reading `/dev/zero` fails the test instead of
/// taking the machine's memory. Stops with the process or when dropped.
struct MemoryGuard(Arc<AtomicBool>);

impl MemoryGuard {
    fn start(pid: u32, limit_kib: u64) -> MemoryGuard {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match memory_kib(pid) {
                    None => return,
                    Some((rss, _)) if rss > limit_kib => {
                        eprintln!("veer's memory reached {rss} KiB: killed");
                        let _ = std::process::Command::new("kill")
                            .args(["-KILL", &pid.to_string()])
                            .status();
                        return;
                    }
                    Some(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        MemoryGuard(stop)
    }
}

impl Drop for MemoryGuard {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[tokio::test]
async fn a_symlink_to_dev_zero_and_a_huge_file_are_refused_without_being_read() {
    const PEAK_GROWTH_KIB: u64 = 48 * 1024;
    let [a, b] = start_backends(["a", "b"]).await;
    let dir = TempDir::new("zero");
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    warm_cache(&dir, &["swap-a", "swap-b"]);
    install_by_rename(&plugins.join("swapped.wasm"), &plugin_bytes("swap-a"));
    std::os::unix::fs::symlink("/dev/zero", plugins.join("z.wasm")).unwrap();
    let config = dir.join("veer.toml");
    std::fs::write(&config, config_text(&dir, SWAPPED, &[&a, &b])).unwrap();

    // Guarded from its first moment: a proxy reading `/dev/zero` at startup
    // is killed before it takes the machine's memory.
    let veer = VeerProcess::spawn(&config);
    let _guard = MemoryGuard::start(veer.child.id(), 512 * 1024);
    let addr = veer.addr(Duration::from_secs(30)).await;
    let pid = veer.child.id();
    veer.logged(&["z.wasm", "not a regular file"], Duration::from_secs(5))
        .await;
    until_served_by(addr, "a", Duration::from_secs(10)).await;
    let (warm, _) = memory_kib(pid).unwrap();
    let load = Load::start(addr, 4, Duration::from_secs(60));

    // The same while serving, and a regular file over the size cap (sparse:
    // it takes no disk).
    std::os::unix::fs::symlink("/dev/zero", plugins.join("zz.wasm")).unwrap();
    let huge = std::fs::File::create(plugins.join("huge.wasm")).unwrap();
    huge.set_len(65 << 20).unwrap();
    drop(huge);
    veer.logged(&["zz.wasm", "not a regular file"], Duration::from_secs(5))
        .await;
    veer.logged(
        &["huge.wasm", "larger than plugins.max_file_mib (64 MiB)"],
        Duration::from_secs(5),
    )
    .await;

    // Swaps still work.
    install_by_rename(&plugins.join("swapped.wasm"), &plugin_bytes("swap-b"));
    until_served_by(addr, "b", Duration::from_secs(10)).await;
    install_by_rename(&plugins.join("swapped.wasm"), &plugin_bytes("swap-a"));
    until_served_by(addr, "a", Duration::from_secs(10)).await;

    let (ok, failed) = load.finish().await;
    assert_eq!(failed, 0, "{failed} of {} requests failed", ok + failed);
    let (_, peak) = memory_kib(pid).unwrap();
    assert!(
        peak <= warm + PEAK_GROWTH_KIB,
        "peak memory {peak} KiB, {} KiB over the warm level {warm} KiB",
        peak.saturating_sub(warm)
    );
}

/// Points `..data` at `..NAME` (holding `x.wasm` = `plugin`) the way kubelet
/// updates a ConfigMap volume: a new folder, a new symlink, renamed over.
fn configmap_publish(plugins: &Path, name: &str, plugin: &str) {
    let data = plugins.join(format!("..{name}"));
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("x.wasm"), plugin_bytes(plugin)).unwrap();
    let tmp = plugins.join("..data_tmp");
    std::os::unix::fs::symlink(format!("..{name}"), &tmp).unwrap();
    std::fs::rename(&tmp, plugins.join("..data")).unwrap();
}

#[tokio::test]
async fn a_configmap_volume_update_behind_the_data_symlink_swaps_the_plugin() {
    let [a, b] = start_backends(["a", "b"]).await;
    let dir = TempDir::new("configmap");
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    warm_cache(&dir, &["swap-a", "swap-b"]);
    configmap_publish(&plugins, "2026_11_22_a", "swap-a");
    std::os::unix::fs::symlink("..data/x.wasm", plugins.join("x.wasm")).unwrap();
    let proxy = Proxy::start(&config_text(&dir, SWAPPED, &[&a, &b])).await;
    until_served_by(proxy.addr, "a", Duration::from_secs(5)).await;
    let load = Load::start(proxy.addr, 4, Duration::from_secs(60));

    configmap_publish(&plugins, "2026_11_22_b", "swap-b");
    std::fs::remove_dir_all(plugins.join("..2026_11_22_a")).unwrap();
    until_served_by(proxy.addr, "b", Duration::from_secs(10)).await;
    configmap_publish(&plugins, "2026_11_22_c", "swap-a");
    std::fs::remove_dir_all(plugins.join("..2026_11_22_b")).unwrap();
    until_served_by(proxy.addr, "a", Duration::from_secs(10)).await;

    let (ok, failed) = load.finish().await;
    assert_eq!(failed, 0, "{failed} of {} requests failed", ok + failed);
    let metrics = proxy.metrics.snapshot();
    assert_eq!((metrics.plugin_swaps, metrics.plugin_refusals), (2, 0));
}

/// The new version of the plugin `x.wasm` serves: `misbehave` (it needs
/// `mode` in its configuration) in place of `swapped`. With the backends
/// reversed it sends everything to b.
fn new_plugin_config(dir: &TempDir, mode: &str, backends: &[&Backend]) -> String {
    config_text(
        dir,
        &format!("strategy = \"misbehave\"\nstrategy_config = {{ mode = \"{mode}\" }}"),
        backends,
    )
}

/// `swapped` (swap-a) serving from `x.wasm`, a configuration file naming
/// it, and load running.
async fn schema_setup(dir: &TempDir) -> ([Backend; 2], Proxy, veer::Handle, PathBuf) {
    let backends = start_backends(["a", "b"]).await;
    std::fs::create_dir_all(dir.join("plugins")).unwrap();
    warm_cache(dir, &["swap-a", "misbehave"]);
    install_by_rename(&dir.join("plugins").join("x.wasm"), &plugin_bytes("swap-a"));
    let path = dir.join("veer.toml");
    let [a, b] = &backends;
    std::fs::write(&path, config_text(dir, SWAPPED, &[a, b])).unwrap();
    let (proxy, handle) = Proxy::start_file(&path).await;
    until_served_by(proxy.addr, "a", Duration::from_secs(5)).await;
    (backends, proxy, handle, path)
}

#[tokio::test]
async fn a_plugin_needing_a_new_config_goes_live_when_the_file_lands_before_the_config() {
    let dir = TempDir::new("schema-file-first");
    let ([a, b], proxy, handle, path) = schema_setup(&dir).await;
    let load = Load::start(proxy.addr, 4, Duration::from_secs(60));

    // The file first: the configuration still names `swapped`; refused.
    install_by_rename(
        &dir.join("plugins").join("x.wasm"),
        &plugin_bytes("misbehave"),
    );
    wait_for(Duration::from_secs(10), || {
        proxy.metrics.snapshot().plugin_refusals >= 1
    })
    .await;
    assert_eq!(Client::h1(proxy.addr).await.get("/").await.backend(), "a");

    // A configuration the new plugin's `init` refuses: both stay out.
    reconfigure(&path, &handle, &new_plugin_config(&dir, "bogus", &[&b, &a]));
    wait_for(Duration::from_secs(10), || {
        proxy.metrics.snapshot().config_reload_refusals >= 1
    })
    .await;
    assert_eq!(Client::h1(proxy.addr).await.get("/").await.backend(), "a");

    // The configuration it accepts: the refused file is taken with it.
    reconfigure(&path, &handle, &new_plugin_config(&dir, "first", &[&b, &a]));
    until_served_by(proxy.addr, "b", Duration::from_secs(10)).await;
    let mut client = Client::h1(proxy.addr).await;
    for _ in 0..5 {
        assert_eq!(client.get("/").await.backend(), "b");
    }

    let (ok, failed) = load.finish().await;
    assert_eq!(failed, 0, "{failed} of {} requests failed", ok + failed);
    assert!(proxy.metrics.snapshot().config_reloads >= 1);
}

#[tokio::test]
async fn a_plugin_needing_a_new_config_goes_live_when_the_config_lands_before_the_file() {
    let dir = TempDir::new("schema-config-first");
    let ([a, b], proxy, handle, path) = schema_setup(&dir).await;
    let load = Load::start(proxy.addr, 4, Duration::from_secs(60));

    // The configuration first: it names a plugin not there yet; refused.
    reconfigure(&path, &handle, &new_plugin_config(&dir, "first", &[&b, &a]));
    wait_for(Duration::from_secs(10), || {
        proxy.metrics.snapshot().config_reload_refusals >= 1
    })
    .await;
    assert_eq!(Client::h1(proxy.addr).await.get("/").await.backend(), "a");

    // The file: taken with the configuration that was waiting for it.
    install_by_rename(
        &dir.join("plugins").join("x.wasm"),
        &plugin_bytes("misbehave"),
    );
    until_served_by(proxy.addr, "b", Duration::from_secs(10)).await;
    let mut client = Client::h1(proxy.addr).await;
    for _ in 0..5 {
        assert_eq!(client.get("/").await.backend(), "b");
    }

    let (ok, failed) = load.finish().await;
    assert_eq!(failed, 0, "{failed} of {} requests failed", ok + failed);
    assert!(proxy.metrics.snapshot().config_reloads >= 1);
}
