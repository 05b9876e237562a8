//! Bans, login locks and session revocations shared by the instances of a cluster.
//!
//! A decision made here is offered with [`Sync::offer`] (never waits: a bounded queue,
//! full means the change stays local until the next resync) and written by [`publish`] to
//! a Redis hash (`<prefix>:bans`, `:locks`, `:revoked`) and the channel `<prefix>:changes`.
//! [`subscribe`] applies what other instances publish to the in-memory sets the request
//! path reads. [`resync`], run whenever Redis comes (back), pulls the hashes (what this
//! instance missed while cut off) and pushes this instance's active bans, locks and
//! revocations that Redis lacks (a Redis restarted empty gets them back). Expired entries
//! are skipped both ways.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::Cluster;
use crate::app::Shared;
use crate::bans::Ban;
use crate::events::model::now_micros;

/// One shared decision.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    Ban {
        ban: Ban,
    },
    Unban {
        ip: IpAddr,
    },
    Lock {
        app: String,
        user: String,
        until: u64,
        /// Set when the lock comes from failures counted across instances: the instance
        /// whose failure crossed the limit (it records the detection) and the count.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        shared_detection: Option<(String, u32)>,
    },
    Unlock {
        user: String,
    },
    /// A session ended by an operator (or a forced logout of its user).
    Revoke {
        app: String,
        id: String,
        until: u64,
    },
    /// Every session of a user, on the instances that know them.
    RevokeUser {
        user: String,
        until: u64,
    },
    /// Failed logins from one address counted across the instances reached the app's
    /// `ip_max_failures` (`detection` "address") or `stuffing_users` ("credential_stuffing"):
    /// the instance `by`, whose failure crossed the limit, records it and bans the address
    /// (a ban then shared like any other).
    Detection {
        app: String,
        ip: IpAddr,
        detection: String,
        count: u32,
        by: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct Message {
    from: String,
    #[serde(flatten)]
    change: Change,
}

/// How long a revocation is kept in Redis: past it, the session has expired anyway.
const REVOCATION_TTL: Duration = Duration::from_secs(24 * 3600);

/// The queue of local changes and the revocations this instance knows.
pub struct Sync {
    prefix: String,
    instance: String,
    tx: mpsc::Sender<Change>,
    rx: Mutex<Option<mpsc::Receiver<Change>>>,
    /// Revocations (id → (app, until)), to push at a resync.
    revoked: Mutex<HashMap<String, (String, u64)>>,
    /// [`FAILURES`] and [`USER_SESSIONS`], hashed once.
    failures: redis::Script,
    address_failures: redis::Script,
    user_sessions: redis::Script,
    write: redis::Script,
}

impl Sync {
    pub fn new(prefix: &str, instance: &str) -> Sync {
        let (tx, rx) = mpsc::channel(4096);
        Sync {
            prefix: prefix.to_string(),
            instance: instance.to_string(),
            tx,
            rx: Mutex::new(Some(rx)),
            revoked: Mutex::new(HashMap::new()),
            failures: redis::Script::new(FAILURES),
            address_failures: redis::Script::new(ADDRESS_FAILURES),
            user_sessions: redis::Script::new(USER_SESSIONS),
            write: redis::Script::new(WRITE),
        }
    }

    /// Queues a decision of this instance for the others; never waits.
    pub fn offer(&self, c: Change) {
        if let Change::Revoke { app, id, until } = &c {
            self.revoked
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id.clone(), (app.clone(), *until));
        }
        if self.tx.try_send(c).is_err() {
            tracing::warn!("cluster change queue full; the change is shared at the next resync");
        }
    }

    /// A revocation of session `id` of `app`, valid for a day.
    pub fn revocation(app: &str, id: u128) -> Change {
        Change::Revoke {
            app: app.to_string(),
            id: format!("{id:032x}"),
            until: now_micros() + REVOCATION_TTL.as_micros() as u64,
        }
    }

    /// A shared record: every one under the hash tag `{<prefix>}`, so on a Redis Cluster
    /// they live in one slot (a resync's pipeline and a change's script touch several).
    fn key(&self, what: &str) -> String {
        format!("{{{}}}:{what}", self.prefix)
    }

    /// The channel of changes, in the records' slot (a Redis Cluster client sends a
    /// pipeline to one slot; any node relays a message to every subscriber).
    fn channel(&self) -> String {
        self.key("changes")
    }
}

