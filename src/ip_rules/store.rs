//! Rules added through the admin API, kept in the event store's redb file (table
//! `ip_rules`, keyed by rule id; ids are time-ordered, so key order is creation order).
//! Written only through the store's one [`StoreWriter`] (the event writer thread).

use redb::ReadableTable;

use super::RuleSpec;
use crate::events::schema::IP_RULES;
use crate::events::store::{Store, StoreError, StoreWriter};

/// Every API rule, in creation order.
pub fn load_dynamic(store: &Store) -> Result<Vec<RuleSpec>, StoreError> {
    let tx = store.begin_read()?;
    let Some(table) = crate::events::store::open_if_exists(&tx, IP_RULES)? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for row in table.iter()? {
        let (_, v) = row?;
        out.push(
            serde_json::from_slice(v.value())
                .map_err(|e| StoreError::Invalid(format!("corrupt IP rule: {e}")))?,
        );
    }
    Ok(out)
}

/// Inserts or replaces an API rule.
pub fn save_dynamic(store: &StoreWriter, rule: &RuleSpec) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec(rule).map_err(|e| StoreError::Invalid(e.to_string()))?;
    let tx = store.begin_write()?;
    tx.open_table(IP_RULES)?
        .insert(rule.id.as_str(), bytes.as_slice())?;
    tx.commit()?;
    Ok(())
}

/// Deletes an API rule; false when there was none.
pub fn remove_dynamic(store: &StoreWriter, id: &str) -> Result<bool, StoreError> {
    let tx = store.begin_write()?;
    let existed = tx.open_table(IP_RULES)?.remove(id)?.is_some();
    tx.commit()?;
    Ok(existed)
}
