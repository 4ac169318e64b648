//! The compiled-plugin cache: plugins compiled by wasmtime, kept on disk so a
//! restart does not recompile them.
//!
//! What it hands back is run as native code (`Component::deserialize`), so it
//! hands back only bytes this install's engine wrote:
//!
//! - The folder must belong to the effective user and not be writable by
//!   group or others, and no folder above it may belong to another user or be
//!   writable by group or others unless sticky (like `/tmp`): else another
//!   user could swap it. A symlink is not followed. A folder refused turns the
//!   cache off (plugins compile in memory) with a warning saying what to do.
//!   It is created mode 0700 and opened once; every file in it is then opened
//!   relative to that descriptor, never through a symlink.
//! - `key` in the folder is a per-install secret (32 random bytes, mode 0600,
//!   readable by the effective user alone, else the cache is off). Entry names
//!   are an HMAC of the component, so they cannot be guessed; each entry
//!   starts with an HMAC-SHA256 tag over its name and artifact, checked in
//!   constant time: an entry altered, or copied from another name or another
//!   install, is refused.
//! - An entry not owned by the effective user, writable by group or others,
//!   not a regular file or a symlink, is refused with a warning, recompiled
//!   and replaced.
//! - Entries are written under a random name (created exclusively, mode 0600,
//!   never through a symlink), then renamed into place. Past the size cap the
//!   least recently used entries are deleted (a hit makes an entry the most
//!   recently used); temporary files left for an hour are removed.

use std::fs::{File, Metadata};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use hmac::{Hmac, Mac};
use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;
use wasmtime::Engine;
use wasmtime::component::Component;

type HmacSha256 = Hmac<sha2::Sha256>;

/// The per-install secret's file, in the folder.
const KEY_FILE: &str = "key";
/// Bytes of the secret (as long as SHA-256's output, as HMAC advises).
const KEY_LEN: usize = 32;
/// Bytes of an entry's tag (HMAC-SHA256), at its start.
const TAG_LEN: usize = 32;
/// Entries end with this; only they count toward the size cap.
const ENTRY_SUFFIX: &str = ".cwasm";
/// Temporary files start with this (then 32 random hex digits).
const TEMP_PREFIX: &str = "tmp-";
/// A temporary file this old was left by a writer that died: removed.
const STALE_TEMP: Duration = Duration::from_secs(3600);
/// Mode bits that let group or others write.
const WRITABLE_BY_OTHERS: u32 = 0o022;
/// Mode bits that let group or others in at all (refused for the key).
const OPEN_TO_OTHERS: u32 = 0o077;
/// The sticky bit: in such a folder only a file's owner may rename it.
const STICKY: u32 = 0o1000;

/// Compiled components on disk, in a folder checked once and then held open.
/// See the module documentation for what is refused.
pub(super) struct Cache {
    /// The folder's path, for messages only: files are reached through
    /// `folder`.
    dir: PathBuf,
    /// The folder, opened without following a symlink and checked: entries
    /// are opened relative to it, so a later rename of the path (or of a
    /// folder above it) cannot redirect them.
    folder: File,
    /// The per-install secret: names entries and keys their tags.
    key: [u8; KEY_LEN],
    /// Hash of the engine settings compiled code depends on.
    engine_key: u64,
    /// Bytes the entries may take together (`plugins.cache_max_mib`).
    max_bytes: u64,
    /// The effective user: what it does not own is not trusted.
    euid: u32,
    /// Entries used instead of compiling.
    pub(super) hits: AtomicU64,
    /// Compilations (no sound entry).
    pub(super) compiles: AtomicU64,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `N` bytes from the kernel's random source.
fn random<const N: usize>() -> std::io::Result<[u8; N]> {
    let mut bytes = [0; N];
    File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes)
}

/// A fresh temporary file name: 16 random bytes, so it cannot be predicted.
fn temp_name() -> std::io::Result<String> {
    Ok(format!("{TEMP_PREFIX}{}", hex(&random::<16>()?)))
}

