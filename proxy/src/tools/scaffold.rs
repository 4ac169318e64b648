//! `veer plugin new NAME`: a plugin crate that builds anywhere with
//! `cargo build --release` alone, with a strategy skeleton, a native unit
//! test on `FakeHost`, and a README saying what to do next.

use std::path::{Path, PathBuf};

/// Where the crate's `veer-sdk` comes from.
#[derive(Debug, Clone)]
pub enum Sdk {
    /// A local checkout's `sdk/` folder.
    Path(PathBuf),
    /// A git repository holding the Veer workspace.
    Git(String),
}

/// The toolchain Veer was built with: what the new crate pins, so it builds
/// with a compiler this SDK is known to build with.
const TOOLCHAIN: &str = env!("VEER_RUSTC_VERSION");
/// The machine Veer was built for: native unit tests run there.
const HOST: &str = env!("VEER_HOST_TARGET");

/// Makes crate `name` (lowercase letters, digits and `-`) in `parent`.
/// Returns its folder. Refuses to touch an existing one.
pub fn scaffold(name: &str, parent: &Path, sdk: &Sdk) -> Result<PathBuf, String> {
    let valid = !name.is_empty()
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        return Err(format!(
            "{name:?} is not usable as a strategy name: lowercase letters, digits and `-`, starting with a letter"
        ));
    }
    let dir = parent.join(name);
    if dir.exists() {
        return Err(format!(
            "{} exists already; pick another name or folder",
            dir.display()
        ));
    }
    let dependency = match sdk {
        Sdk::Path(path) => {
            let path =
                std::path::absolute(path).map_err(|e| format!("--sdk {}: {e}", path.display()))?;
            if !path.join("Cargo.toml").is_file() {
                return Err(format!(
                    "--sdk {}: no Cargo.toml there; give the `sdk` folder of a Veer checkout",
                    path.display()
                ));
            }
            format!("{{ path = {:?} }}", path.display().to_string())
        }
        Sdk::Git(url) => format!("{{ git = {url:?} }}"),
    };
    let type_name: String = name
        .split('-')
        .map(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect();
    let files = [
        ("Cargo.toml", cargo_toml(name, &dependency)),
        ("rust-toolchain.toml", rust_toolchain()),
        (".cargo/config.toml", cargo_config()),
        ("src/lib.rs", lib_rs(name, &type_name)),
        ("README.md", readme(name)),
        (".gitignore", "/target\n".to_string()),
    ];
    for (file, text) in files {
        let path = dir.join(file);
        std::fs::create_dir_all(path.parent().expect("a file in a folder"))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(dir)
}

fn cargo_toml(name: &str, dependency: &str) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"

[lib]
# cdylib: the plugin; rlib: so `cargo unit` can link the unit tests.
crate-type = ["cdylib", "rlib"]

[dependencies]
veer-sdk = {dependency}

# Small plugins: about 100 KB instead of about 200 KB.
[profile.release]
opt-level = "s"
lto = true
codegen-units = 1
strip = true
panic = "abort"

# A crate of its own, even inside another workspace.
[workspace]
"#
    )
}

fn rust_toolchain() -> String {
    format!(
        r#"# The compiler Veer was built with, and the plugin target (rustup installs
# both on first use).
[toolchain]
channel = "{TOOLCHAIN}"
targets = ["wasm32-wasip2"]
"#
    )
}

fn cargo_config() -> String {
    format!(
        r#"# `cargo build --release` builds the plugin.
[build]
target = "wasm32-wasip2"

# `cargo unit` runs the unit tests natively, on this machine.
[alias]
unit = "test --target {HOST}"
"#
    )
}

