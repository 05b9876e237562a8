//! When a background job runs: a fixed interval (`every = "24h"`) or a wall-clock cron
//! expression (`schedule = "0 2 * * *"`) read in UTC or a named IANA time zone
//! (`time_zone = "Europe/Paris"`).
//!
//! Cron expressions have the five POSIX fields (minute, hour, day of month, month, day of
//! week; names such as `MON` and `JAN`, ranges, steps, lists) or a nickname (`@daily`,
//! `@weekly`, `@monthly`, `@hourly`). Seconds and years are refused: jobs here run at
//! most once a minute. Evaluation is done by `croner` on `chrono-tz`'s built-in database
//! (the binary needs no `/usr/share/zoneinfo`, so the scratch image works): a local time
//! skipped by a daylight-saving change does not fire that day and one that happens twice
//! fires once.
//!
//! A job keeps the wall-clock time of its last run and asks [`Schedule::next_after`] it;
//! a job delayed past several occurrences (the machine was suspended, a run took hours)
//! runs once, not once per missed occurrence. [`NextRuns`] publishes the times for
//! `/api/v1/status`.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;

/// A compiled schedule.
#[derive(Clone, PartialEq)]
pub enum Schedule {
    /// Runs this long after the previous run.
    Every(Duration),
    /// Runs at each wall-clock time the expression names, in `tz`.
    Cron {
        cron: Box<Cron>,
        tz: Tz,
        expr: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("not a cron expression ({0}); expected five fields: minute hour day-of-month month day-of-week, e.g. \"0 2 * * *\"")]
    Cron(String),
    #[error("unknown time zone {0:?}; expected an IANA name such as \"UTC\" or \"Europe/Paris\"")]
    TimeZone(String),
    #[error("the expression never matches a date")]
    Never,
}

impl Schedule {
    /// Compiles `expr` in the time zone named `tz` (`None`: UTC).
    pub fn cron(expr: &str, tz: Option<&str>) -> Result<Schedule, ScheduleError> {
        let tz: Tz = match tz {
            None => Tz::UTC,
            Some(name) => name
                .parse()
                .map_err(|_| ScheduleError::TimeZone(name.to_string()))?,
        };
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build()
            .parse(expr.trim())
            .map_err(|e| ScheduleError::Cron(e.to_string()))?;
        let s = Schedule::Cron {
            cron: Box::new(cron),
            tz,
            expr: expr.trim().to_string(),
        };
        // "0 0 30 2 *" parses but never fires.
        s.next_after(SystemTime::now())
            .ok_or(ScheduleError::Never)?;
        Ok(s)
    }

    /// The first run strictly after `last` (the previous run, or the start).
    pub fn next_after(&self, last: SystemTime) -> Option<SystemTime> {
        match self {
            Schedule::Every(d) => last.checked_add(*d),
            Schedule::Cron { cron, tz, .. } => {
                let start: DateTime<Utc> = last.into();
                let next = cron
                    .find_next_occurrence(&start.with_timezone(tz), false)
                    .ok()?;
                Some(next.with_timezone(&Utc).into())
            }
        }
    }

    /// About how long between two runs: the interval, or the gap between a cron
    /// expression's next two times (a monthly job: about a month).
    pub fn period(&self) -> Duration {
        match self {
            Schedule::Every(d) => *d,
            Schedule::Cron { .. } => {
                let first = self.next_after(SystemTime::now());
                let second = first.and_then(|t| self.next_after(t));
                match (first, second) {
                    (Some(a), Some(b)) => b.duration_since(a).unwrap_or_default(),
                    _ => Duration::ZERO,
                }
            }
        }
    }

    /// The time zone name for a cron schedule.
    pub fn time_zone(&self) -> Option<&'static str> {
        match self {
            Schedule::Every(_) => None,
            Schedule::Cron { tz, .. } => Some(tz.name()),
        }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Every(d) => write!(f, "every {}", humantime::format_duration(*d)),
            Schedule::Cron { expr, tz, .. } => write!(f, "{expr} ({})", tz.name()),
        }
    }
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A job's keys in one config section: an interval key, `schedule` and `time_zone`.
pub struct ScheduleKeys<'a> {
    /// The section, e.g. `events.backup`.
    pub at: crate::config::KeyPath,
    pub every_key: &'a str,
    pub every: Option<Duration>,
    pub schedule_key: &'a str,
    pub schedule: Option<&'a str>,
    pub time_zone_key: &'a str,
    pub time_zone: Option<&'a str>,
    /// The interval when neither key is set (`None`: the job runs only on demand).
    pub default_every: Option<Duration>,
    /// The shortest interval accepted.
    pub min_every: Duration,
}

/// Compiles a job's schedule from its keys, pushing one located error per mistake: both an
/// interval and a cron expression, a time zone without an expression, an interval below the
/// minimum, an expression or zone that does not parse.
pub fn compile(
    cfg: &crate::config::LoadedConfig,
    errs: &mut crate::config::ConfigErrors,
    k: ScheduleKeys<'_>,
) -> Option<Schedule> {
    let key = |name: &str| k.at.key(name);
    if let (Some(_), Some(_)) = (k.every, k.schedule) {
        errs.push(cfg.error(
            &key(k.schedule_key),
            format!(
                "set either `{}` or `{}`, not both",
                k.every_key, k.schedule_key
            ),
        ));
        return None;
    }
    if let (Some(_), None) = (k.time_zone, k.schedule) {
        errs.push(cfg.error(
            &key(k.time_zone_key),
            format!("applies to `{}`, which is not set", k.schedule_key),
        ));
    }
    if let Some(expr) = k.schedule {
        return match Schedule::cron(expr, k.time_zone) {
            Ok(s) => Some(s),
            Err(e @ ScheduleError::TimeZone(_)) => {
                errs.push(cfg.error(&key(k.time_zone_key), e.to_string()));
                None
            }
            Err(e) => {
                errs.push(cfg.error(&key(k.schedule_key), e.to_string()));
                None
            }
        };
    }
    let every = k.every.or(k.default_every)?;
    if every < k.min_every {
        errs.push(cfg.error(
            &key(k.every_key),
            format!(
                "must be at least {}",
                humantime::format_duration(k.min_every)
            ),
        ));
    }
    Some(Schedule::Every(every.max(k.min_every)))
}

