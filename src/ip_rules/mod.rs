//! IP access rules: ordered allow/deny rules on addresses and CIDR blocks, first match wins.
//!
//! Rules come from `gateway.toml` (`[[ip_rules.rules]]`) and from the admin API (stored in
//! the event store's redb file, so they survive restarts); both compile into one
//! [`IpRuleSet`]. Order is by `priority` (lower first), then config rules in file order, then
//! API rules in creation order.
//!
//! Cost: the set holds one prefix trie per address family (prefix-trie's tree bitmap). At
//! compile time every prefix gets the answer for its whole chain of covering prefixes: the
//! first unscoped rule (in order) among it and its ancestors, and the scoped rules that come
//! before that one. A decision is then one longest-prefix-match lookup (a walk of at most
//! 32 or 128 bits, in strides) plus a scope check for each scoped rule ahead of the winner
//! (usually none): its cost depends on the prefix length, not on how many rules exist, and
//! it allocates nothing. Memory: about 100 bytes per rule plus the trie (a prefix with
//! scoped ancestors also lists those). Compiled once per config load or API change and
//! swapped in whole; the request path only reads it.

mod store;

pub use store::{load_dynamic, remove_dynamic, save_dynamic};

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use prefix_trie::PrefixMap;
use prometheus::{IntCounter, IntCounterVec};
use serde::{Deserialize, Serialize};

/// What a rule, or the default policy, does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    #[default]
    Allow,
    Deny,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        }
    }
}

/// A rule as written in the config file or sent to the API.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Config rules: the name given; API rules: assigned (`api-…`).
    #[serde(default)]
    pub id: String,
    pub action: Action,
    /// An address (`203.0.113.7`, `2001:db8::1`) or a CIDR block (`203.0.113.0/24`).
    pub cidr: String,
    /// Lower runs first. Config rules default to their position (10, 20, …); API rules to 0.
    #[serde(default)]
    pub priority: Option<i64>,
    /// Only requests for these hosts (`example.com`, `*.example.com`); empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Only requests matched to these routes; empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<String>,
    /// Only paths starting with one of these; empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub path_prefixes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// Where a rule came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Config,
    Api,
}

/// One compiled rule.
pub struct Rule {
    pub spec: RuleSpec,
    pub net: IpNet,
    pub priority: i64,
    pub source: Source,
    hosts: Vec<String>,
    counter: OnceLock<IntCounter>,
    counters: IntCounterVec,
}

impl Rule {
    fn is_scoped(&self) -> bool {
        !(self.hosts.is_empty()
            && self.spec.routes.is_empty()
            && self.spec.path_prefixes.is_empty())
    }

    fn scope_matches(&self, req: &RequestView<'_>) -> bool {
        (self.hosts.is_empty() || self.hosts.iter().any(|h| host_matches(h, req.host)))
            && (self.spec.routes.is_empty()
                || req
                    .route
                    .is_some_and(|r| self.spec.routes.iter().any(|x| x == r)))
            && (self.spec.path_prefixes.is_empty()
                || self
                    .spec
                    .path_prefixes
                    .iter()
                    .any(|p| req.path.starts_with(p.as_str())))
    }

    /// Requests this rule decided (in `/metrics` as `gateway_ip_rule_requests_total`).
    /// The series outlives the rule object: a set rebuilt when another rule is added
    /// holds a new object whose handle is taken on its first hit, so until then the
    /// series is looked up (without creating one: a rule that never decided has none).
    /// Admin API only, never on the request path.
    pub fn count(&self) -> u64 {
        if let Some(c) = self.counter.get() {
            return c.get();
        }
        use prometheus::core::Collector;
        let labels = [self.spec.id.as_str(), self.spec.action.as_str()];
        self.counters
            .collect()
            .iter()
            .flat_map(|family| family.get_metric())
            .find(|m| {
                let pairs = m.get_label();
                ["rule", "action"].iter().zip(labels).all(|(name, value)| {
                    pairs
                        .iter()
                        .any(|p| p.name() == *name && p.value() == value)
                })
            })
            .map_or(0, |m| m.get_counter().get_value() as u64)
    }

    fn hit(&self) {
        self.counter
            .get_or_init(|| {
                self.counters
                    .with_label_values(&[self.spec.id.as_str(), self.spec.action.as_str()])
            })
            .inc();
    }
}

fn host_matches(pattern: &str, host: &str) -> bool {
    let host = crate::routing::strip_port(host);
    match pattern.strip_prefix("*.") {
        Some(suffix) => {
            host.len() > suffix.len() + 1
                && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
                && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
        }
        None => host.eq_ignore_ascii_case(pattern),
    }
}

