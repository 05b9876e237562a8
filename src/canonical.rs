//! The canonical request view: the one spelling of a request's path and host that every
//! decision (routing, IP-rule scopes, rate-limit keys, sessions, login detection, WAF
//! targets and exclusions, events, the access log) is taken on, and that the upstream
//! receives.
//!
//! Path ([`canonical_path`]), in one pass over the target's path:
//! - percent-escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded
//!   (`/%61ccount` → `/account`); every other escape stays encoded with upper-case hex
//!   (`%3b` → `%3B`); raw bytes outside RFC 3986's `pchar` set are percent-encoded;
//! - repeated slashes are merged (`//a///b` → `/a/b`); `.` and `..` segments are removed
//!   (RFC 3986 §5.2.4), and a `..` that would climb above the root is refused, as nginx
//!   does;
//! - refused outright, whatever the route says: a malformed escape (`%zz`, `%4`), and a
//!   dot segment carrying a path parameter (`..;x`, which Tomcat and others read as `..`);
//! - refused unless the route keeps them encoded ([`Escapes::Keep`]): an encoded slash or
//!   backslash (`%2F`, `%5C`), a raw backslash, an encoded NUL, and escapes whose bytes are
//!   not valid UTF-8 (overlong `%C0%AF` included). Application servers disagree on all of
//!   them, so by default the gateway does not guess.
//!
//! Path parameters ([`without_parameters`]): servers in the Servlet family (Tomcat, Jetty,
//! Spring) drop `;params` from every segment before routing (`/admin;x/panel` is
//! `/admin/panel`, `/;x/admin` is `/admin`), others keep them. Decisions are taken on the
//! path without them — at least as strict for both kinds — while the upstream receives the
//! canonical path with them.
//!
//! Host ([`canonical_host`]): lower-cased, one trailing dot removed, the scheme's default
//! port removed; user information (`user@host`), empty labels, characters outside a DNS
//! name or an IP literal, and ports that are not numbers up to 65535 are refused.
//!
//! Cost: a path or host that is already canonical is only scanned (no allocation, tens of
//! nanoseconds; `cargo bench --bench hot_path -- canonical`); otherwise one allocation the
//! size of the input. Failure modes: every refusal is a [`PathError`] / [`HostError`] the
//! request-checks phase answers with 400.

use std::borrow::Cow;

use crate::waf::transform::hex_val;

/// What a route does with escapes application servers disagree on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Escapes {
    /// 400 (the default).
    #[default]
    Reject,
    /// Keep them percent-encoded in the canonical path (`%2F`, `%5C`, `%00`, `%C0`…).
    Keep,
}

/// Why a path has no canonical form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("malformed percent-escape in the path")]
    MalformedEscape,
    #[error("a dot segment with a path parameter")]
    DotParameter,
    #[error("the path climbs above the root")]
    AboveRoot,
    #[error("an encoded slash in the path")]
    EncodedSlash,
    #[error("a backslash in the path")]
    Backslash,
    #[error("an encoded NUL in the path")]
    Nul,
    #[error("the path is not valid UTF-8")]
    InvalidUtf8,
}

impl PathError {
    /// Errors a route may choose to keep encoded instead ([`Escapes::Keep`]).
    pub fn keepable(self) -> bool {
        matches!(
            self,
            PathError::EncodedSlash
                | PathError::Backslash
                | PathError::Nul
                | PathError::InvalidUtf8
        )
    }
}

/// Why a host has no canonical form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("user information in the host")]
    UserInfo,
    #[error("not a valid host name")]
    Invalid,
    #[error("not a valid port")]
    Port,
}

