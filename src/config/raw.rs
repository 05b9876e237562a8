//! The shape of `gateway.toml` as serde reads it. Defaults live here; validation does not.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub admin: AdminSection,
    #[serde(default)]
    pub tls: TlsSection,
    #[serde(default)]
    pub listeners: Vec<ListenerSection>,
    #[serde(default)]
    pub timeouts: TimeoutsSection,
    #[serde(default)]
    pub limits: LimitsSection,
    /// Request hardening: identity headers, upgrades, body encodings, client keys.
    #[serde(default)]
    pub requests: RequestsSection,
    #[serde(default)]
    pub upstreams: Vec<UpstreamSection>,
    #[serde(default)]
    pub routes: Vec<RouteSection>,
    #[serde(default)]
    pub events: EventsSection,
    #[serde(default)]
    pub performance: PerformanceSection,
    #[serde(default)]
    pub ip_rules: IpRulesSection,
    #[serde(default)]
    pub rate_limits: Vec<RateLimitSection>,
    #[serde(default)]
    pub bans: BansSection,
    #[serde(default)]
    pub sessions: SessionsSection,
    /// Protected applications: session cookie, login endpoint, brute-force defence.
    #[serde(default)]
    pub apps: Vec<AppSection>,
    /// The web application firewall.
    #[serde(default)]
    pub waf: WafSection,
    #[serde(default)]
    pub alerts: AlertsSection,
    #[serde(default)]
    pub network: NetworkSection,
    /// `[cluster]`: state shared with other instances; absent: this instance alone.
    #[serde(default)]
    pub cluster: Option<ClusterSection>,
}

/// `[cluster]`: several gateways sharing rate limits, bans, login locks and session
/// revocations through Redis (read at start; a change needs a restart).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// `"redis"`, the one backend.
    pub backend: String,
    /// One Redis primary: `redis://host:port/db` or `rediss://` (TLS); no password in
    /// it: see below.
    #[serde(default)]
    pub url: Option<String>,
    /// A Redis Cluster instead: some of its nodes (`redis://` or `rediss://`, no
    /// password), from which the client learns the others.
    #[serde(default)]
    pub nodes: Vec<String>,
    /// The Redis password (AUTH), read from a file...
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// ...or an environment variable.
    #[serde(default)]
    pub password_env: Option<String>,
    /// The Redis user (ACL) the password belongs to; absent: `default`.
    #[serde(default)]
    pub username: Option<String>,
    /// PEM CA certificates a `rediss://` server's certificate must chain to (a private CA),
    /// instead of the system's and the webpki roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// This instance's name in events and `/api/v1/cluster`; default: the host name.
    #[serde(default)]
    pub instance: Option<String>,
    /// The longest a request waits on Redis before deciding locally.
    #[serde(default = "default_cluster_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Most rate-limit tokens one instance reserves per Redis round trip for one key.
    #[serde(default = "default_cluster_reserve")]
    pub reserve_max: u32,
    /// Prefix of every Redis key and channel (several deployments may share a Redis).
    #[serde(default = "default_cluster_prefix")]
    pub key_prefix: String,
    /// With Redis unreachable, requests under a rate-limit policy are counted by this
    /// instance alone (`"local"`) or refused with a 503 (`"refuse"`: fail closed).
    #[serde(default)]
    pub rate_limits_when_down: WhenDown,
    /// With Redis unreachable, `/readyz` still answers 200 (`true`: this instance serves on
    /// local state) or 503 (`false`: a load balancer moves traffic to instances that still
    /// reach Redis).
    #[serde(default = "yes")]
    pub ready_when_down: bool,
}

/// `[cluster] rate_limits_when_down`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenDown {
    #[default]
    Local,
    Refuse,
}

impl ClusterSection {
    /// Every Redis address the configuration names (`url` or `nodes`).
    pub fn urls(&self) -> impl Iterator<Item = &str> {
        self.url.iter().chain(self.nodes.iter()).map(String::as_str)
    }
}

fn default_cluster_timeout() -> Duration {
    Duration::from_millis(50)
}
fn default_cluster_reserve() -> u32 {
    100
}
fn default_cluster_prefix() -> String {
    "gateway".into()
}

/// `[network]`: where the gateway may connect.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSection {
    /// Networks upstreams, health checks and webhooks may reach (CIDR); empty: anywhere.
    #[serde(default)]
    pub egress_allow: Vec<String>,
}

/// `[alerts]`: where events worth waking someone for are pushed.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsSection {
    #[serde(default)]
    pub webhooks: Vec<WebhookSection>,
}

