//! SecLang directives → compiled CRS rules: variables resolved to the request's
//! collections, operators compiled (regexes, phrase automata, data files), transformation
//! chains interned (each distinct chain has an id the per-request cache keys on), actions
//! parsed (`setvar`, `ctl`, macros), `skipAfter` resolved to list positions, and the
//! load-time directives applied (`SecDefaultAction`, `SecRuleRemoveBy*`,
//! `SecRuleUpdateTargetBy*`). Every rule that cannot be translated is collected with its
//! id and reason.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use ipnet::IpNet;
use regex_automata::meta;

use super::seclang::{self, Action, Selector, VarRef};
use super::xform::Xform;
use super::{CrsError, CrsSettings};
use crate::waf::operator::{compile_regex, required_bytes, required_literals_within, ByteSet, Cmp};
use crate::waf::rule::Kind;

/// A request variable (collection or scalar) SecLang names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Var {
    Args,
    ArgsNames,
    ArgsGet,
    ArgsGetNames,
    ArgsPost,
    ArgsPostNames,
    ArgsCombinedSize,
    RequestHeaders,
    RequestHeadersNames,
    RequestCookies,
    RequestCookiesNames,
    Files,
    FilesNames,
    FilesCombinedSize,
    MultipartPartHeaders,
    Tx,
    MatchedVar,
    MatchedVarName,
    MatchedVars,
    MatchedVarsNames,
    Xml,
    RequestUri,
    RequestUriRaw,
    RequestFilename,
    RequestBasename,
    RequestLine,
    RequestMethod,
    RequestProtocol,
    QueryString,
    RequestBody,
    RequestBodyLength,
    ReqbodyProcessor,
    ReqbodyError,
    RemoteAddr,
    UniqueId,
    /// `%{rule.id}` and friends in macros.
    Rule,
}

const VARS: &[(&str, Var)] = &[
    ("ARGS", Var::Args),
    ("ARGS_NAMES", Var::ArgsNames),
    ("ARGS_GET", Var::ArgsGet),
    ("ARGS_GET_NAMES", Var::ArgsGetNames),
    ("ARGS_POST", Var::ArgsPost),
    ("ARGS_POST_NAMES", Var::ArgsPostNames),
    ("ARGS_COMBINED_SIZE", Var::ArgsCombinedSize),
    ("REQUEST_HEADERS", Var::RequestHeaders),
    ("REQUEST_HEADERS_NAMES", Var::RequestHeadersNames),
    ("REQUEST_COOKIES", Var::RequestCookies),
    ("REQUEST_COOKIES_NAMES", Var::RequestCookiesNames),
    ("FILES", Var::Files),
    ("FILES_NAMES", Var::FilesNames),
    ("FILES_COMBINED_SIZE", Var::FilesCombinedSize),
    ("MULTIPART_PART_HEADERS", Var::MultipartPartHeaders),
    ("TX", Var::Tx),
    ("MATCHED_VAR", Var::MatchedVar),
    ("MATCHED_VAR_NAME", Var::MatchedVarName),
    ("MATCHED_VARS", Var::MatchedVars),
    ("MATCHED_VARS_NAMES", Var::MatchedVarsNames),
    ("XML", Var::Xml),
    ("REQUEST_URI", Var::RequestUri),
    ("REQUEST_URI_RAW", Var::RequestUriRaw),
    ("REQUEST_FILENAME", Var::RequestFilename),
    ("REQUEST_BASENAME", Var::RequestBasename),
    ("REQUEST_LINE", Var::RequestLine),
    ("REQUEST_METHOD", Var::RequestMethod),
    ("REQUEST_PROTOCOL", Var::RequestProtocol),
    ("QUERY_STRING", Var::QueryString),
    ("REQUEST_BODY", Var::RequestBody),
    ("REQUEST_BODY_LENGTH", Var::RequestBodyLength),
    ("REQBODY_PROCESSOR", Var::ReqbodyProcessor),
    ("REQBODY_ERROR", Var::ReqbodyError),
    ("REMOTE_ADDR", Var::RemoteAddr),
    ("UNIQUE_ID", Var::UniqueId),
    ("RULE", Var::Rule),
];

impl Var {
    pub fn from_name(name: &str) -> Option<Var> {
        VARS.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }

    pub fn name(self) -> &'static str {
        VARS.iter()
            .find(|(_, v)| *v == self)
            .map_or("?", |(n, _)| n)
    }

    /// The request-value kinds this collection is made of.
    pub fn kinds(self) -> u32 {
        let k = |ks: &[Kind]| ks.iter().fold(0, |a, k| a | k.bit());
        match self {
            Var::Args => k(&[Kind::QueryArg, Kind::BodyArg]),
            Var::ArgsNames => k(&[Kind::QueryArgName, Kind::BodyArgName]),
            Var::ArgsGet => k(&[Kind::QueryArg]),
            Var::ArgsGetNames => k(&[Kind::QueryArgName]),
            Var::ArgsPost => k(&[Kind::BodyArg]),
            Var::ArgsPostNames => k(&[Kind::BodyArgName]),
            Var::RequestHeaders => k(&[Kind::Header]),
            Var::RequestHeadersNames => k(&[Kind::HeaderName]),
            Var::RequestCookies => k(&[Kind::Cookie]),
            Var::RequestCookiesNames => k(&[Kind::CookieName]),
            Var::Files => k(&[Kind::File]),
            Var::FilesNames => k(&[Kind::FileName]),
            _ => 0,
        }
    }
}

