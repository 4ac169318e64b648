//! Automatic certificates (ACME, RFC 8555) with instant-acme: an account and
//! a certificate kept in a state folder, renewed ahead of expiry, the
//! challenge answered by Veer itself (HTTP-01 on the plain listener,
//! TLS-ALPN-01 on the HTTPS one), and the new certificate swapped in live.
//!
//! One task per process. It checks the certificate every
//! `check_interval_s`; when there is none, or it has less than
//! `renew_before_days` left, it orders one. A failed order is retried after a
//! jittered backoff (30 s doubling to 1 h, ±25%), and the certificate in
//! force keeps serving meanwhile.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use tokio_util::sync::CancellationToken;

use crate::config::{AcmeSettings, Challenge};
use crate::listen::tls::CertStore;
use crate::metrics::Metrics;

const BACKOFF_MIN: Duration = Duration::from_secs(30);
const BACKOFF_MAX: Duration = Duration::from_secs(3600);

/// Creates the state folder (0700) if needed, and refuses one that another
/// user owns or that group or others may write: it holds the account key.
pub fn prepare_state_dir(dir: &Path) -> Result<(), String> {
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("{}: could not create it: {e}", dir.display()))?;
    }
    let meta = std::fs::symlink_metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if !meta.is_dir() {
        return Err(format!(
            "{} is not a folder (a symlink is not accepted)",
            dir.display()
        ));
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(format!(
            "{} belongs to uid {}, not to this user (uid {me}); it holds the ACME account key",
            dir.display(),
            meta.uid()
        ));
    }
    if meta.permissions().mode() & 0o022 != 0 {
        return Err(format!(
            "{} may be written by group or others (mode {:o}); chmod 700 it",
            dir.display(),
            meta.permissions().mode() & 0o777
        ));
    }
    Ok(())
}

/// Keeps the managed certificate valid until `cancel`.
pub async fn run(
    settings: AcmeSettings,
    certs: Arc<CertStore>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let mut failures = 0u32;
    loop {
        let wait = match remaining(&settings.cert_file()) {
            Some(left) if left > settings.renew_before => {
                failures = 0;
                settings.check_interval.min(left - settings.renew_before)
            }
            _ => {
                let order = issue(&settings, &certs);
                let result = tokio::select! {
                    _ = cancel.cancelled() => return,
                    result = order => result,
                };
                match result {
                    Ok(()) => {
                        failures = 0;
                        Metrics::inc(&metrics.acme_certificates);
                        match certs.reload() {
                            Ok(()) => {
                                tracing::info!(domains = ?settings.domains, "ACME certificate issued and swapped in")
                            }
                            Err(e) => tracing::warn!("ACME certificate issued but not usable: {e}"),
                        }
                        settings.check_interval
                    }
                    Err(e) => {
                        failures += 1;
                        Metrics::inc(&metrics.acme_failures);
                        let backoff =
                            jitter((BACKOFF_MIN * (1 << failures.min(7))).min(BACKOFF_MAX));
                        tracing::warn!(domains = ?settings.domains, "ACME order failed, the certificate in force keeps serving; retrying in {backoff:?}: {e}");
                        backoff
                    }
                }
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// ±25% around `base`, so many proxies do not renew in step.
fn jitter(base: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    let spread = base.as_millis() as u64 / 2;
    let offset = if spread == 0 { 0 } else { nanos % spread };
    Duration::from_millis(base.as_millis() as u64 * 3 / 4 + offset)
}

/// Time left on the certificate in `path`, if it is there and readable.
fn remaining(path: &Path) -> Option<Duration> {
    let leaf = crate::listen::tls::load_chain(path)
        .ok()?
        .into_iter()
        .next()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let left = cert.validity().time_to_expiration()?;
    Some(Duration::from_secs(left.whole_seconds().max(0) as u64))
}

/// Orders a certificate and writes it (and its key) into the state folder.
async fn issue(settings: &AcmeSettings, certs: &CertStore) -> Result<(), String> {
    let account = account(settings).await?;
    let identifiers: Vec<Identifier> = settings
        .domains
        .iter()
        .cloned()
        .map(Identifier::Dns)
        .collect();
    let mut order = account
        .new_order(&NewOrder::new(&identifiers))
        .await
        .map_err(|e| format!("new order: {e}"))?;
    let kind = match settings.challenge {
        Challenge::Http01 => ChallengeType::Http01,
        Challenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
    };
    let mut published = Published {
        certs,
        tokens: Vec::new(),
        names: Vec::new(),
    };
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz.map_err(|e| format!("authorization: {e}"))?;
        match authz.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => return Err(format!("authorization is {other:?}")),
        }
        let mut challenge = authz
            .challenge(kind.clone())
            .ok_or_else(|| format!("the CA offers no {kind:?} challenge"))?;
        let domain = challenge.identifier().to_string();
        let key_authorization = challenge.key_authorization();
        match settings.challenge {
            Challenge::Http01 => {
                let token = challenge.token.clone();
                published.http(token, key_authorization.as_str().to_string());
            }
            Challenge::TlsAlpn01 => {
                published.alpn(&domain, key_authorization.digest().as_ref())?;
            }
        }
        challenge
            .set_ready()
            .await
            .map_err(|e| format!("challenge ready: {e}"))?;
    }
    let retries = RetryPolicy::default();
    let status = order
        .poll_ready(&retries)
        .await
        .map_err(|e| format!("order: {e}"))?;
    if status != OrderStatus::Ready {
        return Err(format!(
            "the order is {status:?}, not ready (the CA could not validate the challenge)"
        ));
    }
    let key_pem = order
        .finalize()
        .await
        .map_err(|e| format!("finalize: {e}"))?;
    let chain_pem = order
        .poll_certificate(&retries)
        .await
        .map_err(|e| format!("certificate: {e}"))?;
    drop(published);
    // The key first, then the chain: a reload between the two sees a pair
    // that does not match and keeps the old certificate.
    write_private(&settings.key_file(), key_pem.as_bytes())?;
    write_private(&settings.cert_file(), chain_pem.as_bytes())?;
    Ok(())
}

/// The account from the state folder, or a new one saved there.
async fn account(settings: &AcmeSettings) -> Result<Account, String> {
    let builder = || match &settings.ca {
        Some(ca) => Account::builder_with_root(ca).map_err(|e| format!("{}: {e}", ca.display())),
        None => Account::builder().map_err(|e| e.to_string()),
    };
    let file = settings.state_dir.join("account.json");
    if let Ok(text) = std::fs::read_to_string(&file) {
        let credentials: AccountCredentials =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?;
        return builder()?
            .from_credentials(credentials)
            .await
            .map_err(|e| format!("account from {}: {e}", file.display()));
    }
    let contact: Vec<&str> = settings.contact.iter().map(String::as_str).collect();
    let (account, credentials) = builder()?
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            settings.directory.clone(),
            None,
        )
        .await
        .map_err(|e| format!("new account at {}: {e}", settings.directory))?;
    let text = serde_json::to_string(&credentials).map_err(|e| e.to_string())?;
    write_private(&file, text.as_bytes())?;
    Ok(account)
}

/// Writes `bytes` to `path` atomically, mode 0600: a new file with a random
/// name (created exclusively, never following a symlink), then renamed.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let aside = path.with_extension(format!("tmp-{}-{nanos:x}", std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(&aside)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&aside, path));
    written.map_err(|e| {
        let _ = std::fs::remove_file(&aside);
        format!("{}: {e}", path.display())
    })
}