/// Opens `name` in `folder` to read: never through a symlink, never blocking
/// (on a FIFO).
fn open_in(folder: &File, name: &str) -> rustix::io::Result<File> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    rustix::fs::openat(folder, name, flags, Mode::empty()).map(File::from)
}

/// Creates `name` in `folder`, mode 0600: fails if anything (a symlink too)
/// is there already.
fn create_in(folder: &File, name: &str) -> rustix::io::Result<File> {
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    rustix::fs::openat(folder, name, flags, Mode::RUSR | Mode::WUSR).map(File::from)
}

/// Writes `parts` to a new temporary file in `folder` and returns its name.
fn write_temp(folder: &File, parts: &[&[u8]]) -> std::io::Result<String> {
    let temp = temp_name()?;
    let mut file = create_in(folder, &temp)?;
    let written = parts
        .iter()
        .try_for_each(|part| file.write_all(part))
        .and_then(|()| file.sync_all());
    if let Err(e) = written {
        let _ = rustix::fs::unlinkat(folder, &temp, AtFlags::empty());
        return Err(e);
    }
    Ok(temp)
}

/// Why an open failed, in words: a symlink is named as such.
fn open_error(e: Errno) -> String {
    // O_NOFOLLOW on a symlink: ELOOP on Linux, EMLINK on the BSDs.
    if e == Errno::LOOP || e == Errno::MLINK {
        "it is a symlink, which is not followed".into()
    } else {
        format!("it could not be opened: {e}")
    }
}

/// Why a file or folder of the cache may not be trusted, if so: it must
/// belong to `euid` and have none of the `forbidden` mode bits.
fn untrusted(meta: &Metadata, euid: u32, forbidden: u32) -> Option<String> {
    if meta.uid() != euid {
        return Some(format!(
            "it belongs to uid {}, not to this user (uid {euid})",
            meta.uid()
        ));
    }
    let mode = meta.mode() & 0o7777;
    if mode & forbidden != 0 {
        let who = if forbidden == OPEN_TO_OTHERS {
            "group or others may use it"
        } else {
            "group or others may write to it"
        };
        return Some(format!("{who} (mode {mode:o})"));
    }
    None
}

/// Refuses a folder another user could swap for one of theirs: every
/// existing folder above `dir` must belong to `euid` or root and, unless
/// sticky (like `/tmp`), not be writable by group or others.
fn check_ancestors(dir: &Path, euid: u32) -> Result<(), String> {
    let here = Path::new(".");
    let parent = |p: &Path| {
        p.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
    };
    // Folders not there yet will be made by this user, below the nearest one
    // that is.
    let mut above = parent(dir).unwrap_or_else(|| here.into());
    while std::fs::symlink_metadata(&above).is_err() {
        above = parent(&above).unwrap_or_else(|| here.into());
        if above == here {
            break;
        }
    }
    let real = above
        .canonicalize()
        .map_err(|e| format!("{}: {e}", above.display()))?;
    for folder in real.ancestors() {
        let meta = std::fs::metadata(folder).map_err(|e| format!("{}: {e}", folder.display()))?;
        let (uid, mode) = (meta.uid(), meta.mode() & 0o7777);
        if uid != euid && uid != 0 {
            let sudo = if euid == 0 {
                " (running as root with another user's $HOME or $XDG_CACHE_HOME, as \
                 `sudo -E` does? give root a folder of its own, e.g. /var/cache/veer)"
            } else {
                ""
            };
            return Err(format!(
                "{} belongs to uid {uid}, who could replace the cache folder in it (this \
                 process runs as uid {euid}); point plugins.cache_dir at a folder of this \
                 user's{sudo}",
                folder.display()
            ));
        }
        if mode & WRITABLE_BY_OTHERS != 0 && mode & STICKY == 0 {
            return Err(format!(
                "{} may be written by group or others (mode {mode:o}), who could replace the \
                 cache folder in it; `chmod go-w {}`, or point plugins.cache_dir elsewhere",
                folder.display(),
                folder.display()
            ));
        }
    }
    Ok(())
}

