//! What an event is: ids, types, the one risk table, audit and performance records, and the
//! investigation state kept beside (never inside) an audit event.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest path stored in an event (characters); longer paths are cut and marked.
pub const MAX_PATH_CHARS: usize = 512;
/// Most entries in an event's details map; more are dropped.
pub const MAX_DETAILS: usize = 16;
/// Longest message or detail value stored (characters).
pub const MAX_TEXT_CHARS: usize = 1024;

/// A unique, time-ordered event id: microseconds since the Unix epoch in the high 64 bits,
/// a per-process random nonce and a counter in the low 64. Sorting ids sorts by time, and
/// ids from two runs of the gateway never collide. Shown as 32 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId(pub u128);

static COUNTER: AtomicU32 = AtomicU32::new(0);
static NONCE: OnceLock<u32> = OnceLock::new();

impl EventId {
    /// A new id for an event happening now.
    pub fn new(time_micros: u64) -> EventId {
        let nonce = *NONCE.get_or_init(|| {
            let mut b = [0u8; 4];
            crate::secrets::fill_random(&mut b);
            u32::from_le_bytes(b)
        });
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        EventId(((time_micros as u128) << 64) | ((nonce as u128) << 32) | n as u128)
    }

    /// The smallest id an event at `micros` can have (for time-range scans).
    pub fn floor(time_micros: u64) -> EventId {
        EventId((time_micros as u128) << 64)
    }

    pub fn time_micros(self) -> u64 {
        (self.0 >> 64) as u64
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl FromStr for EventId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 32 {
            return Err(format!("`{s}` is not an event id (32 hex digits)"));
        }
        u128::from_str_radix(s, 16)
            .map(EventId)
            .map_err(|_| format!("`{s}` is not an event id (32 hex digits)"))
    }
}

impl Serialize for EventId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for EventId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Microseconds since the Unix epoch, now.
pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_micros() as u64
}

/// RFC 3339 with milliseconds, UTC.
pub fn format_time(micros: u64) -> String {
    humantime::format_rfc3339_millis(
        UNIX_EPOCH + Duration::from_micros(micros.min(MAX_TIME_MICROS)),
    )
    .to_string()
}

/// The last microsecond RFC 3339 can write (9999-12-31T23:59:59.999999Z): times are
/// refused past it and printed no later than it.
pub const MAX_TIME_MICROS: u64 = 253_402_300_799_999_999;

/// Accepts RFC 3339 (`2026-12-02T10:00:00Z`) or Unix seconds, from 1970 to 9999.
pub fn parse_time(s: &str) -> Result<u64, String> {
    let micros = if let Ok(secs) = s.parse::<u64>() {
        secs.checked_mul(1_000_000)
            .ok_or_else(|| format!("`{s}` is after the year 9999"))?
    } else {
        humantime::parse_rfc3339_weak(s)
            .map_err(|_| format!("`{s}` is not a time (RFC 3339 or Unix seconds)"))
            .and_then(|t| {
                t.duration_since(UNIX_EPOCH)
                    .map(|d| d.as_micros().min(u64::MAX as u128) as u64)
                    .map_err(|_| format!("`{s}` is before 1970"))
            })?
    };
    if micros > MAX_TIME_MICROS {
        return Err(format!("`{s}` is after the year 9999"));
    }
    Ok(micros)
}

/// How much attention an event needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Risk {
    Low,
    Medium,
    High,
    Critical,
}

impl Risk {
    pub const ALL: [Risk; 4] = [Risk::Low, Risk::Medium, Risk::High, Risk::Critical];

    pub fn as_str(self) -> &'static str {
        match self {
            Risk::Low => "low",
            Risk::Medium => "medium",
            Risk::High => "high",
            Risk::Critical => "critical",
        }
    }
}

impl FromStr for Risk {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Risk::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("`{s}` is not a risk (low, medium, high, critical)"))
    }
}

