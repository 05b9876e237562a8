//! Starting, reloading and stopping the gateway.
//!
//! Start: check the config, generate the development certificate if asked and missing,
//! compile, bind every listener and the admin port (any failure: nothing keeps running),
//! then mark ready. Reload (SIGHUP or the admin API): compile the file again on a blocking
//! thread and swap the new runtime in; a bad config is refused with its errors and the old
//! one keeps serving. Shutdown: stop accepting, ask every connection to finish its
//! in-flight requests, wait up to `shutdown_grace`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::bans::Bans;
use crate::config::{self, ConfigErrors, KeyPath};
use crate::events::sampler::EventSampler;
use crate::events::{AuditEvent, EventType, Events, StoreError};
use crate::ip_rules::IpRules;
use crate::metrics::Metrics;
use crate::proxy::upstream::spawn_health_checks;
use crate::runtime::{CompileMode, Runtime};
use crate::session::Sessions;
use crate::tls::{dev_cert, SniResolver};

/// State shared by listeners, the request path and the admin port.
pub struct Shared {
    pub runtime: ArcSwap<Runtime>,
    pub metrics: Arc<Metrics>,
    pub resolver: Arc<SniResolver>,
    pub config_path: PathBuf,
    /// Turned to true at shutdown; every connection watches it.
    pub drain: watch::Sender<bool>,
    pub ready: AtomicBool,
    pub events: Arc<Events>,
    /// Config IP rules merged with the API's, compiled; swapped on reload and API change.
    pub ip_rules: IpRules,
    pub bans: Bans,
    /// Sessions of protected apps, failed-login windows and user locks.
    pub sessions: Sessions,
    /// Keeps floods of refusals from flooding the event store.
    pub sampler: EventSampler,
    /// Reloads run one at a time.
    reload_lock: tokio::sync::Mutex<()>,
    /// `[cluster]`: state shared with other instances through Redis.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

impl Shared {
    /// Offers a decision of this instance (a ban, a lock, a revocation) to the others.
    pub fn replicate(&self, change: crate::cluster::sync::Change) {
        if let Some(c) = &self.cluster {
            c.sync.offer(change);
        }
    }

