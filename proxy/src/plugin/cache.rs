//! The compiled-plugin cache: compilations on disk, keyed by the SHA-256 of
//! the component and the engine's settings, so a restart does not recompile.

use std::sync::atomic::Ordering;

use wasmtime::Engine;
use wasmtime::component::Component;

/// Compiled components on disk, keyed by the SHA-256 of the component and the
/// engine's settings. Each entry starts with the SHA-256 of the artifact, which
/// is checked before the artifact is trusted.
pub(super) struct Cache {
    pub(super) dir: std::path::PathBuf,
    /// Hash of the engine settings compiled code depends on.
    pub(super) engine_key: u64,
    pub(super) hits: std::sync::atomic::AtomicU64,
    pub(super) compiles: std::sync::atomic::AtomicU64,
}

const DIGEST: usize = 32;

fn sha256(bytes: &[u8]) -> [u8; DIGEST] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Cache {
    fn path(&self, component: &[u8]) -> std::path::PathBuf {
        self.dir.join(format!(
            "{}-{:016x}.cwasm",
            hex(&sha256(component)),
            self.engine_key
        ))
    }

    /// A cached compilation of `bytes`, if a sound one is there.
    pub(super) fn get(&self, engine: &Engine, bytes: &[u8]) -> Option<Component> {
        let path = self.path(bytes);
        let entry = std::fs::read(&path).ok()?;
        let sound = entry.len() > DIGEST && entry[..DIGEST] == sha256(&entry[DIGEST..]);
        if !sound {
            tracing::warn!(entry = %path.display(), "corrupt compiled-plugin cache entry; recompiling");
            return None;
        }
        // SAFETY: `deserialize` runs machine code from the artifact, so it must
        // be one wasmtime produced. This one is: it was written by `put` below
        // from `precompile_component`, and its SHA-256 was just checked, so it
        // is byte for byte what was written (a truncated or altered file is
        // refused above). wasmtime itself refuses artifacts of another
        // version or settings. The cache folder is the operator's, like the
        // binary.
        #[allow(unsafe_code)]
        let component = unsafe { Component::deserialize(engine, &entry[DIGEST..]) };
        match component {
            Ok(component) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                Some(component)
            }
            Err(e) => {
                tracing::info!(entry = %path.display(), "stale compiled-plugin cache entry ({e}); recompiling");
                None
            }
        }
    }

    /// Stores a compilation, atomically (write aside, then rename).
    pub(super) fn put(&self, bytes: &[u8], artifact: &[u8]) {
        let path = self.path(bytes);
        // Unique per writer: threads of one process may store the same entry.
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = WRITES.fetch_add(1, Ordering::Relaxed);
        let aside = path.with_extension(format!("tmp{}-{n}", std::process::id()));
        let mut entry = Vec::with_capacity(DIGEST + artifact.len());
        entry.extend_from_slice(&sha256(artifact));
        entry.extend_from_slice(artifact);
        let written = std::fs::create_dir_all(&self.dir)
            .and_then(|()| std::fs::write(&aside, &entry))
            .and_then(|()| std::fs::rename(&aside, &path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&aside);
            tracing::warn!(dir = %self.dir.display(), "could not write the compiled-plugin cache: {e}");
        }
    }
}
