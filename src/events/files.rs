//! Files the store, backups and archives write: private (directories 0700, files 0600),
//! created fresh (never following or truncating something already there), made durable
//! with a sync of the file and of its directory, and checked against free disk space
//! before a large write.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

/// Creates `dir` and its missing parents; `dir` itself gets mode 0700 (an existing
/// directory is tightened to 0700).
pub fn private_dir(dir: &Path) -> io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir)?;
    restrict(dir, 0o700)
}

/// Creates a new directory (mode 0700); fails when anything exists at `dir`.
pub fn fresh_dir(dir: &Path) -> io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir)
}

/// Creates a new file (mode 0600) for writing; fails when anything exists at `path`
/// (including a symlink).
pub fn fresh_file(path: &Path) -> io::Result<File> {
    let mut o = OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(path)
}

/// Sets the permission bits of `path` (no-op off Unix).
pub fn restrict(path: &Path, mode: u32) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
    Ok(())
}

/// Makes a rename or a new file in `dir` durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// The share of the file system holding `dir` that is free for unprivileged writes.
pub fn free_fraction(dir: &Path) -> Option<f64> {
    let st = rustix::fs::statvfs(dir).ok()?;
    (st.f_blocks > 0).then(|| st.f_bavail as f64 / st.f_blocks as f64)
}

/// Refuses a write of `bytes` into `dir` that would leave less than a reserve free: 5 %
/// of the file system, at least 64 MiB and at most 1 GiB (on a large disk 5 % would refuse
/// a small restore with gigabytes to spare).
pub fn ensure_room(dir: &Path, bytes: u64) -> io::Result<()> {
    let st = rustix::fs::statvfs(dir).map_err(io::Error::from)?;
    let free = st.f_bavail.saturating_mul(st.f_frsize);
    let total = st.f_blocks.saturating_mul(st.f_frsize);
    let reserve = (total / 20).clamp(64 << 20, 1 << 30);
    if bytes.saturating_add(reserve) > free {
        return Err(io::Error::new(
            io::ErrorKind::StorageFull,
            format!(
                "{bytes} bytes would leave less than {reserve} bytes free in {} ({free} free)",
                dir.display()
            ),
        ));
    }
    Ok(())
}
