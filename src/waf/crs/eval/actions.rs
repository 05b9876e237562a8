//! What rules change while a request is evaluated: TX variables, `MATCHED_VAR(S)`, the
//! engine mode and request-scoped `ctl` removals; `setvar` and `%{…}` macro expansion.

use super::*;

/// What rules change.
pub(super) struct State {
    /// TX: a handful of names looked up hundreds of times per request, so hashed with
    /// foldhash rather than SipHash (the names are the rule set's, not the client's).
    pub(super) vars: HashMap<String, Vec<u8>, foldhash::fast::FixedState>,
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
        let name: std::borrow::Cow<'_, str> = match &sv.key {
            Some(k) => std::borrow::Cow::Borrowed(k.as_str()),
            None => {
                let mut n = lossy(&expand(&sv.name, data, st, head));
                n.make_ascii_lowercase();
                std::borrow::Cow::Owned(crate::waf::crs::compile::var_key(&n).into_owned())
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
pub(super) fn expand(m: &Macro, data: &Data<'_>, st: &State, rule: &Rule) -> Vec<u8> {
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
    pub(super) fn num(&self, k: &str) -> i64 {
        self.vars.get(k).map_or(0, |v| atoi(v))
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
