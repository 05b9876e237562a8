//! Reading and rewriting the cookies the session phases care about: the session cookie
//! in a request's `Cookie` headers, and in a response's `Set-Cookie` headers.

use http::header::{COOKIE, SET_COOKIE};
use http::{HeaderMap, HeaderValue};

/// The request carries its session cookie ambiguously.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ambiguous;

/// The session cookie `name` of a request, without allocating. Ambiguous when it appears more than once, or
/// under a name a server reads as `name` (PHP turns `.`, space and `[` into `_`): which
/// one the application uses is a guess, so the session is not valid.
pub fn session_cookie<'a>(
    headers: &'a HeaderMap,
    name: &str,
) -> Result<Option<&'a [u8]>, Ambiguous> {
    let mut found = None;
    for h in headers.get_all(COOKIE) {
        for pair in h.as_bytes().split(|&b| b == b';') {
            let pair = trim(pair);
            let (n, value) = match memchr::memchr(b'=', pair) {
                Some(i) => (trim(&pair[..i]), &pair[i + 1..]),
                None => (pair, &b""[..]),
            };
            if !same_cookie_name(n, name.as_bytes()) {
                continue;
            }
            if found.is_some() || n != name.as_bytes() {
                return Err(Ambiguous);
            }
            found = Some(unquote(trim(value)));
        }
    }
    Ok(found)
}

/// Names a server could take for the same cookie.
fn same_cookie_name(a: &[u8], b: &[u8]) -> bool {
    let php = |c: u8| {
        if matches!(c, b'.' | b' ' | b'[') {
            b'_'
        } else {
            c
        }
    };
    a.len() == b.len() && a.iter().zip(b).all(|(&x, &y)| php(x) == php(y))
}

/// Whether a `name=value` pair (already trimmed) is cookie `name`, or a spelling of it
/// that a server would read as it.
fn names(pair: &[u8], name: &str) -> bool {
    let n = memchr::memchr(b'=', pair).map_or(pair, |i| trim(&pair[..i]));
    same_cookie_name(n, name.as_bytes())
}

/// Removes cookie `name` from the request's `Cookie` headers (dropping a header left empty).
pub fn strip_request_cookie(headers: &mut HeaderMap, name: &str) {
    let present = headers.get_all(COOKIE).iter().any(|h| {
        h.as_bytes()
            .split(|&b| b == b';')
            .any(|p| names(trim(p), name))
    });
    if !present {
        return;
    }
    let kept: Vec<Vec<u8>> = headers
        .get_all(COOKIE)
        .iter()
        .map(|h| {
            let pairs: Vec<&[u8]> = h
                .as_bytes()
                .split(|&b| b == b';')
                .map(trim)
                .filter(|p| !p.is_empty() && !names(p, name))
                .collect();
            pairs.join(&b"; "[..])
        })
        .filter(|v| !v.is_empty())
        .collect();
    headers.remove(COOKIE);
    for v in kept {
        if let Ok(v) = HeaderValue::from_bytes(&v) {
            headers.append(COOKIE, v);
        }
    }
}

/// What a response's `Set-Cookie` does to cookie `name`.
#[derive(Debug, PartialEq, Eq)]
pub enum SetCookie<'a> {
    /// Sets it to this value.
    Set(&'a [u8]),
    /// Clears it (empty value, `Max-Age` ≤ 0, or an `Expires` in the past).
    Cleared,
}

/// The last `Set-Cookie` for `name` in a response.
pub fn response_cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<SetCookie<'a>> {
    let mut found = None;
    for h in headers.get_all(SET_COOKIE) {
        let mut parts = h.as_bytes().split(|&b| b == b';');
        let Some(first) = parts.next() else { continue };
        let first = trim(first);
        let Some(value) = first
            .strip_prefix(name.as_bytes())
            .and_then(|r| r.strip_prefix(b"="))
        else {
            continue;
        };
        let value = unquote(trim(value));
        let mut cleared = value.is_empty();
        for attr in parts {
            let attr = trim(attr);
            let lower = attr.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix(b"max-age=") {
                let v = std::str::from_utf8(v).unwrap_or("1").trim();
                if v.parse::<i64>().is_ok_and(|n| n <= 0) {
                    cleared = true;
                }
            } else if let Some(v) = attr.get(8..).filter(|_| lower.starts_with(b"expires=")) {
                if let Ok(t) = httpdate(v) {
                    if t <= std::time::SystemTime::now() {
                        cleared = true;
                    }
                }
            }
        }
        found = Some(if cleared {
            SetCookie::Cleared
        } else {
            SetCookie::Set(value)
        });
    }
    found
}

/// Removes every `Set-Cookie` for `name` from a response.
pub fn strip_response_cookie(headers: &mut HeaderMap, name: &str) {
    if response_cookie(headers, name).is_none() {
        return;
    }
    let kept: Vec<HeaderValue> = headers
        .get_all(SET_COOKIE)
        .iter()
        .filter(|h| !names(trim(h.as_bytes()), name))
        .cloned()
        .collect();
    headers.remove(SET_COOKIE);
    for v in kept {
        headers.append(SET_COOKIE, v);
    }
}

