//! Backups: one tar file holding a consistent copy of the event store, the config and rules
//! in use, and a manifest with the sha256 of each.
//!
//! The store copy is made from one read transaction into a fresh redb file, so it is a
//! consistent snapshot while the gateway keeps writing. Layout of
//! `backup-<time>.tar`: `events.redb`, `config/<config file name>`, `config/rules/…`, and
//! `manifest.json` last. `verify` recomputes every checksum and opens the store copy;
//! `restore` verifies, then swaps the copy in as `<data_dir>/events.redb` (the previous
//! file is kept beside it) and unpacks config and rules to `<data_dir>/restored-<time>/`
//! for the operator to compare: it refuses while a gateway has the store open.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use redb::{Database, ReadTransaction, ReadableTableMetadata, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::archive::{sha256_file, stamp};
use super::model::{format_time, now_micros};
use super::store::{
    Store, StoreError, AUDIT, BY_IP, BY_SESSION, HOLDS, INVESTIGATIONS, OPEN_SEVERE, PERF, TRENDS,
};

const STORE_ENTRY: &str = "events.redb";
const MANIFEST_ENTRY: &str = "manifest.json";

/// What to put beside the store copy.
#[derive(Debug, Clone)]
pub struct BackupSources {
    pub config_file: PathBuf,
    pub rules_dir: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManifestEntry {
    pub name: String,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub created: String,
    pub gateway_version: String,
    pub audit_events: u64,
    pub performance_events: u64,
    pub entries: Vec<ManifestEntry>,
}

/// A backup file and what its manifest says.
#[derive(Debug, Clone, Serialize)]
pub struct BackupInfo {
    pub file: PathBuf,
    pub bytes: u64,
    pub manifest: Manifest,
}

/// Writes a new backup into `dir` and deletes all but the newest `keep`.
pub fn create(
    store: &Store,
    sources: &BackupSources,
    dir: &Path,
    keep: usize,
) -> Result<BackupInfo, StoreError> {
    std::fs::create_dir_all(dir).map_err(StoreError::io(format!("creating {}", dir.display())))?;
    let now = now_micros();
    let name = format!("backup-{}", stamp(now));
    let copy_path = dir.join(format!(".{name}.redb.tmp"));
    let tar_tmp = dir.join(format!(".{name}.tar.tmp"));
    let file = dir.join(format!("{name}.tar"));
    let result = (|| -> Result<BackupInfo, StoreError> {
        let (audit_events, performance_events) = snapshot(store, &copy_path)?;
        let mut files: Vec<(String, PathBuf)> = vec![(STORE_ENTRY.into(), copy_path.clone())];
        let cfg_name = sources
            .config_file
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("gateway.toml");
        files.push((format!("config/{cfg_name}"), sources.config_file.clone()));
        if sources.rules_dir.is_dir() {
            let mut rules: Vec<PathBuf> = walk(&sources.rules_dir)?;
            rules.sort();
            for r in rules {
                let rel = r.strip_prefix(&sources.rules_dir).unwrap_or(&r);
                files.push((format!("config/rules/{}", rel.display()), r.clone()));
            }
        }
        let out = File::create(&tar_tmp)
            .map_err(StoreError::io(format!("creating {}", tar_tmp.display())))?;
        let mut tar = tar::Builder::new(out);
        let mut entries = Vec::new();
        for (entry, path) in &files {
            let (sha256, bytes) = sha256_file(path)?;
            tar.append_path_with_name(path, entry)
                .map_err(StoreError::io(format!(
                    "adding {} to the backup",
                    path.display()
                )))?;
            entries.push(ManifestEntry {
                name: entry.clone(),
                bytes,
                sha256,
            });
        }
        let manifest = Manifest {
            created: format_time(now),
            gateway_version: env!("CARGO_PKG_VERSION").into(),
            audit_events,
            performance_events,
            entries,
        };
        let body = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
        let mut header = tar::Header::new_gnu();
        header.set_size(body.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(now / 1_000_000);
        header.set_cksum();
        tar.append_data(&mut header, MANIFEST_ENTRY, body.as_slice())
            .map_err(StoreError::io("writing the backup manifest"))?;
        let out = tar
            .into_inner()
            .map_err(StoreError::io(format!("writing {}", tar_tmp.display())))?;
        out.sync_all()
            .map_err(StoreError::io(format!("syncing {}", tar_tmp.display())))?;
        std::fs::rename(&tar_tmp, &file)
            .map_err(StoreError::io(format!("renaming to {}", file.display())))?;
        let bytes = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        Ok(BackupInfo {
            file: file.clone(),
            bytes,
            manifest,
        })
    })();
    let _ = std::fs::remove_file(&copy_path);
    let _ = std::fs::remove_file(&tar_tmp);
    let info = result?;
    prune(dir, keep)?;
    tracing::info!(file = %info.file.display(), bytes = info.bytes, "backup created");
    Ok(info)
}

/// Copies every table from one read transaction into a new store file.
fn snapshot(store: &Store, to: &Path) -> Result<(u64, u64), StoreError> {
    let _ = std::fs::remove_file(to);
    let copy = Database::create(to)?;
    let r = store.begin_read()?;
    let mut w = copy.begin_write()?;
    w.set_durability(redb::Durability::Immediate);
    let audit = copy_table(&r, &w, AUDIT)?;
    let perf = copy_table(&r, &w, PERF)?;
    copy_table(&r, &w, INVESTIGATIONS)?;
    copy_table(&r, &w, BY_IP)?;
    copy_table(&r, &w, BY_SESSION)?;
    copy_table(&r, &w, OPEN_SEVERE)?;
    copy_table(&r, &w, TRENDS)?;
    copy_table(&r, &w, HOLDS)?;
    copy_table(&r, &w, super::store::META)?;
    w.commit()?;
    Ok((audit, perf))
}

fn copy_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    r: &ReadTransaction,
    w: &WriteTransaction,
    def: TableDefinition<K, V>,
) -> Result<u64, StoreError> {
    use redb::ReadableTable;
    let src = r.open_table(def)?;
    let mut dst = w.open_table(def)?;
    let mut n = 0;
    for row in src.iter()? {
        let (k, v) = row?;
        dst.insert(k.value(), v.value())?;
        n += 1;
    }
    Ok(n)
}

fn walk(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let mut out = Vec::new();
    let rd =
        std::fs::read_dir(dir).map_err(StoreError::io(format!("reading {}", dir.display())))?;
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p)?);
        } else if p.is_file() {
            out.push(p);
        }
    }
    Ok(out)
}

