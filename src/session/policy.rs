//! `[[apps]]` compiled: what the request path needs to protect one application's sessions
//! and logins, resolved once at config load (cookie names, header values, timeouts in
//! microseconds, signing keys read from their files).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use serde::Deserialize;

use super::signed::SigningKeys;
use crate::config::{ConfigErrors, KeyPath, LoadedConfig};

/// Whose cookie carries the session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// The application's own session cookie, learned when the application sets it.
    #[default]
    Upstream,
    /// A `__Host-` cookie the gateway issues at login, signed with HMAC-SHA256.
    Signed,
}

/// What happens when a user already has `max_per_user` sessions and logs in again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnLimit {
    /// The new login is refused (403) and its cookie never reaches the client.
    RejectNew,
    /// The oldest session is revoked to make room.
    #[default]
    EvictOldest,
}

/// A cookie for a session the gateway never saw created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unknown {
    /// Treated as invalid.
    #[default]
    Reject,
    /// Registered as a new session without a user (for rolling the gateway out in front of
    /// an app whose users are already logged in).
    Adopt,
}

/// What a request with an invalid session gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InvalidAction {
    /// 401 with a JSON body.
    #[default]
    Reject,
    /// 303 to the login page.
    Redirect,
    /// Forwarded without the cookie.
    Strip,
}

/// A method and exact path.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub method: Method,
    pub path: String,
}

impl Endpoint {
    pub fn matches(&self, method: &Method, path: &str) -> bool {
        *method == self.method && path == self.path
    }
}

/// How a login is recognised and its outcome read.
#[derive(Debug, Clone)]
pub struct LoginPolicy {
    pub endpoint: Endpoint,
    pub user_field: Option<String>,
    pub user_header: Option<HeaderName>,
    pub success_status: Vec<u16>,
    pub success_location: Option<String>,
    pub success_header: Option<HeaderName>,
    pub max_body_bytes: usize,
}

/// Brute-force thresholds.
#[derive(Debug, Clone)]
pub struct BruteForcePolicy {
    pub enabled: bool,
    pub max_failures: u32,
    pub ip_max_failures: u32,
    pub stuffing_users: u32,
    pub window_micros: u64,
    pub lock_micros: u64,
    pub ban_ip: bool,
}

/// One protected application.
pub struct AppPolicy {
    pub name: Arc<str>,
    pub mode: Mode,
    pub cookie: String,
    /// `Set-Cookie` that makes the client forget the session cookie.
    pub clear_cookie: HeaderValue,
    pub idle_micros: u64,
    pub absolute_micros: u64,
    pub max_per_user: usize,
    pub on_limit: OnLimit,
    pub change_threshold: u32,
    pub user_agent_counts: bool,
    pub revoke_suspicious: bool,
    pub unknown: Unknown,
    pub invalid: InvalidAction,
    pub login_page: Option<HeaderValue>,
    pub require_paths: Vec<String>,
    pub keys: SigningKeys,
    pub user_header: Option<HeaderName>,
    pub login: Option<LoginPolicy>,
    pub logout: Option<Endpoint>,
    pub brute_force: BruteForcePolicy,
    /// The app has a `[apps.session]` section (else only logins are watched).
    pub sessions_on: bool,
}

impl AppPolicy {
    pub fn is_login(&self, method: &Method, path: &str) -> bool {
        self.login
            .as_ref()
            .is_some_and(|l| l.endpoint.matches(method, path))
    }

    pub fn is_logout(&self, method: &Method, path: &str) -> bool {
        self.logout
            .as_ref()
            .is_some_and(|l| l.matches(method, path))
    }

    pub fn is_login_page(&self, path: &str) -> bool {
        self.login_page
            .as_ref()
            .is_some_and(|p| p.as_bytes() == path.as_bytes())
    }

    pub fn requires_session(&self, path: &str) -> bool {
        self.require_paths
            .iter()
            .any(|p| path.starts_with(p.as_str()))
    }

    /// The `Set-Cookie` value for a new signed session.
    pub fn issue_cookie(&self, value: &str) -> Option<HeaderValue> {
        HeaderValue::from_str(&format!(
            "{}={value}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={}",
            self.cookie,
            self.absolute_micros / 1_000_000
        ))
        .ok()
    }
}

/// The default cookie of signed mode.
pub const SIGNED_COOKIE: &str = "__Host-gw_session";

