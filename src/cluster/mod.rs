//! Several gateways behind one load balancer sharing state through Redis (`[cluster]`):
//! rate limits counted once for all instances, and bans, login locks and session
//! revocations made on one instance in force on every other within a second.
//!
//! What each piece costs and how it fails:
//! - **Rate limits** ([`limits`]): one Lua script per policy evaluates GCRA over every
//!   window in one round trip and reserves up to `reserve_max` tokens at once, so most
//!   requests of a busy key are decided from the local reservation without waiting on
//!   Redis. A request waits at most `timeout` on Redis; past it (or with Redis down) the
//!   instance decides with its own local limiter, as a single instance would.
//! - **Bans, locks, revocations** ([`sync`]): written to Redis hashes and published on one
//!   channel; every instance applies what the others publish to its in-memory sets, which
//!   the request path reads as before (no Redis on the hot path). With Redis down each
//!   instance keeps its last known state and its own new decisions; when Redis returns it
//!   pulls what it missed and pushes what Redis lacks (a Redis restarted empty loses
//!   nothing the instances knew).
//! - **Health**: every instance refreshes a heartbeat key each second (the cluster view in
//!   `/api/v1/cluster`); losing Redis is a `cluster_degraded` event, the gauge
//!   `gateway_cluster_up` 0 and `/readyz` reporting it in its body (still 200: the instance
//!   serves on local state); reconnecting is `cluster_restored`.
//!
//! The embedded single-node behaviour is unchanged when `[cluster]` is absent.

pub mod limits;
pub mod sync;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::ConnectionManager;

use crate::config::{ConfigErrors, KeyPath, LoadedConfig};
use crate::secrets::SecretSource;

/// `[cluster]`, compiled.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    pub url: String,
    pub username: Option<String>,
    pub password: Option<SecretSource>,
    pub instance: String,
    pub timeout: Duration,
    pub reserve_max: u32,
    pub prefix: String,
}

