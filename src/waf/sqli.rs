//! SQL-injection detection in the manner of libinjection: tokenize the value as SQL, reduce
//! it to a short fingerprint of token classes, and decide on the fingerprint.
//!
//! The value is tokenized three times: as it is, as if it followed an opening `'`, and as
//! if it followed an opening `"` (an injected value usually closes the string the
//! application put it in). In a quoted context the first token is a string that only ends
//! when the value itself contains the closing quote, so prose without quotes can never
//! look like a break-out. A fingerprint is SQL when it has the shape of an attack:
//! a closed string followed by a logic operator and a comparison or a constant, a
//! comment, a statement separator or a `UNION`; `UNION [ALL] SELECT` anywhere; a stacked
//! statement after `;`; or a call to a function attackers use to probe (`sleep(`,
//! `benchmark(`, `extractvalue(`…).
//!
//! Cost: one pass per context over at most [`MAX_SCAN`] bytes, no allocation (tokens go to
//! a fixed array of [`MAX_TOKENS`]); a value longer than that is judged on its beginning
//! (regex rules still see the whole value). A quoted context is tokenized only when the
//! value holds its quote, and the unquoted one only when its verdict can be true (a first
//! token that is a number, the word `union`, or a probe name before a `(`: see
//! `unquoted_may_flag`), so prose with a parenthesis or an apostrophe costs a few `memchr`
//! passes instead of three tokenizations (~1,400 → ~500 instructions on a 70-byte
//! sentence).

/// Every attack shape holds one of these bytes (the engine skips values without any).
pub const TRIGGERS: &[u8] = b"'\"(;-#/=<>|&+ \t\n\r\x0b\x0c\xa0";

/// The engine runs the detector only on values holding one of these: every shape above
/// needs a quote, a parenthesis, a statement separator, a comparison or a comment, except
/// `UNION SELECT` between plain words, which rule 4202 matches by its literals.
pub const GATE: &[u8] = b"'\"`(;=<>|&#";

/// Bytes of a value that are tokenized.
pub const MAX_SCAN: usize = 4096;
/// Token classes kept per context.
const MAX_TOKENS: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    /// A quoted string.
    Str,
    Num,
    /// A keyword that is not one of the classes below.
    Key,
    Union,
    /// A statement keyword: select, insert, drop, exec…
    Stmt,
    /// and, or, xor, &&, ||
    Logic,
    /// Comparison or arithmetic operator.
    Op,
    /// A known function followed by `(`.
    Func,
    /// A probing function (sleep, benchmark…) followed by `(`.
    Probe,
    Open,
    Close,
    Comma,
    Semi,
    Comment,
    Var,
    Word,
}

/// True when `input` looks like an SQL injection.
pub fn is_sqli(input: &[u8]) -> bool {
    let input = &input[..input.len().min(MAX_SCAN)];
    // Cheap reject: every attack shape needs one of these bytes.
    if !input.iter().any(|&b| CLASS[b as usize] & TRIGGER != 0) {
        return false;
    }
    // A quoted context needs its quote in the value (to close the string).
    (unquoted_may_flag(input) && verdict(&tokens(input, None, MAX_TOKENS)))
        || [b'\'', b'"'].into_iter().any(|q| {
            memchr::memchr(q, input).is_some() && verdict(&tokens(input, Some(q), MAX_TOKENS))
        })
}

/// Per byte: [`TRIGGER`] if it is in [`TRIGGERS`], [`WORD`] if it can be part of a word.
static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < TRIGGERS.len() {
        t[TRIGGERS[i] as usize] |= TRIGGER;
        i += 1;
    }
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        if c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80 {
            t[b] |= WORD;
        }
        b += 1;
    }
    t
};
const TRIGGER: u8 = 1;
const WORD: u8 = 2;

struct Tokens {
    t: [Tok; MAX_TOKENS],
    n: usize,
    /// The first token closed the context's quote.
    closed: bool,
}

impl Tokens {
    fn get(&self, i: usize) -> Option<Tok> {
        (i < self.n).then(|| self.t[i])
    }
}

