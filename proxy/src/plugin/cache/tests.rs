//! The cache's tests: entries written and read back, and everything it
//! must refuse.

use super::*;
use std::os::unix::fs::PermissionsExt;

/// A folder under the system's temporary folder, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("veer-cache-test-{}", hex(&random::<8>().unwrap())));
        std::fs::create_dir(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const MIB: u64 = 1 << 20;

fn cache_in(dir: &Path, max_bytes: u64) -> Cache {
    Cache::try_open(dir.to_path_buf(), 7, max_bytes).unwrap()
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn running_as_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Gives `path` to the user `nobody` (uid 65534); needs root.
fn give_away(path: &Path) {
    std::os::unix::fs::lchown(path, Some(65534), Some(65534)).unwrap();
}

/// The smallest component: the header alone.
const EMPTY_COMPONENT: &[u8] = b"\0asm\x0d\x00\x01\x00";

#[test]
fn an_entry_written_by_put_is_read_back_by_get() {
    let scratch = Scratch::new();
    let engine = Engine::default();
    let cache = cache_in(&scratch.0, MIB);
    assert!(cache.get(&engine, EMPTY_COMPONENT).is_none());
    let artifact = engine.precompile_component(EMPTY_COMPONENT).unwrap();
    cache.put(EMPTY_COMPONENT, &artifact);
    assert!(cache.get(&engine, EMPTY_COMPONENT).is_some());
    assert_eq!(cache.hits.load(Ordering::Relaxed), 1);
    // A restart (a new cache on the same folder) finds it too.
    let restarted = cache_in(&scratch.0, MIB);
    assert!(restarted.get(&engine, EMPTY_COMPONENT).is_some());
}

#[test]
fn entries_and_the_key_are_private_and_the_key_is_kept_across_restarts() {
    let scratch = Scratch::new();
    let dir = scratch.0.join("made");
    let cache = cache_in(&dir, MIB);
    cache.put(b"component", b"artifact");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join(KEY_FILE)), 0o600);
    assert_eq!(mode(&dir.join(cache.name(b"component"))), 0o600);
    assert_eq!(std::fs::read(dir.join(KEY_FILE)).unwrap().len(), KEY_LEN);
    let restarted = cache_in(&dir, MIB);
    assert_eq!(restarted.key, cache.key);
    assert_eq!(
        restarted.read(&cache.name(b"component")),
        Ok(Some(b"artifact".to_vec()))
    );
}

#[test]
fn entry_names_depend_on_the_key_so_they_cannot_be_guessed() {
    let (one, two) = (Scratch::new(), Scratch::new());
    let (a, b) = (cache_in(&one.0, MIB), cache_in(&two.0, MIB));
    assert_ne!(a.name(b"component"), b.name(b"component"));
    assert_ne!(a.name(b"component"), a.name(b"another"));
}

#[test]
fn an_artifact_with_a_byte_flipped_is_refused() {
    let scratch = Scratch::new();
    let engine = Engine::default();
    let cache = cache_in(&scratch.0, MIB);
    let artifact = engine.precompile_component(EMPTY_COMPONENT).unwrap();
    cache.put(EMPTY_COMPONENT, &artifact);
    let path = scratch.0.join(cache.name(EMPTY_COMPONENT));
    let mut stored = std::fs::read(&path).unwrap();
    let middle = TAG_LEN + artifact.len() / 2;
    stored[middle] ^= 0x01;
    std::fs::write(&path, &stored).unwrap();
    let refused = cache.read(&cache.name(EMPTY_COMPONENT)).unwrap_err();
    assert!(refused.contains("does not verify"), "{refused}");
    assert!(cache.get(&engine, EMPTY_COMPONENT).is_none());
    assert_eq!(cache.hits.load(Ordering::Relaxed), 0);
}

#[test]
fn a_valid_entry_of_another_component_put_in_the_place_of_one_is_refused() {
    let scratch = Scratch::new();
    let cache = cache_in(&scratch.0, MIB);
    cache.put(b"one", b"the artifact of one");
    cache.put(b"two", b"the artifact of two");
    let (one, two) = (cache.name(b"one"), cache.name(b"two"));
    std::fs::copy(scratch.0.join(&two), scratch.0.join(&one)).unwrap();
    let refused = cache.read(&one).unwrap_err();
    assert!(refused.contains("does not verify"), "{refused}");
    assert_eq!(cache.read(&two), Ok(Some(b"the artifact of two".to_vec())));
}

