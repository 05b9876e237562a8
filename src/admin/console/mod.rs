//! The operator console: a dashboard served by the admin listener at `/`, and the
//! sign-in that lets a browser use the JSON API without holding a bearer token.
//!
//! The page, script and style sheet are embedded in the binary (no CDN; works offline)
//! and served under a strict Content-Security-Policy with no inline script or style:
//! everything the script shows is built as DOM text nodes, never parsed as HTML (event
//! fields such as paths and user agents come from attackers).
//!
//! Sign-in: `POST /ui/login {"token": "…"}` checks the token as the API does (failures
//! are `admin_auth_failed` events; ten from one address within five minutes and the
//! address waits) and answers with a session cookie (`HttpOnly`, `SameSite=Strict`,
//! `Path=/`) and a CSRF token. Only a SHA-256 digest of the session id is kept, with the
//! token's name and role; a session ends after 30 minutes idle, 8 hours in all, or at
//! `POST /ui/logout`. API calls with the cookie must send `X-CSRF-Token` on every write,
//! and a cross-origin `Origin` is refused (see [`ConsoleSessions::authorize`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use subtle::ConstantTimeEq;

use super::auth::Caller;
use super::AdminState;
use crate::events::{AuditEvent, EventType};

const INDEX_HTML: &str = include_str!("index.html");
const APP_JS: &str = include_str!("app.js");
const APP_CSS: &str = include_str!("app.css");

/// The console's session cookie.
pub const COOKIE: &str = "gw_console";
/// The header every cookie-authenticated write must carry.
pub const CSRF_HEADER: &str = "x-csrf-token";

const IDLE: Duration = Duration::from_secs(30 * 60);
const LIFETIME: Duration = Duration::from_secs(8 * 3600);
const MAX_SESSIONS: usize = 256;
/// Failed sign-ins from one address (in the admin failure window) before it must wait.
const LOGIN_FAILURES_BEFORE_WAIT: u32 = 10;

/// Served with every console response: no script or style but our own files, no
/// framing, no referrer, no sniffing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

struct ConsoleSession {
    caller: Caller,
    csrf: String,
    created: Instant,
    last_seen: Instant,
}

/// Signed-in browsers, by digest of their session id.
#[derive(Default)]
pub struct ConsoleSessions {
    by_digest: Mutex<HashMap<[u8; 32], ConsoleSession>>,
}

/// Why a cookie-authenticated call is refused.
pub enum Refusal {
    /// No cookie, or not a live session: 401.
    NoSession,
    /// A write without the right CSRF token, or from another origin: 403.
    Csrf,
}

impl ConsoleSessions {
    fn start(&self, caller: Caller) -> (String, String) {
        let id = crate::secrets::random_hex::<32>();
        let csrf = crate::secrets::random_hex::<16>();
        let now = Instant::now();
        let mut m = self.by_digest.lock().unwrap_or_else(|p| p.into_inner());
        m.retain(|_, s| live(s, now));
        if m.len() >= MAX_SESSIONS {
            if let Some(oldest) = m.iter().min_by_key(|(_, s)| s.last_seen).map(|(k, _)| *k) {
                m.remove(&oldest);
            }
        }
        m.insert(
            digest(&id),
            ConsoleSession {
                caller,
                csrf: csrf.clone(),
                created: now,
                last_seen: now,
            },
        );
        (id, csrf)
    }

    fn end(&self, id: &str) {
        let mut m = self.by_digest.lock().unwrap_or_else(|p| p.into_inner());
        m.remove(&digest(id));
    }

    /// The session `headers` carry (cookie), touched; with its CSRF token.
    fn current(&self, headers: &HeaderMap) -> Option<(Caller, String)> {
        let id = cookie(headers)?;
        let now = Instant::now();
        let mut m = self.by_digest.lock().unwrap_or_else(|p| p.into_inner());
        let key = digest(id);
        let s = m.get_mut(&key)?;
        if !live(s, now) {
            m.remove(&key);
            return None;
        }
        s.last_seen = now;
        Some((s.caller.clone(), s.csrf.clone()))
    }

    /// The caller behind a cookie-authenticated API call. Writes (anything but GET and
    /// HEAD) need the session's CSRF token in `X-CSRF-Token`; an `Origin` naming another
    /// host than the one called is refused whatever the method.
    pub fn authorize(&self, method: &Method, headers: &HeaderMap) -> Result<Caller, Refusal> {
        let (caller, csrf) = self.current(headers).ok_or(Refusal::NoSession)?;
        if !same_origin(headers) {
            return Err(Refusal::Csrf);
        }
        if *method != Method::GET && *method != Method::HEAD {
            let sent = headers
                .get(CSRF_HEADER)
                .map(|v| v.as_bytes())
                .unwrap_or_default();
            if !bool::from(sent.ct_eq(csrf.as_bytes())) {
                return Err(Refusal::Csrf);
            }
        }
        Ok(caller)
    }

