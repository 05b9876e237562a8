//! The session phases of the pipeline: phase 5 on the request (login lock, session
//! validation, invalid-session action) and the part of phase 8 that reads the response
//! (login outcome, sessions created, rotated or ended by the application, logout).
//!
//! Every refusal here is a gateway-made JSON response; every invalid session, login and
//! detection is an event (invalid-session and lock events sampled per session or address,
//! so a client replaying a dead cookie cannot flood the store).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{LOCATION, RETRY_AFTER, SET_COOKIE, USER_AGENT};
use http::request::Parts;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;

use super::report::{SAMPLE_LOGIN_LOCKED, SAMPLE_SESSION_INVALID};
use super::{Report, RequestCtx};
use crate::app::Shared;
use crate::events::{AuditEvent, EventType};
use crate::proxy::body::ClientBody;
use crate::proxy::error::error_response;
use crate::proxy::ResponseBody;
use crate::runtime::Runtime;
use crate::session::cookies::{self, SetCookie};
use crate::session::login::{self, Outcome};
use crate::session::signed::SignedError;
use crate::session::table::{Checked, Invalid, Registered, Session, State};
use crate::session::{persist, with_session, AppPolicy, InvalidAction, Mode, Sessions, Unknown};

/// The longest a login body may take to arrive.
const LOGIN_BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// What the request phase learned, for the response phase.
pub struct SessionCtx {
    pub app: Arc<AppPolicy>,
    /// The valid session the request carried.
    pub session: Option<u128>,
    /// The session's user, when the app forwards it in a header.
    pub user: Option<Arc<str>>,
    /// This request is a login, with the user name it names (when readable).
    pub login: Option<Option<String>>,
    pub logout: bool,
    /// Tell the client to forget its session cookie.
    pub clear_cookie: bool,
    pub user_agent: Option<HeaderValue>,
}

/// Why a request's session is refused.
enum Problem {
    /// No session cookie on a path that needs one.
    Missing,
    /// The session cookie twice, or under a name the application may read as it.
    Ambiguous,
    Tampered(SignedError),
    Invalid(Invalid, Option<Box<Session>>),
}

/// Phase 5. Returns the request to forward (its body read when it was a login, the session
/// cookie stripped when so configured) or the response that refuses it.
pub async fn on_request(
    shared: &Shared,
    app: &Arc<AppPolicy>,
    ctx: &mut RequestCtx,
    req: Request<ClientBody>,
) -> Result<Request<ClientBody>, Response<ResponseBody>> {
    let sessions = &shared.sessions;
    let now = sessions.clock.now();
    let (mut parts, mut body) = req.into_parts();
    let mut sctx = SessionCtx {
        app: app.clone(),
        session: None,
        user: None,
        login: None,
        logout: app.is_logout(&parts.method, parts.uri.path()),
        clear_cookie: false,
        user_agent: parts.headers.get(USER_AGENT).cloned(),
    };

    if let Some(policy) = app
        .login
        .as_ref()
        .filter(|_| app.is_login(&parts.method, parts.uri.path()))
    {
        let mut user = None;
        if policy.user_field.is_some() {
            let bytes = read_body(body, policy.max_body_bytes)
                .await
                .map_err(|(status, m)| error_response(status, m, &ctx.request_id))?;
            // A compressed login (phase 1 let it through only to be decoded) is read as
            // the application will read it.
            let decoded = match crate::waf::coding::Coding::of(&parts.headers) {
                Ok(Some(coding)) => {
                    let ratio = shared.runtime.load().requests.max_decompression_ratio;
                    crate::waf::coding::decode(coding, &bytes, true, policy.max_body_bytes, ratio)
                        .ok()
                        .filter(|d| !d.truncated)
                        .map(|d| Bytes::from(d.bytes))
                }
                _ => Some(bytes.clone()),
            };
            let read = match decoded {
                Some(plain) => login::user_from_body(policy, &parts.headers, &plain),
                None => Err(login::UserFieldError::Unparsable),
            };
            match read {
                Ok(u) => user = u,
                Err(why) => {
                    // Refused, and a failed login for the address: probing the parser
                    // costs what guessing passwords costs.
                    shared.metrics.logins.with_label_values(&["failed"]).inc();
                    let rt = shared.runtime.load();
                    login_failed(shared, &rt, app, ctx, None, now, why.message());
                    return Err(error_response(
                        StatusCode::BAD_REQUEST,
                        why.message(),
                        &ctx.request_id,
                    ));
                }
            }
            body = ClientBody::Buffered(bytes);
        }
        if let Some(u) = &user {
            if let Some(until) = sessions.brute_force.locked(&app.name, u, now) {
                shared.metrics.logins.with_label_values(&["locked"]).inc();
                let key = crate::rate_limit::ip_bits(ctx.client_ip);
                if let Some(n) = shared.sampler.sample(SAMPLE_LOGIN_LOCKED, key) {
                    let mut e = event(
                        EventType::LoginFailed,
                        "login refused: user name locked",
                        ctx,
                        app,
                    )
                    .path(&policy.endpoint.path)
                    .detail("reason", "user locked")
                    .detail("occurrences", n.to_string())
                    .escalated();
                    e.user = Some(u.clone());
                    shared.events.sink.audit(e);
                }
                let mut resp = error_response(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many failed logins; try again later",
                    &ctx.request_id,
                );
                let secs = until.saturating_sub(now).div_ceil(1_000_000).max(1);
                resp.headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from(secs));
                return Err(resp);
            }
        }
        sctx.login = Some(user);
    }

    if app.sessions_on {
        if let Some(h) = &app.user_header {
            parts.headers.remove(h);
        }
        let problem = match cookies::session_cookie(&parts.headers, &app.cookie) {
            Err(cookies::Ambiguous) => Some(Problem::Ambiguous),
            Ok(None) if app.requires_session(parts.uri.path()) => Some(Problem::Missing),
            Ok(None) => None,
            Ok(Some(value)) => check(shared, app, ctx, &parts, value, now, &mut sctx),
        };
        if let Some(problem) = problem {
            refuse(shared, app, ctx, &mut parts, &mut sctx, problem).map_err(|r| *r)?;
        }
        if app.mode == Mode::Signed {
            cookies::strip_request_cookie(&mut parts.headers, &app.cookie);
            if let (Some(h), Some(u)) = (&app.user_header, &sctx.user) {
                if let Ok(v) = HeaderValue::from_str(u) {
                    parts.headers.insert(h.clone(), v);
                }
            }
        }
    }
    ctx.session = Some(sctx);
    Ok(Request::from_parts(parts, body))
}

