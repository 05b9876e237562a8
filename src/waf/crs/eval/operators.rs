//! CRS operators against one transformed value: regexes and phrase sets compiled at load,
//! SQLi/XSS detection, comparisons, IP matches, validations; with the rule's negation and
//! captures.

use super::*;

impl Crs {
    /// `Some(captures)` when the operator (with the rule's negation) matches.
    pub(super) fn op_matches(
        &self,
        link: &Rule,
        v: &[u8],
        bs: ByteSet,
        data: &Data<'_>,
        st: &State,
    ) -> Option<Captures> {
        if !link.negate && !link.gate.iter().all(|n| bs.intersects(n)) {
            return None;
        }
        let mut caps = None;
        let m = match &link.op {
            Op::Rx { re, .. } => {
                if link.capture && !link.negate {
                    // Most values do not match: the lazy DFA says so without the
                    // allocation and the slower engine captures need.
                    if !re.is_match(v) {
                        return None;
                    }
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
            Op::Pm { ac, .. } => match ac.find(v) {
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

impl Crs {
    /// Whether `link`'s regex set proves that its regex matches nowhere in entry `ci`:
    /// for a long entry that passes the link's byte gate, the set scans it once for all
    /// its regexes (see [`super::super::compile::regex_sets`]). `false` also when the
    /// set cannot say (a short entry, no set, a scan that gave up): the regex runs.
    pub(super) fn set_rules_out(
        &self,
        link: &Rule,
        ci: usize,
        vc: &mut ValueCache,
        caches: &mut Vec<SetCache>,
        gave_up: &mut u64,
    ) -> bool {
        if link.rx_set == NO_SET {
            return false;
        }
        let e = &mut vc.entries[ci];
        let range = e.range.start as usize..e.range.end as usize;
        if range.len() < self.long_value || !link.gate.iter().all(|n| e.bs.intersects(n)) {
            return false;
        }
        let si = (link.rx_set >> 16) as usize;
        if si < 64 && *gave_up & (1 << si) != 0 {
            return false;
        }
        if e.sets == u32::MAX {
            e.sets = vc.set_bits.len() as u32;
            vc.set_bits
                .resize(vc.set_bits.len() + self.set_words, NOT_RUN);
        }
        let set = &self.regex_sets[si];
        let at = e.sets as usize + set.at;
        let words = &mut vc.set_bits[at..at + set.words()];
        if words[0] == NOT_RUN {
            set.scan(caches, si, &vc.buf[range], words);
            if words[0] == GAVE_UP && si < 64 {
                *gave_up |= 1 << si;
            }
        }
        let p = (link.rx_set & 0xffff) as usize;
        words[0] == RAN && !super::bit_set(&words[1..], p)
    }
}

/// An operator's argument, its macros expanded.
pub(super) fn arg<'r>(
    a: &'r Arg,
    data: &Data<'_>,
    st: &'r State,
    rule: &Rule,
) -> std::borrow::Cow<'r, [u8]> {
    match a {
        Arg::Lit(l) => std::borrow::Cow::Borrowed(l),
        Arg::Macro(m) => match m.0.as_slice() {
            // `@ge %{tx.inbound_anomaly_score_threshold}`: read in place.
            [Part::Tx(s)] => std::borrow::Cow::Borrowed(st.vars.get(*s).unwrap_or_default()),
            _ => std::borrow::Cow::Owned(expand(m, data, st, rule)),
        },
    }
}

/// C `atoi`: optional sign and leading digits, else 0.
pub(super) fn atoi(v: &[u8]) -> i64 {
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

pub(super) fn contains_word(v: &[u8], w: &[u8]) -> bool {
    if w.is_empty() {
        return true;
    }
    let word = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_');
    memchr::memmem::find_iter(v, w)
        .any(|i| !word(i.checked_sub(1).and_then(|j| v.get(j))) && !word(v.get(i + w.len())))
}