macro_rules! event_types {
    ($( $variant:ident = $name:literal : $base:ident / $escalated:ident ),* $(,)?) => {
        /// The fixed set of audit event types.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum EventType { $( $variant ),* }

        impl EventType {
            pub const ALL: &'static [EventType] = &[ $( EventType::$variant ),* ];

            pub fn as_str(self) -> &'static str {
                match self { $( EventType::$variant => $name ),* }
            }

            /// The risk table: (normal, escalated). Escalated applies when the emitter says
            /// the event is repeated or severe (see each type's doc in the README).
            pub fn risks(self) -> (Risk, Risk) {
                match self { $( EventType::$variant => (Risk::$base, Risk::$escalated) ),* }
            }
        }
    };
}

// The one risk table. Escalation: `admin_auth_failed` repeated from one address,
// `waf_blocked` by a critical-severity rule, `login_failed` after 5 in a window.
event_types! {
    BruteForceDetected = "brute_force_detected": Critical / Critical,
    SessionSuspicious = "session_suspicious": Critical / Critical,
    AdminAuthFailed = "admin_auth_failed": Medium / Critical,
    AdminForbidden = "admin_forbidden": Medium / Medium,
    WafBlocked = "waf_blocked": High / Critical,
    IpBanned = "ip_banned": High / High,
    IpRuleDeleted = "ip_rule_deleted": High / High,
    BackupFailed = "backup_failed": High / High,
    ArchiveFailed = "archive_failed": High / High,
    LoginFailed = "login_failed": Low / High,
    IpBlocked = "ip_blocked": Medium / Medium,
    RateLimited = "rate_limited": Medium / Medium,
    SessionTimeout = "session_timeout": Medium / Medium,
    SessionRevoked = "session_revoked": Medium / Medium,
    SessionLimitReached = "session_limit_reached": Medium / Medium,
    WafDetected = "waf_detected": Medium / Medium,
    SessionCreated = "session_created": Low / Low,
    SessionClosed = "session_closed": Low / Low,
    LoginSucceeded = "login_succeeded": Low / Low,
    ConfigReloaded = "config_reloaded": Low / Low,
    ConfigReloadFailed = "config_reload_failed": Low / Low,
    IpRuleCreated = "ip_rule_created": Low / Low,
    IpRuleModified = "ip_rule_modified": Low / Low,
    IpUnbanned = "ip_unbanned": Low / Low,
    LoginUnlocked = "login_unlocked": Low / Low,
    BackupCreated = "backup_created": Low / Low,
    DataArchived = "data_archived": Low / Low,
    DataRestored = "data_restored": Low / Low,
    PerformanceAlert = "performance_alert": Low / Low,
    PostureChecked = "posture_checked": Low / Medium,
    ClusterDegraded = "cluster_degraded": High / High,
    ClusterRestored = "cluster_restored": Low / Low,
}

impl FromStr for EventType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventType::ALL
            .iter()
            .copied()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| format!("`{s}` is not an event type"))
    }
}

/// One audit event, as stored. Never modified after it is written.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditEvent {
    pub id: EventId,
    #[serde(with = "time_field")]
    pub time: u64,
    #[serde(rename = "type")]
    pub kind: EventType,
    pub risk: Risk,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// A hash of the session id (never the id itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rule_ids: Vec<String>,
    pub message: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub details: BTreeMap<String, String>,
}

impl AuditEvent {
    /// A new event of `kind` at the normal risk of its type.
    pub fn new(kind: EventType, message: impl Into<String>) -> AuditEvent {
        let time = now_micros();
        AuditEvent {
            id: EventId::new(time),
            time,
            kind,
            risk: kind.risks().0,
            client_ip: None,
            route: None,
            host: None,
            method: None,
            path: None,
            request_id: None,
            user: None,
            session: None,
            rule_ids: Vec::new(),
            message: bounded(message.into(), MAX_TEXT_CHARS),
            details: BTreeMap::new(),
        }
    }

    /// Raises the risk to the type's escalated level (repeated or severe occurrences).
    pub fn escalated(mut self) -> AuditEvent {
        self.risk = self.kind.risks().1;
        self
    }

    pub fn ip(mut self, ip: IpAddr) -> AuditEvent {
        self.client_ip = Some(ip);
        self
    }

    /// Adds a detail; values are bounded and the map holds at most [`MAX_DETAILS`].
    pub fn detail(mut self, key: &str, value: impl Into<String>) -> AuditEvent {
        if self.details.len() < MAX_DETAILS {
            self.details
                .insert(key.to_string(), bounded(value.into(), MAX_TEXT_CHARS));
        }
        self
    }