/// Opens the folder `dir` (creating it, mode 0700) and checks it.
fn open_folder(dir: &Path, euid: u32) -> Result<File, String> {
    check_ancestors(dir, euid)?;
    let is_link = std::fs::symlink_metadata(dir).is_ok_and(|m| m.file_type().is_symlink());
    if !is_link {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("{}: could not create it: {e}", dir.display()))?;
    }
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let folder = match rustix::fs::open(dir, flags, Mode::empty()) {
        Ok(fd) => File::from(fd),
        Err(e) if is_link || e == Errno::LOOP || e == Errno::MLINK || e == Errno::NOTDIR => {
            return Err(format!(
                "{} is a symlink or not a folder; point plugins.cache_dir at a real folder",
                dir.display()
            ));
        }
        Err(e) => return Err(format!("{}: could not open it: {e}", dir.display())),
    };
    check_folder(&folder, dir, euid)?;
    Ok(folder)
}

/// Checks the open folder's owner and mode.
fn check_folder(folder: &File, dir: &Path, euid: u32) -> Result<(), String> {
    let meta = folder
        .metadata()
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    match untrusted(&meta, euid, WRITABLE_BY_OTHERS) {
        None => Ok(()),
        Some(why) if meta.uid() != euid => Err(format!(
            "{}: {why}; `chown {euid} {}`, or point plugins.cache_dir at a folder of this user's",
            dir.display(),
            dir.display()
        )),
        Some(why) => Err(format!(
            "{}: {why}; `chmod 700 {}`",
            dir.display(),
            dir.display()
        )),
    }
}

/// Reads the per-install secret, making it on first use.
fn load_key(folder: &File, dir: &Path, euid: u32) -> Result<[u8; KEY_LEN], String> {
    let path = dir.join(KEY_FILE);
    let remedy = "delete it: a new key is made, and every entry is recompiled once";
    let refused = |why: String| format!("{}: {why}; {remedy}", path.display());
    let mut file = match open_in(folder, KEY_FILE) {
        Err(Errno::NOENT) => {
            make_key(folder).map_err(|e| format!("{}: could not make it: {e}", path.display()))?;
            open_in(folder, KEY_FILE).map_err(|e| refused(open_error(e)))?
        }
        opened => opened.map_err(|e| refused(open_error(e)))?,
    };
    let meta = file.metadata().map_err(|e| refused(e.to_string()))?;
    if !meta.is_file() {
        return Err(refused("it is not a regular file".into()));
    }
    if let Some(why) = untrusted(&meta, euid, OPEN_TO_OTHERS) {
        return Err(refused(why));
    }
    let mut key = Vec::with_capacity(KEY_LEN);
    (&mut file)
        .take(KEY_LEN as u64 + 1)
        .read_to_end(&mut key)
        .map_err(|e| refused(e.to_string()))?;
    key.try_into()
        .map_err(|_| refused(format!("it is not {KEY_LEN} bytes long")))
}

/// Makes the key file: written aside, then linked into place, which fails
/// rather than replace a key another process made meanwhile (then that one
/// is used), so no process ever reads a key half written.
fn make_key(folder: &File) -> std::io::Result<()> {
    let temp = write_temp(folder, &[&random::<KEY_LEN>()?])?;
    let linked = match rustix::fs::linkat(folder, &temp, folder, KEY_FILE, AtFlags::empty()) {
        Ok(()) | Err(Errno::EXIST) => Ok(()),
        // No hard links on this file system: a rename, which may replace a
        // key made at the same moment (the other process's entries are then
        // refused once and recompiled).
        Err(_) => rustix::fs::renameat(folder, &temp, folder, KEY_FILE),
    };
    let _ = rustix::fs::unlinkat(folder, &temp, AtFlags::empty());
    Ok(linked?)
}

impl Cache {
    /// The cache in `dir` (created mode 0700 if missing) with its key, or
    /// `None` after a warning saying why not and what to do: plugins are then
    /// compiled in memory and serving goes on.
    pub(super) fn open(dir: PathBuf, engine_key: u64, max_bytes: u64) -> Option<Cache> {
        match Cache::try_open(dir, engine_key, max_bytes) {
            Ok(cache) => Some(cache),
            Err(why) => {
                tracing::warn!(
                    "compiled-plugin cache off: {why}. Plugins are compiled at each start meanwhile"
                );
                None
            }
        }
    }

