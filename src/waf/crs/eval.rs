//! One request through compiled CRS, with ModSecurity v3's semantics: phase 1 then
//! phase 2 in file order; per rule, every target value transformed by the rule's chain
//! and tested by its operator; on a match `MATCHED_VAR(S)` and captures (`TX:0-9`) are set
//! and the rule's `setvar`s run; when a whole chain matched, its `ctl`s, log line and
//! disruptive action take effect and `skipAfter` jumps to its marker.
//!
//! Request data ([`Data`]) is built once and only read; what rules change ([`State`]) is
//! separate, so a rule's values can be borrowed while its actions write.
//!
//! What is shared per request value (CRS tests the same argument with the same chain in
//! dozens of rules): values with the same bytes are one value; per (value, chain) the
//! transformed bytes and their byte set are computed once, the chain's literal automaton
//! runs once (a regex whose required literals did not occur is skipped), and for a value
//! that occurs more than once each pure operator's result is kept. A regex also needs one
//! of its required bytes. Exclusions (`!ARGS:x`) are checked only for values that matched.
//!
//! Cost (criterion, `benches/crs.rs`, PL 1): about 200 µs for a browser GET and 0.6 ms
//! for a 2 KiB JSON POST — the walk over rule × value pairs (about 1,800 for the GET)
//! dominates, not the regexes. Buffers are reused per thread; a request allocates for
//! its TX variables and matches.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::IpAddr;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

use super::compile::{
    Arg, Crs, Ctl, Disruptive, EngineMode, Entry, Macro, Op, Part, Rule, SetOp, Var, NO_SLOT,
};
use super::xform::Xform;
use crate::waf::operator::{invalid_url_encoding, ByteSet};
use crate::waf::request::{BodyParse, Items, RequestParts};
use crate::waf::{sqli, xss};

/// A rule (chain) that matched and logs.
#[derive(Debug, Clone)]
pub struct Hit {
    pub id: u32,
    pub msg: String,
    pub data: String,
    /// ModSecurity severity: 2 critical, 3 error, 4 warning, 5 notice.
    pub severity: Option<u8>,
    /// `ARGS:q`: the variable of the last match.
    pub var: String,
}

/// What CRS made of a request.
#[derive(Debug, Default)]
pub struct CrsOutcome {
    pub hits: Vec<Hit>,
    /// `tx.blocking_inbound_anomaly_score` after the blocking evaluation.
    pub inbound_score: i64,
    /// The rule (id, status) that denied the request, when the engine blocks.
    pub deny: Option<(u32, u16)>,
    /// The rule that would have denied it, in detection-only mode.
    pub would_deny: Option<(u32, u16)>,
}

impl CrsOutcome {
    /// ModSecurity-style log lines (`[id "942100"] [msg "…"] …`), one per hit.
    pub fn log_lines(&self) -> impl Iterator<Item = String> + '_ {
        self.hits.iter().map(|h| {
            format!(
                "[id \"{}\"] [msg \"{}\"] [data \"{}\"] [severity \"{}\"]",
                h.id,
                h.msg,
                h.data,
                h.severity.unwrap_or(0)
            )
        })
    }

    pub fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.hits.iter().map(|h| h.id)
    }
}

/// Request data, read-only while rules run.
struct Data<'a> {
    req: &'a RequestParts<'a>,
    items: Items,
    /// Item indices by [`Kind`](crate::waf::rule::Kind).
    by_kind: Vec<Vec<u32>>,
    /// Each item's byte set.
    item_bs: Vec<ByteSet>,
    /// Each item's first item with the same value bytes.
    canon: Vec<u32>,
    /// Whether the item's value occurs more than once.
    repeated: Vec<bool>,
    filename: Vec<u8>,
    basename: Option<Range<usize>>,
    /// REQUEST_URI: the target from its path on.
    uri: &'a [u8],
    processor: &'static str,
    xml_text: Option<Vec<u8>>,
    xml_attrs: Vec<Vec<u8>>,
    part_headers: Vec<(Vec<u8>, Vec<u8>)>,
    files_size: usize,
    /// UNIQUE_ID, made when a rule first reads it.
    unique_id: std::cell::OnceCell<String>,
}

/// What rules change.
struct State {
    /// TX: a handful of names looked up hundreds of times per request, so hashed with
    /// foldhash rather than SipHash (the names are the rule set's, not the client's).
    vars: HashMap<String, Vec<u8>, foldhash::fast::FixedState>,
    matched_var: Vec<u8>,
    matched_name: Vec<u8>,
    matched_vars: Vec<(Vec<u8>, Vec<u8>)>,
    removed_ids: Vec<(u32, u32)>,
    removed_tags: Vec<String>,
    removed_targets: Vec<RemovedTarget>,
    engine: EngineMode,
    force_body: bool,
    processor: Option<String>,
}

/// `ctl:ruleRemoveTargetById/ByTag`: a target taken from some rules for this request.
struct RemovedTarget {
    id: Option<u32>,
    tag: Option<String>,
    var: Var,
    /// `None`: the whole collection.
    key: Option<Vec<u8>>,
}

/// An operator's captures (`TX:0`–`TX:9`), when the rule captures.
type Captures = Option<Vec<Vec<u8>>>;