/// Validates a presented cookie; `None` when the session is good.
fn check(
    shared: &Shared,
    app: &AppPolicy,
    ctx: &RequestCtx,
    parts: &Parts,
    value: &[u8],
    now: u64,
    sctx: &mut SessionCtx,
) -> Option<Problem> {
    let sessions = &shared.sessions;
    let id = match app.mode {
        Mode::Upstream => sessions.id_for(app, value),
        Mode::Signed => match app.keys.verify(value) {
            Ok(id) => id,
            Err(e) => return Some(Problem::Tampered(e)),
        },
    };
    let ua = parts
        .headers
        .get(USER_AGENT)
        .map_or(&b""[..], |v| v.as_bytes());
    match sessions.table.validate(app, id, ctx.client_ip, ua, now) {
        Checked::Valid {
            user,
            became_suspicious,
        } => {
            if let Some(s) = became_suspicious {
                suspicious(shared, app, ctx, &s, false);
            }
            sctx.session = Some(id);
            sctx.user = user;
            None
        }
        Checked::Invalid {
            reason: Invalid::Unknown,
            ..
        } if app.unknown == Unknown::Adopt && app.mode == Mode::Upstream => {
            let s = Session::new(id, app, None, ctx.client_ip, ua, now);
            let reg = sessions
                .table
                .register(app, s, shared.runtime.load().sessions.max_sessions);
            registered(
                shared,
                app,
                ctx,
                id,
                &reg,
                "adopted: first seen on a request",
            );
            sctx.session = reg.created.then_some(id);
            None
        }
        Checked::Invalid { reason, session } => {
            if matches!(reason, Invalid::Suspicious) {
                if let Some(s) = &session {
                    suspicious(shared, app, ctx, s, true);
                }
            }
            Some(Problem::Invalid(reason, session))
        }
    }
}

