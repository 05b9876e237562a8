//! SecLang directives in file order → the compiled program: rules and chains,
//! `SecDefaultAction`, `SecRuleRemoveBy*` / `SecRuleUpdateTargetBy*`, `skipAfter` markers,
//! interned transformation chains and the literal prefilters.

use super::actions::{ctl, id_range, setvar, severity};
use super::operators::operator;
use super::regex_sets::RegexSet;
use super::*;

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
        let files = super::super::files(&settings.path)?;
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
        let mut tx = l.tx_slots();
        let initial_tx = initial_tx
            .into_iter()
            .map(|(k, v)| (tx.slot(&k), v))
            .filter(|(s, _)| *s != NO_TX)
            .collect();
        let block_action = [l.defaults[0].disruptive, l.defaults[1].disruptive];
        let (prefilter, slots) = l.prefilter();
        let links = l.number_links();
        l.gates();
        let summary_scans = l.summaries();
        let (regex_sets, set_words) = l.regex_sets();
        let chain_sets = l
            .chains
            .iter()
            .map(|c| c.iter().map(|x| x.trigger_set()).collect())
            .collect();
        let trie = XformTrie::new(&l.chains);
        Ok(Crs {
            phases: l.phases,
            chains: l.chains,
            chain_sets,
            trie,
            prefilter,
            pf_words: slots.div_ceil(64),
            summary_scans,
            memo_words: (2 * links).div_ceil(64),
            regex_sets,
            set_words,
            long_value: super::regex_sets::LONG_VALUE,
            tx,
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

    /// Numbers the TX names the rules use ([`TxNames`]) and gives each `%{tx.name}`,
    /// setvar key and `TX:name` target its slot.
    fn tx_slots(&mut self) -> TxNames {
        fn mac(m: &mut Macro, tx: &mut TxNames) {
            for p in &mut m.0 {
                if let Part::Var(Var::Tx, Some(k)) = p {
                    let s = tx.slot(k);
                    if s != NO_TX {
                        *p = Part::Tx(s);
                    }
                }
            }
        }
        fn link(link: &mut Rule, tx: &mut TxNames) {
            for sv in &mut link.setvars {
                if let Some(k) = &sv.key {
                    sv.slot = tx.slot(k);
                }
                mac(&mut sv.name, tx);
                mac(&mut sv.value, tx);
            }
            for m in link.msg.iter_mut().chain(link.logdata.iter_mut()) {
                mac(m, tx);
            }
            if let Some(Arg::Macro(m)) = link.op.arg_mut() {
                mac(m, tx);
            }
            for t in &mut link.targets {
                if let (Var::Tx, Sel::Name(n)) = (t.var, &t.sel) {
                    t.tx_slot = tx.slot(&String::from_utf8_lossy(n));
                }
            }
        }
        let mut tx = TxNames::default();
        for p in &mut self.phases {
            for e in p.iter_mut() {
                let Entry::Rule(r) = e else { continue };
                link(r, &mut tx);
                for l in &mut r.chain {
                    link(l, &mut tx);
                }
            }
        }
        // Every name is numbered now: what each `TX:/regex/` selects among them.
        fn select(targets: &mut [Target], tx: &TxNames) {
            for t in targets {
                if let (Var::Tx, Sel::Regex(re)) = (t.var, &t.sel) {
                    t.tx_selected = (0..tx.names.len() as u16)
                        .filter(|&s| {
                            let n = &tx.names[s as usize];
                            !n.starts_with('@') && re.is_match(n.as_bytes())
                        })
                        .collect();
                }
            }
        }
        for p in &mut self.phases {
            for e in p.iter_mut() {
                let Entry::Rule(r) = e else { continue };
                select(&mut r.targets, &tx);
                for l in &mut r.chain {
                    select(&mut l.targets, &tx);
                }
            }
        }
        tx
    }

    /// Numbers every rule and chain link and marks those whose result may be kept per
    /// value; returns how many there are.
    fn number_links(&mut self) -> usize {
        let mut n = 0u32;
        let mut number = |link: &mut Rule| {
            link.uid = n;
            n += 1;
            link.memo_miss = matches!(
                link.op,
                Op::Rx { .. }
                    | Op::Pm { .. }
                    | Op::DetectSqli
                    | Op::DetectXss
                    | Op::ValidateByteRange(_)
                    | Op::ValidateUrlEncoding
                    | Op::ValidateUtf8
            );
            link.memo = link.memo_miss && !link.capture && !link.multi_match;
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

    /// Gives each plain (not negated, not multiMatch) regex with required literals, and
    /// each plain phrase match, a slot and builds one literal automaton for them all: a
    /// DFA (~22 MiB for CRS v4 PL 1, against ~1 MiB for the NFA), because it scans every
    /// distinct transformed value of a request, which for a 64 KiB form is ~10 bytes per
    /// body byte (the NFA cost ~35 instructions a byte; 30 % of such a request).
    fn prefilter(&mut self) -> (Option<Prefilter>, usize) {
        // Literal (lowercased) → the slots that need it.
        let mut slots: HashMap<Vec<u8>, Vec<u32>> = HashMap::new();
        let mut next = 0u32;
        for p in &mut self.phases {
            for e in p.iter_mut() {
                let Entry::Rule(r) = e else { continue };
                let mut slot = |link: &mut Rule| {
                    let lits = match &link.op {
                        Op::Rx {
                            lits: Some(lits), ..
                        } => lits,
                        Op::Pm { phrases, .. } if !phrases.is_empty() => phrases,
                        _ => return,
                    };
                    if link.negate || link.multi_match {
                        return;
                    }
                    link.pf_slot = next;
                    for l in lits {
                        let e = slots.entry(l.to_ascii_lowercase()).or_default();
                        if e.last() != Some(&next) {
                            e.push(next);
                        }
                    }
                    next += 1;
                };
                slot(r);
                for link in &mut r.chain {
                    slot(link);
                }
            }
        }
        let mut pats: Vec<(Vec<u8>, Vec<u32>)> = slots.into_iter().collect();
        pats.sort();

        let ac = AhoCorasickBuilder::new()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::Standard)
            .kind(Some(aho_corasick::AhoCorasickKind::DFA))
            .build(pats.iter().map(|(l, _)| l))
            .ok();
        let mut slot_list = Vec::new();
        let mut slots_of = Vec::new();
        for (_, s) in &pats {
            let start = slot_list.len() as u32;
            slot_list.extend_from_slice(s);
            slots_of.push(start..slot_list.len() as u32);
        }
        let Some(ac) = ac else {
            // Too large to build: every operator then runs on every value.
            for p in &mut self.phases {
                for e in p.iter_mut() {
                    if let Entry::Rule(r) = e {
                        r.pf_slot = NO_SLOT;
                        for link in &mut r.chain {
                            link.pf_slot = NO_SLOT;
                        }
                    }
                }
            }
            return (None, 0);
        };
        let pf = Prefilter {
            ac,
            slots_of,
            slot_list,
        };
        (Some(pf), next as usize)
    }

    /// Puts the regex of every link that is not negated into its rule's paranoia level's
    /// set (`paranoia-level/N` tag; untagged rules form level 0), one pattern per
    /// distinct regex; returns the sets and the words of a value's results of all.
    fn regex_sets(&mut self) -> (Vec<RegexSet>, usize) {
        // Per level: its patterns, and the pattern index of each.
        let mut levels: Vec<(u8, Vec<String>, HashMap<String, u16>)> = Vec::new();
        let mut place = |level: u8, link: &mut Rule| {
            let Op::Rx { pattern, .. } = &link.op else {
                return;
            };
            if link.negate {
                return;
            }
            let li = match levels.iter().position(|(l, ..)| *l == level) {
                Some(i) => i,
                None => {
                    levels.push((level, Vec::new(), HashMap::new()));
                    levels.len() - 1
                }
            };
            let (_, pats, index) = &mut levels[li];
            let Ok(n) = u16::try_from(pats.len()) else {
                return;
            };
            let pi = *index.entry(pattern.to_string()).or_insert_with(|| {
                pats.push(pattern.to_string());
                n
            });
            link.rx_set = (li as u32) << 16 | u32::from(pi);
        };
        for r in self.rules_mut() {
            let level = r
                .tags
                .iter()
                .find_map(|t| t.strip_prefix("paranoia-level/")?.parse::<u8>().ok())
                .unwrap_or(0);
            place(level, r);
            for link in &mut r.chain {
                place(level, link);
            }
        }
        let mut sets = Vec::new();
        let mut at = 0;
        // A level's set index as placed above; a level that does not compile leaves a
        // gap its links must not use.
        let mut built = Vec::new();
        for (level, pats, _) in &levels {
            let refs: Vec<&str> = pats.iter().map(String::as_str).collect();
            match RegexSet::build(&refs, *level, at) {
                Some(s) => {
                    at += s.words();
                    built.push(Some(sets.len() as u32));
                    sets.push(s);
                }
                None => built.push(None),
            }
        }
        let renumber = |link: &mut Rule| {
            if link.rx_set != NO_SET {
                link.rx_set = match built[(link.rx_set >> 16) as usize] {
                    Some(s) => s << 16 | (link.rx_set & 0xffff),
                    None => NO_SET,
                };
            }
        };
        for r in self.rules_mut() {
            renumber(r);
            r.chain.iter_mut().for_each(renumber);
        }
        (sets, at)
    }

    /// Sets each link's byte gate ([`Rule::gate`]) from its operator.
    fn gates(&mut self) {
        fn gate(op: &Op) -> Vec<ByteSet> {
            let bytes = |f: &dyn Fn(u8) -> bool| {
                let v: Vec<u8> = (0..=255u8).filter(|&b| f(b)).collect();
                vec![ByteSet::of(&v)]
            };
            match op {
                Op::Rx { needs, .. } => needs.clone(),
                Op::ValidateByteRange(ok) => bytes(&|b| !ok[b as usize]),
                // ASCII is valid UTF-8.
                Op::ValidateUtf8 => bytes(&|b| b >= 0x80),
                Op::ValidateUrlEncoding => bytes(&|b| b == b'%'),
                // Both detectors answer no for a value without one of these.
                Op::DetectSqli => vec![ByteSet::of(crate::waf::sqli::TRIGGERS)],
                Op::DetectXss => vec![ByteSet::of(crate::waf::xss::TRIGGERS)],
                _ => Vec::new(),
            }
        }
        for p in &mut self.phases {
            for e in p.iter_mut() {
                let Entry::Rule(r) = e else { continue };
                r.gate = gate(&r.op);
                for l in &mut r.chain {
                    l.gate = gate(&l.op);
                }
            }
        }
    }

    /// Gives each link whose operator has a gate (a prefilter slot, required bytes) and
    /// whose targets do not change while rules run a summary slot per target, shared by
    /// the links that read the same target under the same chain; returns, per slot,
    /// whether one of them has a prefilter slot (only then are its values scanned by the
    /// literal automaton).
    fn summaries(&mut self) -> Vec<bool> {
        let mut slots: HashMap<(u16, Var, String), u32> = HashMap::new();
        let mut scans = Vec::new();
        for p in &mut self.phases {
            // REQUEST_BODY changes only by a `ctl:forceRequestBodyVariable` (CRS has
            // it in phase 1): in a phase without one it is fixed too.
            let forces_body = p.iter().any(|e| match e {
                Entry::Rule(r) => std::iter::once(&**r).chain(r.chain.iter()).any(|l| {
                    l.ctls
                        .iter()
                        .any(|c| matches!(c, Ctl::ForceRequestBodyVariable))
                }),
                Entry::Marker(_) => false,
            });
            for e in p.iter_mut() {
                let Entry::Rule(r) = e else { continue };
                let mut slot = |link: &mut Rule| {
                    let gated = link.pf_slot != NO_SLOT || !link.gate.is_empty();
                    let fixed = link.targets.iter().all(|t| {
                        !t.count
                            && (!t.var.changes_while_rules_run()
                                || (t.var == Var::RequestBody && !forces_body))
                    });
                    if link.always || link.negate || link.multi_match || !gated || !fixed {
                        return;
                    }
                    // In the link's order: the walk tests the summaries' stored values,
                    // and which match comes last (MATCHED_VAR, captures) follows it.
                    let ids = link
                        .targets
                        .iter()
                        .map(|t| {
                            let n = slots.len() as u32;
                            let id = *slots
                                .entry((link.xforms, t.var, t.sel_key.clone()))
                                .or_insert(n);
                            if id == n {
                                scans.push(false);
                            }
                            scans[id as usize] |= link.pf_slot != NO_SLOT;
                            id
                        })
                        .collect();
                    link.sum_targets = ids;
                };
                slot(r);
                for link in &mut r.chain {
                    slot(link);
                }
            }
        }
        scans
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
            sum_targets: Vec::new(),
            gate: Vec::new(),
            uid: 0,
            rx_set: NO_SET,
            memo: false,
            memo_miss: false,
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
        let sel_key = match &v.selector {
            None => String::new(),
            Some(Selector::Name(n)) => format!("={}", n.to_ascii_lowercase()),
            Some(Selector::Regex(r)) => format!("/{r}"),
        };
        if v.exclude {
            r.excludes.push((var, sel));
        } else {
            r.targets.push(Target {
                var,
                sel,
                sel_key,
                count: v.count,
                tx_slot: NO_TX,
                tx_selected: Vec::new(),
            });
        }
    }
    Ok(())
}