/// How long from `now` until `at` (zero when it has passed).
pub fn until(at: SystemTime, now: SystemTime) -> Duration {
    at.duration_since(now).unwrap_or(Duration::ZERO)
}

/// The background jobs with a schedule.
#[derive(Debug, Clone, Copy)]
pub enum Job {
    Backup,
    Archive,
    SessionCleanup,
}

impl Job {
    pub const ALL: [Job; 3] = [Job::Backup, Job::Archive, Job::SessionCleanup];

    pub fn name(self) -> &'static str {
        match self {
            Job::Backup => "backup",
            Job::Archive => "archive",
            Job::SessionCleanup => "session_cleanup",
        }
    }
}

/// The next run of each job as the job itself computed it (microseconds since the epoch;
/// 0: not scheduled), for `/api/v1/status`.
#[derive(Debug, Default)]
pub struct NextRuns {
    at: [AtomicU64; 3],
}

impl NextRuns {
    pub fn set(&self, job: Job, at: Option<SystemTime>) {
        let micros = at
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_micros() as u64);
        self.at[job as usize].store(micros, Ordering::Relaxed);
    }

    pub fn get(&self, job: Job) -> Option<SystemTime> {
        match self.at[job as usize].load(Ordering::Relaxed) {
            0 => None,
            m => Some(UNIX_EPOCH + Duration::from_micros(m)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> SystemTime {
        DateTime::parse_from_rfc3339(s)
            .unwrap()
            .with_timezone(&Utc)
            .into()
    }

    fn rfc(t: SystemTime) -> String {
        DateTime::<Utc>::from(t).to_rfc3339()
    }

    #[test]
    fn daily_at_two_in_utc_and_in_a_named_zone() {
        let s = Schedule::cron("0 2 * * *", None).unwrap();
        let n = s.next_after(at("2026-03-01T01:59:00Z")).unwrap();
        assert_eq!(rfc(n), "2026-03-01T02:00:00+00:00");
        // Strictly after: a run at 02:00 schedules tomorrow's.
        let n = s.next_after(n).unwrap();
        assert_eq!(rfc(n), "2026-03-02T02:00:00+00:00");
        let paris = Schedule::cron("0 2 * * *", Some("Europe/Paris")).unwrap();
        // Winter: UTC+1.
        let n = paris.next_after(at("2026-01-10T00:00:00Z")).unwrap();
        assert_eq!(rfc(n), "2026-01-10T01:00:00+00:00");
        // Summer: UTC+2.
        let n = paris.next_after(at("2026-07-10T00:30:00Z")).unwrap();
        assert_eq!(rfc(n), "2026-07-11T00:00:00+00:00");
    }

    #[test]
    fn a_local_time_skipped_by_daylight_saving_does_not_loop() {
        // 2026-03-29 02:30 does not exist in Paris (clocks go 02:00 → 03:00).
        let s = Schedule::cron("30 2 * * *", Some("Europe/Paris")).unwrap();
        let n = s.next_after(at("2026-03-28T12:00:00Z")).unwrap();
        let n2 = s.next_after(n).unwrap();
        assert!(n2 > n);
        assert!(n2.duration_since(n).unwrap() <= Duration::from_secs(25 * 3600));
    }

    #[test]
    fn weekly_and_nicknames() {
        let s = Schedule::cron("0 3 * * SUN", None).unwrap();
        // 2026-12-06 is a Sunday.
        let n = s.next_after(at("2026-12-06T03:00:00Z")).unwrap();
        assert_eq!(rfc(n), "2026-12-13T03:00:00+00:00");
        let s = Schedule::cron("@daily", None).unwrap();
        let n = s.next_after(at("2026-12-06T03:00:00Z")).unwrap();
        assert_eq!(rfc(n), "2026-12-07T00:00:00+00:00");
    }

    #[test]
    fn every_counts_from_the_last_run() {
        let s = Schedule::Every(Duration::from_secs(3600));
        let n = s.next_after(at("2026-12-06T03:00:00Z")).unwrap();
        assert_eq!(rfc(n), "2026-12-06T04:00:00+00:00");
    }

    #[test]
    fn bad_expressions_and_zones_are_named() {
        for bad in [
            "",
            "0 2 * *",
            "0 0 2 * * *",
            "61 * * * *",
            "0 25 * * *",
            "x y z w v",
        ] {
            assert!(
                matches!(Schedule::cron(bad, None), Err(ScheduleError::Cron(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            Schedule::cron("0 2 * * *", Some("Mars/Olympus")),
            Err(ScheduleError::TimeZone(_))
        ));
        assert!(matches!(
            Schedule::cron("0 0 30 2 *", None),
            Err(ScheduleError::Never)
        ));
    }

    #[test]
    fn next_runs_round_trip() {
        let r = NextRuns::default();
        assert_eq!(r.get(Job::Backup), None);
        let t = at("2026-12-07T02:00:00Z");
        r.set(Job::Backup, Some(t));
        assert_eq!(r.get(Job::Backup), Some(t));
        r.set(Job::Backup, None);
        assert_eq!(r.get(Job::Backup), None);
    }
}
