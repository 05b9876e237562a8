//! Backups: one zstd-compressed tar file holding everything the gateway knows — a
//! consistent copy of the store file (every table in [`super::schema::ALL`]: events,
//! investigations, trends, bans, IP rules, sessions), the session-hash key the stored
//! sessions are keyed by, and the config and rules in use — with a manifest of checksums.
//!
//! Layout of `backup-<time>.tar.zst`, in this order: `manifest.json` (format, counts, a
//! row count and digest per table, size and sha256 of every other entry), `events.redb`,
//! `state/session.key`, `config/<config file name>`, `config/rules/…`. The config copy has
//! inline secrets redacted ([`crate::config::redact_secrets`]) unless the operator opts in.
//!
//! Writing: the store copy comes from one read transaction (consistent while the gateway
//! keeps writing); everything goes to a hidden temporary file (mode 0600) that is synced
//! and renamed, so a crash never leaves a partial file under a backup name. Retention keeps
//! the newest `keep` and deletes those older than `max_age` (never the newest).
//!
//! Reading ([`verify`], [`restore`]) trusts nothing in the file: the manifest must come
//! first; each later entry must be a regular file with an allow-listed plain relative name
//! (`events.redb`, `state/session.key`, `config/…` without `.`, `..`, empty or absolute
//! parts), listed in the manifest with the size its header declares, and appear once. The
//! declared total must be at most [`MAX_EXPANSION`] times the file (at least 1 GiB) and fit
//! the disk with room to spare (a decompression bomb is refused before it is written, and
//! no entry is read past its declared size). Everything is
//! extracted into a fresh directory inside the data directory, checked (checksums, the store
//! copy's integrity, schema version, known tables, row counts), and only then moved into
//! place; on any error that directory is removed and nothing else has changed.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use redb::{Database, TableHandle};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::archive::{sha256_file, stamp};
use super::files;
use super::model::{format_time, now_micros};
use super::schema::{self, TableSummary};
use super::store::{Store, StoreError, AUDIT, META, PERF};

const MANIFEST_ENTRY: &str = "manifest.json";
const STORE_ENTRY: &str = "events.redb";
const SESSION_KEY_ENTRY: &str = "state/session.key";
/// The manifest format this version writes and reads.
pub const FORMAT: u32 = 2;
/// Largest manifest read.
const MAX_MANIFEST_BYTES: u64 = 1 << 20;
/// Largest config, rules or state entry.
const MAX_SMALL_ENTRY_BYTES: u64 = 64 << 20;
/// Most entries in one backup.
const MAX_ENTRIES: usize = 10_000;
/// Longest entry name.
const MAX_NAME_BYTES: usize = 512;
/// Most a backup may expand to, as a multiple of its compressed size (a real store copy
/// compresses about 35×; a bomb of zeros thousands of times)...
const MAX_EXPANSION: u64 = 1000;
/// ...except that up to this much is always allowed.
const EXPANSION_FLOOR: u64 = 1 << 30;
/// A backup file name ends with this.
pub const SUFFIX: &str = ".tar.zst";

/// What to put beside the store copy.
#[derive(Debug, Clone)]
pub struct BackupSources {
    pub config_file: PathBuf,
    pub rules_dir: PathBuf,
    /// The session-hash key file (copied when it exists).
    pub session_key: Option<PathBuf>,
    /// Copy inline secrets of the config too (default: redacted).
    pub include_secrets: bool,
}

/// How many backups to keep.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub keep: usize,
    pub max_age: Option<Duration>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ManifestEntry {
    pub name: String,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub created: String,
    pub gateway_version: String,
    pub schema_version: u64,
    pub audit_events: u64,
    pub performance_events: u64,
    /// `redacted` or `included`.
    pub config_secrets: String,
    pub tables: Vec<TableSummary>,
    pub entries: Vec<ManifestEntry>,
}