/// Compiles `[[apps]]`: each app with the route names it covers.
pub fn compile(cfg: &LoadedConfig, errs: &mut ConfigErrors) -> Vec<(Arc<AppPolicy>, Vec<String>)> {
    let raw = &cfg.raw;
    let mut out = Vec::new();
    let mut names = HashSet::new();
    let mut claimed: HashSet<&str> = HashSet::new();
    for (i, a) in raw.apps.iter().enumerate() {
        let at = KeyPath::root().key("apps").index(i);
        if a.name.is_empty() {
            errs.push(cfg.error(&at.key("name"), "must not be empty"));
        } else if !names.insert(a.name.as_str()) {
            errs.push(cfg.error(
                &at.key("name"),
                format!("app `{}` is defined twice", a.name),
            ));
        }
        if a.routes.is_empty() {
            errs.push(cfg.error(&at.key("routes"), "name at least one route"));
        }
        for (j, r) in a.routes.iter().enumerate() {
            if !raw.routes.iter().any(|x| &x.name == r) {
                errs.push(cfg.error(&at.key("routes").index(j), format!("no route named `{r}`")));
            } else if !claimed.insert(r.as_str()) {
                errs.push(cfg.error(
                    &at.key("routes").index(j),
                    format!("route `{r}` already belongs to another app"),
                ));
            }
        }
        if a.session.is_none() && a.login.is_none() {
            errs.push(cfg.error(&at, "an app needs a [apps.session] or [apps.login] section"));
        }
        let login = a.login.as_ref().and_then(|l| {
            let lat = at.key("login");
            let endpoint = endpoint(cfg, errs, &lat, &l.method, &l.path)?;
            let user_header = header_name(cfg, errs, &lat.key("user_header"), &l.user_header);
            let success_header =
                header_name(cfg, errs, &lat.key("success_header"), &l.success_header);
            if l.success_status.is_empty()
                || l.success_status.iter().any(|s| !(100..600).contains(s))
            {
                errs.push(cfg.error(
                    &lat.key("success_status"),
                    "list one or more HTTP status codes",
                ));
            }
            if l.user_field.as_deref().is_some_and(str::is_empty) {
                errs.push(cfg.error(&lat.key("user_field"), "must not be empty"));
            }
            if l.max_body_bytes == 0 {
                errs.push(cfg.error(&lat.key("max_body_bytes"), "must be at least 1"));
            }
            Some(LoginPolicy {
                endpoint,
                user_field: l.user_field.clone(),
                user_header,
                success_status: l.success_status.clone(),
                success_location: l.success_location.clone(),
                success_header,
                max_body_bytes: l.max_body_bytes,
            })
        });
        let logout = a
            .logout
            .as_ref()
            .and_then(|l| endpoint(cfg, errs, &at.key("logout"), &l.method, &l.path));
        let b = &a.brute_force;
        let bat = at.key("brute_force");
        for (key, v) in [
            ("max_failures", b.max_failures),
            ("ip_max_failures", b.ip_max_failures),
            ("stuffing_users", b.stuffing_users),
        ] {
            if v == 0 {
                errs.push(cfg.error(&bat.key(key), "must be at least 1"));
            }
        }
        if b.window.is_zero() {
            errs.push(cfg.error(&bat.key("window"), "must be greater than zero"));
        }
        let brute_force = BruteForcePolicy {
            enabled: b.enabled && login.is_some(),
            max_failures: b.max_failures.max(1),
            ip_max_failures: b.ip_max_failures.max(1),
            stuffing_users: b.stuffing_users.max(1),
            window_micros: micros(b.window),
            lock_micros: micros(b.lock_for),
            ban_ip: b.ban_ip,
        };

        let sat = at.key("session");
        let default_session = crate::config::AppSessionSection::default();
        let (s, sessions_on) = match &a.session {
            Some(s) => (s, true),
            None => (&default_session, false),
        };
        let cookie = match (s.mode, &s.cookie) {
            (_, Some(c)) => c.clone(),
            (Mode::Signed, None) => SIGNED_COOKIE.to_string(),
            (Mode::Upstream, None) if !sessions_on => String::from("session"),
            (Mode::Upstream, None) => {
                errs.push(cfg.error(
                    &sat.key("cookie"),
                    "name the application's session cookie (or use mode = \"signed\")",
                ));
                String::new()
            }
        };
        if sessions_on && !cookie.is_empty() && !is_cookie_name(&cookie) {
            errs.push(cfg.error(
                &sat.key("cookie"),
                format!("`{cookie}` is not a cookie name"),
            ));
        }
        if s.mode == Mode::Signed && !cookie.starts_with("__Host-") {
            errs.push(cfg.error(
                &sat.key("cookie"),
                "a signed session cookie must be a `__Host-` cookie",
            ));
        }
        if s.idle_timeout.is_zero() || s.absolute_timeout.is_zero() {
            errs.push(cfg.error(
                &sat,
                "idle_timeout and absolute_timeout must be greater than zero",
            ));
        }
        let login_page = match (&s.login_page, s.invalid) {
            (Some(p), _) if p.starts_with('/') => HeaderValue::from_str(p).ok(),
            (Some(_), _) => {
                errs.push(cfg.error(&sat.key("login_page"), "must be a path starting with `/`"));
                None
            }
            (None, InvalidAction::Redirect) => {
                errs.push(cfg.error(
                    &sat.key("login_page"),
                    "invalid = \"redirect\" needs a login_page",
                ));
                None
            }
            (None, _) => None,
        };
        for (j, p) in s.require_paths.iter().enumerate() {
            if !p.starts_with('/') {
                errs.push(cfg.error(&sat.key("require_paths").index(j), "must start with `/`"));
            }
        }
        let keys = match s.mode {
            Mode::Signed if sessions_on => {
                if s.keys.is_empty() {
                    errs.push(cfg.error(&sat.key("keys"), "signed mode needs at least one key"));
                }
                SigningKeys::compile(cfg, errs, &sat.key("keys"), &s.keys)
            }
            _ => SigningKeys::default(),
        };
        let user_header = header_name(cfg, errs, &sat.key("user_header"), &s.user_header);
        let clear_cookie = HeaderValue::from_str(&format!(
            "{cookie}=; Path=/; Max-Age=0; HttpOnly{}",
            if s.mode == Mode::Signed {
                "; Secure"
            } else {
                ""
            }
        ))
        .unwrap_or_else(|_| HeaderValue::from_static("invalid=; Max-Age=0"));
        let policy = AppPolicy {
            name: a.name.as_str().into(),
            mode: s.mode,
            cookie,
            clear_cookie,
            idle_micros: micros(s.idle_timeout),
            absolute_micros: micros(s.absolute_timeout),
            max_per_user: s.max_per_user,
            on_limit: s.on_limit,
            change_threshold: s.ip_change_threshold,
            user_agent_counts: s.user_agent_change_counts,
            revoke_suspicious: s.revoke_suspicious,
            unknown: s.unknown,
            invalid: s.invalid,
            login_page,
            require_paths: s.require_paths.clone(),
            keys,
            user_header,
            login,
            logout,
            brute_force,
            sessions_on,
        };
        out.push((Arc::new(policy), a.routes.clone()));
    }
    out
}