/// Scratch buffers.
#[derive(Default)]
struct Bufs {
    a: Vec<u8>,
    b: Vec<u8>,
    vbuf: Vec<u8>,
    vals: Vec<V>,
    cache: Vec<u32>,
    cranges: Vec<Cached>,
    /// Prefilter results, `pf_words` per cached value that needed one.
    cands: Vec<u64>,
    memo: Vec<u64>,
    cbuf: Vec<u8>,
    new_matches: Vec<(Vec<u8>, Vec<u8>)>,
    /// The value of the current match.
    hit_val: Vec<u8>,
}

/// A request value transformed by one chain.
struct Cached {
    range: Range<u32>,
    bs: ByteSet,
    /// Offset of its prefilter result in `Bufs::cands` (`u32::MAX`: not computed yet).
    cands: u32,
    /// Offset of its operator results in `Bufs::memo` (`u32::MAX`: none yet); two bits
    /// per rule: tested, matched.
    memo: u32,
}

/// One value of a rule's targets: from the request items, or copied into `vbuf`.
#[derive(Clone)]
struct V {
    var: Var,
    item: Option<u32>,
    key: Range<u32>,
    val: Range<u32>,
    /// Exclusions were applied when it was collected (counts).
    checked: bool,
}

static UNIQUE: AtomicU64 = AtomicU64::new(1);

thread_local! {
    #[allow(clippy::type_complexity)]
    static SCRATCH: std::cell::RefCell<Option<(Items, Vec<Vec<u32>>, Vec<ByteSet>, Bufs)>> =
        const { std::cell::RefCell::new(None) };
}