/// A backup file and what its manifest says.
#[derive(Debug, Clone, Serialize)]
pub struct BackupInfo {
    pub file: PathBuf,
    pub bytes: u64,
    /// Seconds the backup took.
    pub seconds: f64,
    pub manifest: Manifest,
}

/// Writes a new backup into `dir`, then applies `retention`.
pub fn create(
    store: &Store,
    sources: &BackupSources,
    dir: &Path,
    retention: Retention,
) -> Result<BackupInfo, StoreError> {
    let started = std::time::Instant::now();
    files::private_dir(dir).map_err(StoreError::io(format!("creating {}", dir.display())))?;
    let now = now_micros();
    let name = format!("backup-{}", stamp(now));
    let copy_path = dir.join(format!(".{name}.redb.tmp"));
    let tar_tmp = dir.join(format!(".{name}{SUFFIX}.tmp"));
    let file = dir.join(format!("{name}{SUFFIX}"));
    let result = (|| -> Result<BackupInfo, StoreError> {
        let tables = snapshot(store, &copy_path)?;
        let rows = |n: &str| tables.iter().find(|t| t.name == n).map_or(0, |t| t.rows);
        let (store_sha, store_bytes) = sha256_file(&copy_path)?;
        let small = small_entries(sources)?;
        let mut entries = vec![ManifestEntry {
            name: STORE_ENTRY.into(),
            bytes: store_bytes,
            sha256: store_sha,
        }];
        entries.extend(small.iter().map(|(name, body)| ManifestEntry {
            name: name.clone(),
            bytes: body.len() as u64,
            sha256: format!("{:x}", Sha256::digest(body)),
        }));
        let manifest = Manifest {
            format: FORMAT,
            created: format_time(now),
            gateway_version: env!("CARGO_PKG_VERSION").into(),
            schema_version: schema::SCHEMA_VERSION,
            audit_events: rows(AUDIT.name()),
            performance_events: rows(PERF.name()),
            config_secrets: if sources.include_secrets {
                "included"
            } else {
                "redacted"
            }
            .into(),
            tables,
            entries,
        };
        let manifest_body = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| StoreError::Invalid(format!("encoding the manifest: {e}")))?;
        let out = files::fresh_file(&tar_tmp)
            .map_err(StoreError::io(format!("creating {}", tar_tmp.display())))?;
        let werr = StoreError::io(format!("writing {}", tar_tmp.display()));
        let write = || -> io::Result<File> {
            let enc = zstd::Encoder::new(io::BufWriter::new(out), 3)?;
            let mut tar = tar::Builder::new(enc);
            append(&mut tar, MANIFEST_ENTRY, &manifest_body[..], now)?;
            let store_file = File::open(&copy_path)?;
            append_sized(&mut tar, STORE_ENTRY, store_bytes, store_file, now)?;
            for (name, body) in &small {
                append(&mut tar, name, &body[..], now)?;
            }
            let enc = tar.into_inner()?;
            let buf = enc.finish()?;
            let f = buf.into_inner().map_err(|e| e.into_error())?;
            f.sync_all()?;
            Ok(f)
        };
        write().map_err(werr)?;
        std::fs::rename(&tar_tmp, &file)
            .map_err(StoreError::io(format!("renaming to {}", file.display())))?;
        files::sync_dir(dir).map_err(StoreError::io(format!("syncing {}", dir.display())))?;
        let bytes = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        Ok(BackupInfo {
            file: file.clone(),
            bytes,
            seconds: started.elapsed().as_secs_f64(),
            manifest,
        })
    })();
    let _ = std::fs::remove_file(&copy_path);
    let _ = std::fs::remove_file(&tar_tmp);
    let info = result?;
    prune(dir, retention)?;
    tracing::info!(file = %info.file.display(), bytes = info.bytes, seconds = info.seconds, "backup created");
    Ok(info)
}