/// A `:key` selector; keys compare ASCII case-insensitively, as in ModSecurity.
#[derive(Debug)]
pub enum Sel {
    All,
    Name(Vec<u8>),
    Regex(Box<meta::Regex>),
}

impl Sel {
    fn compile(s: &Option<Selector>) -> Result<Sel, String> {
        Ok(match s {
            None => Sel::All,
            Some(Selector::Name(n)) => Sel::Name(n.to_ascii_lowercase().into_bytes()),
            Some(Selector::Regex(r)) => Sel::Regex(Box::new(
                compile_regex(&format!("(?i){r}")).map_err(|e| format!("selector /{r}/: {e}"))?,
            )),
        })
    }

    pub fn matches(&self, key: &[u8]) -> bool {
        match self {
            Sel::All => true,
            Sel::Name(n) => n.eq_ignore_ascii_case(key),
            Sel::Regex(r) => r.is_match(key),
        }
    }
}

#[derive(Debug)]
pub struct Target {
    pub var: Var,
    pub sel: Sel,
    /// `&VAR`: the number of values.
    pub count: bool,
}

/// A piece of a macro string: `%{tx.anomaly_score}`.
#[derive(Debug, Clone)]
pub enum Part {
    Lit(String),
    Var(Var, Option<String>),
}

/// A string with `%{…}` references, expanded per request.
#[derive(Debug, Clone, Default)]
pub struct Macro(pub Vec<Part>);

impl Macro {
    pub fn parse(s: &str) -> Result<Macro, String> {
        let mut parts = Vec::new();
        let mut rest = s;
        while let Some(i) = rest.find("%{") {
            let Some(j) = rest[i..].find('}') else {
                break;
            };
            if i > 0 {
                parts.push(Part::Lit(rest[..i].to_string()));
            }
            let inner = &rest[i + 2..i + j];
            let (coll, key) = match inner.find(['.', ':']) {
                Some(k) => (&inner[..k], Some(inner[k + 1..].to_ascii_lowercase())),
                None => (inner, None),
            };
            let var = Var::from_name(coll)
                .ok_or_else(|| format!("macro %{{{inner}}}: unknown variable"))?;
            parts.push(Part::Var(var, key));
            rest = &rest[i + j + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Lit(rest.to_string()));
        }
        Ok(Macro(parts))
    }

    /// The text when it has no references.
    pub fn literal(&self) -> Option<&str> {
        match self.0.as_slice() {
            [] => Some(""),
            [Part::Lit(s)] => Some(s),
            _ => None,
        }
    }
}

/// An operator argument: literal, or expanded per request.
#[derive(Debug)]
pub enum Arg {
    Lit(Vec<u8>),
    Macro(Macro),
}

impl Arg {
    fn parse(s: &str) -> Result<Arg, String> {
        let m = Macro::parse(s)?;
        Ok(match m.literal() {
            Some(l) => Arg::Lit(l.as_bytes().to_vec()),
            None => Arg::Macro(m),
        })
    }
}

