//! The compiled runtime: a validated config turned into the immutable structures the request
//! path reads (router, pools, trusted proxies, limits, per-listener TLS and hyper builders).
//!
//! [`Runtime::compile`] collects every error it finds, each located in the file, and does
//! not touch the running gateway: activation (swapping it in, replacing certificates,
//! starting health checks) is done by the caller only when compilation succeeded. A bad
//! reload therefore leaves the old runtime serving.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::bans::BanSettings;
use crate::client_ip::{parse_net, TrustedProxies};
use crate::config::{ConfigErrors, KeyPath, LimitsSection, LoadedConfig};
use crate::events::backup::BackupSources;
use crate::events::{BackupSchedule, EventSettings, RetentionPolicy};
use crate::ip_rules::{Defaults, IpRuleSet, RuleSpec};
use crate::metrics::{Metrics, RouteMetrics};
use crate::proxy::route::Route;
use crate::proxy::upstream::{Pool, Target};
use crate::rate_limit::{KeySource, Policy, WindowSpec};
use crate::routing::Router;
use crate::server::{ConnBuilders, ListenerRuntime};
use crate::session::{AppPolicy, SessionSettings};
use crate::tls::{self, CertStore, NamedCert, SniResolver};

/// Whether missing development certificates are acceptable (they are generated at start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompileMode {
    /// `gateway check`: nothing is generated; a dev certificate yet to be made is fine.
    Check,
    /// Start or reload: every file must be there.
    Run,
}

/// A listener's address and limit, used once at start (changing them needs a restart).
#[derive(Debug, Clone)]
pub struct ListenerBind {
    pub name: String,
    pub addr: SocketAddr,
    pub max_connections: usize,
}

#[derive(Debug, Clone)]
pub struct AdminSettings {
    pub enabled: bool,
    pub bind: SocketAddr,
    /// `[admin] metrics_bind`: the metrics-and-health-only listener.
    pub metrics_bind: Option<SocketAddr>,
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    /// `[[admin.tokens]]`, validated (unique names, one secret source each).
    pub tokens: Vec<NamedToken>,
}

/// One `[[admin.tokens]]` entry: a name, a role, and where its secret is.
#[derive(Debug, Clone)]
pub struct NamedToken {
    pub name: String,
    pub role: crate::config::AdminRole,
    pub source: crate::secrets::SecretSource,
}

pub struct Runtime {
    pub generation: u64,
    pub router: Router,
    pub pools: Vec<Arc<Pool>>,
    pub listeners: Vec<ListenerRuntime>,
    pub listener_binds: Vec<ListenerBind>,
    pub trusted: TrustedProxies,
    pub limits: LimitsSection,
    /// `[requests]`, compiled.
    pub requests: RequestPolicy,
    pub access_log: bool,
    pub unmatched: RouteMetrics,
    pub admin: AdminSettings,
    pub shutdown_grace: Duration,
    pub cert_store: Arc<CertStore>,
    /// `[tls] hsts`, for responses over TLS.
    pub hsts: Option<http::HeaderValue>,
    pub dev_cert: Option<(PathBuf, PathBuf)>,
    /// `server.data_dir`, resolved.
    pub data_dir: PathBuf,
    pub events: EventSettings,
    /// IP rules from the config (the API's rules are merged in by [`crate::app`]).
    pub ip: IpConfig,
    pub bans: BanSettings,
    /// Rate limits for requests that match no route (the policies without a route scope).
    pub unmatched_limits: Vec<Arc<Policy>>,
    /// `[sessions]`.
    pub sessions: SessionSettings,
    /// `[[apps]]`.
    pub apps: Vec<Arc<AppPolicy>>,
    /// The compiled WAF (`None`: no rule files configured).
    pub waf: Option<Arc<crate::waf::Waf>>,
    /// `[[alerts.webhooks]]`, validated (started once, at start).
    pub alerts: Vec<crate::alerts::WebhookSettings>,
    /// `[network] egress_allow`: where upstreams and webhooks may be reached.
    pub egress: crate::network::Egress,
    /// `[cluster]` (used at start; a change needs a restart).
    pub cluster: Option<crate::cluster::ClusterSettings>,
    /// The config as written, and the directory its relative paths start from (for
    /// checks that read it as the operator wrote it, such as `gateway posture`).
    pub source: Arc<crate::config::RawConfig>,
    pub base_dir: PathBuf,
}

/// `[requests]`, validated: what phase 1 enforces beyond the framing.
#[derive(Debug, Clone)]
pub struct RequestPolicy {
    /// Dropped from requests of peers that are not trusted proxies.
    pub untrusted_drop: Vec<http::HeaderName>,
    /// Bit `n` is set when a name of length `n` is in `untrusted_drop` (64 and longer: bit 0).
    pub untrusted_lengths: u64,
    pub drop_underscore_headers: bool,
    /// Lower-case `Upgrade` protocol names that are tunnelled.
    pub upgrades: Vec<String>,
    /// Decode gzip/deflate request bodies for inspection (otherwise any coding is 415).
    pub decode_content: bool,
    pub max_decompression_ratio: usize,
    pub body_charsets: Vec<String>,
    /// Prefix length that keys an IPv6 client.
    pub ipv6_prefix: u8,
}