/// The config (redacted unless asked otherwise), rules and session key, as entries.
fn small_entries(sources: &BackupSources) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
    let read =
        |p: &Path| std::fs::read(p).map_err(StoreError::io(format!("reading {}", p.display())));
    let mut out = Vec::new();
    if let Some(key) = &sources.session_key {
        match std::fs::read(key) {
            Ok(body) => out.push((SESSION_KEY_ENTRY.to_string(), body)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(StoreError::Io {
                    context: format!("reading {}", key.display()),
                    source: e,
                })
            }
        }
    }
    let cfg_name = sources
        .config_file
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| config_rel_ok(n))
        .unwrap_or("gateway.toml");
    let cfg = read(&sources.config_file)?;
    let cfg = if sources.include_secrets {
        cfg
    } else {
        let text = String::from_utf8(cfg).map_err(|_| {
            StoreError::Invalid(format!(
                "{} is not UTF-8; cannot redact its secrets",
                sources.config_file.display()
            ))
        })?;
        let (clean, _) = crate::config::redact_secrets(&text).map_err(|e| {
            StoreError::Invalid(format!(
                "{}: cannot redact its secrets: {e}",
                sources.config_file.display()
            ))
        })?;
        clean.into_bytes()
    };
    out.push((format!("config/{cfg_name}"), cfg));
    if sources.rules_dir.is_dir() {
        let mut rules = walk(&sources.rules_dir)?;
        rules.sort();
        for r in rules {
            let Ok(rel) = r.strip_prefix(&sources.rules_dir) else {
                continue;
            };
            let rel: Vec<&str> = rel.iter().filter_map(|c| c.to_str()).collect();
            let name = format!("config/rules/{}", rel.join("/"));
            if !config_rel_ok(&name["config/".len()..]) {
                tracing::warn!(file = %r.display(), "not backed up: its name cannot be restored safely");
                continue;
            }
            out.push((name, read(&r)?));
        }
    }
    Ok(out)
}

fn header(size: u64, mtime_micros: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(size);
    h.set_mode(0o600);
    h.set_mtime(mtime_micros / 1_000_000);
    h
}

fn append<W: Write>(
    tar: &mut tar::Builder<W>,
    name: &str,
    body: &[u8],
    now: u64,
) -> io::Result<()> {
    append_sized(tar, name, body.len() as u64, body, now)
}

fn append_sized<W: Write>(
    tar: &mut tar::Builder<W>,
    name: &str,
    size: u64,
    body: impl Read,
    now: u64,
) -> io::Result<()> {
    let mut h = header(size, now);
    tar.append_data(&mut h, name, body)
}

/// Copies every table from one read transaction into a new store file; returns the
/// copy's table summaries.
fn snapshot(store: &Store, to: &Path) -> Result<Vec<TableSummary>, StoreError> {
    let _ = std::fs::remove_file(to);
    drop(files::fresh_file(to).map_err(StoreError::io(format!("creating {}", to.display())))?);
    let copy = Database::create(to)?;
    let r = store.begin_read()?;
    let mut w = copy.begin_write()?;
    w.set_durability(redb::Durability::Immediate);
    for t in schema::ALL {
        t.copy_into(&r, &w)?;
    }
    w.commit()?;
    drop(r);
    let summaries = schema::summarize(&copy.begin_read()?)?;
    Ok(summaries)
}

fn walk(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let mut out = Vec::new();
    let rd =
        std::fs::read_dir(dir).map_err(StoreError::io(format!("reading {}", dir.display())))?;
    for e in rd.flatten() {
        let Ok(kind) = e.file_type() else { continue };
        let p = e.path();
        if kind.is_dir() {
            out.extend(walk(&p)?);
        } else if kind.is_file() {
            out.push(p);
        }
    }
    Ok(out)
}

/// A backup in the backup directory.
#[derive(Debug, Clone, Serialize)]
pub struct Listed {
    pub name: String,
    pub path: PathBuf,
    pub bytes: u64,
    /// Modification time, RFC 3339.
    pub modified: String,
}

