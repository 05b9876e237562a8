//! SecLang directives → compiled CRS rules: variables resolved to the request's
//! collections, operators compiled (regexes, phrase automata, data files), transformation
//! chains interned (each distinct chain has an id the per-request cache keys on), actions
//! parsed (`setvar`, `ctl`, macros), `skipAfter` resolved to list positions, and the
//! load-time directives applied (`SecDefaultAction`, `SecRuleRemoveBy*`,
//! `SecRuleUpdateTargetBy*`). Every rule that cannot be translated is collected with its
//! id and reason.
//!
//! This module holds the compiled program (what [`super::eval`] runs); [`loader`] reads
//! the directives into it, [`actions`] parses a rule's actions (`setvar`, `ctl`,
//! `severity`), [`operators`] compiles its operator, [`regex_sets`] puts each paranoia
//! level's regexes into one lazy DFA for long values.

mod actions;
mod loader;
mod operators;
pub mod regex_sets;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use ipnet::IpNet;
use regex_automata::meta;

use super::seclang::{self, Action, Selector, VarRef};
use super::xform::Xform;
use super::{CrsError, CrsSettings};
use crate::waf::operator::{
    compile_regex, required_clauses, required_literals_within, ByteSet, Cmp,
};
use crate::waf::rule::Kind;
use crate::waf::transform::Transform;

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
    /// Whether its values can change while a phase's rules run (TX, the last match, a
    /// body variable a `ctl` can force).
    pub fn changes_while_rules_run(self) -> bool {
        matches!(
            self,
            Var::Tx
                | Var::MatchedVar
                | Var::MatchedVarName
                | Var::MatchedVars
                | Var::MatchedVarsNames
                | Var::RequestBody
                | Var::Rule
        )
    }

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

/// Every item kind a [`Var`] selects ([`Var::kinds`]): what the request model collects
/// for CRS (raw bodies, upload contents and the request line are read elsewhere or not
/// at all).
pub const ITEM_KINDS: u32 = {
    let ks = [
        Kind::QueryArg,
        Kind::BodyArg,
        Kind::QueryArgName,
        Kind::BodyArgName,
        Kind::Header,
        Kind::HeaderName,
        Kind::Cookie,
        Kind::CookieName,
        Kind::File,
        Kind::FileName,
    ];
    let mut bits = 0;
    let mut i = 0;
    while i < ks.len() {
        bits |= ks[i].bit();
        i += 1;
    }
    bits
};

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
    /// The selector as written (`=name`, `/regex`, empty for all), to compare target lists.
    pub sel_key: String,
    /// `&VAR`: the number of values.
    pub count: bool,
    /// `TX:name`: the name's slot ([`TxNames`]; `NO_TX` otherwise).
    pub tx_slot: u16,
    /// `TX:/regex/`: the slots whose names it selects, in order (a name made at run
    /// time is matched then).
    pub tx_selected: Vec<u16>,
}

/// A piece of a macro string: `%{tx.anomaly_score}`.
#[derive(Debug, Clone)]
pub enum Part {
    Lit(String),
    Var(Var, Option<String>),
    /// `%{tx.name}` once the name has its slot ([`TxNames`]).
    Tx(u16),
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
        /// The pattern as compiled (for the regex sets).
        pattern: Box<str>,
        /// A match holds a byte of each of these sets (none: no such gate).
        needs: Vec<ByteSet>,
        /// One of these strings (ASCII case-insensitively) must occur for a match.
        lits: Option<Vec<Vec<u8>>>,
    },
    /// `@pm`, `@pmFromFile`: phrases, ASCII case-insensitive. The phrases are also
    /// in the prefilter of the rule's chain: a value without any skips the operator.
    Pm {
        ac: Box<AhoCorasick>,
        phrases: Vec<Vec<u8>>,
    },
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
    /// The key's slot ([`TxNames`]; `NO_TX` when the name has macros).
    pub slot: u16,
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
    /// Per target, its summary under the link's chain (the values it selects: their
    /// byte sets and literal hits), shared with every link that reads that target under
    /// that chain; empty: none (see `eval`'s `may_match`).
    pub sum_targets: Vec<u32>,
    /// A match holds a byte of each of these sets, after the link's transformations
    /// (a regex's required bytes, the bytes outside `@validateByteRange`'s ranges, the
    /// detectors' trigger bytes…); not for a negated link. Empty: no such gate.
    pub gate: Vec<ByteSet>,
    /// Its regex's set and pattern in it ([`Crs::regex_sets`]; [`NO_SET`]: none), as
    /// `set << 16 | pattern`.
    pub rx_set: u32,
    /// Unique among all rules and chain links (indexes per-value operator results).
    pub uid: u32,
    /// Its operator's result depends on the value alone (no captures, no macros), so
    /// it may be kept per value.
    pub memo: bool,
    /// Its operator's result depends on the value alone but a match makes more than a
    /// yes (captures, multiMatch's matched step): only a miss is kept per value.
    pub memo_miss: bool,
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

