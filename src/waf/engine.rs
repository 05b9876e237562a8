//! The compiled rule engine: rules grouped by transformation chain, each group with one
//! multi-pattern matcher, evaluated over a request's values.
//!
//! # Compilation
//! Rules above the paranoia level are dropped. The rest are grouped by their
//! transformation chain (a group's members keep their own targets), so a value is
//! transformed once per chain and scanned once per chain however many rules share it.
//! In a group:
//! - the literals of every phrase list, `contains`/`begins_with`/`ends_with`, and the
//!   required literals of each regex (see [`super::operator::required_literals`]) go into
//!   one Aho-Corasick automaton (DFA, ASCII case-insensitive). One overlapping scan names
//!   the members that can match; phrase and `contains` members are then matched, regex and
//!   prefix/suffix members are confirmed by running them on that value only;
//! - members without usable literals (regexes such as `[;|&]\s*id\b`, the SQLi/XSS
//!   detectors, byte ranges) carry the set of bytes one of which any match needs
//!   ([`super::operator::ByteSet`]); they run only on values holding one of those bytes.
//!   A regex also carries up to three further such sets (every match holds a byte of
//!   each: `\(\s*uid\s*=\s*\*` needs `(`, `=` and `*`, see
//!   [`super::operator::required_clauses`]), checked before it runs, whether it was
//!   selected by its gate bytes or by a literal hit: prose full of parentheses and
//!   apostrophes rarely holds all of them.
//!   Under [`Strategy::Hybrid`] such regexes are instead joined into one multi-pattern
//!   regex per group.
//! - A chain is skipped for a value that holds none of the bytes its transformations
//!   change (`%`, `+`, `&`, upper case…): the raw value is used as it is. When only its
//!   `lowercase` step would change the value, the automaton scans the raw value (it
//!   ignores ASCII case), the byte set is derived from the raw one, and the lower-cased
//!   copy is made only for a member that must be confirmed on it.
//! - A group is skipped for a value that holds none of the bytes its members need
//!   (each member's required bytes, or the rarest byte of each of its literals), traced
//!   back through the chain ([`Transform::producers`]: `url_decode` can make any byte out
//!   of a `%`, `lowercase` an `a` out of an `A`…): the `cmd_line` group's regex needs a
//!   `/`, so prose without `/` or `%` is neither transformed for it nor scanned.
//! - For a kind that two or more groups scan, one more automaton holds every group's
//!   literals: a value that several groups see unchanged (up to case) is scanned once,
//!   and the hits are handed to each group; a group whose chain changes the value scans
//!   its own output with its own automaton.
//! - A regex anchored at the value's (or a line's) start carries the bytes a match can
//!   begin with ([`super::operator::start_bytes`]); it runs only on values beginning
//!   with one of them (or holding a line break).
//!
//! Per request, the values' own byte sets are computed once per value (and once per
//! changed transformation), so gating costs four word-ANDs per member. Before any of
//! that, a value is looked up in the thread's memo of values found clean
//! ([`super::memo`]): a repeat (a header of a keep-alive connection, a path, a common
//! argument) costs a hash and a comparison.
//!
//! # Strategies, measured
//! [`Strategy`] selects how regexes are matched; `benches/waf.rs` measures all of them on
//! the default rule set (2-core development machine, criterion medians; one run of each
//! shown, repeated runs moved by ±10 %). "Benign" is a typical request (827 B of headers,
//! 10 query arguments, a 2 KiB JSON body); "+200/+400" adds that many synthetic regex rules
//! (one in ten without a usable literal); "attack" has SQL injection in one argument.
//!
//! | strategy    | benign  | attack  | +0 / +200 / +400 rules (benign) |
//! |-------------|---------|---------|---------------------------------|
//! | `Prefilter` | 88 µs   | 96 µs   | 112 / 123 / 155 µs (earlier run: 123 / 131 / 140) |
//! | `Hybrid`    | 86 µs   | 99 µs   | 102 / 110 / 122 µs              |
//! | `Set`       | 95 µs   | 1.36 ms | 97 µs / 14.1 ms / 22.3 ms       |
//! | `PerRule`   | 294 µs  | 300 µs  | 385 µs / 1.70 ms / 3.10 ms      |
//!
//! That table is from the first measurement; since then (value dedup, lazy lower-casing,
//! start-byte and kind gates, the merged automaton) `Prefilter` takes 42 µs on the benign
//! request, 2.7 µs and 12.2 µs on the load script's GET and JSON POST (`load_shapes`).
//!
//! One big which-patterns-matched set is the fastest only while it is small: with more
//! patterns its overlapping search thrashes the lazy DFA's cache and falls back to the
//! PikeVM (milliseconds). Per-rule regexes grow linearly. The literal automaton with byte
//! gates (`Prefilter`) and its variant with a set for literal-less regexes (`Hybrid`) grow
//! sublinearly (doubling 200 → 400 extra rules: ×1.07–1.25 and ×1.03–1.11). The proxy uses
//! `Prefilter` (see [`super::config::STRATEGY`]): `Hybrid` is as fast but its set would hit
//! the same cache cliff if many literal-less rules were added.
//!
//! Where the time goes (perf, benign request): the overlapping automaton scans (17 %),
//! the evaluation loop itself with the per-value byte sets (20 %), transformations
//! (13 %), regex confirmations on values that hold gate bytes — quotes, `;`, parentheses
//! in prose — (15 %). For prose (the load script's varied JSON POST: 57 new values of
//! random words, commas, parentheses and apostrophes), callgrind now counts 237k
//! instructions per inspection (440k before the group gates traced through chains, the
//! separator-only path trigger, the SQLi detector's filters and the regex prefilter
//! policy): JSON reading and value collection ~60k, automaton scans ~27k, regexes ~31k,
//! the SQLi detector ~22k, the rest the loop's own gating. No single part dominates:
//! reaching the 10 µs needs fewer passes over each value (transformations, byte
//! set and automaton fused into one pass, dense DFAs built ahead of time), not a better
//! matcher. A 64 KiB unparsed body scans at 35–41 MB/s (JSON: 29–32 MB/s): every gated
//! regex whose bytes occur runs over it.