impl Crs {
    /// Runs phases 1 and 2 over a request. `blocking`: a `deny` stops the request
    /// (otherwise it is only recorded, as in `DetectionOnly`).
    ///
    /// `removed`: rule ids switched off for this request (route exclusions).
    pub fn evaluate(&self, req: &RequestParts<'_>, blocking: bool, removed: &[u32]) -> CrsOutcome {
        // Buffers are reused from this thread's last request.
        let (items, by_kind, item_bs, mut bufs) =
            SCRATCH.with(|s| s.borrow_mut().take()).unwrap_or_default();
        let mut data = Data::new(req, items, by_kind, item_bs);
        let mut st = State {
            vars: self
                .initial_tx
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            matched_var: Vec::new(),
            matched_name: Vec::new(),
            matched_vars: Vec::new(),
            removed_ids: removed.iter().map(|&id| (id, id)).collect(),
            removed_tags: Vec::new(),
            removed_targets: Vec::new(),
            engine: if blocking {
                EngineMode::On
            } else {
                EngineMode::DetectionOnly
            },
            force_body: false,
            processor: None,
        };
        let mut out = CrsOutcome::default();
        'phases: for (p, rules) in self.phases.iter().enumerate() {
            if p == 1 {
                // As ModSecurity and Coraza do: a forced body variable without a body
                // processor means the body is read as URLENCODED.
                let forced =
                    (st.force_body && data.processor.is_empty()).then(|| "URLENCODED".to_string());
                if let Some(proc_) = st.processor.take().or(forced) {
                    data.reprocess(&proc_);
                }
            }
            bufs.cache.clear();
            bufs.cache
                .resize(data.items.items.len() * self.chains.len(), u32::MAX);
            bufs.cranges.clear();
            bufs.cbuf.clear();
            bufs.cands.clear();
            bufs.memo.clear();
            let mut i = 0;
            while i < rules.len() {
                let Entry::Rule(r) = &rules[i] else {
                    i += 1;
                    continue;
                };
                if st.engine == EngineMode::Off {
                    break 'phases;
                }
                if st.removed(r) || !self.chain_matches(r, &data, &mut st, &mut bufs) {
                    i += 1;
                    continue;
                }
                for link in std::iter::once(&**r).chain(r.chain.iter()) {
                    for c in &link.ctls {
                        st.ctl(c);
                    }
                }
                if r.log {
                    out.hits.push(Hit {
                        id: r.id,
                        msg: r
                            .msg
                            .as_ref()
                            .map(|m| lossy(&expand(m, &data, &st, r)))
                            .unwrap_or_default(),
                        data: r
                            .logdata
                            .as_ref()
                            .or_else(|| r.chain.iter().rev().find_map(|l| l.logdata.as_ref()))
                            .map(|m| lossy(&expand(m, &data, &st, r)))
                            .unwrap_or_default(),
                        severity: r.severity,
                        var: lossy(&st.matched_name),
                    });
                }
                let action = match r.disruptive {
                    Disruptive::Block => self.block_action[p],
                    d => d,
                };
                match action {
                    Disruptive::Deny(status) => {
                        if st.engine == EngineMode::On {
                            out.deny = Some((r.id, status));
                            break 'phases;
                        }
                        out.would_deny.get_or_insert((r.id, status));
                    }
                    Disruptive::Allow => break 'phases,
                    Disruptive::Pass | Disruptive::Block => {}
                }
                i = if r.skip_after.is_some() {
                    r.skip_to
                } else {
                    i + 1
                };
            }
        }
        out.inbound_score = st.num("blocking_inbound_anomaly_score");
        SCRATCH.with(|s| *s.borrow_mut() = Some((data.items, data.by_kind, data.item_bs, bufs)));
        out
    }

    fn chain_matches(&self, r: &Rule, data: &Data<'_>, st: &mut State, bufs: &mut Bufs) -> bool {
        st.matched_vars.clear();
        for link in std::iter::once(r).chain(r.chain.iter()) {
            if !self.link_matches(link, r, data, st, bufs) {
                return false;
            }
        }
        true
    }

    /// Evaluates one rule of a chain; runs its per-match actions.
    fn link_matches(
        &self,
        link: &Rule,
        head: &Rule,
        data: &Data<'_>,
        st: &mut State,
        bufs: &mut Bufs,
    ) -> bool {
        if link.always {
            run_setvars(link, head, data, st);
            return true;
        }
        bufs.vals.clear();
        bufs.vbuf.clear();
        for t in &link.targets {
            let before = bufs.vals.len();
            collect(t, link, head, data, st, bufs);
            if t.count {
                let n = bufs.vals.len() - before;
                bufs.vals.truncate(before);
                let key = push(&mut bufs.vbuf, t.var.name().as_bytes());
                let val = push(&mut bufs.vbuf, n.to_string().as_bytes());
                bufs.vals.push(V {
                    var: t.var,
                    item: None,
                    key,
                    val,
                    checked: true,
                });
            }
        }
        let chain = &self.chains[link.xforms as usize];
        let nchains = self.chains.len();
        let mut matched = false;
        bufs.new_matches.clear();
        let vals = std::mem::take(&mut bufs.vals);
        for v in &vals {
            let (key, raw): (&[u8], &[u8]) = match v.item {
                Some(_) => (
                    &data.items.buf[v.key.start as usize..v.key.end as usize],
                    &data.items.buf[v.val.start as usize..v.val.end as usize],
                ),
                None => (
                    &bufs.vbuf[v.key.start as usize..v.key.end as usize],
                    &bufs.vbuf[v.val.start as usize..v.val.end as usize],
                ),
            };
            let mut hit: Option<Captures> = None;
            if link.multi_match {
                let mut cur = raw.to_vec();
                if let Some(c) = self.op_matches(link, &cur, ByteSet::of(&cur), data, st) {
                    bufs.hit_val.clear();
                    bufs.hit_val.extend_from_slice(&cur);
                    hit = Some(c);
                }
                for x in chain {
                    if hit.is_some() {
                        break;
                    }
                    if x.may_change(&cur) {
                        let mut next = Vec::new();
                        x.apply(&cur, &mut next);
                        cur = next;
                        if let Some(c) = self.op_matches(link, &cur, ByteSet::of(&cur), data, st) {
                            bufs.hit_val.clear();
                            bufs.hit_val.extend_from_slice(&cur);
                            hit = Some(c);
                        }
                    }
                }
            } else {
                let sets = &self.chain_sets[link.xforms as usize];
                let (value, bs, entry): (&[u8], ByteSet, Option<usize>) = match v.item {
                    Some(idx) => {
                        // Transformed once per request and chain, with its byte set.
                        // Keyed by the first item with the same bytes.
                        let slot =
                            data.canon[idx as usize] as usize * nchains + link.xforms as usize;
                        let mut ci = bufs.cache[slot];
                        if ci == u32::MAX {
                            let (res, bs) = transform(
                                chain,
                                sets,
                                raw,
                                data.item_bs[idx as usize],
                                &mut bufs.a,
                                &mut bufs.b,
                            );
                            let start = bufs.cbuf.len() as u32;
                            bufs.cbuf.extend_from_slice(res);
                            ci = bufs.cranges.len() as u32;
                            bufs.cache[slot] = ci;
                            bufs.cranges.push(Cached {
                                range: start..bufs.cbuf.len() as u32,
                                bs,
                                cands: u32::MAX,
                                memo: u32::MAX,
                            });
                        }
                        let e = &bufs.cranges[ci as usize];
                        let r = e.range.start as usize..e.range.end as usize;
                        (&bufs.cbuf[r], e.bs, Some(ci as usize))
                    }
                    None => {
                        let (s, bs) =
                            transform(chain, sets, raw, ByteSet::of(raw), &mut bufs.a, &mut bufs.b);
                        (s, bs, None)
                    }
                };
                let mut candidate = true;
                if link.pf_slot != NO_SLOT {
                    if let Some(ci) = entry {
                        // The chain's literal automaton, run once per value.
                        let e = &mut bufs.cranges[ci];
                        if e.cands == u32::MAX {
                            let base = bufs.cands.len();
                            bufs.cands.resize(base + self.pf_words, 0);
                            if let Some(pf) = &self.prefilters[link.xforms as usize] {
                                for m in pf.ac.find_overlapping_iter(value) {
                                    let s = pf.slot_of[m.pattern().as_usize()] as usize;
                                    bufs.cands[base + s / 64] |= 1 << (s % 64);
                                }
                            }
                            e.cands = base as u32;
                        }
                        let s = link.pf_slot as usize;
                        candidate = bufs.cands[e.cands as usize + s / 64] & (1 << (s % 64)) != 0;
                    }
                }
                // A value repeated in the request (JSON arrays repeat names and values)
                // is tested once per rule: the result is kept with its cached entry.
                let memo = match entry {
                    Some(ci) if link.memo && data.repeated[v.item.unwrap_or(0) as usize] => {
                        let e = &mut bufs.cranges[ci];
                        if e.memo == u32::MAX {
                            e.memo = bufs.memo.len() as u32;
                            bufs.memo.resize(bufs.memo.len() + self.memo_words, 0);
                        }
                        Some(e.memo as usize)
                    }
                    _ => None,
                };
                let bit = 2 * link.uid as usize;
                let known = memo.filter(|&m| bufs.memo[m + bit / 64] & (1 << (bit % 64)) != 0);
                if let Some(m) = known {
                    let b = bit + 1;
                    if bufs.memo[m + b / 64] & (1 << (b % 64)) != 0 {
                        bufs.hit_val.clear();
                        bufs.hit_val.extend_from_slice(value);
                        hit = Some(None);
                    }
                } else if candidate {
                    if let Some(c) = self.op_matches(link, value, bs, data, st) {
                        bufs.hit_val.clear();
                        bufs.hit_val.extend_from_slice(value);
                        hit = Some(c);
                    }
                }
                if let (Some(m), None) = (memo, known) {
                    bufs.memo[m + bit / 64] |= 1 << (bit % 64);
                    if hit.is_some() {
                        let b = bit + 1;
                        bufs.memo[m + b / 64] |= 1 << (b % 64);
                    }
                }
            }
            if hit.is_some() && !v.checked && is_excluded(v.var, key, link, head, st) {
                hit = None;
            }
            if let Some(caps) = hit {
                matched = true;
                st.matched_var.clear();
                st.matched_var.extend_from_slice(&bufs.hit_val);
                st.matched_name.clear();
                st.matched_name.extend_from_slice(v.var.name().as_bytes());
                if !key.is_empty() {
                    st.matched_name.push(b':');
                    st.matched_name.extend_from_slice(key);
                }
                if let Some(caps) = caps {
                    for (i, c) in caps.into_iter().enumerate() {
                        const CAPS: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
                        match st.vars.get_mut(CAPS[i]) {
                            Some(v) => *v = c,
                            None => {
                                st.vars.insert(CAPS[i].to_string(), c);
                            }
                        }
                    }
                }
                if link.feeds_matched_vars {
                    bufs.new_matches
                        .push((st.matched_name.clone(), st.matched_var.clone()));
                }
                run_setvars(link, head, data, st);
            }
        }
        bufs.vals = vals;
        if matched {
            std::mem::swap(&mut st.matched_vars, &mut bufs.new_matches);
        }
        matched
    }

    /// `Some(captures)` when the operator (with the rule's negation) matches.
    fn op_matches(
        &self,
        link: &Rule,
        v: &[u8],
        bs: ByteSet,
        data: &Data<'_>,
        st: &State,
    ) -> Option<Captures> {
        let mut caps = None;
        let m = match &link.op {
            Op::Rx { re, needs, .. } => {
                if let Some(n) = needs {
                    if !link.negate && !bs.intersects(n) {
                        return None;
                    }
                }
                if link.capture && !link.negate {
                    let mut c = re.create_captures();
                    re.captures(v, &mut c);
                    if c.is_match() {
                        let mut out = Vec::new();
                        for g in 0..c.group_len().min(10) {
                            out.push(c.get_group(g).map_or(Vec::new(), |s| v[s.range()].to_vec()));
                        }
                        caps = Some(out);
                        true
                    } else {
                        false
                    }
                } else {
                    re.is_match(v)
                }
            }
            Op::Pm(ac) => match ac.find(v) {
                Some(m) => {
                    if link.capture {
                        caps = Some(vec![v[m.range()].to_vec()]);
                    }
                    true
                }
                None => false,
            },
            Op::StrEq(a) => arg(a, data, st, link) == v,
            Op::Within(a) => {
                let p = arg(a, data, st, link);
                v.is_empty() || memchr::memmem::find(&p, v).is_some()
            }
            Op::BeginsWith(a) => v.starts_with(&arg(a, data, st, link)),
            Op::EndsWith(a) => v.ends_with(&arg(a, data, st, link)),
            Op::Contains(a) => memchr::memmem::find(v, &arg(a, data, st, link)).is_some(),
            Op::ContainsWord(a) => contains_word(v, &arg(a, data, st, link)),
            Op::Compare(c, a) => {
                let (x, y) = (atoi(v), atoi(&arg(a, data, st, link)));
                c.holds(x, y)
            }
            Op::DetectSqli => sqli::is_sqli(v),
            Op::DetectXss => xss::is_xss(v),
            Op::ValidateByteRange(ok) => v.iter().any(|&b| !ok[b as usize]),
            Op::ValidateUrlEncoding => invalid_url_encoding(v),
            Op::ValidateUtf8 => std::str::from_utf8(v).is_err(),
            Op::IpMatch(nets) => std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.parse::<IpAddr>().ok())
                .is_some_and(|ip| nets.iter().any(|n| n.contains(&ip))),
            Op::Unconditional => true,
            Op::NoMatch => false,
        };
        if m != link.negate {
            Some(caps)
        } else {
            None
        }
    }
}