/// Not in a regex set.
pub const NO_SET: u32 = u32::MAX;

/// The literal prefilter: every required literal of every regex rule and every phrase of
/// every `@pm` rule in one automaton. Each distinct transformed value is scanned once,
/// whatever chains produced it; a rule none of whose literals occurred in its chain's
/// value skips its operator.
pub struct Prefilter {
    pub ac: AhoCorasick,
    /// Pattern id → its range in `slot_list`: the slots of the rules that need it.
    pub slots_of: Vec<std::ops::Range<u32>>,
    pub slot_list: Vec<u32>,
}

/// The transformation chains as a trie: a node is its parent's value with one more
/// transformation, so chains sharing a prefix (`urlDecodeUni`, then `lowercase`…) share
/// its results, and a step that cannot change a value shares its parent's.
pub struct XformTrie {
    /// Per node (0 is the value itself), its parent and transformation.
    pub nodes: Vec<(u16, Option<Xform>)>,
    /// Per node, the bytes its transformation may change (`None`: any).
    pub triggers: Vec<Option<ByteSet>>,
    /// Per chain, its nodes after each step.
    pub paths: Vec<Vec<u16>>,
    /// Per node, its transformation's number among the distinct ones (so a value's
    /// entry is transformed once per transformation, whichever node asks).
    pub xform_ids: Vec<u8>,
    /// Per node: its transformation changes only ASCII case (the literal automaton,
    /// which ignores case, finds the same literals in its parent's value).
    pub case_only: Vec<bool>,
}

impl XformTrie {
    pub fn new(chains: &[Vec<Xform>]) -> XformTrie {
        let mut t = XformTrie {
            nodes: vec![(0, None)],
            triggers: vec![Some(ByteSet::default())],
            paths: Vec::new(),
            xform_ids: vec![0],
            case_only: vec![false],
        };
        let mut ids: HashMap<(u16, Xform), u16> = HashMap::new();
        let mut distinct: Vec<Xform> = Vec::new();
        for chain in chains {
            let mut at = 0u16;
            let mut path = Vec::with_capacity(chain.len());
            for &x in chain {
                at = *ids.entry((at, x)).or_insert_with(|| {
                    t.nodes.push((at, Some(x)));
                    t.triggers.push(x.trigger_set());
                    let xid = distinct.iter().position(|d| *d == x).unwrap_or_else(|| {
                        distinct.push(x);
                        distinct.len() - 1
                    });
                    t.xform_ids.push(xid as u8);
                    t.case_only.push(x == Xform::Std(Transform::Lowercase));
                    (t.nodes.len() - 1) as u16
                });
                path.push(at);
            }
            t.paths.push(path);
        }
        t
    }

    /// The node a chain ends at.
    pub fn end(&self, chain: u16) -> u16 {
        self.paths[chain as usize].last().copied().unwrap_or(0)
    }
}

/// CRS, compiled.
pub struct Crs {
    /// Phase 1 and phase 2 rules and markers, in file order.
    pub phases: [Vec<Entry>; 2],
    pub chains: Vec<Vec<Xform>>,
    /// Per chain, per step: the bytes the step may change.
    pub chain_sets: Vec<Vec<Option<ByteSet>>>,
    /// The chains as a trie (per-request values are cached per node).
    pub trie: XformTrie,
    /// The literal prefilter of all rules.
    pub prefilter: Option<Prefilter>,
    /// 64-bit words of a per-value prefilter result.
    pub pf_words: usize,
    /// Per summary slot ([`Rule::sum_targets`]): whether a link reading it has a prefilter slot (its values are
    /// then scanned by the literal automaton; otherwise only their byte sets count).
    pub summary_scans: Vec<bool>,
    /// 64-bit words of a per-value set of operator results (two bits per rule).
    pub memo_words: usize,
    /// The regexes of each paranoia level as one lazy DFA, for long values.
    pub regex_sets: Vec<regex_sets::RegexSet>,
    /// 64-bit words of a long value's set results (all sets).
    pub set_words: usize,
    /// Entries at least this long are answered by the sets
    /// ([`regex_sets::LONG_VALUE`]; tests move it to compare with and without).
    pub long_value: usize,
    /// The TX names the rules use, numbered.
    pub tx: TxNames,
    /// TX at the start of a request (the settings' values), by slot.
    pub initial_tx: Vec<(u16, Vec<u8>)>,
    /// The disruptive action `block` stands for, per phase.
    pub block_action: [Disruptive; 2],
    pub report: LoadReport,
    pub settings: CrsSettings,
}