/// Records an invalid session and answers it as the app's policy says. `Ok` means the
/// request goes on without the cookie.
fn refuse(
    shared: &Shared,
    app: &AppPolicy,
    ctx: &RequestCtx,
    parts: &mut Parts,
    sctx: &mut SessionCtx,
    problem: Problem,
) -> Result<(), Box<Response<ResponseBody>>> {
    let label = match &problem {
        Problem::Missing => "missing",
        Problem::Ambiguous => "ambiguous",
        Problem::Tampered(_) => "tampered",
        Problem::Invalid(i, _) => i.label(),
    };
    shared
        .metrics
        .session_rejections
        .with_label_values(&[label])
        .inc();
    let (kind, reason, session) = match &problem {
        Problem::Missing => (None, String::new(), None),
        Problem::Ambiguous => (
            Some(EventType::SessionRevoked),
            "more than one session cookie".to_string(),
            None,
        ),
        Problem::Tampered(e) => (Some(EventType::SessionRevoked), e.to_string(), None),
        Problem::Invalid(i @ (Invalid::IdleTimeout | Invalid::AbsoluteTimeout), s) => (
            Some(EventType::SessionTimeout),
            i.reason().to_string(),
            s.as_deref(),
        ),
        Problem::Invalid(i, s) => (
            Some(EventType::SessionRevoked),
            i.reason().to_string(),
            s.as_deref(),
        ),
    };
    if let Some(kind) = kind {
        // One event per session (or per address for unknown and forged cookies) per
        // sampling interval.
        let key = session.map_or(crate::rate_limit::ip_bits(ctx.client_ip), |s| s.id);
        if let Some(n) = shared.sampler.sample(SAMPLE_SESSION_INVALID, key) {
            let mut e = event(kind, format!("session refused: {reason}"), ctx, app)
                .path(parts.uri.path())
                .detail("reason", reason.as_str())
                .detail("occurrences", n.to_string());
            if let Some(s) = session {
                e = with_session(e, s);
            }
            shared.events.sink.audit(e);
        }
    }
    if matches!(
        problem,
        Problem::Invalid(Invalid::IdleTimeout | Invalid::AbsoluteTimeout, _)
    ) {
        if let Some(s) = session {
            if let Some(cluster) = &shared.cluster {
                crate::cluster::sync::session_expired(cluster, app, s);
            }
            persist(&shared.events, vec![s.clone()]);
        }
    }

    let path = parts.uri.path();
    // A stale cookie never stands in the way of logging in again.
    let lenient = sctx.login.is_some() || sctx.logout || app.is_login_page(path);
    let missing = matches!(problem, Problem::Missing);
    match app.invalid {
        _ if lenient && !missing => {}
        _ if lenient => return Ok(()),
        InvalidAction::Strip if !missing => {}
        InvalidAction::Redirect => {
            let mut resp =
                error_response(StatusCode::SEE_OTHER, "session not valid", &ctx.request_id);
            if let Some(page) = &app.login_page {
                resp.headers_mut().insert(LOCATION, page.clone());
            }
            if !missing {
                resp.headers_mut()
                    .append(SET_COOKIE, app.clear_cookie.clone());
            }
            return Err(Box::new(resp));
        }
        InvalidAction::Reject | InvalidAction::Strip => {
            let mut resp = error_response(
                StatusCode::UNAUTHORIZED,
                if missing {
                    "session required"
                } else {
                    "session not valid"
                },
                &ctx.request_id,
            );
            if !missing {
                resp.headers_mut()
                    .append(SET_COOKIE, app.clear_cookie.clone());
            }
            return Err(Box::new(resp));
        }
    }
    cookies::strip_request_cookie(&mut parts.headers, &app.cookie);
    sctx.clear_cookie = true;
    Ok(())
}