#[test]
fn an_entry_made_by_another_install_is_refused() {
    let (ours, theirs) = (Scratch::new(), Scratch::new());
    let (cache, other) = (cache_in(&ours.0, MIB), cache_in(&theirs.0, MIB));
    // Even under the name our key gives it.
    let name = cache.name(b"component");
    other.write(&name, b"their artifact").unwrap();
    std::fs::copy(theirs.0.join(&name), ours.0.join(&name)).unwrap();
    assert!(cache.read(&name).is_err());
}

#[test]
fn a_group_writable_entry_is_refused_and_replaced_when_recompiled() {
    let scratch = Scratch::new();
    let cache = cache_in(&scratch.0, MIB);
    cache.put(b"component", b"artifact");
    let path = scratch.0.join(cache.name(b"component"));
    chmod(&path, 0o664);
    let refused = cache.read(&cache.name(b"component")).unwrap_err();
    assert!(refused.contains("group or others may write"), "{refused}");
    // What `Runtime::compile` does after a refusal.
    cache.put(b"component", b"artifact");
    assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
    assert_eq!(
        cache.read(&cache.name(b"component")),
        Ok(Some(b"artifact".to_vec()))
    );
}

#[test]
fn an_entry_owned_by_another_user_is_refused_and_replaced() {
    if !running_as_root() {
        eprintln!("skipped: only root can give a file to another user");
        return;
    }
    let scratch = Scratch::new();
    let cache = cache_in(&scratch.0, MIB);
    cache.put(b"component", b"artifact");
    let path = scratch.0.join(cache.name(b"component"));
    give_away(&path);
    let refused = cache.read(&cache.name(b"component")).unwrap_err();
    assert!(refused.contains("belongs to uid 65534"), "{refused}");
    cache.put(b"component", b"artifact");
    assert_eq!(std::fs::metadata(&path).unwrap().uid(), cache.euid);
    assert!(cache.read(&cache.name(b"component")).is_ok());
}

#[test]
fn a_symlinked_entry_is_refused_and_replaced() {
    let scratch = Scratch::new();
    let cache = cache_in(&scratch.0, MIB);
    cache.put(b"component", b"artifact");
    let name = cache.name(b"component");
    let elsewhere = scratch.0.join("elsewhere");
    std::fs::rename(scratch.0.join(&name), &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, scratch.0.join(&name)).unwrap();
    let refused = cache.read(&name).unwrap_err();
    assert!(refused.contains("symlink"), "{refused}");
    cache.put(b"component", b"artifact");
    let replaced = std::fs::symlink_metadata(scratch.0.join(&name)).unwrap();
    assert!(replaced.is_file());
    assert!(cache.read(&name).is_ok());
}

#[test]
fn a_group_writable_folder_turns_the_cache_off() {
    let scratch = Scratch::new();
    let dir = scratch.0.join("cache");
    std::fs::create_dir(&dir).unwrap();
    chmod(&dir, 0o775);
    let refused = Cache::try_open(dir.clone(), 7, MIB).err().unwrap();
    assert!(refused.contains("group or others may write"), "{refused}");
    assert!(refused.contains("chmod 700"), "{refused}");
    assert!(Cache::open(dir, 7, MIB).is_none());
}

#[test]
fn a_folder_made_group_writable_while_running_is_no_longer_used() {
    let scratch = Scratch::new();
    let cache = cache_in(&scratch.0, MIB);
    cache.put(b"component", b"artifact");
    chmod(&scratch.0, 0o777);
    assert!(!cache.usable());
}

#[test]
fn a_symlinked_folder_turns_the_cache_off() {
    let scratch = Scratch::new();
    let real = scratch.0.join("real");
    std::fs::create_dir(&real).unwrap();
    let link = scratch.0.join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let refused = Cache::try_open(link, 7, MIB).err().unwrap();
    assert!(refused.contains("symlink"), "{refused}");
}

