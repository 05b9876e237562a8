//! A strict `multipart/form-data` reader (RFC 7578, RFC 2046), shared by the native rules
//! and CRS so both read the same parts.
//!
//! Where two parsers could split a body differently, the body is refused rather than
//! guessed at (the flags ModSecurity v3 folds into `MULTIPART_STRICT_ERROR`):
//! - the boundary parameter: exactly one, 1–70 of RFC 2046's `bchars`;
//! - nothing before the first delimiter, nothing but one CRLF after the closing one;
//! - a delimiter counts only at a line start (after CRLF) and must be followed by CRLF or
//!   `--` (so a value holding `--<boundary>--` mid-line is data, and `--<boundary>x` is an
//!   error); header and delimiter lines end in CRLF, never a bare LF;
//! - part headers: `Name: value` lines, no folding, no name twice; a
//!   `Content-Disposition: form-data` with exactly one `name`, at most one `filename`, no
//!   `filename*`, balanced quotes and nothing after a quoted value but `;`;
//! - a body that ends before its closing delimiter.
//!
//! Cost: one forward scan with `memchr::memmem` for the delimiter; parts borrow from the
//! body (no copy, no allocation). Failure: an error message, which the engine turns into
//! its fail-closed rule (body not parsable), or — when the body was cut at the inspection
//! limit — [`Error::Incomplete`], which it does not.

/// Why a multipart body is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The body ends before its closing delimiter (harmless when it was truncated).
    Incomplete,
    /// The body breaks the format: the message says how.
    Invalid(&'static str),
}

impl Error {
    pub fn message(self) -> &'static str {
        match self {
            Error::Incomplete => "multipart body without its closing boundary",
            Error::Invalid(m) => m,
        }
    }
}

/// One part, borrowed from the body.
#[derive(Debug, Clone, Copy)]
pub struct Part<'a> {
    /// The header block, lines separated by CRLF (without the blank line).
    pub head: &'a [u8],
    /// The `name` parameter (quotes removed, escapes kept as sent).
    pub name: &'a [u8],
    /// The `filename` parameter, when present (possibly empty).
    pub filename: Option<&'a [u8]>,
    pub content: &'a [u8],
}

impl<'a> Part<'a> {
    /// The part's header lines.
    pub fn header_lines(&self) -> impl Iterator<Item = &'a [u8]> {
        let head = self.head;
        head.split(|&b| b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .filter(|l| !l.is_empty())
    }
}

/// Most part headers accepted in one part.
const MAX_PART_HEADERS: usize = 16;

/// The `boundary` parameter of a `multipart/form-data` content type.
pub fn boundary(ctype: &[u8]) -> Result<&[u8], Error> {
    let mut found = None;
    for p in ctype.split(|&b| b == b';').skip(1) {
        let Some(eq) = p.iter().position(|&b| b == b'=') else {
            continue;
        };
        if !p[..eq].trim_ascii().eq_ignore_ascii_case(b"boundary") {
            continue;
        }
        if found.is_some() {
            return Err(Error::Invalid("more than one multipart boundary"));
        }
        let v = p[eq + 1..].trim_ascii();
        let v = match v.strip_prefix(b"\"") {
            Some(q) => q.strip_suffix(b"\"").ok_or(Error::Invalid(
                "unbalanced quotes in the multipart boundary",
            ))?,
            None => v,
        };
        found = Some(v);
    }
    let b = found.ok_or(Error::Invalid("multipart body without a boundary"))?;
    let bchar = |c: u8| {
        c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'\''
                    | b'('
                    | b')'
                    | b'+'
                    | b'_'
                    | b','
                    | b'-'
                    | b'.'
                    | b'/'
                    | b':'
                    | b'='
                    | b'?'
                    | b' '
            )
    };
    if b.is_empty() || b.len() > 70 || !b.iter().all(|&c| bchar(c)) || b.ends_with(b" ") {
        return Err(Error::Invalid("invalid multipart boundary"));
    }
    Ok(b)
}

