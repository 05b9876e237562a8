//! Transformations: what a value is turned into before an operator looks at it.
//!
//! Each function reads `input` and writes into `out` (cleared first); a chain alternates
//! between two reused buffers, so a request costs no allocation once the buffers have grown.
//! All work on bytes (no UTF-8 assumption) in one pass, linear in the input.
//! Decoders follow ModSecurity's byte semantics: a `%uHHHH` or `&#NNNN;` becomes one byte
//! (full-width ASCII `U+FF01..U+FF5E` maps to its ASCII twin, anything else keeps its low
//! byte), invalid escapes are kept as they are.

use std::fmt;

use super::operator::ByteSet;

/// One transformation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transform {
    UrlDecode,
    UrlDecodeUni,
    Lowercase,
    HtmlEntityDecode,
    JsDecode,
    CssDecode,
    NormalizePath,
    NormalizePathWin,
    CompressWhitespace,
    RemoveWhitespace,
    RemoveNulls,
    ReplaceComments,
    RemoveComments,
    CmdLine,
    Base64Decode,
    HexDecode,
    Trim,
    Length,
}

impl Transform {
    pub const ALL: [Transform; 18] = [
        Transform::UrlDecode,
        Transform::UrlDecodeUni,
        Transform::Lowercase,
        Transform::HtmlEntityDecode,
        Transform::JsDecode,
        Transform::CssDecode,
        Transform::NormalizePath,
        Transform::NormalizePathWin,
        Transform::CompressWhitespace,
        Transform::RemoveWhitespace,
        Transform::RemoveNulls,
        Transform::ReplaceComments,
        Transform::RemoveComments,
        Transform::CmdLine,
        Transform::Base64Decode,
        Transform::HexDecode,
        Transform::Trim,
        Transform::Length,
    ];