/// An operator's argument, its macros expanded.
fn arg<'r>(a: &'r Arg, data: &Data<'_>, st: &State, rule: &Rule) -> std::borrow::Cow<'r, [u8]> {
    match a {
        Arg::Lit(l) => std::borrow::Cow::Borrowed(l),
        Arg::Macro(m) => std::borrow::Cow::Owned(expand(m, data, st, rule)),
    }
}

/// Runs a transformation chain over `input` (whose byte set is `bs`), skipping steps
/// that cannot change the value; returns the result and its byte set.
fn transform<'x>(
    chain: &[Xform],
    sets: &[Option<ByteSet>],
    input: &'x [u8],
    mut bs: ByteSet,
    a: &'x mut Vec<u8>,
    b: &'x mut Vec<u8>,
) -> (&'x [u8], ByteSet) {
    let mut at: u8 = 0; // 0 input, 1 a, 2 b
    for (x, set) in chain.iter().zip(sets) {
        if set.as_ref().is_some_and(|s| !s.intersects(&bs)) {
            continue;
        }
        match at {
            0 => {
                x.apply(input, a);
                bs = ByteSet::of(a);
                at = 1;
            }
            1 => {
                x.apply(a, b);
                bs = ByteSet::of(b);
                at = 2;
            }
            _ => {
                x.apply(b, a);
                bs = ByteSet::of(a);
                at = 1;
            }
        }
    }
    let out: &[u8] = match at {
        0 => input,
        1 => a,
        _ => b,
    };
    (out, bs)
}

