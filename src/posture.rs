//! Security posture: each check of the config in force and the state it left on disk
//! (certificates, tokens, backups, the event store), with its evidence, what to do when
//! it fails, and the controls it supports in PCI DSS v4, SOC 2, ISO/IEC 27001:2022,
//! HIPAA and GDPR; a score per framework and overall.
//!
//! `gateway posture` runs it on a config file (without the running gateway: checks that
//! need the running process, such as dropped events, are `skipped`); `GET /api/v1/posture`
//! on the running gateway, which also records a `posture_checked` event and sets
//! `gateway_posture_score{framework}`.
//!
//! A score is the share of passed checks among the passed and failed ones mapped to the
//! framework (skipped ones do not count), in percent. The control ids say which
//! requirement a check gives evidence for; they are not a certification.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::runtime::Runtime;
use crate::secrets::SecretSource;

/// The frameworks scored, in report order.
pub const FRAMEWORKS: [&str; 5] = ["PCI DSS v4", "SOC 2", "ISO 27001:2022", "HIPAA", "GDPR"];

/// The metric label of each framework, in the order of [`FRAMEWORKS`].
const LABELS: [&str; 5] = ["pci_dss_v4", "soc2", "iso27001_2022", "hipaa", "gdpr"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pass,
    Fail,
    /// The check needs what this run cannot see (e.g. the running process).
    Skipped,
}

/// One check's result.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub id: &'static str,
    pub title: &'static str,
    pub status: Status,
    pub evidence: String,
    /// What to change when it fails.
    pub recommendation: &'static str,
    /// Framework name → control ids.
    pub controls: Vec<(&'static str, Vec<&'static str>)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Score {
    pub framework: &'static str,
    pub passed: usize,
    pub failed: usize,
    pub score: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub checks: Vec<Check>,
    pub scores: Vec<Score>,
    pub overall: u32,
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
}

/// What only the running gateway knows; `None` when run from the command line.
#[derive(Debug, Default, Clone, Copy)]
pub struct Live {
    /// Events dropped since start (queue full, store failing).
    pub events_dropped: u64,
}

const DAY: u64 = 86_400;
/// Certificates closer to expiry than this fail.
const CERT_MARGIN_DAYS: u64 = 30;
/// Admin tokens older than this fail (rotate them).
const TOKEN_MAX_AGE_DAYS: u64 = 90;
const TOKEN_MIN_LEN: usize = 32;
/// Audit events must be kept at least this long (PCI DSS 10.5.1: twelve months).
const AUDIT_RETENTION_DAYS: u64 = 365;
/// Session timeouts at most (PCI DSS 8.2.8: 15 minutes idle).
const SESSION_IDLE_MAX: Duration = Duration::from_secs(15 * 60);
const SESSION_ABSOLUTE_MAX: Duration = Duration::from_secs(12 * 3600);
/// Brute force: at most this many failures before a lock of at least 30 minutes (PCI 8.3.4).
const LOGIN_MAX_FAILURES: u32 = 10;
const LOGIN_MIN_LOCK: Duration = Duration::from_secs(30 * 60);

type Controls = &'static [(&'static str, &'static [&'static str])];

