//! The admin API over IP rules and bans: list, add, change and delete rules (stored in
//! redb, merged with the config's), test a decision without traffic, and manage bans.
//! Every change is an audit event.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::auth::Caller;
use super::events_api::{error, ApiError};
use super::AdminState;
use crate::events::model::now_micros;
use crate::events::{AuditEvent, EventId, EventType};
use crate::ip_rules::{self, Action, RequestView, Rule, RuleSpec};

type ApiResult = Result<Response, ApiError>;
type JsonBody<T> = Result<Json<T>, axum::extract::rejection::JsonRejection>;

pub(super) fn routes() -> Router<AdminState> {
    Router::new()
        .route("/ip-rules", get(list_rules).post(create_rule))
        .route("/ip-rules/test", post(test_rule))
        .route("/ip-rules/{id}", patch(modify_rule).delete(delete_rule))
        .route("/bans", get(list_bans).post(create_ban))
        .route("/bans/{ip}", axum::routing::delete(delete_ban))
}

fn body<T>(b: JsonBody<T>) -> Result<T, ApiError> {
    b.map(|Json(v)| v)
        .map_err(|e| error(StatusCode::BAD_REQUEST, e.body_text()))
}

/// Runs a store write on the writer thread; its failure becomes the API's error.
async fn store_write<T: Send + 'static>(
    st: &AdminState,
    f: impl FnOnce(&crate::events::StoreWriter) -> Result<T, crate::events::StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    st.shared
        .events
        .write(f)
        .await
        .map_err(|e| error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// A copy of the API's rules as they stand.
fn api_rules(st: &AdminState) -> Vec<RuleSpec> {
    st.shared
        .ip_rules
        .api_rules
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
}

fn rule_json(r: &Rule) -> serde_json::Value {
    let mut v = serde_json::to_value(&r.spec).unwrap_or_default();
    v["priority"] = json!(r.priority);
    v["source"] = json!(r.source);
    v["requests"] = json!(r.count());
    v
}

async fn list_rules(State(st): State<AdminState>) -> Response {
    let set = st.shared.ip_rules.load();
    let rt = st.shared.runtime.load();
    Json(json!({
        "default": rt.ip.defaults.global,
        "rules": set.rules().iter().map(rule_json).collect::<Vec<_>>(),
    }))
    .into_response()
}

/// Validates `api` against the config's rules, stores `changed` (or deletes `removed`), and
/// swaps the new set in. Callers hold the changes lock.
async fn apply(
    st: &AdminState,
    api: Vec<RuleSpec>,
    changed: Option<RuleSpec>,
    removed: Option<String>,
) -> Result<(), ApiError> {
    let shared = st.shared.clone();
    let rt = shared.runtime.load_full();
    let to_build = api.clone();
    let built = tokio::task::spawn_blocking(move || rt.ip.build(&to_build, &shared.metrics))
        .await
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let set = built.map_err(|errs| {
        let msg = errs
            .iter()
            .map(|e| format!("`{}`: {}", e.field, e.message))
            .collect::<Vec<_>>()
            .join("; ");
        error(StatusCode::UNPROCESSABLE_ENTITY, msg)
    })?;
    store_write(st, move |store| {
        if let Some(r) = &changed {
            ip_rules::save_dynamic(store, r)?;
        }
        if let Some(id) = &removed {
            ip_rules::remove_dynamic(store, id)?;
        }
        Ok(())
    })
    .await?;
    *st.shared
        .ip_rules
        .api_rules
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = api;
    st.shared.ip_rules.set.store(Arc::new(set));
    Ok(())
}

fn rule_event(kind: EventType, verb: &str, r: &RuleSpec) -> AuditEvent {
    let mut e = AuditEvent::new(
        kind,
        format!(
            "IP rule `{}` {verb}: {} {}",
            r.id,
            r.action.as_str(),
            r.cidr
        ),
    )
    .detail("action", r.action.as_str())
    .detail("cidr", r.cidr.clone());
    e.rule_ids.push(r.id.clone());
    e
}

async fn create_rule(
    State(st): State<AdminState>,
    Extension(caller): Extension<Caller>,
    b: JsonBody<RuleSpec>,
) -> ApiResult {
    let mut spec = body(b)?;
    if !spec.id.is_empty() {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "`id` is assigned by the gateway; leave it out",
        ));
    }
    spec.id = format!("api-{}", EventId::new(now_micros()));
    let _serial = st.shared.ip_rules.changes.lock().await;
    let mut api = api_rules(&st);
    api.push(spec.clone());
    apply(&st, api, Some(spec.clone()), None).await?;
    st.shared
        .events
        .sink
        .audit(rule_event(EventType::IpRuleCreated, "created", &spec).detail("by", &*caller.name));
    let set = st.shared.ip_rules.load();
    let rule = set.rules().iter().find(|r| r.spec.id == spec.id);
    Ok((StatusCode::CREATED, Json(rule.map(rule_json))).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleChange {
    action: Option<Action>,
    cidr: Option<String>,
    priority: Option<i64>,
    hosts: Option<Vec<String>>,
    routes: Option<Vec<String>>,
    path_prefixes: Option<Vec<String>>,
    comment: Option<String>,
}

/// The API rule `id`, or why it cannot be changed.
fn find_api_rule(st: &AdminState, api: &[RuleSpec], id: &str) -> Result<usize, ApiError> {
    if let Some(i) = api.iter().position(|r| r.id == id) {
        return Ok(i);
    }
    if st.shared.runtime.load().ip.rules.iter().any(|r| r.id == id) {
        return Err(error(
            StatusCode::CONFLICT,
            format!("rule `{id}` is defined in the config file; change it there"),
        ));
    }
    Err(error(StatusCode::NOT_FOUND, format!("no IP rule `{id}`")))
}

async fn modify_rule(
    State(st): State<AdminState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    b: JsonBody<RuleChange>,
) -> ApiResult {
    let c = body(b)?;
    let _serial = st.shared.ip_rules.changes.lock().await;
    let mut api = api_rules(&st);
    let i = find_api_rule(&st, &api, &id)?;
    let r = &mut api[i];
    if let Some(v) = c.action {
        r.action = v;
    }
    if let Some(v) = c.cidr {
        r.cidr = v;
    }
    if let Some(v) = c.priority {
        r.priority = Some(v);
    }
    if let Some(v) = c.hosts {
        r.hosts = v;
    }
    if let Some(v) = c.routes {
        r.routes = v;
    }
    if let Some(v) = c.path_prefixes {
        r.path_prefixes = v;
    }
    if let Some(v) = c.comment {
        r.comment = Some(v);
    }
    let spec = r.clone();
    apply(&st, api, Some(spec.clone()), None).await?;
    st.shared.events.sink.audit(
        rule_event(EventType::IpRuleModified, "modified", &spec).detail("by", &*caller.name),
    );
    let set = st.shared.ip_rules.load();
    let rule = set.rules().iter().find(|r| r.spec.id == spec.id);
    Ok(Json(rule.map(rule_json)).into_response())
}

async fn delete_rule(
    State(st): State<AdminState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult {
    let _serial = st.shared.ip_rules.changes.lock().await;
    let mut api = api_rules(&st);
    let i = find_api_rule(&st, &api, &id)?;
    let spec = api.remove(i);
    apply(&st, api, None, Some(id)).await?;
    st.shared
        .events
        .sink
        .audit(rule_event(EventType::IpRuleDeleted, "deleted", &spec).detail("by", &*caller.name));
    Ok(Json(json!({"deleted": spec.id})).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestRequest {
    ip: IpAddr,
    #[serde(default)]
    host: String,
    #[serde(default = "slash")]
    path: String,
    #[serde(default)]
    listener: String,
    /// Not used until sessions exist; accepted so clients can send it.
    #[serde(default)]
    user: Option<String>,
}

fn slash() -> String {
    "/".into()
}

/// The decision for a request, without sending one (nothing is counted).
async fn test_rule(State(st): State<AdminState>, b: JsonBody<TestRequest>) -> ApiResult {
    let t = body(b)?;
    let _ = &t.user;
    if !t.path.starts_with('/') {
        return Err(error(StatusCode::BAD_REQUEST, "`path` must start with `/`"));
    }
    let rt = st.shared.runtime.load();
    let route = rt.router.route(&t.host, &t.path).map(|r| r.name.clone());
    let banned = st
        .shared
        .bans
        .check(crate::client_ip::client_key(t.ip, rt.requests.ipv6_prefix));
    let set = st.shared.ip_rules.load();
    let d = set.evaluate(&RequestView {
        ip: t.ip,
        host: &t.host,
        route: route.as_deref(),
        listener: &t.listener,
        path: &t.path,
    });
    let action = if banned.is_some() {
        Action::Deny
    } else {
        d.action
    };
    Ok(Json(json!({
        "decision": action,
        "decided_by": if banned.is_some() { json!("ban") } else { json!(d.by) },
        "rule": d.rule.map(rule_json),
        "route": route.as_deref(),
        "ban": banned,
    }))
    .into_response())
}

async fn list_bans(State(st): State<AdminState>) -> Response {
    Json(json!({"items": st.shared.bans.active()})).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BanRequest {
    ip: IpAddr,
    #[serde(with = "humantime_serde")]
    duration: Duration,
    reason: String,
}

async fn create_ban(
    State(st): State<AdminState>,
    Extension(caller): Extension<Caller>,
    b: JsonBody<BanRequest>,
) -> ApiResult {
    let req = body(b)?;
    if req.duration.is_zero() || req.duration > Duration::from_secs(366 * 24 * 3600) {
        return Err(error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "`duration` must be between 1s and 366d",
        ));
    }
    if req.reason.trim().is_empty() {
        return Err(error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "`reason` is required",
        ));
    }
    let rt = st.shared.runtime.load();
    // Bans apply to what clients are counted under (an IPv6 address's prefix).
    let ban = st.shared.bans.ban(
        &rt.bans,
        crate::client_ip::client_key(req.ip, rt.requests.ipv6_prefix),
        Some(req.duration),
        req.reason.trim().to_string(),
        true,
    );
    let stored = ban.clone();
    store_write(&st, move |store| crate::bans::save(store, &stored)).await?;
    st.shared
        .replicate(crate::cluster::sync::Change::Ban { ban: ban.clone() });
    st.shared.events.sink.audit(
        AuditEvent::new(
            EventType::IpBanned,
            format!(
                "banned by `{}` {}: {}",
                caller.name,
                crate::bans::until_text(&ban),
                ban.reason
            ),
        )
        .ip(ban.ip)
        .detail("manual", "true")
        .detail("by", &*caller.name),
    );
    Ok((StatusCode::CREATED, Json(ban)).into_response())
}

async fn delete_ban(
    State(st): State<AdminState>,
    Extension(caller): Extension<Caller>,
    Path(ip): Path<String>,
) -> ApiResult {
    let ip: IpAddr = ip.parse().map_err(|_| {
        error(
            StatusCode::BAD_REQUEST,
            format!("`{ip}` is not an IP address"),
        )
    })?;
    let ip = crate::client_ip::client_key(ip, st.shared.runtime.load().requests.ipv6_prefix);
    let Some(ban) = st.shared.bans.unban(ip) else {
        return Err(error(StatusCode::NOT_FOUND, format!("{ip} is not banned")));
    };
    store_write(&st, move |store| crate::bans::remove(store, &[ip])).await?;
    st.shared
        .replicate(crate::cluster::sync::Change::Unban { ip });
    st.shared.events.sink.audit(
        AuditEvent::new(
            EventType::IpUnbanned,
            format!("ban lifted by `{}`", caller.name),
        )
        .ip(ip)
        .detail("by", &*caller.name),
    );
    Ok(Json(json!({"unbanned": ban})).into_response())
}