/// Phase 8 (sessions): reads the login outcome and the application's cookie changes.
pub async fn on_response(
    shared: &Shared,
    rt: &Runtime,
    sctx: &SessionCtx,
    ctx: &RequestCtx,
    resp: &mut Response<ResponseBody>,
) {
    let app = &sctx.app;
    let sessions = &shared.sessions;
    let now = sessions.clock.now();
    let ua = sctx.user_agent.as_ref().map_or(&b""[..], |v| v.as_bytes());
    let mut login_user: Option<Arc<str>> = None;
    let named = |u: &Option<Arc<str>>| u.as_deref().map(str::to_string);
    let mut login_succeeded = false;

    if let (Some(attempt), Some(policy)) = (&sctx.login, &app.login) {
        let from_upstream = login::user_from_response(policy, resp.headers());
        if let Some(h) = &policy.user_header {
            resp.headers_mut().remove(h);
        }
        let user = attempt.clone().or(from_upstream);
        match login::outcome(policy, resp.status(), resp.headers()) {
            Outcome::Succeeded => {
                login_succeeded = true;
                shared
                    .metrics
                    .logins
                    .with_label_values(&["succeeded"])
                    .inc();
                let mut e = event(EventType::LoginSucceeded, "login succeeded", ctx, app)
                    .path(&policy.endpoint.path);
                e.user = user.clone();
                shared.events.sink.audit(e);
                if let Some(u) = &user {
                    sessions.brute_force.success(&app.name, u);
                }
                login_user = user.map(Arc::from);
            }
            Outcome::Failed => {
                shared.metrics.logins.with_label_values(&["failed"]).inc();
                login_failed(shared, rt, app, ctx, user.as_deref(), now, "login failed");
            }
            Outcome::Unknown => {
                shared.metrics.logins.with_label_values(&["unknown"]).inc();
            }
        }
    }
    if !app.sessions_on {
        return;
    }

    let max = rt.sessions.max_sessions;
    match app.mode {
        Mode::Signed if login_succeeded => {
            if let Some(old) = sctx.session {
                end(
                    shared,
                    app,
                    ctx,
                    old,
                    State::Closed,
                    "replaced at login",
                    now,
                );
            }
            let id = Sessions::new_id();
            let who = named(&login_user);
            if !cluster_room(shared, app, &login_user, id, now).await {
                return limit_reached(shared, app, ctx, resp, who, id);
            }
            let s = Session::new(id, app, login_user, ctx.client_ip, ua, now);
            let reg = sessions.table.register(app, s, max);
            if !registered(shared, app, ctx, id, &reg, "login") {
                return limit_reached(shared, app, ctx, resp, who, id);
            }
            if reg.created {
                if let Some(v) = app.keys.sign(id).and_then(|v| app.issue_cookie(&v)) {
                    resp.headers_mut().append(SET_COOKIE, v);
                }
            }
        }
        Mode::Signed => {}
        Mode::Upstream => match cookies::response_cookie(resp.headers(), &app.cookie) {
            Some(SetCookie::Set(value)) => {
                let id = sessions.id_for(app, value);
                if Some(id) == sctx.session && login_user.is_none() {
                    // The same cookie set again.
                } else {
                    // A rotated cookie keeps the user of the session it replaces.
                    let user = login_user
                        .or_else(|| sctx.session.and_then(|old| sessions.table.user_of(old)));
                    let who = named(&user);
                    if !cluster_room(shared, app, &user, id, now).await {
                        return limit_reached(shared, app, ctx, resp, who, id);
                    }
                    let s = Session::new(id, app, user, ctx.client_ip, ua, now);
                    let reg = sessions.table.register(app, s, max);
                    let how = if login_succeeded {
                        "login"
                    } else {
                        "set by the application"
                    };
                    if !registered(shared, app, ctx, id, &reg, how) {
                        return limit_reached(shared, app, ctx, resp, who, id);
                    }
                    if let Some(old) = sctx.session.filter(|old| *old != id) {
                        end(
                            shared,
                            app,
                            ctx,
                            old,
                            State::Closed,
                            "replaced by a new cookie",
                            now,
                        );
                    }
                }
            }
            Some(SetCookie::Cleared) => {
                if let Some(old) = sctx.session {
                    end(shared, app, ctx, old, State::Closed, "logout", now);
                }
            }
            None => {
                // A login that kept the session the client already had: it now has a user.
                if let (Some(id), Some(user)) = (sctx.session, login_user) {
                    if sessions.table.user_of(id).is_none() {
                        let who = Some(user.to_string());
                        let user = Some(user);
                        if !cluster_room(shared, app, &user, id, now).await {
                            return limit_reached(shared, app, ctx, resp, who, id);
                        }
                        let s = Session::new(id, app, user, ctx.client_ip, ua, now);
                        let reg = sessions.table.register(app, s, max);
                        if !registered(shared, app, ctx, id, &reg, "login") {
                            return limit_reached(shared, app, ctx, resp, who, id);
                        }
                    }
                }
            }
        },
    }

    if sctx.logout && resp.status().as_u16() < 400 {
        if let Some(id) = sctx.session {
            end(shared, app, ctx, id, State::Closed, "logout", now);
            if app.mode == Mode::Signed {
                resp.headers_mut()
                    .append(SET_COOKIE, app.clear_cookie.clone());
            }
        }
    }
    if sctx.clear_cookie && cookies::response_cookie(resp.headers(), &app.cookie).is_none() {
        resp.headers_mut()
            .append(SET_COOKIE, app.clear_cookie.clone());
    }
}