/// The backups in `dir`, newest first (by the time in their names).
pub fn list(dir: &Path) -> Result<Vec<Listed>, StoreError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(StoreError::Io {
                context: format!("reading {}", dir.display()),
                source: e,
            })
        }
    };
    let mut out: Vec<Listed> = rd
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            if !is_backup_name(&name) {
                return None;
            }
            let meta = e.metadata().ok().filter(|m| m.is_file())?;
            let modified = meta
                .modified()
                .ok()
                .and_then(|m| m.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_micros().min(u64::MAX as u128) as u64);
            Some(Listed {
                path: e.path(),
                bytes: meta.len(),
                modified: format_time(modified),
                name,
            })
        })
        .collect();
    out.sort_by(|a, b| b.name.cmp(&a.name));
    Ok(out)
}

/// A backup's file name as this version writes it (`backup-<time>.tar.zst`).
pub fn is_backup_name(name: &str) -> bool {
    name.starts_with("backup-")
        && name.ends_with(SUFFIX)
        && !name.contains('/')
        && !name.contains('\\')
        && name.len() <= 128
}

/// Leftovers older than a day (a process killed mid-backup or mid-restore) whose names
/// start with one of `prefixes` are removed with `remove`.
fn remove_stale(dir: &Path, prefixes: &[&str], remove: impl Fn(&Path) -> io::Result<()>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let day = Duration::from_secs(24 * 3600);
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if !prefixes.iter().any(|p| name.starts_with(p)) {
            continue;
        }
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|m| SystemTime::now().duration_since(m).ok())
            .is_some_and(|age| age > day);
        if old {
            match remove(&e.path()) {
                Ok(()) => tracing::info!(path = %e.path().display(), "removed a stale leftover"),
                Err(err) => {
                    tracing::warn!(path = %e.path().display(), error = %err, "cannot remove a stale leftover")
                }
            }
        }
    }
}