/// Reads every part of `body`, strictly; `each` sees the parts in order (also those before
/// an error).
pub fn parse<'a>(body: &'a [u8], boundary: &[u8], each: impl FnMut(Part<'a>)) -> Result<(), Error> {
    read(body, boundary, true, each)
}

/// The parts of a body [`parse`] refused, read as leniently as ModSecurity's parser does
/// (bare LF lines, a preamble, an epilogue, repeated or folded headers, the first `name`):
/// so a request that is refused anyway is still inspected and reported in full.
pub fn parse_lenient<'a>(body: &'a [u8], boundary: &[u8], each: impl FnMut(Part<'a>)) {
    let _ = read(body, boundary, false, each);
}

fn read<'a>(
    body: &'a [u8],
    boundary: &[u8],
    strict: bool,
    mut each: impl FnMut(Part<'a>),
) -> Result<(), Error> {
    // "\r\n--" + boundary: the delimiter as it appears after a part's content.
    let mut delim = Vec::with_capacity(boundary.len() + 4);
    delim.extend_from_slice(b"\r\n--");
    delim.extend_from_slice(boundary);
    let dash = &delim[2..];
    // Lenient: a delimiter after a bare LF counts too.
    let finder = memchr::memmem::Finder::new(if strict { &delim[..] } else { &delim[1..] });
    let mut at = if body.starts_with(dash) {
        dash.len()
    } else if strict {
        return Err(if body.len() < dash.len() && dash.starts_with(body) {
            Error::Incomplete
        } else {
            Error::Invalid("data before the first multipart boundary")
        });
    } else {
        finder.find(body).ok_or(Error::Incomplete)? + finder.needle().len()
    };
    loop {
        let rest = &body[at..];
        if rest.starts_with(b"--") {
            return match &rest[2..] {
                b"" | b"\r\n" | b"\r" => Ok(()),
                _ if !strict => Ok(()),
                _ => Err(Error::Invalid("data after the closing multipart boundary")),
            };
        }
        if rest.len() < 2 {
            return Err(Error::Incomplete);
        }
        if rest.starts_with(b"\r\n") {
            at += 2;
        } else if strict {
            return Err(Error::Invalid(if rest.starts_with(b"\n") {
                "multipart delimiter line ends in a bare LF"
            } else {
                "text after a multipart boundary"
            }));
        } else {
            at += memchr::memchr(b'\n', rest).ok_or(Error::Incomplete)? + 1;
        }
        // Part headers, up to the blank line.
        let head_start = at;
        let mut names: [&[u8]; MAX_PART_HEADERS] = [&[]; MAX_PART_HEADERS];
        let mut count = 0;
        let mut disposition = None;
        loop {
            let Some(nl) = memchr::memchr(b'\n', &body[at..]) else {
                return Err(Error::Incomplete);
            };
            let raw_line = &body[at..at + nl];
            let line = match raw_line.strip_suffix(b"\r") {
                Some(l) => l,
                None if strict => {
                    return Err(Error::Invalid("multipart header line ends in a bare LF"));
                }
                None => raw_line,
            };
            at += nl + 1;
            if line.is_empty() {
                break;
            }
            if strict && (line[0] == b' ' || line[0] == b'\t') {
                return Err(Error::Invalid("folded multipart header line"));
            }
            let Some(colon) = memchr::memchr(b':', line) else {
                if strict {
                    return Err(Error::Invalid("multipart header line without a colon"));
                }
                continue;
            };
            let name = &line[..colon];
            if strict {
                if name.is_empty() || !name.iter().all(|&c| c.is_ascii_graphic() && c != b':') {
                    return Err(Error::Invalid("invalid multipart header name"));
                }
                if names[..count].iter().any(|n| n.eq_ignore_ascii_case(name)) {
                    return Err(Error::Invalid("repeated multipart part header"));
                }
                if count == MAX_PART_HEADERS {
                    return Err(Error::Invalid("too many multipart part headers"));
                }
                names[count] = name;
                count += 1;
            }
            if name
                .trim_ascii()
                .eq_ignore_ascii_case(b"content-disposition")
                && (strict || disposition.is_none())
            {
                disposition = Some(&line[colon + 1..]);
            }
        }
        let head = body[head_start..at].trim_ascii_end();
        let parsed = disposition
            .ok_or(Error::Invalid("multipart part without Content-Disposition"))
            .and_then(|d| content_disposition(d, strict));
        let end = at + finder.find(&body[at..]).ok_or(Error::Incomplete)?;
        let content = &body[at..end];
        match parsed {
            Ok((name, filename)) => each(Part {
                head,
                name,
                filename,
                // Lenient: the delimiter was found after the LF; a CR before it is not data.
                content: if strict {
                    content
                } else {
                    content.strip_suffix(b"\r").unwrap_or(content)
                },
            }),
            Err(e) if strict => return Err(e),
            Err(_) => {}
        }
        at = end + finder.needle().len();
    }
}

