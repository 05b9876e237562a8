//! Retention and archival: expired records move out of the store into compressed NDJSON
//! files, and can be put back.
//!
//! An archive is two files in the archive directory: `archive-<time>.ndjson.zst` (zstd,
//! one JSON object per line: `{"class":"audit","event":…,"investigation":…}` or
//! `{"class":"performance","event":…}`) and `archive-<time>.manifest.json` (counts, time
//! span, sha256 and size of the compressed file). The archive file and its manifest are
//! written and synced before anything is deleted from the store, so a crash in between
//! leaves the records in the store (and possibly in two archives), never in neither.
//!
//! Kept regardless of age: critical events and `session_suspicious` events until they are
//! resolved (or marked false positive) and at least [`CRITICAL_MIN`] old; records restored
//! from an archive for [`RESTORE_HOLD`] after the restore, so the next run does not move
//! them straight back out.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use redb::ReadableTable;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::model::{
    format_time, now_micros, AuditEvent, EventId, EventType, Investigation, PerfEvent, Risk,
};
use super::store::{
    decode, ip_key, Slim, Store, StoreError, StoreWriter, AUDIT, BY_IP, BY_SESSION, HOLDS,
    INVESTIGATIONS, OPEN_SEVERE, PERF, TRENDS,
};
use super::trends::{Bucket, Closed, Granularity, Trends, HOURS_KEPT, MINUTES_KEPT};

/// Critical events are kept at least this long, whatever the audit retention says.
pub const CRITICAL_MIN: Duration = Duration::from_secs(730 * 24 * 3600);
/// Restored records are left alone by retention for this long.
pub const RESTORE_HOLD: Duration = Duration::from_secs(7 * 24 * 3600);

/// How long each class of record stays in the store, and where expired records go.
#[derive(Debug, Clone)]
pub struct RetentionPolicy {
    pub audit: Duration,
    pub performance: Duration,
    /// When the archive job runs.
    pub schedule: crate::schedule::Schedule,
    pub archive_dir: PathBuf,
}

/// What one archive run wrote.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArchiveReport {
    pub file: PathBuf,
    pub created: String,
    pub sha256: String,
    pub bytes: u64,
    pub audit: u64,
    pub investigations: u64,
    pub performance: u64,
    pub oldest: String,
    pub newest: String,
}

/// What a restore put back.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    pub restored: u64,
    pub already_present: u64,
}

#[derive(Serialize, Deserialize)]
struct Line {
    class: String,
    event: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    investigation: Option<serde_json::Value>,
}

/// A file name part for `micros`: `2026-12-02T103000.123456Z`.
pub(crate) fn stamp(micros: u64) -> String {
    let micros = micros.min(super::model::MAX_TIME_MICROS);
    let t = humantime::format_rfc3339_micros(std::time::UNIX_EPOCH + Duration::from_micros(micros))
        .to_string();
    t.replace(':', "")
}

fn micros(d: Duration) -> u64 {
    d.as_micros().min(u64::MAX as u128) as u64
}

/// The manifest beside an archive file.
pub fn manifest_path(archive: &Path) -> PathBuf {
    let name = archive
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("archive");
    let base = name.strip_suffix(".ndjson.zst").unwrap_or(name);
    archive.with_file_name(format!("{base}.manifest.json"))
}

struct Expired {
    id: u128,
    raw: Vec<u8>,
    investigation: Option<Vec<u8>>,
    ip: Option<u128>,
    session: Option<String>,
}

