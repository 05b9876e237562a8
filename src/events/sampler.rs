//! Per-key sampling for events that can come in floods (`rate_limited`, `ip_blocked`): at
//! most one event per key per interval, carrying how many occurrences it stands for.
//!
//! Sixteen shards of a small map behind a mutex each, touched only when the request is
//! already being refused (never on an accepted request). Each shard holds at most 4,096 keys;
//! when full it forgets keys idle for an interval, and if still full starts over (at worst
//! one extra event per key). Memory: at most 16 × 4,096 entries.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const SHARDS: usize = 16;
const SHARD_CAP: usize = 4096;

pub struct EventSampler {
    interval: Duration,
    shards: [Mutex<HashMap<(u8, u128), (Instant, u64)>>; SHARDS],
}

impl EventSampler {
    pub fn new(interval: Duration) -> EventSampler {
        EventSampler {
            interval,
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
        }
    }

    /// Counts one occurrence for (`kind`, `key`). `Some(n)`: emit an event now standing for
    /// `n` occurrences; `None`: this one is folded into the next event.
    pub fn sample(&self, kind: u8, key: u128) -> Option<u64> {
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
}
