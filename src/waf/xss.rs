//! Cross-site-scripting detection in the manner of libinjection: read the value as an HTML
//! fragment (as text, and as if it were inside a quoted or unquoted attribute value) and
//! flag what would run script: a dangerous tag (`script`, `iframe`, `svg`…), an event
//! handler attribute (`on…=`), a URL attribute whose value is a `javascript:`/`vbscript:`/
//! `data:text/html` URL, a `style` with `expression(`, or such a URL as the whole value.
//!
//! Cost: one pass over at most [`MAX_SCAN`] bytes, `memchr` to the next `<`; no allocation.
//! Text with `<` that does not open a tag (`a < b`, `<3`) is skipped over.

/// Every payload holds one of these bytes (a tag, a quote that closes an attribute, a
/// URL scheme); the engine skips values without any.
pub const TRIGGERS: &[u8] = b"<\"':`";

/// Bytes of a value that are examined.
pub const MAX_SCAN: usize = 16384;

/// Tags that run or load script, or change where the page's URLs resolve.
const TAGS: &[&[u8]] = &[
    b"script",
    b"iframe",
    b"frame",
    b"frameset",
    b"object",
    b"embed",
    b"applet",
    b"svg",
    b"math",
    b"meta",
    b"base",
    b"link",
    b"style",
    b"import",
    b"isindex",
    b"xml",
    b"xss",
    b"template",
    b"portal",
    b"vmlframe",
    b"animate",
    b"set",
    b"handler",
    b"listener",
];

/// Attributes whose value is a URL that may carry script.
const URL_ATTRS: &[&[u8]] = &[
    b"href",
    b"src",
    b"action",
    b"formaction",
    b"data",
    b"xlink:href",
    b"background",
    b"dynsrc",
    b"lowsrc",
    b"poster",
    b"srcdoc",
    b"codebase",
    b"to",
    b"values",
    b"from",
    b"by",
    b"attributename",
];

/// True when `input` looks like an XSS payload.
pub fn is_xss(input: &[u8]) -> bool {
    let s = &input[..input.len().min(MAX_SCAN)];
    if script_url(s)
        && (!s.trim_ascii_start()[..4.min(s.trim_ascii_start().len())]
            .eq_ignore_ascii_case(b"java")
            || script_follows(s))
    {
        return true;
    }
    // Attribute context: `" onmouseover="…` or `x onerror=…` injected into a tag.
    if attribute_injection(s) {
        return true;
    }
    let mut at = 0;
    while let Some(p) = memchr::memchr(b'<', &s[at..]) {
        let start = at + p + 1;
        if let Some(end) = tag(s, start) {
            if end == usize::MAX {
                return true;
            }
            at = end;
        } else {
            at = start;
        }
    }
    false
}

/// Reads a tag starting after `<`. `Some(usize::MAX)` means dangerous; `Some(end)` a
/// harmless tag ending at `end`; `None` not a tag.
fn tag(s: &[u8], mut i: usize) -> Option<usize> {
    if s.get(i) == Some(&b'/') {
        i += 1;
    }
    if s.get(i) == Some(&b'!') || s.get(i) == Some(&b'?') {
        // Comments and declarations: `<!--[if` conditional comments and `<!ENTITY` carry script.
        let rest = &s[i..s.len().min(i + 16)];
        let lower: [u8; 16] = lower16(rest);
        let l = &lower[..rest.len()];
        if l.starts_with(b"![cdata[")
            || l.starts_with(b"!entity")
            || l.starts_with(b"!doctype")
            || l.starts_with(b"!--[if")
            || l.starts_with(b"?xml")
            || l.starts_with(b"?import")
        {
            return Some(usize::MAX);
        }
        return None;
    }
    let name_start = i;
    while i < s.len() && (s[i].is_ascii_alphanumeric() || s[i] == b':' || s[i] == b'-') {
        i += 1;
    }
    if i == name_start || !s[name_start].is_ascii_alphabetic() {
        return None;
    }
    let name = &s[name_start..i];
    // `<b`, `<a` followed by a letter-less end are still tags; after the name must come
    // whitespace, `/`, `>` or the end.
    if i < s.len() && !matches!(s[i], b' ' | b'\t' | b'\n' | b'\r' | 0x0c | b'/' | b'>') {
        return None;
    }
    if TAGS.iter().any(|t| t.eq_ignore_ascii_case(name)) {
        return Some(usize::MAX);
    }
    attributes(s, i)
}