//! # Caches and memory
//! With the shipped rules the groups' automata (DFAs, one per distinct set of members a
//! kind of value needs) take 3.3 MB and the merged automaton 1.1 MB
//! ([`Engine::automata_bytes`]); one merged automaton per kind set took 4.1 MB for no
//! measurable gain, and one automaton per group for all kinds (1.0 MB instead of 3.3)
//! made the GET 10 % slower (more hits to drop in header and path values).
//!
//! Each regex (and each multi-pattern regex) gets a slot; every thread keeps one
//! `meta::Cache` per slot in a thread-local [`Scratch`], created on first use and capped at
//! [`super::operator::REGEX_CACHE_BYTES`] of lazy-DFA states each. The scratch also holds
//! the request's values and transformed copies; buffers that grew past
//! [`SCRATCH_KEEP_BYTES`] for a large body are released after the request.
//!
//! # Failure modes
//! Evaluation cannot fail: a regex search that gives up in the lazy DFA falls back to a
//! linear-time engine inside the meta regex; the detectors bound what they scan.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};
use regex_automata::{meta, Input, PatternSet};

use super::memo::{CleanValues, Key};
use super::operator::{self, ByteSet, Operator};
use super::request::{Items, RequestParts, NO_ORIGIN};
use super::rule::{Kind, Rule, RuleAction, Severity, TargetSet};
use super::transform::Transform;

/// A regex whose required bytes cost at most this (see [`ByteSet::cost`]: up to three
/// bytes of rare punctuation such as `;|&`) is gated by them instead of by its literals.
pub const RARE_GATE_COST: u32 = 3;

/// Requests with at least this many values skip repeated (kind, name, value) items.
pub const DEDUP_FROM_ITEMS: usize = 24;

/// Scratch buffers above this size are released after a request.
pub const SCRATCH_KEEP_BYTES: usize = 1 << 20;

/// How a group's regexes are matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Required literals in the group's Aho-Corasick automaton; a regex runs only when one
    /// of its literals occurs; literal-less regexes are gated by required bytes.
    Prefilter,
    /// All regexes of a group in one multi-pattern regex (which-patterns-matched search).
    Set,
    /// No sharing: every member runs on every value it targets.
    PerRule,
    /// `Prefilter` for regexes with required literals, one multi-pattern regex per group
    /// for those without.
    Hybrid,
}

#[derive(Debug)]
pub(crate) struct Cond {
    pub targets: TargetSet,
    pub chain: usize,
    pub op: Operator,
    pub slot: Option<usize>,
    pub negate: bool,
}

/// A rule after compilation.
#[derive(Debug)]
pub struct CompiledRule {
    pub id: u32,
    pub msg: Arc<str>,
    pub severity: Severity,
    pub score: u32,
    pub action: RuleAction,
    pub log: bool,
    pub tags: Vec<String>,
    /// The first condition, kept for `pass` rules (others are evaluated through groups).
    first: Option<Cond>,
    chain: Vec<Cond>,
}

#[derive(Debug)]
struct Member {
    rule: usize,
    kinds: u32,
    targets: TargetSet,
    /// The targets name no value and exclude none: `kinds` alone says what is covered.
    by_kind_only: bool,
    op: Operator,
    slot: Option<usize>,
    negate: bool,
    /// The automaton's hit is the match.
    exact: bool,
    /// A value must hold one of these bytes (direct members only).
    needs: Option<ByteSet>,
    /// A match begins at the value's start with one of these bytes (or at a line's).
    starts: Option<ByteSet>,
    /// Further sets a value must hold a byte of each (see
    /// [`super::operator::required_clauses`]), checked before the regex runs.
    also: Box<[ByteSet]>,
}

impl Member {
    #[inline]
    fn covers(&self, kind: Kind, name: &[u8]) -> bool {
        self.kinds & kind.bit() != 0 && (self.by_kind_only || self.targets.covers(kind, name))
    }

    /// The value holds a byte of every set in [`Member::also`].
    #[inline]
    fn holds_also(&self, bits: &ByteSet) -> bool {
        self.also.iter().all(|c| c.intersects(bits))
    }

    /// The value can begin a match (see [`Member::starts`]); `first` is its first byte.
    #[inline]
    fn may_start(&self, first: Option<u8>, bits: &ByteSet) -> bool {
        match (self.starts, first) {
            (None, _) => true,
            (Some(_), _) if bits.contains(b'\n') => true,
            (Some(s), Some(b)) => s.contains(b),
            (Some(_), None) => false,
        }
    }
}

#[derive(Debug)]
struct Group {
    kinds: u32,
    chain: usize,
    /// Automata with, per automaton, pattern id → member. Each holds the literals of the
    /// members that cover some kinds of value; `ac_for_kind[kind]` picks the one a value
    /// of that kind is scanned with (so a header's automaton does not carry argument
    /// rules' literals, and the other way round).
    acs: Vec<(AhoCorasick, Vec<usize>)>,
    ac_for_kind: [Option<u8>; 32],
    members: Vec<Member>,
    direct: Vec<usize>,
    /// Gate index over `direct` (when it has at most 64 members): per byte, the members
    /// (bit i = `direct[i]`) a value holding that byte must be tested with; `ungated`:
    /// the members tested on every value.
    gate: Option<Box<[u64; 256]>>,
    ungated: u64,
    /// Per kind: the `direct` members (bit i = `direct[i]`) that look at that kind.
    direct_for_kind: [u64; 32],
    set: Option<SetMatcher>,
    /// Bytes a raw value must hold one of for any member to match after the chain (each
    /// member's required bytes, traced back through the chain with
    /// [`Transform::producers`]); `None` when some member needs no particular byte. A
    /// value without them skips the group: no transformation, no scan.
    raw_needs: Option<ByteSet>,
}