    /// The name used in rule files.
    pub fn name(self) -> &'static str {
        match self {
            Transform::UrlDecode => "url_decode",
            Transform::UrlDecodeUni => "url_decode_uni",
            Transform::Lowercase => "lowercase",
            Transform::HtmlEntityDecode => "html_entity_decode",
            Transform::JsDecode => "js_decode",
            Transform::CssDecode => "css_decode",
            Transform::NormalizePath => "normalize_path",
            Transform::NormalizePathWin => "normalize_path_win",
            Transform::CompressWhitespace => "compress_whitespace",
            Transform::RemoveWhitespace => "remove_whitespace",
            Transform::RemoveNulls => "remove_nulls",
            Transform::ReplaceComments => "replace_comments",
            Transform::RemoveComments => "remove_comments",
            Transform::CmdLine => "cmd_line",
            Transform::Base64Decode => "base64_decode",
            Transform::HexDecode => "hex_decode",
            Transform::Trim => "trim",
            Transform::Length => "length",
        }
    }

    pub fn from_name(name: &str) -> Option<Transform> {
        Transform::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Bytes this transformation may change: a value holding none of them comes out as it
    /// went in (`None`: it always changes the value).
    pub fn triggers(self) -> Option<&'static [u8]> {
        const UPPER: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ";
        const SPACE: &[u8] = b" \t\n\r\x0b\x0c\xa0";
        Some(match self {
            Transform::UrlDecode | Transform::UrlDecodeUni => b"%+",
            Transform::Lowercase => UPPER,
            Transform::HtmlEntityDecode => b"&",
            Transform::JsDecode | Transform::CssDecode => b"\\",
            Transform::NormalizePath => b"/",
            Transform::NormalizePathWin => b"/\\",
            Transform::CompressWhitespace | Transform::RemoveWhitespace | Transform::Trim => SPACE,
            Transform::RemoveNulls => b"\0",
            Transform::ReplaceComments => b"/",
            Transform::RemoveComments => b"/-#<",
            Transform::CmdLine => b"\\\"'^,;/( \t\n\r\x0b\x0c\xa0ABCDEFGHIJKLMNOPQRSTUVWXYZ",
            Transform::Base64Decode | Transform::HexDecode | Transform::Length => return None,
        })
    }

    /// The input bytes an output byte in `wanted` can come from (`None`: any byte): a
    /// value holding none of them cannot come out holding one of `wanted`. Every
    /// transformation keeps, drops or replaces bytes; what it makes a byte out of is
    /// what is added here (`%` for a percent escape, `A`..`Z` for lower case…).
    pub fn producers(self, wanted: &ByteSet) -> Option<ByteSet> {
        const SPACE: &[u8] = b" \t\n\r\x0b\x0c\xa0";
        let mut from = *wanted;
        let mut add = |bytes: &[u8]| {
            for &b in bytes {
                from.insert(b);
            }
        };
        let space = wanted.contains(b' ');
        let upper: Vec<u8> = (b'a'..=b'z')
            .filter(|&b| wanted.contains(b))
            .map(|b| b.to_ascii_uppercase())
            .collect();
        match self {
            Transform::UrlDecode | Transform::UrlDecodeUni => {
                add(b"%");
                if space {
                    add(b"+");
                }
            }
            Transform::Lowercase => add(&upper),
            Transform::HtmlEntityDecode => add(b"&"),
            Transform::JsDecode | Transform::CssDecode => add(b"\\"),
            Transform::NormalizePath => {}
            Transform::NormalizePathWin => {
                if wanted.contains(b'/') {
                    add(b"\\");
                }
            }
            Transform::CompressWhitespace => {
                if space {
                    add(SPACE);
                }
            }
            Transform::ReplaceComments => {
                if space {
                    add(b"/");
                }
            }
            Transform::RemoveWhitespace
            | Transform::RemoveNulls
            | Transform::RemoveComments
            | Transform::Trim => {}
            Transform::CmdLine => {
                if space {
                    add(SPACE);
                    add(b",;");
                }
                add(&upper);
            }
            Transform::Base64Decode | Transform::HexDecode | Transform::Length => return None,
        }
        Some(from)
    }

    /// Writes the transformed `input` into `out`.
    pub fn apply(self, input: &[u8], out: &mut Vec<u8>) {
        out.clear();
        match self {
            Transform::UrlDecode => url_decode(input, out, false),
            Transform::UrlDecodeUni => url_decode(input, out, true),
            Transform::Lowercase => out.extend(input.iter().map(u8::to_ascii_lowercase)),
            Transform::HtmlEntityDecode => html_entity_decode(input, out),
            Transform::JsDecode => js_decode(input, out),
            Transform::CssDecode => css_decode(input, out),
            Transform::NormalizePath => normalize_path(input, out, false),
            Transform::NormalizePathWin => normalize_path(input, out, true),
            Transform::CompressWhitespace => compress_whitespace(input, out),
            Transform::RemoveWhitespace => {
                out.extend(input.iter().copied().filter(|&b| !is_space(b)))
            }
            Transform::RemoveNulls => out.extend(input.iter().copied().filter(|&b| b != 0)),
            Transform::ReplaceComments => comments(input, out, true),
            Transform::RemoveComments => comments(input, out, false),
            Transform::CmdLine => cmd_line(input, out),
            Transform::Base64Decode => base64_decode(input, out),
            Transform::HexDecode => hex_decode(input, out),
            Transform::Trim => {
                let start = input
                    .iter()
                    .position(|&b| !is_space(b))
                    .unwrap_or(input.len());
                let end = input
                    .iter()
                    .rposition(|&b| !is_space(b))
                    .map_or(start, |e| e + 1);
                out.extend_from_slice(&input[start..end]);
            }
            Transform::Length => {
                use std::io::Write;
                let _ = write!(out, "{}", input.len());
            }
        }
    }
}

impl fmt::Display for Transform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Runs a non-empty `chain` over `input`, leaving the result in `out` (`tmp` is scratch).
pub fn run_chain_into(chain: &[Transform], input: &[u8], out: &mut Vec<u8>, tmp: &mut Vec<u8>) {
    // Start in whichever buffer makes the last step land in `out`.
    let (mut cur, mut other) = if chain.len() % 2 == 1 {
        (out, tmp)
    } else {
        (tmp, out)
    };
    chain[0].apply(input, cur);
    for t in &chain[1..] {
        t.apply(cur, other);
        std::mem::swap(&mut cur, &mut other);
    }
}

