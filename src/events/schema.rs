//! Every table of the store file (`<data_dir>/events.redb`), declared in one place.
//!
//! Backup, verify, restore and any future migration iterate [`ALL`]: a table declared here
//! is copied, counted and checked without more code, and a table written to the file but
//! missing from [`ALL`] makes [`unknown_tables`] (called by verify) fail, so a backup can
//! never silently leave state behind. Values are JSON unless the type says otherwise; keys
//! that are event ids sort by time.
//!
//! Cost: [`AnyTable::copy_into`] and [`AnyTable::summary`] read every row once (a backup of
//! a store with a million events reads it twice: copy, then the manifest digest of the
//! copy). Memory: one row at a time.

use redb::{
    Key, ReadTransaction, ReadableTable, ReadableTableMetadata, TableDefinition, TableHandle,
    Value, WriteTransaction,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::store::{open_if_exists, StoreError};

/// `"schema_version"` → the layout version of this file ([`SCHEMA_VERSION`]).
pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Event id → audit event (JSON), written once, never changed.
pub const AUDIT: TableDefinition<u128, &[u8]> = TableDefinition::new("audit_events");
/// Event id → investigation state of that audit event (status, notes, history).
pub const INVESTIGATIONS: TableDefinition<u128, &[u8]> = TableDefinition::new("investigations");
/// Event id → performance record (JSON).
pub const PERF: TableDefinition<u128, &[u8]> = TableDefinition::new("perf_events");
/// (client IP as IPv6 bits, event id) → (): audit events by address.
pub const BY_IP: TableDefinition<(u128, u128), ()> = TableDefinition::new("audit_by_ip");
/// (session hash, event id) → (): audit events by session.
pub const BY_SESSION: TableDefinition<(&str, u128), ()> = TableDefinition::new("audit_by_session");
/// Event id → (): high and critical audit events not yet resolved.
pub const OPEN_SEVERE: TableDefinition<u128, ()> = TableDefinition::new("open_severe");
/// (route, granularity 0 minute / 1 hour, bucket start seconds) → latency histogram.
pub const TRENDS: TableDefinition<(&str, u8, u64), &[u8]> = TableDefinition::new("trends");
/// Event id restored from an archive → seconds until which retention leaves it alone.
pub const HOLDS: TableDefinition<u128, u64> = TableDefinition::new("retention_holds");
/// Client IP (IPv6 bits) → ban record: active bans and expired ones kept for repeat
/// offenders.
pub const BANS: TableDefinition<u128, &[u8]> = TableDefinition::new("bans");
/// Rule id → IP rule added through the admin API (ids are time-ordered).
pub const IP_RULES: TableDefinition<&str, &[u8]> = TableDefinition::new("ip_rules");
/// Session id → session record: active, recently ended and suspicious sessions.
pub const SESSIONS: TableDefinition<u128, &[u8]> = TableDefinition::new("sessions");

/// The layout version written to [`META`]; a store with another one is refused.
pub const SCHEMA_VERSION: u64 = 1;

/// Every table, in the order backups copy them.
pub static ALL: &[&dyn AnyTable] = &[
    &META,
    &AUDIT,
    &INVESTIGATIONS,
    &PERF,
    &BY_IP,
    &BY_SESSION,
    &OPEN_SEVERE,
    &TRENDS,
    &HOLDS,
    &BANS,
    &IP_RULES,
    &SESSIONS,
];

/// One row as (key bytes, value bytes).
pub type RawRow = (Vec<u8>, Vec<u8>);

/// Row count and digest of one table's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableSummary {
    pub name: String,
    pub rows: u64,
    /// sha256 over every (key, value) in key order, each length-prefixed.
    pub sha256: String,
}

/// What backup and restore need of a table, whatever its key and value types.
pub trait AnyTable: Sync {
    fn table_name(&self) -> &str;
    /// Creates the table if absent (tables exist only after their first write).
    fn create(&self, tx: &WriteTransaction) -> Result<(), StoreError>;
    /// Copies every row from `from` into the same table in `to`; returns the row count.
    fn copy_into(&self, from: &ReadTransaction, to: &WriteTransaction) -> Result<u64, StoreError>;
    /// Every row as (key bytes, value bytes), in key order (for comparisons in tests and
    /// tools; reads the whole table into memory).
    fn raw_rows(&self, tx: &ReadTransaction) -> Result<Vec<RawRow>, StoreError>;
    /// Row count and content digest (an absent table is empty).
    fn summary(&self, tx: &ReadTransaction) -> Result<TableSummary, StoreError>;
}

impl<K: Key + Sync + 'static, V: Value + Sync + 'static> AnyTable
    for TableDefinition<'static, K, V>
{
    fn table_name(&self) -> &str {
        TableHandle::name(self)
    }

    fn create(&self, tx: &WriteTransaction) -> Result<(), StoreError> {
        tx.open_table(*self)?;
        Ok(())
    }

    fn copy_into(&self, from: &ReadTransaction, to: &WriteTransaction) -> Result<u64, StoreError> {
        let mut dst = to.open_table(*self)?;
        let Some(src) = open_if_exists(from, *self)? else {
            return Ok(0);
        };
        let mut n = 0;
        for row in src.iter()? {
            let (k, v) = row?;
            dst.insert(k.value(), v.value())?;
            n += 1;
        }
        Ok(n)
    }

    fn raw_rows(&self, tx: &ReadTransaction) -> Result<Vec<RawRow>, StoreError> {
        let Some(t) = open_if_exists(tx, *self)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for row in t.iter()? {
            let (k, v) = row?;
            out.push((
                K::as_bytes(&k.value()).as_ref().to_vec(),
                V::as_bytes(&v.value()).as_ref().to_vec(),
            ));
        }
        Ok(out)
    }

    fn summary(&self, tx: &ReadTransaction) -> Result<TableSummary, StoreError> {
        let mut h = Sha256::new();
        let mut rows = 0;
        if let Some(t) = open_if_exists(tx, *self)? {
            rows = t.len()?;
            for row in t.iter()? {
                let (k, v) = row?;
                let kv = k.value();
                let kb = K::as_bytes(&kv);
                let vv = v.value();
                let vb = V::as_bytes(&vv);
                h.update((kb.as_ref().len() as u64).to_le_bytes());
                h.update(kb.as_ref());
                h.update((vb.as_ref().len() as u64).to_le_bytes());
                h.update(vb.as_ref());
            }
        }
        Ok(TableSummary {
            name: self.table_name().to_string(),
            rows,
            sha256: format!("{:x}", h.finalize()),
        })
    }
}

/// Summaries of every table in [`ALL`] order.
pub fn summarize(tx: &ReadTransaction) -> Result<Vec<TableSummary>, StoreError> {
    ALL.iter().map(|t| t.summary(tx)).collect()
}

/// Tables present in the file that [`ALL`] does not declare (a file from another version,
/// or state this version would not back up).
pub fn unknown_tables(tx: &ReadTransaction) -> Result<Vec<String>, StoreError> {
    let mut out = Vec::new();
    for t in tx.list_tables()? {
        if !ALL.iter().any(|d| d.table_name() == t.name()) {
            out.push(t.name().to_string());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_has_one_unique_name() {
        let names: Vec<&str> = ALL.iter().map(|t| t.table_name()).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len());
    }
}
