//! Phase 4: rate limits. Every policy of the route takes a token for the client's key; the
//! first empty window answers 429 with `Retry-After` and the IETF `RateLimit` headers, a
//! sampled `rate_limited` event, and a violation towards a ban — except for a refusal
//! from the shared overflow bucket, which the client did not empty itself.
//!
//! In a cluster the tokens come from the buckets shared in Redis ([`shared_verdicts`],
//! asked before [`check`]); a policy Redis could not decide in time is decided by this
//! instance's own buckets, or refused with a 503 under `rate_limits_when_down = "refuse"`.

use std::sync::Arc;

use http::{Request, Response, StatusCode};

use super::report::{request_event, Report, SAMPLE_RATE_LIMITED};
use super::RequestCtx;
use crate::bans::Violation;
use crate::cluster::limits::{Decision, SharedLimits};
use crate::cluster::Cluster;
use crate::events::EventType;
use crate::proxy::error::error_response;
use crate::proxy::ResponseBody;
use crate::rate_limit::{Policy, Rejection};

/// The shared buckets' verdicts for the route's policies, in order, up to the first
/// refusal; `None` for a policy Redis could not decide in time.
pub async fn shared_verdicts(
    cluster: &Cluster,
    policies: &[Arc<Policy>],
    ctx: &RequestCtx,
    headers: &http::HeaderMap,
) -> Vec<Option<Decision>> {
    let refuse = cluster.settings.refuse_when_down;
    if !cluster.is_up() {
        if refuse && !policies.is_empty() {
            return vec![Some(Decision::Unavailable)];
        }
        // Redis is down: every policy is decided here, without allocating.
        cluster.fell_back(policies.len());
        return Vec::new();
    }
    let mut out = Vec::with_capacity(policies.len());
    for p in policies {
        let id = SharedLimits::key(p, ctx.client_key, headers);
        let d = match cluster.limits.check(cluster, p, &id).await {
            None if refuse => Some(Decision::Unavailable),
            None => {
                cluster.fell_back(1);
                None
            }
            d => d,
        };
        let refused = matches!(d, Some(Decision::Deny { .. } | Decision::Unavailable));
        out.push(d);
        if refused {
            break;
        }
    }
    out
}

/// The 429, when a policy refuses the request. `shared`: the cluster's verdicts (see
/// [`shared_verdicts`]); a policy without one is checked against this instance's buckets.
pub fn check<B>(
    report: &Report<'_>,
    policies: &[Arc<Policy>],
    ctx: &RequestCtx,
    req: &Request<B>,
    shared: &[Option<Decision>],
) -> Option<Response<ResponseBody>> {
    for (i, policy) in policies.iter().enumerate() {
        let key = policy.key(ctx.client_key, req.headers());
        let verdict = match shared.get(i).copied().flatten() {
            Some(Decision::Allow) => Ok(()),
            Some(Decision::Deny {
                retry_after,
                window,
            }) => Err(Rejection::new(retry_after, key, window)),
            Some(Decision::Unavailable) => {
                // Fail closed: the shared count cannot be read, and the operator chose not
                // to count locally. Not the client's doing: no event per request, no ban.
                let mut resp = error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "rate limit unavailable",
                    &ctx.request_id,
                );
                resp.headers_mut().insert(
                    http::header::RETRY_AFTER,
                    http::HeaderValue::from_static("1"),
                );
                return Some(resp);
            }
            None => policy.check(key),
        };
        let Err(rejection) = verdict else {
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
