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
//! - **Sessions and brute force**: per-user session sets (`evict_oldest` in the
//!   background, `reject_new` asked in the login response within `timeout`) and failure
//!   windows per user and per address, counted in Redis by one script each.
//! - **One primary or a Redis Cluster** ([`Conn`]): every command, pipeline and script runs
//!   unchanged on either; keys that one script or pipeline touches share a hash tag.
//!   Host names resolve through `[network] egress_allow` (`EgressDns`).
//! - **Health**: every instance refreshes its heartbeat each second (the cluster view in
//!   `/api/v1/cluster`); losing Redis is a `cluster_degraded` event, the gauge
//!   `gateway_cluster_up` 0 and `/readyz` reporting it in its body (still 200: the instance
//!   serves on local state, unless `ready_when_down = false`); reconnecting is
//!   `cluster_restored`. `rate_limits_when_down = "refuse"` fails rate limits closed.
//!
//! The embedded single-node behaviour is unchanged when `[cluster]` is absent.

pub mod limits;
pub mod sync;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;

use crate::config::{ConfigErrors, KeyPath, LoadedConfig};
use crate::network::Egress;
use crate::secrets::SecretSource;

/// `[cluster]`, compiled.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// `url`, or the `nodes` of a Redis Cluster.
    pub urls: Vec<String>,
    /// Whether `urls` are nodes of a Redis Cluster.
    pub redis_cluster: bool,
    pub username: Option<String>,
    pub password: Option<SecretSource>,
    /// `ca_file`, resolved.
    pub ca_file: Option<std::path::PathBuf>,
    pub instance: String,
    pub timeout: Duration,
    pub reserve_max: u32,
    pub prefix: String,
    /// `rate_limits_when_down = "refuse"`: no local fallback for rate limits.
    pub refuse_when_down: bool,
    /// `ready_when_down`.
    pub ready_when_down: bool,
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
    let urls: Vec<String> = c.urls().map(str::to_string).collect();
    match (&c.url, c.nodes.is_empty()) {
        (Some(_), false) => errs.push(cfg.error(
            &at.key("nodes"),
            "set `url` (one Redis primary) or `nodes` (a Redis Cluster), not both",
        )),
        (None, true) => errs.push(cfg.error(
            &at.key("url"),
            "missing: `url` names one Redis primary, `nodes` some nodes of a Redis Cluster",
        )),
        _ => {}
    }
    let keys = c
        .url
        .iter()
        .map(|_| at.key("url"))
        .chain((0..c.nodes.len()).map(|i| at.key("nodes").index(i)));
    for (key, url) in keys.zip(&urls) {
        match redis::parse_redis_url(url) {
            Some(u) if matches!(u.scheme(), "redis" | "rediss") => {
                if u.password().is_some() {
                    errs.push(cfg.error(
                        &key,
                        "holds a password: use `password_file` or `password_env` (a config is shown and backed up)",
                    ));
                }
                if !c.nodes.is_empty() && !matches!(u.path(), "" | "/" | "/0") {
                    errs.push(cfg.error(
                        &key,
                        "names a database: a Redis Cluster has only database 0",
                    ));
                }
            }
            _ => errs.push(cfg.error(&key, format!("`{url}` is not a redis:// or rediss:// URL"))),
        }
    }
    if c.ca_file.is_some() && !urls.iter().any(|u| u.starts_with("rediss://")) {
        errs.push(cfg.error(&at.key("ca_file"), "only applies to rediss:// (TLS)"));
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
        urls,
        redis_cluster: !c.nodes.is_empty(),
        username: c.username.clone(),
        password,
        ca_file: c.ca_file.as_ref().map(|p| cfg.resolve(p)),
        instance,
        timeout: c
            .timeout
            .clamp(Duration::from_millis(1), Duration::from_secs(5)),
        reserve_max: c.reserve_max.max(1),
        prefix: c.key_prefix.clone(),
        refuse_when_down: c.rate_limits_when_down == crate::config::WhenDown::Refuse,
        ready_when_down: c.ready_when_down,
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
    #[error("cluster: ca_file {path}: {message}")]
    CaFile { path: String, message: String },
}

/// The PEM text of `ca_file`, checked to hold at least one certificate.
fn read_ca(path: &std::path::Path) -> Result<Vec<u8>, ClusterError> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let err = |message: String| ClusterError::CaFile {
        path: path.display().to_string(),
        message,
    };
    let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no certificate in it".into()));
    }
    Ok(pem)
}

/// Where the shared state lives.
enum Backend {
    /// One Redis primary (the one configured node).
    Single,
    /// A Redis Cluster: the client learns the slots' owners from the configured nodes
    /// and follows them when they move.
    Cluster(Box<redis::cluster::ClusterClient>),
}