/// Whether the unquoted context's verdict can be true, decided without tokenizing the
/// value: it needs a first token that is a number (an application's unquoted number
/// broken out of), or a `UNION` or a probing call among its tokens. So a value whose
/// first token is something else, without the word `union` and without a probe name
/// right before a `(`, is not SQL in that context (the usual prose with a parenthesis).
/// A filter only: where it says maybe, the tokens decide.
fn unquoted_may_flag(s: &[u8]) -> bool {
    let first = tokens(s, None, 1);
    if first.get(0) == Some(Tok::Num) {
        return true;
    }
    let mut at = 0;
    while let Some(p) = memchr::memchr2(b'u', b'U', &s[at..]) {
        let u = at + p;
        if s.get(u..u + 5)
            .is_some_and(|w| w.eq_ignore_ascii_case(b"union"))
        {
            return true;
        }
        at = u + 1;
    }
    memchr::memchr_iter(b'(', s).any(|p| {
        // The word before the `(` (and the spaces the tokenizer allows between them).
        let mut end = p;
        while end > 0 && matches!(s[end - 1], b' ' | b'\t' | b'\n' | b'\r') {
            end -= 1;
        }
        let mut start = end;
        while start > 0 && continues_word(s[start - 1]) {
            start -= 1;
        }
        let word = &s[start..end];
        PROBES.iter().any(|probe| probe.eq_ignore_ascii_case(word))
    })
}

/// The value's first `limit` (at most [`MAX_TOKENS`]) tokens in the context `quote`.
fn tokens(s: &[u8], quote: Option<u8>, limit: usize) -> Tokens {
    let mut out = Tokens {
        t: [Tok::Word; MAX_TOKENS],
        n: 0,
        closed: false,
    };
    let mut i = 0;
    if let Some(q) = quote {
        match find_quote_end(s, 0, q) {
            Some(end) => {
                out.t[0] = Tok::Str;
                out.n = 1;
                out.closed = true;
                i = end + 1;
            }
            None => return out,
        }
    }
    while i < s.len() && out.n < limit.min(MAX_TOKENS) {
        let c = s[i];
        let (tok, next) = match c {
            b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c | 0xa0 | 0 => {
                i += 1;
                continue;
            }
            // U+00A0 in UTF-8.
            0xc2 if s.get(i + 1) == Some(&0xa0) => {
                i += 2;
                continue;
            }
            b'\'' | b'"' | b'`' => {
                let end = find_quote_end(s, i + 1, c).unwrap_or(s.len() - 1);
                (if c == b'`' { Tok::Word } else { Tok::Str }, end + 1)
            }
            b'/' if s.get(i + 1) == Some(&b'*') => {
                let end =
                    memchr::memmem::find(&s[i + 2..], b"*/").map_or(s.len(), |e| i + 2 + e + 2);
                // MySQL's /*! … */ runs its content: not a comment.
                if s.get(i + 2) == Some(&b'!') {
                    i += 3;
                    continue;
                }
                (Tok::Comment, end)
            }
            b'-' if s.get(i + 1) == Some(&b'-') => (Tok::Comment, s.len()),
            b'#' => (Tok::Comment, s.len()),
            b'(' => (Tok::Open, i + 1),
            b')' => (Tok::Close, i + 1),
            b',' => (Tok::Comma, i + 1),
            b';' => (Tok::Semi, i + 1),
            b'&' if s.get(i + 1) == Some(&b'&') => (Tok::Logic, i + 2),
            b'|' if s.get(i + 1) == Some(&b'|') => (Tok::Logic, i + 2),
            b'=' | b'<' | b'>' | b'!' | b'+' | b'-' | b'*' | b'/' | b'%' | b'^' | b'|' | b'&'
            | b'~' | b':' => {
                let mut e = i + 1;
                while e < s.len() && matches!(s[e], b'=' | b'<' | b'>' | b'!') && e < i + 3 {
                    e += 1;
                }
                (Tok::Op, e)
            }
            b'@' => {
                let mut e = i + 1;
                while e < s.len() && (s[e] == b'@' || is_word(s[e])) {
                    e += 1;
                }
                (Tok::Var, e)
            }
            b'0'..=b'9' | b'.' if c != b'.' || s.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                let mut e = i + 1;
                while e < s.len() && (s[e].is_ascii_alphanumeric() || s[e] == b'.') {
                    e += 1;
                }
                (Tok::Num, e)
            }
            c if is_word(c) => {
                let mut e = i + 1;
                while e < s.len() && continues_word(s[e]) {
                    e += 1;
                }
                let word = &s[i..e];
                // A function is a word directly (or after spaces/comments) followed by '('.
                let mut k = e;
                while k < s.len() && matches!(s[k], b' ' | b'\t' | b'\n' | b'\r') {
                    k += 1;
                }
                let call = s.get(k) == Some(&b'(');
                (classify(word, call), e)
            }
            _ => {
                i += 1;
                continue;
            }
        };
        // Comments inside a statement are whitespace to SQL; keep only one in a row.
        let prev = out.n.checked_sub(1).map(|p| out.t[p]);
        if !(tok == Tok::Comment && prev == Some(Tok::Comment)) {
            out.t[out.n] = tok;
            out.n += 1;
        }
        i = next;
    }
    out
}

