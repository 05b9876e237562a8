//! Phase 6 of the pipeline: the WAF.
//!
//! Reads the body when a rule looks at it (up to `waf.body_limit`, within
//! `waf.body_timeout`; beyond the limit `waf.over_limit` decides: refuse with 413, or
//! inspect the beginning and stream the whole), inspects the request, and then: a score at
//! the threshold on a `block` route answers 403 with the request id, counts a ban
//! violation and emits `waf_blocked`; on a `detect` route, or below the threshold with
//! matches, the request goes on and `waf_detected` is emitted. Events carry rule ids,
//! targets and bounded excerpts (cookie and credential values redacted), and are sampled
//! per client address and first rule (see [`crate::events::sampler`]).

use bytes::{Bytes, BytesMut};
use http::{header, Request, Response, StatusCode, Version};
use http_body::Body;
use http_body_util::BodyExt;

use super::report::SAMPLE_WAF;
use super::{request_event, Report, RequestCtx};
use crate::bans::Violation;
use crate::events::{AuditEvent, EventType};
use crate::metrics::Metrics;
use crate::proxy::body::ClientBody;
use crate::proxy::error::error_response;
use crate::proxy::route::Route;
use crate::proxy::ResponseBody;
use crate::rate_limit::ip_bits;
use crate::waf::coding::{decode, Coding, DecodeError};
use crate::waf::request::RequestParts;
use crate::waf::{Match, Mode, OverLimit, Verdict, Waf};

/// Phase 6. Returns the request to forward (its body possibly read), or the refusal.
pub async fn on_request(
    report: &Report<'_>,
    metrics: &Metrics,
    waf: &Waf,
    max_decompression_ratio: usize,
    route: &Route,
    ctx: &RequestCtx,
    req: Request<ClientBody>,
) -> Result<Request<ClientBody>, Response<ResponseBody>> {
    let policy = &route.waf;
    let (mut parts, body) = req.into_parts();
    // HTTP/2 carries the host in `:authority`: rules see it as the Host header (as
    // ModSecurity behind nginx does), so CRS does not take an h2 request for one without.
    if parts.version == http::Version::HTTP_2 && !parts.headers.contains_key(header::HOST) {
        if let Some(v) = parts
            .uri
            .authority()
            .and_then(|a| http::HeaderValue::from_str(a.as_str()).ok())
        {
            parts.headers.insert(header::HOST, v);
        }
    }
    let st = &waf.settings;

    // The body, when some rule reads it.
    let mut body = body;
    let mut inspected: Option<Bytes> = None;
    let mut truncated = false;
    if waf.reads_body() && may_have_body(&body) {
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if st.over_limit == OverLimit::Block && declared.is_some_and(|n| n > st.body_limit as u64) {
            return Err(too_large(report, metrics, ctx, &parts, waf));
        }
        match read_prefix(body, st.body_limit, st.body_timeout).await {
            Ok((b, seen, more)) => {
                if more && st.over_limit == OverLimit::Block {
                    return Err(too_large(report, metrics, ctx, &parts, waf));
                }
                truncated = more;
                inspected = Some(seen);
                body = b;
            }
            Err((status, msg)) => return Err(error_response(status, msg, &ctx.request_id)),
        }
        // A compressed body (phase 1 let it through only to be decoded): the rules read
        // what the application will, the upstream still gets the bytes as sent.
        if let (Ok(Some(coding)), Some(raw)) = (Coding::of(&parts.headers), &inspected) {
            match decode(
                coding,
                raw,
                !truncated,
                st.body_limit,
                max_decompression_ratio,
            ) {
                Ok(d) => {
                    if d.truncated && st.over_limit == OverLimit::Block {
                        return Err(too_large(report, metrics, ctx, &parts, waf));
                    }
                    truncated |= d.truncated;
                    inspected = Some(Bytes::from(d.bytes));
                }
                Err(e) => {
                    let (status, message) = match e {
                        DecodeError::Ratio => (
                            StatusCode::PAYLOAD_TOO_LARGE,
                            "request body decompresses too far",
                        ),
                        DecodeError::Corrupt => {
                            (StatusCode::BAD_REQUEST, "request body does not decode")
                        }
                    };
                    return Err(error_response(status, message, &ctx.request_id));
                }
            }
        }
    }

    // Raw targets are inspected as sent; the decoded path and exclusions use the canonical
    // target (what the upstream receives).
    let canonical = crate::waf::request::target_of(&parts.uri);
    let (target, canonical) = match &ctx.original_uri {
        Some(original) => (crate::waf::request::target_of(original), Some(canonical)),
        None => (canonical, None),
    };
    let verdict = waf.inspect(
        &RequestParts {
            canonical,
            client_ip: Some(ctx.client_ip),
            method: parts.method.as_str(),
            target,
            version: version_str(parts.version),
            headers: &parts.headers,
            body: inspected.as_deref(),
        },
        policy,
        truncated,
    );
    let req = Request::from_parts(parts, body);
    match record(report, metrics, ctx, &req, policy.mode, &verdict) {
        Some(refusal) => Err(refusal),
        None => Ok(req),
    }
}