fn push(buf: &mut Vec<u8>, b: &[u8]) -> Range<u32> {
    let s = buf.len() as u32;
    buf.extend_from_slice(b);
    s..buf.len() as u32
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// C `atoi`: optional sign and leading digits, else 0.
fn atoi(v: &[u8]) -> i64 {
    let s = v.trim_ascii_start();
    let (neg, digits) = match s.first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let mut n: i64 = 0;
    for &d in digits.iter().take_while(|b| b.is_ascii_digit()) {
        n = n.saturating_mul(10).saturating_add(i64::from(d - b'0'));
    }
    if neg {
        -n
    } else {
        n
    }
}

fn contains_word(v: &[u8], w: &[u8]) -> bool {
    if w.is_empty() {
        return true;
    }
    let word = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_');
    memchr::memmem::find_iter(v, w)
        .any(|i| !word(i.checked_sub(1).and_then(|j| v.get(j))) && !word(v.get(i + w.len())))
}

/// Whether `var:key` is excluded from `link` (its `!VAR:key` targets, or a
/// `ctl:ruleRemoveTarget*` of this request).
fn is_excluded(var: Var, key: &[u8], link: &Rule, head: &Rule, st: &State) -> bool {
    link.excludes
        .iter()
        .any(|(v, s)| *v == var && s.matches(key))
        || st.removed_targets.iter().any(
            |RemovedTarget {
                 id,
                 tag,
                 var: v,
                 key: k,
             }| {
                *v == var
                    && k.as_deref().is_none_or(|k| k.eq_ignore_ascii_case(key))
                    && (id.is_some_and(|id| id == head.id)
                        || tag
                            .as_ref()
                            .is_some_and(|t| head.tags.iter().any(|x| x == t)))
            },
        )
}

/// Collects the values of one target (`var` filtered by `sel`, minus exclusions).
fn collect(
    target: &super::compile::Target,
    link: &Rule,
    head: &Rule,
    data: &Data<'_>,
    st: &State,
    bufs: &mut Bufs,
) {
    // Exclusions are checked here only for counts; other values are checked once they
    // matched (most never do).
    let (var, sel) = (target.var, &target.sel);
    let excluded = |key: &[u8]| target.count && is_excluded(var, key, link, head, st);
    let kinds = var.kinds();
    if kinds != 0 {
        let mut bits = kinds;
        while bits != 0 {
            let kind = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            for &i in &data.by_kind[kind] {
                let it = &data.items.items[i as usize];
                let key = data.items.name(it);
                if !sel.matches(key) || excluded(key) {
                    continue;
                }
                bufs.vals.push(V {
                    var,
                    item: Some(i),
                    key: it.name.clone(),
                    val: it.value.clone(),
                    checked: false,
                });
            }
        }
        return;
    }
    // A value that is not a request item: copied into `vbuf`.
    let push_own = |key: &[u8], val: &[u8], bufs: &mut Bufs| {
        let key = push(&mut bufs.vbuf, key);
        let val = push(&mut bufs.vbuf, val);
        bufs.vals.push(V {
            var,
            item: None,
            key,
            val,
            checked: false,
        });
    };
    let own = |key: &[u8], val: &[u8], bufs: &mut Bufs| {
        if sel.matches(key) && !excluded(key) {
            push_own(key, val, bufs);
        }
    };
    match var {
        Var::Tx => {
            if let super::compile::Sel::Name(n) = sel {
                if let Some(v) = std::str::from_utf8(n).ok().and_then(|k| st.vars.get(k)) {
                    own(n, v, bufs);
                }
            } else {
                for (k, v) in st.vars.iter().filter(|(k, _)| !k.starts_with('@')) {
                    own(k.as_bytes(), v, bufs);
                }
            }
        }
        Var::MatchedVars => {
            for (k, v) in &st.matched_vars {
                own(k, v, bufs);
            }
        }
        Var::MatchedVarsNames => {
            for (k, _) in &st.matched_vars {
                own(k, k, bufs);
            }
        }
        Var::MultipartPartHeaders => {
            for (k, v) in &data.part_headers {
                own(k, v, bufs);
            }
        }
        Var::Xml => {
            let attrs = matches!(sel, super::compile::Sel::Name(n) if n == b"//@*");
            if attrs {
                for a in &data.xml_attrs {
                    if !excluded(b"") {
                        push_own(b"", a, bufs);
                    }
                }
            } else if let Some(t) = &data.xml_text {
                push_own(b"", t, bufs);
            }
        }
        _ => {
            if let Some(v) = scalar(var, data, st) {
                if matches!(sel, super::compile::Sel::All) && !excluded(b"") {
                    push_own(b"", &v, bufs);
                }
            }
        }
    }
}

/// The value of a scalar variable (`None`: not present in this request).
fn scalar<'d>(var: Var, data: &'d Data<'_>, st: &'d State) -> Option<Cow<'d, [u8]>> {
    let req = data.req;
    let target = req.target.as_bytes();
    let b = |v: &'d [u8]| Some(Cow::Borrowed(v));
    let owned = |v: Vec<u8>| Some(Cow::Owned(v));
    match var {
        Var::MatchedVar => b(&st.matched_var),
        Var::MatchedVarName => b(&st.matched_name),
        Var::RequestUri => b(data.uri),
        Var::RequestUriRaw => b(target),
        Var::RequestFilename => b(&data.filename),
        Var::RequestBasename => b(data.basename.clone().map_or(&[][..], |r| &data.filename[r])),
        Var::RequestLine => {
            let mut l = Vec::with_capacity(target.len() + 16);
            l.extend_from_slice(req.method.as_bytes());
            l.push(b' ');
            l.extend_from_slice(target);
            l.push(b' ');
            l.extend_from_slice(req.version.as_bytes());
            owned(l)
        }
        Var::RequestMethod => b(req.method.as_bytes()),
        Var::RequestProtocol => b(req.version.as_bytes()),
        Var::QueryString => b(req.target.split_once('?')?.1.as_bytes()),
        Var::RequestBody => {
            // As in ModSecurity: with the URLENCODED processor, or when forced.
            let body = req.body?;
            if data.processor != "URLENCODED" && !st.force_body {
                return None;
            }
            b(body)
        }
        Var::RequestBodyLength => owned(req.body.map_or(0, <[u8]>::len).to_string().into_bytes()),
        Var::ReqbodyProcessor => b(data.processor.as_bytes()),
        Var::ReqbodyError => {
            let failed = data.items.body.and_then(BodyParse::failure).is_some();
            b(if failed { b"1" } else { b"0" })
        }
        Var::ArgsCombinedSize => owned(data.items.arg_bytes.to_string().into_bytes()),
        Var::FilesCombinedSize => owned(data.files_size.to_string().into_bytes()),
        Var::RemoteAddr => owned(
            req.client_ip
                .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
                .to_string()
                .into_bytes(),
        ),
        Var::UniqueId => b(data
            .unique_id
            .get_or_init(|| {
                let n = UNIQUE.fetch_add(1, Ordering::Relaxed);
                format!("{:016x}", n.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            })
            .as_bytes()),
        _ => None,
    }
}