impl RequestPolicy {
    /// A header field dropped from peers that are not trusted proxies.
    pub fn drops(&self, name: &http::HeaderName) -> bool {
        let n = name.as_str();
        if self.drop_underscore_headers && n.as_bytes().contains(&b'_') {
            return true;
        }
        // Most names are ruled out by their length alone.
        let bit = if n.len() < 64 { 1u64 << n.len() } else { 1 };
        self.untrusted_lengths & bit != 0 && self.untrusted_drop.contains(name)
    }
}

impl Default for RequestPolicy {
    fn default() -> Self {
        let raw = crate::config::RequestsSection::default();
        let untrusted_drop: Vec<http::HeaderName> = raw
            .untrusted_headers
            .iter()
            .filter_map(|h| http::HeaderName::from_bytes(h.as_bytes()).ok())
            .collect();
        RequestPolicy {
            untrusted_lengths: lengths_of(&untrusted_drop),
            untrusted_drop,
            drop_underscore_headers: raw.drop_underscore_headers,
            upgrades: raw.upgrades,
            decode_content: false,
            max_decompression_ratio: raw.max_decompression_ratio,
            body_charsets: raw.body_charsets,
            ipv6_prefix: raw.ipv6_prefix,
        }
    }
}

/// The length mask of [`RequestPolicy::untrusted_lengths`].
fn lengths_of(names: &[http::HeaderName]) -> u64 {
    names
        .iter()
        .map(|n| n.as_str().len())
        .fold(0, |m, l| m | if l < 64 { 1 << l } else { 1 })
}

fn compile_requests(cfg: &LoadedConfig, errs: &mut ConfigErrors) -> RequestPolicy {
    let r = &cfg.raw.requests;
    let at = KeyPath::root().key("requests");
    let mut untrusted_drop = Vec::new();
    for (i, h) in r.untrusted_headers.iter().enumerate() {
        match http::HeaderName::from_bytes(h.as_bytes()) {
            Ok(n) => untrusted_drop.push(n),
            Err(_) => errs.push(cfg.error(
                &at.key("untrusted_headers").index(i),
                format!("`{h}` is not a header name"),
            )),
        }
    }
    for (i, u) in r.upgrades.iter().enumerate() {
        if u.is_empty() || !u.bytes().all(|b| b.is_ascii_graphic() && b != b',') {
            errs.push(cfg.error(
                &at.key("upgrades").index(i),
                format!("`{u}` is not a protocol name"),
            ));
        }
    }
    if r.max_decompression_ratio == 0 {
        errs.push(cfg.error(&at.key("max_decompression_ratio"), "must be at least 1"));
    }
    if !(1..=128).contains(&r.ipv6_prefix) {
        errs.push(cfg.error(&at.key("ipv6_prefix"), "must be between 1 and 128"));
    }
    RequestPolicy {
        untrusted_lengths: lengths_of(&untrusted_drop),
        untrusted_drop,
        drop_underscore_headers: r.drop_underscore_headers,
        upgrades: r.upgrades.iter().map(|u| u.to_ascii_lowercase()).collect(),
        decode_content: r.content_encoding == crate::config::ContentEncodingPolicy::Decode,
        max_decompression_ratio: r.max_decompression_ratio.max(1),
        body_charsets: r.body_charsets.clone(),
        ipv6_prefix: r.ipv6_prefix.clamp(1, 128),
    }
}

impl Runtime {
    /// The app named `name`.
    pub fn app(&self, name: &str) -> Option<&AppPolicy> {
        self.apps.iter().find(|a| &*a.name == name).map(|a| &**a)
    }
}

/// The `[ip_rules]` section, validated.
#[derive(Clone)]
pub struct IpConfig {
    pub rules: Vec<RuleSpec>,
    pub defaults: Defaults,
    pub admin_networks: Vec<ipnet::IpNet>,
    pub bypass_admin: bool,
}

impl IpConfig {
    /// Compiles these rules together with the API's.
    pub fn build(
        &self,
        api: &[RuleSpec],
        metrics: &Metrics,
    ) -> Result<IpRuleSet, Vec<crate::ip_rules::RuleError>> {
        IpRuleSet::build(
            &self.rules,
            api,
            self.defaults.clone(),
            self.admin_networks.clone(),
            self.bypass_admin,
            &metrics.ip_rule_requests,
        )
    }
}