/// Bytes of RFC 3986 `unreserved`.
fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Bytes that stand for themselves in a canonical path (`pchar` less `%`, plus `/`).
fn plain(b: u8) -> bool {
    unreserved(b)
        || matches!(
            b,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
                | b'/'
        )
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// True when `path` is already canonical: only plain bytes, no `//`, no dot segments.
fn is_canonical(path: &[u8]) -> bool {
    if path.first() != Some(&b'/') {
        return false;
    }
    let mut i = 0;
    while i < path.len() {
        let b = path[i];
        if b == b'/' {
            match path.get(i + 1) {
                Some(b'/') => return false,
                Some(b'.') => {
                    // `/.`, `/..`, `/.;`, `/..;` at a segment start.
                    let rest = &path[i + 1..];
                    let dots = rest.iter().take_while(|&&c| c == b'.').count();
                    if dots <= 2 && matches!(rest.get(dots), None | Some(b'/') | Some(b';')) {
                        return false;
                    }
                }
                _ => {}
            }
        } else if !plain(b) {
            return false;
        }
        i += 1;
    }
    true
}

/// The canonical form of an origin-form path (it starts with `/`). Borrowed when the path
/// is canonical already.
pub fn canonical_path(path: &str, escapes: Escapes) -> Result<Cow<'_, str>, PathError> {
    let raw = path.as_bytes();
    if is_canonical(raw) {
        return Ok(Cow::Borrowed(path));
    }
    let keep = escapes == Escapes::Keep;
    // 1. Escapes: decode the unreserved ones, normalize the rest, and check that the bytes
    // the path stands for are UTF-8.
    let mut norm: Vec<u8> = Vec::with_capacity(raw.len() + 8);
    // The non-ASCII bytes the path stands for, runs separated by a space: the path is
    // UTF-8 exactly when each run is (allocated only for a path that has any).
    let mut high: Vec<u8> = Vec::new();
    let mut i = 0;
    let push_escaped = |out: &mut Vec<u8>, b: u8| {
        out.push(b'%');
        out.push(HEX_UPPER[usize::from(b >> 4)]);
        out.push(HEX_UPPER[usize::from(b & 15)]);
    };
    while i < raw.len() {
        let b = raw[i];
        let (byte, was_escaped) = if b == b'%' {
            let (Some(h), Some(l)) = (
                raw.get(i + 1).copied().and_then(hex_val),
                raw.get(i + 2).copied().and_then(hex_val),
            ) else {
                return Err(PathError::MalformedEscape);
            };
            i += 3;
            (h << 4 | l, true)
        } else {
            i += 1;
            (b, false)
        };
        if byte >= 0x80 {
            high.push(byte);
        } else if high.last().is_some_and(|&b| b >= 0x80) {
            high.push(b' ');
        }
        match byte {
            b'/' if was_escaped => {
                if !keep {
                    return Err(PathError::EncodedSlash);
                }
                push_escaped(&mut norm, byte);
            }
            b'\\' => {
                if !keep {
                    return Err(PathError::Backslash);
                }
                push_escaped(&mut norm, byte);
            }
            0 => {
                if !keep {
                    return Err(PathError::Nul);
                }
                push_escaped(&mut norm, byte);
            }
            _ if unreserved(byte) => norm.push(byte),
            _ if plain(byte) && !was_escaped => norm.push(byte),
            _ => push_escaped(&mut norm, byte),
        }
    }
    if !high.is_empty() && !keep && std::str::from_utf8(&high).is_err() {
        return Err(PathError::InvalidUtf8);
    }

    // 2. Segments: merge slashes, remove dot segments.
    let trailing_slash = norm.ends_with(b"/");
    let mut out: Vec<u8> = Vec::with_capacity(norm.len());
    let mut last_is_dir = false;
    for seg in norm.split(|&b| b == b'/') {
        match seg {
            b"" => continue,
            b"." => last_is_dir = true,
            b".." => {
                if out.is_empty() {
                    return Err(PathError::AboveRoot);
                }
                let cut = out.iter().rposition(|&b| b == b'/').unwrap_or(0);
                out.truncate(cut);
                last_is_dir = true;
            }
            s if is_dot_with_parameter(s) => {
                return Err(PathError::DotParameter);
            }
            s => {
                out.push(b'/');
                out.extend_from_slice(s);
                last_is_dir = false;
            }
        }
    }
    if out.is_empty() || last_is_dir || trailing_slash {
        out.push(b'/');
    }
    // Only ASCII was pushed (everything else is escaped).
    Ok(Cow::Owned(String::from_utf8(out).unwrap_or_default()))
}

/// A canonical path without the `;parameters` of its segments, empty segments merged;
/// borrowed when it has none.
pub fn without_parameters(path: &str) -> Cow<'_, str> {
    if !path.contains(';') {
        return Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    for seg in path.split('/') {
        let name = seg.split(';').next().unwrap_or("");
        if !name.is_empty() {
            out.push('/');
            out.push_str(name);
        }
    }
    if out.is_empty() || path.ends_with('/') {
        out.push('/');
    }
    Cow::Owned(out)
}

