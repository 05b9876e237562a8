//! Values found inside other values, so an attack hidden one layer down is inspected as a
//! value of its own: base64 / base64url text (and JWT segments), JavaScript/JSON escapes
//! (`\u003c`, `\x3c`), percent-encoding nested more than once (`%253c`), fullwidth
//! forms, GraphQL string literals, and the text and attribute values of XML bodies.
//!
//! Cost: one pass over each argument for base64 candidates (a whole value of at least
//! [`MIN_BASE64_VALUE`] characters, or a token of at least [`MIN_BASE64`], of the base64
//! alphabet with both letter cases), a decode only for those, kept only when the result is
//! text ([`is_text`]) — random base64 (images, keys, hashes, nonces) decodes to binary and is
//! dropped. Escapes and nested percent-encoding are looked for with `memchr` and decoded
//! only when present. XML is tokenized leniently (the
//! gateway forwards the body as sent; this only finds values to inspect). Failure mode:
//! a value that is not what it looks like yields nothing, never an error.

use std::ops::Range;

/// Shortest token inside a longer value decoded as base64 (12 bytes of text).
pub const MIN_BASE64: usize = 16;
/// Shortest whole value decoded as base64 (6 bytes of text): a field that holds nothing
/// but base64 is more likely encoded than a word inside prose.
pub const MIN_BASE64_VALUE: usize = 8;
/// Most rounds of percent-decoding for a nested encoding (`%25252e` is three).
const MAX_URL_ROUNDS: usize = 4;
/// Most base64 candidates decoded per value.
const MAX_CANDIDATES: usize = 8;
/// Most values taken from one XML body.
const MAX_XML_VALUES: usize = 10_000;

/// The `k`-th token of `v` that looks like base64 or base64url text, if any.
pub fn base64_candidate(v: &[u8], k: usize) -> Option<Range<usize>> {
    if k >= MAX_CANDIDATES || v.len() < MIN_BASE64_VALUE {
        return None;
    }
    if v.len() < MIN_BASE64 {
        // Short: only the whole value, base64 alphabet throughout.
        let body = v.iter().position(|&b| b == b'=').unwrap_or(v.len());
        let whole = k == 0
            && v[..body].iter().all(|&b| is_b64(b))
            && v[body..].iter().all(|&b| b == b'=')
            && v.len() - body <= 2
            && looks_encoded(v);
        return whole.then_some(0..v.len());
    }
    // A qualifying token (at least MIN_BASE64 bytes with its `=` padding) holds a run of at
    // least MIN_BASE64 - 2 alphabet bytes: when the byte at `i + MIN_BASE64 - 3` is not in
    // the alphabet, no such run covers `i`, so the scan jumps ahead (prose is mostly
    // words shorter than that).
    const RUN: usize = MIN_BASE64 - 2;
    let mut found = 0;
    let mut i = 0;
    while i + RUN <= v.len() {
        let probe = i + RUN - 1;
        if !is_b64(v[probe]) {
            i = probe + 1;
            continue;
        }
        let mut start = probe;
        while start > i && is_b64(v[start - 1]) {
            start -= 1;
        }
        let mut run_end = probe + 1;
        while run_end < v.len() && is_b64(v[run_end]) {
            run_end += 1;
        }
        let mut end = run_end;
        while end < v.len() && v[end] == b'=' && end - run_end < 2 {
            end += 1;
        }
        i = end;
        if end - start >= MIN_BASE64 && looks_encoded(&v[start..end]) {
            if found == k {
                return Some(start..end);
            }
            found += 1;
        }
    }
    None
}

/// Bytes of the base64 and base64url alphabets (padding aside), by byte value.
static B64: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'-' | b'_');
        b += 1;
    }
    t
};

#[inline]
fn is_b64(b: u8) -> bool {
    B64[b as usize]
}

/// Both letter cases (hex digests, words and numbers do not qualify) and a length base64
/// can have.
fn looks_encoded(t: &[u8]) -> bool {
    let body = t.iter().take_while(|&&b| b != b'=').count();
    body % 4 != 1 && t.iter().any(u8::is_ascii_uppercase) && t.iter().any(u8::is_ascii_lowercase)
}