/// The Redis hash and field a change lives under (`None`: it is only published).
fn record_of(c: &Change) -> Option<(&'static str, String, Option<String>)> {
    Some(match c {
        Change::Ban { ban } => ("bans", ban.ip.to_string(), serde_json::to_string(ban).ok()),
        Change::Unban { ip } => ("bans", ip.to_string(), None),
        Change::Lock {
            app, user, until, ..
        } => (
            "locks",
            format!("{app}\u{0}{user}"),
            Some(until.to_string()),
        ),
        Change::Unlock { .. } | Change::RevokeUser { .. } | Change::Detection { .. } => {
            return None
        }
        Change::Revoke { app, id, until } => {
            ("revoked", id.clone(), Some(format!("{app}\u{0}{until}")))
        }
    })
}

/// Writes queued changes to Redis and publishes them; a change that cannot be written now
/// stays in this instance's state and is pushed at the next resync.
pub async fn publish(cluster: Arc<Cluster>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let Some(mut rx) = cluster
        .sync
        .rx
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
    else {
        return;
    };
    loop {
        let c = tokio::select! {
            c = rx.recv() => match c { Some(c) => c, None => return },
            _ = stop.wait_for(|s| *s) => return,
        };
        if !write(&cluster, &cluster.sync.instance, c).await {
            tracing::debug!("cluster change not published (redis unreachable); kept for resync");
        }
    }
}

/// Records a change in its hash and publishes it, atomically (one script: no MULTI, which
/// a Redis Cluster client cannot route). KEYS[1]: the hash. ARGV: `set` / `del` / `unlock`
/// (every app's lock of user ARGV[2]) / `none`, the field, the value, the channel, the
/// message.
const WRITE: &str = r#"
if ARGV[1] == 'set' then
  redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
elseif ARGV[1] == 'del' then
  redis.call('HDEL', KEYS[1], ARGV[2])
elseif ARGV[1] == 'unlock' then
  for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
    local sep = string.find(f, '\0', 1, true)
    if sep and string.sub(f, sep + 1) == ARGV[2] then redis.call('HDEL', KEYS[1], f) end
  end
end
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 0
"#;

/// Writes `change` to its Redis hash and publishes it as coming from `from`, in one
/// script; false when Redis could not be reached in time.
async fn write(cluster: &Cluster, from: &str, change: Change) -> bool {
    let msg = Message {
        from: from.to_string(),
        change,
    };
    let Ok(body) = serde_json::to_string(&msg) else {
        return false;
    };
    let s = &cluster.sync;
    let (hash, op, field, value) = match (&msg.change, record_of(&msg.change)) {
        (Change::Unlock { user }, _) => (s.key("locks"), "unlock", user.clone(), String::new()),
        (_, Some((h, f, Some(v)))) => (s.key(h), "set", f, v),
        (_, Some((h, f, None))) => (s.key(h), "del", f, String::new()),
        (_, None) => (s.key("bans"), "none", String::new(), String::new()),
    };
    let mut inv = s.write.prepare_invoke();
    inv.key(hash)
        .arg(op)
        .arg(field)
        .arg(value)
        .arg(s.channel())
        .arg(body);
    cluster
        .call(|mut c| async move { inv.invoke_async::<()>(&mut c).await })
        .await
        .is_some()
}