fn run_setvars(link: &Rule, head: &Rule, data: &Data<'_>, st: &mut State) {
    for sv in &link.setvars {
        let name: std::borrow::Cow<'_, str> = match &sv.key {
            Some(k) => std::borrow::Cow::Borrowed(k.as_str()),
            None => {
                let mut n = lossy(&expand(&sv.name, data, st, head));
                n.make_ascii_lowercase();
                std::borrow::Cow::Owned(super::compile::var_key(&n).into_owned())
            }
        };
        let value = match sv.op {
            SetOp::Delete => {
                st.vars.remove(&*name);
                continue;
            }
            SetOp::Set => match sv.value.literal() {
                Some(l) => std::borrow::Cow::Borrowed(l.as_bytes()),
                None => std::borrow::Cow::Owned(expand(&sv.value, data, st, head)),
            },
            SetOp::Add | SetOp::Sub => {
                // Scores: `=+%{tx.critical_anomaly_score}`, read without a copy.
                let d = match sv.value.0.as_slice() {
                    [Part::Lit(s)] => atoi(s.as_bytes()),
                    [Part::Var(Var::Tx, Some(k))] => st.vars.get(k.as_str()).map_or(0, |v| atoi(v)),
                    _ => atoi(&expand(&sv.value, data, st, head)),
                };
                let cur = st.vars.get(&*name).map_or(0, |v| atoi(v));
                let n = if sv.op == SetOp::Add {
                    cur + d
                } else {
                    cur - d
                };
                std::borrow::Cow::Owned(n.to_string().into_bytes())
            }
        };
        match st.vars.get_mut(&*name) {
            Some(v) => {
                v.clear();
                v.extend_from_slice(&value);
            }
            None => {
                st.vars.insert(name.into_owned(), value.into_owned());
            }
        }
    }
}

