//! Latency trends per route: p50/p95/p99 and counts in 1-minute buckets (kept 24 hours) and
//! 1-hour buckets (kept 30 days).
//!
//! The request path only adds to a [`RouteHistogram`]: one atomic increment in a fixed
//! log-scale bucket array (no lock, no allocation). Once a minute the writer thread takes the
//! difference since its last look into a minute bucket, persists it, and when an hour ends
//! merges that hour's minutes into an hour bucket. Buckets keep their histogram counts, not
//! just percentiles, so merging is exact up to bucket width (percentiles are interpolated
//! inside a bucket: within ~25 % of the true value). On shutdown the partial minute is
//! persisted too, and on start the kept buckets are loaded back, so trends survive restarts.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Upper bounds of the histogram buckets, in microseconds (the last bucket is open).
const BOUNDS_US: [u64; 30] = [
    100, 250, 500, 1_000, 2_000, 3_000, 5_000, 7_500, 10_000, 15_000, 20_000, 30_000, 50_000,
    75_000, 100_000, 150_000, 200_000, 300_000, 500_000, 750_000, 1_000_000, 1_500_000, 2_000_000,
    3_000_000, 5_000_000, 7_500_000, 10_000_000, 20_000_000, 30_000_000, 60_000_000,
];
const BUCKETS: usize = BOUNDS_US.len() + 1;

pub const MINUTE: u64 = 60;
pub const HOUR: u64 = 3600;
/// How long minute buckets are kept (seconds).
pub const MINUTES_KEPT: u64 = 24 * HOUR;
/// How long hour buckets are kept (seconds).
pub const HOURS_KEPT: u64 = 30 * 24 * HOUR;

/// Granularity as stored in the `trends` table key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Granularity {
    Minute = 0,
    Hour = 1,
}

impl Granularity {
    pub fn seconds(self) -> u64 {
        match self {
            Granularity::Minute => MINUTE,
            Granularity::Hour => HOUR,
        }
    }
}

/// Cumulative request durations of one route, written by the request path.
pub struct RouteHistogram {
    counts: [AtomicU64; BUCKETS],
    sum_us: AtomicU64,
}

impl RouteHistogram {
    fn new() -> RouteHistogram {
        RouteHistogram {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_us: AtomicU64::new(0),
        }
    }

    /// Adds one request's total duration.
    pub fn record(&self, d: Duration) {
        let us = d.as_micros().min(u64::MAX as u128) as u64;
        let i = BOUNDS_US.partition_point(|&b| b < us);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    fn snapshot(&self) -> ([u64; BUCKETS], u64) {
        (
            std::array::from_fn(|i| self.counts[i].load(Ordering::Relaxed)),
            self.sum_us.load(Ordering::Relaxed),
        )
    }
}

/// One bucket of one route: histogram counts over `[start, start + granularity)`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Bucket {
    /// Unix seconds.
    pub start: u64,
    pub counts: Vec<u64>,
    pub sum_us: u64,
}

impl Bucket {
    fn empty(start: u64) -> Bucket {
        Bucket {
            start,
            counts: vec![0; BUCKETS],
            sum_us: 0,
        }
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub fn merge(&mut self, other: &Bucket) {
        if self.counts.len() < other.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.sum_us += other.sum_us;
    }

    /// The `q` quantile (0..=1) in milliseconds, interpolated inside its bucket.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        let total = self.count();
        if total == 0 {
            return 0.0;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            if c == 0 {
                continue;
            }
            if seen + c >= rank {
                let lo = if i == 0 { 0 } else { BOUNDS_US[i - 1] } as f64;
                let Some(&hi) = BOUNDS_US.get(i) else {
                    return lo / 1000.0;
                };
                let within = (rank - seen) as f64 / c as f64;
                return (lo + (hi as f64 - lo) * within) / 1000.0;
            }
            seen += c;
        }
        0.0
    }