/// Decodes JavaScript / JSON string escapes into `out`: `\uHHHH` (surrogate pairs joined),
/// `\u{H…}`, `\xHH`, and `\n`, `\r`, `\t`, `\0`, `\\`, `\'`, `\"`, `\/`. False when `v`
/// holds no `\u`/`\x` escape and no `\n`/`\r` (then `out` is unspecified): a Windows
/// path or a regex is not rewritten for nothing.
pub fn unescape_js(v: &[u8], out: &mut Vec<u8>) -> bool {
    if !has_js_escape(v) {
        return false;
    }
    let mut changed = false;
    let mut i = 0;
    while i < v.len() {
        if v[i] != b'\\' || i + 1 >= v.len() {
            out.push(v[i]);
            i += 1;
            continue;
        }
        let (cp, len) = match v[i + 1] {
            b'u' if v.get(i + 2) == Some(&b'{') => match v[i + 3..].iter().position(|&b| b == b'}')
            {
                Some(n) if (1..=6).contains(&n) => (hex(&v[i + 3..i + 3 + n]), n + 4),
                _ => (None, 0),
            },
            b'u' => match v.get(i + 2..i + 6).and_then(hex) {
                Some(hi @ 0xD800..=0xDBFF) => {
                    let lo = (v.get(i + 6) == Some(&b'\\') && v.get(i + 7) == Some(&b'u'))
                        .then(|| v.get(i + 8..i + 12).and_then(hex))
                        .flatten()
                        .filter(|lo| (0xDC00..=0xDFFF).contains(lo));
                    match lo {
                        Some(lo) => (Some(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)), 12),
                        None => (Some(0xFFFD), 6),
                    }
                }
                Some(cp) => (Some(cp), 6),
                None => (None, 0),
            },
            b'x' => (v.get(i + 2..i + 4).and_then(hex), 4),
            b'n' => (Some(0x0A), 2),
            b'r' => (Some(0x0D), 2),
            b't' => (Some(0x09), 2),
            b'0' => (Some(0), 2),
            b'\\' | b'\'' | b'"' | b'/' => (Some(u32::from(v[i + 1])), 2),
            _ => (None, 0),
        };
        match cp {
            Some(cp) => {
                let c = char::from_u32(cp).unwrap_or('\u{fffd}');
                let mut tmp = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut tmp).as_bytes());
                changed = true;
                i += len;
            }
            None => {
                out.push(v[i]);
                i += 1;
            }
        }
    }
    changed
}

/// Whether `v` holds an escape [`unescape_js`] decodes.
pub fn has_js_escape(v: &[u8]) -> bool {
    memchr::memchr_iter(b'\\', v).any(|i| matches!(v.get(i + 1), Some(b'u' | b'x' | b'n' | b'r')))
}

fn hex(d: &[u8]) -> Option<u32> {
    d.iter().try_fold(0u32, |acc, &b| {
        Some(acc * 16 + u32::from(super::transform::hex_val(b)?))
    })
}

/// Percent-decodes `v` round after round (at most [`MAX_URL_ROUNDS`]) while it still holds
/// an escape, into `out`. False unless two rounds or more changed it: one round is what
/// the rules' own `url_decode_uni` does, so only a nested encoding (`%252e`, `%%32%65`)
/// yields a value of its own.
pub fn url_unnest(v: &[u8], out: &mut Vec<u8>) -> bool {
    if !has_escape(v) {
        return false;
    }
    // The first round goes straight into `out`: a value encoded once (a URL with `%20`
    // in a JSON field) is dropped without allocating.
    let start = out.len();
    super::transform::url_decode(v, out, true);
    if !has_escape(&out[start..]) {
        out.truncate(start);
        return false;
    }
    let mut cur = out.split_off(start);
    let mut rounds = 1;
    while rounds < MAX_URL_ROUNDS && has_escape(&cur) {
        let mut next = Vec::with_capacity(cur.len());
        super::transform::url_decode(&cur, &mut next, true);
        if next == cur {
            break;
        }
        cur = next;
        rounds += 1;
    }
    if rounds < 2 {
        return false;
    }
    out.extend_from_slice(&cur);
    true
}

/// A `%HH` or `%uHHHH` escape anywhere in `v`.
pub fn has_escape(v: &[u8]) -> bool {
    memchr::memchr_iter(b'%', v).any(|i| {
        let hex2 = |at: usize| {
            v.get(at..at + 2)
                .is_some_and(|d| d.iter().all(u8::is_ascii_hexdigit))
        };
        hex2(i + 1) || (matches!(v.get(i + 1), Some(b'u' | b'U')) && hex2(i + 2) && hex2(i + 4))
    })
}

