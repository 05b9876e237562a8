//! The admin API over sessions and login locks: list and read sessions (memory first,
//! then the store for ended and suspicious records), force logout by session or by user
//! (the very next request with that cookie is refused), and lift login locks. Every
//! change is an audit event.

use std::collections::HashSet;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::auth::Caller;
use super::events_api::{error, query, ApiError};
use super::AdminState;
use crate::events::model::format_time;
use crate::events::{AuditEvent, EventType};
use crate::session::table::{hex_id, Session, State as SessionState};
use crate::session::{brute_force, store};
use crate::session::{persist, session_event};

type ApiResult = Result<Response, ApiError>;

/// The most sessions one list answer holds.
const MAX_LIMIT: usize = 1000;

pub(super) fn routes() -> Router<AdminState> {
    Router::new()
        .route("/sessions", get(list_sessions))
        .route("/sessions/stats", get(stats))
        .route("/sessions/{id}", get(get_session).delete(revoke_session))
        .route("/users/{user}/sessions", delete(revoke_user))
        .route("/login-locks", get(list_locks))
        .route("/users/{user}/lock", delete(unlock_user))
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SessionQuery {
    user: Option<String>,
    app: Option<String>,
    suspicious: Option<bool>,
    active: Option<bool>,
    limit: Option<usize>,
}

impl SessionQuery {
    fn matches(&self, s: &Session) -> bool {
        self.user
            .as_deref()
            .is_none_or(|u| s.user.as_deref() == Some(u))
            && self.app.as_deref().is_none_or(|a| &*s.app == a)
            && self.suspicious.is_none_or(|v| s.suspicious == v)
            && self.active.is_none_or(|v| s.active() == v)
    }
}

fn parse_id(id: &str) -> Result<u128, ApiError> {
    hex_id::parse(id).ok_or_else(|| {
        error(
            StatusCode::BAD_REQUEST,
            format!("`{id}` is not a session id (32 hex digits)"),
        )
    })
}

/// Sessions newest activity first. Active sessions (and those ended within a day) come from
/// memory; asking for ended or suspicious ones also reads the store, where they are kept
/// until retention (suspicious ones for good).
async fn list_sessions(
    State(st): State<AdminState>,
    q: Result<Query<SessionQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let Query(q) = q.map_err(|e| error(StatusCode::BAD_REQUEST, e.body_text()))?;
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!("`limit` must be between 1 and {MAX_LIMIT}"),
        ));
    }
    let mut items = st.shared.sessions.table.collect(|s| q.matches(s));
    if q.active != Some(true) {
        let seen: HashSet<u128> = items.iter().map(|s| s.id).collect();
        let q = std::sync::Arc::new(q);
        let stored = query(&st, {
            let q = q.clone();
            move |s| store::scan(s, |r| !seen.contains(&r.id) && q.matches(r))
        })
        .await?;
        items.extend(stored);
    }
    items.sort_by(|a, b| b.last_activity.cmp(&a.last_activity).then(a.id.cmp(&b.id)));
    let total = items.len();
    items.truncate(limit);
    Ok(Json(json!({"items": items, "count": items.len(), "total": total})).into_response())
}

async fn stats(State(st): State<AdminState>) -> Response {
    let (active, suspicious, per_user) = st.shared.sessions.table.stats();
    let mut per_user: Vec<_> = per_user.into_iter().collect();
    per_user.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let now = st.shared.sessions.clock.now();
    Json(json!({
        "active": active,
        "suspicious": suspicious,
        "tracked": st.shared.sessions.table.len(),
        "per_user": per_user
            .iter()
            .map(|(u, n)| json!({"user": &**u, "active": n}))
            .collect::<Vec<_>>(),
        "login_locks": st.shared.sessions.brute_force.locks(now).len(),
    }))
    .into_response()
}