    /// What the API shows.
    pub fn summary(&self) -> TrendPoint {
        let count = self.count();
        TrendPoint {
            start: super::model::format_time(self.start * 1_000_000),
            count,
            p50_ms: round2(self.quantile_ms(0.50)),
            p95_ms: round2(self.quantile_ms(0.95)),
            p99_ms: round2(self.quantile_ms(0.99)),
            mean_ms: if count == 0 {
                0.0
            } else {
                round2(self.sum_us as f64 / count as f64 / 1000.0)
            },
            partial: false,
        }
    }
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

#[derive(Debug, Serialize)]
pub struct TrendPoint {
    pub start: String,
    pub count: u64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub mean_ms: f64,
    /// The minute still open: counts so far.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub partial: bool,
}

#[derive(Default)]
struct Memory {
    /// Cumulative counts at the last roll, per route.
    last: HashMap<Arc<str>, ([u64; BUCKETS], u64)>,
    minutes: BTreeMap<Arc<str>, VecDeque<Bucket>>,
    hours: BTreeMap<Arc<str>, VecDeque<Bucket>>,
}

/// All routes' histograms and their kept buckets.
#[derive(Default)]
pub struct Trends {
    routes: Mutex<HashMap<Arc<str>, Arc<RouteHistogram>>>,
    memory: Mutex<Memory>,
}

/// A bucket to persist (merged into any stored bucket with the same key).
pub struct Closed {
    pub route: Arc<str>,
    pub granularity: Granularity,
    pub bucket: Bucket,
}

impl Trends {
    /// The histogram for `route`, the same one across reloads.
    pub fn route(&self, route: &str) -> Arc<RouteHistogram> {
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        routes
            .entry(route.into())
            .or_insert_with(|| Arc::new(RouteHistogram::new()))
            .clone()
    }

