//! A keyed state store for governor with a hard cap on the number of keys.
//!
//! Each key holds one GCRA "theoretical arrival time" (an `AtomicU64`), updated with a
//! compare-and-swap, as governor's own in-memory state does. When the store holds `cap`
//! keys, a key it has never seen shares one overflow state instead of getting its own: a
//! flood of new addresses is throttled as one client, memory stays bounded, and a key that
//! is already tracked (possibly being throttled) keeps its own state. The sweeper drops only
//! keys whose state is indistinguishable from a fresh one (`retain_recent`), so a throttled
//! key is never reset.

use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use governor::nanos::Nanos;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::state::StateStore;

/// Bytes one tracked key costs (key, state, and the map's bookkeeping), for the
/// documented memory bound.
pub const BYTES_PER_KEY: usize = 64;

pub struct CappedStore {
    map: DashMap<u128, AtomicU64>,
    cap: usize,
    overflow: AtomicU64,
}

impl CappedStore {
    pub fn new(cap: usize) -> CappedStore {
        CappedStore {
            map: DashMap::new(),
            cap,
            overflow: AtomicU64::new(0),
        }
    }
}

fn measure_and_replace<T, F, E>(state: &AtomicU64, f: F) -> Result<T, E>
where
    F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
{
    let decode = |v: u64| (v != 0).then(|| Nanos::from(v));
    let mut prev = state.load(Ordering::Acquire);
    let mut decision = f(decode(prev));
    while let Ok((result, new)) = decision {
        match state.compare_exchange_weak(prev, new.into(), Ordering::Release, Ordering::Relaxed) {
            Ok(_) => return Ok(result),
            Err(actual) => prev = actual,
        }
        decision = f(decode(prev));
    }
    decision.map(|(r, _)| r)
}

impl StateStore for CappedStore {
    type Key = u128;

    fn measure_and_replace<T, F, E>(&self, key: &u128, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        if let Some(v) = self.map.get(key) {
            return measure_and_replace(&v, f);
        }
        if self.map.len() >= self.cap {
            return measure_and_replace(&self.overflow, f);
        }
        let v = self.map.entry(*key).or_default();
        measure_and_replace(&v, f)
    }
}

impl ShrinkableKeyedStateStore<u128> for CappedStore {
    fn retain_recent(&self, drop_below: Nanos) {
        let below: u64 = drop_below.into();
        self.map.retain(|_, v| v.load(Ordering::Relaxed) > below);
    }

    fn shrink_to_fit(&self) {
        self.map.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}
