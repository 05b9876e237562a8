//! The rule model and the native rule file format (`rules/*.toml`).
//!
//! A rule file is a list of `[[rules]]`:
//!
//! ```toml
//! [[rules]]
//! id = 4200                      # unique across all files; 1000 and above
//! msg = "SQL injection"
//! targets = ["args", "args_names", "cookies", "!cookies:consent"]
//! transforms = ["url_decode_uni", "lowercase"]
//! match = { detect_sqli = true } # exactly one operator
//! severity = "critical"          # critical 5, error 4, warning 3, notice 2 (anomaly score)
//! paranoia = 1                   # compiled only at this paranoia level or above
//! action = "block"               # "block" (scores), "log" (recorded, no score), "pass" (allow)
//! tags = ["attack-sqli"]
//! chain = [{ targets = ["method"], match = { equals = "POST" } }]   # all must match too
//! ```
//!
//! Loading collects every problem in every file, each naming the file, line, key and rule
//! id, so an operator fixes them in one pass.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::operator::Operator;
use super::transform::Transform;
use crate::config::{ConfigError, ConfigErrors, KeyPath, Locator};

/// Rule ids below this are the engine's own checks (limits, unparsable bodies).
pub const FIRST_RULE_ID: u32 = 1000;

/// Where in a request a value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Kind {
    Method,
    Path,
    /// The raw request target (path and query, undecoded).
    Uri,
    RequestLine,
    Protocol,
    /// The raw query string.
    Query,
    QueryArg,
    QueryArgName,
    BodyArg,
    BodyArgName,
    Header,
    HeaderName,
    Cookie,
    CookieName,
    /// Upload file names (multipart).
    File,
    /// Field names of upload parts.
    FileName,
    /// The raw body, when it is not parsed into arguments (not a form, JSON or multipart).
    Body,
    /// The raw body, always.
    RequestBody,
    /// One segment of the decoded path (`/a/b` gives `a` and `b`), when it holds more than
    /// letters, digits and `-._~`.
    PathSegment,
    /// A request header that carries application data (custom `X-*`, `Referer`, `Origin`,
    /// `User-Agent`…; not the structured ones such as `Accept` or `Content-Length`).
    HeaderArg,
    /// Text and attribute values of an XML body (SOAP included), named by element or
    /// attribute.
    XmlValue,
    /// The text inside a base64 / base64url value or a JWT segment of an argument, header
    /// or path segment (when it decodes to text), named as the value it came from.
    Decoded,
    /// String literals inside a GraphQL query argument (`query`), named as that argument.
    Embedded,
}

impl Kind {
    pub const fn bit(self) -> u32 {
        1 << self as u8
    }
    /// The name of one value of this kind in events and the tester (`args:q`).
    pub fn label(self) -> &'static str {
        match self {
            Kind::Method => "method",
            Kind::Path => "path",
            Kind::Uri => "uri",
            Kind::RequestLine => "request_line",
            Kind::Protocol => "protocol",
            Kind::Query => "query",
            Kind::QueryArg => "query_args",
            Kind::QueryArgName => "query_args_names",
            Kind::BodyArg => "body_args",
            Kind::BodyArgName => "body_args_names",
            Kind::Header => "headers",
            Kind::HeaderName => "headers_names",
            Kind::Cookie => "cookies",
            Kind::CookieName => "cookies_names",
            Kind::File => "files",
            Kind::FileName => "files_names",
            Kind::Body => "body",
            Kind::RequestBody => "request_body",
            Kind::PathSegment => "path_segments",
            Kind::HeaderArg => "header_args",
            Kind::XmlValue => "xml",
            Kind::Decoded => "decoded",
            Kind::Embedded => "graphql",
        }
    }
    /// A value that must never appear in clear in an event.
    pub fn is_secret(self, name: &[u8]) -> bool {
        use super::redact::{is_secret_header, is_secret_name};
        match self {
            Kind::Cookie => true,
            Kind::Header => is_secret_header(name),
            Kind::HeaderArg => is_secret_header(name),
            Kind::QueryArg
            | Kind::BodyArg
            | Kind::File
            | Kind::XmlValue
            | Kind::Decoded
            | Kind::Embedded => is_secret_name(name),
            _ => false,
        }
    }

    /// A value of this kind is the raw request (or a raw part of it) that may carry a
    /// secret field inside (see [`super::redact::mentions_secret`]).
    pub fn is_raw(self) -> bool {
        matches!(
            self,
            Kind::Uri | Kind::RequestLine | Kind::Query | Kind::Body | Kind::RequestBody
        )
    }
}