/// One `[[alerts.webhooks]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSection {
    pub name: String,
    /// `http://` or `https://` URL the alerts are POSTed to.
    pub url: String,
    /// The HMAC-SHA256 signing secret: a file (created random when missing) or a variable.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    #[serde(default)]
    pub secret_env: Option<String>,
    /// Events at or above this risk are sent.
    #[serde(default = "default_alert_min_risk")]
    pub min_risk: String,
    /// Events of these types are sent whatever their risk.
    #[serde(default = "default_alert_types")]
    pub types: Vec<String>,
    /// Alerts waiting for delivery; more are dropped (and counted).
    #[serde(default = "default_alert_queue")]
    pub queue: usize,
    #[serde(default = "default_alert_retries")]
    pub max_retries: u32,
    #[serde(default = "default_alert_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// The first wait before a retry; doubled for each further one (at most 5 minutes).
    #[serde(default = "default_alert_backoff", with = "humantime_serde")]
    pub backoff: Duration,
    /// Extra CA certificates (PEM) trusted for an `https://` URL.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

fn default_alert_min_risk() -> String {
    "critical".into()
}

fn default_alert_types() -> Vec<String> {
    [
        "brute_force_detected",
        "session_suspicious",
        "backup_failed",
        "archive_failed",
        "performance_alert",
    ]
    .map(String::from)
    .to_vec()
}

fn default_alert_queue() -> usize {
    1000
}

fn default_alert_retries() -> u32 {
    5
}

fn default_alert_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_alert_backoff() -> Duration {
    Duration::from_secs(1)
}

/// `[waf]`: rule files, scoring, body inspection and argument limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WafSection {
    /// Rule files or `dir/*.toml`; empty: no WAF.
    #[serde(default)]
    pub rules: Vec<PathBuf>,
    /// `off`, `detect` or `block`; routes may override with `waf = "..."`.
    #[serde(default)]
    pub mode: crate::waf::Mode,
    #[serde(default = "default_paranoia")]
    pub paranoia_level: u8,
    #[serde(default = "default_inbound_threshold")]
    pub inbound_threshold: u32,
    /// Bytes of a request body inspected.
    #[serde(default = "default_waf_body_limit")]
    pub body_limit: u64,
    #[serde(default)]
    pub over_limit: crate::waf::OverLimit,
    #[serde(default = "default_waf_body_timeout", with = "humantime_serde")]
    pub body_timeout: Duration,
    #[serde(default = "default_max_args")]
    pub max_args: usize,
    #[serde(default = "default_max_arg_bytes")]
    pub max_arg_bytes: usize,
    #[serde(default = "default_max_total_arg_bytes")]
    pub max_total_arg_bytes: usize,
    #[serde(default)]
    pub exclusions: Vec<WafExclusionSection>,
    /// The OWASP Core Rule Set, run after the native rules.
    #[serde(default)]
    pub crs: Option<CrsSection>,
    #[serde(default)]
    pub graphql: GraphqlSection,
}

/// `[waf.graphql]`: limits on GraphQL documents (in a `query` argument or an
/// `application/graphql` body).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphqlSection {
    /// Allow `__schema` / `__type` introspection queries.
    #[serde(default = "yes")]
    pub introspection: bool,
    /// Deepest nesting of selection sets.
    #[serde(default = "default_graphql_depth")]
    pub max_depth: usize,
    /// `alias: field` pairs per document (alias batching).
    #[serde(default = "default_graphql_aliases")]
    pub max_aliases: usize,
    /// GraphQL documents per request (a batched JSON array counts each).
    #[serde(default = "default_graphql_batch")]
    pub max_batch: usize,
}

impl Default for GraphqlSection {
    fn default() -> Self {
        GraphqlSection {
            introspection: true,
            max_depth: default_graphql_depth(),
            max_aliases: default_graphql_aliases(),
            max_batch: default_graphql_batch(),
        }
    }
}

fn default_graphql_depth() -> usize {
    15
}
fn default_graphql_aliases() -> usize {
    30
}
fn default_graphql_batch() -> usize {
    10
}

/// `[waf.crs]`: where CRS v4 is and how it runs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrsSection {
    /// The CRS directory: `crs-setup.conf` (or `.example`) and `rules/*.conf`.
    pub path: PathBuf,
    /// CRS's blocking paranoia level (1–4).
    #[serde(default = "default_paranoia")]
    pub paranoia_level: u8,
    /// Rules up to this level run and are reported without counting (default: as
    /// `paranoia_level`).
    #[serde(default)]
    pub detection_paranoia_level: Option<u8>,
    /// CRS's inbound anomaly score threshold.
    #[serde(default = "default_threshold")]
    pub inbound_threshold: u32,
    /// Load even when some rules cannot be translated (each is reported).
    #[serde(default)]
    pub allow_partial: bool,
    /// Further CRS setup variables, as `tx.<name>` (e.g. `allowed_methods`).
    #[serde(default)]
    pub setup: std::collections::BTreeMap<String, String>,
    /// CRS rule ids switched off everywhere.
    #[serde(default)]
    pub remove_rules: Vec<u32>,
    /// Count an attack family's CRS score only when a second signal confirms it (a
    /// detector, a second CRS rule of the family, or a native rule): see `waf::confirm`.
    #[serde(default = "yes")]
    pub confirm: bool,
}

impl Default for WafSection {
    fn default() -> Self {
        toml::from_str("").expect("defaults")
    }
}