/// What the rules need to know about a request.
pub struct RequestView<'a> {
    pub ip: IpAddr,
    pub host: &'a str,
    pub route: Option<&'a str>,
    pub listener: &'a str,
    pub path: &'a str,
}

/// Why the decision was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DecidedBy {
    Rule,
    Default,
    AdminBypass,
}

/// The outcome for one request.
pub struct Decision<'a> {
    pub action: Action,
    pub by: DecidedBy,
    pub rule: Option<&'a Rule>,
}

/// The default policy by scope.
#[derive(Debug, Clone, Default)]
pub struct Defaults {
    pub global: Action,
    pub listeners: Vec<(String, Action)>,
    pub routes: Vec<(String, Action)>,
}

/// The decision material for one prefix and all prefixes covering it.
#[derive(Clone, Default)]
struct Chain {
    /// The first unscoped rule in order (an index into `rules`), `u32::MAX` for none.
    first_unscoped: u32,
    /// Scoped rules ordered before `first_unscoped`, in order.
    scoped: Box<[u32]>,
}

/// All rules, compiled.
pub struct IpRuleSet {
    v4: PrefixMap<Ipv4Net, Chain>,
    v6: PrefixMap<Ipv6Net, Chain>,
    rules: Vec<Rule>,
    defaults: Defaults,
    admin_networks: Vec<IpNet>,
    bypass_admin: bool,
    default_counter: [IntCounter; 2],
}

/// A rule that does not compile: its index in the input and why.
#[derive(Debug)]
pub struct RuleError {
    pub index: usize,
    pub field: &'static str,
    pub message: String,
}

/// Parses an address or CIDR block (host bits must be zero).
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    let net: IpNet = s
        .parse()
        .map_err(|_| format!("`{s}` is not an IP address or CIDR block"))?;
    if net.trunc() != net {
        return Err(format!(
            "`{s}` has host bits set; did you mean `{}`?",
            net.trunc()
        ));
    }
    Ok(net)
}