#[derive(Debug)]
pub enum Op {
    Rx {
        re: Box<meta::Regex>,
        /// One of these bytes must occur for a match (`None`: no such set).
        needs: Option<ByteSet>,
        /// One of these strings (ASCII case-insensitively) must occur for a match.
        lits: Option<Vec<Vec<u8>>>,
    },
    /// `@pm`, `@pmFromFile`: phrases, ASCII case-insensitive.
    Pm(Box<AhoCorasick>),
    StrEq(Arg),
    Within(Arg),
    BeginsWith(Arg),
    EndsWith(Arg),
    Contains(Arg),
    ContainsWord(Arg),
    Compare(Cmp, Arg),
    DetectSqli,
    DetectXss,
    ValidateByteRange(Box<[bool; 256]>),
    ValidateUrlEncoding,
    ValidateUtf8,
    IpMatch(Vec<IpNet>),
    Unconditional,
    NoMatch,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetOp {
    Set,
    Add,
    Sub,
    Delete,
}

#[derive(Debug)]
pub struct SetVar {
    /// `tx.name`, lowercased, possibly with macros.
    pub name: Macro,
    /// The variable's key (see [`var_key`]) when the name has no macros.
    pub key: Option<String>,
    pub op: SetOp,
    pub value: Macro,
}

#[derive(Debug)]
pub enum Ctl {
    RemoveById(Vec<(u32, u32)>),
    RemoveByTag(String),
    RemoveTargetById(u32, Var, Option<Vec<u8>>),
    RemoveTargetByTag(String, Var, Option<Vec<u8>>),
    /// `ruleEngine=DetectionOnly|Off|On`.
    RuleEngine(EngineMode),
    ForceRequestBodyVariable,
    RequestBodyProcessor(String),
    /// Audit-log switches: the gateway's events are not ModSecurity's audit log.
    AuditEngine,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineMode {
    On,
    DetectionOnly,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disruptive {
    Pass,
    /// Whatever `SecDefaultAction` says (CRS: `pass`; blocking is 949110's `deny`).
    Block,
    Deny(u16),
    Allow,
}

#[derive(Debug)]
pub struct Rule {
    pub id: u32,
    pub phase: u8,
    pub file: u16,
    pub line: u32,
    pub targets: Vec<Target>,
    pub excludes: Vec<(Var, Sel)>,
    pub op: Op,
    pub negate: bool,
    /// `SecAction`: matches once, no targets.
    pub always: bool,
    pub xforms: u16,
    pub multi_match: bool,
    pub capture: bool,
    pub setvars: Vec<SetVar>,
    pub ctls: Vec<Ctl>,
    pub msg: Option<Macro>,
    pub logdata: Option<Macro>,
    pub tags: Vec<String>,
    pub severity: Option<u8>,
    pub log: bool,
    pub disruptive: Disruptive,
    pub skip_after: Option<String>,
    pub skip_to: usize,
    /// Its bit in the per-value literal prefilter of its transformation chain
    /// ([`NO_SLOT`]: not prefiltered).
    pub pf_slot: u32,
    /// Unique among all rules and chain links (indexes per-value operator results).
    pub uid: u32,
    /// Its operator's result depends on the value alone (no captures, no macros), so
    /// it may be kept per value.
    pub memo: bool,
    /// The next link of its chain reads `MATCHED_VARS(_NAMES)`: its matches are kept.
    pub feeds_matched_vars: bool,
    pub chain: Vec<Rule>,
    chain_next: bool,
}

pub enum Entry {
    Rule(Box<Rule>),
    Marker(String),
}

/// What the load found.
#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    pub files: Vec<PathBuf>,
    /// Request-phase rules compiled (chains count once).
    pub rules: usize,
    /// Rules of phases 3–5 (response), not run.
    pub response_rules: usize,
    /// Rules that could not be translated, with the reason.
    pub untranslatable: Vec<(u32, String)>,
    /// Directives without effect on the gateway (file:line directive).
    pub ignored: Vec<String>,
}

/// A rule without a prefilter slot.
pub const NO_SLOT: u32 = u32::MAX;

/// The literal prefilter of one transformation chain: every required literal of every
/// regex rule on that chain in one automaton; a value transformed by the chain is scanned
/// once, and a rule whose literals did not occur skips its regex.
pub struct Prefilter {
    pub ac: AhoCorasick,
    /// Pattern id → the rule's slot.
    pub slot_of: Vec<u32>,
}

/// CRS, compiled.
pub struct Crs {
    /// Phase 1 and phase 2 rules and markers, in file order.
    pub phases: [Vec<Entry>; 2],
    pub chains: Vec<Vec<Xform>>,
    /// Per chain, per step: the bytes the step may change.
    pub chain_sets: Vec<Vec<Option<ByteSet>>>,
    /// Per chain, its literal prefilter.
    pub prefilters: Vec<Option<Prefilter>>,
    /// 64-bit words of a per-value prefilter result.
    pub pf_words: usize,
    /// 64-bit words of a per-value set of operator results (two bits per rule).
    pub memo_words: usize,
    pub initial_tx: Vec<(String, Vec<u8>)>,
    /// The disruptive action `block` stands for, per phase.
    pub block_action: [Disruptive; 2],
    pub report: LoadReport,
    pub settings: CrsSettings,
}

#[derive(Clone)]
struct Defaults {
    log: bool,
    disruptive: Disruptive,
    xforms: Vec<Xform>,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            log: true,
            disruptive: Disruptive::Pass,
            xforms: Vec::new(),
        }
    }
}

struct Loader {
    phases: [Vec<Entry>; 2],
    chains: Vec<Vec<Xform>>,
    chain_ids: HashMap<Vec<Xform>, u16>,
    defaults: [Defaults; 5],
    /// The chain being read: its head, or the failed head's id and reason.
    pending: Option<Result<Rule, (u32, String)>>,
    report: LoadReport,
    file: u16,
}

impl std::fmt::Debug for Crs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Crs")
            .field("path", &self.settings.path)
            .field("rules", &self.report.rules)
            .field("chains", &self.chains.len())
            .finish_non_exhaustive()
    }
}

impl Crs {
    /// The ids of the request-phase rules.
    pub fn rule_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.phases.iter().flatten().filter_map(|e| match e {
            Entry::Rule(r) => Some(r.id),
            Entry::Marker(_) => None,
        })
    }

    /// Loads and compiles CRS from `settings.path`.
    pub fn load(settings: &CrsSettings) -> Result<Crs, CrsError> {
        let files = super::files(&settings.path)?;
        let mut l = Loader {
            phases: [Vec::new(), Vec::new()],
            chains: Vec::new(),
            chain_ids: HashMap::new(),
            defaults: Default::default(),
            pending: None,
            report: LoadReport::default(),
            file: 0,
        };
        for (i, f) in files.iter().enumerate() {
            let text = std::fs::read_to_string(f).map_err(|source| CrsError::Io {
                path: f.clone(),
                source,
            })?;
            let ds = seclang::directives(&text).map_err(|e| CrsError::Syntax {
                path: f.clone(),
                line: e.line,
                msg: e.msg,
            })?;
            l.file = i as u16;
            let dir = f.parent().unwrap_or(Path::new("."));
            for d in ds {
                l.directive(&d, dir, f);
            }
            l.finish_chain();
        }
        for id in &settings.remove_ids {
            l.remove(|r| r.id == *id);
        }
        if !l.report.untranslatable.is_empty() && !settings.allow_partial {
            return Err(CrsError::Untranslatable(l.report.untranslatable));
        }
        l.resolve_markers();
        l.report.files = files;
        l.report.rules = l
            .phases
            .iter()
            .flatten()
            .filter(|e| matches!(e, Entry::Rule(_)))
            .count();
        let pl = settings.paranoia_level.clamp(1, 4);
        let dpl = settings.detection_paranoia_level.clamp(pl, 4);
        let mut initial_tx: Vec<(String, Vec<u8>)> = vec![
            (
                "blocking_paranoia_level".into(),
                pl.to_string().into_bytes(),
            ),
            (
                "detection_paranoia_level".into(),
                dpl.to_string().into_bytes(),
            ),
            (
                "inbound_anomaly_score_threshold".into(),
                settings.inbound_threshold.to_string().into_bytes(),
            ),
        ];
        for (k, v) in &settings.setup {
            let key = k.to_ascii_lowercase();
            initial_tx.retain(|(x, _)| *x != key);
            initial_tx.push((key, v.clone().into_bytes()));
        }
        let block_action = [l.defaults[0].disruptive, l.defaults[1].disruptive];
        let (prefilters, slots) = l.prefilters();
        let links = l.number_links();
        let chain_sets = l
            .chains
            .iter()
            .map(|c| c.iter().map(|x| x.trigger_set()).collect())
            .collect();
        Ok(Crs {
            phases: l.phases,
            chains: l.chains,
            chain_sets,
            prefilters,
            pf_words: slots.div_ceil(64),
            memo_words: (2 * links).div_ceil(64),
            initial_tx,
            block_action,
            report: l.report,
            settings: settings.clone(),
        })
    }
}