/// Folds fullwidth forms (U+FF01–U+FF5E, e.g. `＜script＞`) to their ASCII twins into
/// `out`; false (and `out` unspecified) when `v` holds none. Backends that normalize
/// Unicode (NFKC) read the fullwidth text as the ASCII one.
pub fn fold_fullwidth(v: &[u8], out: &mut Vec<u8>) -> bool {
    if !has_fullwidth(v) {
        return false;
    }
    let mut changed = false;
    let mut i = 0;
    while i < v.len() {
        if v[i] == 0xEF && i + 2 < v.len() && matches!(v[i + 1], 0xBC | 0xBD) {
            // U+FF00 + x is EF BC 80+x (x < 0x40) or EF BD 80+(x-0x40).
            let x = u32::from(v[i + 2] & 0x3F) + if v[i + 1] == 0xBD { 0x40 } else { 0 };
            if (0x01..=0x5E).contains(&x) && v[i + 2] & 0xC0 == 0x80 {
                out.push((x + 0x20) as u8);
                i += 3;
                changed = true;
                continue;
            }
        }
        out.push(v[i]);
        i += 1;
    }
    changed
}

/// Whether `v` may hold a fullwidth form (a cheap scan for its UTF-8 lead bytes).
pub fn has_fullwidth(v: &[u8]) -> bool {
    memchr::memchr_iter(0xEF, v).any(|i| matches!(v.get(i + 1), Some(0xBC | 0xBD)))
}

/// Decoded bytes that read as text: UTF-8, at least 4 bytes, no control characters other
/// than tab and line breaks, and mostly (≥ 90 %) printable.
pub fn is_text(b: &[u8]) -> bool {
    let Ok(s) = std::str::from_utf8(b) else {
        return false;
    };
    if b.len() < 4 {
        return false;
    }
    let mut printable = 0usize;
    let mut total = 0usize;
    for c in s.chars() {
        total += 1;
        if c.is_control() && !matches!(c, '\t' | '\n' | '\r') {
            return false;
        }
        if !c.is_control() && c != '\u{fffd}' {
            printable += 1;
        }
    }
    printable * 10 >= total * 9
}

/// An argument that holds a GraphQL document: named `query` (or `….query`, as in a JSON
/// body `{"query": …}`) and containing a selection set.
pub fn is_graphql_query(name: &[u8], value: &[u8]) -> bool {
    (name.eq_ignore_ascii_case(b"query") || name.ends_with(b".query"))
        && memchr::memchr(b'{', value).is_some()
}

/// Calls `each` with the content of every string literal of a GraphQL document (`"…"` with
/// `\"` and `\\` unescaped, and `"""…"""` block strings).
pub fn graphql_strings(doc: &[u8], mut each: impl FnMut(&[u8])) {
    let mut i = 0;
    let mut lit = Vec::new();
    while i < doc.len() {
        match doc[i] {
            b'#' => {
                // A comment runs to the end of the line.
                while i < doc.len() && doc[i] != b'\n' {
                    i += 1;
                }
            }
            b'"' if doc[i..].starts_with(b"\"\"\"") => {
                let start = i + 3;
                let end =
                    memchr::memmem::find(&doc[start..], b"\"\"\"").map_or(doc.len(), |e| start + e);
                if end > start {
                    each(&doc[start..end]);
                }
                i = end + 3;
            }
            b'"' => {
                lit.clear();
                i += 1;
                while i < doc.len() && doc[i] != b'"' {
                    if doc[i] == b'\\' && i + 1 < doc.len() {
                        i += 1;
                    }
                    lit.push(doc[i]);
                    i += 1;
                }
                i += 1;
                if !lit.is_empty() {
                    each(&lit);
                }
            }
            _ => i += 1,
        }
    }
}

