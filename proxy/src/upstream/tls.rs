//! HTTPS to backends: a rustls client per pool that verifies each backend's
//! certificate against the system's roots (or a configured CA bundle) under
//! the name it is reached by, optionally presenting a client certificate.
//! ALPN offers `http/1.1`, or `h2` for a pool with `protocol = "h2"`.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivateKeyDer, ServerName};
use tokio_rustls::TlsConnector;

use crate::config::{BackendConfig, Protocol, UpstreamTls};
use crate::listen::tls::{load_chain, load_roots};

/// A pool's TLS client and the name each backend is verified under.
pub struct TlsClient {
    pub(super) connector: TlsConnector,
    /// By backend id: the SNI / verified name, and a key that keeps pooled
    /// connections of different names apart.
    names: Vec<(ServerName<'static>, u64)>,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TlsClient({} backends)", self.names.len())
    }
}

impl TlsClient {
    /// Builds the client for a pool; an error says which file or name is
    /// wrong.
    pub fn new(
        tls: &UpstreamTls,
        backends: &[BackendConfig],
        protocol: Protocol,
    ) -> Result<TlsClient, String> {
        let roots = match &tls.ca {
            Some(ca) => load_roots(ca)?,
            None => {
                let found = rustls_native_certs::load_native_certs();
                let mut roots = RootCertStore::empty();
                let (added, _) = roots.add_parsable_certificates(found.certs);
                if added == 0 {
                    return Err(
                        "no system root certificates were found; set tls.ca to a CA bundle".into(),
                    );
                }
                roots
            }
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS set-up failed: {e}"))?
            .with_root_certificates(roots);
        let mut config = match &tls.client_cert {
            None => builder.with_no_client_auth(),
            Some((chain, key)) => {
                let chain = load_chain(chain)?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| format!("{}: no usable private key: {e}", key.display()))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("the client certificate is not usable: {e}"))?
            }
        };
        config.alpn_protocols = match protocol {
            Protocol::H2 => vec![b"h2".to_vec()],
            _ => vec![b"http/1.1".to_vec()],
        };
        let names = backends
            .iter()
            .map(|b| {
                let name = tls
                    .server_name
                    .clone()
                    .unwrap_or_else(|| host_of(&b.address));
                let server_name = ServerName::try_from(name.clone())
                    .map_err(|_| format!("{name:?} is not a valid TLS server name"))?;
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                name.hash(&mut hasher);
                Ok((server_name, hasher.finish() | 1))
            })
            .collect::<Result<_, String>>()?;
        Ok(TlsClient {
            connector: TlsConnector::from(Arc::new(config)),
            names,
        })
    }

    /// The name backend `id` is verified under, and its pool key.
    pub fn name(&self, id: usize) -> (&ServerName<'static>, u64) {
        let (name, key) = &self.names[id];
        (name, *key)
    }
}

/// The host of `host:port` (brackets of an IPv6 literal removed).
fn host_of(address: &str) -> String {
    if let Some(v6) = address.strip_prefix('[') {
        return v6.split_once(']').map_or(v6, |(ip, _)| ip).to_string();
    }
    address
        .rsplit_once(':')
        .map_or(address, |(host, _)| host)
        .to_string()
}