fn compile_ip_rules(cfg: &LoadedConfig, metrics: &Metrics, errs: &mut ConfigErrors) -> IpConfig {
    let raw = &cfg.raw;
    let s = &raw.ip_rules;
    let at = KeyPath::root().key("ip_rules");
    let mut admin_networks = Vec::new();
    for (i, n) in s.admin_networks.iter().enumerate() {
        match crate::ip_rules::parse_cidr(n) {
            Ok(net) => admin_networks.push(net),
            Err(m) => errs.push(cfg.error(&at.key("admin_networks").index(i), m)),
        }
    }
    if s.bypass_admin && s.admin_networks.is_empty() {
        errs.push(cfg.error(
            &at.key("bypass_admin"),
            "needs at least one entry in `admin_networks`",
        ));
    }
    let mut names = HashSet::new();
    let rules: Vec<RuleSpec> = s
        .rules
        .iter()
        .enumerate()
        .map(|(i, r)| {
            if r.name.is_empty() || r.name.starts_with("api-") {
                errs.push(cfg.error(
                    &at.key("rules").index(i).key("name"),
                    "must not be empty or start with `api-`",
                ));
            } else if !names.insert(r.name.as_str()) {
                errs.push(cfg.error(
                    &at.key("rules").index(i).key("name"),
                    format!("rule `{}` is defined twice", r.name),
                ));
            }
            for (j, route) in r.routes.iter().enumerate() {
                if !raw.routes.iter().any(|x| &x.name == route) {
                    errs.push(cfg.error(
                        &at.key("rules").index(i).key("routes").index(j),
                        format!("no route named `{route}`"),
                    ));
                }
            }
            RuleSpec {
                id: r.name.clone(),
                action: r.action,
                cidr: r.cidr.clone(),
                priority: r.priority,
                hosts: r.hosts.clone(),
                routes: r.routes.clone(),
                path_prefixes: r.path_prefixes.clone(),
                comment: r.comment.clone(),
            }
        })
        .collect();
    let ip = IpConfig {
        rules,
        defaults: Defaults {
            global: s.default,
            listeners: raw
                .listeners
                .iter()
                .filter_map(|l| l.ip_default.map(|a| (l.name.clone(), a)))
                .collect(),
            routes: raw
                .routes
                .iter()
                .filter_map(|r| r.ip_default.map(|a| (r.name.clone(), a)))
                .collect(),
        },
        admin_networks,
        bypass_admin: s.bypass_admin,
    };
    if let Err(rule_errs) = ip.build(&[], metrics) {
        for e in rule_errs {
            errs.push(cfg.error(&at.key("rules").index(e.index).key(e.field), e.message));
        }
    }
    ip
}

/// Each policy with the routes it is scoped to.
type ScopedPolicy = (Arc<Policy>, Vec<String>);

fn compile_rate_limits(
    cfg: &LoadedConfig,
    metrics: &Metrics,
    errs: &mut ConfigErrors,
) -> Vec<ScopedPolicy> {
    let raw = &cfg.raw;
    let mut out = Vec::new();
    let mut names = HashSet::new();
    for (i, p) in raw.rate_limits.iter().enumerate() {
        let at = KeyPath::root().key("rate_limits").index(i);
        if p.name.is_empty() || p.name.contains(['"', ',', ';', ' ']) {
            errs.push(cfg.error(
                &at.key("name"),
                "must be non-empty, without spaces, quotes, commas or semicolons",
            ));
            continue;
        } else if !names.insert(p.name.as_str()) {
            errs.push(cfg.error(
                &at.key("name"),
                format!("policy `{}` is defined twice", p.name),
            ));
        }
        let key = match KeySource::parse(&p.key) {
            Ok(k) => k,
            Err(m) => {
                errs.push(cfg.error(&at.key("key"), m));
                continue;
            }
        };
        if p.limits.is_empty() || p.limits.len() > crate::rate_limit::MAX_WINDOWS {
            errs.push(cfg.error(
                &at.key("limits"),
                format!("between 1 and {} windows", crate::rate_limit::MAX_WINDOWS),
            ));
        }
        if p.max_keys == 0 {
            errs.push(cfg.error(&at.key("max_keys"), "must be at least 1"));
        }
        let mut windows = Vec::new();
        for (j, w) in p.limits.iter().enumerate() {
            let wat = at.key("limits").index(j);
            if w.requests == 0 {
                errs.push(cfg.error(&wat.key("requests"), "must be at least 1"));
                continue;
            }
            if w.per < Duration::from_secs(1) {
                errs.push(cfg.error(&wat.key("per"), "must be at least 1s"));
                continue;
            }
            if w.burst == Some(0) {
                errs.push(cfg.error(&wat.key("burst"), "must be at least 1"));
                continue;
            }
            windows.push(WindowSpec {
                requests: w.requests,
                per: w.per,
                burst: w.burst.unwrap_or(w.requests),
            });
        }
        for (j, route) in p.routes.iter().enumerate() {
            if !raw.routes.iter().any(|r| &r.name == route) {
                errs.push(cfg.error(
                    &at.key("routes").index(j),
                    format!("no route named `{route}`"),
                ));
            }
        }
        let policy = metrics.rate_limiters.policy(
            &p.name,
            key,
            &windows,
            p.max_keys.max(1),
            metrics.rate_limited.with_label_values(&[p.name.as_str()]),
        );
        out.push((Arc::new(policy), p.routes.clone()));
    }
    out
}

/// The policies for one route: its own list when it has one, else every policy scoped to
/// it or unscoped.
fn route_policies(policies: &[ScopedPolicy], r: &crate::config::RouteSection) -> Vec<Arc<Policy>> {
    match &r.rate_limits {
        Some(names) => names
            .iter()
            .filter_map(|n| policies.iter().find(|p| &*p.0.name == n.as_str()))
            .map(|p| p.0.clone())
            .collect(),
        None => policies
            .iter()
            .filter(|(_, routes)| routes.is_empty() || routes.contains(&r.name))
            .map(|(p, _)| p.clone())
            .collect(),
    }
}

