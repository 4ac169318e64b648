//! `[admin]`: the admin listener (metrics, the admin API, the dashboard).
//!
//! ```toml
//! [admin]
//! listen = "127.0.0.1:9901"   # "" turns it off
//! token = "a long random string"
//! ```

use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;

use crate::error::ConfigError;

/// `[admin]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    /// Address of the admin listener; `""` turns it off. Default
    /// `127.0.0.1:9901` (loopback).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// A bearer token that allows mutations (drain, reload) from anywhere;
    /// without it, mutations are only taken when the listener is on
    /// loopback. At least 16 characters. Default none.
    #[serde(default)]
    pub token: Option<String>,
    /// A file holding the token (trailing whitespace ignored), instead of
    /// `token`. Default none.
    #[serde(default)]
    pub token_file: Option<std::path::PathBuf>,
}

impl Default for AdminSection {
    fn default() -> AdminSection {
        AdminSection {
            listen: default_listen(),
            token: None,
            token_file: None,
        }
    }
}

fn default_listen() -> String {
    "127.0.0.1:9901".into()
}

/// Validated admin settings.
#[derive(Debug, Clone, PartialEq)]
pub struct AdminSettings {
    /// Where to listen; `None`: no admin listener.
    pub listen: Option<SocketAddr>,
    /// The bearer token for mutations, if any.
    pub token: Option<String>,
}

impl AdminSection {
    /// Checks the address and reads the token file.
    pub fn validate(&self, base_dir: &Path) -> Result<AdminSettings, ConfigError> {
        let listen = match self.listen.as_str() {
            "" => None,
            text => Some(text.parse::<SocketAddr>().map_err(|_| {
                ConfigError::at(
                    "admin.listen",
                    format!("{text:?} is not an IP address and port, e.g. \"127.0.0.1:9901\" (\"\" turns the admin listener off)"),
                )
            })?),
        };
        let token = match (&self.token, &self.token_file) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::at(
                    "admin.token_file",
                    "give token or token_file, not both",
                ));
            }
            (Some(token), None) => Some(token.clone()),
            (None, Some(file)) => {
                let path = base_dir.join(file);
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    ConfigError::at("admin.token_file", format!("{}: {e}", path.display()))
                })?;
                Some(text.trim_end().to_string())
            }
            (None, None) => None,
        };
        if let Some(token) = &token
            && (token.len() < 16 || token.chars().any(char::is_whitespace))
        {
            return Err(ConfigError::at(
                if self.token.is_some() {
                    "admin.token"
                } else {
                    "admin.token_file"
                },
                "a token needs at least 16 characters and no whitespace",
            ));
        }
        Ok(AdminSettings { listen, token })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admin(text: &str) -> Result<AdminSettings, ConfigError> {
        toml::from_str::<AdminSection>(text)
            .unwrap()
            .validate(Path::new("."))
    }

    #[test]
    fn by_default_the_admin_listener_is_on_loopback_without_a_token() {
        let a = admin("").unwrap();
        assert_eq!(a.listen, Some("127.0.0.1:9901".parse().unwrap()));
        assert_eq!(a.token, None);
        assert_eq!(admin("listen = \"\"").unwrap().listen, None);
    }

    #[test]
    fn bad_values_name_their_key() {
        let key = |t: &str| admin(t).unwrap_err().key().unwrap().to_string();
        assert_eq!(key("listen = \"localhost\""), "admin.listen");
        assert_eq!(key("token = \"short\""), "admin.token");
        assert_eq!(
            key("token = \"0123456789abcdef\"\ntoken_file = \"x\""),
            "admin.token_file"
        );
        assert_eq!(
            key("token_file = \"/nonexistent/token\""),
            "admin.token_file"
        );
    }
}