/// Expands `%{…}` references.
fn expand(m: &Macro, data: &Data<'_>, st: &State, rule: &Rule) -> Vec<u8> {
    let mut out = Vec::new();
    for p in &m.0 {
        match p {
            Part::Lit(s) => out.extend_from_slice(s.as_bytes()),
            Part::Var(Var::Tx, Some(k)) => {
                if let Some(v) = st.vars.get(k.as_str()) {
                    out.extend_from_slice(v);
                }
            }
            Part::Var(Var::Rule, Some(k)) => match k.as_str() {
                "id" => out.extend_from_slice(rule.id.to_string().as_bytes()),
                "msg" => {
                    if let Some(m) = &rule.msg {
                        out.extend(expand(m, data, st, rule));
                    }
                }
                "severity" => {
                    out.extend_from_slice(rule.severity.unwrap_or(0).to_string().as_bytes())
                }
                _ => {}
            },
            Part::Var(var, key) => {
                let kinds = var.kinds();
                if kinds != 0 {
                    let found = data.items.items.iter().find(|it| {
                        kinds & it.kind.bit() != 0
                            && key.as_deref().is_none_or(|k| {
                                data.items.name(it).eq_ignore_ascii_case(k.as_bytes())
                            })
                    });
                    if let Some(it) = found {
                        out.extend_from_slice(data.items.value(it));
                    }
                } else if let Some(v) = scalar(*var, data, st) {
                    out.extend_from_slice(&v);
                }
            }
        }
    }
    out
}

impl State {
    fn num(&self, k: &str) -> i64 {
        self.vars.get(k).map_or(0, |v| atoi(v))
    }

    fn removed(&self, r: &Rule) -> bool {
        self.removed_ids
            .iter()
            .any(|&(a, b)| (a..=b).contains(&r.id))
            || self
                .removed_tags
                .iter()
                .any(|t| r.tags.iter().any(|x| x == t))
    }

    fn ctl(&mut self, c: &Ctl) {
        match c {
            Ctl::RemoveById(r) => self.removed_ids.extend_from_slice(r),
            Ctl::RemoveByTag(t) => self.removed_tags.push(t.clone()),
            Ctl::RemoveTargetById(id, v, k) => self.removed_targets.push(RemovedTarget {
                id: Some(*id),
                tag: None,
                var: *v,
                key: k.clone(),
            }),
            Ctl::RemoveTargetByTag(t, v, k) => self.removed_targets.push(RemovedTarget {
                id: None,
                tag: Some(t.clone()),
                var: *v,
                key: k.clone(),
            }),
            Ctl::RuleEngine(m) => {
                // Detection-only never turns into blocking from a rule.
                if !(self.engine == EngineMode::DetectionOnly && *m == EngineMode::On) {
                    self.engine = *m;
                }
            }
            Ctl::ForceRequestBodyVariable => self.force_body = true,
            Ctl::RequestBodyProcessor(p) => self.processor = Some(p.clone()),
            Ctl::AuditEngine => {}
        }
    }
}