pub(crate) fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c | 0xa0)
}

pub(crate) fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// A code point as one byte: full-width ASCII to ASCII, else the low byte.
fn code_point_byte(cp: u32) -> u8 {
    if (0xff01..=0xff5e).contains(&cp) {
        (cp - 0xfee0) as u8
    } else {
        (cp & 0xff) as u8
    }
}

fn hex_run(input: &[u8], at: usize, n: usize) -> Option<u32> {
    let digits = input.get(at..at + n)?;
    let mut v = 0u32;
    for &d in digits {
        v = v * 16 + u32::from(hex_val(d)?);
    }
    Some(v)
}

/// Percent-decoding with `+` as space; `uni` also decodes `%uHHHH`.
pub fn url_decode(input: &[u8], out: &mut Vec<u8>, uni: bool) {
    out.reserve(input.len());
    let mut i = 0;
    // The bytes between escapes are copied as runs.
    while let Some(off) = memchr::memchr2(b'%', b'+', &input[i..]) {
        out.extend_from_slice(&input[i..i + off]);
        i += off;
        if input[i] == b'+' {
            out.push(b' ');
            i += 1;
            continue;
        }
        if uni && matches!(input.get(i + 1), Some(b'u' | b'U')) {
            if let Some(cp) = hex_run(input, i + 2, 4) {
                out.push(code_point_byte(cp));
                i += 6;
                continue;
            }
        }
        if let Some(v) = hex_run(input, i + 1, 2) {
            out.push(v as u8);
            i += 3;
            continue;
        }
        out.push(b'%');
        i += 1;
    }
    out.extend_from_slice(&input[i..]);
}

fn html_entity_decode(input: &[u8], out: &mut Vec<u8>) {
    const NAMED: [(&[u8], u8); 6] = [
        (b"quot", b'"'),
        (b"amp", b'&'),
        (b"lt", b'<'),
        (b"gt", b'>'),
        (b"nbsp", 0xa0),
        (b"apos", b'\''),
    ];
    out.reserve(input.len());
    let mut i = 0;
    'outer: while i < input.len() {
        // The bytes up to the next `&` are copied as a run.
        let Some(off) = memchr::memchr(b'&', &input[i..]) else {
            out.extend_from_slice(&input[i..]);
            break;
        };
        out.extend_from_slice(&input[i..i + off]);
        i += off;
        let c = input[i];
        let rest = &input[i + 1..];
        if rest.first() == Some(&b'#') {
            let (hex, start) = match rest.get(1) {
                Some(b'x' | b'X') => (true, 2),
                _ => (false, 1),
            };
            let digits = rest[start..]
                .iter()
                .take_while(|b| {
                    if hex {
                        b.is_ascii_hexdigit()
                    } else {
                        b.is_ascii_digit()
                    }
                })
                .count();
            if digits > 0 {
                let mut v: u32 = 0;
                for &d in &rest[start..start + digits] {
                    v = v
                        .saturating_mul(if hex { 16 } else { 10 })
                        .saturating_add(u32::from(hex_val(d).unwrap_or(0)));
                }
                out.push(code_point_byte(v));
                i += 1 + start + digits;
                if input.get(i) == Some(&b';') {
                    i += 1;
                }
                continue;
            }
        } else {
            for (name, b) in NAMED {
                if rest.len() >= name.len() && rest[..name.len()].eq_ignore_ascii_case(name) {
                    out.push(b);
                    i += 1 + name.len();
                    if input.get(i) == Some(&b';') {
                        i += 1;
                    }
                    continue 'outer;
                }
            }
        }
        out.push(c);
        i += 1;
    }
}