impl Loader {
    fn directive(&mut self, d: &seclang::Directive, dir: &Path, file: &Path) {
        let at = format!("{}:{}", file.display(), d.line);
        match d.name.as_str() {
            "SecRule" | "SecAction" => {
                let is_action = d.name == "SecAction";
                let want = if is_action { 1 } else { 2 };
                if d.args.len() < want {
                    self.fail_rule(0, format!("{at}: {} needs arguments", d.name));
                    return;
                }
                let actions = d
                    .args
                    .get(if is_action { 0 } else { 2 })
                    .map(String::as_str)
                    .unwrap_or("");
                let acts = match seclang::actions(actions) {
                    Ok(a) => a,
                    Err(e) => {
                        self.fail_rule(action_id(actions), e);
                        return;
                    }
                };
                let id = acts
                    .iter()
                    .find(|a| a.name == "id")
                    .and_then(|a| a.value.as_deref()?.parse().ok())
                    .unwrap_or(0);
                let in_chain = self.pending.as_ref().is_some_and(|p| match p {
                    Ok(r) => r.last_link().chain_next,
                    Err(_) => true,
                });
                let (vars, op) = if is_action {
                    (None, None)
                } else {
                    (Some(d.args[0].as_str()), Some(d.args[1].as_str()))
                };
                let head_phase = match &self.pending {
                    Some(Ok(r)) if in_chain => Some(r.phase),
                    _ => None,
                };
                let rule = self.rule(vars, op, &acts, dir, head_phase);
                if in_chain {
                    match (self.pending.as_mut(), rule) {
                        (Some(Ok(head)), Ok(r)) => {
                            head.chain.push(r);
                            if !head.last_link().chain_next {
                                self.finish_chain();
                            }
                        }
                        (Some(Ok(head)), Err(e)) => {
                            let hid = head.id;
                            self.pending = Some(Err((hid, e)));
                            self.chain_tail_check(&acts);
                        }
                        (Some(Err(_)), _) => self.chain_tail_check(&acts),
                        (None, _) => {}
                    }
                } else {
                    self.finish_chain();
                    match rule {
                        Ok(r) => {
                            let more = r.chain_next;
                            self.pending = Some(Ok(r));
                            if !more {
                                self.finish_chain();
                            }
                        }
                        Err(e) => {
                            self.pending = Some(Err((id, e)));
                            self.chain_tail_check(&acts);
                        }
                    }
                }
            }
            "SecMarker" => {
                self.finish_chain();
                let name = d.args.first().cloned().unwrap_or_default();
                for p in &mut self.phases {
                    p.push(Entry::Marker(name.clone()));
                }
            }
            "SecDefaultAction" => {
                self.finish_chain();
                let acts =
                    seclang::actions(d.args.first().map_or("", |s| s.as_str())).unwrap_or_default();
                let mut def = Defaults::default();
                let mut phase = 2;
                for a in &acts {
                    let v = a.value.as_deref().unwrap_or("");
                    match a.name.as_str() {
                        "phase" => phase = parse_phase(v).unwrap_or(2),
                        "log" => def.log = true,
                        "nolog" => def.log = false,
                        "pass" => def.disruptive = Disruptive::Pass,
                        "deny" | "block" | "drop" => def.disruptive = Disruptive::Deny(403),
                        "t" => match Xform::from_name(v) {
                            Ok(Some(x)) => def.xforms.push(x),
                            Ok(None) => def.xforms.clear(),
                            Err(e) => self.report.ignored.push(format!("{at}: {e}")),
                        },
                        _ => {}
                    }
                }
                if let Some(s) = acts.iter().find(|a| a.name == "status") {
                    if let (Disruptive::Deny(_), Some(st)) = (
                        def.disruptive,
                        s.value.as_deref().and_then(|v| v.parse().ok()),
                    ) {
                        def.disruptive = Disruptive::Deny(st);
                    }
                }
                self.defaults[(phase as usize).clamp(1, 5) - 1] = def;
            }
            "SecRuleRemoveById" => {
                self.finish_chain();
                let ranges: Vec<(u32, u32)> = d.args.iter().filter_map(|a| id_range(a)).collect();
                self.remove(|r| ranges.iter().any(|&(a, b)| (a..=b).contains(&r.id)));
            }
            "SecRuleRemoveByTag" => {
                self.finish_chain();
                if let Some(t) = d.args.first() {
                    match compile_regex(t) {
                        Ok(re) => self.remove(|r| r.tags.iter().any(|x| re.is_match(x.as_bytes()))),
                        Err(e) => self.report.ignored.push(format!("{at}: {e}")),
                    }
                }
            }
            "SecRuleUpdateTargetById" | "SecRuleUpdateTargetByTag" => {
                self.finish_chain();
                if d.args.len() < 2 {
                    self.report
                        .ignored
                        .push(format!("{at}: {} needs two arguments", d.name));
                    return;
                }
                let by_id = d.name.ends_with("ById");
                let ranges: Vec<(u32, u32)> = if by_id {
                    d.args[0].split([',', ' ']).filter_map(id_range).collect()
                } else {
                    Vec::new()
                };
                let tag = compile_regex(&d.args[0]).ok();
                let vars = match seclang::variables(&d.args[1]) {
                    Ok(v) => v,
                    Err(e) => {
                        self.report.ignored.push(format!("{at}: {e}"));
                        return;
                    }
                };
                let mut failed = Vec::new();
                for r in self.rules_mut() {
                    let hit = if by_id {
                        ranges.iter().any(|&(a, b)| (a..=b).contains(&r.id))
                    } else {
                        tag.as_ref()
                            .is_some_and(|t| r.tags.iter().any(|x| t.is_match(x.as_bytes())))
                    };
                    if hit {
                        if let Err(e) = add_targets(r, &vars) {
                            failed.push((r.id, e));
                        }
                    }
                }
                self.report.untranslatable.extend(failed);
            }
            "SecComponentSignature" => {}
            other => self.report.ignored.push(format!("{at}: {other}")),
        }
    }