impl IpRuleSet {
    /// Compiles config rules and API rules into one set. Collects every error.
    pub fn build(
        config: &[RuleSpec],
        api: &[RuleSpec],
        defaults: Defaults,
        admin_networks: Vec<IpNet>,
        bypass_admin: bool,
        counters: &IntCounterVec,
    ) -> Result<IpRuleSet, Vec<RuleError>> {
        let mut errors = Vec::new();
        let mut rules = Vec::with_capacity(config.len() + api.len());
        let all = config
            .iter()
            .enumerate()
            .map(|(i, s)| (i, s, Source::Config))
            .chain(api.iter().enumerate().map(|(i, s)| (i, s, Source::Api)));
        for (index, spec, source) in all {
            let net = match parse_cidr(spec.cidr.trim()) {
                Ok(n) => n,
                Err(message) => {
                    errors.push(RuleError {
                        index,
                        field: "cidr",
                        message,
                    });
                    continue;
                }
            };
            if let Some(p) = spec.path_prefixes.iter().find(|p| !p.starts_with('/')) {
                errors.push(RuleError {
                    index,
                    field: "path_prefixes",
                    message: format!("`{p}` must start with `/`"),
                });
                continue;
            }
            let priority = spec.priority.unwrap_or(match source {
                Source::Config => (index as i64 + 1) * 10,
                Source::Api => 0,
            });
            rules.push(Rule {
                spec: spec.clone(),
                net,
                priority,
                source,
                hosts: spec.hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
                counter: OnceLock::new(),
                counters: counters.clone(),
            });
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        // Stable: equal priorities keep config order, then API order.
        rules.sort_by_key(|r| r.priority);
        let mut v4: PrefixMap<Ipv4Net, Vec<u32>> = PrefixMap::new();
        let mut v6: PrefixMap<Ipv6Net, Vec<u32>> = PrefixMap::new();
        for (i, r) in rules.iter().enumerate() {
            match r.net {
                IpNet::V4(n) => v4.entry(n).or_default().push(i as u32),
                IpNet::V6(n) => v6.entry(n).or_default().push(i as u32),
            }
        }
        Ok(IpRuleSet {
            v4: chains(v4, &rules, |n| n.supernet()),
            v6: chains(v6, &rules, |n| n.supernet()),
            rules,
            defaults,
            admin_networks,
            bypass_admin,
            default_counter: [
                counters.with_label_values(&["(default)", "allow"]),
                counters.with_label_values(&["(default)", "deny"]),
            ],
        })
    }

    /// Decides one request and counts the decision.
    pub fn decide(&self, req: &RequestView<'_>) -> Decision<'_> {
        let d = self.evaluate(req);
        match d.rule {
            Some(r) if d.by == DecidedBy::Rule => r.hit(),
            _ => self.default_counter[(d.action == Action::Deny) as usize].inc(),
        }
        d
    }

    /// Decides without counting (the test endpoint).
    pub fn evaluate(&self, req: &RequestView<'_>) -> Decision<'_> {
        let ip = canonical(req.ip);
        let chain = match ip {
            IpAddr::V4(a) => self.v4.get_lpm(&Ipv4Net::from(a)).map(|(_, c)| c),
            IpAddr::V6(a) => self.v6.get_lpm(&Ipv6Net::from(a)).map(|(_, c)| c),
        };
        let best = chain.and_then(|c| self.first_match(c, req));
        if let Some(rule) = best {
            if rule.spec.action == Action::Deny && self.bypasses(ip) {
                return Decision {
                    action: Action::Allow,
                    by: DecidedBy::AdminBypass,
                    rule: Some(rule),
                };
            }
            return Decision {
                action: rule.spec.action,
                by: DecidedBy::Rule,
                rule: Some(rule),
            };
        }
        let d = &self.defaults;
        let action = req
            .route
            .and_then(|r| d.routes.iter().find(|(n, _)| n == r))
            .or_else(|| d.listeners.iter().find(|(n, _)| n == req.listener))
            .map_or(d.global, |(_, a)| *a);
        if action == Action::Deny && self.bypasses(ip) {
            return Decision {
                action: Action::Allow,
                by: DecidedBy::AdminBypass,
                rule: None,
            };
        }
        Decision {
            action,
            by: DecidedBy::Default,
            rule: None,
        }
    }

    fn first_match(&self, chain: &Chain, req: &RequestView<'_>) -> Option<&Rule> {
        for &i in chain.scoped.iter() {
            let r = &self.rules[i as usize];
            if r.scope_matches(req) {
                return Some(r);
            }
        }
        self.rules.get(chain.first_unscoped as usize)
    }

    /// Every rule, in evaluation order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Whether `ip` is in a trusted admin network and `bypass_admin` is on (never denied by
    /// a rule or a default policy, never banned automatically).
    pub fn bypasses(&self, ip: IpAddr) -> bool {
        self.bypass_admin && {
            let ip = canonical(ip);
            self.admin_networks.iter().any(|n| n.contains(&ip))
        }
    }
}

/// Gives every prefix its [`Chain`]: processed shortest first, each prefix starts from the
/// chain of its nearest present ancestor.
fn chains<P>(
    groups: PrefixMap<P, Vec<u32>>,
    rules: &[Rule],
    supernet: impl Fn(&P) -> Option<P>,
) -> PrefixMap<P, Chain>
where
    P: prefix_trie::Prefix + Clone,
{
    let mut entries: Vec<(P, Vec<u32>)> = groups.iter().map(|(p, v)| (p, v.clone())).collect();
    entries.sort_by_key(|(p, _)| p.prefix_len());
    let mut out: PrefixMap<P, Chain> = PrefixMap::new();
    for (p, own) in entries {
        let parent = supernet(&p)
            .and_then(|sp| out.get_lpm(&sp).map(|(_, c)| c.clone()))
            .unwrap_or(Chain {
                first_unscoped: u32::MAX,
                scoped: Box::new([]),
            });
        let own_unscoped = own
            .iter()
            .copied()
            .find(|&i| !rules[i as usize].is_scoped())
            .unwrap_or(u32::MAX);
        let first_unscoped = parent.first_unscoped.min(own_unscoped);
        let mut scoped: Vec<u32> = parent
            .scoped
            .iter()
            .copied()
            .chain(
                own.iter()
                    .copied()
                    .filter(|&i| rules[i as usize].is_scoped()),
            )
            .filter(|&i| i < first_unscoped)
            .collect();
        scoped.sort_unstable();
        out.insert(
            p,
            Chain {
                first_unscoped,
                scoped: scoped.into_boxed_slice(),
            },
        );
    }
    out
}

/// IPv4-mapped IPv6 addresses are treated as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// Shared handle: the compiled set in force and the API rules it was built from.
pub struct IpRules {
    pub set: arc_swap::ArcSwap<IpRuleSet>,
    pub api_rules: std::sync::Mutex<Vec<RuleSpec>>,
    /// API changes run one at a time (validate, store, swap).
    pub changes: tokio::sync::Mutex<()>,
}

impl IpRules {
    pub fn new(set: IpRuleSet, api_rules: Vec<RuleSpec>) -> IpRules {
        IpRules {
            set: arc_swap::ArcSwap::from_pointee(set),
            api_rules: std::sync::Mutex::new(api_rules),
            changes: tokio::sync::Mutex::new(()),
        }
    }

    pub fn load(&self) -> Arc<IpRuleSet> {
        self.set.load_full()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: &str, action: Action, cidr: &str, priority: Option<i64>) -> RuleSpec {
        RuleSpec {
            id: id.into(),
            action,
            cidr: cidr.into(),
            priority,
            hosts: vec![],
            routes: vec![],
            path_prefixes: vec![],
            comment: None,
        }
    }

    fn view(ip: &str) -> RequestView<'static> {
        RequestView {
            ip: ip.parse().unwrap(),
            host: "example.com",
            route: Some("app"),
            listener: "https",
            path: "/",
        }
    }

    fn counters() -> IntCounterVec {
        IntCounterVec::new(prometheus::Opts::new("t", "t"), &["rule", "action"]).unwrap()
    }

    /// Config rules only, default allow, no admin networks.
    fn build(rules: &[RuleSpec]) -> Result<IpRuleSet, Vec<RuleError>> {
        IpRuleSet::build(rules, &[], Defaults::default(), vec![], false, &counters())
    }

    #[test]
    fn first_match_by_priority_not_by_prefix_length() {
        let set = build(&[
            spec("wide-deny", Action::Deny, "10.0.0.0/8", None),
            spec("narrow-allow", Action::Allow, "10.1.2.0/24", None),
        ])
        .unwrap();
        let d = set.evaluate(&view("10.1.2.3"));
        assert_eq!(d.rule.unwrap().spec.id, "wide-deny");
        assert_eq!(d.action, Action::Deny);
        let set = build(&[
            spec("wide-deny", Action::Deny, "10.0.0.0/8", Some(20)),
            spec("narrow-allow", Action::Allow, "10.1.2.0/24", Some(10)),
        ])
        .unwrap();
        assert_eq!(set.evaluate(&view("10.1.2.3")).action, Action::Allow);
        assert_eq!(set.evaluate(&view("10.9.9.9")).action, Action::Deny);
        assert_eq!(set.evaluate(&view("11.0.0.1")).by, DecidedBy::Default);
        // IPv4-mapped IPv6 is IPv4.
        assert_eq!(set.evaluate(&view("::ffff:10.9.9.9")).action, Action::Deny);
    }

    #[test]
    fn scoped_rules_on_ancestors_come_before_later_unscoped_ones() {
        let mut admin = spec("admin", Action::Deny, "10.0.0.0/8", Some(1));
        admin.path_prefixes = vec!["/admin".into()];
        let set = build(&[
            spec("narrow", Action::Deny, "10.1.2.0/24", Some(5)),
            admin,
            spec("wide", Action::Allow, "10.0.0.0/8", Some(30)),
        ])
        .unwrap();
        let at = |ip: &str, path: &'static str| {
            let mut v = view(ip);
            v.path = path;
            set.evaluate(&v).rule.map(|r| r.spec.id.clone())
        };
        assert_eq!(at("10.1.2.3", "/admin/x").as_deref(), Some("admin"));
        assert_eq!(at("10.1.2.3", "/x").as_deref(), Some("narrow"));
        assert_eq!(at("10.9.9.9", "/admin").as_deref(), Some("admin"));
        assert_eq!(at("10.9.9.9", "/x").as_deref(), Some("wide"));
        assert_eq!(at("11.0.0.1", "/admin"), None);
    }

    #[test]
    fn host_bits_and_garbage_are_refused() {
        let errs = build(&[
            spec("a", Action::Deny, "10.0.0.1/8", None),
            spec("b", Action::Deny, "nope", None),
        ])
        .err()
        .unwrap();
        assert_eq!(errs.len(), 2);
        assert!(errs[0].message.contains("10.0.0.0/8"));
    }

    #[test]
    fn wildcard_hosts_match_subdomains_only() {
        assert!(host_matches("*.example.com", "a.example.com"));
        assert!(host_matches("*.example.com", "a.example.com:8443"));
        assert!(!host_matches("*.example.com", "example.com"));
        assert!(!host_matches("*.example.com", "badexample.com"));
        assert!(host_matches("example.com", "EXAMPLE.com"));
    }
}