#[derive(Debug)]
struct SetMatcher {
    re: meta::Regex,
    slot: usize,
    /// Pattern id → member.
    members: Vec<usize>,
    needs: Option<ByteSet>,
}

/// Compiled rules, immutable; evaluation state lives in per-thread scratch.
#[derive(Debug)]
pub struct Engine {
    id: u64,
    pub rules: Vec<CompiledRule>,
    groups: Vec<Group>,
    chains: Vec<Vec<Transform>>,
    /// Per chain: the bytes its transformations may change (`ALL`: always transforms).
    chain_triggers: Vec<ByteSet>,
    /// Per chain, per step: the bytes that step may change.
    step_triggers: Vec<Vec<ByteSet>>,
    /// Per chain: it lower-cases, and the bytes its other steps may change.
    chain_lowers: Vec<bool>,
    chain_other_triggers: Vec<ByteSet>,
    pass_rules: Vec<usize>,
    /// Regex per cache slot (cloning a meta regex shares it).
    slots: Vec<meta::Regex>,
    /// An automaton over every group's literals, with pattern id → (group, member), and
    /// the kinds (bit set) it scans: one scan of the raw value serves every group whose
    /// chain leaves the value as it is (up to ASCII case).
    raw_ac: Option<(AhoCorasick, Vec<(u32, u32)>)>,
    raw_ac_kinds: u32,
    max_set_patterns: usize,
    kinds: u32,
    /// A chained or `pass` condition reads derived values (`decoded`, `embedded`) on
    /// their own: they must then be collected even inside values the memo knows.
    conds_read_derived: bool,
}

/// A rule that matched a value.
#[derive(Debug, Clone, Copy)]
pub struct Hit {
    pub rule: usize,
    pub item: usize,
}

static NEXT_ENGINE_ID: AtomicU64 = AtomicU64::new(1);