/// Validates `[cluster]`.
pub fn compile(cfg: &LoadedConfig, errs: &mut ConfigErrors) -> Option<ClusterSettings> {
    let c = cfg.raw.cluster.as_ref()?;
    let at = KeyPath::root().key("cluster");
    if c.backend != "redis" {
        errs.push(cfg.error(
            &at.key("backend"),
            format!(
                "unknown backend `{}`: the one backend is \"redis\"",
                c.backend
            ),
        ));
    }
    match redis::parse_redis_url(&c.url) {
        Some(u) if matches!(u.scheme(), "redis" | "rediss") => {
            if u.password().is_some() {
                errs.push(cfg.error(
                    &at.key("url"),
                    "holds a password: use `password_file` or `password_env` (a config is shown and backed up)",
                ));
            }
        }
        _ => errs.push(cfg.error(
            &at.key("url"),
            format!("`{}` is not a redis:// or rediss:// URL", c.url),
        )),
    }
    let password = match (&c.password_file, &c.password_env) {
        (Some(_), Some(_)) => {
            errs.push(cfg.error(
                &at.key("password_env"),
                "set `password_file` or `password_env`, not both",
            ));
            None
        }
        (Some(f), None) => Some(SecretSource::File(cfg.resolve(f))),
        (None, Some(v)) => Some(SecretSource::Env(v.clone())),
        (None, None) => None,
    };
    if c.timeout.is_zero() || c.timeout > Duration::from_secs(5) {
        errs.push(cfg.error(&at.key("timeout"), "must be between 1ms and 5s"));
    }
    if c.reserve_max == 0 {
        errs.push(cfg.error(&at.key("reserve_max"), "must be at least 1"));
    }
    let name_ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
    };
    if !name_ok(&c.key_prefix) {
        errs.push(cfg.error(
            &at.key("key_prefix"),
            "1-64 characters of letters, digits, `-`, `_`, `.`, `:`",
        ));
    }
    let instance = c.instance.clone().unwrap_or_else(host_name);
    if !name_ok(&instance) {
        errs.push(cfg.error(
            &at.key("instance"),
            "1-64 characters of letters, digits, `-`, `_`, `.`, `:`",
        ));
    }
    Some(ClusterSettings {
        url: c.url.clone(),
        username: c.username.clone(),
        password,
        instance,
        timeout: c
            .timeout
            .clamp(Duration::from_millis(1), Duration::from_secs(5)),
        reserve_max: c.reserve_max.max(1),
        prefix: c.key_prefix.clone(),
    })
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "gateway".into())
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster: {0}")]
    Secret(#[from] crate::secrets::SecretError),
    #[error("cluster: {0}")]
    Redis(#[from] redis::RedisError),
}

/// The connection to the shared state and what this instance knows of it.
pub struct Cluster {
    pub settings: ClusterSettings,
    client: redis::Client,
    /// The command connection (reconnects by itself); `None` until the first connect.
    conn: ArcSwapOption<ConnectionManager>,
    up: AtomicBool,
    pub limits: limits::SharedLimits,
    pub sync: sync::Sync,
    metrics: ClusterMetrics,
}

struct ClusterMetrics {
    up: prometheus::IntGauge,
    errors: prometheus::IntCounter,
    fallbacks: prometheus::IntCounter,
}

impl Cluster {
    pub fn new(
        settings: ClusterSettings,
        metrics: &crate::metrics::Metrics,
    ) -> Result<Cluster, ClusterError> {
        let mut info = redis::IntoConnectionInfo::into_connection_info(settings.url.as_str())?;
        let mut redis_settings = info.redis_settings().clone();
        if let Some(p) = &settings.password {
            redis_settings = redis_settings.set_password(p.read()?);
        }
        if let Some(u) = &settings.username {
            redis_settings = redis_settings.set_username(u.clone());
        }
        info = info.set_redis_settings(redis_settings);
        let client = redis::Client::open(info)?;
        let prefix = settings.prefix.clone();
        Ok(Cluster {
            limits: limits::SharedLimits::new(&prefix, settings.reserve_max),
            sync: sync::Sync::new(&prefix, &settings.instance),
            settings,
            client,
            conn: ArcSwapOption::empty(),
            up: AtomicBool::new(false),
            metrics: ClusterMetrics {
                up: metrics.cluster_up.clone(),
                errors: metrics.cluster_errors.clone(),
                fallbacks: metrics.cluster_fallbacks.clone(),
            },
        })
    }

    /// Whether Redis answered the last time it was asked.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// A command connection while Redis is up.
    pub fn conn(&self) -> Option<ConnectionManager> {
        if !self.is_up() {
            return None;
        }
        self.conn.load().as_deref().cloned()
    }

    /// Runs `f` against Redis within the configured timeout; an error or a timeout marks
    /// Redis down (the health task brings it back).
    pub async fn call<T, F, Fut>(&self, f: F) -> Option<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let conn = self.conn()?;
        match tokio::time::timeout(self.settings.timeout, f(conn)).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "redis call failed");
                self.metrics.errors.inc();
                self.set_up(false);
                None
            }
            Err(_) => {
                self.metrics.errors.inc();
                None
            }
        }
    }

    /// Counts decisions (one per policy) taken locally because Redis could not be asked.
    pub fn fell_back(&self, decisions: usize) {
        self.metrics.fallbacks.inc_by(decisions as u64);
    }

    fn set_up(&self, up: bool) -> bool {
        self.metrics.up.set(i64::from(up));
        self.up.swap(up, Ordering::Relaxed) != up
    }

    /// The command connection, made on first use (it reconnects by itself afterwards).
    async fn connection(&self) -> Result<ConnectionManager, redis::RedisError> {
        if let Some(c) = self.conn.load_full() {
            return Ok((*c).clone());
        }
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(1)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let c = tokio::time::timeout(
            Duration::from_secs(2),
            ConnectionManager::new_with_config(self.client.clone(), config),
        )
        .await
        .map_err(|_| {
            redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut))
        })??;
        self.conn.store(Some(Arc::new(c.clone())));
        Ok(c)
    }

    pub(crate) fn client(&self) -> &redis::Client {
        &self.client
    }

    /// The heartbeat key of an instance.
    fn heartbeat_key(&self, instance: &str) -> String {
        format!("{}:instance:{instance}", self.settings.prefix)
    }

    /// The instances that sent a heartbeat in the last five seconds, with what they sent.
    pub async fn instances(&self) -> Option<Vec<serde_json::Value>> {
        let pattern = format!("{}:instance:*", self.settings.prefix);
        self.call(|mut c| async move {
            let keys: Vec<String> = redis::cmd("KEYS").arg(&pattern).query_async(&mut c).await?;
            let mut out = Vec::new();
            for k in keys {
                let v: Option<String> = redis::cmd("GET").arg(&k).query_async(&mut c).await?;
                if let Some(v) = v.and_then(|v| serde_json::from_str(&v).ok()) {
                    out.push(v);
                }
            }
            Ok(out)
        })
        .await
    }
}