fn js_decode(input: &[u8], out: &mut Vec<u8>) {
    let mut i = 0;
    while i < input.len() {
        let c = input[i];
        if c != b'\\' || i + 1 >= input.len() {
            out.push(c);
            i += 1;
            continue;
        }
        let n = input[i + 1];
        match n {
            b'x' | b'X' => {
                if let Some(v) = hex_run(input, i + 2, 2) {
                    out.push(v as u8);
                    i += 4;
                    continue;
                }
            }
            b'u' | b'U' => {
                if let Some(v) = hex_run(input, i + 2, 4) {
                    out.push(code_point_byte(v));
                    i += 6;
                    continue;
                }
            }
            b'0'..=b'7' => {
                let mut v = 0u32;
                let mut len = 0;
                while len < 3 && matches!(input.get(i + 1 + len), Some(b'0'..=b'7')) {
                    v = v * 8 + u32::from(input[i + 1 + len] - b'0');
                    len += 1;
                }
                out.push((v & 0xff) as u8);
                i += 1 + len;
                continue;
            }
            _ => {}
        }
        out.push(match n {
            b'a' => 0x07,
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'v' => 0x0b,
            other => other,
        });
        i += 2;
    }
}

fn css_decode(input: &[u8], out: &mut Vec<u8>) {
    let mut i = 0;
    while i < input.len() {
        let c = input[i];
        if c != b'\\' || i + 1 >= input.len() {
            out.push(c);
            i += 1;
            continue;
        }
        let digits = input[i + 1..]
            .iter()
            .take(6)
            .take_while(|b| b.is_ascii_hexdigit())
            .count();
        if digits > 0 {
            let v = hex_run(input, i + 1, digits).unwrap_or(0);
            out.push(code_point_byte(v));
            i += 1 + digits;
            if input.get(i).is_some_and(|&b| is_space(b)) {
                i += 1;
            }
        } else if input[i + 1] == b'\n' {
            i += 2;
        } else {
            out.push(input[i + 1]);
            i += 2;
        }
    }
}

/// Collapses `//`, removes `/./` and resolves `/../` (never above the start). A value
/// without a separator is not a path and is left as it is (ModSecurity would empty a
/// lone `.`), so that only a separator triggers the transformation (see
/// [`Transform::triggers`]).
fn normalize_path(input: &[u8], out: &mut Vec<u8>, windows: bool) {
    let has_sep = if windows {
        memchr::memchr2(b'/', b'\\', input).is_some()
    } else {
        memchr::memchr(b'/', input).is_some()
    };
    if !has_sep {
        out.extend_from_slice(input);
        return;
    }
    let absolute = matches!(input.first(), Some(b'/')) || windows && input.first() == Some(&b'\\');
    let trailing = matches!(input.last(), Some(b'/')) || windows && input.last() == Some(&b'\\');
    let is_sep = |b: &u8| *b == b'/' || windows && *b == b'\\';
    // Segment boundaries are recorded in `out` itself: pop back to the previous '/'.
    if absolute {
        out.push(b'/');
    }
    let mut kept = 0usize;
    for seg in input.split(is_sep) {
        match seg {
            b"" | b"." => {}
            b".." if kept > 0 => {
                // Drop the last segment (and its separator).
                let cut = out[..out.len() - 1]
                    .iter()
                    .rposition(|&b| b == b'/')
                    .map_or(0, |p| p + 1);
                out.truncate(cut);
                kept -= 1;
            }
            _ => {
                out.extend_from_slice(seg);
                out.push(b'/');
                if seg != b".." {
                    kept += 1;
                }
            }
        }
    }
    if !trailing && out.len() > usize::from(absolute) && out.last() == Some(&b'/') {
        out.pop();
    }
}

fn compress_whitespace(input: &[u8], out: &mut Vec<u8>) {
    let mut in_space = false;
    for &b in input {
        if is_space(b) {
            if !in_space {
                out.push(b' ');
            }
            in_space = true;
        } else {
            out.push(b);
            in_space = false;
        }
    }
}