impl Engine {
    /// Compiles `rules` at `paranoia` with `strategy`.
    pub fn compile(rules: &[Rule], paranoia: u8, strategy: Strategy) -> Engine {
        let mut e = Engine {
            id: NEXT_ENGINE_ID.fetch_add(1, Ordering::Relaxed),
            rules: Vec::new(),
            groups: Vec::new(),
            chains: Vec::new(),
            chain_triggers: Vec::new(),
            step_triggers: Vec::new(),
            chain_lowers: Vec::new(),
            chain_other_triggers: Vec::new(),
            pass_rules: Vec::new(),
            slots: Vec::new(),
            raw_ac: None,
            raw_ac_kinds: 0,
            max_set_patterns: 0,
            conds_read_derived: false,
            kinds: 0,
        };
        let mut chain_ids: HashMap<Vec<Transform>, usize> = HashMap::new();
        // Per group: (member, literals) and (pattern, member) for the set.
        let mut literals: Vec<Vec<Option<Vec<Vec<u8>>>>> = Vec::new();
        let mut set_sources: Vec<Vec<(String, usize)>> = Vec::new();
        for r in rules.iter().filter(|r| r.paranoia <= paranoia) {
            let ri = e.rules.len();
            let mut cond = |c: &super::rule::Condition, e: &mut Engine| -> Cond {
                let next = chain_ids.len();
                let chain = *chain_ids.entry(c.transforms.clone()).or_insert(next);
                if chain == e.chains.len() {
                    e.chains.push(c.transforms.clone());
                    e.chain_triggers.push(chain_triggers(&c.transforms));
                    let others: Vec<Transform> = c
                        .transforms
                        .iter()
                        .copied()
                        .filter(|t| *t != Transform::Lowercase)
                        .collect();
                    e.chain_lowers.push(others.len() < c.transforms.len());
                    e.chain_other_triggers.push(chain_triggers(&others));
                    e.step_triggers.push(
                        c.transforms
                            .iter()
                            .map(|t| chain_triggers(std::slice::from_ref(t)))
                            .collect(),
                    );
                }
                e.kinds |= c.targets.kinds();
                let slot = match &c.operator {
                    Operator::Regex(re) => {
                        e.slots.push((**re).clone());
                        Some(e.slots.len() - 1)
                    }
                    _ => None,
                };
                Cond {
                    targets: c.targets.clone(),
                    chain,
                    op: c.operator.clone(),
                    slot,
                    negate: c.negate,
                }
            };
            let first = cond(&r.when, &mut e);
            let chain: Vec<Cond> = r.chain.iter().map(|c| cond(c, &mut e)).collect();
            let derived = Kind::Decoded.bit() | Kind::Embedded.bit();
            e.conds_read_derived |= chain.iter().any(|c| c.targets.kinds() & derived != 0)
                || r.action == RuleAction::Pass && first.targets.kinds() & derived != 0;
            let mut compiled = CompiledRule {
                id: r.id,
                msg: Arc::from(r.msg.as_str()),
                severity: r.severity,
                score: r.score,
                action: r.action,
                log: r.log,
                tags: r.tags.clone(),
                first: None,
                chain,
            };
            if r.action == RuleAction::Pass {
                compiled.first = Some(first);
                e.rules.push(compiled);
                e.pass_rules.push(ri);
                continue;
            }
            e.rules.push(compiled);
            let gi = match e.groups.iter().position(|g| g.chain == first.chain) {
                Some(gi) => gi,
                None => {
                    e.groups.push(Group {
                        kinds: 0,
                        chain: first.chain,
                        acs: Vec::new(),
                        ac_for_kind: [None; 32],
                        members: Vec::new(),
                        direct: Vec::new(),
                        gate: None,
                        ungated: 0,
                        direct_for_kind: [0; 32],
                        set: None,
                        raw_needs: Some(ByteSet::default()),
                    });
                    literals.push(Vec::new());
                    set_sources.push(Vec::new());
                    e.groups.len() - 1
                }
            };
            let g = &mut e.groups[gi];
            g.kinds |= first.targets.kinds();
            let mi = g.members.len();
            let pattern = r.when.pattern.as_deref();
            let is_regex = matches!(first.op, Operator::Regex(_));
            let needs = match strategy {
                Strategy::PerRule => None,
                _ if first.negate => None,
                _ => first.op.needs(pattern),
            };
            // Strong literals (long, few) go to the automaton; a regex with only weak
            // literals (short or many, e.g. a list of command names) but a gate of a few
            // rare bytes (`;|&`, quotes, brackets) is cheaper to run directly. Either way
            // the byte gate is checked too before the regex runs.
            let rare_gate = is_regex && needs.is_some_and(|n| n.cost() <= RARE_GATE_COST);
            let lits = match strategy {
                Strategy::PerRule => None,
                _ if first.negate => None,
                _ => first
                    .op
                    .literals(pattern)
                    .filter(|l| !rare_gate || !is_regex || strong_literals(l)),
            };
            let to_set = is_regex
                && !first.negate
                && pattern.is_some()
                && match strategy {
                    Strategy::Set => true,
                    Strategy::Hybrid => lits.is_none(),
                    Strategy::Prefilter | Strategy::PerRule => false,
                };
            if to_set {
                set_sources[gi].push((pattern.unwrap_or_default().to_string(), mi));
                literals[gi].push(None);
            } else {
                literals[gi].push(lits);
            }
            g.members.push(Member {
                rule: ri,
                kinds: first.targets.kinds(),
                by_kind_only: first.targets.exclude.is_empty()
                    && first.targets.include.iter().all(|t| t.name.is_none()),
                targets: first.targets,
                exact: first.op.literal_is_exact(),
                starts: if first.negate {
                    None
                } else {
                    first.op.starts(pattern)
                },
                also: match needs {
                    Some(n) => first
                        .op
                        .needs_also(pattern)
                        .into_iter()
                        .filter(|c| *c != n)
                        .collect(),
                    None => Box::default(),
                },
                op: first.op,
                slot: first.slot,
                negate: first.negate,
                needs,
            });
            let required = needs.or_else(|| {
                literals[gi]
                    .last()
                    .and_then(Option::as_ref)
                    .and_then(|l| literal_bytes(l))
            });
            g.raw_needs = g.raw_needs.zip(required).map(|(a, b)| a.union(&b));
        }
        for g in &mut e.groups {
            g.raw_needs = g
                .raw_needs
                .and_then(|n| chain_producers(&e.chains[g.chain], n));
        }
        // Per group: the members whose literals went into its automata, with the literals.
        let mut group_lits: Vec<MemberLiterals> = Vec::new();
        // Matchers per group.
        for (gi, g) in e.groups.iter_mut().enumerate() {
            let in_set: Vec<usize> = set_sources[gi].iter().map(|(_, m)| *m).collect();
            let mut with_lits: Vec<(usize, Vec<Vec<u8>>)> = Vec::new();
            for (mi, member_lits) in literals[gi].iter_mut().enumerate() {
                if in_set.contains(&mi) {
                    continue;
                }
                match member_lits.take() {
                    Some(ls) => with_lits.push((mi, ls)),
                    None => g.direct.push(mi),
                }
            }
            let mut built_for: HashMap<Vec<usize>, u8> = HashMap::new();
            for k in 0..32u32 {
                let bit = 1u32 << k;
                let members: Vec<usize> = with_lits
                    .iter()
                    .filter(|(mi, _)| g.members[*mi].kinds & bit != 0)
                    .map(|(mi, _)| *mi)
                    .collect();
                if members.is_empty() {
                    continue;
                }
                if let Some(&i) = built_for.get(&members) {
                    g.ac_for_kind[k as usize] = Some(i);
                    continue;
                }
                let mut lits: Vec<&[u8]> = Vec::new();
                let mut owner: Vec<usize> = Vec::new();
                for (mi, ls) in with_lits.iter().filter(|(mi, _)| members.contains(mi)) {
                    for l in ls {
                        lits.push(l);
                        owner.push(*mi);
                    }
                }
                let built = AhoCorasick::builder()
                    .ascii_case_insensitive(true)
                    .match_kind(MatchKind::Standard)
                    .kind(Some(AhoCorasickKind::DFA))
                    .build(&lits)
                    .or_else(|_| {
                        AhoCorasick::builder()
                            .ascii_case_insensitive(true)
                            .build(&lits)
                    });
                match built {
                    Ok(ac) => {
                        let i = g.acs.len() as u8;
                        g.acs.push((ac, owner));
                        built_for.insert(members, i);
                        g.ac_for_kind[k as usize] = Some(i);
                    }
                    Err(_) => {
                        // Only for empty literals, which compilation rejects; stay correct.
                        for mi in members {
                            if !g.direct.contains(&mi) {
                                g.direct.push(mi);
                            }
                        }
                    }
                }
            }
            group_lits.push(
                with_lits
                    .into_iter()
                    .filter(|(mi, _)| !g.direct.contains(mi))
                    .collect(),
            );
            if g.direct.len() <= 64 {
                let mut gate = Box::new([0u64; 256]);
                for (i, &mi) in g.direct.iter().enumerate() {
                    for k in 0..32 {
                        if g.members[mi].kinds & (1 << k) != 0 {
                            g.direct_for_kind[k] |= 1 << i;
                        }
                    }
                    match g.members[mi].needs {
                        Some(n) => {
                            for b in 0..=255u8 {
                                if n.contains(b) {
                                    gate[b as usize] |= 1 << i;
                                }
                            }
                        }
                        None => g.ungated |= 1 << i,
                    }
                }
                g.gate = Some(gate);
            }
            if !in_set.is_empty() {
                let pats: Vec<&str> = set_sources[gi].iter().map(|(p, _)| p.as_str()).collect();
                match operator::compile_regexes(&pats) {
                    Ok(re) => {
                        e.slots.push(re.clone());
                        e.max_set_patterns = e.max_set_patterns.max(pats.len());
                        let needs = in_set.iter().try_fold(ByteSet::default(), |acc, &mi| {
                            g.members[mi].needs.map(|n| acc.union(&n))
                        });
                        g.set = Some(SetMatcher {
                            re,
                            slot: e.slots.len() - 1,
                            members: in_set,
                            needs,
                        });
                    }
                    Err(_) => g.direct.extend(in_set),
                }
            }
        }
        e.build_raw_automaton(&group_lits);
        e
    }

