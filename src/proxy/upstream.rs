//! Upstream pools: servers, balancing, passive ejection and active health checks.
//!
//! A server is in rotation when its last active health checks passed (or none are
//! configured) and it is not ejected. Ejection is passive: `max_fails` connect failures in a
//! row take it out for `eject_for`. Selection is lock-free: round robin is one atomic
//! increment; least-connections reads each server's in-flight counter.
//!
//! Each pool owns one hyper-util client whose connection pool is shared by every worker
//! thread, so a keep-alive upstream connection opened by one thread serves them all.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use http::uri::{Authority, Scheme};
use http::{Request, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::{Balance, HealthCheckSection, UpstreamSection};
use crate::metrics::PoolMetrics;

use super::body::RequestBody;

pub type UpstreamClient = Client<HttpConnector<crate::network::EgressResolver>, RequestBody>;

/// Where a server is.
#[derive(Debug, Clone)]
pub enum Target {
    Http {
        scheme: Scheme,
        authority: Authority,
    },
    /// The built-in demo upstream, answered in process.
    BuiltinEcho,
}

impl Target {
    /// Parses `http://host:port` or `builtin:echo`.
    pub fn parse(s: &str) -> Result<Target, String> {
        if s == "builtin:echo" {
            return Ok(Target::BuiltinEcho);
        }
        let uri: Uri = s
            .parse()
            .map_err(|e| format!("`{s}` is not a valid server address: {e}"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(format!(
                    "`{s}`: TLS to upstreams is not supported yet; use http://"
                ))
            }
            _ => return Err(format!("`{s}` must be http://host:port or builtin:echo")),
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("`{s}` has no host"))?;
        if uri.path() != "/" && !uri.path().is_empty() {
            return Err(format!("`{s}`: a server address takes no path"));
        }
        Ok(Target::Http {
            scheme: Scheme::HTTP,
            authority,
        })
    }
}

fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

pub struct Server {
    pub target: Target,
    pub label: Arc<str>,
    active: AtomicUsize,
    consecutive_fails: AtomicU32,
    ejected_until_ms: AtomicU64,
    health_ok: AtomicBool,
    health_streak: AtomicU32,
}

impl Server {
    fn new(label: &str, target: Target) -> Server {
        Server {
            target,
            label: label.into(),
            active: AtomicUsize::new(0),
            consecutive_fails: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            health_ok: AtomicBool::new(true),
            health_streak: AtomicU32::new(0),
        }
    }

    pub fn available(&self) -> bool {
        self.health_ok.load(Ordering::Relaxed)
            && self.ejected_until_ms.load(Ordering::Relaxed) <= now_ms()
    }

    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    pub fn is_healthy(&self) -> bool {
        self.health_ok.load(Ordering::Relaxed)
    }
}

/// Holds one in-flight slot on a server; released on drop.
pub struct ActiveGuard(Arc<Server>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

pub struct Pool {
    pub name: Arc<str>,
    pub servers: Vec<Arc<Server>>,
    pub balance: Balance,
    rr: AtomicUsize,
    pub client: UpstreamClient,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub retries: usize,
    pub max_fails: u32,
    pub eject_for: Duration,
    pub preserve_host: bool,
    pub health_check: Option<HealthCheckSection>,
    pub metrics: PoolMetrics,
}

impl Pool {
    /// Builds a pool from a validated config section.
    /// `egress`: the networks its connections (and health checks) may reach; host names
    /// are checked on their DNS answers.
    pub fn new(
        cfg: &UpstreamSection,
        targets: Vec<Target>,
        metrics: PoolMetrics,
        egress: &crate::network::Egress,
    ) -> Pool {
        let mut connector = HttpConnector::new_with_resolver(egress.resolver());
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(cfg.connect_timeout));
        connector.set_keepalive(Some(Duration::from_secs(60)));
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(cfg.pool_max_idle)
            .set_host(false)
            .build(connector);
        let servers: Vec<Arc<Server>> = cfg
            .servers
            .iter()
            .zip(targets)
            .map(|(label, t)| Arc::new(Server::new(label, t)))
            .collect();
        metrics.healthy.set(servers.len() as i64);
        Pool {
            name: cfg.name.as_str().into(),
            servers,
            balance: cfg.balance,
            rr: AtomicUsize::new(0),
            client,
            connect_timeout: cfg.connect_timeout,
            response_timeout: cfg.response_timeout,
            retries: cfg.retries,
            max_fails: cfg.max_fails,
            eject_for: cfg.eject_for,
            preserve_host: cfg.preserve_host,
            health_check: cfg.health_check.clone(),
            metrics,
        }
    }

    /// Picks a server in rotation, skipping those whose bit is set in `tried`.
    pub fn pick(&self, tried: u64) -> Option<(usize, &Arc<Server>)> {
        let n = self.servers.len();
        if n == 0 {
            return None;
        }
        let start = if n == 1 {
            0
        } else {
            self.rr.fetch_add(1, Ordering::Relaxed) % n
        };
        let candidates = (0..n)
            .map(|i| (start + i) % n)
            .filter(|&i| i >= 64 || tried & (1 << i) == 0)
            .filter(|&i| self.servers[i].available());
        match self.balance {
            Balance::RoundRobin => candidates.map(|i| (i, &self.servers[i])).next(),
            Balance::LeastConnections => candidates
                .min_by_key(|&i| self.servers[i].active())
                .map(|i| (i, &self.servers[i])),
        }
    }

    /// Marks a request starting on `server`.
    pub fn begin(server: &Arc<Server>) -> ActiveGuard {
        server.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(server.clone())
    }

    /// A connect to `server` failed: count it, eject at the threshold.
    pub fn record_connect_failure(&self, server: &Server) {
        self.metrics.connect_errors.inc();
        let fails = server.consecutive_fails.fetch_add(1, Ordering::Relaxed) + 1;
        if self.max_fails > 0 && fails >= self.max_fails {
            server.consecutive_fails.store(0, Ordering::Relaxed);
            server.ejected_until_ms.store(
                now_ms() + self.eject_for.as_millis() as u64,
                Ordering::Relaxed,
            );
            tracing::warn!(pool = %self.name, server = %server.label, eject_for = ?self.eject_for, "upstream server ejected after connect failures");
        }
    }

    pub fn record_success(&self, server: &Server) {
        if server.consecutive_fails.load(Ordering::Relaxed) != 0 {
            server.consecutive_fails.store(0, Ordering::Relaxed);
        }
    }

    fn refresh_healthy_gauge(&self) {
        let n = self.servers.iter().filter(|s| s.available()).count();
        self.metrics.healthy.set(n as i64);
    }
}

/// Starts the active health checker of a pool, if it has one. The task holds only a weak
/// reference and ends when the pool is dropped (after a reload replaced it).
pub fn spawn_health_checks(pool: &Arc<Pool>) {
    let Some(hc) = pool.health_check.clone() else {
        return;
    };
    let weak: Weak<Pool> = Arc::downgrade(pool);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(hc.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(pool) = weak.upgrade() else { return };
            let checks = pool.servers.iter().map(|s| check_one(&pool, s, &hc));
            futures_util::future::join_all(checks).await;
            pool.refresh_healthy_gauge();
        }
    });
}