    /// Whether `headers` carry a console cookie at all (to answer 401 vs 403 well).
    pub fn has_cookie(headers: &HeaderMap) -> bool {
        cookie(headers).is_some()
    }
}

fn live(s: &ConsoleSession, now: Instant) -> bool {
    now.duration_since(s.last_seen) < IDLE && now.duration_since(s.created) < LIFETIME
}

fn digest(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

/// The console cookie's value, if the request has one.
fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
}

/// No `Origin`, or one whose host is the `Host` called.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .unwrap_or("");
    !host.is_empty() && origin_host.eq_ignore_ascii_case(host)
}

pub(super) fn routes() -> Router<AdminState> {
    Router::new()
        .route(
            "/",
            get(|| async { page("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/ui/app.js",
            get(|| async { page("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/ui/app.css",
            get(|| async { page("text/css; charset=utf-8", APP_CSS) }),
        )
        .route("/ui/login", post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/session", get(session))
}

/// The headers every console response carries.
fn harden(resp: &mut Response) {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

fn page(ctype: &'static str, body: &'static str) -> Response {
    let mut r = (
        [(header::CONTENT_TYPE, HeaderValue::from_static(ctype))],
        body,
    )
        .into_response();
    harden(&mut r);
    r
}

fn reply(status: StatusCode, body: serde_json::Value) -> Response {
    let mut r = (status, Json(body)).into_response();
    harden(&mut r);
    r
}

#[derive(Deserialize)]
struct Login {
    token: String,
}

async fn login(
    State(st): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Json<Login>, axum::extract::rejection::JsonRejection>,
) -> Response {
    if st.credentials.is_empty() {
        return reply(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": "admin API disabled: no token configured"}),
        );
    }
    if !same_origin(&headers) {
        return reply(
            StatusCode::FORBIDDEN,
            json!({"error": "cross-origin sign-in"}),
        );
    }
    let Ok(Json(login)) = body else {
        return reply(
            StatusCode::BAD_REQUEST,
            json!({"error": "expected {\"token\": \"…\"}"}),
        );
    };
    let ip = peer.ip();
    if st.auth_failures.current(ip) >= LOGIN_FAILURES_BEFORE_WAIT {
        return reply(
            StatusCode::TOO_MANY_REQUESTS,
            json!({"error": "too many failed sign-ins from this address; wait five minutes"}),
        );
    }
    let Some(caller) = st.credentials.identify(login.token.trim().as_bytes()) else {
        let n = st.auth_failures.count(ip);
        let mut e = AuditEvent::new(
            EventType::AdminAuthFailed,
            "console sign-in with a wrong token",
        )
        .ip(ip)
        .path("/ui/login")
        .detail("failures_in_window", n.to_string());
        e.method = Some("POST".into());
        if n >= super::AUTH_FAILURES_REPEATED {
            e = e.escalated();
        }
        st.shared.events.sink.audit(e);
        return reply(StatusCode::UNAUTHORIZED, json!({"error": "wrong token"}));
    };
    tracing::info!(token = %caller.name, client_ip = %ip, "console sign-in");
    let (id, csrf) = st.console.start(caller.clone());
    let mut r = reply(
        StatusCode::OK,
        json!({"name": &*caller.name, "role": caller.role.as_str(), "csrf": csrf}),
    );
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        LIFETIME.as_secs()
    )) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

async fn logout(State(st): State<AdminState>, headers: HeaderMap) -> Response {
    // Ending a session needs the session's CSRF token too (no forced sign-out).
    match st.console.authorize(&Method::POST, &headers) {
        Ok(_) => {
            if let Some(id) = cookie(&headers) {
                st.console.end(id);
            }
        }
        Err(Refusal::Csrf) => {
            return reply(
                StatusCode::FORBIDDEN,
                json!({"error": "missing CSRF token"}),
            )
        }
        Err(Refusal::NoSession) => {}
    }
    let mut r = reply(StatusCode::OK, json!({"signed_out": true}));
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("gw_console=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"),
    );
    r
}

/// Who is signed in (and the CSRF token the page must send), or 401.
async fn session(State(st): State<AdminState>, headers: HeaderMap) -> Response {
    match st.console.current(&headers) {
        Some((caller, csrf)) => reply(
            StatusCode::OK,
            json!({"name": &*caller.name, "role": caller.role.as_str(), "csrf": csrf,
                   "tokens": st.credentials.names().map(|(n, r)| json!({"name": n, "role": r.as_str()})).collect::<Vec<_>>()}),
        ),
        None => reply(StatusCode::UNAUTHORIZED, json!({"error": "not signed in"})),
    }
}