/// Applies one change made elsewhere; returns whether it changed anything here.
fn apply(shared: &Shared, from: &str, c: Change) -> bool {
    let now = now_micros();
    let changed = match c {
        Change::Ban { ban } => {
            if !ban.active(now) {
                return false;
            }
            let stored = ban.clone();
            let applied = shared.bans.apply(ban);
            if applied {
                shared.events.write_detached(move |store| {
                    if let Err(e) = crate::bans::save(store, &stored) {
                        tracing::error!(error = %e, "storing a shared ban failed");
                    }
                });
            }
            applied
        }
        Change::Unban { ip } => {
            let lifted = shared.bans.unban(ip).is_some();
            if lifted {
                shared.events.write_detached(move |store| {
                    if let Err(e) = crate::bans::remove(store, &[ip]) {
                        tracing::error!(error = %e, "removing a shared ban failed");
                    }
                });
            }
            lifted
        }
        Change::Lock {
            app,
            user,
            until,
            shared_detection,
        } => {
            let applied = until > now
                && shared
                    .sessions
                    .brute_force
                    .apply_lock(&app.clone().into(), &user, until);
            if let Some((by, failures)) = shared_detection.filter(|_| applied) {
                if shared.instance() == Some(by.as_str()) {
                    let mut e = crate::events::AuditEvent::new(
                        crate::events::EventType::BruteForceDetected,
                        format!("brute force on user `{user}`: {failures} failed logins across the cluster's instances"),
                    )
                    .detail("app", app)
                    .detail("kind", "user")
                    .detail("across_instances", "true")
                    .detail("instance", by)
                    .detail("locked_until", crate::events::model::format_time(until));
                    e.user = Some(user.clone());
                    shared.events.sink.audit(e);
                    shared
                        .metrics
                        .brute_force_detections
                        .with_label_values(&["user"])
                        .inc();
                }
            }
            applied
        }
        Change::Unlock { user } => shared.sessions.brute_force.unlock(&user),
        Change::Revoke { app, id, until } => {
            if until <= now {
                return false;
            }
            let rt = shared.runtime.load();
            let (Some(id), Some(policy)) =
                (crate::session::table::hex_id::parse(&id), rt.app(&app))
            else {
                return false;
            };
            let reason = format!("revoked on instance {from}");
            let now = shared.sessions.clock.now();
            match shared
                .sessions
                .table
                .revoke_elsewhere(policy, id, &reason, now)
            {
                Some(s) => {
                    crate::session::persist(&shared.events, vec![s]);
                    true
                }
                None => false,
            }
        }
        Change::Detection {
            app,
            ip,
            detection,
            count,
            by,
        } => {
            if shared.instance() != Some(by.as_str()) {
                return false;
            }
            detected_across_instances(shared, &app, ip, &detection, count, &by)
        }
        Change::RevokeUser { user, .. } => {
            let now = shared.sessions.clock.now();
            let reason = format!("forced logout on instance {from}");
            let mut ended = Vec::new();
            for id in shared.sessions.table.of_user(&user) {
                if let Some(s) = shared.sessions.table.end(
                    id,
                    crate::session::table::State::Revoked,
                    &reason,
                    now,
                ) {
                    ended.push(s);
                }
            }
            let any = !ended.is_empty();
            crate::session::persist(&shared.events, ended);
            any
        }
    };
    if changed {
        shared.metrics.cluster_changes_applied.inc();
    }
    changed
}