    /// After a failed link: the failed chain ends where a link has no `chain` action.
    fn chain_tail_check(&mut self, acts: &[Action]) {
        if !acts.iter().any(|a| a.name == "chain") {
            self.finish_chain();
        }
    }

    fn fail_rule(&mut self, id: u32, why: String) {
        self.finish_chain();
        self.report.untranslatable.push((id, why));
    }

    fn finish_chain(&mut self) {
        match self.pending.take() {
            None => {}
            Some(Err(e)) => self.report.untranslatable.push(e),
            Some(Ok(r)) => {
                if r.phase >= 3 {
                    self.report.response_rules += 1;
                } else {
                    let p = (r.phase.max(1) - 1) as usize;
                    self.phases[p].push(Entry::Rule(Box::new(r)));
                }
            }
        }
    }

    fn rules_mut(&mut self) -> impl Iterator<Item = &mut Rule> {
        self.phases.iter_mut().flatten().filter_map(|e| match e {
            Entry::Rule(r) => Some(&mut **r),
            Entry::Marker(_) => None,
        })
    }

    fn remove(&mut self, f: impl Fn(&Rule) -> bool) {
        for p in &mut self.phases {
            p.retain(|e| !matches!(e, Entry::Rule(r) if f(r)));
        }
    }

    fn resolve_markers(&mut self) {
        for p in &mut self.phases {
            let markers: Vec<(usize, String)> = p
                .iter()
                .enumerate()
                .filter_map(|(i, e)| match e {
                    Entry::Marker(m) => Some((i, m.clone())),
                    Entry::Rule(_) => None,
                })
                .collect();
            let len = p.len();
            for (i, e) in p.iter_mut().enumerate() {
                if let Entry::Rule(r) = e {
                    r.skip_to = match &r.skip_after {
                        Some(name) => markers
                            .iter()
                            .find(|(mi, m)| *mi > i && m == name)
                            .map_or(len, |(mi, _)| mi + 1),
                        None => 0,
                    };
                }
            }
        }
    }

    /// Numbers every rule and chain link and marks those whose result may be kept per
    /// value; returns how many there are.
    fn number_links(&mut self) -> usize {
        let mut n = 0u32;
        let mut number = |link: &mut Rule| {
            link.uid = n;
            n += 1;
            link.memo = !link.capture
                && !link.multi_match
                && matches!(
                    link.op,
                    Op::Rx { .. }
                        | Op::Pm(_)
                        | Op::DetectSqli
                        | Op::DetectXss
                        | Op::ValidateByteRange(_)
                        | Op::ValidateUrlEncoding
                        | Op::ValidateUtf8
                );
        };
        for p in &mut self.phases {
            for e in p.iter_mut() {
                if let Entry::Rule(r) = e {
                    number(r);
                    for link in &mut r.chain {
                        number(link);
                    }
                    let reads = |l: &Rule| {
                        l.targets
                            .iter()
                            .any(|t| matches!(t.var, Var::MatchedVars | Var::MatchedVarsNames))
                    };
                    let next: Vec<bool> = r.chain.iter().map(reads).collect();
                    if let Some(&n) = next.first() {
                        r.feeds_matched_vars = n;
                    }
                    for (i, link) in r.chain.iter_mut().enumerate() {
                        link.feeds_matched_vars = next.get(i + 1).copied().unwrap_or(false);
                    }
                }
            }
        }
        n as usize
    }