    /// This instance's name in a cluster.
    pub fn instance(&self) -> Option<&str> {
        self.cluster
            .as_deref()
            .map(|c| c.settings.instance.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    #[error("cannot listen on {addr} ({name}): {source}")]
    Bind {
        name: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    DevCert(#[from] dev_cert::DevCertError),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{what} file {path}: {source}")]
    SecretFile {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    /// A named admin token that cannot be used (unset variable, too short, duplicate).
    #[error("{0}")]
    AdminToken(String),
    /// A webhook whose secret or CA file cannot be read.
    #[error(transparent)]
    Alerts(#[from] crate::alerts::AlertError),
    /// `[cluster]` whose password cannot be read or whose URL the client refuses.
    #[error("{0}")]
    Cluster(String),
}

impl StartError {
    /// Exit code for the binary: 2 for a config the operator must fix, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            StartError::Config(_)
            | StartError::AdminToken(_)
            | StartError::Alerts(_)
            | StartError::Cluster(_) => 2,
            _ => 1,
        }
    }
}

/// Loads and compiles a config file without side effects (for `gateway check`, and before
/// `gateway run` builds its async runtime). Returns the loaded file when it is valid.
pub fn check_config(path: &Path) -> Result<config::LoadedConfig, ConfigErrors> {
    let loaded = config::load(path)?;
    let metrics = Metrics::new();
    let resolver = Arc::new(SniResolver::default());
    Runtime::compile(&loaded, &metrics, &resolver, 0, CompileMode::Check)?;
    Ok(loaded)
}

/// Loads and compiles a config file (as `gateway check` does) for commands that need its
/// settings without running the gateway.
pub fn compile_config(path: &Path) -> Result<Runtime, ConfigErrors> {
    let loaded = config::load(path)?;
    let metrics = Metrics::new();
    let resolver = Arc::new(SniResolver::default());
    Runtime::compile(&loaded, &metrics, &resolver, 0, CompileMode::Check)
}

fn compile_file(
    path: &Path,
    metrics: &Metrics,
    resolver: &Arc<SniResolver>,
    generation: u64,
) -> Result<Runtime, ConfigErrors> {
    let loaded = config::load(path)?;
    Runtime::compile(&loaded, metrics, resolver, generation, CompileMode::Run)
}

impl Shared {
    /// Builds the config file again and swaps it in. Returns the new generation.
    pub async fn reload(self: &Arc<Self>) -> Result<u64, ConfigErrors> {
        let _serial = self.reload_lock.lock().await;
        let generation = self.generation() + 1;
        let this = self.clone();
        let compiled = tokio::task::spawn_blocking(move || {
            compile_file(&this.config_path, &this.metrics, &this.resolver, generation)
        })
        .await
        .unwrap_or_else(|e| {
            Err(ConfigErrors::from(crate::config::ConfigError {
                file: self.config_path.clone(),
                line: 0,
                column: 0,
                key: String::new(),
                message: format!("config compiler failed: {e}"),
            }))
        });
        let result = compiled.and_then(|rt| {
            let old = self.runtime.load();
            let same = old.listener_binds.len() == rt.listener_binds.len()
                && old
                    .listener_binds
                    .iter()
                    .zip(&rt.listener_binds)
                    .all(|(a, b)| a.name == b.name && a.addr == b.addr);
            if !same {
                let loaded = config::load(&self.config_path)?;
                return Err(loaded
                    .error(
                        &KeyPath::root().key("listeners"),
                        "listeners were added, removed or moved; restart the gateway to apply that",
                    )
                    .into());
            }
            Ok(rt)
        });
        match result {
            Ok(rt) => {
                self.events.update(rt.events.clone());
                self.rebuild_ip_rules(&rt);
                self.activate(rt);
                self.events.sink.audit(
                    AuditEvent::new(EventType::ConfigReloaded, "config reloaded")
                        .detail("generation", generation.to_string()),
                );
                self.metrics
                    .config_reloads
                    .with_label_values(&["success"])
                    .inc();
                tracing::info!(generation, "config reloaded");
                Ok(generation)
            }
            Err(e) => {
                self.metrics
                    .config_reloads
                    .with_label_values(&["failure"])
                    .inc();
                tracing::error!(errors = %e, "config reload refused; the previous config keeps serving");
                self.events.sink.audit(
                    AuditEvent::new(
                        EventType::ConfigReloadFailed,
                        "config reload refused; the previous config keeps serving",
                    )
                    .detail("errors", e.to_string()),
                );
                Err(e)
            }
        }
    }

    /// Compiles the config's IP rules with the API's and puts them in force.
    pub fn rebuild_ip_rules(&self, rt: &Runtime) {
        let api = self
            .ip_rules
            .api_rules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match rt.ip.build(&api, &self.metrics) {
            Ok(set) => self.ip_rules.set.store(Arc::new(set)),
            Err(errs) => {
                for e in errs {
                    tracing::error!(rule = e.index, field = e.field, error = %e.message, "an IP rule from the API does not compile; the previous rules stay in force");
                }
            }
        }
    }

    fn activate(&self, rt: Runtime) {
        prepare(&self.resolver, &self.metrics, &rt);
        self.runtime.store(Arc::new(rt));
    }

    /// Generation of the config in force (1 at start, +1 per successful reload).
    pub fn generation(&self) -> u64 {
        self.runtime.load().generation
    }
}

/// Puts a compiled runtime's side of things in force: certificates, health checks, gauges.
fn prepare(resolver: &SniResolver, metrics: &Metrics, rt: &Runtime) {
    resolver.replace(rt.cert_store.clone());
    for pool in &rt.pools {
        spawn_health_checks(pool);
    }
    metrics.config_generation.set(rt.generation as i64);
}

/// A running gateway.
pub struct Gateway {
    shared: Arc<Shared>,
    listener_addrs: Vec<(String, SocketAddr)>,
    admin_addr: Option<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    accept_tasks: Vec<JoinHandle<()>>,
    admin_task: Option<JoinHandle<()>>,
}

impl Gateway {
    /// Starts everything the config describes. Must be called inside a tokio runtime.
    pub async fn start(config_path: &Path) -> Result<Gateway, StartError> {
        let loaded = config::load(config_path)?;
        let metrics = Arc::new(Metrics::new());
        let resolver = Arc::new(SniResolver::default());
        // Validate fully before anything is written to disk.
        let checked = Runtime::compile(&loaded, &metrics, &resolver, 1, CompileMode::Check)?;
        if let Some((cert, key)) = &checked.dev_cert {
            if !cert.exists() || !key.exists() {
                let ca = dev_cert::generate(cert, key)?;
                tracing::warn!(cert = %cert.display(), ca = %ca.display(), "generated a self-signed development certificate; trust the CA file in your client");
            }
        }
        drop(checked);
        let rt = Runtime::compile(&loaded, &metrics, &resolver, 1, CompileMode::Run)?;
        let alerts = crate::alerts::Alerts::start(&rt.alerts, &metrics.registry, &rt.egress)?;
        let events = {
            let settings = rt.events.clone();
            let metrics = metrics.clone();
            tokio::task::spawn_blocking(move || Events::start(settings, &metrics, alerts))
                .await
                .map_err(|e| StoreError::Invalid(format!("opening the event store: {e}")))??
        };
        let events = Arc::new(events);
        let (api_rules, bans) = {
            let store = events.store.clone();
            tokio::task::spawn_blocking(move || {
                Ok::<_, StoreError>((crate::ip_rules::load_dynamic(&store)?, Bans::load(&store)?))
            })
            .await
            .map_err(|e| StoreError::Invalid(format!("loading IP rules and bans: {e}")))??
        };
        let ip_set = match rt.ip.build(&api_rules, &metrics) {
            Ok(set) => set,
            Err(errs) => {
                for e in &errs {
                    tracing::error!(rule = e.index, field = e.field, error = %e.message, "a stored IP rule does not compile; starting without the API's rules");
                }
                rt.ip.build(&[], &metrics).map_err(|_| {
                    StoreError::Invalid("the config's IP rules do not compile".into())
                })?
            }
        };
        let ip_rules = IpRules::new(ip_set, api_rules);
        let sessions = {
            let key_file = rt.sessions.key_file.clone();
            let secret = crate::secrets::read_or_create(&key_file).map_err(|source| {
                StartError::SecretFile {
                    what: "session key",
                    path: key_file.display().to_string(),
                    source,
                }
            })?;
            let sessions = Sessions::new(secret.as_bytes());
            let store = events.store.clone();
            let now = sessions.clock.now();
            let stored =
                tokio::task::spawn_blocking(move || crate::session::store::load(&store, now))
                    .await
                    .map_err(|e| StoreError::Invalid(format!("loading sessions: {e}")))??;
            sessions.table.restore(stored);
            sessions
        };

        let mut bound = Vec::new();
        for b in &rt.listener_binds {
            let l = TcpListener::bind(b.addr)
                .await
                .map_err(|source| StartError::Bind {
                    name: b.name.clone(),
                    addr: b.addr,
                    source,
                })?;
            bound.push(l);
        }
        let admin = rt.admin.clone();
        let admin_listener = if admin.enabled {
            Some(
                TcpListener::bind(admin.bind)
                    .await
                    .map_err(|source| StartError::Bind {
                        name: "admin".into(),
                        addr: admin.bind,
                        source,
                    })?,
            )
        } else {
            None
        };
        let metrics_listener = match admin.metrics_bind {
            Some(addr) => {
                Some(
                    TcpListener::bind(addr)
                        .await
                        .map_err(|source| StartError::Bind {
                            name: "admin.metrics_bind".into(),
                            addr,
                            source,
                        })?,
                )
            }
            None => None,
        };
        let credentials = Arc::new(crate::admin::auth::Credentials::new(
            &crate::admin::auth::read_secrets(&admin)?,
        ));

        if let Some(s) = &rt.cluster {
            bans.set_instance(&s.instance);
        }
        let cluster = match &rt.cluster {
            Some(s) => Some(Arc::new(
                crate::cluster::Cluster::new(s.clone(), &rt.egress, &metrics)
                    .map_err(|e| StartError::Cluster(e.to_string()))?,
            )),
            None => None,
        };
        let (drain, _) = watch::channel(false);
        let binds = rt.listener_binds.clone();
        prepare(&resolver, &metrics, &rt);
        let shared = Arc::new(Shared {
            runtime: ArcSwap::from_pointee(rt),
            metrics,
            resolver,
            config_path: config_path.to_path_buf(),
            drain,
            ready: AtomicBool::new(false),
            events,
            ip_rules,
            bans,
            sessions,
            sampler: EventSampler::new(std::time::Duration::from_secs(10)),
            reload_lock: tokio::sync::Mutex::new(()),
            cluster,
        });

        // The posture at start, so `gateway_posture_score` has a value from the beginning
        // (the newest backup is verified, and an event recorded, on request:
        // GET /api/v1/posture).
        {
            let shared = shared.clone();
            tokio::task::spawn_blocking(move || {
                let rt = shared.runtime.load_full();
                let report =
                    crate::posture::evaluate(&rt, Some(crate::posture::Live::default()), false);
                let _ = report.record(&shared.metrics);
            });
        }

        let (stop, _) = watch::channel(false);
        let mut listener_addrs = Vec::new();
        let mut accept_tasks = Vec::new();
        for (i, (l, b)) in bound.into_iter().zip(binds).enumerate() {
            let addr = l.local_addr().unwrap_or(b.addr);
            listener_addrs.push((b.name.clone(), addr));
            tracing::info!(listener = %b.name, %addr, "listening");
            accept_tasks.push(tokio::spawn(crate::server::serve_listener(
                l,
                i,
                b.max_connections,
                shared.clone(),
                stop.subscribe(),
            )));
        }
        let mut admin_addr = None;
        let mut admin_task = None;
        if let Some(l) = admin_listener {
            let addr = l.local_addr().unwrap_or(admin.bind);
            admin_addr = Some(addr);
            tracing::info!(%addr, api = !credentials.is_empty(), "admin listening");
            admin_task = Some(tokio::spawn(crate::admin::serve(
                l,
                shared.clone(),
                credentials,
                stop.subscribe(),
            )));
        }
        let mut metrics_addr = None;
        if let Some(l) = metrics_listener {
            let addr = l.local_addr().ok();
            metrics_addr = addr;
            tracing::info!(addr = ?addr, "metrics and health listening");
            tokio::spawn(crate::admin::serve_metrics(
                l,
                shared.clone(),
                stop.subscribe(),
            ));
        }
        if let Some(c) = &shared.cluster {
            tokio::spawn(crate::cluster::run(
                shared.clone(),
                c.clone(),
                stop.subscribe(),
            ));
        }
        // The scheduled jobs publish their first runs before the tasks start (the
        // status never shows none, however late a task first runs).
        let started = std::time::SystemTime::now();
        let (first_backup, first_cleanup) = first_runs(&shared, started);
        shared
            .events
            .next_runs
            .set(crate::schedule::Job::Backup, first_backup);
        shared
            .events
            .next_runs
            .set(crate::schedule::Job::SessionCleanup, first_cleanup);
        tokio::spawn(scheduled_backups(shared.clone(), stop.subscribe(), started));
        tokio::spawn(sweep_security_state(shared.clone(), stop.subscribe()));
        tokio::spawn(session_housekeeping(
            shared.clone(),
            stop.subscribe(),
            started,
        ));
        shared.ready.store(true, Ordering::Relaxed);
        Ok(Gateway {
            shared,
            listener_addrs,
            admin_addr,
            metrics_addr,
            stop,
            accept_tasks,
            admin_task,
        })
    }

    /// The bound address of a listener by name (useful with port 0).
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listener_addrs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The bound address of `[admin] metrics_bind`, when configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub async fn reload(&self) -> Result<u64, ConfigErrors> {
        self.shared.reload().await
    }

    /// Stops accepting, lets in-flight requests finish (up to the configured grace), then
    /// stops the admin port. Returns true when every connection finished in time.
    pub async fn shutdown(self) -> bool {
        self.shared.ready.store(false, Ordering::Relaxed);
        let _ = self.stop.send(true);
        for t in self.accept_tasks {
            let _ = t.await;
        }
        let _ = self.shared.drain.send(true);
        let grace = self.shared.runtime.load().shutdown_grace;
        let drained = tokio::time::timeout(grace, self.shared.drain.closed())
            .await
            .is_ok();
        if !drained {
            tracing::warn!(
                remaining = self.shared.drain.receiver_count(),
                "shutdown grace expired with connections still open"
            );
        }
        if let Some(t) = self.admin_task {
            let _ = t.await;
        }
        // Last-activity times not yet written, then every queued event and the partial
        // trend minute.
        crate::session::persist(&self.shared.events, self.shared.sessions.table.take_dirty());
        let events = self.shared.events.clone();
        let _ = tokio::task::spawn_blocking(move || events.stop()).await;
        drained
    }

    /// Serves until SIGTERM or SIGINT, reloading on SIGHUP.
    pub async fn run_until_signal(self) -> bool {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = signal(SignalKind::hangup()).ok();
        let mut term = signal(SignalKind::terminate()).ok();
        let mut int = signal(SignalKind::interrupt()).ok();
        loop {
            tokio::select! {
                _ = recv(&mut hup) => {
                    let _ = self.shared.reload().await;
                }
                _ = recv(&mut term) => break,
                _ = recv(&mut int) => break,
            }
        }
        tracing::info!("shutting down: draining connections");
        self.shutdown().await
    }
}

/// Every 5 seconds: drops rate-limit keys whose buckets are full again, and ban records past
/// their history (from memory and the store); updates the gauges.
async fn sweep_security_state(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let s = shared.clone();
        let swept = tokio::task::spawn_blocking(move || {
            let keys = s.metrics.rate_limiters.sweep();
            let forgotten = s.bans.sweep();
            if let Some(c) = &s.cluster {
                c.limits.sweep();
            }
            (keys, forgotten)
        })
        .await;
        let Ok((keys, forgotten)) = swept else {
            continue;
        };
        shared.metrics.rate_limit_keys.set(keys as i64);
        shared
            .metrics
            .bans_active
            .set(shared.bans.active().len() as i64);
        if !forgotten.is_empty() {
            shared.events.write_detached(move |store| {
                if let Err(e) = crate::bans::remove(store, &forgotten) {
                    tracing::error!(error = %e, "removing expired bans from the store failed");
                }
            });
        }
    }
}

/// Sessions: every `persist_every`, writes changed sessions in one transaction and updates
/// the gauges; at each run of the cleanup schedule (`cleanup_every` or `cleanup_schedule`),
/// closes expired sessions (`session_closed` events), forgets old failed-login windows, and
/// deletes ended sessions past retention from the store (suspicious ones are kept).
async fn session_housekeeping(
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    started: std::time::SystemTime,
) {
    use crate::schedule::{until, Job};
    use std::time::SystemTime;
    let mut last_cleanup = started;
    loop {
        // Read each round, so a reload's schedule applies from the last cleanup.
        let (persist_every, next_cleanup) = {
            let rt = shared.runtime.load();
            let next = rt.sessions.cleanup.next_after(last_cleanup);
            (rt.sessions.persist_every, next)
        };
        shared
            .events
            .next_runs
            .set(Job::SessionCleanup, next_cleanup);
        let wait = next_cleanup.map_or(persist_every, |at| {
            persist_every.min(until(at, SystemTime::now()))
        });
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let cleanup = next_cleanup.is_some_and(|at| SystemTime::now() >= at);
        if cleanup {
            last_cleanup = SystemTime::now();
        }
        let s = shared.clone();
        let _ = tokio::task::spawn_blocking(move || session_pass(&s, cleanup)).await;
    }
}

/// One housekeeping pass (see [`session_housekeeping`]); public for tests.
pub fn session_pass(shared: &Shared, cleanup: bool) {
    use crate::events::EventType;
    use crate::session::session_event;
    let sessions = &shared.sessions;
    let now = sessions.clock.now();
    let rt = shared.runtime.load();
    if cleanup {
        let closed = sessions.table.sweep(now, |app| rt.app(app));
        for s in &closed {
            if let (Some(cluster), Some(app)) = (&shared.cluster, rt.app(&s.app)) {
                crate::cluster::sync::session_expired(cluster, app, s);
            }
            let reason = s.end_reason.as_deref().unwrap_or("expired");
            shared.events.sink.audit(
                session_event(
                    EventType::SessionClosed,
                    format!("session closed: {reason}"),
                    s,
                )
                .detail("reason", reason),
            );
        }
        let window = rt
            .apps
            .iter()
            .map(|a| a.brute_force.window_micros)
            .max()
            .unwrap_or(0);
        sessions.brute_force.sweep(now, window);
        let cutoff = now.saturating_sub(rt.sessions.retention.as_micros() as u64);
        shared.events.write_detached(move |store| {
            if let Err(e) = crate::session::store::purge(store, cutoff) {
                tracing::error!(error = %e, "removing old sessions from the store failed");
            }
        });
    }
    crate::session::persist(&shared.events, sessions.table.take_dirty());
    let (active, suspicious, _) = sessions.table.stats();
    shared.metrics.sessions_active.set(active as i64);
    shared.metrics.sessions_suspicious.set(suspicious as i64);
    shared
        .metrics
        .login_locks_active
        .set(sessions.brute_force.locks(now).len() as i64);
}

/// The first backup and session-cleanup runs after `started` (as the jobs compute them).
fn first_runs(
    shared: &Shared,
    started: std::time::SystemTime,
) -> (Option<std::time::SystemTime>, Option<std::time::SystemTime>) {
    let backup = shared
        .events
        .settings()
        .backup
        .schedule
        .as_ref()
        .and_then(|s| s.next_after(started));
    let cleanup = shared.runtime.load().sessions.cleanup.next_after(started);
    (backup, cleanup)
}

/// Writes a backup at each run of `events.backup`'s schedule (`every` or a cron
/// `schedule`). The schedule is read again at least once a minute, so a reload applies.
async fn scheduled_backups(
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    started: std::time::SystemTime,
) {
    use crate::schedule::{until, Job};
    use std::time::{Duration, SystemTime};
    let mut last = started;
    loop {
        let next = shared
            .events
            .settings()
            .backup
            .schedule
            .as_ref()
            .and_then(|s| s.next_after(last));
        shared.events.next_runs.set(Job::Backup, next);
        let minute = Duration::from_secs(60);
        let wait = next.map_or(minute, |at| minute.min(until(at, SystemTime::now())));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if next.is_none_or(|at| SystemTime::now() < at) {
            continue;
        }
        last = SystemTime::now();
        let events = shared.events.clone();
        match tokio::task::spawn_blocking(move || events.backup_now()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "scheduled backup failed"),
            Err(e) => tracing::error!(error = %e, "scheduled backup failed"),
        }
    }
}

async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
    match s {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}