const TRANSPORT: Controls = &[
    ("PCI DSS v4", &["4.2.1"]),
    ("SOC 2", &["CC6.7"]),
    ("ISO 27001:2022", &["A.8.24"]),
    ("HIPAA", &["164.312(e)(1)"]),
    ("GDPR", &["Art. 32(1)(a)"]),
];
const CERTS: Controls = &[
    ("PCI DSS v4", &["4.2.1", "4.2.1.1"]),
    ("SOC 2", &["CC6.7"]),
    ("ISO 27001:2022", &["A.8.24"]),
    ("HIPAA", &["164.312(e)(1)"]),
];
const ADMIN_EXPOSURE: Controls = &[
    ("PCI DSS v4", &["1.3.1", "7.2.1"]),
    ("SOC 2", &["CC6.1", "CC6.6"]),
    ("ISO 27001:2022", &["A.8.20", "A.5.15"]),
    ("HIPAA", &["164.312(a)(1)"]),
];
const AUTHENTICATORS: Controls = &[
    ("PCI DSS v4", &["8.3.6", "8.3.9", "8.6.3"]),
    ("SOC 2", &["CC6.1", "CC6.2"]),
    ("ISO 27001:2022", &["A.5.17", "A.8.5"]),
    ("HIPAA", &["164.312(d)"]),
    ("GDPR", &["Art. 32(1)(b)"]),
];
const LEAST_PRIVILEGE: Controls = &[
    ("PCI DSS v4", &["7.2.1", "7.2.2"]),
    ("SOC 2", &["CC6.3"]),
    ("ISO 27001:2022", &["A.5.15", "A.8.2"]),
    ("HIPAA", &["164.308(a)(4)"]),
];
const WAF: Controls = &[
    ("PCI DSS v4", &["6.4.2"]),
    ("SOC 2", &["CC6.6", "CC7.2"]),
    ("ISO 27001:2022", &["A.8.20", "A.8.26"]),
    ("HIPAA", &["164.308(a)(1)(ii)(B)"]),
    ("GDPR", &["Art. 32(1)(b)"]),
];
const ABUSE: Controls = &[
    ("PCI DSS v4", &["6.4.2"]),
    ("SOC 2", &["A1.1", "CC6.6"]),
    ("ISO 27001:2022", &["A.8.6", "A.8.20"]),
    ("GDPR", &["Art. 32(1)(b)"]),
];
const LOCKOUT: Controls = &[
    ("PCI DSS v4", &["8.3.4"]),
    ("SOC 2", &["CC6.1"]),
    ("ISO 27001:2022", &["A.8.5"]),
    ("HIPAA", &["164.312(d)"]),
];
const SESSION_TIMEOUTS: Controls = &[
    ("PCI DSS v4", &["8.2.8"]),
    ("SOC 2", &["CC6.1"]),
    ("ISO 27001:2022", &["A.8.5"]),
    ("HIPAA", &["164.312(a)(2)(iii)"]),
];
const BACKUPS: Controls = &[
    ("PCI DSS v4", &["12.10.1"]),
    ("SOC 2", &["A1.2", "A1.3"]),
    ("ISO 27001:2022", &["A.8.13"]),
    ("HIPAA", &["164.308(a)(7)(ii)(A)", "164.308(a)(7)(ii)(D)"]),
    ("GDPR", &["Art. 32(1)(c)", "Art. 32(1)(d)"]),
];
const AUDIT_LOG: Controls = &[
    ("PCI DSS v4", &["10.2.1", "10.5.1", "10.7.2"]),
    ("SOC 2", &["CC7.2"]),
    ("ISO 27001:2022", &["A.8.15"]),
    ("HIPAA", &["164.312(b)"]),
];
const CLIENT_IDENTITY: Controls = &[
    ("PCI DSS v4", &["10.2.2"]),
    ("SOC 2", &["CC6.6"]),
    ("ISO 27001:2022", &["A.8.15", "A.8.20"]),
];
const EGRESS: Controls = &[
    ("PCI DSS v4", &["1.3.2", "1.4.2"]),
    ("SOC 2", &["CC6.6"]),
    ("ISO 27001:2022", &["A.8.20", "A.8.22"]),
    ("GDPR", &["Art. 32(1)(b)"]),
];
const SECRETS_AT_REST: Controls = &[
    ("PCI DSS v4", &["3.6.1", "8.3.2"]),
    ("SOC 2", &["CC6.1"]),
    ("ISO 27001:2022", &["A.5.17", "A.8.24"]),
    ("GDPR", &["Art. 32(1)(a)"]),
];

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn age_secs(path: &Path) -> Option<u64> {
    let modified = std::fs::metadata(path).ok()?.modified().ok()?;
    Some(
        SystemTime::now()
            .duration_since(modified)
            .map_or(0, |d| d.as_secs()),
    )
}

fn days(secs: u64) -> String {
    format!("{:.1} days", secs as f64 / DAY as f64)
}