/// Applies what other instances publish, reconnecting (and resynchronizing) when the
/// subscription drops.
pub async fn subscribe(
    shared: Arc<Shared>,
    cluster: Arc<Cluster>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut connected_once = false;
    let mut node = 0;
    loop {
        let (tx, mut rx) = tokio::sync::broadcast::channel(4096);
        match cluster
            .subscribe_on_a_node(&cluster.sync.channel(), tx, node)
            .await
        {
            Ok(mut conn) => {
                if connected_once {
                    // Messages published while the subscription was down are in the hashes.
                    let _ = resync(&shared, &cluster).await;
                }
                connected_once = true;
                // A node that stops answering without closing: pinged every few seconds.
                let mut ping = tokio::time::interval(Duration::from_secs(3));
                ping.tick().await;
                loop {
                    enum Next {
                        Message(Result<redis::PushInfo, tokio::sync::broadcast::error::RecvError>),
                        Ping,
                        Stop,
                    }
                    let next = tokio::select! {
                        m = rx.recv() => Next::Message(m),
                        _ = ping.tick() => Next::Ping,
                        _ = stop.wait_for(|s| *s) => Next::Stop,
                    };
                    let m = match next {
                        Next::Message(m) => m,
                        Next::Stop => return,
                        Next::Ping => {
                            let alive = tokio::time::timeout(
                                Duration::from_secs(1),
                                redis::cmd("PING").query_async::<redis::Value>(&mut conn),
                            )
                            .await;
                            if matches!(alive, Ok(Ok(_))) {
                                continue;
                            }
                            break;
                        }
                    };
                    let m = match m {
                        Ok(m) => m,
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                            tracing::warn!(
                                missed = n,
                                "cluster messages arrived faster than applied; resynchronizing"
                            );
                            let _ = resync(&shared, &cluster).await;
                            continue;
                        }
                        Err(_) => break,
                    };
                    match m.kind {
                        redis::PushKind::Message => {}
                        redis::PushKind::Disconnection => break,
                        _ => continue,
                    }
                    let Some(Ok(payload)) =
                        m.data.get(1).map(redis::from_redis_value_ref::<String>)
                    else {
                        continue;
                    };
                    let Ok(msg) = serde_json::from_str::<Message>(&payload) else {
                        tracing::warn!("ignoring a malformed cluster message");
                        continue;
                    };
                    // Detections counted in Redis come from "cluster": every instance, this
                    // one included, applies them.
                    if msg.from == cluster.sync.instance {
                        continue;
                    }
                    apply(&shared, &msg.from, msg.change);
                }
            }
            Err(e) => tracing::debug!(error = %e, "cluster subscription failed; retrying"),
        }
        // The next attempt starts at the next node.
        node += 1;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Pulls the shared hashes and pushes what Redis lacks; returns (applied here, pushed).
pub async fn resync(shared: &Shared, cluster: &Cluster) -> Result<(usize, usize), String> {
    let conn = cluster
        .conn
        .load_full()
        .ok_or_else(|| "not connected".to_string())?;
    let mut c = (*conn).clone();
    let s = &cluster.sync;
    let (bans_key, locks_key, revoked_key) = (s.key("bans"), s.key("locks"), s.key("revoked"));
    let fetch = async {
        let bans: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(&bans_key)
            .query_async(&mut c)
            .await?;
        let locks: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(&locks_key)
            .query_async(&mut c)
            .await?;
        let revoked: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(&revoked_key)
            .query_async(&mut c)
            .await?;
        Ok::<_, redis::RedisError>((bans, locks, revoked))
    };
    let (bans, locks, revoked) = tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let now = now_micros();
    let mut applied = 0;
    let mut expired = Vec::new();
    for (field, v) in &bans {
        match serde_json::from_str::<Ban>(v) {
            Ok(b) if b.active(now) => {
                applied += usize::from(apply(shared, "redis", Change::Ban { ban: b }));
            }
            _ => expired.push((bans_key.clone(), field.clone())),
        }
    }
    for (field, v) in &locks {
        let (app, user) = field.split_once('\u{0}').unwrap_or(("", field));
        match v.parse::<u64>() {
            Ok(until) if until > now => {
                let c = Change::Lock {
                    app: app.to_string(),
                    user: user.to_string(),
                    until,
                    shared_detection: None,
                };
                applied += usize::from(apply(shared, "redis", c));
            }
            _ => expired.push((locks_key.clone(), field.clone())),
        }
    }
    for (id, v) in &revoked {
        let (app, until) = v.split_once('\u{0}').unwrap_or(("", "0"));
        match until.parse::<u64>() {
            Ok(until) if until > now => {
                let c = Change::Revoke {
                    app: app.to_string(),
                    id: id.clone(),
                    until,
                };
                applied += usize::from(apply(shared, "redis", c));
            }
            _ => expired.push((revoked_key.clone(), id.clone())),
        }
    }
    // Push what this instance knows and Redis lacks (or holds shorter), and announce it:
    // an instance that resynchronized before this push learns it from the message.
    let mut pushes = Vec::new();
    for b in shared.bans.active() {
        let newer = bans
            .get(&b.ip.to_string())
            .and_then(|v| serde_json::from_str::<Ban>(v).ok())
            .is_none_or(|r| r.until < b.until);
        if newer {
            pushes.push(Change::Ban { ban: b });
        }
    }
    for (app, user, until) in shared.sessions.brute_force.locks(now) {
        let field = format!("{app}\u{0}{user}");
        if locks
            .get(&field)
            .and_then(|v| v.parse::<u64>().ok())
            .is_none_or(|r| r < until)
        {
            pushes.push(Change::Lock {
                app: app.to_string(),
                user,
                until,
                shared_detection: None,
            });
        }
    }
    {
        let mut known = s.revoked.lock().unwrap_or_else(|p| p.into_inner());
        known.retain(|_, (_, until)| *until > now);
        for (id, (app, until)) in known.iter() {
            if !revoked.contains_key(id) {
                pushes.push(Change::Revoke {
                    app: app.clone(),
                    id: id.clone(),
                    until: *until,
                });
            }
        }
    }
    let mut p = redis::pipe();
    let pushed = pushes.len();
    for change in pushes {
        if let Some((hash, field, Some(v))) = record_of(&change) {
            p.hset(s.key(hash), field, v).ignore();
        }
        let msg = Message {
            from: s.instance.clone(),
            change,
        };
        if let Ok(body) = serde_json::to_string(&msg) {
            p.publish(s.channel(), body).ignore();
        }
    }
    let expired_n = expired.len();
    for (hash, field) in expired {
        p.hdel(hash, field).ignore();
    }
    if pushed + expired_n == 0 {
        return Ok((applied, 0));
    }
    tokio::time::timeout(Duration::from_secs(5), p.query_async::<()>(&mut c))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    Ok((applied, pushed))
}

/// Sliding-window failure count per (app, user) shared by the instances: adds this failure
/// (or, with ARGV[4] = 1, clears the window: a local detection already locked the user)
/// and clears the window when it reaches the limit. ARGV: window µs, limit, member, clear.
const FAILURES: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
if ARGV[4] == '1' then redis.call('DEL', KEYS[1]) return 0 end
local window = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now - window))
redis.call('ZADD', KEYS[1], string.format('%.0f', now), ARGV[3])
local n = redis.call('ZCARD', KEYS[1])
redis.call('PEXPIRE', KEYS[1], math.ceil(window / 1000))
if n >= tonumber(ARGV[2]) then redis.call('DEL', KEYS[1]) end
return n
"#;

