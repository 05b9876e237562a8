//! Random bytes from the TLS provider's CSPRNG, and secret files created on first use
//! (random, hex, mode 0600) such as the admin token and the session-hash key.

use std::io::Write;
use std::path::Path;

/// Fills `buf` from the system CSPRNG (aws-lc-rs, as rustls uses it).
pub fn fill_random(buf: &mut [u8]) {
    let _ = rustls::crypto::aws_lc_rs::default_provider()
        .secure_random
        .fill(buf);
}

/// `N` random bytes as lowercase hex.
pub fn random_hex<const N: usize>() -> String {
    let mut bytes = [0u8; N];
    fill_random(&mut bytes);
    hex(&bytes)
}

/// `bytes` as lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(2 * bytes.len());
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Where a secret named in the config (an admin token, a webhook's signing key) is read
/// from at start. The secret itself is never written in the config.
#[derive(Debug, Clone)]
pub enum SecretSource {
    /// A file, created with a random secret (mode 0600) when missing.
    File(std::path::PathBuf),
    /// An environment variable; unset or empty is an error.
    Env(String),
}

/// Why a [`SecretSource`] gave no secret.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("file {path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
    #[error("environment variable {0} is unset or empty")]
    Env(String),
}

impl SecretSource {
    /// The trimmed secret (see [`read_or_create`] for files).
    pub fn read(&self) -> Result<String, SecretError> {
        match self {
            SecretSource::File(path) => {
                let existed = path.exists();
                let secret = read_or_create(path).map_err(|source| SecretError::File {
                    path: path.display().to_string(),
                    source,
                })?;
                if !existed {
                    tracing::warn!(path = %path.display(), "created a random secret file");
                }
                Ok(secret)
            }
            SecretSource::Env(var) => match std::env::var(var) {
                Ok(v) if !v.trim().is_empty() => Ok(v.trim().to_string()),
                _ => Err(SecretError::Env(var.clone())),
            },
        }
    }
}

/// The trimmed content of `path`; when missing or empty, 32 random bytes as hex are
/// written there first (created with mode 0600, its directory as needed).
pub fn read_or_create(path: &Path) -> std::io::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let secret = random_hex::<32>();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(secret.as_bytes())?;
    f.sync_all()?;
    Ok(secret)
}