/// The target names a rule file may use, and the kinds each covers.
fn target_kinds(name: &str) -> Option<u32> {
    use Kind::*;
    let bits = |ks: &[Kind]| ks.iter().fold(0, |a, k| a | k.bit());
    Some(match name {
        "method" => bits(&[Method]),
        "path" => bits(&[Path]),
        "uri" => bits(&[Uri]),
        "request_line" => bits(&[RequestLine]),
        "protocol" => bits(&[Protocol]),
        "query" => bits(&[Query]),
        // Every value a client chooses freely: arguments of the query, form, JSON and
        // multipart bodies, and those found in path segments, free-form headers, XML
        // bodies, base64 and JWT values and GraphQL queries.
        "args" => bits(&[
            QueryArg,
            BodyArg,
            PathSegment,
            HeaderArg,
            XmlValue,
            Decoded,
            Embedded,
        ]),
        "args_names" => bits(&[QueryArgName, BodyArgName]),
        "query_args" => bits(&[QueryArg]),
        "query_args_names" => bits(&[QueryArgName]),
        "body_args" => bits(&[BodyArg]),
        "body_args_names" => bits(&[BodyArgName]),
        "headers" => bits(&[Header]),
        "headers_names" => bits(&[HeaderName]),
        "cookies" => bits(&[Cookie]),
        "cookies_names" => bits(&[CookieName]),
        "files" => bits(&[File]),
        "files_names" => bits(&[FileName]),
        "body" => bits(&[Body]),
        "request_body" => bits(&[RequestBody]),
        "path_segments" => bits(&[PathSegment]),
        "header_args" => bits(&[HeaderArg]),
        "xml" => bits(&[XmlValue]),
        "decoded" => bits(&[Decoded]),
        "graphql" => bits(&[Embedded]),
        _ => return None,
    })
}

/// One entry of a rule's `targets`: kinds, optionally one name (case-insensitive).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    pub kinds: u32,
    /// Lowercased.
    pub name: Option<Box<[u8]>>,
}

impl Target {
    pub fn parse(s: &str) -> Result<Target, String> {
        let (coll, name) = match s.split_once(':') {
            Some((c, n)) => (c, Some(n)),
            None => (s, None),
        };
        let kinds = target_kinds(coll).ok_or_else(|| {
            format!("unknown target `{coll}` (method, path, uri, request_line, protocol, query, args, args_names, query_args, body_args, headers, headers_names, cookies, cookies_names, files, files_names, body, request_body)")
        })?;
        if let Some(n) = name {
            if n.is_empty() {
                return Err(format!("`{s}`: empty name after `:`"));
            }
        }
        Ok(Target {
            kinds,
            name: name.map(|n| n.to_ascii_lowercase().into_bytes().into_boxed_slice()),
        })
    }

    pub fn covers(&self, kind: Kind, name: &[u8]) -> bool {
        self.kinds & kind.bit() != 0
            && self
                .name
                .as_deref()
                .is_none_or(|n| n.eq_ignore_ascii_case(name))
    }
}

/// Which values a rule (or a chained condition) looks at.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TargetSet {
    pub include: Vec<Target>,
    pub exclude: Vec<Target>,
}

impl TargetSet {
    pub fn kinds(&self) -> u32 {
        self.include.iter().fold(0, |a, t| a | t.kinds)
    }
    pub fn covers(&self, kind: Kind, name: &[u8]) -> bool {
        self.include.iter().any(|t| t.covers(kind, name))
            && !self.exclude.iter().any(|t| t.covers(kind, name))
    }
}

