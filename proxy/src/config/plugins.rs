//! `[plugins]`: where plugins come from and the limits every instance runs
//! under.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{bounded_ms, in_range, optional_path};
use crate::error::ConfigError;

/// `[plugins]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginsSection {
    /// Plugin files (`.wasm` components) to load besides the built-ins, relative
    /// to the configuration file. Each is registered under the name it gives
    /// itself. Default none.
    pub load: Vec<PathBuf>,
    /// Whether a loaded file may replace a built-in of the same name.
    /// Default false.
    pub allow_override_builtin: bool,
    /// Deadline of one `select` call, ms; past it the request is served by the
    /// host's round robin. Default 5.
    pub select_timeout_ms: u64,
    /// Deadline of `init` and `set-backends`, ms. Default 1000.
    pub setup_timeout_ms: u64,
    /// Budget of one `select` call, µs: a call that takes longer is served
    /// but counts toward the backoff like a failure, so a plugin that burns
    /// CPU legally is rested and the other pools on its worker recover.
    /// Default 500.
    pub slow_call_us: u64,
    /// Linear memory cap per plugin instance, MiB. Default 16.
    pub memory_limit_mib: u64,
    /// Linear memory of all plugin instances of the process together, MiB:
    /// an instance that would grow past it traps, one that cannot be
    /// created is retried with a backoff (the pool's failure policy serves
    /// meanwhile). Default 1024.
    pub total_memory_mib: u64,
    /// Largest plugin file read, MiB: a larger file (or an endless one, say a
    /// symlink to a device) is refused without being read whole. Default 64.
    pub max_file_mib: u64,
    /// After this many failed calls in a row, an instance is not called again
    /// for a backoff that doubles from 100 ms up to 10 s (the host's round
    /// robin serves meanwhile). Default 3.
    pub failures_before_backoff: u32,
    /// Seed of the `random` import; 0 seeds from the clock. Default 0.
    pub random_seed: u64,
    /// Folder watched for `.wasm` plugins, relative to the configuration file.
    /// A file appearing or changing there is loaded, checked and swapped in
    /// without dropping a request; a file removed returns its pools to what
    /// the configuration names. "" disables the folder. Default `plugins`.
    pub dir: PathBuf,
    /// How long a plugin file (or the configuration file) must stay unchanged
    /// before it is loaded, ms: lets a writer finish. Default 200.
    pub debounce_ms: u64,
    /// Cache of compiled plugins, keyed by content and engine settings, so a
    /// restart does not recompile. "" disables it. Default
    /// `$XDG_CACHE_HOME/veer` or `~/.cache/veer`. It holds native code, so a
    /// folder that belongs to another user, or that group or others may
    /// write, is not used (plugins are then compiled at each start): see
    /// `plugin/cache.rs`.
    pub cache_dir: Option<PathBuf>,
    /// Room the compiled-plugin cache may take, MiB: past it, the least
    /// recently used entries are deleted. Default 256.
    pub cache_max_mib: u64,
}

impl Default for PluginsSection {
    fn default() -> Self {
        PluginsSection {
            load: Vec::new(),
            allow_override_builtin: false,
            select_timeout_ms: 5,
            setup_timeout_ms: 1000,
            slow_call_us: 500,
            memory_limit_mib: 16,
            total_memory_mib: 1024,
            max_file_mib: 64,
            failures_before_backoff: 3,
            random_seed: 0,
            dir: PathBuf::from("plugins"),
            debounce_ms: 200,
            cache_dir: None,
            cache_max_mib: 256,
        }
    }
}

/// Limits applied to every plugin instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PluginLimits {
    /// Deadline of one `select` call.
    pub select_timeout: Duration,
    /// Deadline of `info`, `init` and `set-backends` (they may build tables).
    pub setup_timeout: Duration,
    /// Linear memory cap per instance, in bytes.
    pub memory_bytes: usize,
    /// Linear memory cap of all instances together, in bytes.
    pub total_memory_bytes: usize,
    /// See [`PluginsSection::slow_call_us`].
    pub slow_call: Duration,
}

/// Validated `[plugins]`.
#[derive(Debug, Clone)]
pub struct PluginSettings {
    /// Files to load (absolute, or relative to the working directory).
    pub load: Vec<PathBuf>,
    /// See [`PluginsSection::allow_override_builtin`].
    pub allow_override_builtin: bool,
    /// Limits of every instance.
    pub limits: PluginLimits,
    /// Largest plugin file read, bytes (see [`PluginsSection::max_file_mib`]).
    pub max_file_bytes: u64,
    /// See [`PluginsSection::failures_before_backoff`].
    pub failures_before_backoff: u32,
    /// See [`PluginsSection::random_seed`].
    pub random_seed: u64,
    /// The watched plugin folder (resolved), if any.
    pub dir: Option<PathBuf>,
    /// See [`PluginsSection::debounce_ms`].
    pub debounce: Duration,
    /// The compiled-plugin cache folder (resolved), if any.
    pub cache_dir: Option<PathBuf>,
    /// Room the compiled-plugin cache may take, bytes (see
    /// [`PluginsSection::cache_max_mib`]).
    pub cache_max_bytes: u64,
}

impl PluginsSection {
    /// The per-instance limits these settings give (unchecked: for tools that
    /// take the defaults).
    pub fn limits(&self) -> PluginLimits {
        PluginLimits {
            select_timeout: Duration::from_millis(self.select_timeout_ms),
            setup_timeout: Duration::from_millis(self.setup_timeout_ms),
            memory_bytes: (self.memory_limit_mib as usize) << 20,
            total_memory_bytes: (self.total_memory_mib as usize) << 20,
            slow_call: Duration::from_micros(self.slow_call_us),
        }
    }