/// `[[waf.exclusions]]`: rules (or one target of them) switched off on some paths.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WafExclusionSection {
    pub rules: Vec<u32>,
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// Route names; empty: every route.
    #[serde(default)]
    pub routes: Vec<String>,
    /// e.g. `body_args:comment`; absent: the whole rule.
    #[serde(default)]
    pub target: Option<String>,
}

fn default_paranoia() -> u8 {
    1
}
fn default_threshold() -> u32 {
    5
}
fn default_waf_body_limit() -> u64 {
    128 * 1024
}
fn default_waf_body_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_args() -> usize {
    1000
}
fn default_max_arg_bytes() -> usize {
    64 * 1024
}
fn default_max_total_arg_bytes() -> usize {
    1024 * 1024
}

/// `[sessions]`: the session table itself (shared by every app).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionsSection {
    /// The secret that keys session-cookie hashes, under `server.data_dir` (created when
    /// missing, mode 0600).
    #[serde(default = "default_session_key_file")]
    pub key_file: PathBuf,
    /// How often expired sessions are closed and old records dropped (default 15m)...
    #[serde(default, with = "humantime_serde")]
    pub cleanup_every: Option<Duration>,
    /// ...or at the wall-clock times of this cron expression.
    #[serde(default)]
    pub cleanup_schedule: Option<String>,
    /// The IANA time zone `cleanup_schedule` is read in (default UTC).
    #[serde(default)]
    pub cleanup_time_zone: Option<String>,
    /// How often last-activity times are written to the store.
    #[serde(default = "default_session_persist", with = "humantime_serde")]
    pub persist_every: Duration,
    /// Ended sessions are kept in the store this long (suspicious ones until deleted by hand).
    #[serde(default = "default_session_retention", with = "humantime_serde")]
    pub retention: Duration,
    /// Most sessions tracked at once; past it new sessions are not tracked (and counted).
    #[serde(default = "default_max_sessions")]
    pub max_sessions: usize,
}

impl Default for SessionsSection {
    fn default() -> Self {
        SessionsSection {
            key_file: default_session_key_file(),
            cleanup_every: None,
            cleanup_schedule: None,
            cleanup_time_zone: None,
            persist_every: default_session_persist(),
            retention: default_session_retention(),
            max_sessions: default_max_sessions(),
        }
    }
}

/// One `[[apps]]` entry: an application behind some routes whose sessions and logins the
/// gateway protects.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSection {
    pub name: String,
    pub routes: Vec<String>,
    #[serde(default)]
    pub session: Option<AppSessionSection>,
    #[serde(default)]
    pub login: Option<LoginSection>,
    #[serde(default)]
    pub logout: Option<EndpointSection>,
    #[serde(default)]
    pub brute_force: BruteForceSection,
}

/// `[apps.session]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSessionSection {
    /// `upstream`: the app's own cookie; `signed`: a `__Host-` cookie the gateway issues.
    #[serde(default)]
    pub mode: crate::session::Mode,
    /// The cookie name (required in upstream mode; `__Host-gw_session` when signed).
    #[serde(default)]
    pub cookie: Option<String>,
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    #[serde(default = "default_absolute_timeout", with = "humantime_serde")]
    pub absolute_timeout: Duration,
    #[serde(default = "five_usize")]
    pub max_per_user: usize,
    #[serde(default)]
    pub on_limit: crate::session::OnLimit,
    /// IP changes (and User-Agent changes, when counted) that make a session suspicious;
    /// 0 turns the check off.
    #[serde(default = "three")]
    pub ip_change_threshold: u32,
    #[serde(default = "yes")]
    pub user_agent_change_counts: bool,
    #[serde(default)]
    pub revoke_suspicious: bool,
    /// A cookie for a session the gateway never saw created: `reject` or `adopt`.
    #[serde(default)]
    pub unknown: crate::session::Unknown,
    /// What an invalid session gets: `reject` (401), `redirect` (to `login_page`), `strip`.
    #[serde(default)]
    pub invalid: crate::session::InvalidAction,
    #[serde(default)]
    pub login_page: Option<String>,
    /// Path prefixes that need a valid session.
    #[serde(default)]
    pub require_paths: Vec<String>,
    /// Signed mode: signing keys, newest first (the first signs, all verify).
    #[serde(default)]
    pub keys: Vec<SigningKeySection>,
    /// Signed mode: a request header that carries the session's user to the upstream
    /// (always removed from what the client sent).
    #[serde(default)]
    pub user_header: Option<String>,
}

