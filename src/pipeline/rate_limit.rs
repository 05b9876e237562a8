//! Phase 4: rate limits. Every policy of the route takes a token for the client's key; the
//! first empty window answers 429 with `Retry-After` and the IETF `RateLimit` headers, a
//! sampled `rate_limited` event, and a violation towards a ban — except for a refusal
//! from the shared overflow bucket, which the client did not empty itself.

use std::sync::Arc;

use http::{Request, Response, StatusCode};

use super::report::{request_event, Report, SAMPLE_RATE_LIMITED};
use super::RequestCtx;
use crate::bans::Violation;
use crate::events::EventType;
use crate::proxy::error::error_response;
use crate::proxy::ResponseBody;
use crate::rate_limit::Policy;

/// The 429, when a policy refuses the request.
pub fn check<B>(
    report: &Report<'_>,
    policies: &[Arc<Policy>],
    ctx: &RequestCtx,
    req: &Request<B>,
) -> Option<Response<ResponseBody>> {
    for policy in policies {
        let key = policy.key(ctx.client_key, req.headers());
        let Err(rejection) = policy.check(key) else {
            continue;
        };
        if let Some(n) = report.sample(SAMPLE_RATE_LIMITED, rejection.key) {
            report.audit(
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
        // clients already, as in a flood of new addresses) did not empty it itself:
        // banning it would ban real clients during a flood.
        if !rejection.shared_bucket {
            report.violation(ctx, Violation::RateLimited, || {
                request_event(EventType::IpBanned, String::new(), ctx, req)
            });
        }
        let mut resp = error_response(
            StatusCode::TOO_MANY_REQUESTS,
            "too many requests",
            &ctx.request_id,
        );
        for (name, value) in policy.headers(&rejection) {
            resp.headers_mut().insert(name, value);
        }
        return Some(resp);
    }
    None
}