    /// Checks the section; relative paths are taken from `base_dir`.
    pub fn validate(&self, base_dir: &Path) -> Result<PluginSettings, ConfigError> {
        bounded_ms(
            "plugins.select_timeout_ms",
            self.select_timeout_ms,
            1,
            10_000,
        )?;
        bounded_ms("plugins.setup_timeout_ms", self.setup_timeout_ms, 1, 60_000)?;
        bounded_ms("plugins.debounce_ms", self.debounce_ms, 0, 60_000)?;
        in_range("plugins.memory_limit_mib", self.memory_limit_mib, 1, 4096)?;
        // Up to 1 TiB, and room for at least one instance.
        in_range(
            "plugins.total_memory_mib",
            self.total_memory_mib,
            self.memory_limit_mib,
            1 << 20,
        )?;
        in_range("plugins.max_file_mib", self.max_file_mib, 1, 4096)?;
        // Up to 1 TiB.
        in_range("plugins.cache_max_mib", self.cache_max_mib, 1, 1 << 20)?;
        in_range(
            "plugins.slow_call_us",
            self.slow_call_us,
            1,
            self.select_timeout_ms.saturating_mul(1000),
        )?;
        Ok(PluginSettings {
            load: self.load.iter().map(|f| base_dir.join(f)).collect(),
            allow_override_builtin: self.allow_override_builtin,
            limits: self.limits(),
            max_file_bytes: self.max_file_mib << 20,
            failures_before_backoff: self.failures_before_backoff.max(1),
            random_seed: self.random_seed,
            dir: optional_path(base_dir, &self.dir),
            debounce: Duration::from_millis(self.debounce_ms),
            cache_dir: match &self.cache_dir {
                Some(dir) => optional_path(base_dir, dir),
                None => default_cache_dir(),
            },
            cache_max_bytes: self.cache_max_mib << 20,
        })
    }
}

/// The default compiled-plugin cache: `$XDG_CACHE_HOME/veer`, else
/// `$HOME/.cache/veer`, else none.
///
/// Under `sudo -E` (root with another user's `$HOME`), this names a folder in
/// that user's home: the cache refuses it (the folder, or a folder above it,
/// belongs to that user, who could plant native code there) and runs without
/// a cache, saying so. Give root a folder of its own with `cache_dir`.
fn default_cache_dir() -> Option<PathBuf> {
    let xdg = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    let home = || {
        std::env::var_os("HOME")
            .filter(|v| !v.is_empty())
            .map(|h| PathBuf::from(h).join(".cache"))
    };
    xdg.or_else(home).map(|dir| dir.join("veer"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(toml_text: &str) -> PluginsSection {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn the_defaults_give_a_5_ms_select_deadline_and_16_mib_of_memory() {
        let s = section("").validate(Path::new(".")).unwrap();
        assert_eq!(s.limits.select_timeout, Duration::from_millis(5));
        assert_eq!(s.limits.memory_bytes, 16 << 20);
        assert_eq!(s.limits.total_memory_bytes, 1 << 30);
        assert_eq!(s.failures_before_backoff, 3);
    }

    #[test]
    fn a_process_memory_cap_without_room_for_one_instance_names_its_key() {
        let err = section("memory_limit_mib = 32\ntotal_memory_mib = 16")
            .validate(Path::new("."))
            .unwrap_err();
        assert_eq!(err.key(), Some("plugins.total_memory_mib"));
    }

    #[test]
    fn a_memory_limit_out_of_range_names_its_key() {
        let err = section("memory_limit_mib = 0")
            .validate(Path::new("."))
            .unwrap_err();
        assert_eq!(err.key(), Some("plugins.memory_limit_mib"));
    }

    #[test]
    fn plugin_files_are_read_up_to_64_mib_unless_max_file_mib_says_otherwise() {
        let s = section("").validate(Path::new(".")).unwrap();
        assert_eq!(s.max_file_bytes, 64 << 20);
        let s = section("max_file_mib = 2")
            .validate(Path::new("."))
            .unwrap();
        assert_eq!(s.max_file_bytes, 2 << 20);
    }

    #[test]
    fn a_max_file_size_of_zero_is_refused_by_its_key() {
        let err = section("max_file_mib = 0")
            .validate(Path::new("."))
            .unwrap_err();
        assert_eq!(err.key(), Some("plugins.max_file_mib"));
    }

    #[test]
    fn an_empty_dir_turns_the_plugin_folder_off() {
        let s = section("dir = \"\"").validate(Path::new(".")).unwrap();
        assert_eq!(s.dir, None);
    }

    #[test]
    fn the_compiled_plugin_cache_takes_up_to_256_mib_unless_cache_max_mib_says_otherwise() {
        let s = section("").validate(Path::new(".")).unwrap();
        assert_eq!(s.cache_max_bytes, 256 << 20);
        let s = section("cache_max_mib = 1")
            .validate(Path::new("."))
            .unwrap();
        assert_eq!(s.cache_max_bytes, 1 << 20);
    }

    #[test]
    fn a_compiled_plugin_cache_cap_of_zero_is_refused_by_its_key() {
        let err = section("cache_max_mib = 0")
            .validate(Path::new("."))
            .unwrap_err();
        assert_eq!(err.key(), Some("plugins.cache_max_mib"));
    }
}
