//! TLS termination with rustls (aws-lc-rs): TLS 1.2 and 1.3 only, ALPN, SNI over several
//! certificates, and certificate reload without restart.
//!
//! Every TLS listener shares one [`SniResolver`], whose certificate set sits behind an
//! `ArcSwap`. A reload swaps in a new [`CertStore`]; handshakes already under way keep the
//! certificate they picked, new handshakes see the new set.

pub mod dev_cert;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot read certificate file {path}: {reason}")]
    Cert { path: String, reason: String },
    #[error("cannot read private key file {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("certificate and key do not belong together or the key type is unsupported: {0}")]
    Mismatch(String),
}

/// One loaded certificate with the names it answers for.
pub struct NamedCert {
    pub key: Arc<CertifiedKey>,
    pub server_names: Vec<String>,
}

/// The certificates in force: exact names, wildcard suffixes, and a default.
#[derive(Default)]
pub struct CertStore {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: Vec<(String, Arc<CertifiedKey>)>,
    default: Option<Arc<CertifiedKey>>,
}

impl CertStore {
    pub fn new(certs: Vec<NamedCert>) -> CertStore {
        let mut s = CertStore::default();
        for c in certs {
            if s.default.is_none() {
                s.default = Some(c.key.clone());
            }
            for name in c.server_names {
                let name = name.to_ascii_lowercase();
                if let Some(suffix) = name.strip_prefix('*') {
                    s.wildcard.push((suffix.to_string(), c.key.clone()));
                } else {
                    s.exact.entry(name).or_insert_with(|| c.key.clone());
                }
            }
        }
        s.wildcard.sort_by_key(|(w, _)| std::cmp::Reverse(w.len()));
        s
    }

    fn pick(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = sni {
            let name = name.to_ascii_lowercase();
            if let Some(k) = self.exact.get(&name) {
                return Some(k.clone());
            }
            for (suffix, k) in &self.wildcard {
                // `*.example.com` covers exactly one label.
                if let Some(label) = name.strip_suffix(suffix.as_str()) {
                    if !label.is_empty() && !label.contains('.') {
                        return Some(k.clone());
                    }
                }
            }
        }
        self.default.clone()
    }
}

/// Picks a certificate by SNI from the current [`CertStore`].
#[derive(Default)]
pub struct SniResolver {
    store: ArcSwap<CertStore>,
}

impl std::fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SniResolver")
    }
}

impl SniResolver {
    pub fn new(store: CertStore) -> SniResolver {
        SniResolver {
            store: ArcSwap::from_pointee(store),
        }
    }
    /// Replaces the certificate set; new handshakes use it at once.
    pub fn replace(&self, store: Arc<CertStore>) {
        self.store.store(store);
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.store.load().pick(hello.server_name())
    }
}

/// Loads a PEM chain and key from disk.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, CertError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| CertError::Cert {
            path: cert.display().to_string(),
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(CertError::Cert {
            path: cert.display().to_string(),
            reason: "no CERTIFICATE block found".to_string(),
        });
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| CertError::Key {
        path: key.display().to_string(),
        reason: e.to_string(),
    })?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let ck = CertifiedKey::from_der(chain, key_der, &provider)
        .map_err(|e| CertError::Mismatch(e.to_string()))?;
    Ok(Arc::new(ck))
}

/// A server config for one listener: TLS 1.2/1.3, the given ALPN list, certificates from
/// the shared resolver.
///
/// Resumption is by stateless tickets (encrypted with a key rustls rotates every 6 hours,
/// new on each config load), as nginx does by default: the server keeps nothing per
/// client, where a session cache kept two entries per handshake (about 20 MiB after
/// 8,000 connections, held after they closed). A small cache remains for TLS 1.2 clients
/// that resume by session id.
pub fn server_config(resolver: Arc<SniResolver>, alpn: &[String]) -> Arc<ServerConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("TLS 1.2 and 1.3 are supported by aws-lc-rs")
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    cfg.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    match rustls::crypto::aws_lc_rs::Ticketer::new() {
        Ok(t) => cfg.ticketer = t,
        Err(e) => {
            tracing::warn!(error = %e, "no TLS session tickets; resumption by session cache only")
        }
    }
    cfg.session_storage = rustls::server::ServerSessionMemoryCache::new(4096);
    Arc::new(cfg)
}