async fn get_session(State(st): State<AdminState>, Path(id): Path<String>) -> ApiResult {
    let id = parse_id(&id)?;
    if let Some(s) = st.shared.sessions.table.get(id) {
        return Ok(Json(s).into_response());
    }
    match query(&st, move |s| store::get(s, id)).await? {
        Some(s) => Ok(Json(s).into_response()),
        None => Err(error(
            StatusCode::NOT_FOUND,
            format!("no session {id:032x}"),
        )),
    }
}

/// Ends an active session as revoked: event, store, and refusal of its next request.
fn revoke(st: &AdminState, id: u128, reason: &str, by: &str) -> Option<Session> {
    let now = st.shared.sessions.clock.now();
    let s = st
        .shared
        .sessions
        .table
        .end(id, SessionState::Revoked, reason, now)?;
    st.shared
        .replicate(crate::cluster::sync::Sync::revocation(&s.app, id));
    if let (Some(cluster), Some(user)) = (&st.shared.cluster, &s.user) {
        crate::cluster::sync::session_ended(cluster, &s.app, user, id);
    }
    st.shared.events.sink.audit(
        session_event(EventType::SessionRevoked, format!("session {reason}"), &s)
            .detail("reason", reason)
            .detail("manual", "true")
            .detail("by", by),
    );
    Some(s)
}

async fn revoke_session(
    State(st): State<AdminState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult {
    let id = parse_id(&id)?;
    match revoke(&st, id, "revoked by an operator", &caller.name) {
        Some(s) => {
            persist(&st.shared.events, vec![s.clone()]);
            Ok(Json(json!({"revoked": s})).into_response())
        }
        None if st.shared.sessions.table.get(id).is_some() => Err(error(
            StatusCode::CONFLICT,
            format!("session {id:032x} has already ended"),
        )),
        None => Err(error(
            StatusCode::NOT_FOUND,
            format!("no active session {id:032x}"),
        )),
    }
}

async fn revoke_user(
    State(st): State<AdminState>,
    Extension(caller): Extension<Caller>,
    Path(user): Path<String>,
) -> ApiResult {
    let ids = st.shared.sessions.table.of_user(&user);
    let ended: Vec<Session> = ids
        .into_iter()
        .filter_map(|id| {
            revoke(
                &st,
                id,
                "revoked by an operator (all of the user's sessions)",
                &caller.name,
            )
        })
        .collect();
    let n = ended.len();
    persist(&st.shared.events, ended);
    // The user's sessions other instances of a cluster know of (and this one does not).
    st.shared
        .replicate(crate::cluster::sync::Change::RevokeUser {
            user: user.clone(),
            until: crate::events::model::now_micros(),
        });
    Ok(Json(json!({"user": user, "revoked": n})).into_response())
}

async fn list_locks(State(st): State<AdminState>) -> Response {
    let now = st.shared.sessions.clock.now();
    let mut locks = st.shared.sessions.brute_force.locks(now);
    locks.sort_by_key(|l| l.2);
    let items: Vec<_> = locks
        .iter()
        .map(
            |(app, user, until)| json!({"app": &**app, "user": user, "until": format_time(*until)}),
        )
        .collect();
    Json(json!({"items": items, "count": items.len()})).into_response()
}

async fn unlock_user(
    State(st): State<AdminState>,
    Extension(caller): Extension<Caller>,
    Path(user): Path<String>,
) -> ApiResult {
    if !st.shared.sessions.brute_force.unlock(&user) {
        return Err(error(
            StatusCode::NOT_FOUND,
            format!("user `{}` is not locked", brute_force::normalise(&user)),
        ));
    }
    st.shared.replicate(crate::cluster::sync::Change::Unlock {
        user: brute_force::normalise(&user).into(),
    });
    let mut e = AuditEvent::new(
        EventType::LoginUnlocked,
        format!("login lock lifted by `{}`", caller.name),
    )
    .detail("by", &*caller.name);
    e.user = Some(user.clone());
    st.shared.events.sink.audit(e);
    Ok(Json(json!({"unlocked": user})).into_response())
}