impl<'a> Data<'a> {
    fn new(
        req: &'a RequestParts<'a>,
        mut items: Items,
        by_kind: Vec<Vec<u32>>,
        item_bs: Vec<ByteSet>,
    ) -> Data<'a> {
        items.repeat_names = true;
        items.collect(req, u32::MAX);
        let target = req.target.as_bytes();
        // An absolute-form target: REQUEST_URI and REQUEST_FILENAME start at the path.
        let absolute = !req.target.starts_with('/');
        let path_and_query: &[u8] = match req.target.find("://").filter(|_| absolute) {
            Some(i) => {
                let rest = &target[i + 3..];
                rest.iter()
                    .position(|&b| b == b'/')
                    .map_or(&b"/"[..], |p| &rest[p..])
            }
            None => target,
        };
        let path = match memchr::memchr(b'?', path_and_query) {
            Some(i) => &path_and_query[..i],
            None => path_and_query,
        };
        let mut filename = Vec::with_capacity(path.len());
        crate::waf::transform::url_decode(path, &mut filename, false);
        let basename = filename
            .iter()
            .rposition(|&b| b == b'/' || b == b'\\')
            .filter(|&i| i + 1 < filename.len())
            .map(|i| i + 1..filename.len());
        let ctype = req
            .headers
            .get(http::header::CONTENT_TYPE)
            .map(|v| v.as_bytes().to_ascii_lowercase())
            .unwrap_or_default();
        let processor = processor_of(&ctype);
        let mut d = Data {
            req,
            items,
            by_kind,
            item_bs,
            canon: Vec::new(),
            repeated: Vec::new(),
            filename,
            basename,
            uri: path_and_query,
            processor,
            xml_text: None,
            xml_attrs: Vec::new(),
            part_headers: Vec::new(),
            files_size: 0,
            unique_id: std::cell::OnceCell::new(),
        };
        if let Some(body) = req.body {
            if processor == "XML" {
                d.xml(body);
            } else if processor == "MULTIPART" {
                d.multipart(body);
            }
        }
        d.index();
        d
    }

    fn index(&mut self) {
        self.by_kind.resize(32, Vec::new());
        for k in &mut self.by_kind {
            k.clear();
        }
        self.item_bs.clear();
        self.canon.clear();
        self.repeated.clear();
        let items = &self.items;
        let mut first: foldhash::HashMap<&[u8], u32> =
            foldhash::HashMap::with_capacity_and_hasher(items.items.len(), Default::default());
        for (i, it) in items.items.iter().enumerate() {
            self.by_kind[it.kind as usize].push(i as u32);
            let v = items.value(it);
            self.item_bs.push(ByteSet::of(v));
            let c = *first.entry(v).or_insert(i as u32);
            self.canon.push(c);
            self.repeated.push(false);
            if c != i as u32 {
                self.repeated[c as usize] = true;
                self.repeated[i] = true;
            }
        }
    }

    /// `ctl:requestBodyProcessor=…`: the body parsed again as that type.
    fn reprocess(&mut self, p: &str) {
        let ctype = match p {
            "URLENCODED" => "application/x-www-form-urlencoded",
            "JSON" => "application/json",
            "XML" => "application/xml",
            "MULTIPART" => return,
            _ => return,
        };
        let req = *self.req;
        self.items.collect_as(&req, u32::MAX, Some(ctype));
        self.index();
        self.processor = processor_of(ctype.as_bytes());
        if p == "XML" {
            if let Some(b) = req.body {
                self.xml(b);
            }
        }
    }

    /// Text content and attribute values of an XML body.
    fn xml(&mut self, body: &[u8]) {
        let mut text = Vec::new();
        let mut i = 0;
        while i < body.len() {
            if body[i] == b'<' {
                if body[i..].starts_with(b"<![CDATA[") {
                    let s = i + 9;
                    let e = memchr::memmem::find(&body[s..], b"]]>").map_or(body.len(), |e| s + e);
                    text.extend_from_slice(&body[s..e.min(body.len())]);
                    i = e + 3;
                    continue;
                }
                let e = memchr::memchr(b'>', &body[i..]).map_or(body.len(), |e| i + e);
                let tag = &body[i..e.min(body.len())];
                if !tag.starts_with(b"<!") && !tag.starts_with(b"<?") {
                    let mut j = 0;
                    while let Some(q) = tag[j..].iter().position(|&b| b == b'"' || b == b'\'') {
                        let qc = tag[j + q];
                        let s = j + q + 1;
                        let Some(end) = tag[s..].iter().position(|&b| b == qc) else {
                            break;
                        };
                        self.xml_attrs.push(xml_unescape(&tag[s..s + end]));
                        j = s + end + 1;
                    }
                }
                i = e + 1;
            } else {
                text.push(body[i]);
                i += 1;
            }
        }
        self.xml_text = Some(xml_unescape(&text));
    }

    /// Part headers and upload sizes of a multipart body, read by the same strict parser
    /// as the arguments (a body it refuses has set `REQBODY_ERROR` already).
    fn multipart(&mut self, body: &[u8]) {
        let Some(ctype) = self.req.headers.get(http::header::CONTENT_TYPE) else {
            return;
        };
        let Ok(boundary) = crate::waf::multipart::boundary(ctype.as_bytes()) else {
            return;
        };
        let (part_headers, files_size) = (&mut self.part_headers, &mut self.files_size);
        let mut each = |part: crate::waf::multipart::Part<'_>| {
            if part.filename.is_some_and(|f| !f.is_empty()) {
                *files_size += part.content.len();
            }
            for line in part.header_lines() {
                part_headers.push((part.name.to_vec(), line.to_vec()));
            }
        };
        // A body the strict reader refuses is read as ModSecurity would (it is refused
        // anyway: `REQBODY_ERROR`).
        let refused = matches!(
            crate::waf::multipart::parse(body, boundary, |_| {}),
            Err(crate::waf::multipart::Error::Invalid(_))
        );
        if refused {
            crate::waf::multipart::parse_lenient(body, boundary, &mut each);
        } else {
            let _ = crate::waf::multipart::parse(body, boundary, &mut each);
        }
    }
}

/// Character and entity references decoded, as an XML parser hands values over.
fn xml_unescape(v: &[u8]) -> Vec<u8> {
    if !v.contains(&b'&') {
        return v.to_vec();
    }
    let mut out = Vec::with_capacity(v.len());
    crate::waf::transform::Transform::HtmlEntityDecode.apply(v, &mut out);
    out
}

/// REQBODY_PROCESSOR from a (lowercased) content type, as ModSecurity with its
/// recommended configuration sets it.
fn processor_of(ctype: &[u8]) -> &'static str {
    let mime = ctype
        .split(|&b| b == b';')
        .next()
        .unwrap_or(b"")
        .trim_ascii();
    if mime == b"application/x-www-form-urlencoded" {
        "URLENCODED"
    } else if mime == b"multipart/form-data" {
        "MULTIPART"
    } else if mime.starts_with(b"application/json") || mime.ends_with(b"+json") {
        "JSON"
    } else if mime == b"text/xml"
        || mime == b"application/xml"
        || mime == b"application/soap+xml"
        || mime.ends_with(b"+xml")
    {
        "XML"
    } else {
        ""
    }
}