/// Runs every check. `live`: what the running gateway knows; `verify_backup`: open and
/// check the newest backup in full (reads it once).
pub fn evaluate(rt: &Runtime, live: Option<Live>, verify_backup: bool) -> Report {
    let raw = &*rt.source;
    let resolve = |p: &Path| -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            rt.base_dir.join(p)
        }
    };
    let mut checks = Vec::new();
    let mut add = |id: &'static str,
                   title: &'static str,
                   status: Status,
                   evidence: String,
                   recommendation: &'static str,
                   controls: Controls| {
        checks.push(Check {
            id,
            title,
            status,
            evidence,
            recommendation,
            controls: controls.iter().map(|(f, c)| (*f, c.to_vec())).collect(),
        });
    };
    let pass = |ok: bool| if ok { Status::Pass } else { Status::Fail };

    // Transport.
    let plain: Vec<&str> = raw
        .listeners
        .iter()
        .filter(|l| !l.tls)
        .map(|l| l.name.as_str())
        .collect();
    add(
        "tls_protocols",
        "TLS 1.2 and 1.3 only, AEAD cipher suites only",
        Status::Pass,
        "rustls: TLS 1.2 and 1.3 with AES-GCM and ChaCha20-Poly1305 (no SSLv3, TLS 1.0/1.1, CBC or RC4)".into(),
        "",
        TRANSPORT,
    );
    add(
        "plain_listeners",
        "Every listener uses TLS",
        pass(plain.is_empty()),
        if plain.is_empty() {
            format!("{} listener(s), all TLS", raw.listeners.len())
        } else {
            format!("plain HTTP listeners: {}", plain.join(", "))
        },
        "Serve clients over TLS only: set `tls = true` on every listener, or keep a plain one on loopback behind a TLS terminator.",
        TRANSPORT,
    );
    let tls_listeners = raw.listeners.iter().any(|l| l.tls);
    add(
        "hsts",
        "Browsers are told to use HTTPS only (Strict-Transport-Security)",
        if tls_listeners {
            pass(raw.tls.hsts.as_deref().is_some_and(|v| {
                v.to_ascii_lowercase()
                    .trim_start()
                    .strip_prefix("max-age=")
                    .and_then(|r| r.split(';').next())
                    .and_then(|n| n.trim().parse::<u64>().ok())
                    .is_some_and(|n| n >= 180 * DAY)
            }))
        } else {
            Status::Skipped
        },
        match &raw.tls.hsts {
            Some(v) => format!("Strict-Transport-Security: {v}"),
            None => "no `[tls] hsts`: browsers may try plain HTTP first".into(),
        },
        "Set `[tls] hsts = \"max-age=31536000; includeSubDomains\"` (at least 180 days) once every name is served over HTTPS.",
        TRANSPORT,
    );
    let mut cert_notes = Vec::new();
    let mut cert_ok = !raw.tls.certificates.is_empty() || raw.listeners.iter().all(|l| !l.tls);
    for c in &raw.tls.certificates {
        let path = resolve(&c.cert);
        match cert_not_after(&path) {
            Ok((not_after, dev)) => {
                let left = not_after.saturating_sub(now_secs());
                if left < CERT_MARGIN_DAYS * DAY {
                    cert_ok = false;
                }
                if dev {
                    cert_ok = false;
                }
                cert_notes.push(format!(
                    "{}: expires in {}{}",
                    c.cert.display(),
                    days(left),
                    if dev {
                        " (development certificate from the gateway's own CA)"
                    } else {
                        ""
                    }
                ));
            }
            Err(e) => {
                cert_ok = false;
                cert_notes.push(format!("{}: {e}", c.cert.display()));
            }
        }
    }
    add(
        "certificate_expiry",
        "Certificates are publicly trusted and valid for 30 days or more",
        pass(cert_ok),
        if cert_notes.is_empty() {
            "no certificates".into()
        } else {
            cert_notes.join("; ")
        },
        "Install certificates from a trusted CA (not `dev_self_signed`) and renew them before the last 30 days.",
        CERTS,
    );

    // Admin access.
    add(
        "admin_exposure",
        "The admin API listens on loopback only",
        pass(!rt.admin.enabled || rt.admin.bind.ip().is_loopback()),
        format!(
            "admin {} on {}",
            if rt.admin.enabled { "enabled" } else { "disabled" },
            rt.admin.bind
        ),
        "Keep `[admin] bind` on 127.0.0.1 and reach it through an SSH tunnel or a TLS terminator; expose only `metrics_bind`.",
        ADMIN_EXPOSURE,
    );
    let mut token_notes = Vec::new();
    let mut tokens_ok = true;
    let env_token = std::env::var("GATEWAY_ADMIN_TOKEN").is_ok_and(|t| !t.is_empty());
    if raw.admin.token.is_some() && !env_token {
        tokens_ok = false;
        token_notes.push("`admin.token` is written in the config file".to_string());
    }
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    if let (Some(f), false, None) = (&rt.admin.token_file, env_token, &raw.admin.token) {
        files.push(("admin".into(), f.clone()));
    }
    for t in &rt.admin.tokens {
        if let SecretSource::File(f) = &t.source {
            files.push((t.name.clone(), f.clone()));
        }
    }
    for (name, f) in &files {
        match std::fs::read_to_string(f) {
            Ok(secret) => {
                let len = secret.trim().len();
                let age = age_secs(f).unwrap_or(0);
                if len < TOKEN_MIN_LEN || age > TOKEN_MAX_AGE_DAYS * DAY {
                    tokens_ok = false;
                }
                token_notes.push(format!("`{name}`: {len} characters, {} old", days(age)));
            }
            Err(_) => token_notes.push(format!(
                "`{name}`: file not created yet (random at first start)"
            )),
        }
    }
    add(
        "admin_tokens",
        "Admin tokens are long, random, out of the config, and rotated within 90 days",
        pass(tokens_ok),
        if token_notes.is_empty() {
            "no admin token: the API is off".into()
        } else {
            token_notes.join("; ")
        },
        "Use `token_file` or `token_env` (32+ random characters) and replace each token at least every 90 days.",
        AUTHENTICATORS,
    );
    let limited = rt
        .admin
        .tokens
        .iter()
        .filter(|t| t.role != crate::config::AdminRole::Admin)
        .count();
    add(
        "admin_roles",
        "People use named tokens with the least role they need",
        pass(limited > 0),
        format!(
            "{} named token(s), {limited} with a role below admin",
            rt.admin.tokens.len()
        ),
        "Give each person a `[[admin.tokens]]` entry with the `viewer` or `operator` role; keep `admin` for the few who reload and restore.",
        LEAST_PRIVILEGE,
    );

    // Attack protection.
    let weaker: Vec<String> = raw
        .routes
        .iter()
        .filter(|r| r.waf.is_some_and(|m| m != crate::waf::Mode::Block))
        .map(|r| format!("{} ({:?})", r.name, r.waf.unwrap_or_default()))
        .collect();
    let blocking = rt.waf.is_some() && raw.waf.mode == crate::waf::Mode::Block;
    add(
        "waf_blocking",
        "The WAF runs and blocks on every route",
        pass(blocking && weaker.is_empty()),
        match &rt.waf {
            Some(_) => format!(
                "mode {}, paranoia level {}{}",
                format!("{:?}", raw.waf.mode).to_lowercase(),
                raw.waf.paranoia_level,
                if weaker.is_empty() {
                    String::new()
                } else {
                    format!("; routes not blocking: {}", weaker.join(", "))
                }
            ),
            None => "no WAF rules configured".into(),
        },
        "Set `[waf] rules = [\"rules/*.toml\"]` and `mode = \"block\"` (use `detect` only while tuning), also on every route.",
        WAF,
    );
    let crs = rt.waf.as_ref().is_some_and(|w| w.crs.is_some());
    add(
        "waf_crs",
        "The OWASP Core Rule Set runs beside the native rules",
        pass(crs),
        match &raw.waf.crs {
            Some(c) if crs => format!(
                "CRS from {} at paranoia level {}",
                c.path.display(),
                c.paranoia_level
            ),
            _ => "not configured".into(),
        },
        "Add `[waf.crs] path = \"/path/to/coreruleset\"` (PL1 to start) for defence in depth.",
        WAF,
    );
    add(
        "rate_limits",
        "Requests are rate-limited and abusers banned",
        pass(!raw.rate_limits.is_empty() && rt.bans.enabled),
        format!(
            "{} rate-limit polic(ies); automatic bans {}",
            raw.rate_limits.len(),
            if rt.bans.enabled { "on" } else { "off" }
        ),
        "Add a `[[rate_limits]]` policy keyed by IP and keep `[bans] enabled = true`.",
        ABUSE,
    );
    let logins: Vec<_> = raw.apps.iter().filter(|a| a.login.is_some()).collect();
    let weak: Vec<&str> = logins
        .iter()
        .filter(|a| {
            !a.brute_force.enabled
                || a.brute_force.max_failures > LOGIN_MAX_FAILURES
                || a.brute_force.lock_for < LOGIN_MIN_LOCK
        })
        .map(|a| a.name.as_str())
        .collect();
    add(
        "login_lockout",
        "Logins lock after at most 10 failures for at least 30 minutes",
        if logins.is_empty() {
            Status::Skipped
        } else {
            pass(weak.is_empty())
        },
        if logins.is_empty() {
            "no app with a login configured".into()
        } else if weak.is_empty() {
            format!("{} app(s) with a login, all locking", logins.len())
        } else {
            format!("too weak or off: {}", weak.join(", "))
        },
        "In `[apps.brute_force]` keep `enabled = true`, `max_failures` ≤ 10 and `lock_for` ≥ 30m.",
        LOCKOUT,
    );
    let sessions: Vec<_> = raw
        .apps
        .iter()
        .filter_map(|a| a.session.as_ref().map(|s| (a, s)))
        .collect();
    let long: Vec<String> = sessions
        .iter()
        .filter(|(_, s)| {
            s.idle_timeout > SESSION_IDLE_MAX || s.absolute_timeout > SESSION_ABSOLUTE_MAX
        })
        .map(|(a, s)| {
            format!(
                "{} (idle {}, absolute {})",
                a.name,
                humantime::format_duration(s.idle_timeout),
                humantime::format_duration(s.absolute_timeout)
            )
        })
        .collect();
    add(
        "session_timeouts",
        "Sessions end after 15 minutes idle and 12 hours in all",
        if sessions.is_empty() {
            Status::Skipped
        } else {
            pass(long.is_empty())
        },
        if sessions.is_empty() {
            "no app sessions configured".into()
        } else if long.is_empty() {
            format!("{} app(s), all within the limits", sessions.len())
        } else {
            format!("too long: {}", long.join(", "))
        },
        "Set `[apps.session] idle_timeout` ≤ 15m and `absolute_timeout` ≤ 12h.",
        SESSION_TIMEOUTS,
    );

    // Records and recovery.
    let backups = crate::events::backup::list(&rt.events.backup.dir).unwrap_or_default();
    let newest = backups.first();
    let schedule = rt.events.backup.schedule.as_ref();
    let newest_age = newest.and_then(|b| age_secs(&b.path));
    let due = schedule.map_or(2 * DAY, |s| 2 * s.period().as_secs().max(3600));
    add(
        "backups_recent",
        "Backups are scheduled and the newest is recent",
        pass(schedule.is_some() && newest_age.is_some_and(|a| a <= due)),
        match (schedule, newest, newest_age) {
            (None, _, _) => "no backup schedule (`[events.backup] every` or `schedule`)".into(),
            (Some(_), None, _) => "scheduled, but no backup yet".into(),
            (Some(s), Some(b), age) => format!(
                "{s}; newest {} ({} old)",
                b.name,
                days(age.unwrap_or(0))
            ),
        },
        "Set `[events.backup] every = \"24h\"`, and check that backups keep appearing in the backup directory.",
        BACKUPS,
    );
    let verified = match newest {
        None => (Status::Fail, "no backup to verify".to_string()),
        Some(_) if !verify_backup => (Status::Skipped, "not verified in this run".to_string()),
        Some(b) => match crate::events::backup::verify(&b.path, &rt.events.backup.dir) {
            Ok(v) => (
                Status::Pass,
                format!("{} verified: {} audit events", b.name, v.audit_events),
            ),
            Err(e) => (Status::Fail, format!("{}: {e}", b.name)),
        },
    };
    add(
        "backups_verified",
        "The newest backup restores (every entry and digest checks)",
        verified.0,
        verified.1,
        "Run `gateway backup verify` on the newest backup; take a new one if it is damaged.",
        BACKUPS,
    );
    let audit_days = rt.events.retention.audit.as_secs() / DAY;
    add(
        "audit_retention",
        "Audit events are kept for at least a year",
        pass(audit_days >= AUDIT_RETENTION_DAYS),
        format!("audit events kept {audit_days} days, then archived"),
        "Set `[events.retention] audit = \"365d\"` or more (archives keep older records).",
        AUDIT_LOG,
    );
    add(
        "events_complete",
        "No audit event was dropped",
        match live {
            None => Status::Skipped,
            Some(l) => pass(l.events_dropped == 0),
        },
        match live {
            None => "needs the running gateway (GET /api/v1/posture)".into(),
            Some(l) => format!("{} event(s) dropped since start", l.events_dropped),
        },
        "Raise `[events] queue_capacity` or find why the store is slow (gateway_events_commit_duration_seconds).",
        AUDIT_LOG,
    );
    let store_bytes = std::fs::metadata(&rt.events.store_path)
        .map(|m| m.len())
        .ok();
    let free = disk_free_fraction(rt.events.store_path.parent().unwrap_or(Path::new(".")));
    add(
        "event_store_capacity",
        "The event store's disk has room (10 % or more free)",
        match free {
            None => Status::Skipped,
            Some(f) => pass(f >= 0.10),
        },
        format!(
            "store {}; disk {}",
            store_bytes.map_or("not created yet".into(), |b| format!(
                "{:.1} MiB",
                b as f64 / 1048576.0
            )),
            free.map_or("unknown".into(), |f| format!("{:.0} % free", f * 100.0))
        ),
        "Free disk space or shorten `[events.retention]`; archives can move elsewhere.",
        AUDIT_LOG,
    );
    let open_proxies: Vec<&str> = raw
        .server
        .trusted_proxies
        .iter()
        .filter(|p| p.ends_with("/0"))
        .map(String::as_str)
        .collect();
    add(
        "client_addresses",
        "Client addresses come from trusted proxies only",
        pass(open_proxies.is_empty()),
        if raw.server.trusted_proxies.is_empty() {
            "no trusted proxies: the peer address is the client".into()
        } else if open_proxies.is_empty() {
            format!("trusted proxies: {}", raw.server.trusted_proxies.join(", "))
        } else {
            format!("every address is trusted: {}", open_proxies.join(", "))
        },
        "List only your load balancers in `[server] trusted_proxies`, never 0.0.0.0/0.",
        CLIENT_IDENTITY,
    );
    add(
        "egress_restricted",
        "Outbound connections are limited to listed networks",
        pass(!raw.network.egress_allow.is_empty()),
        if raw.network.egress_allow.is_empty() {
            "no [network] egress_allow: upstreams and webhooks may reach any address".into()
        } else {
            format!("egress_allow: {}", raw.network.egress_allow.join(", "))
        },
        "List your upstreams' and webhooks' networks in `[network] egress_allow` (DNS answers are checked at connect).",
        EGRESS,
    );
    add(
        "backup_secrets",
        "Backups hold no secret from the config",
        pass(!raw.events.backup.include_secrets),
        format!("include_secrets = {}", raw.events.backup.include_secrets),
        "Keep `[events.backup] include_secrets = false` (secrets read REDACTED in backups).",
        SECRETS_AT_REST,
    );

    score(checks)
}

