//! Offline tools. For plugin authors, behind `veer plugin …`: `simulate`
//! runs a plugin against synthetic traffic under the real host; `scaffold`
//! makes a new plugin crate. For operators, `import_nginx` (`veer import
//! nginx`) writes a `veer.toml` from an NGINX configuration.

pub mod import_nginx;
pub mod scaffold;
pub mod simulate;