    /// Gives each plain (not negated, not multiMatch) regex with required literals a slot
    /// and builds one literal automaton per transformation chain.
    fn prefilters(&mut self) -> (Vec<Option<Prefilter>>, usize) {
        let mut per_chain: Vec<Vec<(Vec<u8>, u32)>> = vec![Vec::new(); self.chains.len()];
        let mut next = 0u32;
        for p in &mut self.phases {
            for e in p.iter_mut() {
                let Entry::Rule(r) = e else { continue };
                let mut slot = |link: &mut Rule| {
                    let Op::Rx {
                        lits: Some(lits), ..
                    } = &link.op
                    else {
                        return;
                    };
                    if link.negate || link.multi_match {
                        return;
                    }
                    link.pf_slot = next;
                    for l in lits {
                        per_chain[link.xforms as usize].push((l.clone(), next));
                    }
                    next += 1;
                };
                slot(r);
                for link in &mut r.chain {
                    slot(link);
                }
            }
        }
        let pfs = per_chain
            .into_iter()
            .map(|pats| {
                if pats.is_empty() {
                    return None;
                }
                let ac = AhoCorasickBuilder::new()
                    .ascii_case_insensitive(true)
                    .match_kind(MatchKind::Standard)
                    .build(pats.iter().map(|(l, _)| l))
                    .ok()?;
                Some(Prefilter {
                    ac,
                    slot_of: pats.iter().map(|(_, s)| *s).collect(),
                })
            })
            .collect();
        (pfs, next as usize)
    }

    fn intern(&mut self, chain: Vec<Xform>) -> u16 {
        if let Some(&id) = self.chain_ids.get(&chain) {
            return id;
        }
        let id = self.chains.len() as u16;
        self.chains.push(chain.clone());
        self.chain_ids.insert(chain, id);
        id
    }

    /// One `SecRule` / `SecAction` (a chain link when `head_phase` is set).
    fn rule(
        &mut self,
        vars: Option<&str>,
        op: Option<&str>,
        acts: &[Action],
        dir: &Path,
        head_phase: Option<u8>,
    ) -> Result<Rule, String> {
        let mut phase = head_phase.unwrap_or(2);
        for a in acts {
            if a.name == "phase" {
                phase = parse_phase(a.value.as_deref().unwrap_or(""))
                    .ok_or_else(|| format!("bad phase {:?}", a.value))?;
            }
        }
        let def = self.defaults[(phase as usize).clamp(1, 5) - 1].clone();
        let response = phase >= 3;
        let mut r = Rule {
            id: 0,
            phase,
            file: self.file,
            line: 0,
            targets: Vec::new(),
            excludes: Vec::new(),
            op: Op::Unconditional,
            negate: false,
            always: vars.is_none(),
            xforms: 0,
            multi_match: false,
            capture: false,
            setvars: Vec::new(),
            ctls: Vec::new(),
            msg: None,
            logdata: None,
            tags: Vec::new(),
            severity: None,
            log: def.log,
            disruptive: if head_phase.is_some() {
                Disruptive::Pass
            } else {
                def.disruptive
            },
            skip_after: None,
            skip_to: 0,
            pf_slot: NO_SLOT,
            uid: 0,
            memo: false,
            feeds_matched_vars: false,
            chain: Vec::new(),
            chain_next: false,
        };
        let mut xforms = def.xforms.clone();
        for a in acts {
            let v = a.value.as_deref().unwrap_or("");
            match a.name.as_str() {
                "id" => r.id = v.parse().map_err(|_| format!("bad id `{v}`"))?,
                "phase" | "ver" | "rev" | "maturity" | "accuracy" | "auditlog" | "noauditlog"
                | "status" | "initcol" | "sanitiseMatched" | "sanitizeMatched" | "expirevar" => {}
                "block" => r.disruptive = Disruptive::Block,
                "deny" | "drop" => r.disruptive = Disruptive::Deny(403),
                "pass" => r.disruptive = Disruptive::Pass,
                "allow" => r.disruptive = Disruptive::Allow,
                "chain" => r.chain_next = true,
                "skipAfter" => r.skip_after = Some(v.to_string()),
                "capture" => r.capture = true,
                "multiMatch" => r.multi_match = true,
                "log" => r.log = true,
                "nolog" => r.log = false,
                "msg" => r.msg = Some(Macro::parse(v)?),
                "logdata" => r.logdata = Some(Macro::parse(v)?),
                "tag" => r.tags.push(v.to_string()),
                "severity" => r.severity = Some(severity(v)?),
                "t" => match Xform::from_name(v)? {
                    Some(x) => xforms.push(x),
                    None => xforms.clear(),
                },
                "setvar" => r.setvars.push(setvar(v)?),
                "ctl" => r.ctls.push(ctl(v)?),
                other => return Err(format!("unsupported action `{other}`")),
            }
        }
        if let Some(s) = acts.iter().find(|a| a.name == "status") {
            if let (Disruptive::Deny(_), Some(st)) = (
                r.disruptive,
                s.value.as_deref().and_then(|v| v.parse().ok()),
            ) {
                r.disruptive = Disruptive::Deny(st);
            }
        }
        r.xforms = self.intern(xforms);
        if response {
            // Counted, not run: the gateway streams responses.
            return Ok(r);
        }
        if let (Some(vars), Some(op)) = (vars, op) {
            let vs = seclang::variables(vars)?;
            add_targets(&mut r, &vs)?;
            let (neg, name, arg) = seclang::operator(op);
            r.negate = neg;
            r.op = operator(&name, &arg, dir)?;
        }
        Ok(r)
    }
}

