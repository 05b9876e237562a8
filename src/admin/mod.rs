//! The admin listener (axum): health, readiness, Prometheus metrics, and the token-protected
//! JSON API under `/api/v1/`.
//!
//! `/healthz`, `/readyz` and `/metrics` need no token (they reveal no secrets and monitoring
//! systems scrape them); `[admin] metrics_bind` serves those three alone on a second
//! address that may face the network while the API stays on loopback. Everything under
//! `/api/v1/` needs `Authorization: Bearer <token>` of a named token whose role allows the
//! call ([`auth`]: 401 for an unknown token, 403 for a role that may not). With no token
//! configured the API does not run: its routes answer 503 and nothing can be changed
//! through them.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, OriginalUri, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::app::{Shared, StartError};
use crate::events::{AuditEvent, EventType};
use crate::runtime::AdminSettings;

pub mod auth;
pub mod client;
mod console;
mod events_api;
pub mod health;
mod security_api;
mod sessions_api;

#[derive(Clone)]
struct AdminState {
    shared: Arc<Shared>,
    credentials: Arc<auth::Credentials>,
    auth_failures: Arc<AuthFailures>,
    console: Arc<console::ConsoleSessions>,
}

/// Failed admin logins per address in a sliding window: the fifth within
/// [`AUTH_FAILURE_WINDOW`] and every one after is a critical event.
#[derive(Default)]
struct AuthFailures {
    by_ip: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

const AUTH_FAILURE_WINDOW: Duration = Duration::from_secs(300);
pub(crate) const AUTH_FAILURES_REPEATED: u32 = 5;

impl AuthFailures {
    /// Counts a failure from `ip`; returns how many in the current window.
    fn count(&self, ip: IpAddr) -> u32 {
        let mut m = self.by_ip.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if m.len() > 10_000 {
            m.retain(|_, (_, since)| now.duration_since(*since) < AUTH_FAILURE_WINDOW);
        }
        let e = m.entry(ip).or_insert((0, now));
        if now.duration_since(e.1) >= AUTH_FAILURE_WINDOW {
            *e = (0, now);
        }
        e.0 += 1;
        e.0
    }

    /// Failures from `ip` in the current window, without counting one.
    fn current(&self, ip: IpAddr) -> u32 {
        let m = self.by_ip.lock().unwrap_or_else(|p| p.into_inner());
        match m.get(&ip) {
            Some((n, since)) if since.elapsed() < AUTH_FAILURE_WINDOW => *n,
            _ => 0,
        }
    }
}

/// The token in force: `GATEWAY_ADMIN_TOKEN`, else `admin.token`, else `admin.token_file`
/// (created with a random token, mode 0600, when missing). `None`: the API stays off.
pub fn resolve_token(admin: &AdminSettings) -> Result<Option<Arc<str>>, StartError> {
    if let Ok(t) = std::env::var("GATEWAY_ADMIN_TOKEN") {
        if !t.is_empty() {
            return Ok(Some(t.into()));
        }
    }
    if let Some(t) = &admin.token {
        return Ok(Some(t.as_str().into()));
    }
    if let Some(path) = &admin.token_file {
        return read_or_create_token(path).map(|t| Some(t.into()));
    }
    tracing::warn!("no admin token configured (admin.token, admin.token_file or GATEWAY_ADMIN_TOKEN): the admin API is disabled");
    Ok(None)
}

fn read_or_create_token(path: &Path) -> Result<String, StartError> {
    let existed = path.exists();
    let token = crate::secrets::read_or_create(path).map_err(|source| StartError::SecretFile {
        what: "admin token",
        path: path.display().to_string(),
        source,
    })?;
    if !existed {
        tracing::warn!(path = %path.display(), "generated an admin API token");
    }
    Ok(token)
}

/// Serves the admin port until `stop` turns true.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    credentials: Arc<auth::Credentials>,
    mut stop: watch::Receiver<bool>,
) {
    let state = AdminState {
        shared,
        credentials,
        auth_failures: Arc::new(AuthFailures::default()),
        console: Arc::default(),
    };
    let api = Router::new()
        .route("/reload", post(reload))
        .route("/status", get(status))
        .route("/cluster", get(cluster))
        .route("/whoami", get(whoami))
        .route("/posture", get(posture))
        .merge(events_api::routes())
        .merge(security_api::routes())
        .merge(sessions_api::routes())
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .route("/openapi.json", get(events_api::openapi));
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .nest("/api/v1", api)
        .merge(console::routes())
        .with_state(state);
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    let _ = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await;
}