/// A sorted-set member for one failure: unique across instances and within one.
fn failure_member(cluster: &Cluster) -> String {
    format!(
        "{}:{}",
        cluster.settings.instance,
        crate::secrets::random_hex::<8>()
    )
}

/// Counts a failed login of `user` in the cluster's shared window (in the background: the
/// request does not wait). Reaching the app's `max_failures` across instances locks the
/// user everywhere; `local_detection`: this instance already locked it (the shared window
/// restarts).
pub fn count_failure(
    cluster: &Arc<Cluster>,
    app: &crate::session::AppPolicy,
    user: &str,
    local_detection: bool,
) {
    let bf = &app.brute_force;
    if !bf.enabled || bf.lock_micros == 0 || !cluster.is_up() {
        return;
    }
    let cluster = cluster.clone();
    let user = crate::session::brute_force::normalise(user).to_string();
    let app_name = app.name.to_string();
    let (window, limit, lock) = (bf.window_micros, bf.max_failures, bf.lock_micros);
    tokio::spawn(async move {
        let key = format!("{}:bf:{{{app_name}\u{0}{user}}}", cluster.settings.prefix);
        let member = failure_member(&cluster);
        let script = &cluster.sync.failures;
        let n: Option<u32> = cluster
            .call(|mut c| async move {
                script
                    .key(key)
                    .arg(window)
                    .arg(limit)
                    .arg(member)
                    .arg(u8::from(local_detection))
                    .invoke_async(&mut c)
                    .await
            })
            .await;
        if let Some(n) = n.filter(|n| !local_detection && *n >= limit) {
            let lock = Change::Lock {
                app: app_name,
                user,
                until: now_micros() + lock,
                shared_detection: Some((cluster.settings.instance.clone(), n)),
            };
            write(&cluster, "cluster", lock).await;
        }
    });
}

