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
//! dozens of rules): values with the same bytes are one value; the transformation chains
//! form a trie ([`XformTrie`](super::compile::XformTrie)), and per (value, trie node) the
//! transformed bytes and their byte set are computed once — a step that leaves the bytes
//! as they are shares its parent's entry, so a benign value has a few distinct entries
//! whatever the number of chains. One literal automaton over every rule's required
//! literals and `@pm` phrases runs once per distinct entry (a rule none of whose
//! literals occurred skips its operator); a regex also needs one of its required bytes.
//! For a value that occurs more than once each pure operator's result is kept (only a
//! miss for rules that capture or use multiMatch: a match must make its captures).
//! Exclusions (`!ARGS:x`) are checked only for values that matched.
//!
//! Links whose targets do not change while rules run share a summary per (target,
//! chain): the union of its values' byte sets and literal hits, and the values with
//! their entries. A link none of whose values can pass its gates is skipped without
//! collecting anything; otherwise it tests only the values that pass them.
//!
//! Request scalars that rules cannot change (REQUEST_FILENAME, REQUEST_LINE…) are cached
//! values like the items; TX is a table of slots numbered at load (see
//! [`TxNames`](super::compile::TxNames)), and a link on one `TX:name` is tested on the
//! value in place.
//!
//! A transformation is applied once per (entry, transformation), whichever trie node
//! asks (CRS reaches the same lowercase by several chains); a lowercased entry shares
//! its parent's literal hits (the automaton ignores case); a summary runs the literal
//! automaton only when one of its links has a literal slot.
//!
//! A long entry (at least [`Crs::long_value`] bytes, 1 KiB) passes most gates: for it
//! the regexes of a paranoia level are answered by one scan of that level's regex set
//! ([`regex_sets`](super::compile::regex_sets)), and only a regex the set reports
//! runs alone (64 KiB form: 22 single scans of ~58 KB became 4 set scans; 2.9 →
//! 1.7 ms per evaluation).
//!
//! Cost (callgrind, `CRS_PROFILE` in `benches/crs.rs`, PL 1): about 0.99 M instructions
//! for a browser GET and 2.17 M for a 2 KiB JSON POST (1.96 M and 6.6 M before the trie,
//! the summaries and TX slots); 0.42 M and 1.49 M for `benches/load.py`'s requests and
//! 1.4 M for its 1 MiB upload. Its 64 KiB form is measured by the clock (its lazy-DFA
//! scans miss the CPU caches, which instruction counts do not show): ~1.7 ms, mostly the
//! literal automaton over its five distinct long entries, the set scans and the
//! transformations. What remains for small requests is spread thin: building the
//! summaries (a value is visited once per chain that reads its target), the literal
//! automaton, transformations, the links without a gate (TX comparisons, multiMatch).
//! Buffers are reused per thread; a request allocates for its matches.
//!
//! The walk is here; what it reads and writes is in the submodules: [`variables`] (the
//! request data rules select from, built once), [`operators`] (`@rx`, `@pm`,
//! `@detectSQLi`, comparisons…), [`actions`] (TX and the other state rules change:
//! `setvar`, `ctl`, macro expansion).

mod actions;
mod operators;
mod variables;

use std::borrow::Cow;
use std::net::IpAddr;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

use super::compile::regex_sets::{SetCache, GAVE_UP, NOT_RUN, RAN};
use super::compile::{
    Arg, Crs, Ctl, Disruptive, EngineMode, Entry, Macro, Op, Part, Rule, SetOp, TxNames, Var,
    NO_SET, NO_SLOT, NO_TX,
};
use super::xform::Xform;
use crate::waf::operator::{invalid_url_encoding, ByteSet};
use crate::waf::request::{BodyParse, Items, RequestParts};
use crate::waf::{sqli, xss};
use actions::{expand, run_setvars, RemovedTarget, State, Tx};
use operators::atoi;
use variables::{collect, is_excluded, scalar, Data};

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

/// An operator's captures (`TX:0`–`TX:9`), when the rule captures.
type Captures = Option<Vec<Vec<u8>>>;

