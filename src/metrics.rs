//! Prometheus metrics, all named `gateway_*` with unit suffixes and bounded labels
//! (route, listener, upstream pool and status class; never IPs or raw paths).
//!
//! Per-route children are resolved once when a config is compiled, so the request path
//! increments a counter through a pointer instead of hashing label values.

use std::sync::Arc;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::events::trends::{RouteHistogram, Trends};

pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub upstream_duration: HistogramVec,
    pub upstream_errors: IntCounterVec,
    pub connections_active: IntGaugeVec,
    pub connections_total: IntCounterVec,
    pub connections_rejected: IntCounterVec,
    pub connections_rejected_per_address: IntCounterVec,
    pub tls_handshake_failures: IntCounterVec,
    pub config_reloads: IntCounterVec,
    pub config_generation: IntGauge,
    pub upstream_healthy: IntGaugeVec,
    pub events_emitted: IntCounterVec,
    pub events_dropped: IntCounterVec,
    pub events_committed: IntCounter,
    pub events_commit_duration: Histogram,
    pub events_queue_depth: IntGauge,
    pub events_write_errors: IntCounter,
    pub ip_rule_requests: IntCounterVec,
    pub rate_limited: IntCounterVec,
    pub rate_limit_keys: IntGauge,
    pub bans_active: IntGauge,
    pub sessions_active: IntGauge,
    pub sessions_suspicious: IntGauge,
    pub sessions_created: IntCounter,
    pub sessions_untracked: IntCounter,
    pub session_rejections: IntCounterVec,
    pub logins: IntCounterVec,
    /// WAF inspections by result: `blocked`, `detected`, `clean`, `passed`, `too_large`.
    pub waf_inspections: IntCounterVec,
    /// `waf_inspections{result="clean"}`, resolved once: most requests end there.
    pub waf_inspections_clean: IntCounter,
    /// WAF rule matches by rule id (rules that matched at least once).
    pub waf_rule_matches: IntCounterVec,
    pub brute_force_detections: IntCounterVec,
    pub login_locks_active: IntGauge,
    /// `[cluster]`: 1 while Redis answers.
    pub cluster_up: IntGauge,
    pub cluster_errors: IntCounter,
    pub cluster_fallbacks: IntCounter,
    pub cluster_changes_applied: IntCounter,
    /// The last posture check's score by framework (`overall`, `pci_dss_v4`, …).
    pub posture_score: IntGaugeVec,
    /// Backups and archive runs: last success and failures, for staleness alerts.
    pub tasks: TaskMetrics,
    /// Rate-limit buckets, kept across reloads.
    pub rate_limiters: crate::rate_limit::Registry,
    /// Per-route latency trends (not Prometheus metrics; shown by `/api/v1/perf/trends`).
    pub trends: Arc<Trends>,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "gateway_requests_total",
                "Requests answered, by route and status class.",
            ),
            &["route", "status"],
        )
        .expect("metric");
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "gateway_request_duration_seconds",
                "Time from request head to response head, by route.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route"],
        )
        .expect("metric");
        let upstream_duration = HistogramVec::new(
            HistogramOpts::new(
                "gateway_upstream_response_duration_seconds",
                "Time waiting for the upstream response head, by pool.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["upstream"],
        )
        .expect("metric");
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                "gateway_upstream_errors_total",
                "Upstream failures by pool and kind (connect, timeout, protocol).",
            ),
            &["upstream", "kind"],
        )
        .expect("metric");
        let connections_active = IntGaugeVec::new(
            Opts::new(
                "gateway_connections_active",
                "Open client connections by listener.",
            ),
            &["listener"],
        )
        .expect("metric");
        let connections_total = IntCounterVec::new(
            Opts::new(
                "gateway_connections_total",
                "Accepted client connections by listener.",
            ),
            &["listener"],
        )
        .expect("metric");
        let connections_rejected = IntCounterVec::new(
            Opts::new(
                "gateway_connections_rejected_total",
                "Connections closed at accept because the listener was at its limit.",
            ),
            &["listener"],
        )
        .expect("metric");
        let connections_rejected_per_address = IntCounterVec::new(
            Opts::new(
                "gateway_connections_rejected_per_address_total",
                "Connections closed because their client address held max_connections_per_ip.",
            ),
            &["listener"],
        )
        .expect("metric");
        let tls_handshake_failures = IntCounterVec::new(
            Opts::new(
                "gateway_tls_handshake_failures_total",
                "TLS handshakes that failed or timed out, by listener.",
            ),
            &["listener"],
        )
        .expect("metric");
        let config_reloads = IntCounterVec::new(
            Opts::new("gateway_config_reloads_total", "Config reloads by result."),
            &["result"],
        )
        .expect("metric");
        let config_generation = IntGauge::new(
            "gateway_config_generation",
            "Generation number of the config in use (1 at start).",
        )
        .expect("metric");
        let upstream_healthy = IntGaugeVec::new(
            Opts::new(
                "gateway_upstream_healthy_servers",
                "Servers currently in rotation, by pool.",
            ),
            &["upstream"],
        )
        .expect("metric");
        let events_emitted = IntCounterVec::new(
            Opts::new(
                "gateway_events_emitted_total",
                "Events handed to the event queue, by class (audit, performance).",
            ),
            &["class"],
        )
        .expect("metric");
        let posture_score = IntGaugeVec::new(
            Opts::new(
                "gateway_posture_score",
                "The last posture check's score (0-100) by framework; `overall` for all checks.",
            ),
            &["framework"],
        )
        .expect("metric");
        let events_dropped = IntCounterVec::new(
            Opts::new(
                "gateway_events_dropped_total",
                "Events not stored (queue full, or the store failing), by risk; performance records count as low.",
            ),
            &["risk"],
        )
        .expect("metric");
        let events_committed = IntCounter::new(
            "gateway_events_committed_total",
            "Events whose write transaction committed.",
        )
        .expect("metric");
        let events_commit_duration = Histogram::with_opts(
            HistogramOpts::new(
                "gateway_events_commit_duration_seconds",
                "Time to write and commit one batch of events.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )
        .expect("metric");
        let events_queue_depth = IntGauge::new(
            "gateway_events_queue_depth",
            "Events and commands waiting for the writer.",
        )
        .expect("metric");
        let events_write_errors = IntCounter::new(
            "gateway_events_write_errors_total",
            "Failed attempts to commit a batch of events.",
        )
        .expect("metric");
        let ip_rule_requests = IntCounterVec::new(
            Opts::new(
                "gateway_ip_rule_requests_total",
                "Requests decided by each IP rule (by rule id; `(default)` for the default policy) and its action.",
            ),
            &["rule", "action"],
        )
        .expect("metric");
        let rate_limited = IntCounterVec::new(
            Opts::new(
                "gateway_rate_limited_total",
                "Requests refused with 429, by rate-limit policy.",
            ),
            &["policy"],
        )
        .expect("metric");
        let rate_limit_keys = IntGauge::new(
            "gateway_rate_limit_keys",
            "Keys tracked by all rate-limit windows after the last sweep.",
        )
        .expect("metric");
        let bans_active =
            IntGauge::new("gateway_bans_active", "Addresses banned right now.").expect("metric");
        let sessions_active = IntGauge::new(
            "gateway_sessions_active",
            "Active sessions of protected apps (at the last housekeeping pass).",
        )
        .expect("metric");
        let sessions_suspicious = IntGauge::new(
            "gateway_sessions_suspicious",
            "Active sessions marked suspicious (at the last housekeeping pass).",
        )
        .expect("metric");
        let sessions_created =
            IntCounter::new("gateway_sessions_created_total", "Sessions registered.")
                .expect("metric");
        let sessions_untracked = IntCounter::new(
            "gateway_sessions_untracked_total",
            "New sessions not tracked because the table was full (sessions.max_sessions).",
        )
        .expect("metric");
        let session_rejections = IntCounterVec::new(
            Opts::new(
                "gateway_session_rejections_total",
                "Requests whose session was not valid, by reason.",
            ),
            &["reason"],
        )
        .expect("metric");
        let logins = IntCounterVec::new(
            Opts::new(
                "gateway_logins_total",
                "Login attempts by outcome (succeeded, failed, locked, limited, unknown).",
            ),
            &["outcome"],
        )
        .expect("metric");
        let waf_inspections = IntCounterVec::new(
            Opts::new(
                "gateway_waf_inspections_total",
                "Requests the WAF inspected, by result (blocked, detected, clean, passed, too_large).",
            ),
            &["result"],
        )
        .expect("metric");
        let waf_rule_matches = IntCounterVec::new(
            Opts::new(
                "gateway_waf_rule_matches_total",
                "WAF rule matches by rule id.",
            ),
            &["rule"],
        )
        .expect("metric");
        let brute_force_detections = IntCounterVec::new(
            Opts::new(
                "gateway_brute_force_detections_total",
                "Brute-force detections by kind (user, address, credential_stuffing).",
            ),
            &["kind"],
        )
        .expect("metric");
        let login_locks_active = IntGauge::new(
            "gateway_login_locks_active",
            "User names locked after repeated failed logins.",
        )
        .expect("metric");
        let cluster_up = IntGauge::new(
            "gateway_cluster_up",
            "1 while the cluster's Redis answers (0 also without [cluster]).",
        )
        .expect("metric");
        let cluster_errors = IntCounter::new(
            "gateway_cluster_errors_total",
            "Redis calls that failed or timed out.",
        )
        .expect("metric");
        let cluster_fallbacks = IntCounter::new(
            "gateway_cluster_fallbacks_total",
            "Rate-limit decisions taken on local state because Redis could not be asked in time.",
        )
        .expect("metric");
        let cluster_changes_applied = IntCounter::new(
            "gateway_cluster_changes_applied_total",
            "Bans, locks and revocations received from other instances and applied.",
        )
        .expect("metric");
        for c in [
            Box::new(cluster_up.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(cluster_errors.clone()),
            Box::new(cluster_fallbacks.clone()),
            Box::new(cluster_changes_applied.clone()),
            Box::new(requests.clone()),
            Box::new(request_duration.clone()),
            Box::new(upstream_duration.clone()),
            Box::new(upstream_errors.clone()),
            Box::new(connections_active.clone()),
            Box::new(connections_total.clone()),
            Box::new(connections_rejected.clone()),
            Box::new(connections_rejected_per_address.clone()),
            Box::new(tls_handshake_failures.clone()),
            Box::new(config_reloads.clone()),
            Box::new(config_generation.clone()),
            Box::new(upstream_healthy.clone()),
            Box::new(events_emitted.clone()),
            Box::new(events_dropped.clone()),
            Box::new(posture_score.clone()),
            Box::new(events_committed.clone()),
            Box::new(events_commit_duration.clone()),
            Box::new(events_queue_depth.clone()),
            Box::new(events_write_errors.clone()),
            Box::new(ip_rule_requests.clone()),
            Box::new(rate_limited.clone()),
            Box::new(rate_limit_keys.clone()),
            Box::new(bans_active.clone()),
            Box::new(sessions_active.clone()),
            Box::new(sessions_suspicious.clone()),
            Box::new(sessions_created.clone()),
            Box::new(sessions_untracked.clone()),
            Box::new(session_rejections.clone()),
            Box::new(logins.clone()),
            Box::new(waf_inspections.clone()),
            Box::new(waf_rule_matches.clone()),
            Box::new(brute_force_detections.clone()),
            Box::new(login_locks_active.clone()),
        ] {
            registry.register(c).expect("unique metric names");
        }
        let tasks = TaskMetrics::new(&registry);
        Metrics {
            registry,
            tasks,
            requests,
            request_duration,
            upstream_duration,
            upstream_errors,
            connections_active,
            connections_total,
            connections_rejected,
            connections_rejected_per_address,
            tls_handshake_failures,
            config_reloads,
            config_generation,
            upstream_healthy,
            events_emitted,
            events_dropped,
            posture_score,
            events_committed,
            events_commit_duration,
            events_queue_depth,
            events_write_errors,
            trends: Arc::new(Trends::default()),
            ip_rule_requests,
            rate_limited,
            rate_limit_keys,
            bans_active,
            sessions_active,
            sessions_suspicious,
            sessions_created,
            sessions_untracked,
            session_rejections,
            logins,
            waf_inspections_clean: waf_inspections.with_label_values(&["clean"]),
            waf_inspections,
            waf_rule_matches,
            brute_force_detections,
            login_locks_active,
            cluster_up,
            cluster_errors,
            cluster_fallbacks,
            cluster_changes_applied,
            rate_limiters: crate::rate_limit::Registry::default(),
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }

    /// Counters and histogram for one route, resolved once at compile time.
    pub fn route_metrics(&self, route: &str) -> RouteMetrics {
        let status = |class: &str| self.requests.with_label_values(&[route, class]);
        RouteMetrics {
            by_class: [
                status("1xx"),
                status("2xx"),
                status("3xx"),
                status("4xx"),
                status("5xx"),
            ],
            duration: self.request_duration.with_label_values(&[route]),
            trend: self.trends.route(route),
        }
    }

    /// Counters for one upstream pool.
    pub fn pool_metrics(&self, pool: &str) -> PoolMetrics {
        PoolMetrics {
            duration: self.upstream_duration.with_label_values(&[pool]),
            connect_errors: self.upstream_errors.with_label_values(&[pool, "connect"]),
            timeouts: self.upstream_errors.with_label_values(&[pool, "timeout"]),
            protocol_errors: self.upstream_errors.with_label_values(&[pool, "protocol"]),
            healthy: self.upstream_healthy.with_label_values(&[pool]),
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[derive(Clone)]
pub struct RouteMetrics {
    by_class: [IntCounter; 5],
    pub duration: Histogram,
    /// Total request durations for the latency trends.
    pub trend: Arc<RouteHistogram>,
}

impl RouteMetrics {
    pub fn observe(&self, status: u16, seconds: f64) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.by_class[class].inc();
        self.duration.observe(seconds);
    }
}

#[derive(Clone)]
pub struct PoolMetrics {
    pub duration: Histogram,
    pub connect_errors: IntCounter,
    pub timeouts: IntCounter,
    pub protocol_errors: IntCounter,
    pub healthy: IntGauge,
}

/// Background tasks that keep data safe (`backup`, `archive`): when each last succeeded,
/// how long it took, what it wrote, and how often it failed. An alert on
/// `time() - gateway_task_last_success_timestamp_seconds{task="backup"}` catches a
/// backup that stopped running.
#[derive(Clone)]
pub struct TaskMetrics {
    last_success: prometheus::GaugeVec,
    last_duration: prometheus::GaugeVec,
    last_bytes: prometheus::GaugeVec,
    last_records: prometheus::GaugeVec,
    failures: IntCounterVec,
}

/// The tasks [`TaskMetrics`] knows.
#[derive(Debug, Clone, Copy)]
pub enum Task {
    Backup,
    Archive,
}

impl Task {
    fn label(self) -> &'static str {
        match self {
            Task::Backup => "backup",
            Task::Archive => "archive",
        }
    }
}

impl TaskMetrics {
    fn new(registry: &Registry) -> TaskMetrics {
        let gauge = |name: &str, help: &str| {
            let g = prometheus::GaugeVec::new(Opts::new(name, help), &["task"]).expect("metric");
            registry.register(Box::new(g.clone())).expect("register");
            g
        };
        let failures = IntCounterVec::new(
            Opts::new(
                "gateway_task_failures_total",
                "Backup and archive runs that failed, by task.",
            ),
            &["task"],
        )
        .expect("metric");
        registry
            .register(Box::new(failures.clone()))
            .expect("register");
        TaskMetrics {
            last_success: gauge(
                "gateway_task_last_success_timestamp_seconds",
                "When the task last succeeded (Unix seconds; absent: never since start).",
            ),
            last_duration: gauge(
                "gateway_task_last_duration_seconds",
                "How long the last successful run took.",
            ),
            last_bytes: gauge(
                "gateway_task_last_bytes",
                "Bytes the last successful run wrote.",
            ),
            last_records: gauge(
                "gateway_task_last_records",
                "Records the last successful run wrote.",
            ),
            failures,
        }
    }

    pub fn succeeded(&self, task: Task, seconds: f64, bytes: u64, records: u64) {
        let l = [task.label()];
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.last_success.with_label_values(&l).set(now);
        self.last_duration.with_label_values(&l).set(seconds);
        self.last_bytes.with_label_values(&l).set(bytes as f64);
        self.last_records.with_label_values(&l).set(records as f64);
    }

    pub fn failed(&self, task: Task) {
        self.failures.with_label_values(&[task.label()]).inc();
    }
}