fn endpoint(
    cfg: &LoadedConfig,
    errs: &mut ConfigErrors,
    at: &KeyPath,
    method: &str,
    path: &str,
) -> Option<Endpoint> {
    let m = match Method::from_bytes(method.to_ascii_uppercase().as_bytes()) {
        Ok(m) => m,
        Err(_) => {
            errs.push(cfg.error(
                &at.key("method"),
                format!("`{method}` is not an HTTP method"),
            ));
            return None;
        }
    };
    if !path.starts_with('/') {
        errs.push(cfg.error(&at.key("path"), "must start with `/`"));
        return None;
    }
    Some(Endpoint {
        method: m,
        path: path.to_string(),
    })
}

fn header_name(
    cfg: &LoadedConfig,
    errs: &mut ConfigErrors,
    at: &KeyPath,
    name: &Option<String>,
) -> Option<HeaderName> {
    let name = name.as_ref()?;
    match HeaderName::from_bytes(name.as_bytes()) {
        Ok(h) => Some(h),
        Err(_) => {
            errs.push(cfg.error(at, format!("`{name}` is not a header name")));
            None
        }
    }
}

/// An RFC 6265 cookie name (a token).
fn is_cookie_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn micros(d: Duration) -> u64 {
    d.as_micros().min(u64::MAX as u128) as u64
}