impl Rule {
    fn last_link(&self) -> &Rule {
        self.chain.last().unwrap_or(self)
    }
}

fn action_id(actions: &str) -> u32 {
    actions
        .split(',')
        .find_map(|a| a.trim().strip_prefix("id:")?.trim().parse().ok())
        .unwrap_or(0)
}

fn parse_phase(v: &str) -> Option<u8> {
    match v {
        "request" => Some(2),
        "response" => Some(4),
        "logging" => Some(5),
        _ => v.parse().ok().filter(|p| (1..=5).contains(p)),
    }
}

fn id_range(s: &str) -> Option<(u32, u32)> {
    let s = s.trim();
    match s.split_once('-') {
        Some((a, b)) => Some((a.trim().parse().ok()?, b.trim().parse().ok()?)),
        None => s.parse().ok().map(|v| (v, v)),
    }
}

fn severity(v: &str) -> Result<u8, String> {
    Ok(match v.to_ascii_uppercase().as_str() {
        "EMERGENCY" | "0" => 0,
        "ALERT" | "1" => 1,
        "CRITICAL" | "2" => 2,
        "ERROR" | "3" => 3,
        "WARNING" | "4" => 4,
        "NOTICE" | "5" => 5,
        "INFO" | "6" => 6,
        "DEBUG" | "7" => 7,
        _ => return Err(format!("bad severity `{v}`")),
    })
}

fn add_targets(r: &mut Rule, vars: &[VarRef]) -> Result<(), String> {
    for v in vars {
        let var =
            Var::from_name(&v.name).ok_or_else(|| format!("unsupported variable `{}`", v.name))?;
        if var == Var::Xml {
            if let Some(Selector::Name(x)) = &v.selector {
                if x != "/*" && x != "//@*" {
                    return Err(format!("unsupported XPath `{x}`"));
                }
            }
        }
        let sel = Sel::compile(&v.selector)?;
        if v.exclude {
            r.excludes.push((var, sel));
        } else {
            r.targets.push(Target {
                var,
                sel,
                count: v.count,
            });
        }
    }
    Ok(())
}

/// The key of a variable in a transaction's variable map: `tx.name` → `name` (TX is
/// what CRS uses, so its keys need no prefix), any other collection keeps its name after
/// an `@` (`@ip.name`), which no TX key starts with.
pub fn var_key(name: &str) -> std::borrow::Cow<'_, str> {
    match name.strip_prefix("tx.") {
        Some(k) => std::borrow::Cow::Borrowed(k),
        None => std::borrow::Cow::Owned(format!("@{name}")),
    }
}

fn setvar(v: &str) -> Result<SetVar, String> {
    if let Some(name) = v.strip_prefix('!') {
        let name = Macro::parse(&name.to_ascii_lowercase())?;
        return Ok(SetVar {
            key: name.literal().map(|l| var_key(l).into_owned()),
            name,
            op: SetOp::Delete,
            value: Macro::default(),
        });
    }
    let (name, value) = v.split_once('=').unwrap_or((v, "1"));
    let (op, value) = if let Some(x) = value.strip_prefix('+') {
        (SetOp::Add, x)
    } else if let Some(x) = value.strip_prefix('-') {
        (SetOp::Sub, x)
    } else {
        (SetOp::Set, value)
    };
    let name = name.trim();
    if !name.contains('.') {
        return Err(format!("setvar `{v}`: no collection"));
    }
    let name = Macro::parse(&name.to_ascii_lowercase())?;
    Ok(SetVar {
        key: name.literal().map(|l| var_key(l).into_owned()),
        name,
        op,
        value: Macro::parse(value)?,
    })
}

fn ctl(v: &str) -> Result<Ctl, String> {
    let (k, val) = v
        .split_once('=')
        .ok_or_else(|| format!("ctl `{v}` without a value"))?;
    let target = |s: &str| -> Result<(Var, Option<Vec<u8>>), String> {
        let (n, key) = match s.split_once(':') {
            Some((n, k)) => (n, Some(k.to_ascii_lowercase().into_bytes())),
            None => (s, None),
        };
        let var = Var::from_name(n).ok_or_else(|| format!("ctl `{v}`: unknown variable `{n}`"))?;
        Ok((var, key))
    };
    Ok(match k {
        "ruleRemoveById" => Ctl::RemoveById(val.split([' ', ',']).filter_map(id_range).collect()),
        "ruleRemoveByTag" => Ctl::RemoveByTag(val.to_string()),
        "ruleRemoveTargetById" | "ruleRemoveTargetByTag" => {
            let (who, t) = val
                .split_once(';')
                .ok_or_else(|| format!("ctl `{v}`: no target"))?;
            let (var, key) = target(t)?;
            if k.ends_with("ById") {
                Ctl::RemoveTargetById(
                    who.parse().map_err(|_| format!("ctl `{v}`: bad id"))?,
                    var,
                    key,
                )
            } else {
                Ctl::RemoveTargetByTag(who.to_string(), var, key)
            }
        }
        "ruleEngine" => Ctl::RuleEngine(match val.to_ascii_lowercase().as_str() {
            "on" => EngineMode::On,
            "off" => EngineMode::Off,
            "detectiononly" => EngineMode::DetectionOnly,
            _ => return Err(format!("ctl `{v}`: bad engine mode")),
        }),
        "forceRequestBodyVariable" => Ctl::ForceRequestBodyVariable,
        "requestBodyProcessor" => Ctl::RequestBodyProcessor(val.to_ascii_uppercase()),
        "auditEngine" | "auditLogParts" => Ctl::AuditEngine,
        _ => return Err(format!("unsupported ctl `{k}`")),
    })
}