/// Request values transformed by chains, made once per request and trie node.
#[derive(Default)]
struct ValueCache {
    /// Scratch for transformations.
    a: Vec<u8>,
    b: Vec<u8>,
    /// Per (canonical item, trie node), its entry in `entries` (`u32::MAX`: not made
    /// yet).
    slots: Vec<u32>,
    entries: Vec<Cached>,
    /// The transformed bytes of the entries.
    buf: Vec<u8>,
    /// Prefilter results, `pf_words` per entry that needed one.
    cands: Vec<u64>,
    /// What entries became by a transformation: (transformation number, entry, the
    /// next of the same parent), in lists from [`Cached::kids`].
    kids: Vec<(u8, u32, u32)>,
    /// Regex-set results of long entries, `Crs::set_words` per entry that needed one.
    set_bits: Vec<u64>,
}

impl ValueCache {
    /// A new entry for `buf[start..]`, whose byte set is `bs`.
    fn push(&mut self, start: u32, bs: ByteSet) -> usize {
        self.entries.push(Cached {
            range: start..self.buf.len() as u32,
            bs,
            cands: u32::MAX,
            memo: u32::MAX,
            kids: u32::MAX,
            hits_of: u32::MAX,
            sets: u32::MAX,
        });
        self.entries.len() - 1
    }

    /// The entry that entry `p` became by transformation `xid`, if known.
    fn kid(&self, p: usize, xid: u8) -> Option<usize> {
        let mut k = self.entries[p].kids;
        while k != u32::MAX {
            let (x, child, next) = self.kids[k as usize];
            if x == xid {
                return Some(child as usize);
            }
            k = next;
        }
        None
    }

    fn add_kid(&mut self, p: usize, xid: u8, child: usize) {
        let next = self.entries[p].kids;
        self.entries[p].kids = self.kids.len() as u32;
        self.kids.push((xid, child as u32, next));
    }
}

/// Scratch buffers.
#[derive(Default)]
struct Bufs {
    vc: ValueCache,
    /// TX, kept between requests for its buffers.
    tx: Tx,
    vbuf: Vec<u8>,
    vals: Vec<V>,
    memo: Vec<u64>,
    new_matches: Vec<(Vec<u8>, Vec<u8>)>,
    /// The value of the current match.
    hit_val: Vec<u8>,
    /// Per summary slot, the offset of its summary in `sums` (`u32::MAX`: not made yet).
    sum_at: Vec<u32>,
    /// Summaries of a target under a chain: the union of the values' byte sets (four
    /// words), then the union of their prefilter results (`pf_words`).
    sums: Vec<u64>,
    /// Per summary slot, its values with their cache entries (`u32::MAX` when a value
    /// is not a request item: then the walk collects the values itself).
    sum_vals: Vec<Range<u32>>,
    sum_list: Vec<(V, u32)>,
    /// This thread's lazy-DFA states of each regex set (kept across requests).
    set_caches: Vec<SetCache>,
    /// The sets whose scan gave up this request (bit per set): not run again.
    sets_gave_up: u64,
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
    /// Head of its list in [`ValueCache::kids`] (`u32::MAX`: none).
    kids: u32,
    /// An entry with the same literals, up to ASCII case (`u32::MAX`: none): its
    /// prefilter result is shared.
    hits_of: u32,
    /// Offset of its regex-set results in `ValueCache::set_bits` (`u32::MAX`: none yet).
    sets: u32,
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
        let mut data = Data::new(req, &self.tx, items, by_kind, item_bs);
        let mut vars = std::mem::take(&mut bufs.tx);
        vars.reset(&self.tx, &self.initial_tx);
        let mut st = State {
            vars,
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
            let vc = &mut bufs.vc;
            vc.slots.clear();
            vc.slots
                .resize(data.values() * self.trie.nodes.len(), u32::MAX);
            vc.entries.clear();
            vc.buf.clear();
            vc.cands.clear();
            vc.kids.clear();
            vc.set_bits.clear();
            bufs.sets_gave_up = 0;
            bufs.memo.clear();
            bufs.sum_at.clear();
            bufs.sum_at.resize(self.summary_scans.len(), u32::MAX);
            bufs.sums.clear();
            bufs.sum_vals.clear();
            bufs.sum_vals.resize(self.summary_scans.len(), 0..0);
            bufs.sum_list.clear();
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
        out.inbound_score = st.num(&self.tx, "blocking_inbound_anomaly_score");
        bufs.tx = st.vars;
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
        if self.tx_compare_fails(link, data, st) || !self.may_match(link, head, data, st, bufs) {
            return false;
        }
        bufs.vals.clear();
        bufs.vbuf.clear();
        // From the summary, only the values that pass the operator's gates (the others
        // cannot match); without one, every value.
        if !self.gated_values(link, bufs) {
            self.collect_all(link, head, data, st, bufs);
        }
        self.test_values(link, head, data, st, bufs)
    }