impl Runtime {
    pub fn compile(
        cfg: &LoadedConfig,
        metrics: &Metrics,
        resolver: &Arc<SniResolver>,
        generation: u64,
        mode: CompileMode,
    ) -> Result<Runtime, ConfigErrors> {
        let raw = &cfg.raw;
        let mut errs = ConfigErrors::default();
        let root = KeyPath::root();

        // Trusted proxies.
        let mut nets = Vec::new();
        for (i, s) in raw.server.trusted_proxies.iter().enumerate() {
            match parse_net(s) {
                Ok(n) => nets.push(n),
                Err(m) => {
                    errs.push(cfg.error(&KeyPath::of(&["server", "trusted_proxies"]).index(i), m))
                }
            }
        }

        // Timeouts and limits.
        let t = &raw.timeouts;
        for (key, d) in [
            ("tls_handshake", t.tls_handshake),
            ("header_read", t.header_read),
            ("idle", t.idle),
        ] {
            if d.is_zero() {
                errs.push(cfg.error(
                    &KeyPath::of(&["timeouts", key]),
                    "must be greater than zero",
                ));
            }
        }
        let l = &raw.limits;
        for (key, v) in [
            ("max_header_count", l.max_header_count as u64),
            ("max_header_bytes", l.max_header_bytes as u64),
            ("max_uri_bytes", l.max_uri_bytes as u64),
        ] {
            if v == 0 {
                errs.push(cfg.error(&KeyPath::of(&["limits", key]), "must be greater than zero"));
            }
        }

        // Certificates.
        let mut named = Vec::new();
        let mut dev_cert = None;
        for (i, c) in raw.tls.certificates.iter().enumerate() {
            let at = KeyPath::of(&["tls", "certificates"]).index(i);
            let cert = cfg.resolve(&c.cert);
            let key = cfg.resolve(&c.key);
            let missing = !cert.exists() || !key.exists();
            if i == 0 && raw.tls.dev_self_signed {
                dev_cert = Some((cert.clone(), key.clone()));
                if missing && mode == CompileMode::Check {
                    continue;
                }
            }
            for (j, n) in c.server_names.iter().enumerate() {
                if n.is_empty() || n.contains(' ') || (n.contains('*') && !n.starts_with("*.")) {
                    errs.push(cfg.error(
                        &at.key("server_names").index(j),
                        format!("`{n}` is not a valid server name"),
                    ));
                }
            }
            match tls::load_certified_key(&cert, &key) {
                Ok(k) => named.push(NamedCert {
                    key: k,
                    server_names: if c.server_names.is_empty() && i == 0 && raw.tls.dev_self_signed
                    {
                        vec!["localhost".into(), "127.0.0.1".into()]
                    } else {
                        c.server_names.clone()
                    },
                }),
                Err(e) => errs.push(cfg.error(&at.key("cert"), e.to_string())),
            }
        }
        let cert_store = Arc::new(CertStore::new(named));
        let have_certs = !raw.tls.certificates.is_empty();

        // Listeners.
        let mut listeners = Vec::new();
        let mut binds = Vec::new();
        if raw.listeners.is_empty() {
            errs.push(cfg.error(
                &root.key("listeners"),
                "at least one [[listeners]] entry is required",
            ));
        }
        let mut names = HashSet::new();
        for (i, ls) in raw.listeners.iter().enumerate() {
            let at = root.key("listeners").index(i);
            if ls.name.is_empty() {
                errs.push(cfg.error(&at.key("name"), "must not be empty"));
            } else if !names.insert(ls.name.as_str()) {
                errs.push(cfg.error(
                    &at.key("name"),
                    format!("listener `{}` is defined twice", ls.name),
                ));
            }
            let addr = match ls.bind.parse::<SocketAddr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    errs.push(cfg.error(
                        &at.key("bind"),
                        format!("`{}` is not an address:port", ls.bind),
                    ));
                    None
                }
            };
            if ls.max_connections == 0 {
                errs.push(cfg.error(&at.key("max_connections"), "must be greater than zero"));
            }
            let acceptor = if ls.tls {
                if !have_certs {
                    errs.push(cfg.error(
                        &at.key("tls"),
                        "a TLS listener needs at least one [[tls.certificates]] entry",
                    ));
                }
                if ls.h2c {
                    errs.push(cfg.error(
                        &at.key("h2c"),
                        "h2c is for plain listeners; TLS listeners offer h2 through ALPN",
                    ));
                }
                if ls.alpn.is_empty() {
                    errs.push(cfg.error(&at.key("alpn"), "offer at least one protocol"));
                }
                for (j, p) in ls.alpn.iter().enumerate() {
                    if p != "h2" && p != "http/1.1" {
                        errs.push(cfg.error(
                            &at.key("alpn").index(j),
                            format!("`{p}` is not supported; use \"h2\" or \"http/1.1\""),
                        ));
                    }
                }
                Some(tokio_rustls::TlsAcceptor::from(tls::server_config(
                    resolver.clone(),
                    &ls.alpn,
                )))
            } else {
                None
            };
            if let Some(addr) = addr {
                binds.push(ListenerBind {
                    name: ls.name.clone(),
                    addr,
                    max_connections: ls.max_connections,
                });
            }
            listeners.push(ListenerRuntime {
                name: ls.name.as_str().into(),
                tls: acceptor,
                h2c: ls.h2c,
                proxy_protocol: ls.proxy_protocol,
                builders: Arc::new(ConnBuilders::new(l)),
                tls_handshake_timeout: t.tls_handshake,
                idle_timeout: t.idle,
                header_read_timeout: t.header_read,
                max_connections_per_ip: ls.max_connections_per_ip,
            });
        }

        // Upstream pools.
        let egress = compile_egress(cfg, &mut errs);
        let cluster = crate::cluster::compile(cfg, &mut errs);
        let mut pools: Vec<Arc<Pool>> = Vec::new();
        let mut pool_names = HashSet::new();
        for (i, u) in raw.upstreams.iter().enumerate() {
            let at = root.key("upstreams").index(i);
            if u.name.is_empty() {
                errs.push(cfg.error(&at.key("name"), "must not be empty"));
            } else if !pool_names.insert(u.name.as_str()) {
                errs.push(cfg.error(
                    &at.key("name"),
                    format!("upstream `{}` is defined twice", u.name),
                ));
            }
            if u.servers.is_empty() {
                errs.push(cfg.error(&at.key("servers"), "at least one server is required"));
            }
            let mut targets = Vec::new();
            for (j, s) in u.servers.iter().enumerate() {
                match Target::parse(s) {
                    Ok(t) => {
                        if let Target::Http { authority, .. } = &t {
                            let host = authority.host().trim_matches(['[', ']']);
                            if let Ok(ip) = host.parse::<std::net::IpAddr>() {
                                if !egress.allows(ip) {
                                    errs.push(cfg.error(
                                        &at.key("servers").index(j),
                                        format!("{ip} is outside [network] egress_allow"),
                                    ));
                                }
                            }
                        }
                        targets.push(t)
                    }
                    Err(m) => errs.push(cfg.error(&at.key("servers").index(j), m)),
                }
            }
            for (key, d) in [
                ("connect_timeout", u.connect_timeout),
                ("response_timeout", u.response_timeout),
            ] {
                if d.is_zero() {
                    errs.push(cfg.error(&at.key(key), "must be greater than zero"));
                }
            }
            if let Some(hc) = &u.health_check {
                let hat = at.key("health_check");
                if !hc.path.starts_with('/') {
                    errs.push(cfg.error(&hat.key("path"), "must start with `/`"));
                }
                if hc.interval.is_zero() || hc.timeout.is_zero() {
                    errs.push(cfg.error(&hat, "interval and timeout must be greater than zero"));
                }
            }
            if targets.len() == u.servers.len() {
                pools.push(Arc::new(Pool::new(
                    u,
                    targets,
                    metrics.pool_metrics(&u.name),
                    &egress,
                )));
            }
        }

        // Rate-limit policies (before routes, which refer to them).
        let policies = compile_rate_limits(cfg, metrics, &mut errs);
        for (i, r) in raw.routes.iter().enumerate() {
            for (j, name) in r.rate_limits.iter().flatten().enumerate() {
                if !policies.iter().any(|p| &*p.0.name == name.as_str()) {
                    errs.push(cfg.error(
                        &root.key("routes").index(i).key("rate_limits").index(j),
                        format!("no rate-limit policy named `{name}`"),
                    ));
                }
            }
        }

        // The WAF (rule files are read and compiled here, once per load).
        let waf = crate::waf::config::compile(cfg, &mut errs);

        // Protected apps (before routes, which point to them).
        let apps = crate::session::policy::compile(cfg, &mut errs);
        let session_settings = crate::session::compile_settings(cfg, &mut errs);

        // Routes.
        let mut routes = Vec::new();
        let mut route_names = HashSet::new();
        if raw.routes.is_empty() {
            errs.push(cfg.error(
                &root.key("routes"),
                "at least one [[routes]] entry is required",
            ));
        }
        for (i, r) in raw.routes.iter().enumerate() {
            let at = root.key("routes").index(i);
            if r.name.is_empty() {
                errs.push(cfg.error(&at.key("name"), "must not be empty"));
            } else if !route_names.insert(r.name.as_str()) {
                errs.push(cfg.error(
                    &at.key("name"),
                    format!("route `{}` is defined twice", r.name),
                ));
            }
            if r.slow_threshold.is_some_and(|d| d.is_zero()) {
                errs.push(cfg.error(&at.key("slow_threshold"), "must be greater than zero"));
            }
            if !r.path_prefix.starts_with('/') {
                errs.push(cfg.error(&at.key("path_prefix"), "must start with `/`"));
            }
            if let Some(h) = &r.host {
                if h.is_empty()
                    || h.contains('/')
                    || h.contains(' ')
                    || (h.contains('*') && h != "*" && !h.starts_with("*."))
                {
                    errs.push(cfg.error(&at.key("host"), format!("`{h}` is not a host name")));
                }
            }
            let pool = pools.iter().find(|p| &*p.name == r.upstream.as_str());
            match pool {
                Some(pool) => routes.push(Arc::new(Route {
                    name: r.name.as_str().into(),
                    host: r.host.clone(),
                    path_prefix: if r.case_insensitive {
                        r.path_prefix.to_ascii_lowercase()
                    } else {
                        r.path_prefix.clone()
                    },
                    pool: pool.clone(),
                    max_body_bytes: r.max_body_bytes.unwrap_or(l.max_body_bytes),
                    metrics: metrics.route_metrics(&r.name),
                    slow_threshold: r.slow_threshold.unwrap_or(raw.performance.slow_threshold),
                    log_all: r.log_all.unwrap_or(raw.performance.log_all),
                    rate_limits: route_policies(&policies, r),
                    app: apps
                        .iter()
                        .find(|(_, routes)| routes.contains(&r.name))
                        .map(|(a, _)| a.clone()),
                    waf: crate::waf::config::route_policy(cfg, i),
                    path_escapes: r.path_escapes,
                    forward_target: r.forward_target,
                    case_insensitive: r.case_insensitive,
                })),
                None if raw.upstreams.iter().any(|u| u.name == r.upstream) => {}
                None => errs.push(cfg.error(
                    &at.key("upstream"),
                    format!("no upstream named `{}`", r.upstream),
                )),
            }
        }

        // Admin.
        let a = &raw.admin;
        let admin_bind = match a.bind.parse::<SocketAddr>() {
            Ok(addr) => {
                if a.enabled && !addr.ip().is_loopback() && !a.allow_public {
                    errs.push(cfg.error(&KeyPath::of(&["admin", "bind"]),
                        format!("`{}` is not a loopback address; set admin.allow_public = true to expose the admin port", a.bind)));
                }
                addr
            }
            Err(_) => {
                errs.push(cfg.error(
                    &KeyPath::of(&["admin", "bind"]),
                    format!("`{}` is not an address:port", a.bind),
                ));
                SocketAddr::from(([127, 0, 0, 1], 0))
            }
        };
        let metrics_bind = a
            .metrics_bind
            .as_ref()
            .and_then(|m| match m.parse::<SocketAddr>() {
                Ok(addr) => Some(addr),
                Err(_) => {
                    errs.push(cfg.error(
                        &KeyPath::of(&["admin", "metrics_bind"]),
                        format!("`{m}` is not an address:port"),
                    ));
                    None
                }
            });
        if a.token.as_deref().is_some_and(|t| t.len() < 16) {
            errs.push(cfg.error(
                &KeyPath::of(&["admin", "token"]),
                "must be at least 16 characters",
            ));
        }
        let admin_tokens = compile_admin_tokens(cfg, &mut errs);
        let hsts = raw.tls.hsts.as_deref().and_then(|v| {
            let ok = v.trim_start().to_ascii_lowercase().starts_with("max-age=");
            match http::HeaderValue::from_str(v) {
                Ok(h) if ok => Some(h),
                _ => {
                    errs.push(cfg.error(
                        &KeyPath::of(&["tls", "hsts"]),
                        format!("`{v}` is not a Strict-Transport-Security value (`max-age=<seconds>[; includeSubDomains][; preload]`)"),
                    ));
                    None
                }
            }
        });
        let alerts = compile_alerts(cfg, &mut errs);

        if raw.performance.slow_threshold.is_zero() {
            errs.push(cfg.error(
                &KeyPath::of(&["performance", "slow_threshold"]),
                "must be greater than zero",
            ));
        }
        let events = compile_events(cfg, &mut errs);
        let requests = compile_requests(cfg, &mut errs);
        let ip = compile_ip_rules(cfg, metrics, &mut errs);
        let b = &raw.bans;
        if b.threshold == 0 {
            errs.push(cfg.error(&KeyPath::of(&["bans", "threshold"]), "must be at least 1"));
        }
        for (key, d) in [
            ("window", b.window),
            ("duration", b.duration),
            ("max_duration", b.max_duration),
        ] {
            if d.is_zero() {
                errs.push(cfg.error(&KeyPath::of(&["bans", key]), "must be greater than zero"));
            }
        }
        if !(b.multiplier >= 1.0 && b.multiplier <= 100.0) {
            errs.push(cfg.error(
                &KeyPath::of(&["bans", "multiplier"]),
                "must be between 1 and 100",
            ));
        }
        let bans = BanSettings {
            enabled: b.enabled,
            threshold: b.threshold.max(1),
            window: b.window,
            duration: b.duration,
            max_duration: b.max_duration.max(b.duration),
            multiplier: b.multiplier,
            weight_rate_limited: b.weights.rate_limited,
            weight_waf_blocked: b.weights.waf_blocked,
            weight_login_failed: b.weights.login_failed,
        };
        let unmatched_limits: Vec<Arc<Policy>> = policies
            .iter()
            .filter(|(_, routes)| routes.is_empty())
            .map(|(p, _)| p.clone())
            .collect();

        errs.into_result(())?;
        Ok(Runtime {
            generation,
            router: Router::new(&routes),
            pools,
            listeners,
            listener_binds: binds,
            trusted: TrustedProxies::new(nets),
            limits: l.clone(),
            requests,
            access_log: raw.server.access_log,
            unmatched: metrics.route_metrics("(none)"),
            admin: AdminSettings {
                enabled: a.enabled,
                bind: admin_bind,
                metrics_bind,
                token: a.token.clone(),
                token_file: a.token_file.as_ref().map(|p| cfg.resolve(p)),
                tokens: admin_tokens,
            },
            shutdown_grace: raw.server.shutdown_grace,
            cert_store,
            hsts,
            dev_cert,
            data_dir: cfg.resolve(&raw.server.data_dir),
            events,
            ip,
            bans,
            unmatched_limits,
            sessions: session_settings,
            apps: apps.into_iter().map(|(a, _)| a).collect(),
            waf,
            alerts,
            egress,
            cluster,
            source: Arc::new(raw.clone()),
            base_dir: cfg.base_dir.clone(),
        })
    }
}

