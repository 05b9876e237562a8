//! The web application firewall: the last check before a request is forwarded.
//!
//! Rules come from `rules/*.toml` ([`rule`]), are compiled once per config load into an
//! [`engine::Engine`] (rules grouped by targets and transformation chain, one multi-pattern
//! matcher per group) and evaluated over the values [`request`] extracts from a request.
//! Matches add up to an anomaly score; at the inbound threshold the request is blocked
//! (route mode `block`) or only reported (`detect`). Per-route exclusions switch a rule, or
//! a rule for one target, off on a path, for false positives. [`crate::pipeline::waf`] is the pipeline
//! phase; [`tester`] the `gateway waf test` command, on exactly the same engine.
//!
//! The engine's own checks have ids below [`rule::FIRST_RULE_ID`]: a body that does not
//! parse as its declared type, too many or too large arguments, a body beyond the
//! inspection limit. They fail closed (critical) except the last, which follows
//! `waf.over_limit`.

pub mod coding;
pub mod config;
pub mod confirm;
pub mod crs;
pub mod derived;
pub mod engine;
pub mod eval;
pub mod graphql;
pub mod json;
pub mod memo;
pub mod multipart;
pub mod operator;
pub mod redact;
pub mod request;
pub mod rule;
pub mod sqli;
pub mod tester;
pub mod transform;
pub mod xss;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use engine::{Engine, Scratch, Strategy};
use request::{BodyParse, RequestParts};
use rule::{Kind, RuleAction, Severity, Target};

/// What the WAF does on a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Off,
    /// Evaluate and report (`waf_detected`), never block.
    Detect,
    #[default]
    Block,
}

/// What happens to a body larger than the inspection limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OverLimit {
    /// Refuse it (413): a body that cannot be inspected does not pass.
    #[default]
    Block,
    /// Inspect its first `body_limit` bytes and forward all of it.
    InspectPartial,
}

/// `[waf]` settings, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    pub paranoia_level: u8,
    pub inbound_threshold: u32,
    pub body_limit: usize,
    pub over_limit: OverLimit,
    pub body_timeout: Duration,
    pub max_args: usize,
    pub max_arg_bytes: usize,
    pub max_total_arg_bytes: usize,
    pub graphql: graphql::Limits,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            paranoia_level: 1,
            inbound_threshold: 5,
            body_limit: 128 * 1024,
            over_limit: OverLimit::Block,
            body_timeout: Duration::from_secs(10),
            max_args: 1000,
            max_arg_bytes: 64 * 1024,
            max_total_arg_bytes: 1024 * 1024,
            graphql: graphql::Limits::default(),
        }
    }
}

/// A rule (or one of its targets) switched off for some paths of a route.
#[derive(Debug, Clone)]
pub struct Exclusion {
    pub rules: Vec<u32>,
    pub path_prefix: Option<String>,
    /// Only this target; `None`: the whole rule.
    pub target: Option<Target>,
}

/// The WAF as one route sees it.
#[derive(Debug, Clone, Default)]
pub struct RoutePolicy {
    pub mode: Mode,
    pub exclusions: Vec<Exclusion>,
}

/// The compiled WAF: engine and settings.
#[derive(Debug)]
pub struct Waf {
    pub engine: Engine,
    pub settings: Settings,
    /// The rule files it was compiled from.
    pub files: Vec<PathBuf>,
    /// Some rule looks at the body (decided at compilation).
    reads_body: bool,
    /// The OWASP Core Rule Set, when `[waf.crs]` is configured: run after the native
    /// rules; its verdict (949110's `deny`) blocks as the native score does.
    pub crs: Option<Arc<crs::Crs>>,
}

/// One matched rule, for events and the tester.
#[derive(Debug, Clone)]
pub struct Match {
    pub rule: u32,
    pub msg: Arc<str>,
    pub severity: Severity,
    pub score: u32,
    pub action: RuleAction,
    /// `args:q`, `headers:user-agent`, `path`…
    pub target: String,
    /// At most [`EXCERPT_CHARS`] of the value, printable, secrets redacted.
    pub excerpt: String,
    pub tags: Vec<String>,
}

/// Characters of a matched value kept in an excerpt.
pub const EXCERPT_CHARS: usize = 80;

