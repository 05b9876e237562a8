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
    use std::fmt::Write as _;
    let mut bytes = [0u8; N];
    fill_random(&mut bytes);
    let mut out = String::with_capacity(2 * N);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
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