/// Failed logins from one (app, address) across the instances: KEYS[1] the failures
/// (sorted by time), KEYS[2] the user names that failed (hashed, by last time); both
/// under one hash tag. Adds this failure (ARGV[4], a unique member; ARGV[5] the name's
/// hash or ''), drops what left the window (ARGV[1] µs), and returns {failures, names},
/// clearing a set that reached its limit (ARGV[2] failures, ARGV[3] names; 0: none) or
/// that a local detection already acted on (ARGV[6] = '1': failures, ARGV[7]: names).
const ADDRESS_FAILURES: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window = tonumber(ARGV[1])
local oldest = string.format('%.0f', now - window)
local stamp = string.format('%.0f', now)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', oldest)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', oldest)
redis.call('ZADD', KEYS[1], stamp, ARGV[4])
if ARGV[5] ~= '' then redis.call('ZADD', KEYS[2], stamp, ARGV[5]) end
local n = redis.call('ZCARD', KEYS[1])
local u = redis.call('ZCARD', KEYS[2])
local ms = math.ceil(window / 1000)
redis.call('PEXPIRE', KEYS[1], ms)
redis.call('PEXPIRE', KEYS[2], ms)
local ip_max, names_max = tonumber(ARGV[2]), tonumber(ARGV[3])
if ARGV[6] == '1' or (ip_max > 0 and n >= ip_max) then redis.call('DEL', KEYS[1]) end
if ARGV[7] == '1' or (names_max > 1 and u >= names_max) then redis.call('DEL', KEYS[2]) end
return {n, u}
"#;