/// An operator as written; compiled by [`super::operator`].
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum OperatorSpec {
    Regex(String),
    Phrases(Vec<String>),
    /// One phrase per line; `#` comments and blank lines are skipped. Relative to the file.
    PhrasesFile(String),
    Contains(String),
    BeginsWith(String),
    EndsWith(String),
    Equals(String),
    Within(Vec<String>),
    Eq(i64),
    Gt(i64),
    Ge(i64),
    Lt(i64),
    Le(i64),
    /// Allowed bytes, e.g. `"9,10,13,32-126"`: matches when a byte outside is present.
    ByteRange(String),
    /// Matches an invalid `%` escape.
    ValidateUrlEncoding(bool),
    DetectSqli(bool),
    DetectXss(bool),
}

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RuleAction {
    /// Adds the rule's score; the request is blocked when the total reaches the threshold.
    #[default]
    Block,
    /// Recorded (events, tester) without adding to the score: for trying a rule out.
    Log,
    /// Allows the request: no rule after it is evaluated and nothing is scored.
    Pass,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Notice,
    Warning,
    Error,
    Critical,
}

impl Severity {
    /// CRS's anomaly scores.
    pub fn score(self) -> u32 {
        match self {
            Severity::Critical => 5,
            Severity::Error => 4,
            Severity::Warning => 3,
            Severity::Notice => 2,
        }
    }
}

/// One condition: targets, transformations, operator.
#[derive(Debug, Clone)]
pub struct Condition {
    pub targets: TargetSet,
    pub transforms: Vec<Transform>,
    pub operator: Operator,
    /// The regex source, for literal extraction.
    pub pattern: Option<String>,
    pub negate: bool,
}

/// A rule as loaded.
#[derive(Debug, Clone)]
pub struct Rule {
    pub id: u32,
    pub msg: String,
    pub when: Condition,
    pub chain: Vec<Condition>,
    pub severity: Severity,
    pub score: u32,
    pub action: RuleAction,
    pub paranoia: u8,
    pub tags: Vec<String>,
    pub log: bool,
    /// The file it came from (phrase files resolve against its directory).
    pub file: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    rules: Vec<RawRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    id: u32,
    msg: String,
    targets: Vec<String>,
    #[serde(default)]
    transforms: Vec<String>,
    #[serde(rename = "match")]
    operator: OperatorSpec,
    #[serde(default)]
    negate: bool,
    #[serde(default)]
    chain: Vec<RawCondition>,
    #[serde(default = "default_severity")]
    severity: Severity,
    score: Option<u32>,
    #[serde(default)]
    action: RuleAction,
    #[serde(default = "default_paranoia")]
    paranoia: u8,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default = "default_true")]
    log: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCondition {
    targets: Vec<String>,
    #[serde(default)]
    transforms: Vec<String>,
    #[serde(rename = "match")]
    operator: OperatorSpec,
    #[serde(default)]
    negate: bool,
}

fn default_severity() -> Severity {
    Severity::Critical
}
fn default_paranoia() -> u8 {
    1
}
fn default_true() -> bool {
    true
}

/// Reads rule files. Every error names file, line, key and rule id.
pub fn load_files(files: &[PathBuf]) -> Result<Vec<Rule>, ConfigErrors> {
    let mut loader = Loader::default();
    for file in files {
        match std::fs::read_to_string(file) {
            Ok(text) => loader.add(file, text),
            Err(e) => loader.errs.push(ConfigError {
                file: file.clone(),
                line: 0,
                column: 0,
                key: String::new(),
                message: format!("cannot read rule file: {e}"),
            }),
        }
    }
    loader.finish()
}

/// Collects rules from several files, checking ids across them.
#[derive(Default)]
pub struct Loader {
    rules: Vec<Rule>,
    errs: ConfigErrors,
    seen: HashMap<u32, PathBuf>,
}

