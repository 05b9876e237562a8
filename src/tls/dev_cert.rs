//! A development certificate: a local CA and a leaf for `localhost` and `127.0.0.1`
//! signed by it, generated with rcgen when the configured files do not exist.
//!
//! The leaf is a proper end-entity certificate (not a CA used as a server certificate), so
//! clients that trust `dev-ca.crt` verify the gateway like any real deployment.

use std::fs;
use std::io::Write;
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

#[derive(Debug, thiserror::Error)]
pub enum DevCertError {
    #[error("generating the development certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// Writes `cert_path` (leaf then CA), `key_path` and `dev-ca.crt` beside the certificate.
/// Returns the CA path.
/// The development CA's common name (how `gateway posture` recognises its certificates).
pub const CA_COMMON_NAME: &str = "gateway development CA";

pub fn generate(cert_path: &Path, key_path: &Path) -> Result<std::path::PathBuf, DevCertError> {
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    ca.distinguished_name = dn;
    let ca_cert = ca.self_signed(&ca_key)?;

    let leaf_key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(vec!["localhost".to_string()])?;
    leaf.subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().expect("ip")));
    leaf.subject_alt_names
        .push(SanType::IpAddress("::1".parse().expect("ip")));
    leaf.is_ca = IsCa::ExplicitNoCa;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "localhost");
    leaf.distinguished_name = dn;
    let leaf_cert = leaf.signed_by(&leaf_key, &ca_cert, &ca_key)?;

    let dir = cert_path.parent().unwrap_or(Path::new("."));
    let ca_path = dir.join("dev-ca.crt");
    write(
        dir,
        cert_path,
        &format!("{}{}", leaf_cert.pem(), ca_cert.pem()),
        0o644,
    )?;
    write(dir, key_path, &leaf_key.serialize_pem(), 0o600)?;
    write(dir, &ca_path, &ca_cert.pem(), 0o644)?;
    Ok(ca_path)
}

fn write(dir: &Path, path: &Path, contents: &str, mode: u32) -> Result<(), DevCertError> {
    let err = |source| DevCertError::Write {
        path: path.display().to_string(),
        source,
    };
    fs::create_dir_all(dir).map_err(err)?;
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    let _ = mode;
    let mut f = opts.open(path).map_err(err)?;
    f.write_all(contents.as_bytes()).map_err(err)
}
