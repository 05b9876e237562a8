//! The request pipeline: every request passes these phases in this order, in this one
//! place.
//!
//! 1. request checks (framing, Host, size limits) — protocol hygiene before anything else;
//! 2. client IP (trusted-proxy aware);
//! 3. bans, then IP rules (403);
//! 4. rate limits (429; each rejection counts towards a ban);
//! 5. session checks (login lock 429, invalid session 401 / redirect / strip);
//! 6. WAF (body read when a rule needs it; 403 at the anomaly threshold, or report only);
//! 7. route and forward upstream;
//! 8. response phases: login outcome, sessions the application created, rotated or ended;
//! 9. metrics, latency trend, performance event and the access log, reached exactly once on
//!    every exit path: metrics when the response head is ready, the rest when its body ends
//!    or is dropped.
//!
//! A phase is a synchronous check over an immutable structure compiled from config that
//! returns a verdict; only forwarding awaits.

pub mod checks;

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{header, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;

use crate::app::Shared;
use crate::bans::{until_text, Ban, Violation};
use crate::events::model::{bounded, bounded_str, now_micros, MAX_PATH_CHARS, MAX_TEXT_CHARS};
use crate::events::{AuditEvent, EventId, EventType, PerfEvent, Severity};
use crate::ip_rules::{Action, IpRuleSet, RequestView};
use crate::proxy::body::{ByteCount, ClientBody, Completion};
use crate::proxy::error::error_response;
use crate::proxy::forward::forward;
use crate::proxy::route::Route;
use crate::proxy::ResponseBody;
use crate::rate_limit::{ip_bits, Policy, Rejection};
use crate::request_id;
use crate::runtime::Runtime;
use crate::server::ConnInfo;
use crate::session::phase::SessionCtx;

/// What the phases learn about a request as it passes.
pub struct RequestCtx {
    pub request_id: HeaderValue,
    pub client_ip: IpAddr,
    /// What the client is counted under for rate limits, bans and brute force (its IPv6
    /// prefix; see [`crate::client_ip::client_key`]).
    pub client_key: IpAddr,
    /// The TCP peer is a trusted proxy (its forwarding headers are believed).
    pub peer_trusted: bool,
    pub is_head: bool,
    pub route: Option<Arc<Route>>,
    pub upstream: Option<Arc<str>>,
    pub upstream_duration: Option<Duration>,
    pub bytes_in: Option<Arc<ByteCount>>,
    /// Set by phase 5 for routes of a protected app; read by phase 8.
    pub session: Option<SessionCtx>,
    /// The target as the client sent it, when phase 1 rewrote it to its canonical form.
    pub original_uri: Option<Uri>,
}

/// Handles one request from start to response head.
pub async fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Response<ResponseBody> {
    let started = Instant::now();
    let rt = shared.runtime.load_full();

    // Phase 2 (client IP) runs first because everything after, including the request id
    // we trust, depends on whether the peer is a trusted proxy.
    let peer_trusted = !rt.trusted.is_empty() && rt.trusted.contains(conn.peer.ip());
    let request_id = match req.headers().get("x-request-id") {
        Some(v) if peer_trusted && request_id::acceptable(v) => v.clone(),
        _ => request_id::generate(),
    };
    let client_ip = rt.trusted.client_ip(conn.peer.ip(), req.headers());
    let mut ctx = RequestCtx {
        request_id,
        client_ip,
        client_key: crate::client_ip::client_key(client_ip, rt.requests.ipv6_prefix),
        peer_trusted,
        is_head: req.method() == Method::HEAD,
        route: None,
        upstream: None,
        upstream_duration: None,
        bytes_in: None,
        session: None,
        original_uri: None,
    };
    // Phase 1 (request checks) rewrites the request to its canonical form before anything
    // reads it, the access log included; a refusal is answered inside `run_phases`.
    let mut req = req;
    let checked = checks::check(&rt, conn.tls, peer_trusted, &mut req);
    // Created before any phase runs: if this future is dropped (client gone, HTTP/2 reset),
    // the guard's drop still releases the connection and logs the request, as 499.
    let mut finish = Finish::start(
        shared.clone(),
        conn.clone(),
        started,
        RequestFields {
            method: req.method().clone(),
            host: req.headers().get(header::HOST).cloned().or_else(|| {
                req.uri()
                    .authority()
                    .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            }),
            uri: req.uri().clone(),
            version: req.version(),
        },
        rt.access_log,
    );

    let mut resp = run_phases(&shared, &rt, &conn, &mut ctx, checked, req).await;

    let status = resp.status().as_u16();
    let elapsed = started.elapsed();
    match &ctx.route {
        Some(r) => r.metrics.observe(status, elapsed.as_secs_f64()),
        None => rt.unmatched.observe(status, elapsed.as_secs_f64()),
    }
    finish.status = status;
    finish.request_id = Some(ctx.request_id);
    finish.client_ip = Some(ctx.client_ip);
    finish.route = ctx.route;
    finish.upstream = ctx.upstream;
    finish.upstream_duration = ctx.upstream_duration;
    finish.bytes_in = ctx.bytes_in;
    resp.body_mut().set_completion(Box::new(finish));
    resp
}

async fn run_phases(
    shared: &Shared,
    rt: &Runtime,
    conn: &ConnInfo,
    ctx: &mut RequestCtx,
    checked: Result<checks::Checked, checks::Refusal>,
    req: Request<Incoming>,
) -> Response<ResponseBody> {
    // 1. Request checks (run in `handle`).
    let checked = match checked {
        Ok(c) => c,
        Err((status, message)) => return refused_by_checks(status, message, ctx),
    };
    ctx.original_uri = checked.original_uri;
    // 2. Client IP: resolved in `handle` (ctx.client_ip).
    // The route is looked up now (rules may be scoped to it) but answered only in phase 7,
    // so a refused client learns nothing about routing.
    let host = request_host(&req);
    let route = rt.router.route(host, req.uri().path()).cloned();
    ctx.route = route.clone();
    if let Some(e) = checked.kept_escape {
        if route
            .as_ref()
            .is_none_or(|r| r.path_escapes != crate::canonical::Escapes::Keep)
        {
            let (status, message) = checks::path_refusal(e);
            return refused_by_checks(status, message, ctx);
        }
    }

    // 3. Bans, then IP rules.
    if shared.bans.check(ctx.client_key).is_some() {
        return error_response(StatusCode::FORBIDDEN, "forbidden", &ctx.request_id);
    }
    let rules = shared.ip_rules.set.load();
    let decision = rules.decide(&RequestView {
        ip: ctx.client_ip,
        host,
        route: route.as_ref().map(|r| &*r.name),
        listener: &conn.listener,
        path: req.uri().path(),
    });
    if decision.action == Action::Deny {
        if let Some(n) = shared
            .sampler
            .sample(SAMPLE_IP_BLOCKED, ip_bits(ctx.client_ip))
        {
            let rule = decision.rule.map_or("(default)", |r| r.spec.id.as_str());
            let mut e = request_event(
                EventType::IpBlocked,
                format!("denied by IP rule `{rule}`"),
                ctx,
                &req,
            )
            .detail("occurrences", n.to_string());
            e.rule_ids.push(rule.to_string());
            shared.events.sink.audit(e);
        }
        return error_response(StatusCode::FORBIDDEN, "forbidden", &ctx.request_id);
    }

    // 4. Rate limits.
    let policies = route
        .as_ref()
        .map_or(&rt.unmatched_limits, |r| &r.rate_limits);
    for policy in policies {
        let key = policy.key(ctx.client_key, req.headers());
        if let Err(rejection) = policy.check(key) {
            rate_limited(shared, rt, &rules, ctx, &req, policy, &rejection);
            let mut resp = error_response(
                StatusCode::TOO_MANY_REQUESTS,
                "too many requests",
                &ctx.request_id,
            );
            for (name, value) in policy.headers(&rejection) {
                resp.headers_mut().insert(name, value);
            }
            return resp;
        }
    }
    drop(rules);

    let Some(route) = route else {
        return error_response(StatusCode::NOT_FOUND, "no route", &ctx.request_id);
    };
    let mut req = req.map(ClientBody::Streaming);

    // 5. Sessions.
    if let Some(app) = &route.app {
        req = match crate::session::phase::on_request(shared, app, ctx, req).await {
            Ok(req) => req,
            Err(resp) => return resp,
        };
    }

    // 6. WAF.
    if let Some(waf) = rt
        .waf
        .as_ref()
        .filter(|_| route.waf.mode != crate::waf::Mode::Off)
    {
        req = match crate::waf::phase::on_request(shared, rt, waf, &route, ctx, req).await {
            Ok(req) => req,
            Err(resp) => return resp,
        };
    }

    // 7. Forward.
    let mut resp = forward(ctx, conn, &route, req).await;

    // 8. Response phases.
    if let Some(sctx) = ctx.session.take() {
        crate::session::phase::on_response(shared, rt, &sctx, ctx, &mut resp);
    }
    resp
}

/// Sampling kinds (see [`crate::events::sampler`]).
const SAMPLE_IP_BLOCKED: u8 = 1;
const SAMPLE_RATE_LIMITED: u8 = 2;
pub(crate) const SAMPLE_SESSION_INVALID: u8 = 3;
pub(crate) const SAMPLE_LOGIN_LOCKED: u8 = 4;
pub(crate) const SAMPLE_WAF: u8 = 5;

/// An audit event about the request being handled.
pub(crate) fn request_event<B>(
    kind: EventType,
    message: String,
    ctx: &RequestCtx,
    req: &Request<B>,
) -> AuditEvent {
    let mut e = AuditEvent::new(kind, message)
        .ip(ctx.client_ip)
        .path(req.uri().path());
    e.route = ctx.route.as_ref().map(|r| r.name.to_string());
    e.host = Some(request_host(req).to_string());
    e.method = Some(req.method().to_string());
    e.request_id = ctx.request_id.to_str().ok().map(str::to_string);
    e
}

/// A 429: a sampled `rate_limited` event, and a violation towards a ban.
fn rate_limited<B>(
    shared: &Shared,
    rt: &Runtime,
    rules: &IpRuleSet,
    ctx: &RequestCtx,
    req: &Request<B>,
    policy: &Policy,
    rejection: &Rejection,
) {
    if let Some(n) = shared.sampler.sample(SAMPLE_RATE_LIMITED, rejection.key) {
        shared.events.sink.audit(
            request_event(
                EventType::RateLimited,
                format!("over rate-limit policy `{}`", policy.name),
                ctx,
                req,
            )
            .detail("policy", policy.name.to_string())
            .detail("retry_after", rejection.retry_after.to_string())
            .detail("occurrences", n.to_string()),
        );
    }
    // A client refused from the shared overflow bucket (the policy tracks `max_keys`
    // clients already, as in a flood of new addresses) did not empty it itself: banning it
    // would ban real clients during a flood.
    if rules.bypasses(ctx.client_ip) || rejection.shared_bucket {
        return;
    }
    if let Some(ban) = shared
        .bans
        .violation(&rt.bans, ctx.client_key, Violation::RateLimited)
    {
        banned(shared, ctx, req, ban);
    }
}

/// Records a new automatic ban: event, and the store (without waiting).
fn banned<B>(shared: &Shared, ctx: &RequestCtx, req: &Request<B>, ban: Ban) {
    let base = request_event(EventType::IpBanned, String::new(), ctx, req);
    record_ban(shared, base, ban);
}

/// Emits `base` (an `ip_banned` event about the request) for a new automatic ban and
/// stores the ban without waiting.
pub(crate) fn record_ban(shared: &Shared, mut base: AuditEvent, ban: Ban) {
    base.message = bounded(
        format!("banned {}: {}", until_text(&ban), ban.reason),
        MAX_TEXT_CHARS,
    );
    shared
        .events
        .sink
        .audit(base.detail("offenses", ban.offenses.to_string()));
    shared.events.write_detached(move |store| {
        if let Err(e) = crate::bans::save(store, &ban) {
            tracing::error!(error = %e, "storing a ban failed");
        }
    });
}

/// The host a request is for: `Host`, or the HTTP/2 `:authority`.
fn request_host<B>(req: &Request<B>) -> &str {
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .unwrap_or("")
}

/// A phase-1 refusal; a 400 also closes the connection (the client may be out of step).
fn refused_by_checks(
    status: StatusCode,
    message: &'static str,
    ctx: &RequestCtx,
) -> Response<ResponseBody> {
    let mut resp = error_response(status, message, &ctx.request_id);
    if status == StatusCode::BAD_REQUEST {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// What the access log and performance events say about the request (cheap clones of
/// what hyper parsed: no copy of the path).
struct RequestFields {
    method: Method,
    host: Option<HeaderValue>,
    uri: Uri,
    version: Version,
}

impl RequestFields {
    fn host(&self) -> &str {
        self.host
            .as_ref()
            .and_then(|h| h.to_str().ok())
            .unwrap_or("")
    }
}

/// Runs when the response body is finished or dropped, or when the request is abandoned
/// before a response: releases the in-flight mark on the connection, records the route's
/// latency trend and a performance event when slow, and writes the access log line,
/// exactly once.
struct Finish {
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    fields: RequestFields,
    access_log: bool,
    started: Instant,
    /// 499 until a response exists (the client went away first).
    status: u16,
    request_id: Option<HeaderValue>,
    client_ip: Option<IpAddr>,
    route: Option<Arc<Route>>,
    upstream: Option<Arc<str>>,
    upstream_duration: Option<Duration>,
    bytes_in: Option<Arc<ByteCount>>,
    done: bool,
}

impl Finish {
    fn start(
        shared: Arc<Shared>,
        conn: Arc<ConnInfo>,
        started: Instant,
        fields: RequestFields,
        access_log: bool,
    ) -> Finish {
        conn.in_flight.fetch_add(1, Ordering::Relaxed);
        conn.requests.fetch_add(1, Ordering::Relaxed);
        Finish {
            shared,
            conn,
            fields,
            access_log,
            started,
            status: 499,
            request_id: None,
            client_ip: None,
            route: None,
            upstream: None,
            upstream_duration: None,
            bytes_in: None,
            done: false,
        }
    }
}

impl Drop for Finish {
    fn drop(&mut self) {
        self.complete(0, true);
    }
}

impl Completion for Finish {
    fn complete(&mut self, bytes_out: u64, aborted: bool) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        self.conn.in_flight.fetch_sub(1, Ordering::Relaxed);
        let total = self.started.elapsed();
        if let Some(route) = &self.route {
            route.metrics.trend.record(total);
            if route.log_all || total > route.slow_threshold {
                self.record_performance(route, total);
            }
        }
        if !self.access_log {
            return;
        }
        let log = &self.fields;
        let total_ms = total.as_secs_f64() * 1000.0;
        let upstream_ms = self.upstream_duration.map(|d| d.as_secs_f64() * 1000.0);
        let path = log.uri.path();
        tracing::info!(
            target: "access",
            request_id = self.request_id.as_ref().and_then(|v| v.to_str().ok()).unwrap_or(""),
            client_ip = %self.client_ip.unwrap_or(self.conn.peer.ip()),
            listener = &*self.conn.listener,
            method = log.method.as_str(),
            host = log.host(),
            path = &path[..floor_char_boundary(path, 1024)],
            version = ?log.version,
            status = self.status,
            bytes_in = self.bytes_in.as_ref().map_or(0, |b| b.get()),
            bytes_out,
            route = self.route.as_ref().map_or("", |r| &*r.name),
            upstream = self.upstream.as_deref().unwrap_or(""),
            upstream_ms,
            total_ms,
            aborted,
        );
    }
}

impl Finish {
    /// A performance event for a slow request (or every request with `log_all`); a request
    /// over five times its threshold also raises a `performance_alert` audit event.
    fn record_performance(&self, route: &Route, total: Duration) {
        let severity = Severity::of(total, route.slow_threshold);
        let total_ms = total.as_secs_f64() * 1000.0;
        let upstream_ms = self.upstream_duration.map(|d| d.as_secs_f64() * 1000.0);
        let time = now_micros();
        let client_ip = self.client_ip.unwrap_or(self.conn.peer.ip());
        let request_id = self
            .request_id
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let path = bounded_str(self.fields.uri.path(), MAX_PATH_CHARS);
        let sink = &self.shared.events.sink;
        if severity == Severity::Critical {
            let mut alert = AuditEvent::new(
                EventType::PerformanceAlert,
                format!(
                    "request took {total_ms:.0} ms, over 5x the route's {} ms threshold",
                    route.slow_threshold.as_millis()
                ),
            )
            .ip(client_ip)
            .path(&path);
            alert.route = Some(route.name.to_string());
            alert.method = Some(self.fields.method.to_string());
            alert.host = Some(self.fields.host().to_string());
            alert.request_id = Some(request_id.clone());
            sink.audit(alert);
        }
        sink.perf(PerfEvent {
            id: EventId::new(time),
            time,
            route: route.name.to_string(),
            method: self.fields.method.to_string(),
            host: self.fields.host().to_string(),
            path,
            status: self.status,
            total_ms,
            upstream_ms,
            gateway_ms: (total_ms - upstream_ms.unwrap_or(0.0)).max(0.0),
            threshold_ms: route.slow_threshold.as_secs_f64() * 1000.0,
            severity,
            request_id,
            client_ip,
        });
    }
}

/// The largest index `<= max` on a char boundary of `s`.
fn floor_char_boundary(s: &str, max: usize) -> usize {
    if s.len() <= max {
        return s.len();
    }
    (0..=max)
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0)
}