/// `form-data; name="x"; filename="y"`: the name and file name, strictly.
fn content_disposition(v: &[u8], strict: bool) -> Result<(&[u8], Option<&[u8]>), Error> {
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while *i < v.len() && matches!(v[*i], b' ' | b'\t') {
            *i += 1;
        }
    };
    skip_ws(&mut i);
    let kind_end = memchr::memchr(b';', &v[i..]).map_or(v.len(), |e| i + e);
    if !v[i..kind_end]
        .trim_ascii()
        .eq_ignore_ascii_case(b"form-data")
    {
        return Err(Error::Invalid("multipart part is not form-data"));
    }
    i = kind_end;
    let (mut name, mut filename) = (None, None);
    while i < v.len() {
        // At a `;`.
        i += 1;
        skip_ws(&mut i);
        if i == v.len() {
            break;
        }
        let Some(eq) = memchr::memchr(b'=', &v[i..]).map(|e| i + e) else {
            if strict {
                return Err(Error::Invalid(
                    "Content-Disposition parameter without a value",
                ));
            }
            break;
        };
        let key = v[i..eq].trim_ascii();
        i = eq + 1;
        skip_ws(&mut i);
        let value;
        if v.get(i) == Some(&b'"') {
            let start = i + 1;
            let mut e = start;
            loop {
                match v.get(e) {
                    None if strict => {
                        return Err(Error::Invalid("unbalanced quotes in Content-Disposition"))
                    }
                    None => break,
                    Some(b'\\') => e += 2,
                    Some(b'"') => break,
                    Some(_) => e += 1,
                }
            }
            let e = e.min(v.len());
            value = &v[start..e];
            i = e + 1;
            skip_ws(&mut i);
            if i < v.len() && v[i] != b';' {
                if strict {
                    return Err(Error::Invalid(
                        "text after a quoted Content-Disposition value",
                    ));
                }
                i = memchr::memchr(b';', &v[i..]).map_or(v.len(), |e| i + e);
            }
        } else {
            let e = memchr::memchr(b';', &v[i..]).map_or(v.len(), |e| i + e);
            value = v[i..e].trim_ascii();
            if strict && value.contains(&b'"') {
                return Err(Error::Invalid("unbalanced quotes in Content-Disposition"));
            }
            i = e;
        }
        let slot = if key.eq_ignore_ascii_case(b"name") {
            &mut name
        } else if key.eq_ignore_ascii_case(b"filename") {
            &mut filename
        } else if strict
            && (key.eq_ignore_ascii_case(b"filename*") || key.eq_ignore_ascii_case(b"name*"))
        {
            return Err(Error::Invalid("extended Content-Disposition parameter"));
        } else {
            continue;
        };
        if slot.is_some() {
            if strict {
                return Err(Error::Invalid("repeated Content-Disposition parameter"));
            }
            continue;
        }
        *slot = Some(value);
    }
    let name = name.ok_or(Error::Invalid("multipart part without a field name"))?;
    Ok((name, filename))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(body: &str) -> Result<Vec<(String, Option<String>, String)>, Error> {
        let mut out = Vec::new();
        parse(body.as_bytes(), b"XyZ", |p| {
            out.push((
                String::from_utf8_lossy(p.name).into_owned(),
                p.filename.map(|f| String::from_utf8_lossy(f).into_owned()),
                String::from_utf8_lossy(p.content).into_owned(),
            ))
        })
        .map(|()| out)
    }

    const CD: &str = "Content-Disposition: form-data; name=";

    #[test]
    fn well_formed_bodies() {
        let body = format!(
            "--XyZ\r\n{CD}\"a\"\r\n\r\none\r\n--XyZ\r\n{CD}\"up\"; filename=\"a.csv\"\r\nContent-Type: text/csv\r\n\r\nx;\"y\"\r\nz\r\n--XyZ--\r\n"
        );
        let p = parts(&body).unwrap();
        assert_eq!(p[0], ("a".into(), None, "one".into()));
        assert_eq!(
            p[1],
            ("up".into(), Some("a.csv".into()), "x;\"y\"\r\nz".into())
        );
        // A delimiter mid-line is data.
        let body = format!("--XyZ\r\n{CD}\"a\"\r\n\r\nv--XyZ--x\r\n--XyZ--");
        assert_eq!(parts(&body).unwrap()[0].2, "v--XyZ--x");
        // Quoted `;` and escaped quotes stay in the value.
        let body = format!("--XyZ\r\n{CD}\"a;b\\\"c\"\r\n\r\n1\r\n--XyZ--");
        assert_eq!(parts(&body).unwrap()[0].0, "a;b\\\"c");
    }

    #[test]
    fn ambiguous_bodies_are_refused() {
        let inv = |body: String| match parts(&body) {
            Err(Error::Invalid(m)) => m,
            other => panic!("{body:?}: {other:?}"),
        };
        inv(format!(
            "preamble\r\n--XyZ\r\n{CD}\"a\"\r\n\r\n1\r\n--XyZ--"
        ));
        inv(format!(
            "--XyZ\r\n{CD}\"a\"\r\n\r\n1\r\n--XyZ--\r\n--XyZ\r\n{CD}\"b\"\r\n\r\n2\r\n--XyZ--"
        ));
        inv(format!("--XyZ\n{CD}\"a\"\n\n1\n--XyZ--"));
        inv(format!("--XyZ\r\n{CD}\"a\"\n\r\n1\r\n--XyZ--"));
        inv(format!("--XyZ\r\n{CD}\"a\r\n\r\n1\r\n--XyZ--"));
        inv(format!(
            "--XyZ\r\n{CD}\"a\"; name=\"b\"\r\n\r\n1\r\n--XyZ--"
        ));
        inv(format!(
            "--XyZ\r\n{CD}\"a\"; filename*=UTF-8''x\r\n\r\n1\r\n--XyZ--"
        ));
        inv(format!(
            "--XyZ\r\n{CD}\"a\"\r\n{CD}\"b\"\r\n\r\n1\r\n--XyZ--"
        ));
        inv(format!("--XyZ\r\n{CD}\"a\"x\r\n\r\n1\r\n--XyZ--"));
        inv(format!("--XyZ\r\n{CD}\"a\"\r\n folded\r\n\r\n1\r\n--XyZ--"));
        inv(format!(
            "--XyZ\r\n{CD}\"a\"\r\n\r\n1\r\n--XyZabc\r\n--XyZ--"
        ));
        inv("--XyZ\r\nContent-Type: text/plain\r\n\r\n1\r\n--XyZ--".to_string());
        assert_eq!(
            parts(&format!("--XyZ\r\n{CD}\"a\"\r\n\r\n1\r\n")),
            Err(Error::Incomplete)
        );
    }

    #[test]
    fn boundaries() {
        assert_eq!(
            boundary(b"multipart/form-data; boundary=abc"),
            Ok(&b"abc"[..])
        );
        assert_eq!(
            boundary(b"multipart/form-data; boundary=\"a b\""),
            Ok(&b"a b"[..])
        );
        assert!(boundary(b"multipart/form-data").is_err());
        assert!(boundary(b"multipart/form-data; boundary=a; boundary=b").is_err());
        assert!(boundary(b"multipart/form-data; boundary=\"abc").is_err());
        assert!(boundary(b"multipart/form-data; boundary=a\"b").is_err());
    }
}