impl Default for AppSessionSection {
    fn default() -> Self {
        AppSessionSection {
            mode: Default::default(),
            cookie: None,
            idle_timeout: default_idle_timeout(),
            absolute_timeout: default_absolute_timeout(),
            max_per_user: 5,
            on_limit: Default::default(),
            ip_change_threshold: 3,
            user_agent_change_counts: true,
            revoke_suspicious: false,
            unknown: Default::default(),
            invalid: Default::default(),
            login_page: None,
            require_paths: Vec::new(),
            keys: Vec::new(),
            user_header: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningKeySection {
    pub id: String,
    #[serde(default)]
    pub secret: Option<String>,
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
}

/// `[apps.login]`: how the gateway recognises a login and reads its outcome.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginSection {
    #[serde(default = "default_login_method")]
    pub method: String,
    pub path: String,
    /// A form field or JSON member (dotted for nested) of the login request naming the user.
    #[serde(default)]
    pub user_field: Option<String>,
    /// A response header from the upstream naming the user (removed before the client).
    #[serde(default)]
    pub user_header: Option<String>,
    #[serde(default = "default_success_status")]
    pub success_status: Vec<u16>,
    /// When set, a success must redirect to a location starting with this.
    #[serde(default)]
    pub success_location: Option<String>,
    /// When set, a success must carry this response header.
    #[serde(default)]
    pub success_header: Option<String>,
    /// Largest login body read for the user name (bigger: 413).
    #[serde(default = "default_login_body")]
    pub max_body_bytes: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSection {
    #[serde(default = "default_login_method")]
    pub method: String,
    pub path: String,
}

/// `[apps.brute_force]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BruteForceSection {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Failed logins per user name within `window`.
    #[serde(default = "five")]
    pub max_failures: u32,
    /// Failed logins per client address within `window`.
    #[serde(default = "five")]
    pub ip_max_failures: u32,
    /// Distinct user names failing from one address within `window` (credential stuffing).
    #[serde(default = "four")]
    pub stuffing_users: u32,
    #[serde(default = "default_login_window", with = "humantime_serde")]
    pub window: Duration,
    /// How long a user name is locked after `max_failures` (0s: not locked).
    #[serde(default = "default_login_window", with = "humantime_serde")]
    pub lock_for: Duration,
    /// Ban the address through the ban list on detection.
    #[serde(default = "yes")]
    pub ban_ip: bool,
}

impl Default for BruteForceSection {
    fn default() -> Self {
        BruteForceSection {
            enabled: true,
            max_failures: 5,
            ip_max_failures: 5,
            stuffing_users: 4,
            window: default_login_window(),
            lock_for: default_login_window(),
            ban_ip: true,
        }
    }
}

fn default_login_window() -> Duration {
    Duration::from_secs(15 * 60)
}
fn default_session_key_file() -> PathBuf {
    PathBuf::from("session.key")
}
pub fn default_session_cleanup() -> Duration {
    Duration::from_secs(15 * 60)
}
fn default_session_persist() -> Duration {
    Duration::from_secs(30)
}
fn default_session_retention() -> Duration {
    Duration::from_secs(90 * 24 * 3600)
}
fn default_max_sessions() -> usize {
    1_000_000
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(3600)
}
fn default_absolute_timeout() -> Duration {
    Duration::from_secs(12 * 3600)
}
fn five_usize() -> usize {
    5
}
fn three() -> u32 {
    3
}
fn four() -> u32 {
    4
}
fn default_login_method() -> String {
    "POST".into()
}
fn default_success_status() -> Vec<u16> {
    vec![200, 302, 303]
}
fn default_login_body() -> usize {
    64 * 1024
}

/// IP access rules: first match (by priority) wins.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct IpRulesSection {
    /// What happens when no rule matches.
    #[serde(default)]
    pub default: crate::ip_rules::Action,
    /// Trusted admin networks.
    #[serde(default)]
    pub admin_networks: Vec<String>,
    /// Requests from `admin_networks` are never denied by a rule (and never banned
    /// automatically).
    #[serde(default)]
    pub bypass_admin: bool,
    #[serde(default)]
    pub rules: Vec<IpRuleEntry>,
}

/// One `[[ip_rules.rules]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpRuleEntry {
    pub name: String,
    pub action: crate::ip_rules::Action,
    pub cidr: String,
    #[serde(default)]
    pub priority: Option<i64>,
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub routes: Vec<String>,
    #[serde(default)]
    pub path_prefixes: Vec<String>,
    #[serde(default)]
    pub comment: Option<String>,
}

/// One `[[rate_limits]]` policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSection {
    pub name: String,
    /// `"ip"`, `"route"` or `"header:<name>"`.
    #[serde(default = "default_rate_key")]
    pub key: String,
    pub limits: Vec<RateWindowEntry>,
    /// Routes it applies to; empty: every route without its own `rate_limits` list.
    #[serde(default)]
    pub routes: Vec<String>,
    /// Most keys tracked per window; beyond it new keys share one bucket.
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateWindowEntry {
    pub requests: u32,
    #[serde(with = "humantime_serde")]
    pub per: Duration,
    /// Requests allowed at once (default: `requests`).
    #[serde(default)]
    pub burst: Option<u32>,
}

/// Automatic bans.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BansSection {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Violation score that bans.
    #[serde(default = "default_ban_threshold")]
    pub threshold: u32,
    #[serde(default = "default_ban_window", with = "humantime_serde")]
    pub window: Duration,
    /// First ban's length.
    #[serde(default = "default_ban_duration", with = "humantime_serde")]
    pub duration: Duration,
    #[serde(default = "default_ban_max", with = "humantime_serde")]
    pub max_duration: Duration,
    /// Each earlier ban (within 7 days) multiplies the duration by this.
    #[serde(default = "default_ban_multiplier")]
    pub multiplier: f64,
    #[serde(default)]
    pub weights: BanWeights,
}