fn score(checks: Vec<Check>) -> Report {
    let count = |s: Status| checks.iter().filter(|c| c.status == s).count();
    let (passed, failed, skipped) = (
        count(Status::Pass),
        count(Status::Fail),
        count(Status::Skipped),
    );
    // Nothing passed or failed: nothing to hold against the config.
    let pct = |p: usize, f: usize| (100 * p).checked_div(p + f).unwrap_or(100) as u32;
    let scores = FRAMEWORKS
        .iter()
        .map(|fw| {
            let mapped = checks
                .iter()
                .filter(|c| c.controls.iter().any(|(f, _)| f == fw));
            let (mut p, mut f) = (0, 0);
            for c in mapped {
                match c.status {
                    Status::Pass => p += 1,
                    Status::Fail => f += 1,
                    Status::Skipped => {}
                }
            }
            Score {
                framework: fw,
                passed: p,
                failed: f,
                score: pct(p, f),
            }
        })
        .collect();
    Report {
        overall: pct(passed, failed),
        checks,
        scores,
        passed,
        failed,
        skipped,
    }
}

/// A certificate file's leaf `notAfter` (Unix seconds) and whether the gateway's own
/// development CA issued it.
fn cert_not_after(path: &Path) -> Result<(u64, bool), String> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let leaf = CertificateDer::pem_file_iter(path)
        .map_err(|e| e.to_string())?
        .next()
        .ok_or("no certificate in the file")?
        .map_err(|e| e.to_string())?;
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf).map_err(|e| e.to_string())?;
    let dev = cert
        .issuer()
        .iter_common_name()
        .any(|cn| cn.as_str() == Ok(crate::tls::dev_cert::CA_COMMON_NAME));
    Ok((cert.validity().not_after.timestamp().max(0) as u64, dev))
}