/// The outcome of an inspection.
#[derive(Debug, Clone, Default)]
pub struct Verdict {
    pub score: u32,
    /// The score reached the threshold (what happens then depends on the route's mode).
    pub blocked: bool,
    /// A `pass` rule allowed the request.
    pub passed_by: Option<u32>,
    pub matches: Vec<Match>,
}

impl Verdict {
    pub fn rule_ids(&self) -> Vec<String> {
        self.matches.iter().map(|m| m.rule.to_string()).collect()
    }
}

/// Built-in checks.
pub mod builtin {
    pub const BODY_UNPARSABLE: u32 = 100;
    pub const TOO_MANY_ARGS: u32 = 101;
    pub const ARG_TOO_LARGE: u32 = 102;
    pub const ARGS_TOO_LARGE: u32 = 103;
    pub const BODY_OVER_LIMIT: u32 = 104;
    pub const GRAPHQL_INTROSPECTION: u32 = 105;
    pub const GRAPHQL_TOO_DEEP: u32 = 106;
    pub const GRAPHQL_TOO_MANY_ALIASES: u32 = 107;
    pub const GRAPHQL_BATCH_TOO_LARGE: u32 = 108;
}

impl Waf {
    pub fn new(engine: Engine, settings: Settings, files: Vec<PathBuf>) -> Waf {
        let body = [
            Kind::BodyArg,
            Kind::BodyArgName,
            Kind::File,
            Kind::FileName,
            Kind::Body,
            Kind::RequestBody,
        ];
        let reads_body = body.iter().any(|k| engine.kinds() & k.bit() != 0);
        Waf {
            engine,
            settings,
            files,
            reads_body,
            crs: None,
        }
    }

    /// Loads rule files and compiles them (the tester and benches; the proxy goes
    /// through the config compiler).
    pub fn from_files(
        files: &[PathBuf],
        settings: Settings,
        strategy: Strategy,
    ) -> Result<Waf, crate::config::ConfigErrors> {
        let rules = rule::load_files(files)?;
        let engine = Engine::compile(&rules, settings.paranoia_level, strategy);
        Ok(Waf::new(engine, settings, files.to_vec()))
    }

    /// True when some rule reads the body (so the phase must buffer it).
    pub fn reads_body(&self) -> bool {
        self.reads_body || self.crs.is_some()
    }