/// Serves `[admin] metrics_bind` until `stop` turns true: `/metrics`, `/healthz` and
/// `/readyz`, nothing else (every other path is 404, the API is not reachable here).
pub async fn serve_metrics(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let state = AdminState {
        shared,
        credentials: Arc::default(),
        auth_failures: Arc::new(AuthFailures::default()),
        console: Arc::default(),
    };
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state);
    let _ = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await;
}

async fn require_token(State(st): State<AdminState>, mut req: Request, next: Next) -> Response {
    if st.credentials.is_empty() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": "admin API disabled: no token configured"})),
        )
            .into_response();
    }
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // A browser signed in to the console sends its cookie instead of a bearer token.
    let mut by_console = None;
    if bearer.is_none() && console::ConsoleSessions::has_cookie(req.headers()) {
        match st.console.authorize(req.method(), req.headers()) {
            Ok(caller) => by_console = Some(caller),
            Err(console::Refusal::Csrf) => {
                return (
                    StatusCode::FORBIDDEN,
                    Json(json!({"error": "console writes need the session's X-CSRF-Token from the same origin"})),
                )
                    .into_response()
            }
            Err(console::Refusal::NoSession) => {
                return (
                    StatusCode::UNAUTHORIZED,
                    Json(json!({"error": "the console session has ended; sign in again"})),
                )
                    .into_response()
            }
        }
    }
    let presented = bearer.unwrap_or("");
    let ip = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let path = req
        .extensions()
        .get::<OriginalUri>()
        .map_or(req.uri().path(), |u| u.0.path())
        .to_string();
    if let Some(caller) = by_console.or_else(|| st.credentials.identify(presented.as_bytes())) {
        let needed = auth::required_role(req.method(), &path);
        if caller.role >= needed {
            req.extensions_mut().insert(caller);
            return next.run(req).await;
        }
        tracing::warn!(path = %path, token = %caller.name, role = caller.role.as_str(), "admin API call beyond the token's role");
        let mut e = AuditEvent::new(
            EventType::AdminForbidden,
            format!(
                "admin API call refused: token `{}` has role {}, the call needs {}",
                caller.name,
                caller.role.as_str(),
                needed.as_str()
            ),
        )
        .path(&path)
        .detail("by", &*caller.name)
        .detail("role", caller.role.as_str());
        if let Some(ip) = ip {
            e = e.ip(ip);
        }
        e.method = Some(req.method().to_string());
        st.shared.events.sink.audit(e);
        return (
            StatusCode::FORBIDDEN,
            Json(json!({
                "error": format!("role `{}` may not {} {path}: it needs `{}`",
                    caller.role.as_str(), req.method(), needed.as_str()),
            })),
        )
            .into_response();
    }
    tracing::warn!(path = %path, client_ip = ?ip, "admin API authentication failed");
    if let Some(ip) = ip {
        let n = st.auth_failures.count(ip);
        let mut e = AuditEvent::new(
            EventType::AdminAuthFailed,
            if presented.is_empty() {
                "admin API request without a bearer token"
            } else {
                "admin API request with a wrong bearer token"
            },
        )
        .ip(ip)
        .path(&path)
        .detail("failures_in_window", n.to_string());
        e.method = Some(req.method().to_string());
        if n >= AUTH_FAILURES_REPEATED {
            e = e.escalated();
        }
        st.shared.events.sink.audit(e);
    }
    let mut resp = (
        StatusCode::UNAUTHORIZED,
        Json(json!({"error": "missing or wrong bearer token"})),
    )
        .into_response();
    resp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    resp
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PostureQuery {
    /// Open and check the newest backup in full (default true).
    verify_backup: Option<bool>,
}

/// The posture of the running gateway (see [`crate::posture`]); recorded as an event and
/// in `gateway_posture_score`.
async fn posture(
    State(st): State<AdminState>,
    q: Result<axum::extract::Query<PostureQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let verify = match q {
        Ok(q) => q.verify_backup.unwrap_or(true),
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": e.body_text()})),
            )
                .into_response()
        }
    };
    let rt = st.shared.runtime.load_full();
    let live = crate::posture::Live {
        events_dropped: crate::events::model::Risk::ALL
            .iter()
            .map(|r| {
                st.shared
                    .metrics
                    .events_dropped
                    .with_label_values(&[r.as_str()])
                    .get()
            })
            .sum(),
    };
    let report = match tokio::task::spawn_blocking(move || {
        crate::posture::evaluate(&rt, Some(live), verify)
    })
    .await
    {
        Ok(r) => r,
        Err(e) => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(json!({"error": e.to_string()})),
            )
                .into_response()
        }
    };
    st.shared
        .events
        .sink
        .audit(report.record(&st.shared.metrics));
    Json(report).into_response()
}

