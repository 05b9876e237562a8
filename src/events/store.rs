//! The event store: one redb file (`<data_dir>/events.redb`) and the queries over it.
//!
//! The tables are declared in [`super::schema`] (keys are event ids, so writing a record
//! twice is harmless).
//!
//! Writing needs a [`StoreWriter`]: one per open store, claimed once ([`Store::claim_writer`])
//! by the writer thread ([`super::writer`]), or by a one-shot command that opened the file
//! itself. Every write (events, investigations, bans, IP rules, sessions, archive runs) goes
//! through it. Reads open their own read transaction on any thread and see a consistent
//! snapshot. List queries walk ids newest
//! first and examine at most [`SCAN_BUDGET`] rows per call: a page may come back short with
//! a cursor to continue from, so no single request can pin a thread on a huge store.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use redb::{
    Database, Durability, ReadTransaction, ReadableTable, ReadableTableMetadata, TableDefinition,
    WriteTransaction,
};
use serde::Deserialize;

use super::model::{
    AuditEvent, EventId, EventType, Investigation, Patch, PatchError, PerfEvent, Risk, Severity,
    Status,
};
use super::sink::Record;

pub use super::schema::SCHEMA_VERSION;
pub(crate) use super::schema::{
    AUDIT, BY_IP, BY_SESSION, HOLDS, INVESTIGATIONS, META, OPEN_SEVERE, PERF, TRENDS,
};

/// redb's page cache (its default is 1 GiB): bounds the store's share of resident memory.
pub const CACHE_BYTES: usize = 32 * 1024 * 1024;
/// Most rows one list or export call examines before answering with a cursor.
pub const SCAN_BUDGET: usize = 200_000;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the event store {0} is in use by another process (is the gateway running?)")]
    Locked(PathBuf),
    #[error("event store: {0}")]
    Db(Box<redb::Error>),
    #[error("event store {path}: schema version {found}, this gateway reads {SCHEMA_VERSION}")]
    Schema { path: PathBuf, found: u64 },
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(Box::new(e.into()))
            }
        }
    )*};
}
from_redb!(
    redb::Error,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::DatabaseError
);

impl StoreError {
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreError {
        let context = context.into();
        move |source| StoreError::Io { context, source }
    }
}

/// Opens `def` in a read transaction; `None` when nothing was ever written to it (a
/// table only exists after its first write).
pub fn open_if_exists<K: redb::Key + 'static, V: redb::Value + 'static>(
    tx: &ReadTransaction,
    def: TableDefinition<K, V>,
) -> Result<Option<redb::ReadOnlyTable<K, V>>, StoreError> {
    match tx.open_table(def) {
        Ok(t) => Ok(Some(t)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// An IP address as an index key (IPv4 as IPv4-mapped IPv6).
pub(crate) fn ip_key(ip: IpAddr) -> u128 {
    let v6: Ipv6Addr = match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    u128::from(v6)
}

/// The fields of an audit event that filters and indexes need, decoded without the rest.
#[derive(Deserialize)]
pub(crate) struct Slim<'a> {
    #[serde(rename = "type")]
    pub kind: EventType,
    pub risk: Risk,
    #[serde(default)]
    pub client_ip: Option<IpAddr>,
    #[serde(default, borrow)]
    pub route: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    pub user: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    pub session: Option<std::borrow::Cow<'a, str>>,
}

/// Filters for listing and exporting audit events (all optional, combined with AND).
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub kind: Option<EventType>,
    pub risk: Option<Risk>,
    pub status: Option<Status>,
    pub ip: Option<IpAddr>,
    pub user: Option<String>,
    pub route: Option<String>,
    /// Microseconds since the epoch, inclusive.
    pub since: Option<u64>,
    /// Microseconds since the epoch, inclusive.
    pub until: Option<u64>,
}

/// Filters for performance records.
#[derive(Debug, Clone, Default)]
pub struct PerfFilter {
    pub route: Option<String>,
    pub severity: Option<Severity>,
    pub since: Option<u64>,
    pub until: Option<u64>,
}

/// One page of a list: items newest first, and where to continue (`None`: the end).
#[derive(Debug)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<EventId>,
}

/// An audit event with its investigation (default state when never touched).
#[derive(Debug, Clone, serde::Serialize)]
pub struct EventWithState {
    #[serde(flatten)]
    pub event: AuditEvent,
    pub investigation: Investigation,
}