/// Counts a failed login from `ip` (the client key: an IPv6 /64 counts as one) in the
/// cluster's shared windows (in the background). Reaching the app's `ip_max_failures` or
/// `stuffing_users` across instances is a [`Change::Detection`]: this instance then bans
/// the address. `local`: what this instance already detected itself (those windows
/// restart instead).
pub fn count_address_failure(
    cluster: &Arc<Cluster>,
    app: &crate::session::AppPolicy,
    ip: IpAddr,
    user: Option<&str>,
    local: &crate::session::brute_force::Failure,
) {
    let bf = &app.brute_force;
    if !bf.enabled || !cluster.is_up() {
        return;
    }
    let cluster = cluster.clone();
    let app_name = app.name.to_string();
    let (ip_local, names_local) = (local.ip_detected, local.stuffing_detected);
    let user_hash = user.map_or(String::new(), |u| {
        let u = crate::session::brute_force::normalise(u);
        crate::secrets::hex(&<sha2::Sha256 as sha2::Digest>::digest(u.as_bytes())[..8])
    });
    let (window, ip_max, names_max) = (bf.window_micros, bf.ip_max_failures, bf.stuffing_users);
    tokio::spawn(async move {
        let tag = format!("{}:bfa:{{{app_name}\u{0}{ip}}}", cluster.settings.prefix);
        let member = failure_member(&cluster);
        let script = &cluster.sync.address_failures;
        let mut inv = script.prepare_invoke();
        inv.key(format!("{tag}:n"))
            .key(format!("{tag}:u"))
            .arg(window)
            .arg(ip_max)
            .arg(names_max)
            .arg(member)
            .arg(user_hash)
            .arg(u8::from(ip_local))
            .arg(u8::from(names_local));
        let counted: Option<(u32, u32)> = cluster
            .call(|mut c| async move { inv.invoke_async(&mut c).await })
            .await;
        let Some((n, u)) = counted else { return };
        let detection = if !ip_local && ip_max > 0 && n >= ip_max {
            Some(("address", n))
        } else if !names_local && names_max > 1 && u >= names_max {
            Some(("credential_stuffing", u))
        } else {
            None
        };
        if let Some((kind, count)) = detection {
            let d = Change::Detection {
                app: app_name,
                ip,
                detection: kind.to_string(),
                count,
                by: cluster.settings.instance.clone(),
            };
            write(&cluster, "cluster", d).await;
        }
    });
}

/// This instance's failure crossed a limit counted across the instances: the detection
/// event, and a ban (unless the app does not ban, the IP rules exempt the address or it
/// is banned already).
fn detected_across_instances(
    shared: &Shared,
    app: &str,
    ip: IpAddr,
    kind: &str,
    count: u32,
    by: &str,
) -> bool {
    use crate::events::{AuditEvent, EventType};
    let rt = shared.runtime.load();
    let Some(policy) = rt.app(app) else {
        return false;
    };
    let message = if kind == "credential_stuffing" {
        format!("credential stuffing: {count} user names failed from {ip} across the cluster's instances")
    } else {
        format!("brute force from {ip}: {count} failed logins across the cluster's instances")
    };
    shared.events.sink.audit(
        AuditEvent::new(EventType::BruteForceDetected, message.clone())
            .ip(ip)
            .detail("app", app)
            .detail("kind", kind)
            .detail("across_instances", "true")
            .detail("instance", by),
    );
    shared
        .metrics
        .brute_force_detections
        .with_label_values(&[kind])
        .inc();
    let report = crate::pipeline::Report::of(shared, &rt);
    let bypass = report.ip_rules.set.load().bypasses(ip);
    if policy.brute_force.ban_ip && !bypass && report.bans.check(ip).is_none() {
        let ban = report
            .bans
            .ban(report.ban_settings, ip, None, message, false);
        report.record_ban(
            AuditEvent::new(EventType::IpBanned, String::new()).ip(ip),
            ban,
        );
    }
    true
}

/// The sessions of one (app, user) across the instances, by when each ends at the latest
/// (absolute lifetime): adds ARGV[2] (ending at ARGV[3]), drops ended entries, and returns
/// the oldest ids beyond ARGV[4], removed. With ARGV[1] = "forget": removes ARGV[2] only;
/// "try" (`reject_new`): adds ARGV[2] only while fewer than ARGV[4] are there, returning
/// `{"refused"}` otherwise.
const USER_SESSIONS: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
if ARGV[1] == 'forget' then redis.call('ZREM', KEYS[1], ARGV[2]) return {} end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now))
if ARGV[1] == 'try' and not redis.call('ZSCORE', KEYS[1], ARGV[2])
  and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then
  return {'refused'}
end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
local n = redis.call('ZCARD', KEYS[1])
local max = tonumber(ARGV[4])
local out = {}
if n > max then
  out = redis.call('ZRANGE', KEYS[1], 0, n - max - 1)
  redis.call('ZREM', KEYS[1], unpack(out))
end
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if last[2] then redis.call('PEXPIRE', KEYS[1], math.max(1, math.ceil((tonumber(last[2]) - now) / 1000))) end
return out
"#;