    /// Sets the request path, cut to [`MAX_PATH_CHARS`].
    pub fn path(mut self, path: &str) -> AuditEvent {
        self.path = Some(bounded_str(path, MAX_PATH_CHARS));
        self
    }
}

/// Cuts `s` to at most `max` characters, marking the cut with `…`.
pub fn bounded(s: String, max: usize) -> String {
    if s.len() <= max {
        return s;
    }
    bounded_str(&s, max)
}

pub fn bounded_str(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_string(),
        Some((i, _)) => format!("{}…", &s[..i]),
    }
}

/// How slow a request was against its route's threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Under the threshold (recorded only with `log_all`).
    Info,
    /// Over the threshold.
    Warning,
    /// Over five times the threshold.
    Critical,
}

impl Severity {
    pub fn of(total: Duration, threshold: Duration) -> Severity {
        if total > threshold * 5 {
            Severity::Critical
        } else if total > threshold {
            Severity::Warning
        } else {
            Severity::Info
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// One request recorded for its timing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PerfEvent {
    pub id: EventId,
    #[serde(with = "time_field")]
    pub time: u64,
    pub route: String,
    pub method: String,
    pub host: String,
    pub path: String,
    pub status: u16,
    pub total_ms: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_ms: Option<f64>,
    pub gateway_ms: f64,
    pub threshold_ms: f64,
    pub severity: Severity,
    pub request_id: String,
    pub client_ip: IpAddr,
}

/// Where an investigation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    #[default]
    Open,
    Investigating,
    Resolved,
    FalsePositive,
}

impl Status {
    pub const ALL: [Status; 4] = [
        Status::Open,
        Status::Investigating,
        Status::Resolved,
        Status::FalsePositive,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Open => "open",
            Status::Investigating => "investigating",
            Status::Resolved => "resolved",
            Status::FalsePositive => "false_positive",
        }
    }

    /// The workflow: open → investigating → resolved | false_positive; a closed event can
    /// be reopened (back to investigating).
    pub fn can_become(self, next: Status) -> bool {
        use Status::*;
        matches!(
            (self, next),
            (Open, Investigating)
                | (Investigating, Resolved)
                | (Investigating, FalsePositive)
                | (Resolved, Investigating)
                | (FalsePositive, Investigating)
        )
    }

    pub fn is_closed(self) -> bool {
        matches!(self, Status::Resolved | Status::FalsePositive)
    }
}

impl FromStr for Status {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Status::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                format!("`{s}` is not a status (open, investigating, resolved, false_positive)")
            })
    }
}

/// The investigation of one audit event: stored apart from the event.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Investigation {
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignee: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<Note>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_by: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "opt_time_field"
    )]
    pub resolved_at: Option<u64>,
    /// Events linked by an operator.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub related: Vec<EventId>,
    /// Every change, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<Change>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Note {
    #[serde(with = "time_field")]
    pub at: u64,
    pub by: String,
    pub text: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Change {
    #[serde(with = "time_field")]
    pub at: u64,
    pub by: String,
    pub field: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    pub to: String,
}

/// An operator's change to an investigation (the body of `PATCH /events/{id}`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Patch {
    /// The operator making the change (recorded in the history). The admin API sets it
    /// from the caller's token name; a body that names someone else is refused.
    #[serde(default)]
    pub by: String,
    #[serde(default)]
    pub status: Option<Status>,
    #[serde(default)]
    pub assignee: Option<String>,
    /// A note to append (required when resolving or marking a false positive).
    #[serde(default)]
    pub note: Option<String>,
    #[serde(default)]
    pub related: Vec<EventId>,
}

/// Why a patch was refused.
#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    #[error("no event {0}")]
    NotFound(EventId),
    #[error("status cannot go from {from} to {to}")]
    Transition {
        from: &'static str,
        to: &'static str,
    },
    #[error("{0}")]
    Invalid(String),
}