/// The common case in one scan: lower-case DNS labels (or dotted digits), no empty label,
/// and an optional port of 1–5 digits that is not the default one.
fn is_canonical_host(b: &[u8], tls: bool) -> bool {
    // 1: a label byte (lower-case letter, digit, `-`, `_`), 2: a dot, 4: the port's colon,
    // 0: anything else.
    static CLASS: [u8; 256] = {
        let mut t = [0u8; 256];
        let mut i = 0;
        while i < 256 {
            let c = i as u8;
            t[i] = if c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'_' {
                1
            } else if c == b'.' {
                2
            } else if c == b':' {
                4
            } else {
                0
            };
            i += 1;
        }
        t
    };
    let mut prev = 2u8;
    let mut port = None;
    for (i, &c) in b.iter().enumerate() {
        let class = CLASS[usize::from(c)];
        if class == 4 {
            port = Some(&b[i + 1..]);
            break;
        }
        // Not a host byte, or a dot after a dot (or first).
        if class & prev & 2 != 0 || class == 0 {
            return false;
        }
        prev = class;
    }
    if prev == 2 {
        // Empty, or a trailing dot.
        return false;
    }
    match port {
        None => true,
        Some(p) => {
            !p.is_empty()
                && p.len() <= 5
                && p.iter().all(u8::is_ascii_digit)
                && (p.len() < 5 || p <= &b"65535"[..])
                && p != if tls { &b"443"[..] } else { &b"80"[..] }
                && p[0] != b'0'
        }
    }
}

/// `.;x`, `..;x`, `.%3Bx`: a dot segment with a path parameter, which some servers read as
/// the dot segment itself.
fn is_dot_with_parameter(seg: &[u8]) -> bool {
    let dots = seg.iter().take_while(|&&c| c == b'.').count();
    (1..=2).contains(&dots) && {
        let rest = &seg[dots..];
        rest.starts_with(b";") || rest.starts_with(b"%3B")
    }
}