/// The free share of the file system holding `dir` (the store's directory).
fn disk_free_fraction(dir: &Path) -> Option<f64> {
    crate::events::files::free_fraction(dir)
}

impl Report {
    /// Sets `gateway_posture_score{framework}` and returns the `posture_checked` event
    /// (escalated to medium when a check failed) for the caller to record or drop.
    pub fn record(&self, metrics: &crate::metrics::Metrics) -> crate::events::AuditEvent {
        metrics
            .posture_score
            .with_label_values(&["overall"])
            .set(self.overall as i64);
        for (s, label) in self.scores.iter().zip(LABELS) {
            metrics
                .posture_score
                .with_label_values(&[label])
                .set(s.score as i64);
        }
        let failed: Vec<&str> = self
            .checks
            .iter()
            .filter(|c| c.status == Status::Fail)
            .map(|c| c.id)
            .collect();
        let mut e = crate::events::AuditEvent::new(
            crate::events::EventType::PostureChecked,
            format!(
                "posture {} %: {} passed, {} failed, {} skipped",
                self.overall, self.passed, self.failed, self.skipped
            ),
        )
        .detail("score", self.overall.to_string())
        .detail("failed", failed.join(","));
        for s in &self.scores {
            e = e.detail(&format!("score.{}", s.framework), s.score.to_string());
        }
        if !failed.is_empty() {
            e = e.escalated();
        }
        e
    }

    /// The report as an operator reads it in a terminal.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for c in &self.checks {
            let tag = match c.status {
                Status::Pass => "PASS",
                Status::Fail => "FAIL",
                Status::Skipped => "SKIP",
            };
            out.push_str(&format!(
                "{tag}  {:<22} {}\n      {}\n",
                c.id, c.title, c.evidence
            ));
            if c.status == Status::Fail {
                out.push_str(&format!("      → {}\n", c.recommendation));
            }
        }
        out.push('\n');
        for s in &self.scores {
            out.push_str(&format!(
                "{:<16} {:>3} %  ({} passed, {} failed)\n",
                s.framework, s.score, s.passed, s.failed
            ));
        }
        out.push_str(&format!(
            "{:<16} {:>3} %  ({} passed, {} failed, {} skipped)\n",
            "overall", self.overall, self.passed, self.failed, self.skipped
        ));
        out
    }
}