    fn try_open(dir: PathBuf, engine_key: u64, max_bytes: u64) -> Result<Cache, String> {
        let euid = rustix::process::geteuid().as_raw();
        let folder = open_folder(&dir, euid)?;
        let key = load_key(&folder, &dir, euid)?;
        Ok(Cache {
            dir,
            folder,
            key,
            engine_key,
            max_bytes,
            euid,
            hits: AtomicU64::new(0),
            compiles: AtomicU64::new(0),
        })
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC takes keys of any length; this one is 32 bytes.
        HmacSha256::new_from_slice(&self.key).expect("HMAC-SHA256 takes a 32-byte key")
    }

    /// The entry name of `component`: an HMAC of it and the engine settings,
    /// so it cannot be guessed without the key.
    fn name(&self, component: &[u8]) -> String {
        let mut mac = self.mac();
        mac.update(b"veer-cache-name\0");
        mac.update(&self.engine_key.to_le_bytes());
        mac.update(component);
        format!("{}{ENTRY_SUFFIX}", hex(&mac.finalize().into_bytes()))
    }

    /// The tag of `artifact` stored under `name` (names are all the same
    /// length, so name and artifact cannot be shifted into one another).
    fn tag(&self, name: &str, artifact: &[u8]) -> HmacSha256 {
        let mut mac = self.mac();
        mac.update(b"veer-cache-tag\0");
        mac.update(name.as_bytes());
        mac.update(artifact);
        mac
    }

    /// The folder, unless its owner or mode changed since it was opened.
    fn usable(&self) -> bool {
        match check_folder(&self.folder, &self.dir, self.euid) {
            Ok(()) => true,
            Err(why) => {
                tracing::warn!("compiled-plugin cache not used: {why}");
                false
            }
        }
    }

    /// The artifact stored under `name`: `Ok(None)` if there is none,
    /// `Err(why)` if there is an entry that may not be trusted. A hit becomes
    /// the most recently used entry.
    fn read(&self, name: &str) -> Result<Option<Vec<u8>>, String> {
        let mut file = match open_in(&self.folder, name) {
            Ok(file) => file,
            Err(Errno::NOENT) => return Ok(None),
            Err(e) => return Err(open_error(e)),
        };
        let meta = file.metadata().map_err(|e| e.to_string())?;
        if !meta.is_file() {
            return Err("it is not a regular file".into());
        }
        if let Some(why) = untrusted(&meta, self.euid, WRITABLE_BY_OTHERS) {
            return Err(why);
        }
        let mut entry = Vec::with_capacity(meta.len() as usize);
        file.read_to_end(&mut entry)
            .map_err(|e| format!("it could not be read: {e}"))?;
        if entry.len() < TAG_LEN {
            return Err("it is truncated".into());
        }
        let (tag, artifact) = entry.split_at(TAG_LEN);
        // Constant time: a forger learns nothing from how long it took.
        self.tag(name, artifact).verify_slice(tag).map_err(|_| {
            "its tag does not verify: it was altered, or made for another component or by \
             another install"
                .to_string()
        })?;
        // Best effort: an entry that cannot be touched is evicted sooner.
        let _ = file.set_modified(SystemTime::now());
        entry.drain(..TAG_LEN);
        Ok(Some(entry))
    }

