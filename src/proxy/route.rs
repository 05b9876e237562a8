//! A compiled route: where matching requests go and the limits that apply to them.

use std::sync::Arc;
use std::time::Duration;

use crate::metrics::RouteMetrics;

use super::upstream::Pool;

pub struct Route {
    pub name: Arc<str>,
    pub host: Option<String>,
    pub path_prefix: String,
    pub pool: Arc<Pool>,
    pub max_body_bytes: u64,
    pub metrics: RouteMetrics,
    /// Requests slower than this (head in to end of response) become performance events.
    pub slow_threshold: Duration,
    /// Record every request as a performance event.
    pub log_all: bool,
    /// Rate-limit policies applied to this route, in order.
    pub rate_limits: Vec<Arc<crate::rate_limit::Policy>>,
    /// The protected application this route belongs to (sessions, logins).
    pub app: Option<Arc<crate::session::AppPolicy>>,
    /// WAF mode and exclusions on this route.
    pub waf: crate::waf::RoutePolicy,
    /// Whether escapes servers disagree on (`%2F`, `%5C`…) may stay encoded in the path.
    pub path_escapes: crate::canonical::Escapes,
    /// The target the upstream receives.
    pub forward_target: crate::pipeline::checks::ForwardTarget,
    /// Paths match without regard to ASCII case (`path_prefix` is stored lower-cased).
    pub case_insensitive: bool,
}