    /// The merged automaton (see [`Engine::raw_ac`]), for the kinds two or more groups
    /// scan. One for all kinds (a hit for a member that does not look at the value's kind
    /// is dropped as in the groups): one automaton per kind set cost megabytes.
    fn build_raw_automaton(&mut self, group_lits: &[MemberLiterals]) {
        let kinds = (0..32usize)
            .filter(|&k| {
                self.groups
                    .iter()
                    .filter(|g| g.ac_for_kind[k].is_some())
                    .count()
                    >= 2
            })
            .fold(0u32, |acc, k| acc | 1 << k);
        if kinds == 0 {
            return;
        }
        let mut lits: Vec<&[u8]> = Vec::new();
        let mut owner: Vec<(u32, u32)> = Vec::new();
        for (gi, members) in group_lits.iter().enumerate() {
            for (mi, ls) in members {
                for l in ls {
                    lits.push(l);
                    owner.push((gi as u32, *mi as u32));
                }
            }
        }
        // On failure the groups' own automata scan.
        if let Ok(ac) = AhoCorasick::builder()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::Standard)
            .kind(Some(AhoCorasickKind::DFA))
            .build(&lits)
        {
            self.raw_ac = Some((ac, owner));
            self.raw_ac_kinds = kinds;
        }
    }

    /// Heap bytes of the automata: the groups' and the merged one.
    pub fn automata_bytes(&self) -> (usize, usize) {
        let groups = self
            .groups
            .iter()
            .flat_map(|g| g.acs.iter())
            .map(|(a, o)| a.memory_usage() + o.len() * 8)
            .sum();
        let merged = self
            .raw_ac
            .as_ref()
            .map_or(0, |(a, o)| a.memory_usage() + o.len() * 8);
        (groups, merged)
    }

    /// Bit set of the [`Kind`]s some rule looks at.
    pub fn kinds(&self) -> u32 {
        self.kinds
    }

    /// Number of compiled rules.
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// Per group: the chain, members, automaton patterns, direct members, set patterns.
    pub fn stats(&self) -> Vec<(String, usize, usize, usize, usize)> {
        self.groups
            .iter()
            .map(|g| {
                let chain: Vec<&str> = self.chains[g.chain].iter().map(|t| t.name()).collect();
                (
                    chain.join(","),
                    g.members.len(),
                    g.acs.iter().map(|(a, _)| a.patterns_len()).sum(),
                    g.direct.len(),
                    g.set.as_ref().map_or(0, |s| s.members.len()),
                )
            })
            .collect()
    }

    /// Runs `f` with this thread's scratch, prepared for this engine.
    pub fn with_scratch<R>(&self, f: impl FnOnce(&mut Scratch) -> R) -> R {
        thread_local! {
            static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
        }
        SCRATCH.with(|cell| match cell.try_borrow_mut() {
            Ok(mut s) => {
                self.prepare(&mut s);
                let r = f(&mut s);
                s.trim();
                r
            }
            Err(_) => {
                let mut s = Scratch::default();
                self.prepare(&mut s);
                f(&mut s)
            }
        })
    }

    fn prepare(&self, s: &mut Scratch) {
        if s.engine != self.id {
            s.engine = self.id;
            s.caches = self.slots.iter().map(|r| r.create_cache()).collect();
            s.chain_out = vec![Vec::new(); self.chains.len()];
            s.chain_bits = vec![ByteSet::default(); self.chains.len()];
            s.chain_for = vec![usize::MAX; self.chains.len()];
            s.patset = PatternSet::new(self.max_set_patterns.max(1));
            s.matched = vec![0; self.rules.len().div_ceil(64)];
            s.memo.clear();
        }
        s.chain_for.iter_mut().for_each(|c| *c = usize::MAX);
        s.matched.iter_mut().for_each(|w| *w = 0);
        s.hits_out.clear();
        s.seen.clear();
    }

    /// Collects the request's values into the scratch. `alone`: nothing but this engine
    /// reads the values (no CRS), so values the memo knows need not be searched for
    /// derived values.
    pub fn collect(&self, s: &mut Scratch, req: &RequestParts<'_>, extra_kinds: u32, alone: bool) {
        let memo = (alone && !self.conds_read_derived).then_some(&mut s.memo);
        s.items
            .collect_as(req, self.kinds | extra_kinds, None, memo);
    }

    /// The first `pass` rule that matches, if any.
    pub fn pass_rule(&self, s: &mut Scratch) -> Option<usize> {
        self.pass_rules.iter().copied().find(|&ri| {
            let r = &self.rules[ri];
            r.first.as_ref().is_some_and(|c| self.cond_matches(s, c))
                && r.chain.iter().all(|c| self.cond_matches(s, c))
        })
    }

    /// Evaluates every group over the collected values. `skip(rule, kind, name)` vetoes a
    /// hit (route exclusions). Hits land in `s.hits_out`, at most one per rule.
    pub fn evaluate(
        &self,
        s: &mut Scratch,
        mut skip: impl FnMut(&CompiledRule, Kind, &[u8]) -> bool,
    ) {
        let n_items = s.items.items.len();
        let dedup = n_items >= DEDUP_FROM_ITEMS;
        for ii in 0..n_items {
            let it = &s.items.items[ii];
            let kind = it.kind;
            let bit = kind.bit();
            if self.kinds & bit == 0 || it.known_clean {
                continue;
            }
            let (origin, has_derived) = (it.origin, it.has_derived);
            let (vs, ve) = (it.value.start as usize, it.value.end as usize);
            let (ns, ne) = (it.name.start as usize, it.name.end as usize);
            // The same kind, name and value again: every rule answers as it did the first
            // time (and a rule matches once per request), so there is nothing to learn.
            // Looked for only in requests with many values (JSON arrays of records, big
            // forms): in a small request a repeat is rare and the lookup costs more.
            // (Not a derived value: its verdict is also its origin's, see below.)
            if dedup && ve - vs >= 8 && origin == NO_ORIGIN {
                let buf = &s.items.buf;
                let h = {
                    use std::hash::{BuildHasher, Hash, Hasher};
                    let mut st = foldhash::fast::FixedState::with_seed(0x5eed).build_hasher();
                    (kind as u8).hash(&mut st);
                    buf[ns..ne].hash(&mut st);
                    buf[vs..ve].hash(&mut st);
                    st.finish()
                };
                match s.seen.entry(h) {
                    std::collections::hash_map::Entry::Occupied(e) => {
                        let prev = &s.items.items[*e.get() as usize];
                        if prev.kind == kind
                            && buf[prev.name.start as usize..prev.name.end as usize] == buf[ns..ne]
                            && buf[prev.value.start as usize..prev.value.end as usize]
                                == buf[vs..ve]
                        {
                            continue;
                        }
                    }
                    std::collections::hash_map::Entry::Vacant(e) => {
                        e.insert(ii as u32);
                    }
                }
            }
            // A value found clean before (in this request or an earlier one) is clean.
            let memo_key = s.memo.key(
                kind,
                &s.items.buf[ns..ne],
                &s.items.buf[vs..ve],
                (s.items.secret_query, s.items.secret_body),
            );
            if let Some(k) = memo_key {
                if s.memo
                    .contains(k, kind, &s.items.buf[ns..ne], &s.items.buf[vs..ve])
                {
                    continue;
                }
            }
            let mut clean = true;
            let raw_bits = ByteSet::of(&s.items.buf[vs..ve]);
            let lowered_bits = raw_bits.ascii_lowercased();
            // Per group: the value it sees. Unchanged by the chain; changed only by its
            // `lowercase` step, which is not run here (the automata ignore ASCII case, and
            // the byte set follows from the raw one): the lower-cased copy is made only if
            // a member has to be confirmed on it; or changed by another step, which runs
            // the chain from the first step that changes the value, once per item.
            s.modes.clear();
            let mut raw_scanners = 0;
            for g in &self.groups {
                let mode = if g.kinds & bit == 0
                    || g.raw_needs.is_some_and(|n| !raw_bits.intersects(&n))
                {
                    Mode::Skip
                } else if !raw_bits.intersects(&self.chain_triggers[g.chain]) {
                    Mode::Raw
                } else if self.chain_lowers[g.chain]
                    && !raw_bits.intersects(&self.chain_other_triggers[g.chain])
                    && !lowered_bits.intersects(&self.chain_other_triggers[g.chain])
                {
                    Mode::Lower
                } else {
                    Mode::Transformed
                };
                if matches!(mode, Mode::Raw | Mode::Lower) && g.ac_for_kind[kind as usize].is_some()
                {
                    raw_scanners += 1;
                }
                s.modes.push(mode);
            }
            // Two groups or more would scan the raw value: one merged scan serves them.
            let merged = match &self.raw_ac {
                Some((ac, owner)) if raw_scanners >= 2 && self.raw_ac_kinds & bit != 0 => {
                    s.raw_hits.clear();
                    let v = &s.items.buf[vs..ve];
                    // Most values hold no literal at all: the plain search says so faster
                    // than the overlapping one, which then runs only when there is a hit.
                    if ac.is_match(v) {
                        for m in ac.find_overlapping_iter(v) {
                            s.raw_hits.push(owner[m.pattern().as_usize()]);
                        }
                    }
                    true
                }
                _ => false,
            };
            for (gi, g) in self.groups.iter().enumerate() {
                let mode = s.modes[gi];
                if matches!(mode, Mode::Skip) {
                    continue;
                }
                let lower = matches!(mode, Mode::Lower);
                let real = matches!(mode, Mode::Transformed);
                if real && s.chain_for[g.chain] != ii {
                    let raw = &s.items.buf[vs..ve];
                    let chain = &self.chains[g.chain];
                    let steps = &self.step_triggers[g.chain];
                    let first = steps
                        .iter()
                        .position(|t| raw_bits.intersects(t))
                        .unwrap_or(0);
                    let out = &mut s.chain_out[g.chain];
                    super::transform::run_chain_into(&chain[first..], raw, out, &mut s.tmp);
                    s.chain_bits[g.chain] = ByteSet::of(out);
                    s.chain_for[g.chain] = ii;
                }
                let Scratch {
                    items,
                    caches,
                    chain_out,
                    chain_bits,
                    chain_for,
                    hits,
                    patset,
                    raw_hits,
                    ..
                } = &mut *s;
                let name = &items.buf[ns..ne];
                let mut subject = if real {
                    Subject::ready(&chain_out[g.chain], &chain_bits[g.chain])
                } else if lower {
                    Subject::lowered(&items.buf[vs..ve], &lowered_bits, &mut chain_out[g.chain])
                } else {
                    Subject::ready(&items.buf[vs..ve], &raw_bits)
                };
                let pre = (merged && !real).then_some((&raw_hits[..], gi as u32));
                run_group(g, kind, name, &mut subject, pre, caches, hits, patset);
                if lower {
                    // The lower-cased copy (if made) is not the chain's full output.
                    chain_for[g.chain] = usize::MAX;
                }
                if hits.is_empty() {
                    continue;
                }
                clean = false;
                let found = std::mem::take(&mut s.hits);
                for &mi in &found {
                    let ri = g.members[mi].rule;
                    if s.matched[ri / 64] & (1 << (ri % 64)) != 0 {
                        continue;
                    }
                    let rule = &self.rules[ri];
                    if skip(rule, kind, &s.items.buf[ns..ne]) {
                        continue;
                    }
                    if !rule.chain.iter().all(|c| self.cond_matches(s, c)) {
                        continue;
                    }
                    s.matched[ri / 64] |= 1 << (ri % 64);
                    s.hits_out.push(Hit { rule: ri, item: ii });
                }
                s.hits = found;
                s.hits.clear();
            }
            // The memo knows a value as clean together with what was found inside it (the
            // collection skips deriving from a known value): a value with derived values
            // is stored once they are all evaluated, if none had a hit.
            match (clean, memo_key) {
                (true, Some(k)) if has_derived => s.memo_pending.push((k, ii as u32)),
                (true, Some(k)) => {
                    s.memo
                        .insert(k, kind, &s.items.buf[ns..ne], &s.items.buf[vs..ve])
                }
                (false, _) if origin != NO_ORIGIN => s.memo_tainted.push(origin),
                _ => {}
            }
        }
        let Scratch {
            items,
            memo,
            memo_pending,
            memo_tainted,
            ..
        } = s;
        for &(k, ii) in memo_pending.iter() {
            if !memo_tainted.contains(&ii) {
                let it = &items.items[ii as usize];
                memo.insert(k, it.kind, items.name(it), items.value(it));
            }
        }
        memo_pending.clear();
        memo_tainted.clear();
    }

    /// A condition evaluated on its own (chains, `pass` rules): any covered value matches.
    fn cond_matches(&self, s: &mut Scratch, c: &Cond) -> bool {
        let Scratch {
            items,
            caches,
            tmp,
            tmp2,
            ..
        } = s;
        let chain = &self.chains[c.chain];
        items.items.iter().any(|it| {
            if !c.targets.covers(it.kind, items.name(it)) {
                return false;
            }
            let raw = items.value(it);
            let v: &[u8] = if chain.is_empty() {
                raw
            } else {
                super::transform::run_chain_into(chain, raw, tmp, tmp2);
                tmp
            };
            c.op.is_match(v, c.slot.map(|i| &mut caches[i])) != c.negate
        })
    }
}