/// Challenge answers published for one order; withdrawn when dropped.
struct Published<'a> {
    certs: &'a CertStore,
    tokens: Vec<String>,
    names: Vec<String>,
}

impl Published<'_> {
    fn http(&mut self, token: String, answer: String) {
        if let Ok(mut http) = self.certs.challenges.http.lock() {
            http.insert(token.clone(), answer);
        }
        self.tokens.push(token);
    }

    fn alpn(&mut self, domain: &str, digest: &[u8]) -> Result<(), String> {
        let mut params = rcgen::CertificateParams::new(vec![domain.to_string()])
            .map_err(|e| format!("challenge certificate: {e}"))?;
        params
            .custom_extensions
            .push(rcgen::CustomExtension::new_acme_identifier(digest));
        let key = rcgen::KeyPair::generate().map_err(|e| format!("challenge key: {e}"))?;
        let cert = params
            .self_signed(&key)
            .map_err(|e| format!("challenge certificate: {e}"))?;
        let der_key = rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der())
            .map_err(|e| format!("challenge key: {e}"))?;
        // Not `CertifiedKey::from_der`: its consistency check parses the
        // certificate with webpki, which refuses the critical acmeIdentifier
        // extension this certificate must carry (RFC 8737 §3).
        let signing_key = rustls::crypto::ring::default_provider()
            .key_provider
            .load_private_key(der_key)
            .map_err(|e| format!("challenge key: {e}"))?;
        let certified = rustls::sign::CertifiedKey::new(vec![cert.der().clone()], signing_key);
        if let Ok(mut alpn) = self.certs.challenges.alpn.lock() {
            alpn.insert(domain.to_ascii_lowercase(), Arc::new(certified));
        }
        self.names.push(domain.to_ascii_lowercase());
        Ok(())
    }
}

impl Drop for Published<'_> {
    fn drop(&mut self) {
        if let Ok(mut http) = self.certs.challenges.http.lock() {
            for token in &self.tokens {
                http.remove(token);
            }
        }
        if let Ok(mut alpn) = self.certs.challenges.alpn.lock() {
            for name in &self.names {
                alpn.remove(name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_folder_others_may_write_is_refused() {
        let dir = std::env::temp_dir().join(format!("veer-acme-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        prepare_state_dir(&dir).unwrap();
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o775)).unwrap();
        let err = prepare_state_dir(&dir).unwrap_err();
        assert!(err.contains("chmod 700"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn private_files_are_written_0600() {
        let dir = std::env::temp_dir().join(format!("veer-acme-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("key.pem");
        write_private(&file, b"secret").unwrap();
        write_private(&file, b"newer").unwrap();
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(std::fs::read(&file).unwrap(), b"newer");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn jitter_stays_within_a_quarter_of_the_base() {
        for _ in 0..100 {
            let j = jitter(Duration::from_secs(100));
            assert!(
                j >= Duration::from_secs(75) && j <= Duration::from_secs(125),
                "{j:?}"
            );
        }
    }
}