    /// Closes the bucket starting at `minute_start` (Unix seconds): the requests recorded
    /// since the last roll. When `minute_start` is an hour's last minute, that hour is
    /// closed too. Returns what to persist.
    pub fn roll(&self, minute_start: u64) -> Vec<Closed> {
        let routes: Vec<(Arc<str>, Arc<RouteHistogram>)> = {
            let r = self.routes.lock().unwrap_or_else(|p| p.into_inner());
            r.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        let mut mem = self.memory.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for (name, h) in routes {
            let (now, sum) = h.snapshot();
            let (prev, prev_sum) = mem
                .last
                .insert(name.clone(), (now, sum))
                .unwrap_or(([0; BUCKETS], 0));
            let mut b = Bucket::empty(minute_start);
            for i in 0..BUCKETS {
                b.counts[i] = now[i].saturating_sub(prev[i]);
            }
            b.sum_us = sum.saturating_sub(prev_sum);
            if b.count() == 0 {
                continue;
            }
            push_merged(mem.minutes.entry(name.clone()).or_default(), b.clone());
            out.push(Closed {
                route: name,
                granularity: Granularity::Minute,
                bucket: b,
            });
        }
        if (minute_start + MINUTE) % HOUR == 0 {
            let hour_start = minute_start + MINUTE - HOUR;
            let mut hours = Vec::new();
            for (name, minutes) in &mem.minutes {
                let mut hb = Bucket::empty(hour_start);
                for m in minutes.iter().filter(|m| m.start >= hour_start) {
                    hb.merge(m);
                }
                if hb.count() > 0 {
                    hours.push((name.clone(), hb));
                }
            }
            for (name, hb) in hours {
                // The hour bucket is recomputed from all its minutes: replace, not merge.
                let q = mem.hours.entry(name.clone()).or_default();
                if q.back().is_some_and(|b| b.start == hour_start) {
                    q.pop_back();
                }
                q.push_back(hb.clone());
                out.push(Closed {
                    route: name,
                    granularity: Granularity::Hour,
                    bucket: hb,
                });
            }
        }
        drop_old(&mut mem, minute_start);
        out
    }

    /// Puts persisted buckets back in memory (at start).
    pub fn load(&self, route: &str, granularity: Granularity, bucket: Bucket) {
        let mut mem = self.memory.lock().unwrap_or_else(|p| p.into_inner());
        let map = match granularity {
            Granularity::Minute => &mut mem.minutes,
            Granularity::Hour => &mut mem.hours,
        };
        push_merged(map.entry(route.into()).or_default(), bucket);
    }

    /// Buckets for one route (or all) since `since` (Unix seconds). With minutes, the
    /// minute still open at `now` (Unix seconds) comes last, as far as it has gone, so a
    /// dashboard sees traffic before the minute closes.
    pub fn query(
        &self,
        route: Option<&str>,
        granularity: Granularity,
        since: u64,
        now: u64,
    ) -> BTreeMap<String, Vec<TrendPoint>> {
        let open: Vec<(Arc<str>, Arc<RouteHistogram>)> = if granularity == Granularity::Minute {
            let r = self.routes.lock().unwrap_or_else(|p| p.into_inner());
            r.iter()
                .filter(|(name, _)| route.is_none_or(|r| r == &***name))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        } else {
            Vec::new()
        };
        let mem = self.memory.lock().unwrap_or_else(|p| p.into_inner());
        let map = match granularity {
            Granularity::Minute => &mem.minutes,
            Granularity::Hour => &mem.hours,
        };
        let mut out: BTreeMap<String, Vec<TrendPoint>> = map
            .iter()
            .filter(|(name, _)| route.is_none_or(|r| r == &***name))
            .map(|(name, q)| {
                (
                    name.to_string(),
                    q.iter()
                        .filter(|b| b.start >= since)
                        .map(Bucket::summary)
                        .collect(),
                )
            })
            .collect();
        let minute_start = now - now % MINUTE;
        for (name, h) in open {
            let (cur, sum) = h.snapshot();
            let (prev, prev_sum) = mem.last.get(&name).copied().unwrap_or(([0; BUCKETS], 0));
            let mut b = Bucket::empty(minute_start);
            for i in 0..BUCKETS {
                b.counts[i] = cur[i].saturating_sub(prev[i]);
            }
            b.sum_us = sum.saturating_sub(prev_sum);
            if b.count() > 0 && minute_start >= since {
                let mut point = b.summary();
                point.partial = true;
                out.entry(name.to_string()).or_default().push(point);
            }
        }
        out
    }
}

/// Appends `b`, merging into the last bucket when it has the same start (a restart within
/// a minute), keeping order.
fn push_merged(q: &mut VecDeque<Bucket>, b: Bucket) {
    match q.iter_mut().rev().find(|x| x.start == b.start) {
        Some(x) => x.merge(&b),
        None => {
            let at = q.partition_point(|x| x.start < b.start);
            q.insert(at, b);
        }
    }
}

fn drop_old(mem: &mut Memory, now: u64) {
    for q in mem.minutes.values_mut() {
        while q.front().is_some_and(|b| b.start + MINUTES_KEPT <= now) {
            q.pop_front();
        }
    }
    for q in mem.hours.values_mut() {
        while q.front().is_some_and(|b| b.start + HOURS_KEPT <= now) {
            q.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_fall_in_the_right_bucket() {
        let t = Trends::default();
        let h = t.route("r");
        for _ in 0..90 {
            h.record(Duration::from_millis(4));
        }
        for _ in 0..10 {
            h.record(Duration::from_millis(400));
        }
        let closed = t.roll(600);
        assert_eq!(closed.len(), 1);
        let b = &closed[0].bucket;
        assert_eq!(b.count(), 100);
        let p50 = b.quantile_ms(0.5);
        assert!((3.0..=5.0).contains(&p50), "{p50}");
        let p99 = b.quantile_ms(0.99);
        assert!((300.0..=500.0).contains(&p99), "{p99}");
        // Nothing new: no bucket.
        assert!(t.roll(660).is_empty());
    }

    #[test]
    fn an_hour_closes_from_its_minutes() {
        let t = Trends::default();
        let h = t.route("r");
        h.record(Duration::from_millis(1));
        t.roll(HOUR * 10);
        h.record(Duration::from_millis(1));
        let closed = t.roll(HOUR * 11 - MINUTE);
        let hour = closed
            .iter()
            .find(|c| c.granularity == Granularity::Hour)
            .unwrap();
        assert_eq!(hour.bucket.start, HOUR * 10);
        assert_eq!(hour.bucket.count(), 2);
    }

    #[test]
    fn the_open_minute_is_queried_until_it_closes() {
        let t = Trends::default();
        let h = t.route("r");
        let m = HOUR * 10;
        h.record(Duration::from_millis(2));
        h.record(Duration::from_millis(2));
        let q = t.query(None, Granularity::Minute, 0, m + 30);
        assert_eq!(q["r"].len(), 1);
        assert!(q["r"][0].partial);
        assert_eq!(q["r"][0].count, 2);
        t.roll(m);
        h.record(Duration::from_millis(2));
        let q = t.query(None, Granularity::Minute, 0, m + MINUTE + 5);
        let counts: Vec<(u64, bool)> = q["r"].iter().map(|p| (p.count, p.partial)).collect();
        assert_eq!(counts, [(2, false), (1, true)]);
        // Hours show closed buckets only.
        assert!(t
            .query(None, Granularity::Hour, 0, m + MINUTE + 5)
            .is_empty());
    }
}