/// Literals selective enough to be preferred over a rare-byte gate, at most
/// [`MAX_STRONG_LITERALS`] of them, each at least four bytes long (a word such as `exec`
/// or `eval` is rarer in text than a parenthesis) or two holding a rare byte (`{{`, `<?`,
/// `${`, `</`: rarer than either of their bytes alone).
fn strong_literals(lits: &[Vec<u8>]) -> bool {
    lits.len() <= MAX_STRONG_LITERALS
        && lits
            .iter()
            .all(|l| l.len() >= 4 || l.len() >= 2 && l.iter().any(|&b| ByteSet::byte_cost(b) == 1))
}

/// More literals than this make a list weak (see [`strong_literals`]).
pub const MAX_STRONG_LITERALS: usize = 64;

/// Bytes one of which a value holds when it holds one of `lits` (ASCII case ignored, as
/// the automata do): the rarest byte of each literal, in both cases.
fn literal_bytes(lits: &[Vec<u8>]) -> Option<ByteSet> {
    let mut set = ByteSet::default();
    for l in lits {
        let b = ByteSet::rarest(l)?;
        set.insert(b.to_ascii_lowercase());
        set.insert(b.to_ascii_uppercase());
    }
    Some(set)
}

/// The raw bytes from which `chain` can make a byte of `wanted` (see
/// [`Transform::producers`]); `None` when any byte can.
fn chain_producers(chain: &[Transform], wanted: ByteSet) -> Option<ByteSet> {
    chain.iter().rev().try_fold(wanted, |w, t| t.producers(&w))
}