impl Investigation {
    /// Applies `patch` at time `now`, recording each change; refuses invalid transitions.
    pub fn apply(&mut self, patch: &Patch, now: u64) -> Result<(), PatchError> {
        let by = patch.by.trim();
        if by.is_empty() || by.len() > 128 {
            return Err(PatchError::Invalid(
                "`by` (the operator's name, 1-128 characters) is required".into(),
            ));
        }
        let change = |field: &str, from: Option<String>, to: String| Change {
            at: now,
            by: by.to_string(),
            field: field.to_string(),
            from,
            to,
        };
        if let Some(next) = patch.status {
            if next != self.status {
                if !self.status.can_become(next) {
                    return Err(PatchError::Transition {
                        from: self.status.as_str(),
                        to: next.as_str(),
                    });
                }
                if next.is_closed() && patch.note.as_deref().is_none_or(|n| n.trim().is_empty()) {
                    return Err(PatchError::Invalid(format!(
                        "a `note` saying why is required to mark an event {}",
                        next.as_str()
                    )));
                }
                self.history.push(change(
                    "status",
                    Some(self.status.as_str().into()),
                    next.as_str().into(),
                ));
                self.status = next;
                if next.is_closed() {
                    self.resolved_by = Some(by.to_string());
                    self.resolved_at = Some(now);
                } else {
                    self.resolved_by = None;
                    self.resolved_at = None;
                }
            }
        }
        if let Some(a) = &patch.assignee {
            let a = bounded_str(a.trim(), 128);
            if self.assignee.as_deref() != Some(a.as_str()) {
                self.history
                    .push(change("assignee", self.assignee.clone(), a.clone()));
                self.assignee = (!a.is_empty()).then_some(a);
            }
        }
        if let Some(n) = &patch.note {
            let text = bounded_str(n.trim(), 4096);
            if !text.is_empty() {
                self.history.push(change("notes", None, text.clone()));
                self.notes.push(Note {
                    at: now,
                    by: by.to_string(),
                    text,
                });
            }
        }
        for id in &patch.related {
            if !self.related.contains(id) {
                self.related.push(*id);
                self.history.push(change("related", None, id.to_string()));
            }
        }
        Ok(())
    }
}

/// Serde for Unix-microsecond times as RFC 3339 text.
pub mod time_field {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&super::format_time(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        super::parse_time(&s).map_err(serde::de::Error::custom)
    }
}

/// Serde for optional Unix-microsecond times as RFC 3339 text.
pub mod opt_time_field {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.collect_str(&super::format_time(*t)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        let s = <Option<std::borrow::Cow<'de, str>>>::deserialize(d)?;
        s.map(|s| super::parse_time(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_time_ordered_unique_and_round_trip() {
        let a = EventId::new(1_000);
        let b = EventId::new(1_000);
        let c = EventId::new(999);
        assert!(a < b && c < a);
        assert_eq!(a.to_string().parse::<EventId>().unwrap(), a);
        assert_eq!(a.time_micros(), 1_000);
        assert!("xyz".parse::<EventId>().is_err());
    }

    #[test]
    fn times_keep_microseconds_through_json() {
        let mut e = AuditEvent::new(EventType::IpBlocked, "m");
        e.time = 1_764_633_600_123_000;
        let back: AuditEvent = serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
        assert_eq!(back.time, e.time);
        assert_eq!(back.risk, Risk::Medium);
    }

    #[test]
    fn workflow_refuses_skips_and_unexplained_resolution() {
        let mut inv = Investigation::default();
        let p = |status, note: Option<&str>| Patch {
            by: "ana".into(),
            status: Some(status),
            note: note.map(Into::into),
            ..Patch::default()
        };
        assert!(matches!(
            inv.apply(&p(Status::Resolved, Some("x")), 1),
            Err(PatchError::Transition { .. })
        ));
        inv.apply(&p(Status::Investigating, None), 2).unwrap();
        assert!(inv.apply(&p(Status::Resolved, None), 3).is_err());
        inv.apply(&p(Status::Resolved, Some("benign scanner")), 4)
            .unwrap();
        assert_eq!(inv.resolved_by.as_deref(), Some("ana"));
        assert_eq!(inv.resolved_at, Some(4));
        assert_eq!(inv.history.len(), 3);
    }

    #[test]
    fn paths_are_bounded_on_char_boundaries() {
        let long = "é".repeat(600);
        let e = AuditEvent::new(EventType::WafBlocked, "m").path(&long);
        assert_eq!(e.path.unwrap().chars().count(), MAX_PATH_CHARS + 1);
    }
}
