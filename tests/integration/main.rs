//! Integration tests: real backends and a real proxy on 127.0.0.1:0, real
//! HTTP/1.1 and HTTP/2 clients. One binary, one module per area.

mod acme;
mod admin;
mod authoring;
mod balancing;
mod binary_upgrade;
mod config;
mod contract;
mod dashboard;
mod deploy;
mod discovery;
mod forwarding;
mod h2_upstream;
mod health;
mod hot_swap;
mod http_rules;
mod import_nginx;
mod limits;
mod nginx_compat;
mod observe;
mod pki;
mod plugin_cache;
mod plugin_failures;
mod plugin_folder;
mod plugin_policy;
mod protocols;
mod resilience;
mod sandbox;
mod shutdown;
mod strategies;
mod streaming;
mod support;
mod tls;
mod upgrade;
mod upstream_h1;
