//! Phase 3: bans, then IP rules. A banned client or a denied address gets 403 before any
//! other phase looks at the request; a denial is a sampled `ip_blocked` event.

use http::{Request, StatusCode};

use super::report::{request_event, Report, SAMPLE_IP_BLOCKED};
use super::RequestCtx;
use crate::events::EventType;
use crate::ip_rules::{Action, RequestView};
use crate::proxy::error::error_response;
use crate::proxy::route::Route;
use crate::proxy::ResponseBody;
use crate::rate_limit::ip_bits;

/// The refusal, when the client is banned or an IP rule denies the request.
pub fn check<B>(
    report: &Report<'_>,
    ctx: &RequestCtx,
    listener: &str,
    host: &str,
    route: Option<&Route>,
    req: &Request<B>,
) -> Option<http::Response<ResponseBody>> {
    if report.bans.check(ctx.client_key).is_some() {
        return Some(error_response(
            StatusCode::FORBIDDEN,
            "forbidden",
            &ctx.request_id,
        ));
    }
    let rules = report.ip_rules.set.load();
    let decision = rules.decide(&RequestView {
        ip: ctx.client_ip,
        host,
        route: route.map(|r| &*r.name),
        listener,
        path: req.uri().path(),
    });
    if decision.action != Action::Deny {
        return None;
    }
    if let Some(n) = report.sample(SAMPLE_IP_BLOCKED, ip_bits(ctx.client_ip)) {
        let rule = decision.rule.map_or("(default)", |r| r.spec.id.as_str());
        let mut e = request_event(
            EventType::IpBlocked,
            format!("denied by IP rule `{rule}`"),
            ctx,
            req,
        )
        .detail("occurrences", n.to_string());
        e.rule_ids.push(rule.to_string());
        report.audit(e);
    }
    Some(error_response(
        StatusCode::FORBIDDEN,
        "forbidden",
        &ctx.request_id,
    ))
}
