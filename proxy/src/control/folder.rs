//! The plugin folder on disk (`plugins.dir`): which entries are plugin
//! files, reading one so that nothing put in the folder can hang or flood the
//! proxy, and what differs from what is loaded.
//!
//! Only regular files are read (a symlink to one is fine: a Kubernetes
//! ConfigMap volume is all symlinks). A file is opened without blocking, so a
//! FIFO named `x.wasm` stalls nothing, and at most `plugins.max_file_mib` of
//! it is read, so a symlink to `/dev/zero` cannot take the memory.
//!
//! The folder is compared by content (SHA-256): it does not matter how a file
//! changed (written in place, renamed over, swapped behind a `..data`
//! symlink), only whether its bytes did. Whatever was refused is remembered by
//! its content too, so the same bad file is not refused (and counted) again
//! on every look, yet is tried again when the configuration changes.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::Digest;

use crate::config::PluginLimits;
use crate::plugin::{Plugin, Runtime};

/// The refusal record of a plugin file that went away while a pool still
/// needed it (its plugin keeps serving).
pub const GONE: &str = "(removed)";

/// Whether `path` names a plugin file: `*.wasm`, not hidden (editors and copy
/// tools write hidden temporaries first; a ConfigMap volume keeps its real
/// files under hidden `..` names).
pub fn is_plugin_file(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "wasm")
        && path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| !n.starts_with('.'))
}

/// Why a plugin file was not read.
#[derive(Debug)]
#[non_exhaustive]
pub enum ReadError {
    /// Nothing there (or a symlink to nothing).
    Missing,
    /// A FIFO, a device, a socket or a directory: the kind found.
    NotRegular(&'static str),
    /// Larger than `plugins.max_file_mib`.
    TooLarge {
        /// The cap, bytes.
        max_bytes: u64,
    },
    /// Opening or reading failed.
    Io(std::io::Error),
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Missing => write!(f, "it does not exist"),
            ReadError::NotRegular(kind) => write!(
                f,
                "it is not a regular file ({kind}); only regular files are loaded (a symlink to one is fine)"
            ),
            ReadError::TooLarge { max_bytes } => write!(
                f,
                "it is larger than plugins.max_file_mib ({} MiB); raise that setting if the plugin is really this big",
                max_bytes >> 20
            ),
            ReadError::Io(e) => write!(f, "it cannot be read: {e}"),
        }
    }
}

impl std::error::Error for ReadError {}

/// What kind of thing `file_type` is, when it is not a regular file.
fn irregular(file_type: std::fs::FileType) -> Option<&'static str> {
    if file_type.is_file() {
        None
    } else if file_type.is_dir() {
        Some("a directory")
    } else if file_type.is_fifo() {
        Some("a FIFO")
    } else if file_type.is_char_device() {
        Some("a character device")
    } else if file_type.is_block_device() {
        Some("a block device")
    } else if file_type.is_socket() {
        Some("a socket")
    } else {
        Some("not a file")
    }
}

/// Reads a plugin file: regular files only (symlinks followed), at most
/// `max_bytes`. Never blocks on what it finds: the type is checked before
/// opening (opening some devices does something) and again on the opened
/// file (it may have been replaced in between), and the open itself does not
/// wait for a FIFO's writer.
pub fn read_plugin_file(path: &Path, max_bytes: u64) -> Result<Vec<u8>, ReadError> {
    let missing_or = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::NotFound => ReadError::Missing,
        _ => ReadError::Io(e),
    };
    let before = std::fs::metadata(path).map_err(missing_or)?;
    if let Some(kind) = irregular(before.file_type()) {
        return Err(ReadError::NotRegular(kind));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(missing_or)?;
    let opened = file.metadata().map_err(ReadError::Io)?;
    if let Some(kind) = irregular(opened.file_type()) {
        return Err(ReadError::NotRegular(kind));
    }
    if opened.len() > max_bytes {
        return Err(ReadError::TooLarge { max_bytes });
    }
    // The size said is no promise (a file still being written, a /proc-like
    // file system): one byte over the cap is enough to refuse.
    let mut bytes = Vec::with_capacity(opened.len() as usize);
    file.take(max_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(ReadError::Io)?;
    if bytes.len() as u64 > max_bytes {
        return Err(ReadError::TooLarge { max_bytes });
    }
    Ok(bytes)
}

/// Hex SHA-256, as [`Plugin::hash`] gives it.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest: [u8; 32] = sha2::Sha256::digest(bytes).into();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The plugin files in `dir`, sorted; none when it does not exist.
pub fn list(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| is_plugin_file(p))
        .collect();
    paths.sort();
    Ok(paths)
}