impl Default for BansSection {
    fn default() -> Self {
        BansSection {
            enabled: true,
            threshold: default_ban_threshold(),
            window: default_ban_window(),
            duration: default_ban_duration(),
            max_duration: default_ban_max(),
            multiplier: default_ban_multiplier(),
            weights: BanWeights::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BanWeights {
    #[serde(default = "one")]
    pub rate_limited: u32,
    #[serde(default = "five")]
    pub waf_blocked: u32,
    #[serde(default = "two")]
    pub login_failed: u32,
}

impl Default for BanWeights {
    fn default() -> Self {
        BanWeights {
            rate_limited: 1,
            waf_blocked: 5,
            login_failed: 2,
        }
    }
}

/// The event store under `data_dir`: queueing, batching, retention, backups.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsSection {
    /// Store file, relative to `server.data_dir`.
    #[serde(default = "default_store_file")]
    pub store_file: PathBuf,
    /// Records the queue between the request path and the writer holds.
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
    /// A write transaction commits after this many records...
    #[serde(default = "default_batch_max_events")]
    pub batch_max_events: usize,
    /// ...or this long after the first record of the batch, whichever comes first.
    #[serde(default = "default_batch_max_delay", with = "humantime_serde")]
    pub batch_max_delay: Duration,
    #[serde(default)]
    pub retention: RetentionSection,
    #[serde(default)]
    pub backup: BackupSection,
}

impl Default for EventsSection {
    fn default() -> Self {
        EventsSection {
            store_file: default_store_file(),
            queue_capacity: default_queue_capacity(),
            batch_max_events: default_batch_max_events(),
            batch_max_delay: default_batch_max_delay(),
            retention: RetentionSection::default(),
            backup: BackupSection::default(),
        }
    }
}

/// How long records stay in the store before they are archived.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSection {
    #[serde(default = "default_audit_retention", with = "humantime_serde")]
    pub audit: Duration,
    #[serde(default = "default_perf_retention", with = "humantime_serde")]
    pub performance: Duration,
    /// How often the archive job runs (default 1h)...
    #[serde(default, with = "humantime_serde")]
    pub run_every: Option<Duration>,
    /// ...or at the wall-clock times of this cron expression (`"0 3 * * SUN"`).
    #[serde(default)]
    pub schedule: Option<String>,
    /// The IANA time zone `schedule` is read in (default UTC).
    #[serde(default)]
    pub time_zone: Option<String>,
    /// Where archive files go, relative to `server.data_dir`.
    #[serde(default = "default_archive_dir")]
    pub archive_dir: PathBuf,
}

impl Default for RetentionSection {
    fn default() -> Self {
        RetentionSection {
            audit: default_audit_retention(),
            performance: default_perf_retention(),
            run_every: None,
            schedule: None,
            time_zone: None,
            archive_dir: default_archive_dir(),
        }
    }
}

/// Scheduled backups of the store, config and rules.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupSection {
    /// How often to write a backup...
    #[serde(default, with = "humantime_serde")]
    pub every: Option<Duration>,
    /// ...or at the wall-clock times of this cron expression (`"0 2 * * *"`); neither:
    /// only on demand.
    #[serde(default)]
    pub schedule: Option<String>,
    /// The IANA time zone `schedule` is read in (default UTC).
    #[serde(default)]
    pub time_zone: Option<String>,
    /// Backups kept (the oldest are deleted).
    #[serde(default = "default_backup_keep")]
    pub keep: usize,
    /// Backups older than this are deleted (the newest is always kept); absent: by count
    /// only.
    #[serde(default, with = "humantime_serde")]
    pub max_age: Option<Duration>,
    /// Copy the config's inline secrets (admin token, signing keys) into backups as they
    /// are; by default they are replaced with `REDACTED`.
    #[serde(default)]
    pub include_secrets: bool,
    /// Where backups go, relative to `server.data_dir`.
    #[serde(default = "default_backup_dir")]
    pub dir: PathBuf,
}

impl Default for BackupSection {
    fn default() -> Self {
        BackupSection {
            every: None,
            schedule: None,
            time_zone: None,
            keep: default_backup_keep(),
            max_age: None,
            include_secrets: false,
            dir: default_backup_dir(),
        }
    }
}

/// Slow-request recording; routes may override both keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerformanceSection {
    /// A request taking longer than this (request head to end of response) is recorded.
    #[serde(default = "default_slow_threshold", with = "humantime_serde")]
    pub slow_threshold: Duration,
    /// Record every request, not only slow ones.
    #[serde(default)]
    pub log_all: bool,
}

impl Default for PerformanceSection {
    fn default() -> Self {
        PerformanceSection {
            slow_threshold: default_slow_threshold(),
            log_all: false,
        }
    }
}