/// The caller's token name and role (the dashboard shows only what the role may do).
async fn whoami(axum::Extension(caller): axum::Extension<auth::Caller>) -> Response {
    Json(json!({"name": &*caller.name, "role": caller.role.as_str()})).into_response()
}

async fn readyz(State(st): State<AdminState>) -> Response {
    if st.shared.ready.load(Ordering::Relaxed) {
        // Cut off from the cluster's Redis the instance still serves (on local state): it
        // stays ready and says so, unless the operator wants it drained.
        match &st.shared.cluster {
            Some(c) if !c.is_up() && !c.settings.ready_when_down => (
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready (cluster degraded: redis unreachable; ready_when_down = false)\n",
            )
                .into_response(),
            Some(c) if !c.is_up() => (
                StatusCode::OK,
                "ready (cluster degraded: redis unreachable)\n",
            )
                .into_response(),
            _ => (StatusCode::OK, "ready\n").into_response(),
        }
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

async fn metrics(State(st): State<AdminState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        st.shared.metrics.render(),
    )
        .into_response()
}

async fn reload(State(st): State<AdminState>) -> Response {
    match st.shared.reload().await {
        Ok(generation) => Json(json!({"reloaded": true, "generation": generation})).into_response(),
        Err(errs) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({
                "reloaded": false,
                "generation": st.shared.generation(),
                "errors": errs.iter().map(|e| json!({
                    "file": e.file.display().to_string(),
                    "line": e.line,
                    "column": e.column,
                    "key": e.key,
                    "message": e.message,
                })).collect::<Vec<_>>(),
            })),
        )
            .into_response(),
    }
}

/// `GET /api/v1/cluster`: this instance, whether Redis answers, and the instances whose
/// heartbeat Redis holds.
async fn cluster(State(st): State<AdminState>) -> Response {
    let Some(c) = &st.shared.cluster else {
        return Json(json!({"enabled": false})).into_response();
    };
    let instances = c.instances().await;
    Json(json!({
        "enabled": true,
        "backend": "redis",
        "redis_cluster": c.settings.redis_cluster,
        "redis": c.settings.urls,
        "instance": c.settings.instance,
        "connected": c.is_up(),
        "instances": instances.unwrap_or_default(),
        "local": {
            "bans": st.shared.bans.active().len(),
            "login_locks": st.shared.sessions.brute_force.locks(st.shared.sessions.clock.now()).len(),
        },
        "policy_when_redis_is_down": {
            "rate_limits": if c.settings.refuse_when_down { "refuse" } else { "local" },
            "ready": c.settings.ready_when_down,
            "bans_locks_revocations": "last known",
        },
    }))
    .into_response()
}

async fn status(State(st): State<AdminState>) -> Response {
    let rt = st.shared.runtime.load();
    let upstreams: Vec<_> = rt
        .pools
        .iter()
        .map(|p| {
            json!({
                "name": &*p.name,
                "servers": p.servers.iter().map(|s| json!({
                    "server": &*s.label,
                    "healthy": s.is_healthy(),
                    "in_rotation": s.available(),
                    "in_flight": s.active(),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let settings = st.shared.events.settings();
    let schedules: serde_json::Map<String, serde_json::Value> = crate::schedule::Job::ALL
        .iter()
        .map(|&job| {
            use crate::schedule::Job;
            let schedule = match job {
                Job::Backup => settings.backup.schedule.as_ref(),
                Job::Archive => Some(&settings.retention.schedule),
                Job::SessionCleanup => Some(&rt.sessions.cleanup),
            };
            let next = st
                .shared
                .events
                .next_runs
                .get(job)
                .filter(|_| schedule.is_some());
            (
                job.name().to_string(),
                json!({
                    "schedule": schedule.map(|s| s.to_string()),
                    "time_zone": schedule.and_then(|s| s.time_zone()),
                    "next_run": next.map(|t| humantime::format_rfc3339_seconds(t).to_string()),
                }),
            )
        })
        .collect();
    Json(json!({
        "generation": rt.generation,
        "ready": st.shared.ready.load(Ordering::Relaxed),
        "listeners": rt.listener_binds.iter().map(|b| json!({"name": b.name, "bind": b.addr.to_string()})).collect::<Vec<_>>(),
        "upstreams": upstreams,
        "schedules": schedules,
    }))
    .into_response()
}