/// The backups in `dir`, newest first.
pub fn list(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let mut out: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("backup-") && n.ends_with(".tar"))
            })
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            return Err(StoreError::Io {
                context: format!("reading {}", dir.display()),
                source: e,
            })
        }
    };
    out.sort();
    out.reverse();
    Ok(out)
}

fn prune(dir: &Path, keep: usize) -> Result<(), StoreError> {
    for old in list(dir)?.into_iter().skip(keep.max(1)) {
        std::fs::remove_file(&old)
            .map_err(StoreError::io(format!("removing {}", old.display())))?;
        tracing::info!(file = %old.display(), "removed an old backup");
    }
    Ok(())
}

/// The result of checking a backup.
#[derive(Debug, Serialize)]
pub struct Verified {
    pub manifest: Manifest,
    pub audit_events: u64,
    pub performance_events: u64,
}

/// Checks every entry against the manifest and opens the store copy (in a temporary file,
/// deleted afterwards).
pub fn verify(file: &Path) -> Result<Verified, StoreError> {
    let tmp_store = std::env::temp_dir().join(format!(
        "gateway-verify-{}-{}.redb",
        std::process::id(),
        now_micros()
    ));
    let result = verify_into(file, &tmp_store, None);
    let _ = std::fs::remove_file(&tmp_store);
    result
}

