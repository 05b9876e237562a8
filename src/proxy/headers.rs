//! Hop-by-hop header handling (RFC 9110 §7.6.1) and the forwarding headers the gateway sets.
//!
//! Framing headers (`Content-Length`, `Transfer-Encoding`) are never copied: hyper frames
//! each side from the body it is given, which removes the request-smuggling class of bugs
//! where the two sides disagree about where a message ends.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that describe one connection, never the message.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::CONTENT_LENGTH,
];

/// Removes the hop-by-hop headers and every field named in `Connection`.
/// With `keep_content_length`, `Content-Length` stays (responses to HEAD and 304s, whose
/// length describes a body that is not sent).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_content_length: bool) {
    let mut named: Vec<HeaderName> = Vec::new();
    for v in headers.get_all(header::CONNECTION) {
        for token in v.as_bytes().split(|&b| b == b',') {
            let token = trim(token);
            if token.is_empty()
                || token.eq_ignore_ascii_case(b"close")
                || token.eq_ignore_ascii_case(b"keep-alive")
                || token.eq_ignore_ascii_case(b"upgrade")
            {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(token) {
                if !(keep_content_length && name == header::CONTENT_LENGTH) {
                    named.push(name);
                }
            }
        }
    }
    for name in named {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        if keep_content_length && name == header::CONTENT_LENGTH {
            continue;
        }
        headers.remove(name);
    }
}

/// True when `Connection` lists the given token.
pub fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers.get_all(header::CONNECTION).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| trim(t).eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// An HTTP/1.1 upgrade request (WebSocket and friends).
pub fn is_upgrade_request(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && connection_has(headers, "upgrade")
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &b[start..end]
}

/// Sets `X-Forwarded-For`, `-Proto`, `-Host` and `X-Request-Id` on a request going upstream.
///
/// From an untrusted peer, whatever forwarding headers the client sent are replaced; from a
/// trusted proxy, the peer is appended to its `X-Forwarded-For` and its `-Proto`/`-Host`
/// are kept.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    peer: std::net::IpAddr,
    peer_trusted: bool,
    proto: &'static str,
    host: Option<&HeaderValue>,
    request_id: &HeaderValue,
) {
    const XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
    const XFP: HeaderName = HeaderName::from_static("x-forwarded-proto");
    const XFH: HeaderName = HeaderName::from_static("x-forwarded-host");
    const XRID: HeaderName = HeaderName::from_static("x-request-id");

    let peer_text = peer.to_string();
    let xff = if peer_trusted {
        let prior: Vec<&[u8]> = headers.get_all(&XFF).iter().map(|v| v.as_bytes()).collect();
        if prior.is_empty() {
            HeaderValue::from_str(&peer_text).ok()
        } else {
            let mut joined = prior.join(&b", "[..]);
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(peer_text.as_bytes());
            HeaderValue::from_bytes(&joined).ok()
        }
    } else {
        HeaderValue::from_str(&peer_text).ok()
    };
    if let Some(v) = xff {
        headers.insert(XFF, v);
    }
    if !(peer_trusted && headers.contains_key(&XFP)) {
        headers.insert(XFP, HeaderValue::from_static(proto));
    }
    if !(peer_trusted && headers.contains_key(&XFH)) {
        match host {
            Some(h) => {
                headers.insert(XFH, h.clone());
            }
            None => {
                headers.remove(&XFH);
            }
        }
    }
    headers.insert(XRID, request_id.clone());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_named_fields() {
        let mut h = HeaderMap::new();
        h.insert("connection", "keep-alive, X-Secret, close".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("transfer-encoding", "chunked".parse().unwrap());
        h.insert("content-length", "5".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        h.insert("x-kept", "yes".parse().unwrap());
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn upgrade_detection_needs_both_headers() {
        let mut h = HeaderMap::new();
        h.insert("upgrade", "websocket".parse().unwrap());
        assert!(!is_upgrade_request(&h));
        h.insert("connection", "keep-alive, Upgrade".parse().unwrap());
        assert!(is_upgrade_request(&h));
    }
}