/// Keeps the connection up: a heartbeat each second; on a lost connection a
/// `cluster_degraded` event and retries; on reconnecting a resync and `cluster_restored`.
pub async fn run(
    shared: Arc<crate::app::Shared>,
    cluster: Arc<Cluster>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    use crate::events::{AuditEvent, EventType};
    let started = crate::events::model::now_micros();
    // What the last event said (None: nothing yet).
    let mut announced: Option<bool> = None;
    tokio::spawn(sync::subscribe(
        shared.clone(),
        cluster.clone(),
        stop.clone(),
    ));
    tokio::spawn(sync::publish(cluster.clone(), stop.clone()));
    loop {
        // The heartbeat is the liveness check: written within a second, or Redis is down.
        let beat = serde_json::json!({
            "instance": cluster.settings.instance,
            "started": crate::events::model::format_time(started),
            "seen": crate::events::model::format_time(crate::events::model::now_micros()),
            "bans": shared.bans.active().len(),
            "version": env!("CARGO_PKG_VERSION"),
        })
        .to_string();
        let key = cluster.heartbeat_key(&cluster.settings.instance);
        let written = match cluster.connection().await {
            Ok(mut c) => tokio::time::timeout(
                Duration::from_secs(1),
                redis::cmd("SET")
                    .arg(&key)
                    .arg(beat)
                    .arg("PX")
                    .arg(5000)
                    .query_async::<()>(&mut c),
            )
            .await
            .map_err(|_| "timed out".to_string())
            .and_then(|r| r.map_err(|e| e.to_string())),
            Err(e) => Err(e.to_string()),
        };
        let ok = match written {
            Ok(()) => true,
            Err(e) => {
                if announced != Some(false) {
                    tracing::warn!(error = %e, url = %cluster.settings.url, "redis unreachable; deciding on local state");
                }
                false
            }
        };
        if ok && (!cluster.is_up() || announced != Some(true)) {
            // (Re)connected: exchange what either side missed before trusting Redis again.
            match sync::resync(&shared, &cluster).await {
                Ok(n) => {
                    cluster.set_up(true);
                    tracing::info!(instance = %cluster.settings.instance, applied = n.0, pushed = n.1, "cluster state in sync");
                    if announced == Some(false) {
                        shared.events.sink.audit(
                            AuditEvent::new(
                                EventType::ClusterRestored,
                                "redis reachable again; state resynchronized",
                            )
                            .detail("instance", cluster.settings.instance.clone())
                            .detail("applied", n.0.to_string())
                            .detail("pushed", n.1.to_string()),
                        );
                    }
                    announced = Some(true);
                }
                Err(e) => tracing::warn!(error = %e, "cluster resync failed; retrying"),
            }
        } else if !ok {
            cluster.set_up(false);
            if announced != Some(false) {
                shared.events.sink.audit(
                    AuditEvent::new(
                        EventType::ClusterDegraded,
                        "redis unreachable: rate limits are counted locally, bans and revocations are the last known",
                    )
                    .detail("instance", cluster.settings.instance.clone()),
                );
                announced = Some(false);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    if let Some(c) = cluster.conn.load_full() {
        let mut c = (*c).clone();
        let key = cluster.heartbeat_key(&cluster.settings.instance);
        let _ = tokio::time::timeout(
            Duration::from_millis(500),
            redis::cmd("DEL").arg(key).query_async::<()>(&mut c),
        )
        .await;
    }
}