/// Bytes any transformation of `chain` may change.
fn chain_triggers(chain: &[Transform]) -> ByteSet {
    let mut set = ByteSet::default();
    for t in chain {
        match t.triggers() {
            Some(bytes) => set = set.union(&ByteSet::from_bytes(bytes.iter().copied())),
            None => return ByteSet::ALL,
        }
    }
    set
}

/// The value a group's members are tested on: as stored (raw or the chain's output),
/// or the raw value lower-cased on first use (the automata ignore ASCII case and scan
/// the raw bytes; only members that must be confirmed need the copy).
struct Subject<'a> {
    scan: &'a [u8],
    bits: &'a ByteSet,
    lower: Option<(&'a mut Vec<u8>, bool)>,
}

impl<'a> Subject<'a> {
    fn ready(v: &'a [u8], bits: &'a ByteSet) -> Self {
        Subject {
            scan: v,
            bits,
            lower: None,
        }
    }

    fn lowered(raw: &'a [u8], bits: &'a ByteSet, buf: &'a mut Vec<u8>) -> Self {
        Subject {
            scan: raw,
            bits,
            lower: Some((buf, false)),
        }
    }

    /// The value's first byte as the members see it.
    fn first_byte(&self) -> Option<u8> {
        let b = self.scan.first().copied();
        match self.lower {
            Some(_) => b.map(|b| b.to_ascii_lowercase()),
            None => b,
        }
    }

    /// The value as the members' transformations leave it.
    fn value(&mut self) -> &[u8] {
        match &mut self.lower {
            None => self.scan,
            Some((buf, made)) => {
                if !*made {
                    buf.clear();
                    buf.extend(self.scan.iter().map(u8::to_ascii_lowercase));
                    *made = true;
                }
                buf
            }
        }
    }
}

