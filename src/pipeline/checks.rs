//! Phase 1, request checks: protocol hygiene and the canonical request view, before any
//! decision is taken on the request.
//!
//! - sizes (target, header count and bytes), one `Host`, framing headers, one
//!   `Content-Type`;
//! - the canonical host and path ([`crate::canonical`]): the request is rewritten in place,
//!   so every later phase, the events, the access log and the upstream read the one
//!   canonical spelling; what was sent is kept for the WAF's raw targets and for routes
//!   that forward it ([`ForwardTarget::Original`]). Decisions take the path without its
//!   `;parameters`, which the upstream still receives;
//! - body encodings the inspection cannot read: a request `Content-Encoding` (unless
//!   `requests.content_encoding = "decode"`, and then only gzip or deflate), or a form or
//!   JSON body in a charset other than UTF-8, US-ASCII or ISO-8859-1 → 415;
//! - identity headers: from a peer that is not a trusted proxy, headers that name a client,
//!   a URL or a prefix (`Forwarded`, `X-Real-IP`, `X-Original-URL`…) and header names with
//!   `_` (which some servers read as `-`) are dropped; `Upgrade` is kept only for the
//!   configured protocols.
//!
//! Every refusal is a `(status, message)` the pipeline answers with a JSON error.

use http::header::{self, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{Request, StatusCode, Version};

use crate::canonical::{canonical_host, canonical_path, without_parameters, Escapes, PathError};
use crate::runtime::{RequestPolicy, Runtime};

/// Which target the upstream receives on a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForwardTarget {
    /// The canonical target: exactly what the checks decided on.
    #[default]
    Canonical,
    /// The target as the client sent it. The upstream may read it differently from the
    /// gateway (a path the gateway saw as `/public/x` may be `/admin` to it): only for
    /// applications that need the original bytes and enforce nothing by path.
    Original,
}