/// The canonical form of a `Host` header or `:authority` (no user information allowed);
/// `tls` says which default port is dropped. Borrowed when canonical already.
pub fn canonical_host(host: &str, tls: bool) -> Result<Cow<'_, str>, HostError> {
    if is_canonical_host(host.as_bytes(), tls) {
        return Ok(Cow::Borrowed(host));
    }
    let b = host.as_bytes();
    if b.contains(&b'@') {
        return Err(HostError::UserInfo);
    }
    // Split name and port.
    let (name, port) = if b.first() == Some(&b'[') {
        let end = memchr::memchr(b']', b).ok_or(HostError::Invalid)?;
        let literal = &host[1..end];
        if literal.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(HostError::Invalid);
        }
        match &host[end + 1..] {
            "" => (&host[..=end], None),
            p => (
                &host[..=end],
                Some(p.strip_prefix(':').ok_or(HostError::Invalid)?),
            ),
        }
    } else {
        match memchr::memrchr(b':', b) {
            Some(i) => (&host[..i], Some(&host[i + 1..])),
            None => (host, None),
        }
    };
    let port = match port {
        None => None,
        Some(p) => {
            if p.is_empty() || p.len() > 5 || !p.bytes().all(|c| c.is_ascii_digit()) {
                return Err(HostError::Port);
            }
            let n: u32 = p.parse().map_err(|_| HostError::Port)?;
            if n > 65535 {
                return Err(HostError::Port);
            }
            let default = if tls { 443 } else { 80 };
            (n != default).then_some((p, n))
        }
    };
    let is_literal = name.starts_with('[');
    let name_b = name.as_bytes();
    if !is_literal {
        if name_b.is_empty() {
            return Err(HostError::Invalid);
        }
        let bare = name_b.strip_suffix(b".").unwrap_or(name_b);
        if bare.is_empty()
            || bare.split(|&c| c == b'.').any(|label| label.is_empty())
            || !bare
                .iter()
                .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        {
            return Err(HostError::Invalid);
        }
    }
    let trailing_dot = !is_literal && name.ends_with('.');
    let upper = name_b.iter().any(u8::is_ascii_uppercase);
    let port_changed = match port {
        None => name.len() != host.len(),
        Some((p, _)) => p.starts_with('0'),
    };
    if !trailing_dot && !upper && !port_changed {
        return Ok(Cow::Borrowed(host));
    }
    let name = if trailing_dot {
        &name[..name.len() - 1]
    } else {
        name
    };
    let mut out = String::with_capacity(host.len());
    out.push_str(name);
    out.make_ascii_lowercase();
    if let Some((_, n)) = port {
        out.push(':');
        out.push_str(&n.to_string());
    }
    Ok(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<String, PathError> {
        canonical_path(s, Escapes::Reject).map(Cow::into_owned)
    }

    #[test]
    fn paths_take_one_spelling() {
        for (input, want) in [
            ("/", "/"),
            ("/account", "/account"),
            ("/%61ccount", "/account"),
            ("/acc%6Funt", "/account"),
            ("//account", "/account"),
            ("/./account", "/account"),
            ("/a/b/../account", "/a/account"),
            ("/a/%2e%2E/account", "/account"),
            ("/a//b///c/", "/a/b/c/"),
            ("/a/.", "/a/"),
            ("/a/b/..", "/a/"),
            ("/a%3bb", "/a%3Bb"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/a;b=c/d", "/a;b=c/d"),
            ("/...", "/..."),
            ("/a/.hidden", "/a/.hidden"),
            ("/%7Euser", "/~user"),
            ("/a%20b", "/a%20b"),
            ("/x%25y", "/x%25y"),
        ] {
            assert_eq!(p(input).as_deref(), Ok(want), "{input}");
            // Canonical is a fixed point.
            assert_eq!(p(want).as_deref(), Ok(want), "{want}");
        }
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        for (input, err) in [
            ("/a%2Fb", PathError::EncodedSlash),
            ("/a%2fb", PathError::EncodedSlash),
            ("/a%5Cb", PathError::Backslash),
            ("/a\\b", PathError::Backslash),
            ("/a%00b", PathError::Nul),
            ("/a%zz", PathError::MalformedEscape),
            ("/a%4", PathError::MalformedEscape),
            ("/a%", PathError::MalformedEscape),
            ("/%c0%af", PathError::InvalidUtf8),
            ("/%ff", PathError::InvalidUtf8),
            ("/..", PathError::AboveRoot),
            ("/a/../../etc/passwd", PathError::AboveRoot),
            ("/%2e%2e/x", PathError::AboveRoot),
            ("/public/..;/admin", PathError::DotParameter),
            ("/.;/admin", PathError::DotParameter),
            ("/a/..%3b/admin", PathError::DotParameter),
        ] {
            assert_eq!(p(input), Err(err), "{input}");
        }
    }

    #[test]
    fn parameters_are_left_out_of_decisions() {
        for (input, want) in [
            ("/account", "/account"),
            ("/account;jsessionid=1", "/account"),
            ("/admin;x/panel", "/admin/panel"),
            ("/;x/admin", "/admin"),
            ("/a;b/", "/a/"),
            ("/;", "/"),
        ] {
            assert_eq!(without_parameters(input), want, "{input}");
        }
    }

    #[test]
    fn kept_escapes_stay_encoded() {
        let k = |s| canonical_path(s, Escapes::Keep).map(Cow::into_owned);
        assert_eq!(k("/a%2fb/./c").as_deref(), Ok("/a%2Fb/c"));
        assert_eq!(k("/a\\b").as_deref(), Ok("/a%5Cb"));
        assert_eq!(k("/%c0%af").as_deref(), Ok("/%C0%AF"));
        assert_eq!(k("/a%zz"), Err(PathError::MalformedEscape));
        assert!(PathError::EncodedSlash.keepable());
        assert!(!PathError::AboveRoot.keepable());
    }

    #[test]
    fn hosts_take_one_spelling() {
        let h = |s, tls| canonical_host(s, tls).map(Cow::into_owned);
        assert_eq!(h("example.com", true).as_deref(), Ok("example.com"));
        assert_eq!(h("Example.COM.", true).as_deref(), Ok("example.com"));
        assert_eq!(h("example.com:443", true).as_deref(), Ok("example.com"));
        assert_eq!(h("example.com:80", false).as_deref(), Ok("example.com"));
        assert_eq!(h("example.com:80", true).as_deref(), Ok("example.com:80"));
        assert_eq!(h("localhost:8443", true).as_deref(), Ok("localhost:8443"));
        assert_eq!(h("localhost:08443", true).as_deref(), Ok("localhost:8443"));
        assert_eq!(h("localhost:0443", true).as_deref(), Ok("localhost"));
        assert_eq!(h("a-b_c.d9", false).as_deref(), Ok("a-b_c.d9"));
        assert!(matches!(
            canonical_host("a.b:8080", false),
            Ok(Cow::Borrowed(_))
        ));
        assert_eq!(h("[::1]:443", true).as_deref(), Ok("[::1]"));
        assert_eq!(h("[::1]:8443", true).as_deref(), Ok("[::1]:8443"));
        assert_eq!(h("127.0.0.1", true).as_deref(), Ok("127.0.0.1"));
        assert_eq!(h("a@example.com", true), Err(HostError::UserInfo));
        assert_eq!(h("example.com:99999", true), Err(HostError::Port));
        assert_eq!(h("example.com:", true), Err(HostError::Port));
        assert_eq!(h("exa mple.com", true), Err(HostError::Invalid));
        assert_eq!(h("a..b", true), Err(HostError::Invalid));
        assert_eq!(h("", true), Err(HostError::Invalid));
        assert_eq!(h("[zz]", true), Err(HostError::Invalid));
        assert_eq!(h("a/b", true), Err(HostError::Invalid));
    }
}