fn lib_rs(name: &str, type_name: &str) -> String {
    format!(
        r#"//! `{name}`: a Veer load-balancing strategy.
//!
//! It sends requests with an `x-prefer` header naming a backend's `zone`
//! label to that zone's backends first, in turn; the others follow, and
//! every other request goes round the pool in turn. Change `select` to your
//! algorithm.
use veer_sdk::{{
    Backend, BackendId, Candidates, Config, Rejection, Request, Strategy, export_strategy,
}};

/// The pool's backends and whose turn it is.
#[derive(Debug, Default)]
pub struct {type_name} {{
    backends: Vec<(BackendId, Option<String>)>,
    turn: usize,
}}

impl Strategy for {type_name} {{
    const NAME: &'static str = "{name}";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn new(config: Config) -> Result<Self, String> {{
        // `config.parse::<MySettings>()?` reads a `strategy_config` table.
        config.expect_empty()?;
        Ok(Self::default())
    }}

    fn set_backends(&mut self, backends: &[Backend]) {{
        self.backends = backends
            .iter()
            .map(|b| (b.id, b.label("zone").map(str::to_string)))
            .collect();
    }}

    fn select(&mut self, request: &Request<'_>, out: &mut Candidates) -> Result<(), Rejection> {{
        self.turn = self.turn.wrapping_add(1);
        if let Some(zone) = request.header("x-prefer") {{
            // The preferred zone's backends first, in turn.
            let here = |b: &&(BackendId, Option<String>)| b.1.as_deref() == Some(zone.as_str());
            let count = self.backends.iter().filter(here).count();
            if count > 0 {{
                let zoned = self.backends.iter().filter(here).map(|b| b.0);
                let start = self.turn % count;
                out.extend(zoned.clone().skip(start).chain(zoned.take(start)));
            }}
        }}
        // Then the whole pool in turn.
        let n = self.backends.len();
        for i in 0..n {{
            let id = self.backends[(self.turn + i) % n].0;
            if !out.contains(id) {{
                out.push(id);
            }}
        }}
        Ok(())
    }}
}}

export_strategy!({type_name});

#[cfg(test)]
mod tests {{
    use super::*;
    use veer_sdk::testing::{{FakeHost, FakeRequest}};

    fn strategy() -> {type_name} {{
        let mut s = {type_name}::new(Config::new("{{}}")).unwrap();
        s.set_backends(&[
            Backend::new(0, "10.0.0.1:80").with_label("zone", "a"),
            Backend::new(1, "10.0.0.2:80").with_label("zone", "b"),
            Backend::new(2, "10.0.0.3:80").with_label("zone", "b"),
        ]);
        s
    }}

    #[test]
    fn requests_go_round_the_pool_in_turn() {{
        let mut host = FakeHost::new();
        let mut s = strategy();
        let firsts: Vec<u32> = (0..3)
            .map(|_| host.select(&mut s, &FakeRequest::get("/")).unwrap()[0])
            .collect();
        assert_eq!(firsts, [1, 2, 0]);
    }}

    #[test]
    fn a_preferred_zone_goes_first_and_the_rest_follow() {{
        let mut host = FakeHost::new();
        let mut s = strategy();
        let request = FakeRequest::get("/").header("x-prefer", "b");
        assert_eq!(host.select(&mut s, &request), Ok(vec![2, 1, 0]));
        assert_eq!(host.select(&mut s, &request), Ok(vec![1, 2, 0]));
    }}
}}
"#
    )
}

fn readme(name: &str) -> String {
    let file = name.replace('-', "_");
    format!(
        r#"# {name}

A Veer load-balancing strategy.

```sh
cargo build --release      # → target/wasm32-wasip2/release/{file}.wasm
cargo unit                 # unit tests, natively, with veer_sdk::testing::FakeHost
veer plugin check target/wasm32-wasip2/release/{file}.wasm
veer plugin simulate target/wasm32-wasip2/release/{file}.wasm --backends 4 --requests 10000 --header x-prefer=a:20,-:80
```

Then drop the `.wasm` into Veer's plugin folder (or name it in
`[plugins] load`) and use it in a pool:

```toml
[pools.web]
strategy = "{name}"
backends = ["10.0.0.1:8080", "10.0.0.2:8080"]
```

`src/lib.rs` says what it does now; the Veer README's "Writing a strategy"
says what a strategy can use.
"#
    )
}