/// `[network] egress_allow`, parsed; webhooks whose URL is an address literal outside it
/// are errors here (upstreams are checked where they are parsed).
fn compile_egress(cfg: &LoadedConfig, errs: &mut ConfigErrors) -> crate::network::Egress {
    let mut nets = Vec::new();
    for (i, n) in cfg.raw.network.egress_allow.iter().enumerate() {
        match n.parse::<ipnet::IpNet>() {
            Ok(net) => nets.push(net),
            Err(_) => errs.push(cfg.error(
                &KeyPath::of(&["network", "egress_allow"]).index(i),
                format!("`{n}` is not a network (CIDR, e.g. 10.0.0.0/8)"),
            )),
        }
    }
    let egress = crate::network::Egress::new(nets);
    if let Some(c) = &cfg.raw.cluster {
        let keys = c
            .url
            .iter()
            .map(|u| (KeyPath::of(&["cluster", "url"]), u))
            .chain(
                c.nodes
                    .iter()
                    .enumerate()
                    .map(|(i, u)| (KeyPath::of(&["cluster", "nodes"]).index(i), u)),
            );
        for (key, url) in keys {
            if let Some(ip) =
                crate::network::host_port(url).and_then(|(h, _)| h.parse::<std::net::IpAddr>().ok())
            {
                if !egress.allows(ip) {
                    errs.push(cfg.error(&key, format!("{ip} is outside [network] egress_allow")));
                }
            }
        }
    }
    for (i, w) in cfg.raw.alerts.webhooks.iter().enumerate() {
        let host = w
            .url
            .parse::<http::Uri>()
            .ok()
            .and_then(|u| u.host().map(|h| h.trim_matches(['[', ']']).to_string()));
        if let Some(ip) = host.and_then(|h| h.parse::<std::net::IpAddr>().ok()) {
            if !egress.allows(ip) {
                errs.push(cfg.error(
                    &KeyPath::of(&["alerts", "webhooks"]).index(i).key("url"),
                    format!("{ip} is outside [network] egress_allow"),
                ));
            }
        }
    }
    egress
}