impl Loader {
    /// Adds the rules in `text`, read from `file`.
    pub fn add(&mut self, file: &Path, text: String) {
        let loc = Locator::new(file.to_path_buf(), text);
        let raw: RawFile = match toml::from_str(loc.text()) {
            Ok(r) => r,
            Err(e) => {
                let mut err = loc.from_toml_error(&e);
                if let Some(id) = id_near(loc.text(), e.span().map_or(0, |s| s.start)) {
                    err.message = format!("rule {id}: {}", err.message);
                }
                self.errs.push(err);
                return;
            }
        };
        let dir = file.parent().unwrap_or(Path::new("."));
        for (i, r) in raw.rules.into_iter().enumerate() {
            let at = KeyPath::root().key("rules").index(i);
            let id = r.id;
            let errs = &mut self.errs;
            let mut bad =
                |key: KeyPath, m: String| errs.push(loc.error(&key, format!("rule {id}: {m}")));
            if id < FIRST_RULE_ID {
                bad(
                    at.key("id"),
                    format!("ids below {FIRST_RULE_ID} are reserved"),
                );
            }
            if let Some(prev) = self.seen.insert(id, file.to_path_buf()) {
                bad(
                    at.key("id"),
                    format!("id already used in {}", prev.display()),
                );
            }
            if !(1..=4).contains(&r.paranoia) {
                bad(at.key("paranoia"), "must be 1 to 4".into());
            }
            let when = RawCondition {
                targets: r.targets,
                transforms: r.transforms,
                operator: r.operator,
                negate: r.negate,
            };
            let when = condition(when, &at, dir, &mut bad);
            let chain: Vec<_> = r
                .chain
                .into_iter()
                .enumerate()
                .filter_map(|(j, c)| condition(c, &at.key("chain").index(j), dir, &mut bad))
                .collect();
            if let Some(when) = when {
                self.rules.push(Rule {
                    id,
                    msg: r.msg,
                    when,
                    chain,
                    severity: r.severity,
                    score: r.score.unwrap_or(r.severity.score()),
                    action: r.action,
                    paranoia: r.paranoia,
                    tags: r.tags,
                    log: r.log,
                    file: file.to_path_buf(),
                });
            }
        }
    }

    pub fn finish(self) -> Result<Vec<Rule>, ConfigErrors> {
        self.errs.into_result(self.rules)
    }
}

fn condition(
    c: RawCondition,
    at: &KeyPath,
    dir: &Path,
    bad: &mut impl FnMut(KeyPath, String),
) -> Option<Condition> {
    let mut ok = true;
    let mut targets = TargetSet::default();
    if c.targets.is_empty() {
        bad(at.key("targets"), "name at least one target".into());
        ok = false;
    }
    for (i, t) in c.targets.iter().enumerate() {
        let (negated, spec) = match t.strip_prefix('!') {
            Some(s) => (true, s),
            None => (false, t.as_str()),
        };
        match Target::parse(spec) {
            Ok(t) if negated => targets.exclude.push(t),
            Ok(t) => targets.include.push(t),
            Err(m) => {
                bad(at.key("targets").index(i), m);
                ok = false;
            }
        }
    }
    if ok && targets.include.is_empty() {
        bad(
            at.key("targets"),
            "only exclusions: name what to include".into(),
        );
        ok = false;
    }
    let mut transforms = Vec::new();
    for (i, t) in c.transforms.iter().enumerate() {
        match Transform::from_name(t) {
            Some(t) => transforms.push(t),
            None => {
                let names: Vec<_> = Transform::ALL.iter().map(|t| t.name()).collect();
                bad(
                    at.key("transforms").index(i),
                    format!("unknown transformation `{t}` (one of {})", names.join(", ")),
                );
                ok = false;
            }
        }
    }
    targets.include.sort();
    targets.exclude.sort();
    let operator = match Operator::compile(&c.operator, dir) {
        Ok(op) => Some(op),
        Err(m) => {
            bad(at.key("match"), m);
            None
        }
    };
    let pattern = match &c.operator {
        OperatorSpec::Regex(p) => Some(p.clone()),
        _ => None,
    };
    Some(Condition {
        targets,
        transforms,
        operator: operator.filter(|_| ok)?,
        pattern,
        negate: c.negate,
    })
}

/// The `id = N` of the `[[rules]]` entry that contains `offset`, for syntax errors.
fn id_near(text: &str, offset: usize) -> Option<u32> {
    let before = &text[..offset.min(text.len())];
    let start = before.rfind("[[rules]]")?;
    text[start..]
        .lines()
        .skip(1)
        .take_while(|l| !l.starts_with("[["))
        .find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == "id").then(|| v.trim().parse().ok())?
        })
}

/// The rule files a `waf.rules` entry names: a file, or `dir/*.toml`, sorted.
pub fn expand(pattern: &Path) -> std::io::Result<Vec<PathBuf>> {
    let name = pattern.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if let Some(ext) = name.strip_prefix("*.") {
        let dir = pattern.parent().unwrap_or(Path::new("."));
        let mut out: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().and_then(|e| e.to_str()) == Some(ext))
            .collect();
        out.sort();
        Ok(out)
    } else {
        std::fs::metadata(pattern)?;
        Ok(vec![pattern.to_path_buf()])
    }
}