/// Moves up to `max` expired records into one new archive. `None`: nothing has expired.
pub fn archive_chunk(
    store: &StoreWriter,
    policy: &RetentionPolicy,
    now: u64,
    max: usize,
) -> Result<Option<ArchiveReport>, StoreError> {
    let audit_cut = EventId::floor(now.saturating_sub(micros(policy.audit))).0;
    let critical_cut = now.saturating_sub(micros(CRITICAL_MIN.max(policy.audit)));
    let perf_cut = EventId::floor(now.saturating_sub(micros(policy.performance))).0;
    let nowsecs = now / 1_000_000;

    let mut audit_rows = Vec::new();
    let mut perf_rows: Vec<(u128, Vec<u8>)> = Vec::new();
    {
        let tx = store.begin_read()?;
        let audit = tx.open_table(AUDIT)?;
        let inv = tx.open_table(INVESTIGATIONS)?;
        let holds = tx.open_table(HOLDS)?;
        for row in audit.range(..audit_cut)? {
            if audit_rows.len() >= max {
                break;
            }
            let (k, v) = row?;
            let id = k.value();
            if holds.get(id)?.is_some_and(|h| h.value() > nowsecs) {
                continue;
            }
            let slim: Slim = decode(v.value())?;
            let inv_raw = inv.get(id)?.map(|g| g.value().to_vec());
            if slim.risk == Risk::Critical || slim.kind == EventType::SessionSuspicious {
                let closed = match &inv_raw {
                    Some(r) => decode::<Investigation>(r)?.status.is_closed(),
                    None => false,
                };
                if !closed || EventId(id).time_micros() >= critical_cut {
                    continue;
                }
            }
            audit_rows.push(Expired {
                id,
                raw: v.value().to_vec(),
                investigation: inv_raw,
                ip: slim.client_ip.map(ip_key),
                session: slim.session.map(|s| s.into_owned()),
            });
        }
        let perf = tx.open_table(PERF)?;
        for row in perf.range(..perf_cut)? {
            if audit_rows.len() + perf_rows.len() >= max {
                break;
            }
            let (k, v) = row?;
            if holds.get(k.value())?.is_some_and(|h| h.value() > nowsecs) {
                continue;
            }
            perf_rows.push((k.value(), v.value().to_vec()));
        }
    }
    if audit_rows.is_empty() && perf_rows.is_empty() {
        return Ok(None);
    }

    super::files::private_dir(&policy.archive_dir).map_err(StoreError::io(format!(
        "creating {}",
        policy.archive_dir.display()
    )))?;
    let name = format!("archive-{}", stamp(now));
    let file = policy.archive_dir.join(format!("{name}.ndjson.zst"));
    let tmp = policy.archive_dir.join(format!(".{name}.tmp"));
    let ioerr = |what: &str| StoreError::io(format!("{what} {}", tmp.display()));
    {
        let _ = std::fs::remove_file(&tmp);
        let f = super::files::fresh_file(&tmp).map_err(ioerr("creating"))?;
        let mut enc = zstd::Encoder::new(BufWriter::new(f), 3).map_err(ioerr("compressing"))?;
        for r in &audit_rows {
            enc.write_all(b"{\"class\":\"audit\",\"event\":")
                .and_then(|_| enc.write_all(&r.raw))
                .and_then(|_| match &r.investigation {
                    Some(i) => enc
                        .write_all(b",\"investigation\":")
                        .and_then(|_| enc.write_all(i)),
                    None => Ok(()),
                })
                .and_then(|_| enc.write_all(b"}\n"))
                .map_err(ioerr("writing"))?;
        }
        for (_, raw) in &perf_rows {
            enc.write_all(b"{\"class\":\"performance\",\"event\":")
                .and_then(|_| enc.write_all(raw))
                .and_then(|_| enc.write_all(b"}\n"))
                .map_err(ioerr("writing"))?;
        }
        let w = enc.finish().map_err(ioerr("compressing"))?;
        let f = w.into_inner().map_err(|e| StoreError::Io {
            context: format!("writing {}", tmp.display()),
            source: e.into_error(),
        })?;
        f.sync_all().map_err(ioerr("syncing"))?;
    }
    std::fs::rename(&tmp, &file).map_err(ioerr("renaming"))?;
    super::files::sync_dir(&policy.archive_dir).map_err(ioerr("syncing the directory of"))?;
    let (sha256, bytes) = sha256_file(&file)?;
    let ids = audit_rows
        .iter()
        .map(|r| r.id)
        .chain(perf_rows.iter().map(|r| r.0));
    let oldest = ids.clone().min().unwrap_or(0);
    let newest = ids.max().unwrap_or(0);
    let report = ArchiveReport {
        file: file.clone(),
        created: format_time(now),
        sha256,
        bytes,
        audit: audit_rows.len() as u64,
        investigations: audit_rows
            .iter()
            .filter(|r| r.investigation.is_some())
            .count() as u64,
        performance: perf_rows.len() as u64,
        oldest: format_time(EventId(oldest).time_micros()),
        newest: format_time(EventId(newest).time_micros()),
    };
    write_synced(
        &manifest_path(&file),
        &serde_json::to_vec_pretty(&report).unwrap_or_default(),
    )?;

    let tx = store.begin_write()?;
    {
        let mut audit = tx.open_table(AUDIT)?;
        let mut inv = tx.open_table(INVESTIGATIONS)?;
        let mut severe = tx.open_table(OPEN_SEVERE)?;
        let mut by_ip = tx.open_table(BY_IP)?;
        let mut by_s = tx.open_table(BY_SESSION)?;
        let mut holds = tx.open_table(HOLDS)?;
        let mut perf = tx.open_table(PERF)?;
        for r in &audit_rows {
            audit.remove(r.id)?;
            inv.remove(r.id)?;
            severe.remove(r.id)?;
            holds.remove(r.id)?;
            if let Some(ip) = r.ip {
                by_ip.remove((ip, r.id))?;
            }
            if let Some(s) = &r.session {
                by_s.remove((s.as_str(), r.id))?;
            }
        }
        for (id, _) in &perf_rows {
            perf.remove(*id)?;
            holds.remove(*id)?;
        }
    }
    tx.commit()?;
    tracing::info!(file = %report.file.display(), audit = report.audit, performance = report.performance, "archived expired events");
    Ok(Some(report))
}