/// Events and persistence for a registration; false when the limit refused it.
fn registered(
    shared: &Shared,
    app: &AppPolicy,
    ctx: &RequestCtx,
    id: u128,
    reg: &Registered,
    how: &str,
) -> bool {
    let mut changed = Vec::new();
    for s in &reg.evicted {
        shared.events.sink.audit(with_session(
            event(
                EventType::SessionRevoked,
                "session revoked: concurrent session limit, oldest evicted",
                ctx,
                app,
            )
            .detail("reason", "evicted"),
            s,
        ));
        changed.push(s.clone());
    }
    if reg.untracked {
        shared.metrics.sessions_untracked.inc();
        tracing::warn!(app = %app.name, "session table full (sessions.max_sessions): a new session is not tracked");
    }
    if let Some(s) = shared.sessions.table.get(id).filter(|_| !reg.refused) {
        if let (Some(cluster), Some(user)) = (&shared.cluster, &s.user) {
            // A new session of the user, or a user given to an anonymous one (login).
            crate::cluster::sync::session_created(cluster, app, user, id, s.created);
        }
        if reg.created {
            shared.metrics.sessions_created.inc();
            shared.events.sink.audit(with_session(
                event(
                    EventType::SessionCreated,
                    format!("session created ({how})"),
                    ctx,
                    app,
                ),
                &s,
            ));
        }
        changed.push(s);
    }
    persist(&shared.events, changed);
    !reg.refused
}

/// `reject_new` across a cluster's instances: whether the cluster has room for another
/// session of `user` (asked before this instance registers it; no user, no cluster: yes).
async fn cluster_room(
    shared: &Shared,
    app: &AppPolicy,
    user: &Option<Arc<str>>,
    id: u128,
    now: u64,
) -> bool {
    match (&shared.cluster, user) {
        (Some(c), Some(u)) => crate::cluster::sync::admit_session(c, app, u, id, now).await,
        _ => true,
    }
}

/// `reject_new`: the response becomes a 403 and the new cookie never reaches the client.
/// Session `id` was refused (here or by the cluster): it takes no place in the cluster's
/// count.
fn limit_reached(
    shared: &Shared,
    app: &AppPolicy,
    ctx: &RequestCtx,
    resp: &mut Response<ResponseBody>,
    user: Option<String>,
    id: u128,
) {
    if let (Some(cluster), Some(u)) = (&shared.cluster, &user) {
        crate::cluster::sync::session_ended(cluster, &app.name, u, id);
    }
    shared.metrics.logins.with_label_values(&["limited"]).inc();
    let mut e = event(
        EventType::SessionLimitReached,
        format!(
            "new session refused: the user already has {} sessions",
            app.max_per_user
        ),
        ctx,
        app,
    );
    e.user = user;
    shared.events.sink.audit(e);
    *resp = error_response(
        StatusCode::FORBIDDEN,
        "concurrent session limit reached; log out elsewhere first",
        &ctx.request_id,
    );
}

/// Ends a session, with an event and the store updated.
fn end(
    shared: &Shared,
    app: &AppPolicy,
    ctx: &RequestCtx,
    id: u128,
    state: State,
    reason: &str,
    now: u64,
) {
    if let Some(s) = shared.sessions.table.end(id, state, reason, now) {
        if let (Some(cluster), Some(user)) = (&shared.cluster, &s.user) {
            crate::cluster::sync::session_ended(cluster, &app.name, user, id);
        }
        shared.events.sink.audit(with_session(
            event(
                EventType::SessionClosed,
                format!("session closed: {reason}"),
                ctx,
                app,
            )
            .detail("reason", reason),
            &s,
        ));
        persist(&shared.events, vec![s]);
    }
}

fn suspicious(shared: &Shared, app: &AppPolicy, ctx: &RequestCtx, s: &Session, revoked: bool) {
    let message = format!(
        "session suspicious: {} address and {} User-Agent changes{}",
        s.ip_changes,
        s.user_agent_changes,
        if revoked { "; revoked" } else { "" }
    );
    shared.events.sink.audit(with_session(
        event(EventType::SessionSuspicious, message, ctx, app)
            .detail("first_ip", s.first_ip.to_string())
            .detail("ip_changes", s.ip_changes.to_string())
            .detail("user_agent_changes", s.user_agent_changes.to_string()),
        s,
    ));
    persist(&shared.events, vec![s.clone()]);
}

