//! Phase 9: what is reached exactly once for every request, on every exit path — the
//! in-flight mark on the connection released, the route's latency trend, a performance
//! event when slow, and the access log line — when the response body ends or is dropped,
//! or when the request is abandoned before a response (logged as 499).

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderValue, Method, Uri, Version};

use crate::app::Shared;
use crate::events::model::{bounded_str, now_micros, MAX_PATH_CHARS};
use crate::events::{AuditEvent, EventId, EventType, PerfEvent, Severity};
use crate::proxy::body::{ByteCount, Completion};
use crate::proxy::route::Route;
use crate::server::ConnInfo;

/// What the access log and performance events say about the request (cheap clones of
/// what hyper parsed: no copy of the path).
pub(super) struct RequestFields {
    pub method: Method,
    pub host: Option<HeaderValue>,
    pub uri: Uri,
    pub version: Version,
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
pub(super) struct Finish {
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    fields: RequestFields,
    access_log: bool,
    started: Instant,
    /// 499 until a response exists (the client went away first).
    pub status: u16,
    pub request_id: Option<HeaderValue>,
    pub client_ip: Option<IpAddr>,
    pub route: Option<Arc<Route>>,
    pub upstream: Option<Arc<str>>,
    pub upstream_duration: Option<Duration>,
    pub bytes_in: Option<Arc<ByteCount>>,
    done: bool,
}

impl Finish {
    pub fn start(
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