/// Process-wide settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// Where the gateway keeps its state (events, generated tokens).
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Worker threads for the async runtime; 0 means one per core.
    #[serde(default)]
    pub worker_threads: usize,
    /// How long a graceful shutdown waits for in-flight requests.
    #[serde(default = "default_shutdown_grace", with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Peers whose forwarding headers (`X-Forwarded-For`, `X-Request-Id`) are believed.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// One JSON line per request on stdout.
    #[serde(default = "yes")]
    pub access_log: bool,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            data_dir: default_data_dir(),
            worker_threads: 0,
            shutdown_grace: default_shutdown_grace(),
            trusted_proxies: Vec::new(),
            access_log: true,
        }
    }
}

/// The side port for operators.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "default_admin_bind")]
    pub bind: String,
    /// Binding to a non-loopback address must be asked for explicitly.
    #[serde(default)]
    pub allow_public: bool,
    /// The bearer token, inline. `GATEWAY_ADMIN_TOKEN` overrides it.
    #[serde(default)]
    pub token: Option<String>,
    /// A file holding the bearer token; created with a random token (mode 0600) if missing.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// A second listener serving only `/metrics`, `/healthz` and `/readyz` (no API, no
    /// token), which may listen on every interface so Prometheus and container health
    /// checks reach it while the API stays on loopback.
    #[serde(default)]
    pub metrics_bind: Option<String>,
    /// Named tokens with roles (`[[admin.tokens]]`). The token above, if any, is the
    /// one named `admin` with the `admin` role.
    #[serde(default)]
    pub tokens: Vec<AdminTokenSection>,
}

/// One named admin API token: who holds it and what it may do. The secret itself is
/// never in the config: it is read from a file (created with a random token when
/// missing) or from an environment variable.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminTokenSection {
    /// Recorded as `by` / `assignee` and in the events of what the holder does.
    pub name: String,
    pub role: AdminRole,
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    #[serde(default)]
    pub token_env: Option<String>,
}

/// What an admin token may do (each role may do everything the ones before it may).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminRole {
    /// Reads: events, stats, sessions, rules, bans, performance, backups; the rule tester.
    Viewer,
    /// Also investigations, sessions (force logout, unlock), bans and IP rules.
    Operator,
    /// Everything: also reload, backups, archives.
    Admin,
}

impl AdminRole {
    pub fn as_str(self) -> &'static str {
        match self {
            AdminRole::Viewer => "viewer",
            AdminRole::Operator => "operator",
            AdminRole::Admin => "admin",
        }
    }
}

