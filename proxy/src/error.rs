//! Typed errors of the library. Each says whose fault it is (the
//! configuration's, a plugin's, the engine's) and what to do about it.
//! This module is a leaf: it depends on no other module of the crate.

/// A configuration that cannot be used. Names the key and the reason.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// The file is not valid TOML, or a value has the wrong type.
    #[error("{key}: {reason}")]
    Invalid {
        /// Dotted key path, e.g. `pools.web.backends[1].weight`.
        key: String,
        /// What is wrong and what is accepted.
        reason: String,
    },
    /// The file could not be read.
    #[error("could not read {path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        reason: String,
    },
}

impl ConfigError {
    /// An error at `key`.
    pub fn at(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            key: key.into(),
            reason: reason.into(),
        }
    }

    /// The key path the error is about, if any.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            ConfigError::Read { .. } => None,
        }
    }
}

/// A plugin that cannot be used, or the Wasm engine failing.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The bytes are not a valid Wasm component.
    #[error("plugin {origin} is not a usable Wasm component: {reason}")]
    Invalid {
        /// Where the plugin came from.
        origin: String,
        /// Why.
        reason: String,
    },
    /// The component does not implement the world this host serves.
    #[error(
        "plugin {origin} does not implement a world this Veer serves ({served}); build it with a veer-sdk for one of them: {reason}"
    )]
    WrongWorld {
        /// Where the plugin came from.
        origin: String,
        /// The worlds this host serves.
        served: &'static str,
        /// What the type check found.
        reason: String,
    },
    /// A call into the plugin trapped or ran out of time.
    #[error("plugin {plugin} failed in `{call}`: {reason}")]
    Trapped {
        /// The plugin's name (or source before it named itself).
        plugin: String,
        /// Which call.
        call: &'static str,
        /// The trap.
        reason: String,
    },
    /// The plugin refused its configuration in `init`.
    #[error("plugin {plugin} refused its configuration: {message}")]
    Refused {
        /// The plugin's name.
        plugin: String,
        /// The plugin's own message.
        message: String,
    },
    /// The Wasm engine could not be set up.
    #[error("the Wasm engine failed: {0:#}")]
    Engine(wasmtime::Error),
}

impl PluginError {
    pub(crate) fn engine(err: wasmtime::Error) -> PluginError {
        PluginError::Engine(err)
    }
}

/// Anything that stops the proxy from starting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration cannot be used.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A plugin or the Wasm engine failed outside any pool's context.
    #[error(transparent)]
    Plugin(#[from] PluginError),
    /// A signal handler could not be installed.
    #[error("could not install a signal handler: {0}")]
    Signal(std::io::Error),
    /// The demo could not be set up.
    #[error("the demo could not start: {0}")]
    Demo(String),
    /// A second SIGTERM or SIGINT stopped Veer before in-flight requests
    /// finished.
    #[error("stopped at once by a second signal; requests still in flight were cut off")]
    Forced,
    /// A zero-downtime upgrade could not take over from the running
    /// process (which keeps serving).
    #[error("could not take over from the process at {}: {reason}", path.display())]
    TakeOver {
        /// The running process's upgrade socket.
        path: std::path::PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The socket that waits for an upgrade (`server.upgrade_socket`) could
    /// not be set up.
    #[error("server.upgrade_socket {}: {reason}", path.display())]
    UpgradeSocket {
        /// The configured path.
        path: std::path::PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The listening socket could not be set up.
    #[error("could not listen on {addr}: {source} (is another process using the port?)")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}
