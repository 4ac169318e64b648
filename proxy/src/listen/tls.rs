//! TLS termination with rustls: certificates chosen by SNI (exact names, then
//! `*.` wildcards, then the default), ALPN `h2` and `http/1.1`, TLS 1.2 and
//! 1.3 with rustls' safe defaults (ring provider), session resumption by
//! rotating tickets and a server-side cache, optional client certificates.
//!
//! Certificates live in a [`CertStore`] that is swapped whole when the files
//! change ([`CertStore::reload`]): handshakes after the swap get the new
//! certificates, established connections keep their session, and a file that
//! does not load leaves the old certificates serving.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{
    ClientHello, ResolvesServerCert, ServerSessionMemoryCache, WebPkiClientVerifier,
};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{ClientAuth, TlsSettings};

/// Sessions the server-side resumption cache keeps (TLS 1.2 session ids and
/// TLS 1.3 stateful resumption; tickets need no server state).
const SESSION_CACHE: usize = 4096;

/// One certificate chain with its key, and the names it serves.
struct Entry {
    key: Arc<CertifiedKey>,
    /// Lowercase DNS names from the certificate (`*.example.com` kept as is).
    names: Vec<String>,
}

/// The certificates in force.
struct Certs {
    entries: Vec<Entry>,
    /// Exact name → index.
    exact: HashMap<String, usize>,
    /// Wildcard parent (`example.com` for `*.example.com`) → index.
    wildcard: HashMap<String, usize>,
}

impl Certs {
    /// Index of the certificate for `name`: exact, then wildcard, then the
    /// default (0).
    fn index_for(&self, name: &str) -> usize {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(&i) = self.exact.get(&name) {
            return i;
        }
        name.split_once('.')
            .and_then(|(_, parent)| self.wildcard.get(parent).copied())
            .unwrap_or(0)
    }
}

/// The certificates of the HTTPS listener, replaceable while serving.
pub struct CertStore {
    current: ArcSwap<Certs>,
    files: Vec<(PathBuf, PathBuf)>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CertStore({} certificates)", self.files.len())
    }
}

impl CertStore {
    /// Loads every (chain, key) pair; an error names the file and the reason.
    pub fn load(files: &[(PathBuf, PathBuf)]) -> Result<CertStore, String> {
        Ok(CertStore {
            current: ArcSwap::from_pointee(load_all(files)?),
            files: files.to_vec(),
        })
    }

    /// Reads the files again and swaps the result in; on error the old
    /// certificates stay and the error is returned.
    pub fn reload(&self) -> Result<(), String> {
        self.current.store(Arc::new(load_all(&self.files)?));
        Ok(())
    }

    /// Whether `a` and `b` are served by the same certificate: a request
    /// whose `Host` would get another certificate than its SNI did is
    /// misdirected (421).
    pub fn same_certificate(&self, a: &str, b: &str) -> bool {
        if a.eq_ignore_ascii_case(b) {
            return true;
        }
        let certs = self.current.load();
        certs.index_for(a) == certs.index_for(b)
    }

    /// The names of every certificate (for logs and `veer check`).
    pub fn names(&self) -> Vec<String> {
        self.current
            .load()
            .entries
            .iter()
            .flat_map(|e| e.names.iter().cloned())
            .collect()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let certs = self.current.load();
        let index = hello.server_name().map_or(0, |name| certs.index_for(name));
        Some(certs.entries[index].key.clone())
    }
}

fn load_all(files: &[(PathBuf, PathBuf)]) -> Result<Certs, String> {
    let provider = rustls::crypto::ring::default_provider();
    let mut certs = Certs {
        entries: Vec::with_capacity(files.len()),
        exact: HashMap::new(),
        wildcard: HashMap::new(),
    };
    for (i, (chain_path, key_path)) in files.iter().enumerate() {
        let chain = load_chain(chain_path)?;
        let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| {
            format!(
                "{}: no usable private key (PEM: PKCS#8, PKCS#1 RSA or SEC1 EC): {e}",
                key_path.display()
            )
        })?;
        let key = CertifiedKey::from_der(chain, key, &provider).map_err(|e| {
            format!(
                "{} and {} do not make a usable certificate: {e}",
                chain_path.display(),
                key_path.display()
            )
        })?;
        let end_entity = webpki::EndEntityCert::try_from(&key.cert[0])
            .map_err(|e| format!("{}: not a usable certificate: {e}", chain_path.display()))?;
        let names: Vec<String> = end_entity
            .valid_dns_names()
            .map(|n| n.to_ascii_lowercase())
            .collect();
        for name in &names {
            match name.strip_prefix("*.") {
                Some(parent) => certs.wildcard.entry(parent.to_string()).or_insert(i),
                None => certs.exact.entry(name.clone()).or_insert(i),
            };
        }
        certs.entries.push(Entry {
            key: Arc::new(key),
            names,
        });
    }
    Ok(certs)
}

/// A PEM chain, leaf first.
pub(crate) fn load_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: not a PEM certificate chain: {e}", path.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate in it", path.display()));
    }
    Ok(chain)
}

/// CA certificates from a PEM file, as roots.
pub(crate) fn load_roots(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in load_chain(path)? {
        roots
            .add(cert)
            .map_err(|e| format!("{}: not a usable CA certificate: {e}", path.display()))?;
    }
    Ok(roots)
}

/// The rustls server configuration of the HTTPS listener.
pub fn server_config(
    settings: &TlsSettings,
    store: Arc<CertStore>,
) -> Result<ServerConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up failed: {e}"))?;
    let builder = match &settings.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let roots = Arc::new(load_roots(ca)?);
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider);
            let verifier = match settings.client_auth {
                ClientAuth::Required => verifier,
                ClientAuth::Optional => verifier.allow_unauthenticated(),
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .map_err(|e| format!("{}: cannot verify clients with it: {e}", ca.display()))?,
            )
        }
    };
    let mut config = builder.with_cert_resolver(store);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.ticketer =
        rustls::crypto::ring::Ticketer::new().map_err(|e| format!("TLS ticketer: {e}"))?;
    config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE);
    Ok(config)
}

/// What a request learns of its TLS connection.
#[derive(Debug)]
pub struct TlsInfo {
    /// The SNI the client sent.
    pub sni: Option<String>,
    /// The verified client certificate's identity, if one was presented.
    pub client: Option<ClientIdentity>,
    /// The listener's certificates (for the SNI/Host check).
    pub certs: Arc<CertStore>,
}

/// A verified client certificate's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The subject distinguished name, RFC 4514 style (`CN=alice,O=Example`).
    pub subject: String,
    /// DNS, email and URI subject alternative names.
    pub sans: Vec<String>,
}

impl ClientIdentity {
    /// Reads the identity of a (verified) client certificate.
    pub fn of(cert: &CertificateDer<'_>) -> Option<ClientIdentity> {
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
        let subject = parsed.subject().to_string();
        let mut sans = Vec::new();
        if let Ok(Some(ext)) = parsed.subject_alternative_name() {
            for name in &ext.value.general_names {
                use x509_parser::extensions::GeneralName;
                match name {
                    GeneralName::DNSName(n) => sans.push(format!("DNS:{n}")),
                    GeneralName::RFC822Name(n) => sans.push(format!("email:{n}")),
                    GeneralName::URI(n) => sans.push(format!("URI:{n}")),
                    _ => {}
                }
            }
        }
        Some(ClientIdentity { subject, sans })
    }
}