/// A refusal: status and message.
pub type Refusal = (StatusCode, &'static str);

/// What the checks learned.
#[derive(Default)]
pub struct Checked {
    /// The target as sent, when the canonical one differs.
    pub original_uri: Option<Box<Uri>>,
    /// The path kept an escape that only routes with `path_escapes = "keep"` accept.
    pub kept_escape: Option<PathError>,
    /// The canonical target with its path parameters, when the request now holds it
    /// without them (for decisions): what the upstream receives.
    pub upstream_uri: Option<Box<Uri>>,
}

/// Runs the checks and rewrites `req` to its canonical form.
pub fn check<B>(
    rt: &Runtime,
    tls: bool,
    peer_trusted: bool,
    req: &mut Request<B>,
) -> Result<Checked, Refusal> {
    let mut facts = HeaderFacts::of(req.headers(), &rt.requests, peer_trusted);
    limits(rt, req, &facts)?;
    let mut checked = Checked::default();
    canonical_host_of(req, facts.host.take(), tls)?;
    canonical_target(req, &mut checked)?;
    checked.upstream_uri = parameters_left_out(req).map(Box::new);
    body_encoding(rt, req, &facts)?;
    identity_headers(rt, &facts, req);
    Ok(checked)
}

/// What phase 1 needs to know about the header fields, from one pass over them (a lookup
/// per field name would hash each name again).
#[derive(Default)]
struct HeaderFacts {
    bytes: usize,
    hosts: u32,
    /// The (first) `Host` field.
    host: Option<HeaderValue>,
    content_types: u32,
    content_encoding: bool,
    transfer_encoding: bool,
    content_length: bool,
    upgrade: bool,
    /// A field only a trusted proxy may send is present (looked for only when the peer is
    /// not one).
    untrusted: bool,
}

impl HeaderFacts {
    fn of(headers: &http::HeaderMap, policy: &RequestPolicy, peer_trusted: bool) -> HeaderFacts {
        let mut f = HeaderFacts::default();
        for (name, value) in headers {
            f.bytes += name.as_str().len() + value.len();
            if name == header::HOST {
                f.hosts += 1;
                if f.host.is_none() {
                    f.host = Some(value.clone());
                }
            } else if name == header::CONTENT_TYPE {
                f.content_types += 1;
            } else if name == header::CONTENT_ENCODING {
                f.content_encoding = true;
            } else if name == header::TRANSFER_ENCODING {
                f.transfer_encoding = true;
            } else if name == header::CONTENT_LENGTH {
                f.content_length = true;
            } else if name == header::UPGRADE {
                f.upgrade = true;
            } else if !peer_trusted && !f.untrusted {
                f.untrusted = policy.drops(name);
            }
        }
        f
    }
}

/// Protocol hygiene the gateway enforces itself (hyper already refuses malformed framing,
/// drops `Content-Length` when `Transfer-Encoding` is present and closes such connections).
fn limits<B>(rt: &Runtime, req: &Request<B>, f: &HeaderFacts) -> Result<(), Refusal> {
    let limits = &rt.limits;
    let uri_len = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if uri_len > limits.max_uri_bytes {
        return Err((StatusCode::URI_TOO_LONG, "request target too long"));
    }
    if req.headers().len() > limits.max_header_count {
        return Err((
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "too many header fields",
        ));
    }
    if f.bytes > limits.max_header_bytes {
        return Err((
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "header fields too large",
        ));
    }
    if f.hosts > 1 {
        return Err((StatusCode::BAD_REQUEST, "more than one Host header"));
    }
    if req.version() == Version::HTTP_11 && f.hosts == 0 {
        return Err((StatusCode::BAD_REQUEST, "missing Host header"));
    }
    if f.transfer_encoding && f.content_length {
        return Err((
            StatusCode::BAD_REQUEST,
            "both Content-Length and Transfer-Encoding",
        ));
    }
    if f.content_types > 1 {
        return Err((StatusCode::BAD_REQUEST, "more than one Content-Type header"));
    }
    Ok(())
}

/// The `Host` header (or `:authority`, or an absolute-form target's authority) in its
/// canonical form; a `Host` that disagrees with the target's authority is refused.
fn canonical_host_of<B>(
    req: &mut Request<B>,
    host: Option<HeaderValue>,
    tls: bool,
) -> Result<(), Refusal> {
    const BAD_HOST: Refusal = (StatusCode::BAD_REQUEST, "invalid Host");
    let from_target = match req.uri().authority() {
        Some(a) if req.method() != http::Method::CONNECT => {
            Some(canonical_host(a.as_str(), tls).map_err(|_| BAD_HOST)?)
        }
        _ => None,
    };
    let header = match &host {
        Some(v) => {
            // UTF-8 is enough here: `canonical_host` accepts nothing but ASCII host bytes.
            let text = std::str::from_utf8(v.as_bytes()).map_err(|_| BAD_HOST)?;
            Some(canonical_host(text, tls).map_err(|_| BAD_HOST)?)
        }
        None => None,
    };
    let replacement = match (&header, &from_target) {
        (Some(h), Some(t)) if h != t => {
            return Err((StatusCode::BAD_REQUEST, "Host and request target disagree"));
        }
        (Some(h), _) if matches!(h, std::borrow::Cow::Owned(_)) => Some(h.to_string()),
        (None, Some(t)) if matches!(t, std::borrow::Cow::Owned(_)) => Some(t.to_string()),
        _ => None,
    };
    if let Some(h) = replacement {
        let v = HeaderValue::try_from(h).map_err(|_| BAD_HOST)?;
        req.headers_mut().insert(header::HOST, v);
    }
    Ok(())
}

/// The canonical path, written back into the request's target when it differs (an
/// absolute-form HTTP/1 target becomes origin-form: its authority is the `Host` now).
fn canonical_target<B>(req: &mut Request<B>, checked: &mut Checked) -> Result<(), Refusal> {
    let uri = req.uri();
    let path = uri.path();
    if !path.starts_with('/') {
        // `OPTIONS *` and `CONNECT host:port` have no path to canonicalize.
        return Ok(());
    }
    let canonical = match canonical_path(path, Escapes::Reject) {
        Ok(p) => p,
        Err(e) if e.keepable() => {
            checked.kept_escape = Some(e);
            canonical_path(path, Escapes::Keep).map_err(path_refusal)?
        }
        Err(e) => return Err(path_refusal(e)),
    };
    let absolute_h1 = req.version() < Version::HTTP_2 && uri.scheme().is_some();
    if matches!(canonical, std::borrow::Cow::Borrowed(_)) && !absolute_h1 {
        return Ok(());
    }
    let new = with_path(uri, canonical.into_owned(), !absolute_h1)
        .ok_or((StatusCode::BAD_REQUEST, "bad request target"))?;
    checked.original_uri = Some(Box::new(std::mem::replace(req.uri_mut(), new)));
    Ok(())
}

/// The request's path without its `;parameters` (for decisions); returns the target with
/// them, which the upstream receives.
fn parameters_left_out<B>(req: &mut Request<B>) -> Option<Uri> {
    let uri = req.uri();
    let std::borrow::Cow::Owned(path) = without_parameters(uri.path()) else {
        return None;
    };
    let decided = with_path(uri, path, true)?;
    Some(std::mem::replace(req.uri_mut(), decided))
}

/// `uri` with another path (its query kept); without its scheme and authority (origin
/// form) unless `keep_authority`.
fn with_path(uri: &Uri, mut pq: String, keep_authority: bool) -> Option<Uri> {
    if let Some(q) = uri.query() {
        pq.push('?');
        pq.push_str(q);
    }
    let mut parts = http::uri::Parts::default();
    if keep_authority {
        parts.scheme = uri.scheme().cloned();
        parts.authority = uri.authority().cloned();
    }
    parts.path_and_query = PathAndQuery::try_from(pq).ok();
    Uri::from_parts(parts).ok()
}

/// On a `case_insensitive` route: the path lower-cased (ASCII) for every decision after
/// routing; returns the target with its case, which the upstream receives.
pub fn lower_case_path<B>(req: &mut Request<B>) -> Option<Uri> {
    let uri = req.uri();
    if !uri.path().bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    let lower = with_path(uri, uri.path().to_ascii_lowercase(), true)?;
    Some(std::mem::replace(req.uri_mut(), lower))
}

pub fn path_refusal(e: PathError) -> Refusal {
    let message = match e {
        PathError::MalformedEscape => "malformed percent-escape in the path",
        PathError::DotParameter => "dot segment with a path parameter",
        PathError::AboveRoot => "path climbs above the root",
        PathError::EncodedSlash => "encoded slash in the path",
        PathError::Backslash => "backslash in the path",
        PathError::Nul => "encoded NUL in the path",
        PathError::InvalidUtf8 => "path is not valid UTF-8",
    };
    (StatusCode::BAD_REQUEST, message)
}

/// Bodies the inspection would read differently from the application: compressed, or in
/// a charset the parsers do not decode.
fn body_encoding<B>(rt: &Runtime, req: &Request<B>, f: &HeaderFacts) -> Result<(), Refusal> {
    if f.content_types == 0 && !f.content_encoding {
        return Ok(());
    }
    let headers = req.headers();
    let policy = &rt.requests;
    let coding = crate::waf::coding::Coding::of(headers);
    let refused = match coding {
        Ok(None) => false,
        Ok(Some(_)) => !policy.decode_content,
        Err(_) => true,
    };
    if refused {
        return Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "request Content-Encoding is not accepted",
        ));
    }
    let Some(ctype) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let ctype = ctype.as_bytes();
    let mut params = ctype.split(|&b| b == b';');
    let mime = params.next().unwrap_or_default().trim_ascii();
    let inspected = mime.eq_ignore_ascii_case(b"application/x-www-form-urlencoded")
        || mime.eq_ignore_ascii_case(b"multipart/form-data")
        || mime.eq_ignore_ascii_case(b"application/json")
        || (mime.len() > 5 && mime[mime.len() - 5..].eq_ignore_ascii_case(b"+json"));
    if !inspected {
        return Ok(());
    }
    for p in params {
        let Some(eq) = p.iter().position(|&b| b == b'=') else {
            continue;
        };
        if !p[..eq].trim_ascii().eq_ignore_ascii_case(b"charset") {
            continue;
        }
        let value = p[eq + 1..].trim_ascii();
        let value = value
            .strip_prefix(b"\"")
            .and_then(|v| v.strip_suffix(b"\""))
            .unwrap_or(value);
        if !policy
            .body_charsets
            .iter()
            .any(|c| c.as_bytes().eq_ignore_ascii_case(value))
        {
            return Err((
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "request body charset is not accepted",
            ));
        }
    }
    Ok(())
}

/// Headers only a trusted proxy may set, and upgrades that are not configured.
fn identity_headers<B>(rt: &Runtime, f: &HeaderFacts, req: &mut Request<B>) {
    let policy = &rt.requests;
    let headers = req.headers_mut();
    if f.untrusted {
        let names: Vec<HeaderName> = headers
            .keys()
            .filter(|k| policy.drops(k))
            .cloned()
            .collect();
        for n in names {
            headers.remove(n);
        }
    }
    if !f.upgrade {
        return;
    }
    if let Some(up) = headers.get(header::UPGRADE) {
        let allowed = up.as_bytes().split(|&b| b == b',').all(|t| {
            let proto = t.trim_ascii();
            let proto = proto.split(|&b| b == b'/').next().unwrap_or(proto);
            policy
                .upgrades
                .iter()
                .any(|u| u.as_bytes().eq_ignore_ascii_case(proto))
        });
        if !allowed {
            headers.remove(header::UPGRADE);
        }
    }
}