/// Counts over a window, for `GET /stats`.
#[derive(Debug, Default, serde::Serialize)]
pub struct Stats {
    pub total: u64,
    pub by_type: HashMap<&'static str, u64>,
    pub by_risk: HashMap<&'static str, u64>,
    pub by_status: HashMap<&'static str, u64>,
    /// Unresolved high and critical events in the whole store.
    pub open_high_and_critical: u64,
    pub top_blocked_ips: Vec<(IpAddr, u64)>,
    pub performance_events: u64,
    /// Backup and archive failures in the window, newest first (at most 20).
    pub task_failures: Vec<AuditEvent>,
    /// Events per risk (low, medium, high, critical) in consecutive buckets of
    /// `timeline_bucket_micros` from `since` (at most [`TIMELINE_BUCKETS`]).
    pub timeline: Vec<[u64; 4]>,
    pub timeline_bucket_micros: u64,
    /// The WAF rules behind `waf_blocked` and `waf_detected` events, most first (at most 10).
    pub top_rules: Vec<(String, u64)>,
}

/// The most buckets a stats timeline has.
pub const TIMELINE_BUCKETS: u64 = 48;

/// A bucket width (one of 1, 5, 15, 30 minutes, 1, 3, 6, 12 hours, 1 day, 1 week) that
/// splits `span` microseconds into at most [`TIMELINE_BUCKETS`].
pub fn timeline_bucket(span: u64) -> u64 {
    const MINUTE: u64 = 60_000_000;
    [1, 5, 15, 30, 60, 180, 360, 720, 1440, 10080]
        .iter()
        .map(|m| m * MINUTE)
        .find(|b| span.div_ceil(*b) <= TIMELINE_BUCKETS)
        .unwrap_or(span.div_ceil(TIMELINE_BUCKETS).max(1))
}

/// Just the rule ids of an event.
#[derive(Deserialize)]
struct RuleIds {
    #[serde(default)]
    rule_ids: Vec<String>,
}

/// The event store.
pub struct Store {
    db: Database,
    path: PathBuf,
    writer_claimed: AtomicBool,
}

/// The right to write a store: at most one exists per open [`Store`] (see
/// [`Store::claim_writer`]); reads go through [`std::ops::Deref`] to the store.
pub struct StoreWriter {
    store: Arc<Store>,
}

impl std::ops::Deref for StoreWriter {
    type Target = Store;
    fn deref(&self) -> &Store {
        &self.store
    }
}