pub use actions::var_key;

/// No TX slot (a name made at run time, or not a TX variable).
pub const NO_TX: u16 = u16::MAX;

/// The TX variable names a rule set uses (setvar keys, `%{tx.…}`, `TX:name` targets, the
/// settings), numbered at load: per request TX is a table of slots, so a rule reads or
/// writes a variable without hashing its name or allocating. Names made while rules run
/// (`setvar:tx.%{…}`) are looked up here by name. Slots 0–9 are the captures `TX:0`–`TX:9`.
#[derive(Debug)]
pub struct TxNames {
    pub names: Vec<String>,
    pub index: HashMap<String, u16>,
}

impl Default for TxNames {
    fn default() -> Self {
        let mut t = TxNames {
            names: Vec::new(),
            index: HashMap::new(),
        };
        for c in 0..10 {
            t.slot(&c.to_string());
        }
        t
    }
}

impl TxNames {
    /// The slot of `name` (a [`var_key`]), numbered now if new (`NO_TX` when the table
    /// is full).
    pub fn slot(&mut self, name: &str) -> u16 {
        if let Some(&s) = self.index.get(name) {
            return s;
        }
        let s = self.names.len();
        if s >= NO_TX as usize {
            return NO_TX;
        }
        self.names.push(name.to_string());
        self.index.insert(name.to_string(), s as u16);
        s as u16
    }

    /// The slot of a name known at load.
    pub fn get(&self, name: &str) -> Option<u16> {
        self.index.get(name).copied()
    }
}

impl Crs {
    /// Heap bytes of the compiled rules: regexes (without their per-thread search
    /// caches), phrase and literal automatons, selectors. Per-request buffers are not
    /// counted (they grow with the request, per thread).
    pub fn memory_usage(&self) -> usize {
        let sel = |s: &Sel| match s {
            Sel::Regex(r) => r.memory_usage(),
            Sel::Name(n) => n.len(),
            Sel::All => 0,
        };
        let link = |r: &Rule| {
            let op = match &r.op {
                Op::Rx { re, .. } => re.memory_usage(),
                Op::Pm { ac, phrases } => {
                    ac.memory_usage() + phrases.iter().map(Vec::len).sum::<usize>()
                }
                _ => 0,
            };
            op + r.targets.iter().map(|t| sel(&t.sel)).sum::<usize>()
                + r.excludes.iter().map(|(_, s)| sel(s)).sum::<usize>()
        };
        let rules: usize = self
            .phases
            .iter()
            .flatten()
            .map(|e| match e {
                Entry::Rule(r) => link(r) + r.chain.iter().map(link).sum::<usize>(),
                Entry::Marker(_) => 0,
            })
            .sum();
        let prefilter = self.prefilter.as_ref().map_or(0, |p| {
            p.ac.memory_usage() + p.slot_list.len() * 4 + p.slots_of.len() * 8
        });
        let sets: usize = self.regex_sets.iter().map(|s| s.memory_usage()).sum();
        rules + prefilter + sets
    }
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

#[cfg(test)]
mod tests {
    use super::actions::setvar;
    use super::*;

    #[test]
    fn the_items_collected_for_crs_cover_every_variable() {
        for (name, var) in VARS {
            assert_eq!(var.kinds() & !ITEM_KINDS, 0, "{name}");
        }
        // Raw bodies and upload contents are not collected (a 1 MiB upload would
        // otherwise be copied and indexed for nothing).
        assert_eq!(ITEM_KINDS & (Kind::Body.bit() | Kind::RequestBody.bit()), 0);
    }

    #[test]
    fn chains_sharing_a_prefix_share_its_trie_nodes() {
        use crate::waf::transform::Transform::{Lowercase, UrlDecodeUni};
        let (u, l) = (Xform::Std(UrlDecodeUni), Xform::Std(Lowercase));
        let chains = vec![
            vec![u, l],
            vec![u],
            vec![l],
            vec![],
            vec![u, l, Xform::Sha1],
        ];
        let t = XformTrie::new(&chains);
        // root, u, u→l, l, u→l→sha1
        assert_eq!(t.nodes.len(), 5);
        assert_eq!(t.paths[0], vec![1, 2]);
        assert_eq!(t.paths[1], vec![1]);
        assert_eq!(t.paths[2], vec![3]);
        assert_eq!(t.end(3), 0, "no transformation: the value itself");
        assert_eq!(t.paths[4][..2], t.paths[0][..]);
        assert_eq!(t.nodes[2], (1, Some(l)));
        assert_eq!(
            t.nodes[3],
            (0, Some(l)),
            "lowercase alone is not urlDecodeUni → lowercase"
        );
        assert!(t.triggers[4].is_none(), "sha1 may change any value");
    }

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
