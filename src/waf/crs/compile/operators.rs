//! A rule's operator compiled: `@rx` (PCRE translated to a byte regex), `@pm` and
//! `@pmFromFile` (phrase automata), `@ipMatch`, comparisons, validations, libinjection.

use super::*;

/// PCRE without UTF mode reads `\x{HH}` as a byte; regex-syntax reads it as a code
/// point, so two-digit forms are rewritten to `\xHH`.
pub(super) fn pcre_to_bytes(p: &str) -> String {
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

pub(super) fn operator(name: &str, arg: &str, dir: &Path) -> Result<Op, String> {
    let pm = |phrases: Vec<Vec<u8>>| -> Result<Op, String> {
        let ac = AhoCorasickBuilder::new()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::LeftmostFirst)
            .build(phrases.iter().filter(|p| !p.is_empty()))
            .map_err(|e| e.to_string())?;
        let phrases = phrases.into_iter().filter(|p| !p.is_empty()).collect();
        Ok(Op::Pm {
            ac: Box::new(ac),
            phrases,
        })
    };
    Ok(match name {
        "rx" => {
            let arg = &pcre_to_bytes(arg);
            let re = compile_regex(arg).map_err(|e| format!("@rx: {e}"))?;
            Op::Rx {
                re: Box::new(re),
                pattern: arg.as_str().into(),
                needs: required_clauses(arg),
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

impl Op {
    /// The operator's argument, when it has one that may hold macros.
    pub(super) fn arg_mut(&mut self) -> Option<&mut Arg> {
        match self {
            Op::StrEq(a)
            | Op::Within(a)
            | Op::BeginsWith(a)
            | Op::EndsWith(a)
            | Op::Contains(a)
            | Op::ContainsWord(a)
            | Op::Compare(_, a) => Some(a),
            _ => None,
        }
    }
}