async fn check_one(pool: &Pool, server: &Server, hc: &HealthCheckSection) {
    let ok = match &server.target {
        Target::BuiltinEcho => true,
        Target::Http { scheme, authority } => {
            let uri = Uri::builder()
                .scheme(scheme.clone())
                .authority(authority.clone())
                .path_and_query(hc.path.as_str())
                .build();
            match uri {
                Ok(uri) => {
                    let req = Request::get(uri)
                        .header(http::header::HOST, authority.as_str())
                        .header(http::header::USER_AGENT, "gateway-health-check")
                        .body(RequestBody::Empty);
                    match req {
                        Ok(req) => matches!(
                            tokio::time::timeout(hc.timeout, pool.client.request(req)).await,
                            Ok(Ok(resp)) if resp.status().is_success() || resp.status().is_redirection()
                        ),
                        Err(_) => false,
                    }
                }
                Err(_) => false,
            }
        }
    };
    let was = server.health_ok.load(Ordering::Relaxed);
    if ok == was {
        server.health_streak.store(0, Ordering::Relaxed);
        return;
    }
    let streak = server.health_streak.fetch_add(1, Ordering::Relaxed) + 1;
    let threshold = if ok {
        hc.healthy_threshold
    } else {
        hc.unhealthy_threshold
    };
    if streak >= threshold.max(1) {
        server.health_ok.store(ok, Ordering::Relaxed);
        server.health_streak.store(0, Ordering::Relaxed);
        if ok {
            tracing::info!(pool = %pool.name, server = %server.label, "upstream server healthy again");
        } else {
            tracing::warn!(pool = %pool.name, server = %server.label, "upstream server failed health checks");
        }
    }
}
