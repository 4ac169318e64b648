//! The control plane: what changes while Veer runs. [`registry`] knows the
//! plugins by name and builds the run-time state from a configuration;
//! [`folder`] reads the plugin folder safely and tells what changed in it;
//! [`reload`] watches the plugin folder and the configuration file and swaps
//! new state in; [`health`] runs active health checks; [`acme`] obtains
//! certificates; [`admin`] serves metrics, the admin API and the dashboard. Nothing here is on the request path.

pub mod acme;
pub mod admin;
pub mod discovery;
pub mod folder;
pub mod health;
pub mod registry;
pub mod reload;