fn verify_into(
    file: &Path,
    store_to: &Path,
    config_to: Option<PathBuf>,
) -> Result<Verified, StoreError> {
    let bad = |m: String| StoreError::Invalid(format!("{}: {m}", file.display()));
    let f = File::open(file).map_err(StoreError::io(format!("opening {}", file.display())))?;
    let mut archive = tar::Archive::new(f);
    let mut seen: Vec<ManifestEntry> = Vec::new();
    let mut manifest: Option<Manifest> = None;
    let entries = archive
        .entries()
        .map_err(|e| bad(format!("not a backup archive: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(format!("damaged archive: {e}")))?;
        let name = entry
            .path()
            .map_err(|e| bad(format!("damaged entry name: {e}")))?
            .to_string_lossy()
            .into_owned();
        if name.contains("..") {
            return Err(bad(format!("entry `{name}` escapes the archive")));
        }
        if name == MANIFEST_ENTRY {
            let mut body = Vec::new();
            entry
                .read_to_end(&mut body)
                .map_err(|e| bad(format!("damaged manifest: {e}")))?;
            manifest =
                Some(serde_json::from_slice(&body).map_err(|e| bad(format!("bad manifest: {e}")))?);
            continue;
        }
        let out: Box<dyn Write> = if name == STORE_ENTRY {
            Box::new(
                File::create(store_to)
                    .map_err(StoreError::io(format!("creating {}", store_to.display())))?,
            )
        } else if let Some(dir) = &config_to {
            let target = dir.join(name.trim_start_matches("config/"));
            if let Some(p) = target.parent() {
                std::fs::create_dir_all(p)
                    .map_err(StoreError::io(format!("creating {}", p.display())))?;
            }
            Box::new(
                File::create(&target)
                    .map_err(StoreError::io(format!("creating {}", target.display())))?,
            )
        } else {
            Box::new(io::sink())
        };
        let mut w = HashingWriter {
            inner: out,
            hasher: Sha256::new(),
            bytes: 0,
        };
        io::copy(&mut entry, &mut w).map_err(|e| bad(format!("damaged entry `{name}`: {e}")))?;
        w.inner
            .flush()
            .map_err(StoreError::io(format!("writing {}", store_to.display())))?;
        seen.push(ManifestEntry {
            name,
            bytes: w.bytes,
            sha256: format!("{:x}", w.hasher.finalize()),
        });
    }
    let manifest = manifest.ok_or_else(|| bad("no manifest.json".into()))?;
    for m in &manifest.entries {
        match seen.iter().find(|s| s.name == m.name) {
            None => {
                return Err(bad(format!(
                    "`{}` is in the manifest but not the archive",
                    m.name
                )))
            }
            Some(s) if s.sha256 != m.sha256 || s.bytes != m.bytes => {
                return Err(bad(format!(
                "`{}` does not match its checksum (manifest {}, file {}): the backup is damaged",
                m.name, m.sha256, s.sha256
            )))
            }
            Some(_) => {}
        }
    }
    if let Some(extra) = seen
        .iter()
        .find(|s| !manifest.entries.iter().any(|m| m.name == s.name))
    {
        return Err(bad(format!("`{}` is not in the manifest", extra.name)));
    }
    if !manifest.entries.iter().any(|m| m.name == STORE_ENTRY) {
        return Err(bad("no events.redb".into()));
    }
    let db =
        Database::open(store_to).map_err(|e| bad(format!("the store copy does not open: {e}")))?;
    let r = db.begin_read()?;
    let audit_events = r.open_table(AUDIT)?.len()?;
    let performance_events = r.open_table(PERF)?.len()?;
    Ok(Verified {
        manifest,
        audit_events,
        performance_events,
    })
}

struct HashingWriter {
    inner: Box<dyn Write>,
    hasher: Sha256,
    bytes: u64,
}

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// What a restore did.
#[derive(Debug, Serialize)]
pub struct Restored {
    pub store: PathBuf,
    pub previous_store: Option<PathBuf>,
    pub config_dir: PathBuf,
    pub audit_events: u64,
    pub performance_events: u64,
}

/// Restores a backup into a stopped gateway's store at `store_path`.
pub fn restore(file: &Path, store_path: &Path) -> Result<Restored, StoreError> {
    // Refuse while a gateway holds the store.
    if store_path.exists() {
        match Database::create(store_path) {
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(StoreError::Locked(store_path.to_path_buf()))
            }
            Err(e) => tracing::warn!(error = %e, "the current store does not open; replacing it"),
            Ok(db) => drop(db),
        }
    }
    let dir = store_path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    std::fs::create_dir_all(&dir).map_err(StoreError::io(format!("creating {}", dir.display())))?;
    let when = stamp(now_micros());
    let staged = dir.join(format!(".restore-{when}.redb"));
    let config_dir = dir.join(format!("restored-{when}"));
    let v = verify_into(file, &staged, Some(config_dir.clone())).inspect_err(|_| {
        let _ = std::fs::remove_file(&staged);
    })?;
    let previous = if store_path.exists() {
        let p = dir.join(format!("events.redb.before-restore-{when}"));
        std::fs::rename(store_path, &p).map_err(StoreError::io(format!(
            "moving {} aside",
            store_path.display()
        )))?;
        Some(p)
    } else {
        None
    };
    std::fs::rename(&staged, store_path).map_err(StoreError::io(format!(
        "moving the copy to {}",
        store_path.display()
    )))?;
    Ok(Restored {
        store: store_path.to_path_buf(),
        previous_store: previous,
        config_dir,
        audit_events: v.audit_events,
        performance_events: v.performance_events,
    })
}
