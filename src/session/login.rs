//! Reading a login: the user name from the request (a urlencoded form field or a JSON
//! member) or from an upstream response header, and the outcome from the response
//! (status, redirect location, a marker header).

use http::header::LOCATION;
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

/// Why a login request's user name cannot be read: the request is refused (400) and
/// counted as a failed login for the client address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserFieldError {
    /// The body does not parse as its declared type, or is not a form, multipart or JSON.
    Unparsable,
    Missing,
    /// The field appears more than once (two parsers could pick different ones).
    Repeated,
}

impl UserFieldError {
    pub fn message(self) -> &'static str {
        match self {
            UserFieldError::Unparsable => "login body is not a readable form or JSON",
            UserFieldError::Missing => "login request without its user field",
            UserFieldError::Repeated => "login request with its user field more than once",
        }
    }
}

/// The user name in a login request body, read with the WAF's request model (the same
/// form, multipart and JSON parsers, so the login phase and the rules see one request):
/// exactly one occurrence of the policy's field (a dotted path for JSON). `Ok(None)` when
/// the policy names no field.
pub fn user_from_body(
    policy: &LoginPolicy,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Option<String>, UserFieldError> {
    use crate::waf::request::{BodyParse, Items, RequestParts};
    use crate::waf::rule::Kind;
    let Some(field) = policy.user_field.as_deref() else {
        return Ok(None);
    };
    let mut items = Items::default();
    items.repeat_names = true;
    items.collect(
        &RequestParts {
            method: "POST",
            target: "/",
            canonical: None,
            version: "HTTP/1.1",
            headers,
            body: Some(body),
            client_ip: None,
        },
        Kind::BodyArg.bit(),
    );
    match items.body {
        Some(BodyParse::Ok) => {}
        None if body.is_empty() => return Err(UserFieldError::Missing),
        _ => return Err(UserFieldError::Unparsable),
    }
    let mut found = items
        .items
        .iter()
        .filter(|i| i.kind == Kind::BodyArg && items.name(i) == field.as_bytes());
    let first = found.next().ok_or(UserFieldError::Missing)?;
    if found.next().is_some() {
        return Err(UserFieldError::Repeated);
    }
    let user = std::str::from_utf8(items.value(first)).map_err(|_| UserFieldError::Unparsable)?;
    clean(user).map(Some).ok_or(UserFieldError::Missing)
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
    use http::header::CONTENT_TYPE;
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
        let user = |p: &LoginPolicy, h: &HeaderMap, b: &[u8]| user_from_body(p, h, b);
        assert_eq!(
            user(&p, &h, b"password=x&username=Al%C3%AFce+B"),
            Ok(Some("Alïce B".into()))
        );
        assert_eq!(
            user(&p, &h, b"username=a&username=b"),
            Err(UserFieldError::Repeated)
        );
        assert_eq!(user(&p, &h, b"password=x"), Err(UserFieldError::Missing));
        assert_eq!(
            user(&p, &h, b"username=+&p=1"),
            Err(UserFieldError::Missing)
        );
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        assert_eq!(
            user(&p, &h, br#"{"username":"bob"}"#),
            Ok(Some("bob".into()))
        );
        assert_eq!(
            user(&p, &h, br#"{"username":"bob","username":"admin"}"#),
            Err(UserFieldError::Repeated)
        );
        assert_eq!(
            user(&p, &h, br#"{"username":["bob","admin"]}"#),
            Err(UserFieldError::Repeated)
        );
        let mut nested = policy();
        nested.user_field = Some("auth.user".into());
        assert_eq!(
            user(&nested, &h, br#"{"auth":{"user":"carol"}}"#),
            Ok(Some("carol".into()))
        );
        assert_eq!(user(&p, &h, b"not json"), Err(UserFieldError::Unparsable));
        h.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert_eq!(user(&p, &h, b"username=x"), Err(UserFieldError::Unparsable));

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
