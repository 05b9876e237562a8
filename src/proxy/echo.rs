//! `builtin:echo`, the demo upstream: answers with a JSON echo of what it received (method,
//! path, query, headers as forwarded, body size). It runs in process, so the shipped config
//! works with nothing else installed, and it sees exactly what a real upstream would.
//!
//! It is also a tiny app with a login, so the session and brute-force protections have
//! something to protect: `GET /login` (a form), `POST /login` (form or JSON `username` and
//! `password`; password `demo` logs any user in with a `demo_session` cookie and a 303 to
//! `/`, anything else is a 401), `POST /logout` (clears the cookie, 303 to `/login`).

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Map, Value};

use super::body::{RequestBody, RequestBodyError};
use super::ResponseBody;

/// Answers one request. The body is read (bounded by the route limit the body enforces).
pub async fn answer(req: Request<RequestBody>) -> Result<Response<ResponseBody>, RequestBodyError> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    match (&parts.method, parts.uri.path()) {
        (&Method::GET, "/login") => return Ok(page(StatusCode::OK, LOGIN_FORM, None)),
        (&Method::POST, "/login") => return Ok(login(&body)),
        (&Method::POST, "/logout") => {
            let mut resp = page(StatusCode::SEE_OTHER, "logged out\n", Some("/login"));
            resp.headers_mut().insert(
                header::SET_COOKIE,
                HeaderValue::from_static("demo_session=; Path=/; Max-Age=0; HttpOnly"),
            );
            return Ok(resp);
        }
        _ => {}
    }
    let body_bytes = body.len();
    let mut headers = Map::new();
    for (name, value) in &parts.headers {
        let v = Value::String(String::from_utf8_lossy(value.as_bytes()).into_owned());
        match headers.get_mut(name.as_str()) {
            Some(Value::Array(a)) => a.push(v),
            _ => {
                headers.insert(name.as_str().to_string(), Value::Array(vec![v]));
            }
        }
    }
    let doc = serde_json::json!({
        "upstream": "builtin:echo",
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": headers,
        "body_bytes": body_bytes,
    });
    let mut text = serde_json::to_vec_pretty(&doc).unwrap_or_default();
    text.push(b'\n');
    let mut resp = Response::new(ResponseBody::full(text));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

/// The demo app's session cookie.
pub const DEMO_COOKIE: &str = "demo_session";
/// The demo app's password (for every user name).
pub const DEMO_PASSWORD: &str = "demo";

const LOGIN_FORM: &str = "<!doctype html><title>demo login</title>\
<form method=post action=/login>\
<label>user <input name=username></label> \
<label>password <input name=password type=password></label> \
<button>log in</button></form>\n";

fn page(
    status: StatusCode,
    text: &'static str,
    location: Option<&'static str>,
) -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::full(text));
    *resp.status_mut() = status;
    let kind = if text.starts_with('<') {
        "text/html; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    if let Some(l) = location {
        resp.headers_mut()
            .insert(header::LOCATION, HeaderValue::from_static(l));
    }
    resp
}

/// `POST /login`: user name and password from a form or a JSON object.
fn login(body: &Bytes) -> Response<ResponseBody> {
    let field = |name: &str| -> Option<String> {
        if let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(body) {
            return m.get(name).and_then(Value::as_str).map(str::to_string);
        }
        form_urlencoded::parse(body)
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    };
    let user = field("username").unwrap_or_default();
    if user.is_empty() || field("password").as_deref() != Some(DEMO_PASSWORD) {
        return page(
            StatusCode::UNAUTHORIZED,
            "wrong user name or password\n",
            None,
        );
    }
    let mut resp = page(StatusCode::SEE_OTHER, "logged in\n", Some("/"));
    let cookie = format!(
        "{DEMO_COOKIE}={}; Path=/; HttpOnly; SameSite=Lax",
        crate::secrets::random_hex::<16>()
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}