    /// Inspects a request. `body_truncated`: the body is longer than what `req.body` holds.
    pub fn inspect(
        &self,
        req: &RequestParts<'_>,
        route: &RoutePolicy,
        body_truncated: bool,
    ) -> Verdict {
        let path = req.canonical.unwrap_or(req.target);
        let path = path.split('?').next().unwrap_or("");
        self.engine.with_scratch(|s| {
            // Argument limits need the arguments parsed even if no rule reads them.
            let args = Kind::QueryArg.bit() | Kind::BodyArg.bit();
            self.engine.collect(s, req, args, self.crs.is_none());
            let mut v = Verdict::default();
            let graphql_body = req.body.filter(|_| {
                req.headers
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|ct| {
                        ct.split(';')
                            .next()
                            .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/graphql"))
                    })
            });
            self.builtin_checks(s, body_truncated, graphql_body, &mut v);
            if let Some(ri) = self.engine.pass_rule(s) {
                v.passed_by = Some(self.engine.rules[ri].id);
                v.matches.clear();
                v.score = 0;
                v.blocked = false;
                return v;
            }
            // Exclusions are consulted only when a rule matched.
            self.engine.evaluate(s, |rule, kind, name| {
                route.exclusions.iter().any(|e| {
                    e.rules.contains(&rule.id)
                        && e.path_prefix.as_deref().is_none_or(|p| path.starts_with(p))
                        && e.target.as_ref().is_none_or(|t| t.covers(kind, name))
                })
            });
            for h in &s.hits_out {
                let r = &self.engine.rules[h.rule];
                let it = &s.items.items[h.item];
                if r.action == RuleAction::Block {
                    v.score += r.score;
                }
                if r.log || r.action == RuleAction::Block {
                    v.matches.push(Match {
                        rule: r.id,
                        msg: r.msg.clone(),
                        severity: r.severity,
                        score: if r.action == RuleAction::Block {
                            r.score
                        } else {
                            0
                        },
                        action: r.action,
                        target: target_label(it.kind, s.items.name(it)),
                        excerpt: excerpt(it.kind, s.items.name(it), s.items.value(it)),
                        tags: r.tags.clone(),
                    });
                }
            }
            v.blocked = v.score >= self.settings.inbound_threshold;
            if let Some(crs) = &self.crs {
                self.inspect_crs(crs, req, route, path, &s.items, &mut v);
            }
            v
        })
    }

    /// Runs CRS and adds its logged rules to `v` (route exclusions switch CRS rules off
    /// for the request, as `ctl:ruleRemoveById` would).
    fn inspect_crs(
        &self,
        crs: &crs::Crs,
        req: &RequestParts<'_>,
        route: &RoutePolicy,
        path: &str,
        items: &request::Items,
        v: &mut Verdict,
    ) {
        let removed: Vec<u32> = route
            .exclusions
            .iter()
            .filter(|e| e.target.is_none())
            .filter(|e| e.path_prefix.as_deref().is_none_or(|p| path.starts_with(p)))
            .flat_map(|e| e.rules.iter().copied())
            .collect();
        let out = crs.evaluate(req, route.mode == Mode::Block, &removed);
        let mut crs_blocks = out.deny.is_some() || out.would_deny.is_some();
        let mut score = out.inbound_score;
        let first = v.matches.len();
        for h in out.hits {
            let severity = match h.severity {
                Some(0..=2) => Severity::Critical,
                Some(3) => Severity::Error,
                Some(4) => Severity::Warning,
                _ => Severity::Notice,
            };
            let secret = crs::is_secret_var(&h.var, h.data.as_bytes());
            v.matches.push(Match {
                rule: h.id,
                msg: Arc::from(h.msg.as_str()),
                severity,
                // What the rule added to CRS's anomaly score (rules without a severity
                // add nothing).
                score: if h.severity.is_some() && h.id != 949110 {
                    severity.score()
                } else {
                    0
                },
                action: RuleAction::Block,
                target: printable(h.var.to_ascii_lowercase().as_bytes(), 64),
                excerpt: if secret {
                    "[redacted]".to_string()
                } else {
                    printable(h.data.as_bytes(), EXCERPT_CHARS)
                },
                tags: vec!["owasp-crs".to_string()],
            });
        }
        if crs.settings.confirm {
            let (native, mine) = v.matches.split_at_mut(first);
            let open = confirm::unconfirmed(mine, native, |m, family| {
                crs_value_is_harmless(items, &m.target, family)
            });
            if !open.is_empty() {
                let mut removed_score = 0;
                for m in mine.iter_mut() {
                    if confirm::family(m.rule).is_some_and(|f| open.contains(&f)) {
                        removed_score += i64::from(m.score);
                        m.score = 0;
                        m.tags.push("unconfirmed".to_string());
                    }
                }
                score = (score - removed_score).max(0);
                crs_blocks = score >= i64::from(crs.settings.inbound_threshold);
                if !crs_blocks {
                    // The blocking evaluation's own entry would say otherwise.
                    v.matches.retain(|m| m.rule != 949110);
                }
            }
        }
        v.score += u32::try_from(score.max(0)).unwrap_or(u32::MAX);
        if crs_blocks {
            v.blocked = true;
        }
    }

    fn builtin_checks(
        &self,
        s: &mut Scratch,
        body_truncated: bool,
        graphql_body: Option<&[u8]>,
        v: &mut Verdict,
    ) {
        let st = &self.settings;
        let items = &s.items;
        let mut add = |rule: u32, msg: &'static str, severity: Severity, target: &str| {
            let score = if rule == builtin::BODY_OVER_LIMIT {
                0
            } else {
                severity.score()
            };
            v.score += score;
            v.matches.push(Match {
                rule,
                msg: Arc::from(msg),
                severity,
                score,
                action: if score == 0 {
                    RuleAction::Log
                } else {
                    RuleAction::Block
                },
                target: target.to_string(),
                excerpt: String::new(),
                tags: vec!["protocol-limits".to_string()],
            });
        };
        if let Some(parse) = items.body {
            let failed = match parse {
                BodyParse::Failed(why) if !body_truncated => Some(why),
                BodyParse::Invalid(why) => Some(why),
                _ => None,
            };
            if let Some(why) = failed {
                add(
                    builtin::BODY_UNPARSABLE,
                    why,
                    Severity::Critical,
                    "request_body",
                );
            }
        }
        let (mut docs, mut found) = (0usize, graphql::Shape::default());
        for it in &items.items {
            if matches!(it.kind, Kind::QueryArg | Kind::BodyArg)
                && derived::is_graphql_query(items.name(it), items.value(it))
            {
                docs += 1;
                found = found.max(graphql::shape(items.value(it)));
            }
        }
        if let Some(doc) = graphql_body {
            docs += 1;
            found = found.max(graphql::shape(doc));
        }
        if docs > 0 {
            let g = st.graphql;
            if found.introspection && !g.introspection {
                add(
                    builtin::GRAPHQL_INTROSPECTION,
                    "GraphQL introspection is disabled",
                    Severity::Critical,
                    "graphql",
                );
            }
            if found.depth > g.max_depth {
                add(
                    builtin::GRAPHQL_TOO_DEEP,
                    "GraphQL query nested too deep",
                    Severity::Critical,
                    "graphql",
                );
            }
            if found.aliases > g.max_aliases {
                add(
                    builtin::GRAPHQL_TOO_MANY_ALIASES,
                    "GraphQL query with too many aliases",
                    Severity::Critical,
                    "graphql",
                );
            }
            if docs > g.max_batch {
                add(
                    builtin::GRAPHQL_BATCH_TOO_LARGE,
                    "too many GraphQL operations in one request",
                    Severity::Critical,
                    "graphql",
                );
            }
        }
        if items.args > st.max_args {
            add(
                builtin::TOO_MANY_ARGS,
                "too many arguments",
                Severity::Critical,
                "args",
            );
        }
        if items.largest_arg > st.max_arg_bytes {
            add(
                builtin::ARG_TOO_LARGE,
                "argument too large",
                Severity::Critical,
                "args",
            );
        }
        if items.arg_bytes > st.max_total_arg_bytes {
            add(
                builtin::ARGS_TOO_LARGE,
                "arguments too large in total",
                Severity::Critical,
                "args",
            );
        }
        if body_truncated {
            add(
                builtin::BODY_OVER_LIMIT,
                "body beyond the inspection limit: only its beginning was inspected",
                Severity::Notice,
                "request_body",
            );
        }
    }
}