/// `[[alerts.webhooks]]`, validated: unique names, an http(s) URL with a host, known risk
/// and event types, one secret source, sane queue and timeouts.
fn compile_alerts(
    cfg: &LoadedConfig,
    errs: &mut ConfigErrors,
) -> Vec<crate::alerts::WebhookSettings> {
    use crate::alerts::WebhookSettings;
    use crate::events::model::{EventType, Risk};
    use crate::secrets::SecretSource;
    let mut out: Vec<WebhookSettings> = Vec::new();
    for (i, w) in cfg.raw.alerts.webhooks.iter().enumerate() {
        let at = KeyPath::of(&["alerts", "webhooks"]).index(i);
        let before = errs.len();
        if w.name.is_empty()
            || w.name.len() > 64
            || !w
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            errs.push(cfg.error(&at.key("name"), "must be 1 to 64 letters, digits or `._-`"));
        } else if out.iter().any(|o| o.name == w.name) {
            errs.push(cfg.error(
                &at.key("name"),
                format!("a webhook named `{}` exists already", w.name),
            ));
        }
        let url = match w.url.parse::<http::Uri>() {
            Ok(u)
                if matches!(u.scheme_str(), Some("http" | "https"))
                    && u.host().is_some_and(|h| !h.is_empty()) =>
            {
                Some(u)
            }
            _ => {
                errs.push(cfg.error(
                    &at.key("url"),
                    format!("`{}` is not an http:// or https:// URL with a host", w.url),
                ));
                None
            }
        };
        let min_risk = w.min_risk.parse::<Risk>().unwrap_or_else(|e| {
            errs.push(cfg.error(&at.key("min_risk"), e));
            Risk::Critical
        });
        let mut types = Vec::new();
        for (j, t) in w.types.iter().enumerate() {
            match t.parse::<EventType>() {
                Ok(t) => types.push(t),
                Err(e) => errs.push(cfg.error(&at.key("types").index(j), e)),
            }
        }
        let secret = match (&w.secret_file, &w.secret_env) {
            (Some(f), None) => Some(SecretSource::File(cfg.resolve(f))),
            (None, Some(v)) if !v.is_empty() => Some(SecretSource::Env(v.clone())),
            _ => {
                errs.push(cfg.error(
                    &at,
                    "needs exactly one of `secret_file` or `secret_env` (alerts are always signed)",
                ));
                None
            }
        };
        if !(1..=100_000).contains(&w.queue) {
            errs.push(cfg.error(&at.key("queue"), "must be between 1 and 100000"));
        }
        if w.timeout.is_zero() {
            errs.push(cfg.error(&at.key("timeout"), "must be greater than zero"));
        }
        if w.backoff.is_zero() {
            errs.push(cfg.error(&at.key("backoff"), "must be greater than zero"));
        }
        if w.ca_file.is_some()
            && url
                .as_ref()
                .is_some_and(|u| u.scheme_str() != Some("https"))
        {
            errs.push(cfg.error(&at.key("ca_file"), "only applies to an https:// URL"));
        }
        if let (Some(url), Some(secret), true) = (url, secret, errs.len() == before) {
            out.push(WebhookSettings {
                name: w.name.clone(),
                url,
                secret,
                min_risk,
                types,
                queue: w.queue,
                max_retries: w.max_retries,
                timeout: w.timeout,
                backoff: w.backoff,
                ca_file: w.ca_file.as_ref().map(|p| cfg.resolve(p)),
            });
        }
    }
    out
}