    /// A cached compilation of `bytes`, if a sound one is there.
    pub(super) fn get(&self, engine: &Engine, bytes: &[u8]) -> Option<Component> {
        if !self.usable() {
            return None;
        }
        let name = self.name(bytes);
        let artifact = match self.read(&name) {
            Ok(artifact) => artifact?,
            Err(why) => {
                tracing::warn!(
                    "compiled-plugin cache entry {} refused: {why}. Recompiling it; the entry \
                     is replaced. If you did not cause this, find out what else writes to {}",
                    self.dir.join(&name).display(),
                    self.dir.display()
                );
                return None;
            }
        };
        // SAFETY: `deserialize` maps the artifact's machine code and runs it,
        // so the bytes must be ones a wasmtime engine produced. These were
        // written by this install's engine (`put`, from
        // `precompile_component`), because:
        // - they carry an HMAC-SHA256 tag over their entry name and content,
        //   checked above in constant time, keyed by this install's secret;
        //   the key file belongs to the effective user and only it may read
        //   it (checked when the cache was opened), so no other user could
        //   have computed the tag, and the name in it ties the artifact to
        //   this component and engine settings;
        // - the folder and the entry belong to the effective user and are not
        //   writable by group or others (the folder checked again just now),
        //   no folder above it may be swapped by another user, and the entry
        //   was read through a descriptor opened relative to the checked
        //   folder with O_NOFOLLOW, then checked with fstat: the bytes read
        //   are that file's;
        // - wasmtime refuses artifacts of another version or other settings.
        // What stays trusted: the effective user and root, who can read the
        // key or replace the binary itself.
        #[allow(unsafe_code)]
        let component = unsafe { Component::deserialize(engine, &artifact) };
        match component {
            Ok(component) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                Some(component)
            }
            Err(e) => {
                tracing::info!(
                    "stale compiled-plugin cache entry {} ({e}); recompiling",
                    self.dir.join(&name).display()
                );
                None
            }
        }
    }

    /// Stores a compilation (replacing an entry refused by `get`), then keeps
    /// the folder under its cap.
    pub(super) fn put(&self, bytes: &[u8], artifact: &[u8]) {
        if !self.usable() {
            return;
        }
        let name = self.name(bytes);
        if let Err(e) = self.write(&name, artifact) {
            tracing::warn!(
                "could not write to the compiled-plugin cache {}: {e}",
                self.dir.display()
            );
            return;
        }
        if let Err(e) = self.tidy(&name) {
            tracing::warn!(
                "could not tidy the compiled-plugin cache {}: {e}",
                self.dir.display()
            );
        }
    }

    /// Writes an entry atomically: a new file under a random name, then
    /// renamed over `name` (whatever was there, a symlink too, is replaced).
    fn write(&self, name: &str, artifact: &[u8]) -> std::io::Result<()> {
        let tag = self.tag(name, artifact).finalize().into_bytes();
        let temp = write_temp(&self.folder, &[&tag, artifact])?;
        rustix::fs::renameat(&self.folder, &temp, &self.folder, name).map_err(|e| {
            let _ = rustix::fs::unlinkat(&self.folder, &temp, AtFlags::empty());
            e.into()
        })
    }

    /// Removes temporary files older than [`STALE_TEMP`], then the least
    /// recently used entries (never `keep`) until the entries fit the cap.
    fn tidy(&self, keep: &str) -> std::io::Result<()> {
        let now = SystemTime::now();
        let mut entries = Vec::new();
        let mut total = 0u64;
        for item in rustix::fs::Dir::read_from(&self.folder)? {
            let item = item?;
            let Ok(name) = item.file_name().to_str() else {
                continue;
            };
            let temp = name.starts_with(TEMP_PREFIX);
            if !temp && !name.ends_with(ENTRY_SUFFIX) {
                continue;
            }
            // Symlinks, and files gone meanwhile, take no room: skipped.
            let Ok(meta) = open_in(&self.folder, name).map(|f| f.metadata()) else {
                continue;
            };
            let meta = meta?;
            let used = meta.modified()?;
            if temp {
                if now.duration_since(used).is_ok_and(|age| age > STALE_TEMP) {
                    let _ = rustix::fs::unlinkat(&self.folder, name, AtFlags::empty());
                }
                continue;
            }
            total += meta.len();
            if name != keep {
                entries.push((used, meta.len(), name.to_string()));
            }
        }
        entries.sort();
        for (_, size, name) in entries {
            if total <= self.max_bytes {
                break;
            }
            match rustix::fs::unlinkat(&self.folder, name.as_str(), AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => total = total.saturating_sub(size),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
