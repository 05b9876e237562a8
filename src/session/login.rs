//! Reading a login: the user name from the request (a urlencoded form field or a JSON
//! member) or from an upstream response header, and the outcome from the response
//! (status, redirect location, a marker header).

use http::header::{CONTENT_TYPE, LOCATION};
use http::{HeaderMap, StatusCode};

use super::policy::LoginPolicy;

/// Longest user name kept (longer ones are cut).
pub const MAX_USER: usize = 256;

/// How a login ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    Failed,
    /// The upstream failed (5xx): not counted either way.
    Unknown,
}

/// The user name in a login request body, when the policy names a field.
pub fn user_from_body(policy: &LoginPolicy, headers: &HeaderMap, body: &[u8]) -> Option<String> {
    let field = policy.user_field.as_deref()?;
    let ctype = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let user = if ctype.starts_with("application/x-www-form-urlencoded") {
        form_urlencoded::parse(body)
            .find(|(k, _)| k == field)
            .map(|(_, v)| v.into_owned())
    } else if ctype.starts_with("application/json") || ctype.contains("+json") {
        let doc: serde_json::Value = serde_json::from_slice(body).ok()?;
        let mut cur = &doc;
        for part in field.split('.') {
            cur = cur.get(part)?;
        }
        match cur {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    } else {
        None
    }?;
    clean(&user)
}

/// The user name in an upstream response header.
pub fn user_from_response(policy: &LoginPolicy, headers: &HeaderMap) -> Option<String> {
    let name = policy.user_header.as_ref()?;
    clean(headers.get(name)?.to_str().ok()?)
}

fn clean(user: &str) -> Option<String> {
    let user = user.trim();
    if user.is_empty() {
        return None;
    }
    let mut end = user.len().min(MAX_USER);
    while !user.is_char_boundary(end) {
        end -= 1;
    }
    Some(user[..end].chars().filter(|c| !c.is_control()).collect())
}

/// The outcome of a login from its response head.
pub fn outcome(policy: &LoginPolicy, status: StatusCode, headers: &HeaderMap) -> Outcome {
    if status.is_server_error() {
        return Outcome::Unknown;
    }
    let status_ok = policy.success_status.contains(&status.as_u16());
    let location_ok = policy.success_location.as_deref().is_none_or(|want| {
        headers
            .get(LOCATION)
            .and_then(|l| l.to_str().ok())
            .is_some_and(|l| location_path(l).starts_with(want))
    });
    let header_ok = policy
        .success_header
        .as_ref()
        .is_none_or(|h| headers.contains_key(h));
    if status_ok && location_ok && header_ok {
        Outcome::Succeeded
    } else {
        Outcome::Failed
    }
}

/// The path of a `Location` (absolute URLs lose their scheme and authority).
fn location_path(l: &str) -> &str {
    match l.find("://") {
        Some(i) => {
            let rest = &l[i + 3..];
            rest.find('/').map_or("/", |j| &rest[j..])
        }
        None => l,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::policy::Endpoint;
    use http::HeaderValue;

    fn policy() -> LoginPolicy {
        LoginPolicy {
            endpoint: Endpoint {
                method: http::Method::POST,
                path: "/login".into(),
            },
            user_field: Some("username".into()),
            user_header: None,
            success_status: vec![302, 303],
            success_location: Some("/home".into()),
            success_header: None,
            max_body_bytes: 1024,
        }
    }

    #[test]
    fn reads_user_from_form_and_json_and_outcome_from_redirects() {
        let p = policy();
        let mut h = HeaderMap::new();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        assert_eq!(
            user_from_body(&p, &h, b"password=x&username=Al%C3%AFce+B").as_deref(),
            Some("Alïce B")
        );
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        assert_eq!(
            user_from_body(&p, &h, br#"{"username":"bob"}"#).as_deref(),
            Some("bob")
        );
        let mut nested = policy();
        nested.user_field = Some("auth.user".into());
        assert_eq!(
            user_from_body(&nested, &h, br#"{"auth":{"user":"carol"}}"#).as_deref(),
            Some("carol")
        );
        assert_eq!(user_from_body(&p, &h, b"not json"), None);

        let mut r = HeaderMap::new();
        r.insert(
            LOCATION,
            HeaderValue::from_static("https://app.example/home?x=1"),
        );
        assert_eq!(outcome(&p, StatusCode::SEE_OTHER, &r), Outcome::Succeeded);
        r.insert(LOCATION, HeaderValue::from_static("/login?error=1"));
        assert_eq!(outcome(&p, StatusCode::SEE_OTHER, &r), Outcome::Failed);
        assert_eq!(outcome(&p, StatusCode::OK, &r), Outcome::Failed);
        assert_eq!(outcome(&p, StatusCode::BAD_GATEWAY, &r), Outcome::Unknown);
    }
}