/// Metrics and events for a verdict; the 403 when it blocks.
fn record<B>(
    report: &Report<'_>,
    metrics: &Metrics,
    ctx: &RequestCtx,
    req: &Request<B>,
    mode: Mode,
    v: &Verdict,
) -> Option<Response<ResponseBody>> {
    let m = metrics;
    let block = v.blocked && mode == Mode::Block;
    let result = match () {
        _ if v.passed_by.is_some() => "passed",
        _ if block => "blocked",
        _ if !v.matches.is_empty() => "detected",
        _ => "clean",
    };
    if result == "clean" {
        m.waf_inspections_clean.inc();
    } else {
        m.waf_inspections.with_label_values(&[result]).inc();
    }
    if v.matches.is_empty() {
        return None;
    }
    for x in &v.matches {
        m.waf_rule_matches
            .with_label_values(&[&x.rule.to_string()])
            .inc();
    }
    let first = v.matches[0].rule;
    let key = ip_bits(ctx.client_ip) ^ (u128::from(first) << 96);
    if let Some(n) = report.sample(SAMPLE_WAF, key) {
        let kind = if block {
            EventType::WafBlocked
        } else {
            EventType::WafDetected
        };
        let mut e = event(kind, ctx, req, v).detail("occurrences", n.to_string());
        if block
            && v.matches
                .iter()
                .any(|x| x.severity == crate::waf::rule::Severity::Critical)
        {
            e = e.escalated();
        }
        report.audit(e);
    }
    if !block {
        return None;
    }
    report.violation(ctx, Violation::WafBlocked, || {
        request_event(EventType::IpBanned, String::new(), ctx, req)
    });
    Some(error_response(
        StatusCode::FORBIDDEN,
        "forbidden by the web application firewall",
        &ctx.request_id,
    ))
}

/// `waf_blocked` / `waf_detected` with rule ids, targets and excerpts.
fn event<B>(kind: EventType, ctx: &RequestCtx, req: &Request<B>, v: &Verdict) -> AuditEvent {
    let top: &Match = v
        .matches
        .iter()
        .max_by_key(|m| (m.score, m.severity))
        .unwrap_or(&v.matches[0]);
    let mut e = request_event(
        kind,
        format!("WAF rule {}: {} (score {})", top.rule, top.msg, v.score),
        ctx,
        req,
    )
    .detail("score", v.score.to_string());
    let targets: Vec<String> = v
        .matches
        .iter()
        .map(|m| format!("{}:{}", m.rule, m.target))
        .collect();
    e = e.detail("targets", targets.join(" "));
    for m in v.matches.iter().take(8) {
        e = e.detail(
            &format!("match.{}", m.rule),
            format!("{} = {}", m.target, m.excerpt),
        );
    }
    e.rule_ids = v.rule_ids();
    e
}

/// 413 for a body beyond the inspection limit under `over_limit = "block"`.
fn too_large(
    report: &Report<'_>,
    metrics: &Metrics,
    ctx: &RequestCtx,
    parts: &http::request::Parts,
    waf: &Waf,
) -> Response<ResponseBody> {
    metrics
        .waf_inspections
        .with_label_values(&["too_large"])
        .inc();
    let key = ip_bits(ctx.client_ip) ^ (u128::from(crate::waf::builtin::BODY_OVER_LIMIT) << 96);
    if let Some(n) = report.sample(SAMPLE_WAF, key) {
        let req = Request::from_parts(parts.clone(), ());
        let mut e = request_event(
            EventType::WafBlocked,
            format!(
                "request body beyond the WAF inspection limit of {} bytes",
                waf.settings.body_limit
            ),
            ctx,
            &req,
        )
        .detail("occurrences", n.to_string());
        e.rule_ids
            .push(crate::waf::builtin::BODY_OVER_LIMIT.to_string());
        report.audit(e);
    }
    error_response(
        StatusCode::PAYLOAD_TOO_LARGE,
        "request body exceeds the inspection limit",
        &ctx.request_id,
    )
}

fn may_have_body(body: &ClientBody) -> bool {
    match body {
        ClientBody::Buffered(b) => !b.is_empty(),
        ClientBody::Streaming(b) => !(b.is_end_stream() || b.size_hint().exact() == Some(0)),
        ClientBody::Partial(..) => true,
    }
}

/// Reads up to `limit` bytes (one frame more at most). Returns the body to forward, the
/// bytes to inspect (at most `limit`), and whether the body is longer than `limit`.
async fn read_prefix(
    body: ClientBody,
    limit: usize,
    timeout: std::time::Duration,
) -> Result<(ClientBody, Bytes, bool), (StatusCode, &'static str)> {
    let mut inc = match body {
        ClientBody::Buffered(b) => {
            let more = b.len() > limit;
            let seen = b.slice(..b.len().min(limit));
            return Ok((ClientBody::Buffered(b), seen, more));
        }
        ClientBody::Partial(head, rest) => {
            let seen = head.slice(..head.len().min(limit));
            return Ok((ClientBody::Partial(head, rest), seen, true));
        }
        ClientBody::Streaming(inc) => inc,
    };
    let mut buf = BytesMut::new();
    let read = async {
        loop {
            match inc.frame().await {
                None => return Ok(false),
                Some(Err(_)) => {
                    return Err((StatusCode::BAD_REQUEST, "could not read request body"))
                }
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        buf.extend_from_slice(&data);
                        if buf.len() > limit {
                            return Ok(true);
                        }
                    }
                    // Trailers are not forwarded from a buffered body.
                }
            }
        }
    };
    let more = match tokio::time::timeout(timeout, read).await {
        Err(_) => return Err((StatusCode::REQUEST_TIMEOUT, "request body too slow")),
        Ok(r) => r?,
    };
    let all = buf.freeze();
    let seen = all.slice(..all.len().min(limit));
    if more {
        Ok((ClientBody::Partial(all, inc), seen, true))
    } else {
        Ok((ClientBody::Buffered(all), seen, false))
    }
}

fn version_str(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}
