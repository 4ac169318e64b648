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

use crate::config::{Challenge, ClientAuth, TlsSettings};

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

/// The ALPN protocol of ACME's TLS-ALPN-01 challenge (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Answers to ACME challenges in progress, served by the listeners.
#[derive(Default)]
pub struct Challenges {
    /// HTTP-01: token → key authorization.
    pub http: std::sync::Mutex<HashMap<String, String>>,
    /// TLS-ALPN-01: domain → the challenge certificate.
    pub alpn: std::sync::Mutex<HashMap<String, Arc<CertifiedKey>>>,
}

impl std::fmt::Debug for Challenges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Challenges")
    }
}

impl Challenges {
    /// The key authorization for an HTTP-01 token, if one is pending.
    pub fn http_answer(&self, token: &str) -> Option<String> {
        self.http.lock().ok()?.get(token).cloned()
    }
}

/// The certificates of the HTTPS listener, replaceable while serving.
pub struct CertStore {
    current: ArcSwap<Certs>,
    files: Vec<(PathBuf, PathBuf)>,
    /// The ACME-managed certificate: its files, and the names to cover with a
    /// temporary self-signed one until the first is issued.
    acme: Option<(PathBuf, PathBuf, Vec<String>)>,
    /// ACME challenges being answered.
    pub challenges: Arc<Challenges>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CertStore({} certificates)", self.files.len())
    }
}

impl CertStore {
    /// Loads every (chain, key) pair, and the ACME-managed certificate if
    /// `acme` is set (a temporary self-signed one until it is issued); an
    /// error names the file and the reason.
    pub fn load(
        files: &[(PathBuf, PathBuf)],
        acme: Option<(PathBuf, PathBuf, Vec<String>)>,
    ) -> Result<CertStore, String> {
        Ok(CertStore {
            current: ArcSwap::from_pointee(load_all(files, acme.as_ref())?),
            files: files.to_vec(),
            acme,
            challenges: Arc::default(),
        })
    }

    /// Reads the files again and swaps the result in; on error the old
    /// certificates stay and the error is returned.
    pub fn reload(&self) -> Result<(), String> {
        self.current
            .store(Arc::new(load_all(&self.files, self.acme.as_ref())?));
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
        let acme_challenge = hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN));
        if acme_challenge {
            // Only the challenge certificate, and only for a pending name.
            let name = hello.server_name()?.to_ascii_lowercase();
            return self.challenges.alpn.lock().ok()?.get(&name).cloned();
        }
        let certs = self.current.load();
        let index = hello.server_name().map_or(0, |name| certs.index_for(name));
        Some(certs.entries[index].key.clone())
    }
}

fn load_all(
    files: &[(PathBuf, PathBuf)],
    acme: Option<&(PathBuf, PathBuf, Vec<String>)>,
) -> Result<Certs, String> {
    let provider = rustls::crypto::ring::default_provider();
    let mut certs = Certs {
        entries: Vec::with_capacity(files.len() + 1),
        exact: HashMap::new(),
        wildcard: HashMap::new(),
    };
    let mut keys = Vec::with_capacity(files.len() + 1);
    for (chain_path, key_path) in files {
        keys.push(load_pair(chain_path, key_path, &provider)?);
    }
    if let Some((chain_path, key_path, domains)) = acme {
        keys.push(if chain_path.exists() {
            load_pair(chain_path, key_path, &provider)?
        } else {
            placeholder(domains, &provider)?
        });
    }
    for (i, key) in keys.into_iter().enumerate() {
        let end_entity = webpki::EndEntityCert::try_from(&key.cert[0])
            .map_err(|e| format!("certificate {i} is not usable: {e}"))?;
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

/// A chain and its key from PEM files.
fn load_pair(
    chain_path: &Path,
    key_path: &Path,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<CertifiedKey, String> {
    let chain = load_chain(chain_path)?;
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| {
        format!(
            "{}: no usable private key (PEM: PKCS#8, PKCS#1 RSA or SEC1 EC): {e}",
            key_path.display()
        )
    })?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        format!(
            "{} and {} do not make a usable certificate: {e}",
            chain_path.display(),
            key_path.display()
        )
    })
}

/// A self-signed certificate for `domains`, served until ACME issues the real
/// one (so the listener works, and TLS-ALPN-01 can reach it).
fn placeholder(
    domains: &[String],
    provider: &rustls::crypto::CryptoProvider,
) -> Result<CertifiedKey, String> {
    let generated = rcgen::generate_simple_self_signed(domains.to_vec())
        .map_err(|e| format!("could not make a temporary certificate: {e}"))?;
    let key = PrivateKeyDer::try_from(generated.signing_key.serialize_der())
        .map_err(|e| format!("temporary certificate key: {e}"))?;
    CertifiedKey::from_der(vec![generated.cert.der().clone()], key, provider)
        .map_err(|e| format!("temporary certificate: {e}"))
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
    if settings
        .acme
        .as_ref()
        .is_some_and(|a| a.challenge == Challenge::TlsAlpn01)
    {
        config.alpn_protocols.push(ACME_TLS_ALPN.to_vec());
    }
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