fn httpdate(v: &[u8]) -> Result<std::time::SystemTime, ()> {
    let s = std::str::from_utf8(v).map_err(|_| ())?;
    humantime::parse_rfc3339_weak(s.trim())
        .or_else(|_| parse_imf_fixdate(s.trim()))
        .map_err(|_| ())
}

/// `Thu, 01 Jan 1970 00:00:00 GMT` (the form cookies use).
fn parse_imf_fixdate(s: &str) -> Result<std::time::SystemTime, ()> {
    let mut it = s.split([' ', ',', ':', '-']).filter(|p| !p.is_empty());
    let _weekday = it.next().ok_or(())?;
    let day: u64 = it.next().ok_or(())?.parse().map_err(|_| ())?;
    let month = it.next().ok_or(())?;
    let month = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ]
    .iter()
    .position(|m| month.eq_ignore_ascii_case(m))
    .ok_or(())? as u64
        + 1;
    let mut year: u64 = it.next().ok_or(())?.parse().map_err(|_| ())?;
    if year < 100 {
        year += if year < 70 { 2000 } else { 1900 };
    }
    let h: u64 = it.next().ok_or(())?.parse().map_err(|_| ())?;
    let m: u64 = it.next().ok_or(())?.parse().map_err(|_| ())?;
    let sec: u64 = it.next().ok_or(())?.parse().map_err(|_| ())?;
    let text = format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{sec:02}Z");
    humantime::parse_rfc3339(&text).map_err(|_| ())
}

fn trim(b: &[u8]) -> &[u8] {
    b.trim_ascii()
}

fn unquote(b: &[u8]) -> &[u8] {
    if b.len() >= 2 && b[0] == b'"' && b[b.len() - 1] == b'"' {
        &b[1..b.len() - 1]
    } else {
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_strips_and_reads_set_cookie() {
        let mut h = HeaderMap::new();
        h.append(COOKIE, HeaderValue::from_static("a=1; sid=abc; sidx=2"));
        h.append(COOKIE, HeaderValue::from_static("sid=later"));
        let first: HeaderMap = h
            .iter()
            .take(1)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        assert_eq!(session_cookie(&first, "sid"), Ok(Some(&b"abc"[..])));
        assert_eq!(session_cookie(&first, "si"), Ok(None));
        strip_request_cookie(&mut h, "sid");
        let left: Vec<_> = h
            .get_all(COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        assert_eq!(left, vec!["a=1; sidx=2"]);

        let mut r = HeaderMap::new();
        r.append(SET_COOKIE, HeaderValue::from_static("other=1; Path=/"));
        assert_eq!(response_cookie(&r, "sid"), None);
        r.append(
            SET_COOKIE,
            HeaderValue::from_static("sid=\"xyz\"; Path=/; HttpOnly"),
        );
        assert_eq!(response_cookie(&r, "sid"), Some(SetCookie::Set(b"xyz")));
        for cleared in [
            "sid=; Path=/",
            "sid=x; Max-Age=0",
            "sid=x; Expires=Thu, 01 Jan 1970 00:00:00 GMT",
        ] {
            let mut r = HeaderMap::new();
            r.append(SET_COOKIE, HeaderValue::from_static(cleared));
            assert_eq!(
                response_cookie(&r, "sid"),
                Some(SetCookie::Cleared),
                "{cleared}"
            );
        }
        let mut r2 = r.clone();
        strip_response_cookie(&mut r2, "sid");
        assert_eq!(r2.get_all(SET_COOKIE).iter().count(), 1);
    }

    #[test]
    fn session_cookies_are_taken_once_and_only_by_their_name() {
        let h = |values: &[&str]| {
            let mut m = HeaderMap::new();
            for v in values {
                m.append(COOKIE, HeaderValue::from_str(v).unwrap());
            }
            m
        };
        let one = h(&["a=1; demo_session=abc; b=2"]);
        assert_eq!(session_cookie(&one, "demo_session"), Ok(Some(&b"abc"[..])));
        assert_eq!(session_cookie(&h(&["a=1"]), "demo_session"), Ok(None));
        for twice in [
            h(&["demo_session=abc; demo_session=x"]),
            h(&["demo_session=abc", "demo_session=x"]),
            h(&["demo.session=x; demo_session=abc"]),
            h(&["demo session=x"]),
            h(&["demo[session=x"]),
        ] {
            assert_eq!(session_cookie(&twice, "demo_session"), Err(Ambiguous));
        }
        let mut m = h(&["demo.session=x; keep=1; demo_session=abc"]);
        strip_request_cookie(&mut m, "demo_session");
        assert_eq!(m.get(COOKIE).unwrap(), "keep=1");
    }
}
