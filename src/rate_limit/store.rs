//! The buckets of one policy: one map entry per key holding every window's state, so a
//! check is one hash lookup however many windows the policy has.
//!
//! Governor does the arithmetic (GCRA) through its `StateStore` extension point: each
//! window's `RateLimiter` is keyed by a [`Slot`] (an entry plus a window index), and its
//! store is a [`SlotStore`] that updates the slot's `AtomicU64` with a compare-and-swap, as
//! governor's own in-memory state does. The policy looks the key up once and hands the same
//! slot to each window in turn.
//!
//! Bounds: when the map holds `cap` keys, a key it has never seen shares one overflow entry:
//! a flood of new addresses is throttled as one client, memory stays bounded, and a key that
//! is already tracked (possibly being throttled) keeps its own state. The sweeper drops only
//! entries whose every window is indistinguishable from a fresh bucket (governor's
//! `retain_recent` threshold, recorded per window), so a throttled key is never reset.

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use governor::nanos::Nanos;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::state::StateStore;

/// Most windows in one policy.
pub const MAX_WINDOWS: usize = 4;
/// Bytes one tracked key costs (key, entry with four windows, the map's bookkeeping), for
/// the documented memory bound.
pub const BYTES_PER_KEY: usize = 96;

/// Every window's state for one key: a GCRA theoretical arrival time (0 = fresh).
#[derive(Default)]
pub struct Entry {
    tats: [AtomicU64; MAX_WINDOWS],
}

/// One window of one entry, as a governor key.
#[derive(Clone)]
pub struct Slot {
    entry: Arc<Entry>,
    pub window: usize,
}

impl Slot {
    /// The slot is the shared overflow entry (the key was not tracked: the map was full).
    pub fn is_overflow(&self, entries: &Entries) -> bool {
        Arc::ptr_eq(&self.entry, &entries.overflow)
    }
}

impl PartialEq for Slot {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.entry, &other.entry) && self.window == other.window
    }
}

impl Eq for Slot {}

impl Hash for Slot {
    fn hash<H: Hasher>(&self, h: &mut H) {
        (Arc::as_ptr(&self.entry) as usize).hash(h);
        self.window.hash(h);
    }
}

/// A window's state store: the state lives in the slot; this keeps the sweep threshold
/// governor computes for the window.
pub struct SlotStore {
    drop_below: Arc<AtomicU64>,
}

impl SlotStore {
    /// A store that reports its sweep threshold into `drop_below`.
    pub fn new(drop_below: Arc<AtomicU64>) -> SlotStore {
        SlotStore { drop_below }
    }
}

impl StateStore for SlotStore {
    type Key = Slot;

    fn measure_and_replace<T, F, E>(&self, key: &Slot, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let state = &key.entry.tats[key.window];
        let decode = |v: u64| (v != 0).then(|| Nanos::from(v));
        let mut prev = state.load(Ordering::Acquire);
        let mut decision = f(decode(prev));
        while let Ok((result, new)) = decision {
            match state.compare_exchange_weak(
                prev,
                new.into(),
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(result),
                Err(actual) => prev = actual,
            }
            decision = f(decode(prev));
        }
        decision.map(|(r, _)| r)
    }
}

impl ShrinkableKeyedStateStore<Slot> for SlotStore {
    fn retain_recent(&self, drop_below: Nanos) {
        self.drop_below.store(drop_below.into(), Ordering::Relaxed);
    }

    fn len(&self) -> usize {
        0
    }

    fn is_empty(&self) -> bool {
        true
    }
}

/// Keys are attacker-chosen (addresses): the hash is keyed with a random seed per map.
type KeyHasher = foldhash::fast::RandomState;

/// The entries of one policy.
pub struct Entries {
    map: DashMap<u128, Arc<Entry>, KeyHasher>,
    cap: usize,
    overflow: Arc<Entry>,
}

impl Entries {
    pub fn new(cap: usize) -> Entries {
        Entries {
            map: DashMap::with_hasher(KeyHasher::default()),
            cap,
            overflow: Arc::new(Entry::default()),
        }
    }

    /// The slot (window 0) for `key`: its own entry, a new one, or the shared overflow
    /// entry when the map is full.
    pub fn slot(&self, key: u128) -> Slot {
        let entry = match self.map.get(&key) {
            Some(e) => e.clone(),
            None if self.map.len() >= self.cap => self.overflow.clone(),
            None => self.map.entry(key).or_default().clone(),
        };
        Slot { entry, window: 0 }
    }

    /// Drops entries whose every window is back to a fresh bucket; `drop_below[i]` is window
    /// `i`'s threshold. Returns the entries left.
    pub fn sweep(&self, drop_below: &[u64]) -> usize {
        self.map.retain(|_, e| {
            drop_below
                .iter()
                .enumerate()
                .any(|(i, below)| e.tats[i].load(Ordering::Relaxed) > *below)
        });
        self.map.shrink_to_fit();
        self.map.len()
    }
}