fn find_quote_end(s: &[u8], from: usize, q: u8) -> Option<usize> {
    let mut i = from;
    while i < s.len() {
        i += memchr::memchr2(q, b'\\', &s[i..])?;
        if s[i] == b'\\' {
            i += 2;
            continue;
        }
        // SQL doubles a quote to escape it.
        if s.get(i + 1) == Some(&q) {
            i += 2;
            continue;
        }
        return Some(i);
    }
    None
}

#[inline]
fn is_word(b: u8) -> bool {
    CLASS[b as usize] & WORD != 0
}

/// A byte that continues a word token: a word byte or `.` (`schema.table`).
#[inline]
fn continues_word(b: u8) -> bool {
    is_word(b) || b == b'.'
}

fn classify(word: &[u8], call: bool) -> Tok {
    let mut buf = [0u8; 32];
    if word.len() > buf.len() {
        return Tok::Word;
    }
    for (d, s) in buf.iter_mut().zip(word) {
        *d = s.to_ascii_lowercase();
    }
    let w = &buf[..word.len()];
    if call && PROBES.contains(&w) {
        return Tok::Probe;
    }
    match w {
        b"union" => Tok::Union,
        b"select" | b"insert" | b"update" | b"delete" | b"drop" | b"create" | b"alter"
        | b"exec" | b"execute" | b"declare" | b"truncate" | b"shutdown" | b"grant" | b"waitfor"
        | b"merge" | b"replace" | b"handler" | b"load" => Tok::Stmt,
        b"and" | b"or" | b"xor" | b"div" | b"not" => Tok::Logic,
        b"like" | b"rlike" | b"regexp" | b"is" | b"in" | b"between" | b"sounds" | b"mod" => Tok::Op,
        b"null" | b"true" | b"false" => Tok::Num,
        b"from" | b"where" | b"having" | b"order" | b"group" | b"by" | b"limit" | b"into"
        | b"values" | b"table" | b"all" | b"distinct" | b"case" | b"when" | b"then" | b"else"
        | b"end" | b"procedure" | b"offset" | b"outfile" | b"dumpfile" => Tok::Key,
        _ if call && FUNCTIONS.contains(&w) => Tok::Func,
        _ => Tok::Word,
    }
}

/// Functions called to probe for injection (timing, errors, files).
const PROBES: &[&[u8]] = &[
    b"sleep",
    b"benchmark",
    b"pg_sleep",
    b"extractvalue",
    b"updatexml",
    b"load_file",
    b"dbms_pipe.receive_message",
    b"utl_inaddr.get_host_address",
    b"xp_cmdshell",
    b"randomblob",
    b"geometrycollection",
    b"multipoint",
    b"polygon",
    b"exp",
    b"name_const",
    b"row_count",
];

/// Ordinary SQL functions (a call after a break-out is an attack; on its own it is not).
const FUNCTIONS: &[&[u8]] = &[
    b"char",
    b"chr",
    b"concat",
    b"concat_ws",
    b"substring",
    b"substr",
    b"mid",
    b"ascii",
    b"ord",
    b"count",
    b"version",
    b"database",
    b"user",
    b"current_user",
    b"system_user",
    b"length",
    b"len",
    b"cast",
    b"convert",
    b"if",
    b"ifnull",
    b"coalesce",
    b"hex",
    b"unhex",
    b"md5",
    b"group_concat",
    b"lower",
    b"upper",
    b"rand",
    b"now",
    b"schema",
    b"waitfor",
];

