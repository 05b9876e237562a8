//! `gateway waf test`: runs raw HTTP/1.1 requests through the engine the proxy uses (the
//! config's rules, settings, and the matched route's mode and exclusions) and prints one
//! JSON line per request:
//! `{"file", "verdict": "block"|"pass", "score", "rules": [ids], "matches": [{rule, target, value}]}`.
//!
//! A request file holds one request: request line, header lines, an empty line, then the
//! body (its length from `Content-Length` when present, else the rest of the file). With
//! no file, one request is read from standard input.

use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::json;

use super::request::RequestParts;
use super::{Mode, RoutePolicy, Waf};
use crate::runtime::Runtime;

/// A request read from raw HTTP/1.1 bytes.
#[derive(Debug)]
pub struct RawRequest {
    pub method: String,
    pub target: String,
    pub version: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

/// Parses a raw HTTP/1.1 request (`\r\n` or `\n` line ends).
pub fn parse_raw(bytes: &[u8]) -> Result<RawRequest, String> {
    let (head, body) = match memchr::memmem::find(bytes, b"\r\n\r\n") {
        Some(i) => (&bytes[..i], &bytes[i + 4..]),
        None => match memchr::memmem::find(bytes, b"\n\n") {
            Some(i) => (&bytes[..i], &bytes[i + 2..]),
            None => (bytes, &b""[..]),
        },
    };
    let head = std::str::from_utf8(head).map_err(|_| "request head is not UTF-8".to_string())?;
    let mut lines = head.lines();
    let line = lines.next().ok_or("empty request")?;
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Err(format!("bad request line `{line}`"));
    };
    let version = parts.next().unwrap_or("HTTP/1.1").to_string();
    let mut headers = HeaderMap::new();
    for l in lines {
        let Some((n, v)) = l.split_once(':') else {
            return Err(format!("bad header line `{l}`"));
        };
        let name = HeaderName::from_bytes(n.trim().as_bytes())
            .map_err(|_| format!("bad header name `{n}`"))?;
        let value = HeaderValue::from_bytes(v.trim().as_bytes())
            .map_err(|_| format!("bad value for `{n}`"))?;
        headers.append(name, value);
    }
    let len = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let body = match len {
        Some(n) => body[..n.min(body.len())].to_vec(),
        None => body.to_vec(),
    };
    Ok(RawRequest {
        method: method.to_string(),
        target: target.to_string(),
        version,
        headers,
        body,
    })
}

/// The verdict for one request as a JSON line. `rt`'s router picks the route (its mode
/// and exclusions); without a matching route the global mode applies.
pub fn judge(rt: &Runtime, waf: &Waf, file: &str, raw: &RawRequest) -> serde_json::Value {
    let host = raw
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let (path, query) = raw.target.split_once('?').unwrap_or((&raw.target, ""));
    // The proxy decides on the canonical path; a path it would refuse (400) is inspected
    // as sent.
    let canonical = crate::canonical::canonical_path(path, crate::canonical::Escapes::Keep)
        .ok()
        .filter(|c| c != path)
        .map(|c| {
            if raw.target.contains('?') {
                format!("{c}?{query}")
            } else {
                c.into_owned()
            }
        });
    let path = canonical
        .as_deref()
        .map_or(path, |c| c.split('?').next().unwrap_or(c));
    let default = RoutePolicy::default();
    let policy = rt.router.route(host, path).map_or(&default, |r| &r.waf);
    let body_limit = waf.settings.body_limit;
    let truncated = raw.body.len() > body_limit;
    let body = &raw.body[..raw.body.len().min(body_limit)];
    let v = waf.inspect(
        &RequestParts {
            canonical: canonical.as_deref(),
            client_ip: None,
            method: &raw.method,
            target: &raw.target,
            version: &raw.version,
            headers: &raw.headers,
            body: (!raw.body.is_empty()).then_some(body),
        },
        policy,
        truncated,
    );
    let block = policy.mode != Mode::Off
        && (v.blocked || truncated && waf.settings.over_limit == super::OverLimit::Block);
    json!({
        "file": file,
        "verdict": if block { "block" } else { "pass" },
        "mode": match policy.mode { Mode::Off => "off", Mode::Detect => "detect", Mode::Block => "block" },
        "score": v.score,
        "rules": v.matches.iter().map(|m| m.rule).collect::<Vec<_>>(),
        "matches": v.matches.iter().map(|m| json!({
            "rule": m.rule,
            "msg": &*m.msg,
            "target": m.target,
            "value": m.excerpt,
        })).collect::<Vec<_>>(),
    })
}
