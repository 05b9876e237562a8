//! Per-key sampling for events that can come in floods (`rate_limited`, `ip_blocked`): at
//! most one event per key per interval, carrying how many occurrences it stands for.
//!
//! A flood of distinct keys (a million addresses) would still mean an event per key, so
//! each kind also has a global budget of [`EVENTS_PER_SECOND`]: past it, occurrences are
//! counted and carried by the next event of that kind that is let through.
//!
//! Sixteen shards of a small map behind a mutex each, touched only when the request is
//! already being refused (never on an accepted request). Each shard holds at most 4,096 keys;
//! when full it forgets keys idle for an interval, and if still full starts over (at worst
//! one extra event per key). Memory: at most 16 × 4,096 entries.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const SHARDS: usize = 16;
const SHARD_CAP: usize = 4096;
/// Most events of one kind let through per second, over all keys.
pub const EVENTS_PER_SECOND: u64 = 20;
const KINDS: usize = 8;

/// (kind, key) → (when the last event was let through, occurrences since).
type Shard = Mutex<HashMap<(u8, u128), (Instant, u64)>>;

pub struct EventSampler {
    interval: Duration,
    shards: [Shard; SHARDS],
    started: Instant,
    /// Per kind: (second since start << 32 | events let through in that second).
    budget: [AtomicU64; KINDS],
    /// Per kind: occurrences folded away by the global budget, not yet reported.
    folded: [AtomicU64; KINDS],
}

impl EventSampler {
    pub fn new(interval: Duration) -> EventSampler {
        EventSampler {
            interval,
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            started: Instant::now(),
            budget: std::array::from_fn(|_| AtomicU64::new(0)),
            folded: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Takes one event from `kind`'s budget for this second.
    fn within_budget(&self, kind: u8) -> bool {
        let k = kind as usize % KINDS;
        let second = self.started.elapsed().as_secs();
        let r = self.budget[k].fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
            let (s, n) = (v >> 32, v & 0xffff_ffff);
            if s != second {
                Some((second << 32) | 1)
            } else if n < EVENTS_PER_SECOND {
                Some(v + 1)
            } else {
                None
            }
        });
        r.is_ok()
    }

    /// Counts one occurrence for (`kind`, `key`). `Some(n)`: emit an event now standing for
    /// `n` occurrences; `None`: this one is folded into the next event.
    pub fn sample(&self, kind: u8, key: u128) -> Option<u64> {
        let n = self.sample_key(kind, key)?;
        let k = kind as usize % KINDS;
        if !self.within_budget(kind) {
            self.folded[k].fetch_add(n, Ordering::Relaxed);
            return None;
        }
        Some(n + self.folded[k].swap(0, Ordering::Relaxed))
    }

    fn sample_key(&self, kind: u8, key: u128) -> Option<u64> {
        let shard = (key as usize ^ (key >> 64) as usize ^ kind as usize) % SHARDS;
        let mut m = self.shards[shard].lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if m.len() >= SHARD_CAP && !m.contains_key(&(kind, key)) {
            let interval = self.interval;
            m.retain(|_, (last, _)| now.duration_since(*last) < interval);
            if m.len() >= SHARD_CAP {
                m.clear();
            }
        }
        match m.get_mut(&(kind, key)) {
            Some((last, count)) => {
                *count += 1;
                if now.duration_since(*last) >= self.interval {
                    let n = *count;
                    *last = now;
                    *count = 0;
                    Some(n)
                } else {
                    None
                }
            }
            None => {
                m.insert((kind, key), (now, 0));
                Some(1)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_event_per_interval_with_the_count() {
        let s = EventSampler::new(Duration::from_millis(50));
        assert_eq!(s.sample(0, 7), Some(1));
        for _ in 0..9 {
            assert_eq!(s.sample(0, 7), None);
        }
        assert_eq!(s.sample(1, 7), Some(1), "kinds are separate");
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(s.sample(0, 7), Some(10));
    }

    #[test]
    fn a_flood_of_distinct_keys_is_held_to_the_global_budget() {
        let s = EventSampler::new(Duration::from_secs(10));
        let let_through = (0..10_000u128)
            .filter(|k| s.sample(3, *k).is_some())
            .count();
        assert!(let_through as u64 <= 2 * EVENTS_PER_SECOND, "{let_through}");
        std::thread::sleep(Duration::from_millis(1100));
        // The next event carries everything folded away.
        assert_eq!(s.sample(3, 99_999), Some(10_001 - let_through as u64));
    }
}