/// Runs a group's members on a value. `pre`: the merged raw scan's hits (group, member)
/// and this group's index, when that scan stands for the group's own automaton.
#[inline]
#[allow(clippy::too_many_arguments)]
fn run_group(
    g: &Group,
    kind: Kind,
    name: &[u8],
    subject: &mut Subject<'_>,
    pre: Option<(&[(u32, u32)], u32)>,
    caches: &mut [meta::Cache],
    hits: &mut Vec<usize>,
    patset: &mut PatternSet,
) {
    hits.clear();
    let bits = *subject.bits;
    let first = subject.first_byte();
    if let Some(i) = g.ac_for_kind[kind as usize] {
        match pre {
            Some((found, gi)) => hits.extend(
                found
                    .iter()
                    .filter(|(g, _)| *g == gi)
                    .map(|(_, m)| *m as usize),
            ),
            None => {
                let (ac, owner) = &g.acs[i as usize];
                if ac.is_match(subject.scan) {
                    for m in ac.find_overlapping_iter(subject.scan) {
                        hits.push(owner[m.pattern().as_usize()]);
                    }
                }
            }
        }
        if !hits.is_empty() {
            hits.sort_unstable();
            hits.dedup();
            hits.retain(|&mi| {
                let m = &g.members[mi];
                m.covers(kind, name)
                    && (m.exact
                        || m.needs.is_none_or(|n| n.intersects(&bits))
                            && m.holds_also(&bits)
                            && m.may_start(first, &bits)
                            && m.op
                                .is_match(subject.value(), m.slot.map(|i| &mut caches[i])))
            });
        }
    }
    let mut test = |mi: usize, hits: &mut Vec<usize>, subject: &mut Subject<'_>| {
        let m = &g.members[mi];
        if m.covers(kind, name)
            && m.holds_also(&bits)
            && m.may_start(first, &bits)
            && m.op
                .is_match(subject.value(), m.slot.map(|i| &mut caches[i]))
                != m.negate
        {
            hits.push(mi);
        }
    };
    match &g.gate {
        Some(gate) => {
            // The members whose gate bytes the value holds: one OR per distinct byte.
            let mut candidates = g.ungated;
            for (w, &word) in bits.0.iter().enumerate() {
                let mut word = word;
                while word != 0 {
                    let b = w * 64 + word.trailing_zeros() as usize;
                    candidates |= gate[b];
                    word &= word - 1;
                }
            }
            candidates &= g.direct_for_kind[kind as usize];
            while candidates != 0 {
                let i = candidates.trailing_zeros() as usize;
                candidates &= candidates - 1;
                test(g.direct[i], hits, subject);
            }
        }
        None => {
            for &mi in &g.direct {
                let m = &g.members[mi];
                if m.kinds & kind.bit() == 0 || m.needs.is_some_and(|n| !n.intersects(&bits)) {
                    continue;
                }
                test(mi, hits, subject);
            }
        }
    }
    if let Some(set) = &g.set {
        if set.needs.is_none_or(|n| n.intersects(&bits)) {
            patset.clear();
            set.re.which_overlapping_matches_with(
                &mut caches[set.slot],
                &Input::new(subject.value()),
                patset,
            );
            for pid in patset.iter() {
                let mi = set.members[pid.as_usize()];
                if g.members[mi].covers(kind, name) {
                    hits.push(mi);
                }
            }
        }
    }
}

/// A group's members with literals in its automata: (member, literals).
type MemberLiterals = Vec<(usize, Vec<Vec<u8>>)>;

/// How a group sees a value (see [`Engine::evaluate`]).
#[derive(Debug, Clone, Copy)]
enum Mode {
    /// The group looks at no value of this kind.
    Skip,
    /// Its chain leaves the value as it is.
    Raw,
    /// Only its `lowercase` step changes the value.
    Lower,
    /// Another step changes it: the chain runs.
    Transformed,
}

/// Per-thread evaluation state (see the module docs).
pub struct Scratch {
    engine: u64,
    pub items: Items,
    caches: Vec<meta::Cache>,
    chain_out: Vec<Vec<u8>>,
    chain_bits: Vec<ByteSet>,
    chain_for: Vec<usize>,
    tmp: Vec<u8>,
    tmp2: Vec<u8>,
    hits: Vec<usize>,
    /// Per group, how it sees the current value; the merged raw scan's hits.
    modes: Vec<Mode>,
    raw_hits: Vec<(u32, u32)>,
    patset: PatternSet,
    matched: Vec<u64>,
    pub hits_out: Vec<Hit>,
    /// Items already evaluated in this request, by hash of (kind, name, value): a repeat
    /// (JSON arrays of records, repeated headers or arguments) would find exactly the same
    /// rules, so it is skipped.
    seen: std::collections::HashMap<u64, u32, foldhash::fast::FixedState>,
    /// Values found clean in earlier requests (see [`super::memo`]).
    pub memo: CleanValues,
    /// Clean values with derived values, stored in the memo at the end of the evaluation
    /// unless one of the values found inside them (their index is in `memo_tainted`) had
    /// a hit.
    memo_pending: Vec<(Key, u32)>,
    memo_tainted: Vec<u32>,
}

impl Default for Scratch {
    fn default() -> Self {
        Scratch {
            engine: 0,
            items: Items::default(),
            caches: Vec::new(),
            chain_out: Vec::new(),
            chain_bits: Vec::new(),
            chain_for: Vec::new(),
            tmp: Vec::new(),
            tmp2: Vec::new(),
            hits: Vec::new(),
            modes: Vec::new(),
            raw_hits: Vec::new(),
            patset: PatternSet::new(1),
            matched: Vec::new(),
            hits_out: Vec::new(),
            seen: Default::default(),
            memo: CleanValues::default(),
            memo_pending: Vec::new(),
            memo_tainted: Vec::new(),
        }
    }
}

impl Scratch {
    fn trim(&mut self) {
        if self.items.buf.capacity() > SCRATCH_KEEP_BYTES {
            self.items.buf = Vec::new();
        }
        for b in self
            .chain_out
            .iter_mut()
            .chain([&mut self.tmp, &mut self.tmp2])
        {
            if b.capacity() > SCRATCH_KEEP_BYTES {
                *b = Vec::new();
            }
        }
    }
}
