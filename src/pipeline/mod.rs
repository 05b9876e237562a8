//! The request pipeline: every request passes these phases in this order, in this one
//! place ([`run_phases`]); each phase is a file of this module.
//!
//! 1. request checks ([`checks`]): framing, sizes, one Host, and the canonical request
//!    view — path and host rewritten to the one spelling every later phase, the events,
//!    the access log and the upstream read; ambiguous spellings refused (400/415);
//! 2. client IP (trusted-proxy aware) and the key it is counted under (its IPv6 prefix);
//! 3. bans, then IP rules ([`access`], 403);
//! 4. rate limits ([`rate_limit`], 429; a rejection counts towards a ban);
//! 5. session checks ([`session`]: login lock 429, invalid session 401 / redirect / strip);
//! 6. WAF ([`waf`]: body read when a rule needs it; 403 at the anomaly threshold, or
//!    report only);
//! 7. route and forward upstream ([`crate::proxy::forward`]);
//! 8. response phases ([`session`]): login outcome, sessions the application created,
//!    rotated or ended;
//! 9. metrics, latency trend, performance event and the access log ([`finish`]), reached
//!    exactly once on every exit path: metrics when the response head is ready, the rest
//!    when its body ends or is dropped.
//!
//! A phase is a synchronous check over an immutable structure compiled from config that
//! returns a verdict; only body reads and forwarding await. Phases report through one
//! [`Report`] (events, sampling, violations towards bans).

pub mod access;
pub mod checks;
pub mod finish;
pub mod rate_limit;
pub mod report;
pub mod session;
pub mod waf;

pub(crate) use report::{request_event, Report};

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{header, HeaderValue, Method, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;

use crate::app::Shared;
use crate::proxy::body::{ByteCount, ClientBody};
use crate::proxy::error::error_response;
use crate::proxy::forward::forward;
use crate::proxy::route::Route;
use crate::proxy::ResponseBody;
use crate::request_id;
use crate::runtime::Runtime;
use crate::server::ConnInfo;
use finish::{Finish, RequestFields};
use session::SessionCtx;

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
    pub original_uri: Option<Box<Uri>>,
    /// What the upstream receives, when decisions took a narrower view of the canonical
    /// target: without its path parameters, or lower-cased on a `case_insensitive` route.
    pub upstream_uri: Option<Box<Uri>>,
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
        upstream_uri: None,
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
    // `[tls] hsts` on every answer over TLS, the gateway's own ones included; an upstream's
    // own header is kept.
    if let (true, Some(v)) = (conn.tls, &rt.hsts) {
        resp.headers_mut()
            .entry(header::STRICT_TRANSPORT_SECURITY)
            .or_insert_with(|| v.clone());
    }

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
    mut req: Request<Incoming>,
) -> Response<ResponseBody> {
    // 1. Request checks (run in `handle`).
    let checked = match checked {
        Ok(c) => c,
        Err((status, message)) => return refused_by_checks(status, message, ctx),
    };
    ctx.original_uri = checked.original_uri;
    ctx.upstream_uri = checked.upstream_uri;
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
    let host = if route.as_ref().is_some_and(|r| r.case_insensitive) {
        let cased = checks::lower_case_path(&mut req);
        ctx.upstream_uri = ctx.upstream_uri.take().or(cased.map(Box::new));
        request_host(&req)
    } else {
        host
    };

    // 3. Bans, then IP rules.
    let report = Report::of(shared, rt);
    if let Some(refusal) = access::check(&report, ctx, &conn.listener, host, route.as_deref(), &req)
    {
        return refusal;
    }

    // 4. Rate limits.
    let policies = route
        .as_ref()
        .map_or(&rt.unmatched_limits, |r| &r.rate_limits);
    let shared_verdicts = match &shared.cluster {
        Some(c) if !policies.is_empty() => {
            rate_limit::shared_verdicts(c, policies, ctx, req.headers()).await
        }
        _ => Vec::new(),
    };
    if let Some(refusal) = rate_limit::check(&report, policies, ctx, &req, &shared_verdicts) {
        return refusal;
    }

    let Some(route) = route else {
        return error_response(StatusCode::NOT_FOUND, "no route", &ctx.request_id);
    };
    let mut req = req.map(ClientBody::Streaming);

    // 5. Sessions.
    if let Some(app) = &route.app {
        req = match session::on_request(shared, app, ctx, req).await {
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
        let ratio = rt.requests.max_decompression_ratio;
        req = match waf::on_request(&report, &shared.metrics, waf, ratio, &route, ctx, req).await {
            Ok(req) => req,
            Err(resp) => return resp,
        };
    }

    // 7. Forward.
    let mut resp = forward(ctx, conn, &route, req).await;

    // 8. Response phases.
    if let Some(sctx) = ctx.session.take() {
        session::on_response(shared, rt, &sctx, ctx, &mut resp).await;
    }
    resp
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
