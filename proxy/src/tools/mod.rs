//! Tools for plugin authors, behind `veer plugin …`: `simulate` runs a
//! plugin against synthetic traffic under the real host; `scaffold` makes a
//! new plugin crate.

pub mod import_nginx;
pub mod scaffold;
pub mod simulate;