/// PCRE without UTF mode reads `\x{HH}` as a byte; regex-syntax reads it as a code
/// point, so two-digit forms are rewritten to `\xHH`.
fn pcre_to_bytes(p: &str) -> String {
    let mut out = String::with_capacity(p.len());
    let b = p.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            if b.get(i + 1) == Some(&b'x')
                && b.get(i + 2) == Some(&b'{')
                && b.get(i + 5) == Some(&b'}')
                && b[i + 3].is_ascii_hexdigit()
                && b[i + 4].is_ascii_hexdigit()
            {
                out.push_str("\\x");
                out.push_str(&p[i + 3..i + 5]);
                i += 6;
                continue;
            }
            // Keep any escape pair as it is.
            if let Some(c) = p[i + 1..].chars().next() {
                out.push('\\');
                out.push(c);
                i += 1 + c.len_utf8();
                continue;
            }
        }
        let c = p[i..].chars().next().unwrap_or('\0');
        out.push(c);
        i += c.len_utf8().max(1);
    }
    out
}

fn operator(name: &str, arg: &str, dir: &Path) -> Result<Op, String> {
    let pm = |phrases: Vec<Vec<u8>>| -> Result<Op, String> {
        let ac = AhoCorasickBuilder::new()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::LeftmostFirst)
            .build(phrases.iter().filter(|p| !p.is_empty()))
            .map_err(|e| e.to_string())?;
        Ok(Op::Pm(Box::new(ac)))
    };
    Ok(match name {
        "rx" => {
            let arg = &pcre_to_bytes(arg);
            let re = compile_regex(arg).map_err(|e| format!("@rx: {e}"))?;
            Op::Rx {
                re: Box::new(re),
                needs: required_bytes(arg),
                // One automaton per chain scans all literals at once: large sets are fine.
                lits: required_literals_within(arg, 4096, 2),
            }
        }
        "pm" => pm(arg
            .split_ascii_whitespace()
            .map(|p| p.as_bytes().to_vec())
            .collect())?,
        "pmFromFile" | "pmf" => {
            let mut phrases = Vec::new();
            for f in arg.split_ascii_whitespace() {
                let path = dir.join(f);
                let text = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                for line in text.split(|&b| b == b'\n') {
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    let t = line.trim_ascii();
                    if !t.is_empty() && !t.starts_with(b"#") {
                        phrases.push(t.to_vec());
                    }
                }
            }
            pm(phrases)?
        }
        "streq" => Op::StrEq(Arg::parse(arg)?),
        "within" => Op::Within(Arg::parse(arg)?),
        "beginsWith" => Op::BeginsWith(Arg::parse(arg)?),
        "endsWith" => Op::EndsWith(Arg::parse(arg)?),
        "contains" => Op::Contains(Arg::parse(arg)?),
        "containsWord" => Op::ContainsWord(Arg::parse(arg)?),
        "eq" => Op::Compare(Cmp::Eq, Arg::parse(arg)?),
        "gt" => Op::Compare(Cmp::Gt, Arg::parse(arg)?),
        "ge" => Op::Compare(Cmp::Ge, Arg::parse(arg)?),
        "lt" => Op::Compare(Cmp::Lt, Arg::parse(arg)?),
        "le" => Op::Compare(Cmp::Le, Arg::parse(arg)?),
        "detectSQLi" => Op::DetectSqli,
        "detectXSS" => Op::DetectXss,
        "validateUrlEncoding" => Op::ValidateUrlEncoding,
        "validateUtf8Encoding" => Op::ValidateUtf8,
        "unconditionalMatch" => Op::Unconditional,
        "noMatch" => Op::NoMatch,
        "validateByteRange" => Op::ValidateByteRange(Box::new(
            crate::waf::operator::byte_range(arg)
                .map_err(|e| format!("@validateByteRange: {e}"))?,
        )),
        "ipMatch" => {
            let mut nets = Vec::new();
            for p in arg.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let net = p
                    .parse::<IpNet>()
                    .or_else(|_| p.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("@ipMatch: bad address `{p}`"))?;
                nets.push(net);
            }
            Op::IpMatch(nets)
        }
        other => return Err(format!("unsupported operator `@{other}`")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macros_and_setvars() {
        let m = Macro::parse("Score: %{TX.anomaly_score} at %{MATCHED_VAR_NAME}").unwrap();
        assert_eq!(m.0.len(), 4);
        assert!(matches!(&m.0[1], Part::Var(Var::Tx, Some(k)) if k == "anomaly_score"));
        let s = setvar("tx.inbound_anomaly_score_pl1=+%{tx.critical_anomaly_score}").unwrap();
        assert_eq!(s.op, SetOp::Add);
        assert!(setvar("!tx.x").unwrap().op == SetOp::Delete);
        assert!(Macro::parse("%{nope.x}").is_err());
    }
}