fn verdict(t: &Tokens) -> bool {
    use Tok::*;
    let n = t.n;
    if n == 0 {
        return false;
    }
    // Anywhere: UNION [ALL|DISTINCT] [(] SELECT; a probing call; a stacked statement.
    for i in 0..n {
        match t.t[i] {
            Union => {
                let mut j = i + 1;
                while matches!(t.get(j), Some(Key | Open | Comment)) {
                    j += 1;
                }
                if t.get(j) == Some(Stmt) {
                    return true;
                }
            }
            Probe => return true,
            _ => {}
        }
    }
    let first = t.t[0];
    // A value that starts by closing the application's string, or by a number the
    // application put in an unquoted position.
    let breaks_out = (first == Str && t.closed) || (first == Num && !t.closed);
    if !breaks_out {
        return false;
    }
    let rest = |i: usize| t.get(i);
    match (rest(1), rest(2), rest(3)) {
        // '-- , '#, '/*
        (Some(Comment), _, _) if t.closed => true,
        // ' ; …
        (Some(Semi), Some(_), _) => true,
        // ' or 1, ' or 'a'='a, ' and sleep(, 1 or 1=1, ' || 'x
        (Some(Logic), Some(Num | Str | Var | Open | Func | Probe), after) => {
            t.closed || matches!(after, Some(Op | Comment))
        }
        (Some(Logic), Some(Word), Some(Op)) => true,
        (Some(Logic), Some(Word), Some(Comment)) => t.closed,
        // '=' , ' like '…, 1=1--
        (Some(Op), Some(Str | Num | Var | Func | Open), after) => {
            t.closed && matches!(after, None | Some(Logic | Comment | Op | Semi))
                || !t.closed && matches!(after, Some(Comment | Semi))
        }
        // ') or ('1'='1
        (Some(Close), Some(Logic | Semi | Union | Comment), _) => t.closed,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unquoted_filter_never_hides_a_verdict() {
        // Values built from SQL-ish pieces: every one the unquoted context flags must pass
        // the filter (which decides without tokenizing).
        let pieces: [&[u8]; 24] = [
            b"1",
            b" ",
            b"(",
            b")",
            b"sleep",
            b"SLEEP",
            b"union",
            b"UnIoN",
            b"select",
            b"or",
            b"'",
            b"\"",
            b"/*",
            b"*/",
            b"/*!",
            b"--",
            b"=",
            b"x",
            b"\t",
            b"benchmark",
            b"dbms_pipe.receive_message",
            b"@a",
            b"null",
            b".5",
        ];
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut flagged = 0;
        for _ in 0..200_000 {
            crate::waf::xorshift(&mut x);
            let n = 1 + (x % 9) as usize;
            let mut v = Vec::new();
            for k in 0..n {
                let r = x.rotate_left(7 * k as u32) ^ (k as u64).wrapping_mul(0x9e37_79b9);
                v.extend_from_slice(pieces[(r % pieces.len() as u64) as usize]);
            }
            if verdict(&tokens(&v, None, MAX_TOKENS)) {
                flagged += 1;
                assert!(unquoted_may_flag(&v), "{:?}", String::from_utf8_lossy(&v));
            }
        }
        assert!(
            flagged > 1000,
            "the generator reaches the verdict ({flagged})"
        );
    }

    #[test]
    fn attacks() {
        for a in [
            "' or '1'='1",
            "1' OR 1=1--",
            "admin'--",
            "admin' #",
            "1 or 1=1",
            "1 union select password from users",
            "x' UNION/**/SELECT 1,2--",
            "1;drop table users",
            "'; exec xp_cmdshell('dir')--",
            "1 and sleep(5)",
            "' and extractvalue(1,concat(0x7e,version()))--",
            "\" or \"\"=\"",
            "') or ('a'='a",
            "1' and 1=1 and '1'='1",
            "-1 UNION ALL SELECT NULL,NULL",
            "1 AND 1=1",
            "x' or 1=1 limit 1 -- -",
            "1 and dbms_pipe.receive_message(chr(65),5)",
            "1 and utl_inaddr.get_host_address((select user from dual)) is null",
        ] {
            assert!(is_sqli(a.as_bytes()), "missed: {a}");
        }
    }

    #[test]
    fn benign() {
        for b in [
            "O'Reilly and friends",
            "I'm selecting the union rep from our group",
            "Rock 'n' roll",
            "1 or 2 items",
            "select your size from the list",
            "john.doe@example.com",
            "10 - 5 = 5",
            "He said \"hello\" and left",
            "it's #1 in the charts",
            "price: 5-10",
            "Drop me a line; I will answer",
            "I like it; select the best",
            "5 < 10 and 10 > 5",
            "He said: 'select * from life' jokingly",
            "Union Street 5, Springfield",
            "Don't stop; believe",
            "2024-01-01",
            "SELECT is a word",
            "a && b",
            "we're at 50% -- almost done",
        ] {
            assert!(!is_sqli(b.as_bytes()), "false positive: {b}");
        }
    }
}