/// Calls `each(name, value)` for the text of every element (named by the element) and
/// every attribute value (named by the attribute) of an XML document, CDATA included.
/// Comments, processing instructions and the DOCTYPE are skipped (rules see the raw body
/// for those). Entities are left as written: rules decode them.
pub fn xml_values(doc: &[u8], mut each: impl FnMut(&[u8], &[u8])) {
    let mut stack: Vec<&[u8]> = Vec::new();
    let mut n = 0;
    let mut i = 0;
    while i < doc.len() && n < MAX_XML_VALUES {
        let Some(lt) = memchr::memchr(b'<', &doc[i..]).map(|p| i + p) else {
            emit_text(&doc[i..], stack.last().copied(), &mut each, &mut n);
            break;
        };
        emit_text(&doc[i..lt], stack.last().copied(), &mut each, &mut n);
        let rest = &doc[lt..];
        let skip_to =
            |pat: &[u8]| memchr::memmem::find(rest, pat).map_or(doc.len(), |e| lt + e + pat.len());
        if rest.starts_with(b"<!--") {
            i = skip_to(b"-->");
        } else if rest.starts_with(b"<![CDATA[") {
            let start = lt + 9;
            let end = memchr::memmem::find(&doc[start..], b"]]>").map_or(doc.len(), |e| start + e);
            if end > start {
                each(stack.last().copied().unwrap_or(b""), &doc[start..end]);
                n += 1;
            }
            i = (end + 3).min(doc.len());
        } else if rest.starts_with(b"<?") {
            i = skip_to(b"?>");
        } else if rest.starts_with(b"<!") {
            // DOCTYPE, possibly with an internal subset in brackets.
            i = match (memchr::memchr(b'[', rest), memchr::memchr(b'>', rest)) {
                (Some(b), Some(g)) if b < g => skip_to(b"]>"),
                _ => skip_to(b">"),
            };
        } else if rest.starts_with(b"</") {
            stack.pop();
            i = skip_to(b">");
        } else {
            let end = tag_end(rest).map_or(doc.len(), |e| lt + e);
            let tag = &doc[lt + 1..end.min(doc.len())];
            let self_closing = tag.last() == Some(&b'/');
            let name_len = tag
                .iter()
                .position(|b| b.is_ascii_whitespace() || *b == b'/')
                .unwrap_or(tag.len());
            let (name, attrs) = tag.split_at(name_len);
            attributes(attrs, |k, v| {
                if n < MAX_XML_VALUES {
                    each(k, v);
                    n += 1;
                }
            });
            if !self_closing && !name.is_empty() {
                stack.push(name);
            }
            i = end + 1;
        }
    }
}

/// Where a start tag ends (its `>`, outside quoted attribute values).
fn tag_end(rest: &[u8]) -> Option<usize> {
    let mut quote = None;
    for (i, &b) in rest.iter().enumerate().skip(1) {
        match (quote, b) {
            (None, b'"' | b'\'') => quote = Some(b),
            (Some(q), b) if b == q => quote = None,
            (None, b'>') => return Some(i),
            _ => {}
        }
    }
    None
}

fn attributes(mut s: &[u8], mut each: impl FnMut(&[u8], &[u8])) {
    while let Some(eq) = memchr::memchr(b'=', s) {
        let name = trim(&s[..eq]);
        let name = name
            .rsplit(|b| b.is_ascii_whitespace())
            .next()
            .unwrap_or(name);
        let after = trim_start(&s[eq + 1..]);
        let Some(&q) = after.first().filter(|q| matches!(q, b'"' | b'\'')) else {
            return;
        };
        let Some(close) = memchr::memchr(q, &after[1..]) else {
            return;
        };
        let value = &after[1..1 + close];
        if !value.is_empty() {
            each(name, value);
        }
        s = &after[close + 2..];
    }
}

fn emit_text(t: &[u8], element: Option<&[u8]>, each: &mut impl FnMut(&[u8], &[u8]), n: &mut usize) {
    let t = trim(t);
    if !t.is_empty() {
        each(element.unwrap_or(b""), t);
        *n += 1;
    }
}

fn trim_start(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(s.len());
    &s[start..]
}

fn trim(s: &[u8]) -> &[u8] {
    let s = trim_start(s);
    let end = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |e| e + 1);
    &s[..end]
}

#[cfg(test)]
mod tests {
    /// The plain left-to-right scan the skipping one must agree with.
    fn base64_candidate_reference(v: &[u8], k: usize) -> Option<Range<usize>> {
        let mut found = 0;
        let mut i = 0;
        while i < v.len() {
            while i < v.len() && !is_b64(v[i]) {
                i += 1;
            }
            let start = i;
            while i < v.len() && is_b64(v[i]) {
                i += 1;
            }
            let mut end = i;
            while end < v.len() && v[end] == b'=' && end - i < 2 {
                end += 1;
            }
            i = end;
            if end - start >= MIN_BASE64 && looks_encoded(&v[start..end]) {
                if found == k {
                    return Some(start..end);
                }
                found += 1;
            }
        }
        None
    }