/// Walks attributes from `i` to `>`; `Some(usize::MAX)` when one is dangerous.
fn attributes(s: &[u8], mut i: usize) -> Option<usize> {
    loop {
        while i < s.len()
            && matches!(
                s[i],
                b' ' | b'\t' | b'\n' | b'\r' | 0x0c | b'/' | b'"' | b'\''
            )
        {
            i += 1;
        }
        if i >= s.len() {
            return Some(i);
        }
        if s[i] == b'>' {
            return Some(i + 1);
        }
        let name_start = i;
        while i < s.len()
            && !matches!(
                s[i],
                b' ' | b'\t' | b'\n' | b'\r' | 0x0c | b'/' | b'>' | b'='
            )
        {
            i += 1;
        }
        let name = &s[name_start..i];
        while i < s.len() && matches!(s[i], b' ' | b'\t' | b'\n' | b'\r' | 0x0c) {
            i += 1;
        }
        let has_value = s.get(i) == Some(&b'=');
        if is_event_handler(name) && has_value {
            return Some(usize::MAX);
        }
        if !has_value {
            continue;
        }
        i += 1;
        while i < s.len() && matches!(s[i], b' ' | b'\t' | b'\n' | b'\r' | 0x0c) {
            i += 1;
        }
        let (value, next) = match s.get(i) {
            Some(&q @ (b'"' | b'\'' | b'`')) => {
                let end = memchr::memchr(q, &s[i + 1..]).map_or(s.len(), |e| i + 1 + e);
                (&s[i + 1..end], (end + 1).min(s.len()))
            }
            _ => {
                let mut e = i;
                while e < s.len() && !matches!(s[e], b' ' | b'\t' | b'\n' | b'\r' | 0x0c | b'>') {
                    e += 1;
                }
                (&s[i..e], e)
            }
        };
        if URL_ATTRS.iter().any(|a| a.eq_ignore_ascii_case(name)) && script_url(value) {
            return Some(usize::MAX);
        }
        if name.eq_ignore_ascii_case(b"style") && contains_ci(value, b"expression(") {
            return Some(usize::MAX);
        }
        i = next;
    }
}

/// `on` followed by letters only (`onload`, `onerror`): an event handler attribute.
fn is_event_handler(name: &[u8]) -> bool {
    name.len() > 2
        && name[..2].eq_ignore_ascii_case(b"on")
        && name[2..].iter().all(|b| b.is_ascii_alphabetic())
}

/// A quote that closes an attribute value, then attributes with an event handler or a
/// script URL: the value breaks out of the attribute it was put in.
fn attribute_injection(s: &[u8]) -> bool {
    let mut at = 0;
    while let Some(p) = memchr::memchr2(b'"', b'\'', &s[at..]) {
        let i = at + p + 1;
        if s.get(i)
            .is_some_and(|&b| matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0c | b'/'))
            && attributes(s, i) == Some(usize::MAX)
        {
            return true;
        }
        at = i;
    }
    false
}

/// A `javascript:`, `vbscript:`, `livescript:` or `data:text/html` URL, ignoring the
/// control characters and spaces browsers ignore before and inside the scheme.
fn script_url(v: &[u8]) -> bool {
    let mut buf = [0u8; 16];
    let mut n = 0;
    for &b in v {
        if b <= b' ' {
            continue;
        }
        buf[n] = b.to_ascii_lowercase();
        n += 1;
        if n == buf.len() {
            break;
        }
    }
    let h = &buf[..n];
    h.starts_with(b"javascript:")
        || h.starts_with(b"vbscript:")
        || h.starts_with(b"livescript:")
        || h.starts_with(b"data:text/html")
}

/// The whole value is a `javascript:` URL only if code follows the scheme (a value such
/// as "javascript: the good parts" is prose): a call, an index, a quote, a paren, a
/// comment or an operator.
fn script_follows(s: &[u8]) -> bool {
    let Some(colon) = memchr::memchr(b':', s) else {
        return false;
    };
    let rest = s[colon + 1..].trim_ascii_start();
    match rest.first() {
        None => false,
        Some(
            b'(' | b'[' | b'\'' | b'"' | b'`' | b'/' | b'{' | b'!' | b'+' | b'-' | b'~' | b'%'
            | b'$',
        ) => true,
        Some(c) if c.is_ascii_alphabetic() || *c == b'_' => {
            let ident = rest
                .iter()
                .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'$' | b'.'))
                .count();
            let after = rest[ident..].trim_ascii_start();
            matches!(after.first(), Some(b'(' | b'`' | b'=' | b'[')) || ident == rest.len()
        }
        _ => false,
    }
}

fn lower16(s: &[u8]) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (d, b) in out.iter_mut().zip(s) {
        *d = b.to_ascii_lowercase();
    }
    out
}

fn contains_ci(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

#[cfg(test)]
mod tests {
    use super::is_xss;

    #[test]
    fn attacks() {
        for a in [
            "<script>alert(1)</script>",
            "<ScRiPt src=//x.y>",
            "<img src=x onerror=alert(1)>",
            "<svg/onload=alert(1)>",
            "\"><img src=x onerror=alert(1)>",
            "\" onmouseover=\"alert(1)",
            "' autofocus onfocus='alert(1)",
            "javascript:alert(1)",
            " JaVaScRiPt:alert(1)",
            "<a href=\"javascript:alert(1)\">x</a>",
            "<a href=\"java\tscript:alert(1)\">x</a>",
            "<iframe src=\"data:text/html,<script>alert(1)</script>\">",
            "<div style=\"width: expression(alert(1))\">",
            "<body onload=alert(1)>",
            "<details open ontoggle=alert(1)>",
            "<math><mtext>",
            "<form><button formaction=javascript:alert(1)>x",
        ] {
            assert!(is_xss(a.as_bytes()), "missed: {a}");
        }
    }

    #[test]
    fn benign() {
        for b in [
            "a < b and c > d",
            "I <3 this product",
            "<b>bold</b> and <i>italic</i>",
            "<a href=\"https://example.com\">link</a>",
            "Online shopping is great",
            "He said \"one more\" = enough",
            "Use <br> for breaks",
            "5 <10",
            "x = 'on' ",
            "<p class=\"note\">Hello</p>",
            "Don't use javascript for everything",
            "javascript: the good parts is a book",
        ] {
            assert!(!is_xss(b.as_bytes()), "false positive: {b}");
        }
    }
}
