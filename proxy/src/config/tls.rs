//! `[tls]`: the HTTPS listener: certificates chosen by SNI, client
//! certificates (mTLS), the handshake timer. The plain listener's redirect to
//! HTTPS is `server.redirect_to_https`.
//!
//! ```toml
//! [tls]
//! listen = "0.0.0.0:8443"
//! certificates = [
//!   { cert = "certs/example.pem", key = "certs/example-key.pem" },
//!   { cert = "certs/wildcard.pem", key = "certs/wildcard-key.pem" },
//! ]
//! client_ca = "certs/clients-ca.pem"   # optional: verify client certificates
//! client_auth = "required"             # or "optional"
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::bounded_ms;
use crate::error::ConfigError;

/// `[tls]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// Address of the HTTPS listener. Required.
    pub listen: String,
    /// Certificate chains and their keys (PEM: PKCS#8, PKCS#1 RSA or SEC1
    /// EC keys), relative to the configuration file. A client's SNI picks the
    /// certificate whose names (SANs, wildcards included) match it; the first
    /// is the default (no SNI, or no match). Required, not empty.
    pub certificates: Vec<CertificateSection>,
    /// Time a client has to complete the TLS handshake, ms. Default 10000.
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout_ms: u64,
    /// CA certificates (PEM) that client certificates must chain to. When
    /// set, clients are asked for a certificate. Default none.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: `"required"` refuses a handshake without a valid
    /// client certificate, `"optional"` lets it through (an invalid one is
    /// still refused). Default `"required"`.
    #[serde(default)]
    pub client_auth: ClientAuth,
}

/// One certificate chain and its key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateSection {
    /// The chain, leaf first (PEM).
    pub cert: PathBuf,
    /// The private key (PEM).
    pub key: PathBuf,
}

/// Whether a client certificate is required.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// No certificate, no handshake.
    #[default]
    Required,
    /// A client may present none.
    Optional,
}

fn default_handshake_timeout() -> u64 {
    10_000
}

/// Validated `[tls]`: paths resolved; the files are read when the listener
/// starts (and again when they change).
#[derive(Debug, Clone, PartialEq)]
pub struct TlsSettings {
    /// Where the HTTPS listener listens.
    pub listen: SocketAddr,
    /// (chain, key) paths, the default first.
    pub certificates: Vec<(PathBuf, PathBuf)>,
    /// See [`TlsSection::handshake_timeout_ms`].
    pub handshake_timeout: Duration,
    /// See [`TlsSection::client_ca`].
    pub client_ca: Option<PathBuf>,
    /// See [`TlsSection::client_auth`].
    pub client_auth: ClientAuth,
}

impl TlsSection {
    /// Checks the section; relative paths are taken from `base_dir`.
    pub fn validate(&self, base_dir: &Path) -> Result<TlsSettings, ConfigError> {
        let listen = self.listen.parse().map_err(|_| {
            ConfigError::at(
                "tls.listen",
                format!(
                    "{:?} is not an ip:port address, e.g. \"0.0.0.0:8443\"",
                    self.listen
                ),
            )
        })?;
        if self.certificates.is_empty() {
            return Err(ConfigError::at(
                "tls.certificates",
                "empty; an HTTPS listener needs at least one { cert = \"…\", key = \"…\" }",
            ));
        }
        let certificates = self
            .certificates
            .iter()
            .map(|c| (base_dir.join(&c.cert), base_dir.join(&c.key)))
            .collect();
        Ok(TlsSettings {
            listen,
            certificates,
            handshake_timeout: bounded_ms(
                "tls.handshake_timeout_ms",
                self.handshake_timeout_ms,
                1,
                600_000,
            )?,
            client_ca: self.client_ca.as_ref().map(|p| base_dir.join(p)),
            client_auth: self.client_auth,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(toml_text: &str) -> TlsSection {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn paths_are_taken_from_the_configuration_folder() {
        let s = section(
            "listen = \"127.0.0.1:8443\"\ncertificates = [{ cert = \"a.pem\", key = \"a.key\" }]",
        )
        .validate(Path::new("/etc/veer"))
        .unwrap();
        assert_eq!(s.certificates[0].0, Path::new("/etc/veer/a.pem"));
        assert_eq!(s.handshake_timeout, Duration::from_secs(10));
        assert_eq!(s.client_auth, ClientAuth::Required);
    }

    #[test]
    fn a_listener_without_certificates_names_the_key() {
        let err = section("listen = \"127.0.0.1:8443\"\ncertificates = []")
            .validate(Path::new("."))
            .unwrap_err();
        assert_eq!(err.key(), Some("tls.certificates"));
    }
}