/// Whether every value a CRS match names (`args:q`, `args_post:text`, lower-cased as in
/// [`Match::target`]) has a [`confirm::harmless_shape`] for `family`; unknown variables do
/// not.
fn crs_value_is_harmless(items: &request::Items, target: &str, family: &str) -> bool {
    let Some((coll, name)) = target.split_once(':') else {
        return false;
    };
    let kinds: &[Kind] = match coll {
        "args" => &[Kind::QueryArg, Kind::BodyArg],
        "args_get" => &[Kind::QueryArg],
        "args_post" => &[Kind::BodyArg],
        _ => return false,
    };
    let mut found = false;
    for it in &items.items {
        if kinds.contains(&it.kind) && items.name(it).eq_ignore_ascii_case(name.as_bytes()) {
            if !confirm::harmless_shape(family, items.value(it)) {
                return false;
            }
            found = true;
        }
    }
    found
}

/// `args:q` for a named value, the kind alone otherwise.
fn target_label(kind: Kind, name: &[u8]) -> String {
    let label = match kind {
        Kind::QueryArg | Kind::BodyArg => "args",
        Kind::HeaderArg => "headers",
        Kind::QueryArgName | Kind::BodyArgName => "args_names",
        other => other.label(),
    };
    if name.is_empty()
        || matches!(
            kind,
            Kind::HeaderName
                | Kind::CookieName
                | Kind::QueryArgName
                | Kind::BodyArgName
                | Kind::FileName
        )
    {
        label.to_string()
    } else {
        format!("{label}:{}", printable(name, 64))
    }
}

/// A bounded, printable excerpt; cookie values and credentials are never shown.
fn excerpt(kind: Kind, name: &[u8], value: &[u8]) -> String {
    if kind.is_secret(name) || (kind.is_raw() && redact::mentions_secret(value)) {
        return format!("[redacted, {} bytes]", value.len());
    }
    printable(value, EXCERPT_CHARS)
}

/// Bytes as text: printable ASCII kept, others as `\xHH`, at most `max` characters.
pub fn printable(v: &[u8], max: usize) -> String {
    let mut out = String::with_capacity(v.len().min(max) + 8);
    for &b in v {
        if out.len() >= max {
            out.push('…');
            break;
        }
        if (0x20..0x7f).contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// One step of a xorshift generator: deterministic pseudo-random input for the tests
/// that check a fast path against its plain version.
#[cfg(test)]
pub(crate) fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}