fn user_sessions_key(cluster: &Cluster, app: &str, user: &str) -> String {
    format!("{}:us:{{{app}\u{0}{user}}}", cluster.settings.prefix)
}

/// Runs [`USER_SESSIONS`] in `mode` (`add`, `try`, `forget`) for session `id` of one
/// (app, user); `None` when Redis could not answer in time.
async fn user_sessions(
    cluster: &Cluster,
    key: String,
    mode: &str,
    id: u128,
    ends: u64,
    max: usize,
) -> Option<Vec<String>> {
    let script = &cluster.sync.user_sessions;
    cluster
        .call(|mut c| async move {
            script
                .key(key)
                .arg(mode)
                .arg(format!("{id:032x}"))
                .arg(ends)
                .arg(max)
                .invoke_async(&mut c)
                .await
        })
        .await
}

/// A new session of `user` (in the background): past the app's `max_per_user` across the
/// instances, the oldest sessions are revoked on every instance (`evict_oldest`).
pub fn session_created(
    cluster: &Arc<Cluster>,
    app: &crate::session::AppPolicy,
    user: &str,
    id: u128,
    created: u64,
) {
    if app.max_per_user == 0
        || app.on_limit != crate::session::OnLimit::EvictOldest
        || !cluster.is_up()
    {
        return;
    }
    let cluster = cluster.clone();
    let key = user_sessions_key(&cluster, &app.name, user);
    let app_name = app.name.to_string();
    let ends = created.saturating_add(app.absolute_micros);
    let max = app.max_per_user;
    tokio::spawn(async move {
        let evicted = user_sessions(&cluster, key, "add", id, ends, max).await;
        for old in evicted.unwrap_or_default() {
            let revoke = Change::Revoke {
                app: app_name.clone(),
                id: old,
                until: now_micros() + REVOCATION_TTL.as_micros() as u64,
            };
            write(&cluster, "cluster", revoke).await;
        }
    });
}

/// `reject_new` across the instances: whether the cluster has room for one more session
/// of `user` (counted at once when it has). Waits on Redis at most the cluster's `timeout`
/// (the login response waits); Redis unreachable: `true`, this instance's own count decides.
pub async fn admit_session(
    cluster: &Cluster,
    app: &crate::session::AppPolicy,
    user: &str,
    id: u128,
    created: u64,
) -> bool {
    if app.max_per_user == 0 || app.on_limit != crate::session::OnLimit::RejectNew {
        return true;
    }
    let key = user_sessions_key(cluster, &app.name, user);
    let ends = created.saturating_add(app.absolute_micros);
    let answer = user_sessions(cluster, key, "try", id, ends, app.max_per_user).await;
    answer.is_none_or(|a| a.is_empty())
}

/// A session timed out here. Where instances refuse sessions they did not create
/// (`unknown = "reject"`: each session lives on one instance), that ends it for the
/// cluster; where they adopt them, another instance may still be serving it, so it keeps
/// its place until its absolute end.
pub fn session_expired(
    cluster: &Arc<Cluster>,
    app: &crate::session::AppPolicy,
    s: &crate::session::table::Session,
) {
    if app.max_per_user == 0 || app.unknown == crate::session::Unknown::Adopt {
        return;
    }
    if let Some(user) = &s.user {
        session_ended(cluster, &app.name, user, s.id);
    }
}

/// A session of `user` ended here (logout, revocation): it no longer counts towards the
/// user's limit across the instances.
pub fn session_ended(cluster: &Arc<Cluster>, app: &str, user: &str, id: u128) {
    if !cluster.is_up() {
        return;
    }
    let cluster = cluster.clone();
    let key = user_sessions_key(&cluster, app, user);
    tokio::spawn(async move {
        let _ = user_sessions(&cluster, key, "forget", id, 0, 0).await;
    });
}