/// Longest line an archive may hold (one record).
pub const MAX_LINE_BYTES: usize = 4 << 20;
/// Most bytes one archive may decompress to.
pub const MAX_DECOMPRESSED_BYTES: u64 = 8 << 30;
/// Largest manifest read.
const MAX_MANIFEST_BYTES: u64 = 1 << 20;

/// An archive's manifest, read with a size cap.
fn read_manifest(file: &Path) -> Result<ArchiveReport, StoreError> {
    let manifest_file = manifest_path(file);
    let f = File::open(&manifest_file).map_err(StoreError::io(format!(
        "reading {}",
        manifest_file.display()
    )))?;
    let mut raw = Vec::new();
    f.take(MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut raw)
        .map_err(StoreError::io(format!(
            "reading {}",
            manifest_file.display()
        )))?;
    if raw.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(StoreError::Invalid(format!(
            "{}: larger than 1 MiB, not an archive manifest",
            manifest_file.display()
        )));
    }
    serde_json::from_slice(&raw).map_err(|e| {
        StoreError::Invalid(format!(
            "{}: not an archive manifest: {e}",
            manifest_file.display()
        ))
    })
}

/// Reads an archive's lines with the caps above: calls `each` per non-empty line and
/// stops at the first error.
fn for_each_line(
    file: &Path,
    mut each: impl FnMut(&[u8]) -> Result<(), StoreError>,
) -> Result<u64, StoreError> {
    let bad = |m: String| StoreError::Invalid(format!("{}: {m}", file.display()));
    let f = File::open(file).map_err(StoreError::io(format!("opening {}", file.display())))?;
    let dec = zstd::Decoder::new(f)
        .map_err(StoreError::io(format!("decompressing {}", file.display())))?;
    let mut r = BufReader::new(dec.take(MAX_DECOMPRESSED_BYTES + 1));
    let mut line = Vec::new();
    let mut total = 0u64;
    let mut lines = 0u64;
    loop {
        line.clear();
        let n = (&mut r)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(|e| bad(format!("damaged: {e}")))?;
        if n == 0 {
            return Ok(lines);
        }
        total += n as u64;
        if total > MAX_DECOMPRESSED_BYTES {
            return Err(bad(format!(
                "decompresses to more than {MAX_DECOMPRESSED_BYTES} bytes: refused"
            )));
        }
        if line.len() > MAX_LINE_BYTES {
            return Err(bad(format!(
                "a line is longer than {MAX_LINE_BYTES} bytes: refused"
            )));
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        lines += 1;
        each(&line)?;
    }
}

/// One archived record, decoded and checked.
enum Archived {
    Audit(Box<AuditEvent>, Option<Investigation>),
    Perf(PerfEvent),
}

fn parse_line(file: &Path, line: &[u8]) -> Result<Archived, StoreError> {
    let bad =
        |e: serde_json::Error| StoreError::Invalid(format!("{}: bad record: {e}", file.display()));
    let l: Line = serde_json::from_slice(line).map_err(bad)?;
    match l.class.as_str() {
        "audit" => Ok(Archived::Audit(
            Box::new(serde_json::from_value(l.event).map_err(bad)?),
            l.investigation
                .map(serde_json::from_value)
                .transpose()
                .map_err(bad)?,
        )),
        "performance" => Ok(Archived::Perf(
            serde_json::from_value(l.event).map_err(bad)?,
        )),
        other => Err(StoreError::Invalid(format!(
            "{}: unknown record class `{other}`",
            file.display()
        ))),
    }
}

/// Puts an archive's records back (those not already present). Nothing is written until
/// the whole file checked out: its sha256 against the manifest, every line (at most
/// [`MAX_LINE_BYTES`], [`MAX_DECOMPRESSED_BYTES`] in all) a valid record, and as many
/// records as the manifest counts. Restored records are held from retention for `hold`.
pub fn restore(
    store: &StoreWriter,
    file: &Path,
    hold: Duration,
) -> Result<RestoreReport, StoreError> {
    let manifest = read_manifest(file)?;
    let (sha, _) = sha256_file(file)?;
    if sha != manifest.sha256 {
        return Err(StoreError::Invalid(format!(
            "{}: sha256 {sha} does not match the manifest ({}); the file is damaged",
            file.display(),
            manifest.sha256
        )));
    }
    let expected = manifest.audit + manifest.performance;
    let checked = for_each_line(file, |line| parse_line(file, line).map(drop))?;
    if checked != expected {
        return Err(StoreError::Invalid(format!(
            "{}: {checked} records, the manifest counts {expected}; the file is damaged",
            file.display()
        )));
    }
    let until = now_micros() / 1_000_000 + hold.as_secs();
    let mut report = RestoreReport {
        restored: 0,
        already_present: 0,
    };
    let mut pending: Vec<Archived> = Vec::with_capacity(10_000);
    let mut buf = Vec::new();
    let mut write = |pending: &mut Vec<Archived>, report: &mut RestoreReport| {
        let tx = store.begin_write()?;
        {
            let mut audit = tx.open_table(AUDIT)?;
            let mut inv = tx.open_table(INVESTIGATIONS)?;
            let mut severe = tx.open_table(OPEN_SEVERE)?;
            let mut by_ip = tx.open_table(BY_IP)?;
            let mut by_s = tx.open_table(BY_SESSION)?;
            let mut holds = tx.open_table(HOLDS)?;
            let mut perf = tx.open_table(PERF)?;
            for rec in pending.drain(..) {
                match rec {
                    Archived::Audit(e, i) => {
                        if audit.get(e.id.0)?.is_some() {
                            report.already_present += 1;
                            continue;
                        }
                        buf.clear();
                        super::store::encode(&mut buf, &e)?;
                        audit.insert(e.id.0, buf.as_slice())?;
                        let mut closed = false;
                        if let Some(i) = i {
                            closed = i.status.is_closed();
                            buf.clear();
                            super::store::encode(&mut buf, &i)?;
                            inv.insert(e.id.0, buf.as_slice())?;
                        }
                        if e.risk >= Risk::High && !closed {
                            severe.insert(e.id.0, ())?;
                        }
                        if let Some(ip) = e.client_ip {
                            by_ip.insert((ip_key(ip), e.id.0), ())?;
                        }
                        if let Some(s) = &e.session {
                            by_s.insert((s.as_str(), e.id.0), ())?;
                        }
                        holds.insert(e.id.0, until)?;
                    }
                    Archived::Perf(p) => {
                        if perf.get(p.id.0)?.is_some() {
                            report.already_present += 1;
                            continue;
                        }
                        buf.clear();
                        super::store::encode(&mut buf, &p)?;
                        perf.insert(p.id.0, buf.as_slice())?;
                        holds.insert(p.id.0, until)?;
                    }
                }
                report.restored += 1;
            }
        }
        tx.commit()?;
        Ok::<(), StoreError>(())
    };
    for_each_line(file, |line| {
        pending.push(parse_line(file, line)?);
        if pending.len() >= 10_000 {
            write(&mut pending, &mut report)?;
        }
        Ok(())
    })?;
    write(&mut pending, &mut report)?;
    Ok(report)
}

/// An archive in the archive directory, as its manifest describes it.
#[derive(Debug, Serialize)]
pub struct ListedArchive {
    pub name: String,
    /// False when the manifest is there but the archive file is not.
    pub present: bool,
    #[serde(flatten)]
    pub manifest: ArchiveReport,
}

/// The archives in `dir` (by their manifests), newest first; unreadable manifests are
/// skipped with a warning.
pub fn list(dir: &Path) -> Result<Vec<ListedArchive>, StoreError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(StoreError::Io {
                context: format!("reading {}", dir.display()),
                source: e,
            })
        }
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let Some(name) = e.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let Some(base) = name
            .strip_prefix("archive-")
            .and_then(|_| name.strip_suffix(".manifest.json"))
        else {
            continue;
        };
        let archive = dir.join(format!("{base}.ndjson.zst"));
        match read_manifest(&archive) {
            Ok(manifest) => out.push(ListedArchive {
                name: format!("{base}.ndjson.zst"),
                present: archive.is_file(),
                manifest,
            }),
            Err(e) => tracing::warn!(error = %e, "skipping an unreadable archive manifest"),
        }
    }
    out.sort_by(|a, b| b.name.cmp(&a.name));
    Ok(out)
}