    #[test]
    fn the_skipping_base64_scan_finds_what_a_plain_scan_finds() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let alphabet = b"aB3+/=_- .,;Zz9==xYQ";
        for _ in 0..20_000 {
            crate::waf::xorshift(&mut seed);
            let len = 16 + (seed % 90) as usize;
            let v: Vec<u8> = (0..len)
                .map(|j| {
                    let r = seed.rotate_left(j as u32 * 7) ^ (j as u64).wrapping_mul(0x9e37_79b9);
                    // Mostly alphabet runs, now and then a separator.
                    if r % 23 == 0 {
                        b' '
                    } else {
                        alphabet[(r % alphabet.len() as u64) as usize]
                    }
                })
                .collect();
            for k in 0..3 {
                assert_eq!(
                    base64_candidate(&v, k),
                    base64_candidate_reference(&v, k),
                    "{:?} k={k}",
                    String::from_utf8_lossy(&v)
                );
            }
        }
    }

    use super::*;

    fn decoded(v: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut k = 0;
        while let Some(r) = base64_candidate(v.as_bytes(), k) {
            k += 1;
            let mut buf = Vec::new();
            crate::waf::transform::base64_decode(&v.as_bytes()[r], &mut buf);
            if is_text(&buf) {
                out.push(String::from_utf8(buf).unwrap());
            }
        }
        out
    }

    #[test]
    fn base64_text_is_found_and_random_bytes_are_not() {
        // "' OR '1'='1' --" and "<script>alert(1)</script>"
        assert_eq!(decoded("JyBPUiAnMSc9JzEnIC0t"), ["' OR '1'='1' --"]);
        assert_eq!(
            decoded("PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg"),
            ["<script>alert(1)</script>"]
        );
        // A JWT: header and payload decode, the signature does not.
        let jwt = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxJyBPUiAnMSc9JzEifQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";
        let d = decoded(jwt);
        assert!(d.iter().any(|s| s.contains("1' OR '1'='1")), "{d:?}");
        assert_eq!(d.len(), 2, "{d:?}");
        // Hex digests, words, random bytes, short values: nothing.
        for v in [
            "d41d8cd98f00b204e9800998ecf8427e",
            "internationalization",
            "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==",
            "q2Xk9Fz3Lw8Rb7Tn",
            "abc",
        ] {
            assert!(decoded(v).is_empty(), "{v}: {:?}", decoded(v));
        }
    }

    #[test]
    fn fullwidth_forms_fold_to_ascii() {
        let mut out = Vec::new();
        assert!(fold_fullwidth(
            "＜script＞alert（1）＜／script＞".as_bytes(),
            &mut out
        ));
        assert_eq!(out, b"<script>alert(1)</script>");
        out.clear();
        assert!(!fold_fullwidth("plain <b> and Zürich".as_bytes(), &mut out));
    }

    #[test]
    fn graphql_string_literals() {
        let mut out = Vec::new();
        graphql_strings(
            br#"query { user(id: "1' OR '1'='1") { name } # "not this"
  search(q: """<script>""", t: "a\"b") }"#,
            |s| out.push(String::from_utf8_lossy(s).into_owned()),
        );
        assert_eq!(out, ["1' OR '1'='1", "<script>", "a\"b"]);
        assert!(is_graphql_query(b"query", b"{ a }"));
        assert!(is_graphql_query(b"data.query", b"query q { a }"));
        assert!(!is_graphql_query(b"q", b"{ a }"));
    }

    #[test]
    fn xml_text_cdata_and_attributes() {
        let mut out = Vec::new();
        xml_values(
            br#"<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>
<login user='admin&apos; or 1=1' ><name>O'Neil &amp; sons</name><!-- c --><q><![CDATA[<script>x</script>]]></q></login>
</soap:Body></soap:Envelope>"#,
            |n, v| {
                out.push(format!(
                    "{}={}",
                    String::from_utf8_lossy(n),
                    String::from_utf8_lossy(v)
                ))
            },
        );
        assert!(
            out.contains(&"user=admin&apos; or 1=1".to_string()),
            "{out:?}"
        );
        assert!(
            out.contains(&"name=O'Neil &amp; sons".to_string()),
            "{out:?}"
        );
        assert!(out.contains(&"q=<script>x</script>".to_string()), "{out:?}");
        assert!(
            !out.iter()
                .any(|v| v.contains("etc/passwd") || v.contains(" c ")),
            "{out:?}"
        );
    }
}
