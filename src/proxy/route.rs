//! A compiled route: where matching requests go and the limits that apply to them.

use std::sync::Arc;

use crate::metrics::RouteMetrics;

use super::upstream::Pool;

pub struct Route {
    pub name: Arc<str>,
    pub host: Option<String>,
    pub path_prefix: String,
    pub pool: Arc<Pool>,
    pub max_body_bytes: u64,
    pub metrics: RouteMetrics,
}