/// What a look at one plugin file found.
pub enum Found {
    /// The bytes of the plugin loaded from it.
    Loaded,
    /// What was refused from it before, unchanged.
    Refused,
    /// New bytes that load as a plugin; not yet checked against the others'
    /// names or the pools.
    New(Arc<Plugin>),
    /// Cannot be a plugin. `record` tells this content (or read error) apart
    /// from the next.
    Bad {
        /// Its hash, or the read error.
        record: String,
        /// Why, for the log.
        reason: String,
    },
}

/// What the folder holds now, as it relates to what the proxy knows: what it
/// loaded (`loaded`: path to hash) and what it refused (`refused`: path to
/// record). Files that went away are absent from the result.
pub struct Look<'a> {
    /// The plugin folder.
    pub dir: &'a Path,
    /// Hashes of the folder plugins loaded, by path.
    pub loaded: &'a BTreeMap<PathBuf, String>,
    /// Records of the files refused, by path (empty: try them all again).
    pub refused: &'a BTreeMap<PathBuf, String>,
    /// Compiles new files.
    pub runtime: &'a Runtime,
    /// Limits new plugins are loaded with.
    pub limits: PluginLimits,
    /// `plugins.max_file_mib`, bytes.
    pub max_file_bytes: u64,
}

impl Look<'_> {
    /// Reads every plugin file and compiles the changed ones. Blocking (it
    /// reads and compiles): run it off the control loop. An error means the
    /// folder could not be listed; nothing should change then.
    pub fn run(&self) -> std::io::Result<BTreeMap<PathBuf, Found>> {
        let mut found = BTreeMap::new();
        for path in list(self.dir)? {
            let known = |record: &str| {
                if self.loaded.get(&path).is_some_and(|h| h == record) {
                    Some(Found::Loaded)
                } else if self.refused.get(&path).is_some_and(|r| r == record) {
                    Some(Found::Refused)
                } else {
                    None
                }
            };
            let what = match read_plugin_file(&path, self.max_file_bytes) {
                Err(ReadError::Missing) => continue,
                Err(e) => {
                    let reason = e.to_string();
                    known(&reason).unwrap_or(Found::Bad {
                        record: reason.clone(),
                        reason,
                    })
                }
                Ok(bytes) => {
                    let hash = sha256_hex(&bytes);
                    match known(&hash) {
                        Some(found) => found,
                        None => match self.runtime.load(
                            &path.display().to_string(),
                            &bytes,
                            self.limits,
                        ) {
                            Ok(plugin) => Found::New(Arc::new(plugin.into_folder_plugin())),
                            Err(e) => Found::Bad {
                                record: hash,
                                reason: e.to_string(),
                            },
                        },
                    }
                }
            };
            found.insert(path, what);
        }
        Ok(found)
    }
}

/// A change to the folder plugins, to try.
pub enum Change {
    /// A plugin file appeared or changed: its new plugin.
    Put(PathBuf, Arc<Plugin>),
    /// A plugin file went away.
    Remove(PathBuf),
}

impl Change {
    /// The file it is about.
    pub fn path(&self) -> &Path {
        match self {
            Change::Put(path, _) | Change::Remove(path) => path,
        }
    }

    /// What to remember if it is refused.
    pub fn record(&self) -> String {
        match self {
            Change::Put(_, plugin) => plugin.hash().to_string(),
            Change::Remove(_) => GONE.to_string(),
        }
    }
}

/// A look at the folder turned into what to do.
#[derive(Default)]
pub struct Diff {
    /// Changes to try.
    pub changes: Vec<Change>,
    /// Files that cannot be plugins: path, record, reason.
    pub bad: Vec<(PathBuf, String, String)>,
    /// Files whose refusal no longer holds (back to what is loaded, or gone).
    pub settled: Vec<PathBuf>,
}

impl Diff {
    /// Compares a look with what is loaded and what was refused. With
    /// `retry` (the look did not skip refused files either), a removal
    /// refused before is tried again.
    pub fn new(
        found: BTreeMap<PathBuf, Found>,
        loaded: &BTreeMap<PathBuf, String>,
        refused: &BTreeMap<PathBuf, String>,
        retry: bool,
    ) -> Diff {
        let mut diff = Diff::default();
        for path in loaded.keys().filter(|p| !found.contains_key(*p)) {
            if retry || refused.get(path).is_none_or(|r| r != GONE) {
                diff.changes.push(Change::Remove(path.clone()));
            }
        }
        for path in refused.keys() {
            if !found.contains_key(path) && !loaded.contains_key(path) {
                diff.settled.push(path.clone());
            }
        }
        for (path, what) in found {
            match what {
                Found::Loaded => diff.settled.push(path),
                Found::Refused => {}
                Found::New(plugin) => diff.changes.push(Change::Put(path, plugin)),
                Found::Bad { record, reason } => diff.bad.push((path, record, reason)),
            }
        }
        diff
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);