impl Default for AdminSection {
    fn default() -> Self {
        AdminSection {
            enabled: true,
            bind: default_admin_bind(),
            allow_public: false,
            token: None,
            token_file: None,
            metrics_bind: None,
            tokens: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// Generate a local CA and a localhost leaf into the first certificate's paths when
    /// those files do not exist (development only).
    #[serde(default)]
    pub dev_self_signed: bool,
    /// `Strict-Transport-Security` sent on every response over TLS (unless the upstream
    /// set its own), e.g. `"max-age=31536000; includeSubDomains"`. Unset: not sent.
    #[serde(default)]
    pub hsts: Option<String>,
    #[serde(default)]
    pub certificates: Vec<CertificateSection>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateSection {
    /// PEM chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// SNI names this certificate answers for (`*.example.com` allowed). The first
    /// certificate is also the default for clients that send no or an unknown name.
    #[serde(default)]
    pub server_names: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSection {
    pub name: String,
    pub bind: String,
    #[serde(default)]
    pub tls: bool,
    /// ALPN protocols offered on a TLS listener.
    #[serde(default = "default_alpn")]
    pub alpn: Vec<String>,
    /// Accept HTTP/2 with prior knowledge on a plain listener.
    #[serde(default)]
    pub h2c: bool,
    /// Expect a PROXY protocol v1 or v2 header before anything else.
    #[serde(default)]
    pub proxy_protocol: bool,
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Connections one client address may hold open on this listener (0: no cap).
    /// Trusted proxies are exempt; behind PROXY protocol the address is the one it names.
    #[serde(default = "default_max_connections_per_ip")]
    pub max_connections_per_ip: usize,
    /// The IP policy when no rule matches, for requests on this listener (overrides
    /// `ip_rules.default`; a route's own setting wins).
    #[serde(default)]
    pub ip_default: Option<crate::ip_rules::Action>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsSection {
    #[serde(default = "default_tls_handshake", with = "humantime_serde")]
    pub tls_handshake: Duration,
    /// Time allowed for a complete HTTP/1 request head.
    #[serde(default = "default_header_read", with = "humantime_serde")]
    pub header_read: Duration,
    /// A connection with no bytes moving either way for this long is closed.
    #[serde(default = "default_idle", with = "humantime_serde")]
    pub idle: Duration,
}

impl Default for TimeoutsSection {
    fn default() -> Self {
        TimeoutsSection {
            tls_handshake: default_tls_handshake(),
            header_read: default_header_read(),
            idle: default_idle(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    #[serde(default = "default_max_header_count")]
    pub max_header_count: usize,
    /// Sum of header name and value lengths.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    #[serde(default = "default_max_uri_bytes")]
    pub max_uri_bytes: usize,
    /// Default request body limit; routes may override it.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            max_header_count: default_max_header_count(),
            max_header_bytes: default_max_header_bytes(),
            max_uri_bytes: default_max_uri_bytes(),
            max_body_bytes: default_max_body_bytes(),
        }
    }
}

/// `[requests]`: what the gateway accepts from clients beyond the HTTP framing.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestsSection {
    /// Headers dropped from requests whose peer is not a trusted proxy.
    #[serde(default = "default_untrusted_drop")]
    pub untrusted_headers: Vec<String>,
    /// Drop header names containing `_` from untrusted peers (some servers read `_` as `-`).
    #[serde(default = "yes")]
    pub drop_underscore_headers: bool,
    /// `Upgrade` protocols that are tunnelled; any other `Upgrade` header is removed.
    #[serde(default = "default_upgrades")]
    pub upgrades: Vec<String>,
    /// A request `Content-Encoding` other than `identity`: `refuse` (415) or `decode`
    /// (gzip and deflate are decoded for inspection, others refused).
    #[serde(default)]
    pub content_encoding: ContentEncodingPolicy,
    /// Decoding stops (413) when the output outgrows the compressed body this many times.
    #[serde(default = "default_decompression_ratio")]
    pub max_decompression_ratio: usize,
    /// Charsets accepted on form, multipart and JSON bodies; others are refused (415).
    #[serde(default = "default_body_charsets")]
    pub body_charsets: Vec<String>,
    /// IPv6 clients are one client per prefix of this length (rate limits, bans, brute
    /// force): an address in a /64 costs nothing to change.
    #[serde(default = "default_ipv6_prefix")]
    pub ipv6_prefix: u8,
}

impl Default for RequestsSection {
    fn default() -> Self {
        RequestsSection {
            untrusted_headers: default_untrusted_drop(),
            drop_underscore_headers: true,
            upgrades: default_upgrades(),
            content_encoding: ContentEncodingPolicy::default(),
            max_decompression_ratio: default_decompression_ratio(),
            body_charsets: default_body_charsets(),
            ipv6_prefix: default_ipv6_prefix(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ContentEncodingPolicy {
    #[default]
    Refuse,
    Decode,
}

fn default_decompression_ratio() -> usize {
    100
}

fn default_untrusted_drop() -> Vec<String> {
    [
        "forwarded",
        "x-real-ip",
        "true-client-ip",
        "x-client-ip",
        "x-original-url",
        "x-rewrite-url",
        "x-forwarded-port",
        "x-forwarded-prefix",
        "x-forwarded-server",
        "x-forwarded-scheme",
        "x-original-forwarded-for",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}
fn default_upgrades() -> Vec<String> {
    vec!["websocket".to_string()]
}
fn default_body_charsets() -> Vec<String> {
    ["utf-8", "utf8", "us-ascii", "iso-8859-1"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}
fn default_ipv6_prefix() -> u8 {
    64
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    #[default]
    RoundRobin,
    LeastConnections,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    pub name: String,
    /// `http://host:port` entries, or `builtin:echo` for the demo upstream.
    pub servers: Vec<String>,
    #[serde(default)]
    pub balance: Balance,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Time from sending the request to receiving the response head.
    #[serde(default = "default_response_timeout", with = "humantime_serde")]
    pub response_timeout: Duration,
    /// Idle pooled connections kept per server.
    #[serde(default = "default_pool_max_idle")]
    pub pool_max_idle: usize,
    /// Extra attempts on another server for idempotent requests whose connect failed.
    #[serde(default = "default_retries")]
    pub retries: usize,
    /// Connect failures in a row that take a server out of rotation.
    #[serde(default = "default_max_fails")]
    pub max_fails: u32,
    #[serde(default = "default_eject_for", with = "humantime_serde")]
    pub eject_for: Duration,
    /// Send the client's Host header upstream (otherwise the server's authority).
    #[serde(default = "yes")]
    pub preserve_host: bool,
    #[serde(default)]
    pub health_check: Option<HealthCheckSection>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckSection {
    #[serde(default = "default_health_path")]
    pub path: String,
    #[serde(default = "default_health_interval", with = "humantime_serde")]
    pub interval: Duration,
    #[serde(default = "default_health_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(default = "default_health_threshold")]
    pub healthy_threshold: u32,
    #[serde(default = "default_health_threshold")]
    pub unhealthy_threshold: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSection {
    pub name: String,
    /// Exact host, `*.example.com`, or absent for any host.
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default = "default_path_prefix")]
    pub path_prefix: String,
    pub upstream: String,
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
    /// Overrides `performance.slow_threshold` for this route.
    #[serde(default, with = "humantime_serde")]
    pub slow_threshold: Option<Duration>,
    /// Overrides `performance.log_all` for this route.
    #[serde(default)]
    pub log_all: Option<bool>,
    /// The IP policy when no rule matches, for this route.
    #[serde(default)]
    pub ip_default: Option<crate::ip_rules::Action>,
    /// The rate-limit policies for this route, replacing the ones that would apply
    /// (`[]`: none).
    #[serde(default)]
    pub rate_limits: Option<Vec<String>>,
    /// The WAF mode on this route (`off`, `detect`, `block`); default `waf.mode`.
    #[serde(default)]
    pub waf: Option<crate::waf::Mode>,
    /// Encoded slashes and backslashes, NUL and non-UTF-8 escapes in the path: `reject`
    /// (400) or `keep` them percent-encoded.
    #[serde(default)]
    pub path_escapes: crate::canonical::Escapes,
    /// `canonical` (what was checked) or `original` (the bytes the client sent).
    #[serde(default)]
    pub forward_target: crate::pipeline::checks::ForwardTarget,
    /// The application matches paths without regard to ASCII case: the route's prefix
    /// matches any case, and every decision takes the lower-cased path.
    #[serde(default)]
    pub case_insensitive: bool,
}

fn default_rate_key() -> String {
    "ip".to_string()
}
fn default_max_keys() -> usize {
    200_000
}
fn default_ban_threshold() -> u32 {
    50
}
fn default_ban_window() -> Duration {
    Duration::from_secs(600)
}
fn default_ban_duration() -> Duration {
    Duration::from_secs(900)
}
fn default_ban_max() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_ban_multiplier() -> f64 {
    2.0
}
fn one() -> u32 {
    1
}
fn two() -> u32 {
    2
}
fn five() -> u32 {
    5
}

fn default_store_file() -> PathBuf {
    PathBuf::from("events.redb")
}
fn default_queue_capacity() -> usize {
    65_536
}
fn default_batch_max_events() -> usize {
    2_048
}
fn default_batch_max_delay() -> Duration {
    Duration::from_millis(20)
}
const DAY: u64 = 24 * 3600;
fn default_audit_retention() -> Duration {
    Duration::from_secs(730 * DAY)
}
fn default_perf_retention() -> Duration {
    Duration::from_secs(30 * DAY)
}
pub fn default_retention_every() -> Duration {
    Duration::from_secs(3600)
}
fn default_archive_dir() -> PathBuf {
    PathBuf::from("archive")
}
fn default_backup_keep() -> usize {
    7
}
fn default_backup_dir() -> PathBuf {
    PathBuf::from("backups")
}
fn default_slow_threshold() -> Duration {
    Duration::from_secs(1)
}

fn yes() -> bool {
    true
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("data")
}
fn default_shutdown_grace() -> Duration {
    Duration::from_secs(30)
}
fn default_admin_bind() -> String {
    "127.0.0.1:9901".to_string()
}
fn default_alpn() -> Vec<String> {
    vec!["h2".to_string(), "http/1.1".to_string()]
}
fn default_max_connections_per_ip() -> usize {
    256
}

fn default_max_connections() -> usize {
    10_000
}
fn default_tls_handshake() -> Duration {
    Duration::from_secs(10)
}
fn default_header_read() -> Duration {
    Duration::from_secs(10)
}
fn default_idle() -> Duration {
    Duration::from_secs(60)
}
fn default_max_header_count() -> usize {
    100
}
fn default_max_header_bytes() -> usize {
    32 * 1024
}
fn default_max_uri_bytes() -> usize {
    8 * 1024
}
fn default_max_body_bytes() -> u64 {
    10 * 1024 * 1024
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_response_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_pool_max_idle() -> usize {
    256
}
fn default_retries() -> usize {
    1
}
fn default_max_fails() -> u32 {
    3
}
fn default_eject_for() -> Duration {
    Duration::from_secs(10)
}
fn default_health_path() -> String {
    "/".to_string()
}
fn default_health_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_health_timeout() -> Duration {
    Duration::from_secs(2)
}
/// One critical match (5) blocks; one notice (2) or warning (3) alone does not.
fn default_inbound_threshold() -> u32 {
    5
}
/// Consecutive results that mark a server up or down.
fn default_health_threshold() -> u32 {
    2
}
fn default_path_prefix() -> String {
    "/".to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The defaults the README documents; a swapped default function fails here.
    #[test]
    fn documented_defaults() {
        let waf: WafSection = toml::from_str("").unwrap();
        assert_eq!(
            waf.inbound_threshold, 5,
            "README: [waf] inbound_threshold = 5"
        );
        assert_eq!(waf.paranoia_level, 1);
        let crs: CrsSection = toml::from_str("path = \"crs\"").unwrap();
        assert_eq!(
            crs.inbound_threshold, 5,
            "README: [waf.crs] inbound_threshold = 5"
        );
        let hc: HealthCheckSection = toml::from_str("").unwrap();
        assert_eq!(
            (hc.healthy_threshold, hc.unhealthy_threshold),
            (2, 2),
            "README: health_check thresholds 2"
        );
        assert_eq!(hc.interval, Duration::from_secs(5));
        assert_eq!(hc.timeout, Duration::from_secs(2));
    }
}
