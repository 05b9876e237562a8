//! `builtin:echo`, the demo upstream: answers with a JSON echo of what it received (method,
//! path, query, headers as forwarded, body size). It runs in process, so the shipped config
//! works with nothing else installed, and it sees exactly what a real upstream would.

use http::{header, HeaderValue, Request, Response};
use http_body_util::BodyExt;
use serde_json::{Map, Value};

use super::body::{RequestBody, RequestBodyError};
use super::ResponseBody;

/// Answers one request. The body is read (bounded by the route limit the body enforces).
pub async fn answer(req: Request<RequestBody>) -> Result<Response<ResponseBody>, RequestBodyError> {
    let (parts, body) = req.into_parts();
    let body_bytes = body.collect().await?.to_bytes().len();
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
