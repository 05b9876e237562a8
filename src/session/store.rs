//! Sessions in the event store's redb file (table `sessions`, keyed by session id, JSON
//! values), written only through the event writer thread: new, ended and suspicious
//! sessions at once, last-activity updates in batches.

use redb::ReadableTable;

use super::table::{Session, ENDED_KEPT_MICROS};
use crate::events::schema::SESSIONS;
use crate::events::store::{open_if_exists, Store, StoreError, StoreWriter};

/// Sessions to keep in memory at start: active ones, and those ended within a day.
pub fn load(store: &Store, now: u64) -> Result<Vec<Session>, StoreError> {
    scan(store, |s| {
        s.active()
            || s.ended
                .is_some_and(|e| now.saturating_sub(e) < ENDED_KEPT_MICROS)
    })
}

/// One stored session (also those no longer in memory).
pub fn get(store: &Store, id: u128) -> Result<Option<Session>, StoreError> {
    let tx = store.begin_read()?;
    let Some(table) = open_if_exists(&tx, SESSIONS)? else {
        return Ok(None);
    };
    Ok(table
        .get(id)?
        .and_then(|v| serde_json::from_slice(v.value()).ok()))
}

/// Stored sessions matching `keep` (a full scan: for the admin API, not the request path).
pub fn scan(store: &Store, keep: impl Fn(&Session) -> bool) -> Result<Vec<Session>, StoreError> {
    let tx = store.begin_read()?;
    let Some(table) = open_if_exists(&tx, SESSIONS)? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for row in table.iter()? {
        let (_, v) = row?;
        match serde_json::from_slice::<Session>(v.value()) {
            Ok(s) if keep(&s) => out.push(s),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "skipping an unreadable stored session"),
        }
    }
    Ok(out)
}

/// Writes sessions in one transaction.
pub fn save(store: &StoreWriter, sessions: &[Session]) -> Result<(), StoreError> {
    if sessions.is_empty() {
        return Ok(());
    }
    let tx = store.begin_write()?;
    {
        let mut t = tx.open_table(SESSIONS)?;
        for s in sessions {
            let bytes = serde_json::to_vec(s).map_err(|e| StoreError::Invalid(e.to_string()))?;
            t.insert(s.id, bytes.as_slice())?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// Deletes sessions that ended before `cutoff`, except suspicious ones; returns how many.
pub fn purge(store: &StoreWriter, cutoff: u64) -> Result<usize, StoreError> {
    let tx = store.begin_write()?;
    let mut n = 0;
    {
        let mut t = tx.open_table(SESSIONS)?;
        let doomed: Vec<u128> = t
            .iter()?
            .filter_map(|row| {
                let (k, v) = row.ok()?;
                let s: Session = serde_json::from_slice(v.value()).ok()?;
                (!s.active() && !s.suspicious && s.ended.is_some_and(|e| e < cutoff))
                    .then(|| k.value())
            })
            .collect();
        for id in doomed {
            t.remove(id)?;
            n += 1;
        }
    }
    tx.commit()?;
    Ok(n)
}