/// A command connection to either backend. Commands, pipelines and scripts work on both;
/// on a Redis Cluster a pipeline or script keeps to one slot (its keys share a hash tag:
/// `{<prefix>}:…` for the shared records, `{<bucket>}` for a rate-limit bucket).
#[derive(Clone)]
pub enum Conn {
    Single(redis::aio::MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Resolves Redis host names like the upstreams' ([`Egress::filter`]): answers outside
/// `[network] egress_allow` are dropped, none left is a refused connection.
#[derive(Clone)]
struct EgressDns(Egress);

impl redis::io::AsyncDNSResolver for EgressDns {
    fn resolve<'a, 'b: 'a>(
        &'a self,
        host: &'b str,
        port: u16,
    ) -> redis::RedisFuture<'a, Box<dyn Iterator<Item = std::net::SocketAddr> + Send + 'a>> {
        Box::pin(async move {
            let answers = tokio::net::lookup_host((host, port)).await?;
            let allowed = self.0.filter(host, answers)?;
            Ok(Box::new(allowed.into_iter())
                as Box<dyn Iterator<Item = std::net::SocketAddr> + Send>)
        })
    }
}

/// The connection to the shared state and what this instance knows of it.
pub struct Cluster {
    pub settings: ClusterSettings,
    backend: Backend,
    /// One client per configured address, for the subscription (any node of a Redis
    /// Cluster delivers every published message).
    nodes: Vec<redis::Client>,
    egress: EgressDns,
    /// The command connection; `None` until connected and after the heartbeat lost it.
    conn: ArcSwapOption<Conn>,
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

/// Connecting (and each command of a background task) gives up after this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

impl Cluster {
    pub fn new(
        settings: ClusterSettings,
        egress: &Egress,
        metrics: &crate::metrics::Metrics,
    ) -> Result<Cluster, ClusterError> {
        let password = settings.password.as_ref().map(|p| p.read()).transpose()?;
        let mut infos = Vec::new();
        for url in &settings.urls {
            let info = redis::IntoConnectionInfo::into_connection_info(url.as_str())?;
            let mut redis_settings = info
                .redis_settings()
                .clone()
                .set_protocol(redis::ProtocolVersion::RESP3);
            if let Some(p) = &password {
                redis_settings = redis_settings.set_password(p.clone());
            }
            if let Some(u) = &settings.username {
                redis_settings = redis_settings.set_username(u.clone());
            }
            infos.push(info.set_redis_settings(redis_settings));
        }
        let ca = settings.ca_file.as_deref().map(read_ca).transpose()?;
        let certs = || redis::TlsCertificates {
            client_tls: None,
            root_cert: ca.clone(),
        };
        let nodes = infos
            .iter()
            .cloned()
            .map(|info| match &ca {
                Some(_) => redis::Client::build_with_tls(info, certs()),
                None => redis::Client::open(info),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let egress = EgressDns(egress.clone());
        let backend = if settings.redis_cluster {
            let mut b = redis::cluster::ClusterClientBuilder::new(infos)
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(CONNECT_TIMEOUT)
                .retries(1)
                .use_protocol(redis::ProtocolVersion::RESP3)
                .async_dns_resolver(egress.clone());
            if let Some(p) = &password {
                b = b.password(p);
            }
            if let Some(u) = &settings.username {
                b = b.username(u);
            }
            if ca.is_some() {
                b = b.certs(certs());
            }
            Backend::Cluster(Box::new(b.build()?))
        } else {
            Backend::Single
        };
        let prefix = settings.prefix.clone();
        Ok(Cluster {
            limits: limits::SharedLimits::new(&prefix, settings.reserve_max),
            sync: sync::Sync::new(&prefix, &settings.instance),
            settings,
            backend,
            nodes,
            egress,
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

    /// "redis" or "redis-cluster", and the configured addresses.
    pub fn describe(&self) -> String {
        let kind = if self.settings.redis_cluster {
            "redis cluster"
        } else {
            "redis"
        };
        format!("{kind} {}", self.settings.urls.join(", "))
    }

    /// A command connection while Redis is up.
    pub fn conn(&self) -> Option<Conn> {
        if !self.is_up() {
            return None;
        }
        self.conn.load().as_deref().cloned()
    }

    /// Runs `f` against Redis within the configured timeout; an error or a timeout marks
    /// Redis down (the health task brings it back).
    pub async fn call<T, F, Fut>(&self, f: F) -> Option<T>
    where
        F: FnOnce(Conn) -> Fut,
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

    /// Options of a connection to one node: bounded connect and response times, host
    /// names resolved through `egress_allow`.
    fn node_config(&self) -> redis::AsyncConnectionConfig {
        redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(CONNECT_TIMEOUT))
            .set_dns_resolver(self.egress.clone())
    }

    /// The command connection, made when there is none.
    async fn connection(&self) -> Result<Conn, redis::RedisError> {
        if let Some(c) = self.conn.load_full() {
            return Ok((*c).clone());
        }
        let connect = async {
            match &self.backend {
                Backend::Single => self.nodes[0]
                    .get_multiplexed_async_connection_with_config(&self.node_config())
                    .await
                    .map(Conn::Single),
                Backend::Cluster(client) => client.get_async_connection().await.map(Conn::Cluster),
            }
        };
        let c = tokio::time::timeout(2 * CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| timed_out())??;
        self.conn.store(Some(Arc::new(c.clone())));
        Ok(c)
    }

    /// A subscription to `channel` on the first configured node that accepts it, its
    /// messages (and a `Disconnection` when it drops) sent to `tx`. Keep the connection:
    /// dropping it ends the subscription.
    pub(crate) async fn subscribe_on_a_node(
        &self,
        channel: &str,
        tx: tokio::sync::broadcast::Sender<redis::PushInfo>,
        start: usize,
    ) -> Result<redis::aio::MultiplexedConnection, redis::RedisError> {
        let mut last = None;
        for i in 0..self.nodes.len() {
            let node = &self.nodes[(start + i) % self.nodes.len()];
            let config = self.node_config().set_push_sender(tx.clone());
            let attempt = tokio::time::timeout(2 * CONNECT_TIMEOUT, async {
                let mut c = node
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?;
                c.subscribe(channel).await?;
                Ok::<_, redis::RedisError>(c)
            })
            .await
            .map_err(|_| timed_out())
            .and_then(|r| r);
            match attempt {
                Ok(c) => return Ok(c),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(timed_out))
    }

    /// The hash of instances' heartbeats (one slot with the other shared records).
    fn instances_key(&self) -> String {
        format!("{{{}}}:instances", self.settings.prefix)
    }

    /// The instances that sent a heartbeat in the last five seconds, with what they sent;
    /// older heartbeats (an instance that stopped without saying so) are removed.
    pub async fn instances(&self) -> Option<Vec<serde_json::Value>> {
        let key = self.instances_key();
        self.call(|mut c| async move {
            let all: std::collections::HashMap<String, String> =
                redis::cmd("HGETALL").arg(&key).query_async(&mut c).await?;
            let now = crate::events::model::now_micros();
            let mut out = Vec::new();
            let mut stale = Vec::new();
            for (name, v) in all {
                let beat = serde_json::from_str::<serde_json::Value>(&v).ok();
                let seen = beat
                    .as_ref()
                    .and_then(|b| b["seen_us"].as_u64())
                    .unwrap_or(0);
                match beat {
                    Some(b) if now.saturating_sub(seen) <= HEARTBEAT_TTL.as_micros() as u64 => {
                        out.push(b)
                    }
                    _ => stale.push(name),
                }
            }
            if !stale.is_empty() {
                redis::cmd("HDEL")
                    .arg(&key)
                    .arg(&stale)
                    .query_async::<()>(&mut c)
                    .await?;
            }
            out.sort_by(|a, b| a["instance"].as_str().cmp(&b["instance"].as_str()));
            Ok(out)
        })
        .await
    }
}

/// A heartbeat older than this is an instance gone.
const HEARTBEAT_TTL: Duration = Duration::from_secs(5);

fn timed_out() -> redis::RedisError {
    redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut))
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
        let now = crate::events::model::now_micros();
        let beat = serde_json::json!({
            "instance": cluster.settings.instance,
            "started": crate::events::model::format_time(started),
            "seen": crate::events::model::format_time(now),
            "seen_us": now,
            "bans": shared.bans.active().len(),
            "version": env!("CARGO_PKG_VERSION"),
        })
        .to_string();
        let key = cluster.instances_key();
        let written = match cluster.connection().await {
            Ok(mut c) => tokio::time::timeout(
                CONNECT_TIMEOUT,
                redis::cmd("HSET")
                    .arg(&key)
                    .arg(&cluster.settings.instance)
                    .arg(beat)
                    .query_async::<()>(&mut c),
            )
            .await
            .map_err(|_| "timed out".to_string())
            .and_then(|r| r.map_err(|e| e.to_string())),
            Err(e) => Err(e.to_string()),
        };
        if written.is_err() {
            // A fresh connection next time (a broken one does not mend itself).
            cluster.conn.store(None);
        }
        let ok = match written {
            Ok(()) => true,
            Err(e) => {
                if announced != Some(false) {
                    tracing::warn!(error = %e, redis = %cluster.describe(), "redis unreachable; deciding on local state");
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
                        if cluster.settings.refuse_when_down {
                            "redis unreachable: requests under rate limits are refused (503), bans and revocations are the last known"
                        } else {
                            "redis unreachable: rate limits are counted locally, bans and revocations are the last known"
                        },
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
        let _ = tokio::time::timeout(
            Duration::from_millis(500),
            redis::cmd("HDEL")
                .arg(cluster.instances_key())
                .arg(&cluster.settings.instance)
                .query_async::<()>(&mut c),
        )
        .await;
    }
}
