//! Error responses the gateway itself produces: a short JSON body with the request id,
//! never internals (no upstream addresses, no error chains).

use http::{header, HeaderValue, Response, StatusCode};

use super::ResponseBody;

/// A gateway-made error response.
pub fn error_response(
    status: StatusCode,
    message: &str,
    request_id: &HeaderValue,
) -> Response<ResponseBody> {
    let rid = request_id.to_str().unwrap_or("");
    let body = format!(
        "{{\"error\":{},\"status\":{},\"request_id\":{}}}\n",
        json_str(message),
        status.as_u16(),
        json_str(rid)
    );
    let mut resp = Response::new(ResponseBody::full(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-request-id", request_id.clone());
    resp
}

/// A JSON string literal.
pub fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string())
}