/// `/* … */` (also unterminated) becomes one space (`replace`) or nothing; when removing,
/// `<!-- … -->`, `--` and `#` to the end of the line go too.
fn comments(input: &[u8], out: &mut Vec<u8>, replace: bool) {
    let mut i = 0;
    while i < input.len() {
        let rest = &input[i..];
        if rest.starts_with(b"/*") {
            let end =
                memchr::memmem::find(&rest[2..], b"*/").map_or(input.len(), |e| i + 2 + e + 2);
            if replace {
                out.push(b' ');
            }
            i = end;
            continue;
        }
        if !replace {
            if rest.starts_with(b"<!--") {
                i = memchr::memmem::find(&rest[4..], b"-->").map_or(input.len(), |e| i + 4 + e + 3);
                continue;
            }
            if rest.starts_with(b"--") || rest[0] == b'#' {
                i = memchr::memchr(b'\n', rest).map_or(input.len(), |e| i + e);
                continue;
            }
        }
        out.push(input[i]);
        i += 1;
    }
}

/// Undoes what shells ignore: `\ " ' ^` are dropped, `, ;` become spaces, whitespace is
/// compressed and dropped before `/` and `(`, everything lowercased.
fn cmd_line(input: &[u8], out: &mut Vec<u8>) {
    let mut pending_space = false;
    for &b in input {
        match b {
            b'\\' | b'"' | b'\'' | b'^' => {}
            b',' | b';' => pending_space = true,
            b if is_space(b) => pending_space = true,
            b'/' | b'(' => {
                pending_space = false;
                out.push(b);
            }
            b => {
                if pending_space && !out.is_empty() {
                    out.push(b' ');
                }
                pending_space = false;
                out.push(b.to_ascii_lowercase());
            }
        }
    }
}