fn prune(dir: &Path, retention: Retention) -> Result<(), StoreError> {
    remove_stale(dir, &[".backup-"], |p| std::fs::remove_file(p));
    let now = SystemTime::now();
    for (i, old) in list(dir)?.into_iter().enumerate() {
        if i == 0 {
            continue; // never the newest
        }
        let too_many = i >= retention.keep.max(1);
        let too_old = retention.max_age.is_some_and(|max| {
            std::fs::metadata(&old.path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .is_some_and(|age| age > max)
        });
        if too_many || too_old {
            std::fs::remove_file(&old.path)
                .map_err(StoreError::io(format!("removing {}", old.path.display())))?;
            tracing::info!(file = %old.path.display(), "removed an old backup");
        }
    }
    Ok(())
}

/// The result of checking a backup.
#[derive(Debug, Serialize)]
pub struct Verified {
    pub manifest: Manifest,
    pub audit_events: u64,
    pub performance_events: u64,
    pub seconds: f64,
}

/// Checks a backup in full (entries, checksums, the store copy) by extracting it into a
/// temporary directory inside `scratch_parent` (the data directory), removed afterwards.
pub fn verify(file: &Path, scratch_parent: &Path) -> Result<Verified, StoreError> {
    let started = std::time::Instant::now();
    let scratch = Scratch::create(scratch_parent, "verify")?;
    let (manifest, counts) = extract_and_check(file, &scratch.0)?;
    Ok(Verified {
        manifest,
        audit_events: counts.0,
        performance_events: counts.1,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// A fresh directory removed when dropped (unless [`Scratch::keep`] took it).
struct Scratch(PathBuf);

impl Scratch {
    fn create(parent: &Path, what: &str) -> Result<Scratch, StoreError> {
        files::private_dir(parent)
            .map_err(StoreError::io(format!("creating {}", parent.display())))?;
        remove_stale(parent, &[".verify-", ".restore-"], |p| {
            std::fs::remove_dir_all(p)
        });
        let dir = parent.join(format!(
            ".{what}-{}-{}",
            stamp(now_micros()),
            std::process::id()
        ));
        files::fresh_dir(&dir).map_err(StoreError::io(format!("creating {}", dir.display())))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Which allow-listed entry a name is.
#[derive(Debug, PartialEq, Eq)]
enum EntryKind {
    Manifest,
    Store,
    SessionKey,
    /// Relative path under `config/`.
    Config,
}

fn entry_kind(name: &str) -> Option<EntryKind> {
    match name {
        MANIFEST_ENTRY => Some(EntryKind::Manifest),
        STORE_ENTRY => Some(EntryKind::Store),
        SESSION_KEY_ENTRY => Some(EntryKind::SessionKey),
        _ => name
            .strip_prefix("config/")
            .filter(|rel| config_rel_ok(rel))
            .map(|_| EntryKind::Config),
    }
}

/// A plain relative path: segments of printable characters, none empty, `.` or `..`, no
/// backslash, at most 16 deep.
fn config_rel_ok(rel: &str) -> bool {
    rel.len() <= MAX_NAME_BYTES
        && rel.split('/').count() <= 16
        && rel.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg.chars().all(|c| !c.is_control() && c != '\\')
        })
}

fn open_archive(file: &Path) -> Result<tar::Archive<Box<dyn Read>>, StoreError> {
    let f = File::open(file).map_err(StoreError::io(format!("opening {}", file.display())))?;
    let mut r = BufReader::new(f);
    let magic = {
        use std::io::BufRead;
        r.fill_buf()
            .map_err(StoreError::io(format!("reading {}", file.display())))?
            .get(..4)
            .map(|m| m.to_vec())
            .unwrap_or_default()
    };
    if magic != [0x28, 0xb5, 0x2f, 0xfd] {
        return Err(StoreError::Invalid(format!(
            "{}: not a zstd-compressed backup (backup-….tar.zst)",
            file.display()
        )));
    }
    let dec = zstd::Decoder::with_buffer(r)
        .map_err(StoreError::io(format!("decompressing {}", file.display())))?;
    Ok(tar::Archive::new(Box::new(dec)))
}

/// Extracts `file` into `into` (an empty private directory) and checks it; returns the
/// manifest and the store copy's (audit, performance) counts. Files land at
/// `into/events.redb`, `into/state/session.key`, `into/config/…`.
fn extract_and_check(file: &Path, into: &Path) -> Result<(Manifest, (u64, u64)), StoreError> {
    let bad = |m: String| StoreError::Invalid(format!("{}: {m}", file.display()));
    let mut archive = open_archive(file)?;
    let mut entries = archive
        .entries()
        .map_err(|e| bad(format!("not a backup archive: {e}")))?;

    // The manifest comes first, so every later entry is checked against it as it streams.
    let mut first = entries
        .next()
        .ok_or_else(|| bad("empty archive".into()))?
        .map_err(|e| bad(format!("damaged archive: {e}")))?;
    let first_name = entry_name(&first).map_err(&bad)?;
    if first_name != MANIFEST_ENTRY || first.header().entry_type() != tar::EntryType::Regular {
        return Err(bad(format!(
            "the first entry is `{first_name}`, not manifest.json: not a backup this version wrote"
        )));
    }
    let mut body = Vec::new();
    (&mut first)
        .take(MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut body)
        .map_err(|e| bad(format!("damaged manifest: {e}")))?;
    if body.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(bad("the manifest is larger than 1 MiB".into()));
    }
    let manifest: Manifest =
        serde_json::from_slice(&body).map_err(|e| bad(format!("bad manifest: {e}")))?;
    check_manifest(&manifest).map_err(&bad)?;
    let declared: u64 = manifest.entries.iter().map(|e| e.bytes).sum();
    let compressed = std::fs::metadata(file).map_or(0, |m| m.len());
    let most = compressed
        .saturating_mul(MAX_EXPANSION)
        .max(EXPANSION_FLOOR);
    if declared > most {
        return Err(bad(format!(
            "refused: the manifest declares {declared} bytes, more than {MAX_EXPANSION} times the file's {compressed} (a decompression bomb?)"
        )));
    }
    files::ensure_room(into, declared).map_err(|e| bad(format!("refused: {e}")))?;

    let mut seen: HashSet<String> = HashSet::new();
    for (n, entry) in entries.enumerate() {
        if n >= MAX_ENTRIES {
            return Err(bad(format!("more than {MAX_ENTRIES} entries")));
        }
        let mut entry = entry.map_err(|e| bad(format!("damaged archive: {e}")))?;
        let name = entry_name(&entry).map_err(&bad)?;
        let kind = entry.header().entry_type();
        if kind != tar::EntryType::Regular {
            return Err(bad(format!(
                "entry `{name}` is a {kind:?}, not a regular file: refused"
            )));
        }
        match entry_kind(&name) {
            None | Some(EntryKind::Manifest) => {
                return Err(bad(format!("entry `{name}` is not allowed in a backup")))
            }
            Some(_) => {}
        }
        if !seen.insert(name.clone()) {
            return Err(bad(format!("entry `{name}` appears twice")));
        }
        let Some(m) = manifest.entries.iter().find(|m| m.name == name) else {
            return Err(bad(format!("`{name}` is not in the manifest")));
        };
        // The size the archive says this entry has (a PAX size overrides the header's).
        let size = entry.size();
        if size != m.bytes || entry.header().size().ok() != Some(size) {
            return Err(bad(format!(
                "`{name}` is {size} bytes, the manifest says {}",
                m.bytes
            )));
        }
        let target = into.join(&name);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .map_err(StoreError::io(format!("creating {}", parent.display())))?;
        }
        let out = files::fresh_file(&target)
            .map_err(StoreError::io(format!("creating {}", target.display())))?;
        let mut w = HashingWriter {
            inner: io::BufWriter::new(out),
            hasher: Sha256::new(),
            bytes: 0,
        };
        io::copy(&mut (&mut entry).take(m.bytes), &mut w)
            .map_err(|e| bad(format!("damaged entry `{name}`: {e}")))?;
        let f = w
            .inner
            .into_inner()
            .map_err(|e| bad(format!("writing `{name}`: {}", e.error())))?;
        f.sync_all()
            .map_err(StoreError::io(format!("syncing {}", target.display())))?;
        let sha = format!("{:x}", w.hasher.finalize());
        if w.bytes != m.bytes || sha != m.sha256 {
            return Err(bad(format!(
                "`{name}` does not match its checksum (manifest {}, file {sha}): the backup is damaged",
                m.sha256
            )));
        }
    }
    if let Some(missing) = manifest.entries.iter().find(|m| !seen.contains(&m.name)) {
        return Err(bad(format!(
            "`{}` is in the manifest but not the archive",
            missing.name
        )));
    }
    let counts = check_store(&into.join(STORE_ENTRY), &manifest).map_err(&bad)?;
    Ok((manifest, counts))
}

fn entry_name<R: Read>(entry: &tar::Entry<R>) -> Result<String, String> {
    let raw = entry.path_bytes();
    let name = std::str::from_utf8(&raw).map_err(|_| "an entry name is not UTF-8".to_string())?;
    if name.len() > MAX_NAME_BYTES {
        return Err("an entry name is too long".into());
    }
    Ok(name.to_string())
}

/// The manifest's own consistency: format, allow-listed unique names, sizes in range.
fn check_manifest(m: &Manifest) -> Result<(), String> {
    if m.format != FORMAT {
        return Err(format!(
            "manifest format {}, this gateway reads {FORMAT}",
            m.format
        ));
    }
    if m.schema_version != schema::SCHEMA_VERSION {
        return Err(format!(
            "store schema version {}, this gateway reads {}",
            m.schema_version,
            schema::SCHEMA_VERSION
        ));
    }
    if m.entries.len() > MAX_ENTRIES {
        return Err(format!("more than {MAX_ENTRIES} entries"));
    }
    let mut names = HashSet::new();
    for e in &m.entries {
        match entry_kind(&e.name) {
            None | Some(EntryKind::Manifest) => {
                return Err(format!(
                    "the manifest lists `{}`, which is not allowed",
                    e.name
                ))
            }
            Some(EntryKind::Store) => {}
            Some(_) if e.bytes > MAX_SMALL_ENTRY_BYTES => {
                return Err(format!("`{}` is larger than 64 MiB", e.name))
            }
            Some(_) => {}
        }
        if !names.insert(e.name.as_str()) {
            return Err(format!("the manifest lists `{}` twice", e.name));
        }
    }
    if !names.contains(STORE_ENTRY) {
        return Err("the manifest has no events.redb".into());
    }
    Ok(())
}

/// Opens the extracted store copy and checks it: redb's integrity check, the schema
/// version, no tables this version does not know, and each table's rows and digest as the
/// manifest lists them. Returns (audit, performance) counts.
fn check_store(path: &Path, m: &Manifest) -> Result<(u64, u64), String> {
    let mut db = Database::open(path).map_err(|e| format!("the store copy does not open: {e}"))?;
    match db.check_integrity() {
        Ok(true) => {}
        Ok(false) => return Err("the store copy failed redb's integrity check".into()),
        Err(e) => return Err(format!("the store copy failed redb's integrity check: {e}")),
    }
    let r = db.begin_read().map_err(|e| e.to_string())?;
    let version = match r.open_table(META) {
        Ok(t) => t
            .get("schema_version")
            .map_err(|e| e.to_string())?
            .map(|v| v.value()),
        Err(e) => return Err(format!("the store copy has no meta table: {e}")),
    };
    if version != Some(schema::SCHEMA_VERSION) {
        return Err(format!(
            "the store copy has schema version {version:?}, this gateway reads {}",
            schema::SCHEMA_VERSION
        ));
    }
    let unknown = schema::unknown_tables(&r).map_err(|e| e.to_string())?;
    if !unknown.is_empty() {
        return Err(format!(
            "the store copy has tables this version does not know: {}",
            unknown.join(", ")
        ));
    }
    let found = schema::summarize(&r).map_err(|e| e.to_string())?;
    if found != m.tables {
        let diff = found
            .iter()
            .find(|f| !m.tables.contains(f))
            .map_or("a table".to_string(), |f| format!("table `{}`", f.name));
        return Err(format!(
            "{diff} in the store copy does not match the manifest: the backup is damaged"
        ));
    }
    let rows = |n: &str| found.iter().find(|t| t.name == n).map_or(0, |t| t.rows);
    Ok((rows(AUDIT.name()), rows(PERF.name())))
}

struct HashingWriter<W: Write> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> Write for HashingWriter<W> {
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

/// Where a restore puts things.
#[derive(Debug, Clone)]
pub struct RestoreTarget {
    /// The store file (`<data_dir>/events.redb`); its directory is the data directory.
    pub store: PathBuf,
    /// The session-hash key file the config names.
    pub session_key: Option<PathBuf>,
}

/// What a restore did.
#[derive(Debug, Serialize)]
pub struct Restored {
    pub store: PathBuf,
    pub previous_store: Option<PathBuf>,
    pub session_key: Option<PathBuf>,
    pub previous_session_key: Option<PathBuf>,
    /// The backup's config and rules, for the operator to compare (never put in force).
    pub config_dir: Option<PathBuf>,
    pub audit_events: u64,
    pub performance_events: u64,
    pub tables: Vec<TableSummary>,
    pub seconds: f64,
}

/// Restores a backup into a stopped gateway's data directory. Refuses while a gateway
/// holds the store. The current store and session key are kept beside the restored ones
/// (`*.before-restore-<time>`).
pub fn restore(file: &Path, target: &RestoreTarget) -> Result<Restored, StoreError> {
    let started = std::time::Instant::now();
    let store_path = &target.store;
    if store_path.exists() {
        match Database::open(store_path) {
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(StoreError::Locked(store_path.to_path_buf()))
            }
            Err(e) => tracing::warn!(error = %e, "the current store does not open; replacing it"),
            Ok(db) => drop(db),
        }
    }
    let data_dir = store_path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let scratch = Scratch::create(&data_dir, "restore")?;
    let (manifest, (audit_events, performance_events)) = extract_and_check(file, &scratch.0)?;

    // Everything is checked; move into place, undoing earlier moves if a later one fails.
    let when = stamp(now_micros());
    let mut done: Vec<(PathBuf, PathBuf)> = Vec::new();
    let mut step = |from: &Path, to: &Path| -> Result<(), StoreError> {
        std::fs::rename(from, to).map_err(StoreError::io(format!(
            "moving {} to {}",
            from.display(),
            to.display()
        )))?;
        done.push((from.to_path_buf(), to.to_path_buf()));
        Ok(())
    };
    let moved = (|| -> Result<Restored, StoreError> {
        let previous_store = if store_path.exists() {
            let p = data_dir.join(format!("events.redb.before-restore-{when}"));
            step(store_path, &p)?;
            Some(p)
        } else {
            None
        };
        step(&scratch.0.join(STORE_ENTRY), store_path)?;
        let mut previous_session_key = None;
        let mut session_key = None;
        let extracted_key = scratch.0.join(SESSION_KEY_ENTRY);
        if let (Some(key), true) = (&target.session_key, extracted_key.exists()) {
            if let Some(dir) = key.parent() {
                files::private_dir(dir)
                    .map_err(StoreError::io(format!("creating {}", dir.display())))?;
            }
            if key.exists() {
                let p = key.with_file_name(format!(
                    "{}.before-restore-{when}",
                    key.file_name()
                        .and_then(|n| n.to_str())
                        .unwrap_or("session.key")
                ));
                step(key, &p)?;
                previous_session_key = Some(p);
            }
            step(&extracted_key, key)?;
            session_key = Some(key.clone());
        }
        let extracted_config = scratch.0.join("config");
        let config_dir = if extracted_config.is_dir() {
            let d = data_dir.join(format!("restored-{when}"));
            step(&extracted_config, &d)?;
            Some(d)
        } else {
            None
        };
        Ok(Restored {
            store: store_path.clone(),
            previous_store,
            session_key,
            previous_session_key,
            config_dir,
            audit_events,
            performance_events,
            tables: manifest.tables.clone(),
            seconds: 0.0,
        })
    })();
    match moved {
        Ok(mut r) => {
            let _ = files::sync_dir(&data_dir);
            r.seconds = started.elapsed().as_secs_f64();
            Ok(r)
        }
        Err(e) => {
            for (from, to) in done.into_iter().rev() {
                let _ = std::fs::rename(&to, &from);
            }
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names_are_allow_listed_plain_relative_paths() {
        for ok in [
            "events.redb",
            "manifest.json",
            "state/session.key",
            "config/gateway.toml",
            "config/rules/app/x.toml",
        ] {
            assert!(entry_kind(ok).is_some(), "{ok}");
        }
        for bad in [
            "/etc/passwd",
            "../events.redb",
            "config/../../x",
            "config/./x",
            "config//x",
            "config/",
            "config/a\\..\\b",
            "state/other",
            "events.redb/",
            "./events.redb",
            "config/a\u{0}b",
            "other.txt",
        ] {
            assert!(entry_kind(bad).is_none(), "{bad}");
        }
    }
}