    impl Dir {
        fn new(label: &str) -> Dir {
            let dir =
                std::env::temp_dir().join(format!("veer-folder-{}-{label}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Dir(dir)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const MIB: u64 = 1 << 20;

    #[test]
    fn a_regular_file_and_a_symlink_to_one_are_read() {
        let dir = Dir::new("regular");
        std::fs::write(dir.0.join("a.wasm"), b"bytes").unwrap();
        std::os::unix::fs::symlink("a.wasm", dir.0.join("b.wasm")).unwrap();
        assert_eq!(
            read_plugin_file(&dir.0.join("a.wasm"), MIB).unwrap(),
            b"bytes"
        );
        assert_eq!(
            read_plugin_file(&dir.0.join("b.wasm"), MIB).unwrap(),
            b"bytes"
        );
    }

    #[test]
    fn a_fifo_is_refused_at_once_without_waiting_for_a_writer() {
        let dir = Dir::new("fifo");
        let fifo = dir.0.join("x.wasm");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        let err = read_plugin_file(&fifo, MIB).unwrap_err();
        assert!(matches!(err, ReadError::NotRegular("a FIFO")), "{err}");
        assert!(err.to_string().contains("only regular files are loaded"));
    }

    #[test]
    fn a_symlink_to_dev_zero_is_refused_as_a_device() {
        let dir = Dir::new("zero");
        std::os::unix::fs::symlink("/dev/zero", dir.0.join("z.wasm")).unwrap();
        let err = read_plugin_file(&dir.0.join("z.wasm"), MIB).unwrap_err();
        assert!(
            matches!(err, ReadError::NotRegular("a character device")),
            "{err}"
        );
    }

    #[test]
    fn a_directory_named_like_a_plugin_is_refused() {
        let dir = Dir::new("dir");
        std::fs::create_dir(dir.0.join("d.wasm")).unwrap();
        let err = read_plugin_file(&dir.0.join("d.wasm"), MIB).unwrap_err();
        assert!(matches!(err, ReadError::NotRegular("a directory")), "{err}");
    }

    #[test]
    fn a_file_over_the_cap_is_refused_by_its_setting() {
        let dir = Dir::new("large");
        let file = std::fs::File::create(dir.0.join("big.wasm")).unwrap();
        file.set_len(2 * MIB + 1).unwrap();
        let err = read_plugin_file(&dir.0.join("big.wasm"), 2 * MIB).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("it is larger than plugins.max_file_mib (2 MiB)"),
            "{err}"
        );
        file.set_len(2 * MIB).unwrap();
        assert_eq!(
            read_plugin_file(&dir.0.join("big.wasm"), 2 * MIB)
                .unwrap()
                .len() as u64,
            2 * MIB
        );
    }

    #[test]
    fn a_missing_file_and_a_dangling_symlink_are_missing() {
        let dir = Dir::new("missing");
        std::os::unix::fs::symlink("..data/x.wasm", dir.0.join("x.wasm")).unwrap();
        assert!(matches!(
            read_plugin_file(&dir.0.join("x.wasm"), MIB),
            Err(ReadError::Missing)
        ));
        assert!(matches!(
            read_plugin_file(&dir.0.join("y.wasm"), MIB),
            Err(ReadError::Missing)
        ));
    }

    #[test]
    fn hidden_names_and_other_extensions_are_not_plugin_files() {
        let dir = Dir::new("list");
        for name in ["b.wasm", "a.wasm", ".incoming.wasm", "..data", "notes.txt"] {
            std::fs::write(dir.0.join(name), b"").unwrap();
        }
        let names: Vec<_> = list(&dir.0)
            .unwrap()
            .into_iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["a.wasm", "b.wasm"]);
        assert!(list(&dir.0.join("absent")).unwrap().is_empty());
    }

    #[test]
    fn a_removal_refused_once_is_tried_again_only_on_a_retry() {
        let path = PathBuf::from("/plugins/x.wasm");
        let loaded = BTreeMap::from([(path.clone(), "hash".to_string())]);
        let refused = BTreeMap::from([(path.clone(), GONE.to_string())]);
        let diff = Diff::new(BTreeMap::new(), &loaded, &refused, false);
        assert!(diff.changes.is_empty());
        let diff = Diff::new(BTreeMap::new(), &loaded, &refused, true);
        assert!(matches!(&diff.changes[..], [Change::Remove(p)] if *p == path));
    }

    #[test]
    fn a_refused_file_that_went_away_is_forgotten() {
        let path = PathBuf::from("/plugins/bad.wasm");
        let refused = BTreeMap::from([(path.clone(), "hash".to_string())]);
        let diff = Diff::new(BTreeMap::new(), &BTreeMap::new(), &refused, false);
        assert_eq!(diff.settled, [path]);
        assert!(diff.changes.is_empty());
    }
}
