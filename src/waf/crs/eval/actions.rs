//! What rules change while a request is evaluated: TX variables, `MATCHED_VAR(S)`, the
//! engine mode and request-scoped `ctl` removals; `setvar` and `%{…}` macro expansion.

use super::*;

/// What rules change.
pub(super) struct State {
    pub(super) vars: Tx,
    pub(super) matched_var: Vec<u8>,
    pub(super) matched_name: Vec<u8>,
    pub(super) matched_vars: Vec<(Vec<u8>, Vec<u8>)>,
    pub(super) removed_ids: Vec<(u32, u32)>,
    pub(super) removed_tags: Vec<String>,
    pub(super) removed_targets: Vec<RemovedTarget>,
    pub(super) engine: EngineMode,
    pub(super) force_body: bool,
    pub(super) processor: Option<String>,
}

/// `ctl:ruleRemoveTargetById/ByTag`: a target taken from some rules for this request.
pub(super) struct RemovedTarget {
    pub(super) id: Option<u32>,
    pub(super) tag: Option<String>,
    pub(super) var: Var,
    /// `None`: the whole collection.
    pub(super) key: Option<Vec<u8>>,
}

pub(super) fn run_setvars(link: &Rule, head: &Rule, data: &Data<'_>, st: &mut State) {
    for sv in &link.setvars {
        // The slot, or the name made now (`tx.%{rule.id}-…`).
        let named: Option<String> = (sv.slot == NO_TX).then(|| {
            let n = match &sv.key {
                Some(k) => k.clone(),
                None => {
                    let mut n = lossy(&expand(&sv.name, data, st, head));
                    n.make_ascii_lowercase();
                    crate::waf::crs::compile::var_key(&n).into_owned()
                }
            };
            n
        });
        let slot = match &named {
            Some(n) => data.tx_names.get(n).unwrap_or(NO_TX),
            None => sv.slot,
        };
        let mut num = [0u8; 20];
        let value: Cow<'_, [u8]> = match sv.op {
            SetOp::Delete => {
                match (&named, slot) {
                    (Some(n), NO_TX) => st.vars.remove_other(n),
                    _ => st.vars.remove(slot),
                }
                continue;
            }
            SetOp::Set => match sv.value.literal() {
                Some(l) => Cow::Borrowed(l.as_bytes()),
                None => Cow::Owned(expand(&sv.value, data, st, head)),
            },
            SetOp::Add | SetOp::Sub => {
                // Scores: `=+%{tx.critical_anomaly_score}`, read without a copy.
                let d = match sv.value.0.as_slice() {
                    [Part::Lit(s)] => atoi(s.as_bytes()),
                    [Part::Tx(s)] => st.vars.get(*s).map_or(0, atoi),
                    _ => atoi(&expand(&sv.value, data, st, head)),
                };
                let c = match (&named, slot) {
                    (Some(n), NO_TX) => st.vars.get_other(n),
                    _ => st.vars.get(slot),
                }
                .map_or(0, atoi);
                let n = if sv.op == SetOp::Add {
                    c.saturating_add(d)
                } else {
                    c.saturating_sub(d)
                };
                Cow::Borrowed(decimal(n, &mut num))
            }
        };
        match (named, slot) {
            (Some(n), NO_TX) => st.vars.put_other(n, &value),
            _ => st.vars.put(slot, &value),
        }
    }
}

/// `n` in decimal, written into `buf` (no allocation: scores are added per match).
fn decimal(n: i64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    let mut m = n.unsigned_abs();
    loop {
        i -= 1;
        buf[i] = b'0' + (m % 10) as u8;
        m /= 10;
        if m == 0 {
            break;
        }
    }
    if n < 0 {
        i -= 1;
        buf[i] = b'-';
    }
    &buf[i..]
}

/// TX for one request: a value per slot of the rule set's names ([`TxNames`]), and the
/// names made while rules run. Buffers are kept from request to request (per thread).
#[derive(Default)]
pub(super) struct Tx {
    vals: Vec<Vec<u8>>,
    set: Vec<bool>,
    /// Names not known at load (`tx.%{…}`), and other collections (`@ip.…`).
    other: Vec<(String, Vec<u8>)>,
}

impl Tx {
    /// TX as a request starts: the settings' values.
    pub(super) fn reset(&mut self, names: &TxNames, initial: &[(u16, Vec<u8>)]) {
        self.vals.resize_with(names.names.len(), Vec::new);
        self.set.clear();
        self.set.resize(names.names.len(), false);
        self.other.clear();
        for (s, v) in initial {
            self.put(*s, v);
        }
    }

    pub(super) fn get(&self, slot: u16) -> Option<&[u8]> {
        let s = slot as usize;
        (self.set.get(s) == Some(&true)).then(|| &self.vals[s][..])
    }

    pub(super) fn put(&mut self, slot: u16, v: &[u8]) {
        let s = slot as usize;
        if s < self.vals.len() {
            self.vals[s].clear();
            self.vals[s].extend_from_slice(v);
            self.set[s] = true;
        }
    }

    pub(super) fn remove(&mut self, slot: u16) {
        if let Some(x) = self.set.get_mut(slot as usize) {
            *x = false;
        }
    }

    fn get_other(&self, name: &str) -> Option<&[u8]> {
        self.other
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| &v[..])
    }

    fn put_other(&mut self, name: String, v: &[u8]) {
        match self.other.iter_mut().find(|(k, _)| *k == name) {
            Some((_, x)) => {
                x.clear();
                x.extend_from_slice(v);
            }
            None => self.other.push((name, v.to_vec())),
        }
    }

    fn remove_other(&mut self, name: &str) {
        self.other.retain(|(k, _)| k != name);
    }

    /// A variable by name (slot or not).
    pub(super) fn get_named(&self, names: &TxNames, name: &str) -> Option<&[u8]> {
        match names.get(name) {
            Some(s) => self.get(s),
            None => self.get_other(name),
        }
    }

    /// The variables whose names were made at run time.
    pub(super) fn others(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.other.iter().map(|(k, v)| (k.as_str(), &v[..]))
    }

    /// Every variable that is set: the slots in order, then the names made at run time.
    pub(super) fn iter<'t>(
        &'t self,
        names: &'t TxNames,
    ) -> impl Iterator<Item = (&'t str, &'t [u8])> + 't {
        (0..self.set.len())
            .filter(|&s| self.set[s])
            .map(|s| (names.names[s].as_str(), &self.vals[s][..]))
            .chain(self.others())
    }
}

/// Expands `%{…}` references.
pub(super) fn expand(m: &Macro, data: &Data<'_>, st: &State, rule: &Rule) -> Vec<u8> {
    let mut out = Vec::new();
    for p in &m.0 {
        match p {
            Part::Lit(s) => out.extend_from_slice(s.as_bytes()),
            Part::Tx(s) => {
                if let Some(v) = st.vars.get(*s) {
                    out.extend_from_slice(v);
                }
            }
            Part::Var(Var::Tx, Some(k)) => {
                if let Some(v) = st.vars.get_named(data.tx_names, k) {
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
    pub(super) fn num(&self, names: &TxNames, k: &str) -> i64 {
        self.vars.get_named(names, k).map_or(0, atoi)
    }

    pub(super) fn removed(&self, r: &Rule) -> bool {
        self.removed_ids
            .iter()
            .any(|&(a, b)| (a..=b).contains(&r.id))
            || self
                .removed_tags
                .iter()
                .any(|t| r.tags.iter().any(|x| x == t))
    }

    pub(super) fn ctl(&mut self, c: &Ctl) {
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