impl Store {
    /// Opens (creating if needed) the store at `path`. A store left by a killed process is
    /// repaired by redb on open.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            super::files::private_dir(dir)
                .map_err(StoreError::io(format!("creating {}", dir.display())))?;
        }
        let db = match Database::builder().set_cache_size(CACHE_BYTES).create(path) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(StoreError::Locked(path.to_path_buf()))
            }
            Err(e) => return Err(e.into()),
        };
        super::files::restrict(path, 0o600)
            .map_err(StoreError::io(format!("restricting {}", path.display())))?;
        let store = Store {
            db,
            path: path.to_path_buf(),
            writer_claimed: AtomicBool::new(false),
        };
        store.init()?;
        Ok(store)
    }

    fn init(&self) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        {
            let mut meta = tx.open_table(META)?;
            let found = meta.get("schema_version")?.map(|v| v.value());
            match found {
                None => {
                    meta.insert("schema_version", SCHEMA_VERSION)?;
                }
                Some(SCHEMA_VERSION) => {}
                Some(found) => {
                    return Err(StoreError::Schema {
                        path: self.path.clone(),
                        found,
                    })
                }
            }
        }
        for t in super::schema::ALL {
            t.create(&tx)?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The one writer of this store; `None` once it was claimed. The event subsystem claims
    /// it for its writer thread; a one-shot command that opened the file claims it itself.
    pub fn claim_writer(self: &Arc<Self>) -> Option<StoreWriter> {
        if self.writer_claimed.swap(true, Ordering::AcqRel) {
            return None;
        }
        Some(StoreWriter {
            store: self.clone(),
        })
    }

    pub(crate) fn begin_read(&self) -> Result<ReadTransaction, StoreError> {
        Ok(self.db.begin_read()?)
    }

    /// One audit event and its investigation.
    pub fn get(&self, id: EventId) -> Result<Option<EventWithState>, StoreError> {
        let tx = self.begin_read()?;
        let audit = tx.open_table(AUDIT)?;
        let Some(raw) = audit.get(id.0)? else {
            return Ok(None);
        };
        let event: AuditEvent = decode(raw.value())?;
        let inv = tx.open_table(INVESTIGATIONS)?;
        let investigation = match inv.get(id.0)? {
            Some(v) => decode(v.value())?,
            None => Investigation::default(),
        };
        Ok(Some(EventWithState {
            event,
            investigation,
        }))
    }

    /// Events sharing the client IP or session of `event` within `window_micros` of it,
    /// newest first (at most `limit`), plus the ones an operator linked.
    pub fn related(
        &self,
        event: &EventWithState,
        window_micros: u64,
        limit: usize,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        let tx = self.begin_read()?;
        let audit = tx.open_table(AUDIT)?;
        let lo = EventId::floor(event.event.time.saturating_sub(window_micros)).0;
        let hi = EventId::floor(event.event.time.saturating_add(window_micros + 1)).0;
        let mut ids: Vec<u128> = Vec::new();
        if let Some(ip) = event.event.client_ip {
            let by_ip = tx.open_table(BY_IP)?;
            let k = ip_key(ip);
            for row in by_ip.range((k, lo)..(k, hi))?.rev().take(limit + 1) {
                ids.push(row?.0.value().1);
            }
        }
        if let Some(s) = &event.event.session {
            let by_s = tx.open_table(BY_SESSION)?;
            for row in by_s
                .range((s.as_str(), lo)..(s.as_str(), hi))?
                .rev()
                .take(limit + 1)
            {
                ids.push(row?.0.value().1);
            }
        }
        ids.extend(event.investigation.related.iter().map(|i| i.0));
        ids.sort_unstable_by(|a, b| b.cmp(a));
        ids.dedup();
        let mut out = Vec::new();
        for id in ids.into_iter().filter(|i| *i != event.event.id.0) {
            if out.len() >= limit {
                break;
            }
            if let Some(v) = audit.get(id)? {
                out.push(decode(v.value())?);
            }
        }
        Ok(out)
    }

    /// Lists audit events matching `f`, newest first, starting below `cursor`.
    pub fn list_audit(
        &self,
        f: &AuditFilter,
        cursor: Option<EventId>,
        limit: usize,
    ) -> Result<Page<EventWithState>, StoreError> {
        let tx = self.begin_read()?;
        let audit = tx.open_table(AUDIT)?;
        let inv = tx.open_table(INVESTIGATIONS)?;
        let (lo, hi) = id_range(f.since, f.until, cursor);
        let mut items = Vec::new();
        let mut examined = 0usize;
        let mut last = None;
        let mut consider = |id: u128, raw: &[u8]| -> Result<bool, StoreError> {
            examined += 1;
            last = Some(EventId(id));
            let slim: Slim = decode(raw)?;
            if f.kind.is_some_and(|k| k != slim.kind)
                || f.risk.is_some_and(|r| r != slim.risk)
                || f.ip.is_some_and(|ip| Some(ip) != slim.client_ip)
                || f.user
                    .as_deref()
                    .is_some_and(|u| slim.user.as_deref() != Some(u))
                || f.route
                    .as_deref()
                    .is_some_and(|r| slim.route.as_deref() != Some(r))
            {
                return Ok(examined < SCAN_BUDGET);
            }
            let investigation: Investigation = match inv.get(id)? {
                Some(v) => decode(v.value())?,
                None => Investigation::default(),
            };
            if f.status.is_some_and(|s| s != investigation.status) {
                return Ok(examined < SCAN_BUDGET);
            }
            items.push(EventWithState {
                event: decode(raw)?,
                investigation,
            });
            Ok(items.len() < limit && examined < SCAN_BUDGET)
        };
        let mut exhausted = true;
        if let Some(ip) = f.ip {
            let by_ip = tx.open_table(BY_IP)?;
            let k = ip_key(ip);
            for row in by_ip.range((k, lo)..(k, hi))?.rev() {
                let id = row?.0.value().1;
                if let Some(raw) = audit.get(id)? {
                    if !consider(id, raw.value())? {
                        exhausted = false;
                        break;
                    }
                }
            }
        } else {
            for row in audit.range(lo..hi)?.rev() {
                let (k, v) = row?;
                if !consider(k.value(), v.value())? {
                    exhausted = false;
                    break;
                }
            }
        }
        Ok(Page {
            items,
            next_cursor: if exhausted { None } else { last },
        })
    }

    /// Lists performance records matching `f`, newest first, starting below `cursor`.
    pub fn list_perf(
        &self,
        f: &PerfFilter,
        cursor: Option<EventId>,
        limit: usize,
    ) -> Result<Page<PerfEvent>, StoreError> {
        let tx = self.begin_read()?;
        let perf = tx.open_table(PERF)?;
        let (lo, hi) = id_range(f.since, f.until, cursor);
        let mut items = Vec::new();
        let mut examined = 0usize;
        let mut next_cursor = None;
        for row in perf.range(lo..hi)?.rev() {
            let (k, v) = row?;
            examined += 1;
            let p: PerfEvent = decode(v.value())?;
            if f.route.as_deref().is_none_or(|r| r == p.route)
                && f.severity.is_none_or(|s| s == p.severity)
            {
                items.push(p);
            }
            if items.len() >= limit || examined >= SCAN_BUDGET {
                next_cursor = Some(EventId(k.value()));
                break;
            }
        }
        Ok(Page { items, next_cursor })
    }

    /// Counts by type, risk and status over `[since, until]`, the open high and critical
    /// events overall, and the addresses most often blocked in the window.
    pub fn stats(&self, since: u64, until: u64) -> Result<Stats, StoreError> {
        let tx = self.begin_read()?;
        let audit = tx.open_table(AUDIT)?;
        let inv = tx.open_table(INVESTIGATIONS)?;
        let mut st = Stats::default();
        let mut blocked: HashMap<IpAddr, u64> = HashMap::new();
        let mut rules: HashMap<String, u64> = HashMap::new();
        let bucket = timeline_bucket(until.saturating_sub(since).max(1));
        st.timeline_bucket_micros = bucket;
        st.timeline = vec![[0; 4]; (until.saturating_sub(since).max(1)).div_ceil(bucket) as usize];
        let (lo, hi) = id_range(Some(since), Some(until), None);
        for row in audit.range(lo..hi)? {
            let (k, v) = row?;
            let slim: Slim = decode(v.value())?;
            st.total += 1;
            let at = EventId(k.value()).time_micros().saturating_sub(since) / bucket;
            if let Some(b) = st.timeline.get_mut(at as usize) {
                b[slim.risk as usize] += 1;
            }
            if matches!(slim.kind, EventType::WafBlocked | EventType::WafDetected) {
                for r in decode::<RuleIds>(v.value())?.rule_ids {
                    *rules.entry(r).or_default() += 1;
                }
            }
            *st.by_type.entry(slim.kind.as_str()).or_default() += 1;
            *st.by_risk.entry(slim.risk.as_str()).or_default() += 1;
            let status = match inv.get(k.value())? {
                Some(v) => decode::<Investigation>(v.value())?.status,
                None => Status::Open,
            };
            *st.by_status.entry(status.as_str()).or_default() += 1;
            if matches!(
                slim.kind,
                EventType::BackupFailed | EventType::ArchiveFailed
            ) {
                st.task_failures.push(decode(v.value())?);
            }
            if matches!(
                slim.kind,
                EventType::IpBlocked
                    | EventType::IpBanned
                    | EventType::WafBlocked
                    | EventType::RateLimited
                    | EventType::BruteForceDetected
            ) {
                if let Some(ip) = slim.client_ip {
                    *blocked.entry(ip).or_default() += 1;
                }
            }
        }
        let mut top: Vec<(IpAddr, u64)> = blocked.into_iter().collect();
        top.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        top.truncate(10);
        st.top_blocked_ips = top;
        let mut top: Vec<(String, u64)> = rules.into_iter().collect();
        top.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        top.truncate(10);
        st.top_rules = top;
        st.task_failures.reverse();
        st.task_failures.truncate(20);
        st.open_high_and_critical = tx.open_table(OPEN_SEVERE)?.len()?;
        st.performance_events = tx.open_table(PERF)?.range(lo..hi)?.count() as u64;
        Ok(st)
    }

    /// Row counts of the main tables (audit, performance, investigations).
    pub fn counts(&self) -> Result<(u64, u64, u64), StoreError> {
        let tx = self.begin_read()?;
        Ok((
            tx.open_table(AUDIT)?.len()?,
            tx.open_table(PERF)?.len()?,
            tx.open_table(INVESTIGATIONS)?.len()?,
        ))
    }
}