/// A failed login: event, brute-force windows, locks and bans.
fn login_failed(
    shared: &Shared,
    rt: &Runtime,
    app: &AppPolicy,
    ctx: &RequestCtx,
    user: Option<&str>,
    now: u64,
    message: &str,
) {
    let bf = &app.brute_force;
    let f = shared
        .sessions
        .brute_force
        .failure(bf, &app.name, user, ctx.client_key, now);
    let path = app.login.as_ref().map_or("", |l| l.endpoint.path.as_str());
    let mut e = event(EventType::LoginFailed, message, ctx, app)
        .path(path)
        .detail("user_failures", f.user_failures.to_string())
        .detail("ip_failures", f.ip_failures.to_string());
    e.user = user.map(str::to_string);
    if f.user_failures >= 5 || f.ip_failures >= 5 {
        e = e.escalated();
    }
    shared.events.sink.audit(e);
    if let Some(cluster) = &shared.cluster {
        if let Some(u) = user {
            crate::cluster::sync::count_failure(cluster, app, u, f.user_detected);
        }
        crate::cluster::sync::count_address_failure(cluster, app, ctx.client_key, user, &f);
    }

    let report = Report::of(shared, rt);
    if f.detected() {
        let kind = if f.stuffing_detected {
            "credential_stuffing"
        } else if f.user_detected {
            "user"
        } else {
            "address"
        };
        shared
            .metrics
            .brute_force_detections
            .with_label_values(&[kind])
            .inc();
        let message = match kind {
            "credential_stuffing" => format!(
                "credential stuffing: {} user names failed from {} within {}",
                f.distinct_users,
                ctx.client_ip,
                window_text(bf.window_micros)
            ),
            "user" => format!(
                "brute force on user `{}`: {} failed logins within {}",
                user.unwrap_or(""),
                f.user_failures,
                window_text(bf.window_micros)
            ),
            _ => format!(
                "brute force from {}: {} failed logins within {}",
                ctx.client_ip,
                f.ip_failures,
                window_text(bf.window_micros)
            ),
        };
        let mut d = event(EventType::BruteForceDetected, message.clone(), ctx, app)
            .path(path)
            .detail("kind", kind)
            .detail("distinct_users", f.distinct_users.to_string());
        if let Some(until) = f.locked_until {
            d = d.detail("locked_until", crate::events::model::format_time(until));
            if let Some(u) = user {
                shared.replicate(crate::cluster::sync::Change::Lock {
                    app: app.name.to_string(),
                    user: crate::session::brute_force::normalise(u).into(),
                    until,
                    shared_detection: None,
                });
            }
        }
        d.user = user.map(str::to_string);
        shared.events.sink.audit(d);
        // Detected brute force bans at once (unless the IP rules exempt the address).
        let bypass = report.ip_rules.set.load().bypasses(ctx.client_ip);
        if bf.ban_ip && !bypass && report.bans.check(ctx.client_key).is_none() {
            let ban = report
                .bans
                .ban(report.ban_settings, ctx.client_key, None, message, false);
            report.record_ban(event(EventType::IpBanned, String::new(), ctx, app), ban);
        }
    } else {
        report.violation(ctx, crate::bans::Violation::LoginFailed, || {
            event(EventType::IpBanned, String::new(), ctx, app)
        });
    }
}

fn window_text(micros: u64) -> String {
    humantime::format_duration(Duration::from_secs(micros / 1_000_000)).to_string()
}

fn event(
    kind: EventType,
    message: impl Into<String>,
    ctx: &RequestCtx,
    app: &AppPolicy,
) -> AuditEvent {
    let mut e = AuditEvent::new(kind, message)
        .ip(ctx.client_ip)
        .detail("app", &*app.name);
    e.route = ctx.route.as_ref().map(|r| r.name.to_string());
    e.request_id = ctx.request_id.to_str().ok().map(str::to_string);
    e
}

async fn read_body(body: ClientBody, max: usize) -> Result<Bytes, (StatusCode, &'static str)> {
    let body = match body {
        ClientBody::Buffered(b) => return Ok(b),
        ClientBody::Streaming(b) => b,
        // Only the WAF makes a partial body, and it runs after this phase.
        ClientBody::Partial(..) => {
            return Err((
                StatusCode::PAYLOAD_TOO_LARGE,
                "login request body too large",
            ))
        }
    };
    let limited = http_body_util::Limited::new(body, max);
    match tokio::time::timeout(LOGIN_BODY_TIMEOUT, limited.collect()).await {
        Err(_) => Err((StatusCode::REQUEST_TIMEOUT, "login request body too slow")),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            "login request body too large",
        )),
        Ok(Err(_)) => Err((StatusCode::BAD_REQUEST, "could not read request body")),
        Ok(Ok(c)) => Ok(c.to_bytes()),
    }
}