pub(crate) fn base64_decode(input: &[u8], out: &mut Vec<u8>) {
    let mut acc = 0u32;
    let mut bits = 0;
    for &b in input {
        let v = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            b'=' => break,
            b if is_space(b) => continue,
            _ => break,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
}

fn hex_decode(input: &[u8], out: &mut Vec<u8>) {
    for pair in input.chunks_exact(2) {
        match (hex_val(pair[0]), hex_val(pair[1])) {
            (Some(h), Some(l)) => out.push(h << 4 | l),
            _ => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(tr: Transform, s: &str) -> String {
        let mut out = Vec::new();
        tr.apply(s.as_bytes(), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Byte-at-a-time URL decoding, as it was written before runs were copied whole.
    fn url_decode_bytewise(input: &[u8], uni: bool) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < input.len() {
            let c = input[i];
            if c == b'%' {
                if uni && matches!(input.get(i + 1), Some(b'u' | b'U')) {
                    if let Some(cp) = hex_run(input, i + 2, 4) {
                        out.push(code_point_byte(cp));
                        i += 6;
                        continue;
                    }
                }
                if let Some(v) = hex_run(input, i + 1, 2) {
                    out.push(v as u8);
                    i += 3;
                    continue;
                }
            }
            out.push(if c == b'+' { b' ' } else { c });
            i += 1;
        }
        out
    }

    #[test]
    fn url_decoding_by_runs_matches_byte_at_a_time() {
        let alphabet = b"%+uU0aF9g&#;x \xff";
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for len in 0..40 {
            for _ in 0..200 {
                let v: Vec<u8> = (0..len)
                    .map(|_| {
                        crate::waf::xorshift(&mut x);
                        alphabet[(x % alphabet.len() as u64) as usize]
                    })
                    .collect();
                for uni in [false, true] {
                    let mut out = Vec::new();
                    url_decode(&v, &mut out, uni);
                    assert_eq!(out, url_decode_bytewise(&v, uni), "{v:?}");
                }
            }
        }
    }

    /// Random values over the bytes transformations care about.
    fn tricky_values() -> Vec<Vec<u8>> {
        let alphabet = b"%+uU0aF9x&#;lt\\/.*-, \t;'\"^(Ab\xa0\x00=<";
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut values = Vec::new();
        for len in 0..24 {
            for _ in 0..300 {
                values.push(
                    (0..len)
                        .map(|_| {
                            crate::waf::xorshift(&mut x);
                            alphabet[(x % alphabet.len() as u64) as usize]
                        })
                        .collect(),
                );
            }
        }
        values
    }

    #[test]
    fn a_value_without_trigger_bytes_comes_out_unchanged() {
        for tr in Transform::ALL {
            let Some(triggers) = tr.triggers() else {
                continue;
            };
            let triggers = ByteSet::from_bytes(triggers.iter().copied());
            for v in tricky_values()
                .into_iter()
                .chain([b".".to_vec(), b"..".to_vec()])
            {
                if ByteSet::of(&v).intersects(&triggers) {
                    continue;
                }
                let mut out = Vec::new();
                tr.apply(&v, &mut out);
                assert_eq!(out, v, "{tr} changed {:?}", String::from_utf8_lossy(&v));
            }
        }
    }

    #[test]
    fn every_output_byte_comes_from_one_of_its_producers() {
        for tr in Transform::ALL {
            for v in tricky_values() {
                let mut out = Vec::new();
                tr.apply(&v, &mut out);
                for &b in &out {
                    let Some(from) = tr.producers(&ByteSet::from_bytes([b])) else {
                        break;
                    };
                    assert!(
                        ByteSet::of(&v).intersects(&from),
                        "{tr} made {:?} out of {:?}",
                        b as char,
                        String::from_utf8_lossy(&v)
                    );
                }
            }
        }
    }

    #[test]
    fn decoders() {
        assert_eq!(t(Transform::UrlDecode, "a%27+b%zz%2"), "a' b%zz%2");
        assert_eq!(t(Transform::UrlDecodeUni, "%u003c%uff1cx"), "<<x");
        assert_eq!(
            t(Transform::HtmlEntityDecode, "&lt;&#x41;&#66&QUOT;&bogus;"),
            "<AB\"&bogus;"
        );
        assert_eq!(t(Transform::JsDecode, r"\x3c\u0041\101\n\q"), "<AA\nq");
        assert_eq!(t(Transform::CssDecode, r"\6a avascript\:"), "javascript:");
        assert_eq!(t(Transform::Base64Decode, "PHNjcmlwdD4="), "<script>");
        assert_eq!(t(Transform::HexDecode, "3c73"), "<s");
    }

    #[test]
    fn paths() {
        assert_eq!(
            t(Transform::NormalizePath, "/a//b/./c/../../../etc/passwd"),
            "/etc/passwd"
        );
        assert_eq!(
            t(Transform::NormalizePath, "../../etc/passwd"),
            "../../etc/passwd"
        );
        assert_eq!(
            t(Transform::NormalizePathWin, r"c:\a\..\boot.ini"),
            "c:/boot.ini"
        );
        assert_eq!(t(Transform::NormalizePath, "/a/b/"), "/a/b/");
        // Without a separator a value is not a path: even a lone dot stays.
        assert_eq!(t(Transform::NormalizePath, "."), ".");
        assert_eq!(
            t(Transform::NormalizePathWin, "end of a sentence."),
            "end of a sentence."
        );
        assert_eq!(t(Transform::NormalizePath, "./"), "");
    }

    #[test]
    fn text() {
        assert_eq!(t(Transform::CompressWhitespace, "a \t\n b"), "a b");
        assert_eq!(t(Transform::ReplaceComments, "un/**/ion/*x"), "un ion ");
        assert_eq!(t(Transform::RemoveComments, "a/*x*/b-- c\nd#e"), "ab\nd");
        assert_eq!(
            t(Transform::CmdLine, "C^aT  /etc/pa\"ss'wd;Id"),
            "cat/etc/passwd id"
        );
        assert_eq!(t(Transform::Trim, "  x y "), "x y");
        assert_eq!(t(Transform::Length, "abcd"), "4");
    }

    #[test]
    fn chains_alternate_buffers() {
        let chain = [
            Transform::UrlDecode,
            Transform::UrlDecode,
            Transform::Lowercase,
        ];
        // Odd and even chain lengths both leave the result in `out`.
        for steps in [&chain[..], &chain[..2]] {
            let (mut out, mut tmp) = (Vec::new(), Vec::new());
            run_chain_into(steps, b"%253CSCRIPT", &mut out, &mut tmp);
            let want: &[u8] = if steps.len() == 3 {
                b"<script"
            } else {
                b"<SCRIPT"
            };
            assert_eq!(out, want);
        }
    }
}