impl StoreWriter {
    /// A durable write transaction.
    pub fn begin_write(&self) -> Result<WriteTransaction, StoreError> {
        let mut tx = self.store.db.begin_write()?;
        tx.set_durability(Durability::Immediate);
        Ok(tx)
    }

    /// The store this writer writes.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Writes records in one durable transaction. `buf` is scratch space for encoding.
    pub fn write_batch(&self, records: &[Record], buf: &mut Vec<u8>) -> Result<(), StoreError> {
        let tx = self.begin_write()?;
        {
            let mut audit = tx.open_table(AUDIT)?;
            let mut perf = tx.open_table(PERF)?;
            let mut by_ip = tx.open_table(BY_IP)?;
            let mut by_session = tx.open_table(BY_SESSION)?;
            let mut severe = tx.open_table(OPEN_SEVERE)?;
            for r in records {
                buf.clear();
                match r {
                    Record::Audit(e) => {
                        encode(buf, e)?;
                        audit.insert(e.id.0, buf.as_slice())?;
                        if let Some(ip) = e.client_ip {
                            by_ip.insert((ip_key(ip), e.id.0), ())?;
                        }
                        if let Some(s) = &e.session {
                            by_session.insert((s.as_str(), e.id.0), ())?;
                        }
                        if e.risk >= Risk::High {
                            severe.insert(e.id.0, ())?;
                        }
                    }
                    Record::Perf(p) => {
                        encode(buf, p)?;
                        perf.insert(p.id.0, buf.as_slice())?;
                    }
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Applies an operator's change to an investigation.
    pub(crate) fn patch(&self, id: EventId, patch: &Patch) -> Result<Investigation, PatchOutcome> {
        let tx = self.begin_write()?;
        let inv = {
            let audit = tx.open_table(AUDIT)?;
            let Some(raw) = audit.get(id.0)? else {
                return Err(PatchOutcome::Refused(PatchError::NotFound(id)));
            };
            let slim: Slim = decode(raw.value())?;
            for r in &patch.related {
                if audit.get(r.0)?.is_none() {
                    return Err(PatchOutcome::Refused(PatchError::Invalid(format!(
                        "related event {r} does not exist"
                    ))));
                }
            }
            let mut table = tx.open_table(INVESTIGATIONS)?;
            let mut inv: Investigation = match table.get(id.0)? {
                Some(v) => decode(v.value())?,
                None => Investigation::default(),
            };
            inv.apply(patch, super::model::now_micros())
                .map_err(PatchOutcome::Refused)?;
            let bytes = serde_json::to_vec(&inv)
                .map_err(|e| StoreError::Invalid(format!("encoding: {e}")))?;
            table.insert(id.0, bytes.as_slice())?;
            let mut severe = tx.open_table(OPEN_SEVERE)?;
            if slim.risk >= Risk::High {
                if inv.status.is_closed() {
                    severe.remove(id.0)?;
                } else {
                    severe.insert(id.0, ())?;
                }
            }
            inv
        };
        tx.commit()?;
        Ok(inv)
    }
}

/// A patch that did not apply: refused (the operator's input), failed (the store), or not
/// attempted (the writer was busy).
#[derive(Debug)]
pub enum PatchOutcome {
    Refused(PatchError),
    Failed(StoreError),
    /// The writer's queue was full; nothing changed.
    Busy,
}

impl<E: Into<StoreError>> From<E> for PatchOutcome {
    fn from(e: E) -> Self {
        PatchOutcome::Failed(e.into())
    }
}

/// The id range `[lo, hi)` for a time window and a cursor (exclusive upper bound).
fn id_range(since: Option<u64>, until: Option<u64>, cursor: Option<EventId>) -> (u128, u128) {
    let lo = since.map_or(0, |s| EventId::floor(s).0);
    let mut hi = until.map_or(u128::MAX, |u| EventId::floor(u.saturating_add(1)).0);
    if let Some(c) = cursor {
        hi = hi.min(c.0);
    }
    (lo, hi.max(lo))
}

pub(crate) fn encode<T: serde::Serialize>(buf: &mut Vec<u8>, v: &T) -> Result<(), StoreError> {
    serde_json::to_writer(buf, v).map_err(|e| StoreError::Invalid(format!("encoding: {e}")))
}

pub(crate) fn decode<'a, T: Deserialize<'a>>(raw: &'a [u8]) -> Result<T, StoreError> {
    serde_json::from_slice(raw).map_err(|e| StoreError::Invalid(format!("corrupt record: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_has_exactly_one_writer() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("events.redb")).unwrap());
        let w = store
            .claim_writer()
            .expect("the first claim gets the writer");
        assert!(
            store.claim_writer().is_none(),
            "a second writer was handed out"
        );
        drop(w);
        assert!(
            store.claim_writer().is_none(),
            "the right to write is not handed out again"
        );
    }
}