/// `[[admin.tokens]]`, validated: names are what events and investigations record, so
/// they must be unique and printable; each token has exactly one secret source.
fn compile_admin_tokens(cfg: &LoadedConfig, errs: &mut ConfigErrors) -> Vec<NamedToken> {
    use crate::secrets::SecretSource;
    let a = &cfg.raw.admin;
    let legacy = a.token.is_some() || a.token_file.is_some();
    let mut out: Vec<NamedToken> = Vec::new();
    for (i, t) in a.tokens.iter().enumerate() {
        let at = KeyPath::of(&["admin", "tokens"]).index(i);
        let valid_name = !t.name.is_empty()
            && t.name.len() <= 64
            && t.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._@-".contains(&b));
        if !valid_name {
            errs.push(cfg.error(&at.key("name"), "must be 1 to 64 letters, digits or `._@-`"));
        } else if t.name == "me" {
            errs.push(cfg.error(
                &at.key("name"),
                "`me` is reserved (an assignee of `me` means the caller)",
            ));
        } else if out.iter().any(|o| o.name == t.name) || legacy && t.name == "admin" {
            errs.push(cfg.error(
                &at.key("name"),
                format!(
                    "`{}` is already the name of another token{}",
                    t.name,
                    if t.name == "admin" {
                        " (admin.token / admin.token_file is the token named `admin`)"
                    } else {
                        ""
                    }
                ),
            ));
        }
        let source = match (&t.token_file, &t.token_env) {
            (Some(f), None) => SecretSource::File(cfg.resolve(f)),
            (None, Some(v)) if !v.is_empty() => SecretSource::Env(v.clone()),
            _ => {
                errs.push(cfg.error(
                    &at,
                    "needs exactly one of `token_file` or `token_env` (a token is never written in the config)",
                ));
                continue;
            }
        };
        out.push(NamedToken {
            name: t.name.clone(),
            role: t.role,
            source,
        });
    }
    out
}