#[test]
fn a_folder_of_another_user_or_inside_one_turns_the_cache_off() {
    if !running_as_root() {
        eprintln!("skipped: only root can give a folder to another user");
        return;
    }
    let scratch = Scratch::new();
    // Their folder: `sudo -E` with their $HOME, the cache already there.
    let theirs = scratch.0.join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    give_away(&theirs);
    let refused = Cache::try_open(theirs.clone(), 7, MIB).err().unwrap();
    assert!(refused.contains("belongs to uid 65534"), "{refused}");
    // Not there yet, inside their home: refused before anything is made.
    let home = scratch.0.join("home");
    std::fs::create_dir(&home).unwrap();
    give_away(&home);
    let inside = home.join(".cache").join("veer");
    let refused = Cache::try_open(inside, 7, MIB).err().unwrap();
    assert!(refused.contains("belongs to uid 65534"), "{refused}");
    assert!(refused.contains("sudo -E"), "{refused}");
    assert!(!home.join(".cache").exists());
}

#[test]
fn a_key_others_may_read_turns_the_cache_off() {
    let scratch = Scratch::new();
    drop(cache_in(&scratch.0, MIB));
    chmod(&scratch.0.join(KEY_FILE), 0o644);
    let refused = Cache::try_open(scratch.0.clone(), 7, MIB).err().unwrap();
    assert!(refused.contains("group or others may use it"), "{refused}");
    assert!(refused.contains("delete it"), "{refused}");
}

#[test]
fn a_symlinked_key_turns_the_cache_off() {
    let scratch = Scratch::new();
    let elsewhere = scratch.0.join("elsewhere");
    std::fs::write(&elsewhere, [0u8; KEY_LEN]).unwrap();
    chmod(&elsewhere, 0o600);
    std::os::unix::fs::symlink(&elsewhere, scratch.0.join(KEY_FILE)).unwrap();
    let refused = Cache::try_open(scratch.0.clone(), 7, MIB).err().unwrap();
    assert!(refused.contains("symlink"), "{refused}");
}

/// Sets the last-used time of `path` to `ago` before now.
fn used_ago(path: &Path, ago: Duration) {
    let file = File::options().write(true).open(path).unwrap();
    file.set_modified(SystemTime::now() - ago).unwrap();
}

#[test]
fn past_the_size_cap_the_least_recently_used_entries_are_evicted() {
    let scratch = Scratch::new();
    let artifact = [0u8; 1000];
    let entry = (TAG_LEN + artifact.len()) as u64;
    let cache = cache_in(&scratch.0, 3 * entry);
    for (i, component) in [b"a", b"b", b"c"].into_iter().enumerate() {
        cache.put(component, &artifact);
        let age = Duration::from_secs(100 - i as u64);
        used_ago(&scratch.0.join(cache.name(component)), age);
    }
    // `a` is used: now the most recently used.
    assert!(cache.read(&cache.name(b"a")).unwrap().is_some());
    cache.put(b"d", &artifact);
    let present = |c: &[u8]| scratch.0.join(cache.name(c)).exists();
    assert!(!present(b"b"), "the least recently used is evicted");
    assert!(present(b"a") && present(b"c") && present(b"d"));
    assert!(scratch.0.join(KEY_FILE).exists());
}

#[test]
fn the_entry_just_written_is_kept_even_if_alone_it_exceeds_the_cap() {
    let scratch = Scratch::new();
    let cache = cache_in(&scratch.0, 10);
    cache.put(b"a", &[0u8; 100]);
    assert!(scratch.0.join(cache.name(b"a")).exists());
    cache.put(b"b", &[0u8; 100]);
    assert!(!scratch.0.join(cache.name(b"a")).exists());
    assert!(scratch.0.join(cache.name(b"b")).exists());
}

#[test]
fn temporary_files_older_than_an_hour_are_removed() {
    let scratch = Scratch::new();
    let cache = cache_in(&scratch.0, MIB);
    let (stale, fresh) = (scratch.0.join("tmp-stale"), scratch.0.join("tmp-fresh"));
    std::fs::write(&stale, b"left by a writer that died").unwrap();
    std::fs::write(&fresh, b"being written").unwrap();
    used_ago(&stale, Duration::from_secs(2 * 3600));
    cache.put(b"component", b"artifact");
    assert!(!stale.exists());
    assert!(fresh.exists());
}