    /// A link on one `TX:name`, untransformed (CRS's paranoia-level and score checks, a
    /// hundred per request): whether its operator fails on the value read in place (or
    /// the variable is unset). A match goes the general way, which records it.
    #[inline]
    fn tx_compare_fails(&self, link: &Rule, data: &Data<'_>, st: &State) -> bool {
        let [t] = link.targets.as_slice() else {
            return false;
        };
        if t.tx_slot == NO_TX
            || t.count
            || link.multi_match
            || !self.chains[link.xforms as usize].is_empty()
        {
            return false;
        }
        match st.vars.get(t.tx_slot) {
            None => true,
            Some(v) => self.op_matches(link, v, ByteSet::ALL, data, st).is_none(),
        }
    }

    /// Every value of `link`'s targets into `bufs.vals` (counts as one value each).
    fn collect_all(&self, link: &Rule, head: &Rule, data: &Data<'_>, st: &State, bufs: &mut Bufs) {
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
    }

    /// Tests the values in `bufs.vals` against `link`; runs its per-match actions.
    fn test_values(
        &self,
        link: &Rule,
        head: &Rule,
        data: &Data<'_>,
        st: &mut State,
        bufs: &mut Bufs,
    ) -> bool {
        let chain = &self.chains[link.xforms as usize];
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
            if let (true, Some(idx)) = (link.multi_match, v.item) {
                // A value repeated in the request that missed every step before is not
                // tested again (its raw entry keeps the miss).
                let memo = (link.memo_miss && data.repeated[idx as usize]).then(|| {
                    let c0 = self.node_entry(0, idx, raw, data, &mut bufs.vc);
                    memo_at(&mut bufs.vc.entries, &mut bufs.memo, c0, self.memo_words)
                });
                let bit = 2 * link.uid as usize;
                let missed = memo.is_some_and(|m| {
                    bit_set(&bufs.memo[m..], bit) && !bit_set(&bufs.memo[m..], bit + 1)
                });
                // The value, then after each step that changed it (the trie's entries).
                let path = &self.trie.paths[link.xforms as usize];
                let mut last = usize::MAX;
                let nodes = std::iter::once(0).chain(path.iter().copied());
                for node in nodes.filter(|_| !missed) {
                    let ci = self.node_entry(node, idx, raw, data, &mut bufs.vc);
                    if ci == last {
                        continue;
                    }
                    last = ci;
                    let (caches, gave_up) = (&mut bufs.set_caches, &mut bufs.sets_gave_up);
                    if self.set_rules_out(link, ci, &mut bufs.vc, caches, gave_up) {
                        continue;
                    }
                    let e = &bufs.vc.entries[ci];
                    let value = &bufs.vc.buf[e.range.start as usize..e.range.end as usize];
                    if let Some(c) = self.op_matches(link, value, e.bs, data, st) {
                        bufs.hit_val.clear();
                        bufs.hit_val.extend_from_slice(value);
                        hit = Some(c);
                        break;
                    }
                }
                if let (Some(m), false) = (memo, missed) {
                    memo_record(&mut bufs.memo[m..], bit, hit.is_some());
                }
            } else if link.multi_match {
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
                let mut candidate = true;
                let (value, bs, entry): (&[u8], ByteSet, Option<usize>) = match v.item {
                    Some(idx) => {
                        let vc = &mut bufs.vc;
                        let ci = self.entry(link.xforms, idx, raw, data, vc);
                        if link.pf_slot != NO_SLOT {
                            // The chain's literal automaton, run once per value.
                            let at = self.cands(ci, vc);
                            let s = link.pf_slot as usize;
                            candidate = vc.cands[at + s / 64] & (1 << (s % 64)) != 0;
                        }
                        if candidate
                            && self.set_rules_out(
                                link,
                                ci,
                                vc,
                                &mut bufs.set_caches,
                                &mut bufs.sets_gave_up,
                            )
                        {
                            candidate = false;
                        }
                        let e = &vc.entries[ci];
                        let (r, bs) = (e.range.start as usize..e.range.end as usize, e.bs);
                        (&bufs.vc.buf[r], bs, Some(ci))
                    }
                    None => {
                        let (a, b) = (&mut bufs.vc.a, &mut bufs.vc.b);
                        let (s, bs) = transform(chain, sets, raw, ByteSet::of(raw), a, b);
                        (s, bs, None)
                    }
                };
                // A value repeated in the request (JSON arrays repeat names and values)
                // is tested once per rule: the result is kept with its cached entry.
                // With captures only a miss is kept.
                let memo = match entry {
                    Some(ci) if link.memo_miss && data.repeated[v.item.unwrap_or(0) as usize] => {
                        Some(memo_at(
                            &mut bufs.vc.entries,
                            &mut bufs.memo,
                            ci,
                            self.memo_words,
                        ))
                    }
                    _ => None,
                };
                let bit = 2 * link.uid as usize;
                let set = |m: usize, b: usize| bit_set(&bufs.memo[m..], b);
                let known = memo.filter(|&m| set(m, bit) && (link.memo || !set(m, bit + 1)));
                if let Some(m) = known {
                    if set(m, bit + 1) {
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
                    memo_record(&mut bufs.memo[m..], bit, hit.is_some());
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
                        // Slots 0–9 are TX:0–TX:9 (`TxNames`).
                        st.vars.put(i as u16, &c);
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
}

impl Crs {
    /// The cache entry (in `vc.entries`) of item `idx` (whose value is `raw`) transformed
    /// by chain `c`.
    fn entry(&self, c: u16, idx: u32, raw: &[u8], data: &Data<'_>, vc: &mut ValueCache) -> usize {
        self.node_entry(self.trie.end(c), idx, raw, data, vc)
    }

    /// The cache entry of item `idx` at trie node `node`: made once per request, keyed by
    /// the first item with the same bytes; a node whose transformation leaves its
    /// parent's bytes as they are shares the parent's entry (a benign value has a few
    /// distinct entries, whatever the number of chains).
    #[inline]
    fn node_entry(
        &self,
        node: u16,
        idx: u32,
        raw: &[u8],
        data: &Data<'_>,
        vc: &mut ValueCache,
    ) -> usize {
        let slot = data.canon[idx as usize] as usize * self.trie.nodes.len() + node as usize;
        match vc.slots[slot] {
            u32::MAX => self.make_entry(slot, node, idx, raw, data, vc),
            ci => ci as usize,
        }
    }

    /// [`Self::node_entry`] the first time: the parent's entry, transformed.
    #[inline(never)]
    fn make_entry(
        &self,
        slot: usize,
        node: u16,
        idx: u32,
        raw: &[u8],
        data: &Data<'_>,
        vc: &mut ValueCache,
    ) -> usize {
        let (parent, xform) = self.trie.nodes[node as usize];
        let ci = match xform {
            None => {
                let start = vc.buf.len() as u32;
                vc.buf.extend_from_slice(raw);
                vc.push(start, data.item_bs[idx as usize])
            }
            Some(x) => {
                let p = self.node_entry(parent, idx, raw, data, vc);
                let pe = &vc.entries[p];
                let trigger = &self.trie.triggers[node as usize];
                let xid = self.trie.xform_ids[node as usize];
                if trigger.as_ref().is_some_and(|t| !t.intersects(&pe.bs)) {
                    p
                } else if let Some(k) = vc.kid(p, xid) {
                    // Another node applied the same transformation to the same bytes.
                    k
                } else {
                    let pr = pe.range.start as usize..pe.range.end as usize;
                    x.apply(&vc.buf[pr.clone()], &mut vc.a);
                    let k = if vc.a == vc.buf[pr] {
                        p
                    } else {
                        let start = vc.buf.len() as u32;
                        vc.buf.extend_from_slice(&vc.a);
                        let k = vc.push(start, ByteSet::of(&vc.a));
                        if self.trie.case_only[node as usize] {
                            vc.entries[k].hits_of = p as u32;
                        }
                        k
                    };
                    vc.add_kid(p, xid, k);
                    k
                }
            }
        };
        vc.slots[slot] = ci as u32;
        ci
    }

    /// The offset in `vc.cands` of entry `ci`'s prefilter result (the literal automaton,
    /// run once per entry).
    fn cands(&self, ci: usize, vc: &mut ValueCache) -> usize {
        let e = &mut vc.entries[ci];
        if e.cands == u32::MAX && e.hits_of != u32::MAX {
            // A lowercased value: the automaton ignores case.
            let of = e.hits_of as usize;
            let at = self.cands(of, vc);
            vc.entries[ci].cands = at as u32;
            return at;
        }
        let e = &mut vc.entries[ci];
        if e.cands == u32::MAX {
            let base = vc.cands.len();
            vc.cands.resize(base + self.pf_words, 0);
            if let Some(pf) = &self.prefilter {
                let value = &vc.buf[e.range.start as usize..e.range.end as usize];
                mark(pf, value, &mut vc.cands[base..]);
            }
            e.cands = base as u32;
        }
        e.cands as usize
    }

    /// Whether some value of `link`'s targets can pass its operator's gates (its
    /// prefilter bit, its required bytes); `false` means the link matches nothing this
    /// phase. Read from the summaries of its targets under its chain, each made when a
    /// link reading that target under that chain is first reached (CRS reads the same
    /// targets under the same chain in dozens of rules, and a benign value passes almost
    /// no gate): most links are then skipped without collecting a value.
    fn may_match(
        &self,
        link: &Rule,
        head: &Rule,
        data: &Data<'_>,
        st: &State,
        bufs: &mut Bufs,
    ) -> bool {
        if link.sum_targets.is_empty() {
            return true;
        }
        for (t, &ts) in link.targets.iter().zip(&link.sum_targets) {
            if bufs.sum_at[ts as usize] == u32::MAX {
                bufs.sum_at[ts as usize] = self.summarize(t, ts, link, head, data, st, bufs) as u32;
            }
        }
        // The union over the targets' summaries must pass every gate.
        let sums = &bufs.sums;
        let at = |ts: u32| bufs.sum_at[ts as usize] as usize;
        if link.pf_slot != NO_SLOT {
            let s = link.pf_slot as usize;
            let hit = |ts: &u32| sums[at(*ts) + 4 + s / 64] & (1 << (s % 64)) != 0;
            if !link.sum_targets.iter().any(hit) {
                return false;
            }
        }
        link.gate.iter().all(|n| {
            link.sum_targets.iter().any(|&ts| {
                let a = at(ts);
                ByteSet([sums[a], sums[a + 1], sums[a + 2], sums[a + 3]]).intersects(n)
            })
        })
    }

    /// When `link`'s targets have summaries of item values only: its values that pass
    /// the gates into `bufs.vals` (most links then test none); `false` when the values
    /// must be collected.
    fn gated_values(&self, link: &Rule, bufs: &mut Bufs) -> bool {
        if link.sum_targets.is_empty() {
            return false;
        }
        let needs = &link.gate;
        let vc = &bufs.vc;
        for &ts in &link.sum_targets {
            let r = bufs.sum_vals[ts as usize].clone();
            for (v, ci) in &bufs.sum_list[r.start as usize..r.end as usize] {
                if *ci == u32::MAX {
                    bufs.vals.clear();
                    return false;
                }
                let e = &vc.entries[*ci as usize];
                if link.pf_slot != NO_SLOT {
                    let s = link.pf_slot as usize;
                    if vc.cands[e.cands as usize + s / 64] & (1 << (s % 64)) == 0 {
                        continue;
                    }
                }
                if !needs.iter().all(|n| e.bs.intersects(n)) {
                    continue;
                }
                bufs.vals.push(v.clone());
            }
        }
        true
    }

    /// Makes the summary `ts` of target `t` under `link`'s chain (see [`Bufs::sums`]);
    /// returns its offset. Item values go through the per-request cache, so the walk
    /// reuses their transformations; other values (XML, scalars) are transformed here.
    #[allow(clippy::too_many_arguments)]
    fn summarize(
        &self,
        t: &super::compile::Target,
        ts: u32,
        link: &Rule,
        head: &Rule,
        data: &Data<'_>,
        st: &State,
        bufs: &mut Bufs,
    ) -> usize {
        bufs.vals.clear();
        bufs.vbuf.clear();
        collect(t, link, head, data, st, bufs);
        let at = bufs.sums.len();
        bufs.sums.resize(at + 4 + self.pf_words, 0);
        let c = link.xforms;
        let pf = self.prefilter.as_ref();
        let scans = self.summary_scans[ts as usize];
        let vals = std::mem::take(&mut bufs.vals);
        let list_start = bufs.sum_list.len() as u32;
        for v in &vals {
            let val = v.val.start as usize..v.val.end as usize;
            match v.item {
                Some(idx) => {
                    let vc = &mut bufs.vc;
                    let ci = self.entry(c, idx, &data.items.buf[val], data, vc);
                    bufs.sum_list.push((v.clone(), ci as u32));
                    let bs = vc.entries[ci].bs;
                    for i in 0..4 {
                        bufs.sums[at + i] |= bs.0[i];
                    }
                    if scans {
                        let co = self.cands(ci, vc);
                        for i in 0..self.pf_words {
                            bufs.sums[at + 4 + i] |= vc.cands[co + i];
                        }
                    }
                }
                None => {
                    bufs.sum_list.push((v.clone(), u32::MAX));
                    let raw = &bufs.vbuf[val];
                    let (value, bs) = transform(
                        &self.chains[c as usize],
                        &self.chain_sets[c as usize],
                        raw,
                        ByteSet::of(raw),
                        &mut bufs.vc.a,
                        &mut bufs.vc.b,
                    );
                    for i in 0..4 {
                        bufs.sums[at + i] |= bs.0[i];
                    }
                    if let (Some(pf), true) = (pf, scans) {
                        mark(pf, value, &mut bufs.sums[at + 4..]);
                    }
                }
            }
        }
        bufs.sum_vals[ts as usize] = list_start..bufs.sum_list.len() as u32;
        bufs.vals = vals;
        at
    }
}

/// The offset in `memo` of entry `ci`'s operator results (made on first use).
fn memo_at(entries: &mut [Cached], memo: &mut Vec<u64>, ci: usize, words: usize) -> usize {
    let e = &mut entries[ci];
    if e.memo == u32::MAX {
        e.memo = memo.len() as u32;
        memo.resize(memo.len() + words, 0);
    }
    e.memo as usize
}

/// Whether bit `b` of `words` is set.
fn bit_set(words: &[u64], b: usize) -> bool {
    words[b / 64] & (1 << (b % 64)) != 0
}

/// Records a link's result in a value's memo words: bit `bit` tested, `bit + 1` matched.
fn memo_record(memo: &mut [u64], bit: usize, hit: bool) {
    memo[bit / 64] |= 1 << (bit % 64);
    if hit {
        memo[(bit + 1) / 64] |= 1 << ((bit + 1) % 64);
    }
}

/// Sets the prefilter slot bit (in `words`) of every literal of `pf` that occurs in
/// `value`.
fn mark(pf: &super::compile::Prefilter, value: &[u8], words: &mut [u64]) {
    for m in pf.ac.find_overlapping_iter(value) {
        let r = &pf.slots_of[m.pattern().as_usize()];
        for &s in &pf.slot_list[r.start as usize..r.end as usize] {
            words[s as usize / 64] |= 1 << (s % 64);
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::waf::crs::CrsSettings;

    fn load(rules: &str) -> (tempfile::TempDir, Crs) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("rules")).unwrap();
        std::fs::write(
            dir.path().join("crs-setup.conf"),
            "SecDefaultAction \"phase:1,log,auditlog,pass\"\n\
             SecDefaultAction \"phase:2,log,auditlog,pass\"\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("rules/REQUEST-100-TEST.conf"), rules).unwrap();
        let crs = Crs::load(&CrsSettings::new(dir.path())).unwrap();
        (dir, crs)
    }

    /// A body-less HTTP/1.1 GET of `target`.
    fn get<'a>(target: &'a str, h: &'a http::HeaderMap) -> RequestParts<'a> {
        RequestParts {
            canonical: None,
            method: "GET",
            target,
            version: "HTTP/1.1",
            headers: h,
            body: None,
            client_ip: None,
        }
    }

    #[test]
    fn tx_names_known_at_load_and_made_at_run_time_read_alike() {
        let (_dir, crs) = load(concat!(
            "SecAction \"id:1,phase:1,pass,nolog,setvar:tx.points=2,setvar:'tx.%{rule.id}-made=seen'\"\n",
            "SecRule TX:/^1-made$/ \"@streq seen\" \"id:2,phase:1,pass,log,msg:'%{tx.points} %{tx.1-made}',setvar:tx.points=+%{tx.points}\"\n",
            "SecRule TX:POINTS \"@eq 4\" \"id:3,phase:2,pass,log,setvar:'tx.blocking_inbound_anomaly_score=+%{tx.points}'\"\n",
            "SecRule TX:POINTS \"@eq 2\" \"id:4,phase:2,pass,log\"\n",
        ));
        let h = http::HeaderMap::new();
        let req = get("/", &h);
        for _ in 0..2 {
            // Twice: TX starts over on the second request (its buffers are reused).
            let out = crs.evaluate(&req, true, &[]);
            assert_eq!(out.ids().collect::<Vec<_>>(), [2, 3]);
            // The message is expanded once the rule's setvars ran.
            assert_eq!(out.hits[0].msg, "4 seen");
            assert_eq!(out.inbound_score, 4);
        }
    }

    #[test]
    fn cached_request_scalars_follow_the_phase_and_share_transformations() {
        let (_dir, crs) = load(concat!(
            "SecRule REQBODY_PROCESSOR \"!@rx (?:URLENCODED|MULTIPART|XML|JSON)\" \"id:1,phase:1,pass,nolog,ctl:forceRequestBodyVariable=On\"\n",
            "SecRule REQBODY_PROCESSOR \"@streq URLENCODED\" \"id:2,phase:2,pass,log\"\n",
            "SecRule REQUEST_FILENAME \"@rx ^/admin/\" \"id:3,phase:2,pass,log,t:none,t:lowercase\"\n",
            "SecRule REQUEST_FILENAME \"@endsWith /panel\" \"id:4,phase:2,pass,log,t:none,t:lowercase\"\n",
            "SecRule REQUEST_FILENAME \"@endsWith /panel\" \"id:5,phase:2,pass,log,t:none\"\n",
            "SecRule REQUEST_URI|REQUEST_URI_RAW \"@contains x=1\" \"id:6,phase:2,pass,log,capture,setvar:tx.n=+1\"\n",
            "SecRule TX:N \"@eq 2\" \"id:7,phase:2,pass,log\"\n",
        ));
        let h = http::HeaderMap::new();
        let req = get("/Admin/Panel?x=1", &h);
        let out = crs.evaluate(&req, true, &[]);
        // A body-less request read as URLENCODED from phase 2 on; the lowercased path
        // matches twice, the path as sent does not; REQUEST_URI and REQUEST_URI_RAW
        // (the same bytes) are two values.
        assert_eq!(out.ids().collect::<Vec<_>>(), [2, 3, 4, 6, 7]);
    }
    #[test]
    fn shared_transformations_and_the_form_body_keep_each_rules_result() {
        let (_dir, crs) = load(concat!(
            // The same lowercase reached by two chains (one through a step that leaves
            // the value as it is): one entry, each rule still sees the lowercased value.
            "SecRule ARGS \"@rx select\\s\" \"id:1,phase:2,pass,log,t:none,t:htmlEntityDecode,t:lowercase\"\n",
            "SecRule ARGS \"@rx select\\s\" \"id:2,phase:2,pass,log,t:none,t:lowercase\"\n",
            // Literal hits of a lowercased value come from the value as sent (the
            // automaton ignores case); a case-sensitive regex still decides.
            "SecRule ARGS \"@rx SELECT\" \"id:3,phase:2,pass,log,t:none,t:lowercase\"\n",
            "SecRule ARGS \"@rx SELECT\" \"id:4,phase:2,pass,log,t:none\"\n",
            // REQUEST_BODY of a form, raw and decoded.
            "SecRule REQUEST_BODY \"@contains q=SELECT%20\" \"id:5,phase:2,pass,log\"\n",
            "SecRule REQUEST_BODY \"@contains q=SELECT \" \"id:6,phase:2,pass,log,t:none,t:urlDecodeUni\"\n",
            "SecRule REQUEST_BODY \"@contains q=select \" \"id:7,phase:2,pass,log,t:none,t:urlDecodeUni,t:lowercase\"\n",
            // A literal that only decoding makes: found in the decoded value.
            "SecRule ARGS \"@rx union\" \"id:8,phase:2,pass,log,t:none,t:urlDecodeUni\"\n",
        ));
        let mut h = http::HeaderMap::new();
        h.insert(
            "content-type",
            "application/x-www-form-urlencoded".parse().unwrap(),
        );
        let body = b"q=SELECT%20name&x=%2575nion";
        let form = RequestParts {
            method: "POST",
            body: Some(body),
            ..get("/search", &h)
        };
        let out = crs.evaluate(&form, true, &[]);
        assert_eq!(out.ids().collect::<Vec<_>>(), [1, 2, 4, 5, 6, 7, 8]);
        // A JSON body: REQUEST_BODY is not there (CRS does not force it), the
        // argument is.
        h.insert("content-type", "application/json".parse().unwrap());
        let json = RequestParts {
            method: "POST",
            body: Some(br#"{"q":"SELECT name"}"#),
            ..get("/search", &h)
        };
        let out = crs.evaluate(&json, true, &[]);
        assert_eq!(out.ids().collect::<Vec<_>>(), [1, 2, 4]);
    }
    #[test]
    fn repeated_values_keep_misses_and_match_every_time() {
        let (_dir, crs) = load(concat!(
            // multiMatch with captures, and captures alone: a repeated value that
            // missed is not tested again, one that matched matches (and counts) each time.
            "SecRule ARGS \"@rx (eval)\\(\" \"id:1,phase:2,pass,log,capture,multiMatch,t:none,t:urlDecodeUni,t:lowercase,setvar:tx.m=+1,setvar:tx.c=%{tx.1}\"\n",
            "SecRule ARGS \"@rx (eval)\\(\" \"id:2,phase:2,pass,log,capture,t:none,t:lowercase,setvar:tx.n=+1\"\n",
            "SecRule TX:M \"@eq 4\" \"id:3,phase:2,pass,log\"\n",
            "SecRule TX:N \"@eq 4\" \"id:4,phase:2,pass,log\"\n",
            "SecRule TX:C \"@streq eval\" \"id:5,phase:2,pass,log\"\n",
        ));
        let mut h = http::HeaderMap::new();
        h.insert("content-type", "application/json".parse().unwrap());
        let json = RequestParts {
            method: "POST",
            body: Some(br#"{"a":["x","x","EVAL(1)","x","EVAL(1)","%65val(2)","%65val(2)"]}"#),
            ..get("/", &h)
        };
        let out = crs.evaluate(&json, true, &[]);
        // Rule 1 matches the four values with eval( after decoding; rule 2 (no decoding)
        // matches the two EVAL(1) and, lowercased, not %65val… : two — so TX:N is 2.
        assert_eq!(out.ids().collect::<Vec<_>>(), [1, 2, 3, 5]);
        let out2 = crs.evaluate(&json, true, &[]);
        assert_eq!(out2.ids().collect::<Vec<_>>(), [1, 2, 3, 5]);
    }
}