/// The `[events]` section, validated, with paths resolved under `server.data_dir`.
fn compile_events(cfg: &LoadedConfig, errs: &mut ConfigErrors) -> EventSettings {
    let raw = &cfg.raw;
    let e = &raw.events;
    let data_dir = cfg.resolve(&raw.server.data_dir);
    let at = |k: &[&str]| {
        let mut p = KeyPath::root().key("events");
        for k in k {
            p = p.key(k);
        }
        p
    };
    if e.queue_capacity < 64 {
        errs.push(cfg.error(&at(&["queue_capacity"]), "must be at least 64"));
    }
    if e.batch_max_events == 0 {
        errs.push(cfg.error(&at(&["batch_max_events"]), "must be greater than zero"));
    }
    for (keys, d) in [
        (&["batch_max_delay"][..], e.batch_max_delay),
        (&["retention", "audit"][..], e.retention.audit),
        (&["retention", "performance"][..], e.retention.performance),
    ] {
        if d.is_zero() {
            errs.push(cfg.error(&at(keys), "must be greater than zero"));
        }
    }
    use crate::schedule::{Schedule, ScheduleKeys};
    let archive_schedule = crate::schedule::compile(
        cfg,
        errs,
        ScheduleKeys {
            at: at(&["retention"]),
            every_key: "run_every",
            every: e.retention.run_every,
            schedule_key: "schedule",
            schedule: e.retention.schedule.as_deref(),
            time_zone_key: "time_zone",
            time_zone: e.retention.time_zone.as_deref(),
            default_every: Some(crate::config::default_retention_every()),
            min_every: Duration::from_secs(1),
        },
    )
    .unwrap_or(Schedule::Every(crate::config::default_retention_every()));
    let backup_schedule = crate::schedule::compile(
        cfg,
        errs,
        ScheduleKeys {
            at: at(&["backup"]),
            every_key: "every",
            every: e.backup.every,
            schedule_key: "schedule",
            schedule: e.backup.schedule.as_deref(),
            time_zone_key: "time_zone",
            time_zone: e.backup.time_zone.as_deref(),
            default_every: None,
            min_every: Duration::from_secs(60),
        },
    );
    if e.backup
        .max_age
        .is_some_and(|d| d < Duration::from_secs(3600))
    {
        errs.push(cfg.error(&at(&["backup", "max_age"]), "must be at least 1h"));
    }
    if e.backup.keep == 0 {
        errs.push(cfg.error(&at(&["backup", "keep"]), "must be at least 1"));
    }
    let config_file = cfg.path.clone();
    EventSettings {
        store_path: data_dir.join(&e.store_file),
        queue_capacity: e.queue_capacity.max(64),
        batch_max_events: e.batch_max_events.max(1),
        batch_max_delay: e.batch_max_delay,
        retention: RetentionPolicy {
            audit: e.retention.audit,
            performance: e.retention.performance,
            schedule: archive_schedule,
            archive_dir: data_dir.join(&e.retention.archive_dir),
        },
        backup: BackupSchedule {
            schedule: backup_schedule,
            retention: crate::events::backup::Retention {
                keep: e.backup.keep.max(1),
                max_age: e.backup.max_age,
            },
            dir: data_dir.join(&e.backup.dir),
            sources: BackupSources {
                config_file,
                rules_dir: cfg.base_dir.join("rules"),
                session_key: Some(data_dir.join(&raw.sessions.key_file)),
                include_secrets: e.backup.include_secrets,
            },
        },
    }
}
