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

use super::{bounded_ms, in_range};
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
    /// is the default (no SNI, or no match). Required unless `acme` is set.
    #[serde(default)]
    pub certificates: Vec<CertificateSection>,
    /// Automatic certificates from an ACME CA (Let's Encrypt by default).
    #[serde(default)]
    pub acme: Option<AcmeSection>,
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

/// `[tls.acme]`: certificates obtained and renewed automatically (RFC 8555).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeSection {
    /// The names to get one certificate for (all on it). Required.
    pub domains: Vec<String>,
    /// The ACME directory URL. Default Let's Encrypt's production one.
    #[serde(default = "default_directory")]
    pub directory: String,
    /// Contact URIs for the account, e.g. `["mailto:ops@example.com"]`.
    #[serde(default)]
    pub contact: Vec<String>,
    /// Where the account key and certificates are kept (created 0700; files
    /// 0600; refused if another user owns it or others may write it),
    /// relative to the configuration file. Default `acme`.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// CA certificates (PEM) to trust for the ACME server's own HTTPS
    /// (e.g. a test CA). Default: the usual web roots.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// How the CA checks Veer controls the names: `"http-01"` (answered on
    /// the plain listener, which must be reachable on port 80) or
    /// `"tls-alpn-01"` (answered on the HTTPS listener, port 443).
    /// Default `"http-01"`.
    #[serde(default)]
    pub challenge: Challenge,
    /// Renew when the certificate has fewer days left than this. Default 30.
    #[serde(default = "default_renew_before")]
    pub renew_before_days: u64,
    /// How often the certificate's remaining time is checked, s. Default 3600.
    #[serde(default = "default_check_interval")]
    pub check_interval_s: u64,
}

/// An ACME challenge type Veer answers itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum Challenge {
    /// A token served at `/.well-known/acme-challenge/` on the plain listener.
    #[default]
    #[serde(rename = "http-01")]
    Http01,
    /// A special certificate presented for ALPN `acme-tls/1`.
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
}

fn default_directory() -> String {
    "https://acme-v02.api.letsencrypt.org/directory".into()
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("acme")
}
fn default_renew_before() -> u64 {
    30
}
fn default_check_interval() -> u64 {
    3600
}

/// Validated `[tls.acme]`.
#[derive(Debug, Clone, PartialEq)]
pub struct AcmeSettings {
    /// See [`AcmeSection::domains`] (lowercase).
    pub domains: Vec<String>,
    /// See [`AcmeSection::directory`].
    pub directory: String,
    /// See [`AcmeSection::contact`].
    pub contact: Vec<String>,
    /// See [`AcmeSection::state_dir`] (resolved).
    pub state_dir: PathBuf,
    /// See [`AcmeSection::ca`] (resolved).
    pub ca: Option<PathBuf>,
    /// See [`AcmeSection::challenge`].
    pub challenge: Challenge,
    /// See [`AcmeSection::renew_before_days`].
    pub renew_before: Duration,
    /// See [`AcmeSection::check_interval_s`].
    pub check_interval: Duration,
}

impl AcmeSettings {
    /// The managed certificate chain's file.
    pub fn cert_file(&self) -> PathBuf {
        self.state_dir.join("certificate.pem")
    }

    /// The managed certificate's key file.
    pub fn key_file(&self) -> PathBuf {
        self.state_dir.join("certificate-key.pem")
    }
}

impl AcmeSection {
    fn validate(&self, base_dir: &Path) -> Result<AcmeSettings, ConfigError> {
        if self.domains.is_empty() {
            return Err(ConfigError::at(
                "tls.acme.domains",
                "empty; name at least one domain",
            ));
        }
        for (i, domain) in self.domains.iter().enumerate() {
            let plain = !domain.is_empty()
                && !domain.starts_with('.')
                && domain
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
            if !plain {
                return Err(ConfigError::at(
                    format!("tls.acme.domains[{i}]"),
                    format!(
                        "{domain:?} is not a DNS name (wildcards need DNS-01, which Veer does not answer)"
                    ),
                ));
            }
        }
        if !self.directory.starts_with("https://") {
            return Err(ConfigError::at(
                "tls.acme.directory",
                format!("{:?} is not an https:// URL", self.directory),
            ));
        }
        in_range(
            "tls.acme.renew_before_days",
            self.renew_before_days,
            1,
            3650,
        )?;
        in_range(
            "tls.acme.check_interval_s",
            self.check_interval_s,
            1,
            86_400,
        )?;
        Ok(AcmeSettings {
            domains: self
                .domains
                .iter()
                .map(|d| d.to_ascii_lowercase())
                .collect(),
            directory: self.directory.clone(),
            contact: self.contact.clone(),
            state_dir: base_dir.join(&self.state_dir),
            ca: self.ca.as_ref().map(|p| base_dir.join(p)),
            challenge: self.challenge,
            renew_before: Duration::from_secs(self.renew_before_days * 86_400),
            check_interval: Duration::from_secs(self.check_interval_s),
        })
    }
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
    /// See [`TlsSection::acme`].
    pub acme: Option<AcmeSettings>,
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
        if self.certificates.is_empty() && self.acme.is_none() {
            return Err(ConfigError::at(
                "tls.certificates",
                "empty; an HTTPS listener needs at least one { cert = \"…\", key = \"…\" }, or [tls.acme]",
            ));
        }
        let acme = self
            .acme
            .as_ref()
            .map(|a| a.validate(base_dir))
            .transpose()?;
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
            acme,
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