/// Writes closed trend buckets: minute buckets merge into a stored one with the same key
/// (a restart within a minute), hour buckets replace it (they are recomputed whole).
pub fn persist_trends(store: &StoreWriter, closed: &[Closed]) -> Result<(), StoreError> {
    let tx = store.begin_write()?;
    {
        let mut t = tx.open_table(TRENDS)?;
        for c in closed {
            let key = (&*c.route, c.granularity as u8, c.bucket.start);
            let mut b = c.bucket.clone();
            if c.granularity == Granularity::Minute {
                if let Some(old) = t.get(key)? {
                    if let Ok(old) = decode::<Bucket>(old.value()) {
                        b.merge(&old);
                    }
                }
            }
            let bytes = serde_json::to_vec(&b).unwrap_or_default();
            t.insert(key, bytes.as_slice())?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// Loads the kept trend buckets into memory (at start).
pub fn load_trends(store: &Store, trends: &Trends, now_secs: u64) -> Result<usize, StoreError> {
    let tx = store.begin_read()?;
    let t = tx.open_table(TRENDS)?;
    let mut n = 0;
    for row in t.iter()? {
        let (k, v) = row?;
        let (route, g, start) = k.value();
        let (granularity, kept) = match g {
            0 => (Granularity::Minute, MINUTES_KEPT),
            _ => (Granularity::Hour, HOURS_KEPT),
        };
        if start + kept <= now_secs {
            continue;
        }
        if let Ok(b) = decode::<Bucket>(v.value()) {
            trends.load(route, granularity, b);
            n += 1;
        }
    }
    Ok(n)
}

/// Deletes trend buckets past their keep time.
pub fn prune_trends(store: &StoreWriter, now_secs: u64) -> Result<u64, StoreError> {
    let tx = store.begin_write()?;
    let mut n = 0;
    {
        let mut t = tx.open_table(TRENDS)?;
        let old: Vec<(String, u8, u64)> = t
            .iter()?
            .filter_map(|r| r.ok())
            .map(|(k, _)| {
                let (r, g, s) = k.value();
                (r.to_string(), g, s)
            })
            .filter(|(_, g, s)| s + if *g == 0 { MINUTES_KEPT } else { HOURS_KEPT } <= now_secs)
            .collect();
        for (r, g, s) in old {
            t.remove((r.as_str(), g, s))?;
            n += 1;
        }
    }
    tx.commit()?;
    Ok(n)
}

/// sha256 (hex) and size of a file.
pub(crate) fn sha256_file(path: &Path) -> Result<(String, u64), StoreError> {
    let mut f = File::open(path).map_err(StoreError::io(format!("opening {}", path.display())))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .map_err(StoreError::io(format!("reading {}", path.display())))?;
        if n == 0 {
            break;
        }
        total += n as u64;
        h.update(&buf[..n]);
    }
    Ok((format!("{:x}", h.finalize()), total))
}

/// Writes `bytes` to `path` through a synced temporary file and a rename.
pub(crate) fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp = path.with_extension("tmp");
    let err = StoreError::io(format!("writing {}", path.display()));
    (|| {
        let _ = std::fs::remove_file(&tmp);
        let mut f = super::files::fresh_file(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => super::files::sync_dir(dir),
            _ => Ok(()),
        }
    })()
    .map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::model::Severity;
    use crate::events::sink::Record;

    fn old_perf(age: Duration, n: u64) -> Record {
        let time = now_micros() - micros(age) + n;
        Record::Perf(PerfEvent {
            id: EventId::new(time),
            time,
            route: "app".into(),
            method: "GET".into(),
            host: "example.com".into(),
            path: format!("/items/{n}"),
            status: 200,
            total_ms: 1500.0,
            upstream_ms: Some(1490.0),
            gateway_ms: 10.0,
            threshold_ms: 1000.0,
            severity: Severity::Warning,
            request_id: "r".into(),
            client_ip: [192, 0, 2, 1].into(),
        })
    }

    /// Steady traffic with retention on: pages freed by archiving are reused, so after a
    /// few rounds the store file stops growing.
    #[test]
    fn store_file_stops_growing_when_retention_keeps_up() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(Store::open(&dir.path().join("events.redb")).unwrap())
            .claim_writer()
            .unwrap();
        let policy = RetentionPolicy {
            audit: Duration::from_secs(3600),
            performance: Duration::from_secs(3600),
            schedule: crate::schedule::Schedule::Every(Duration::from_secs(3600)),
            archive_dir: dir.path().join("archive"),
        };
        let mut buf = Vec::new();
        let mut sizes = Vec::new();
        for round in 0..12u64 {
            let batch: Vec<Record> = (0..5_000)
                .map(|i| old_perf(Duration::from_secs(7200), round * 10_000 + i))
                .collect();
            store.write_batch(&batch, &mut buf).unwrap();
            let r = archive_chunk(&store, &policy, now_micros(), 50_000)
                .unwrap()
                .unwrap();
            assert_eq!(r.performance, 5_000);
            sizes.push(std::fs::metadata(store.path()).unwrap().len());
        }
        assert_eq!(store.counts().unwrap().1, 0);
        assert!(
            sizes[11] <= sizes[3],
            "the store kept growing under retention: {sizes:?}"
        );
    }
}
