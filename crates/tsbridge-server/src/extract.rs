//! Request extractors whose rejections are API errors: [`ApiJson`] (bad JSON,
//! wrong types, unknown fields and a body declared as something other than
//! JSON are 400 `ValidationError`; a body over the limit is 413
//! `PayloadTooLarge`) and job ids from the path.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, StatusCode, header};
use serde::de::DeserializeOwned;
use tsbridge_proto::{ErrorType, JobId};

use crate::errors::ApiError;

/// A JSON body. SPEC §8: "All bodies are JSON", so a body declared as
/// another kind of document (`multipart/form-data`, XML...) is refused with
/// 400 `ValidationError` even when its bytes happen to parse. Accepted: no
/// `Content-Type`, `application/json`, any `application/*+json`, and the two
/// types clients send by default with a JSON string: `text/plain` (fetch's,
/// for a string body) and `application/x-www-form-urlencoded` (curl's `-d`).
/// The body must parse as JSON either way, so a real form or text is
/// refused. (Cross-site "simple" requests, which can carry these types, are
/// stopped by the token or, without tokens, by the `Origin`/`Host` guard:
/// docs/design/http-api.md.)
#[derive(Debug, Clone)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        check_content_type(req.headers())?;
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|rej| match rej.status() {
                StatusCode::PAYLOAD_TOO_LARGE => payload_too_large(),
                _ => ApiError::validation(format!(
                    "cannot read the request body: {}",
                    rej.body_text()
                )),
            })?;
        parse_body(&bytes).map(ApiJson)
    }
}

/// Refuses a body whose declared type is not JSON (see [`ApiJson`]).
pub fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    // The media type without parameters (`; charset=utf-8`), compared
    // case-insensitively in place: this runs on every request with a body.
    let bytes = value.as_bytes();
    let essence = bytes
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    let is = |t: &[u8]| essence.eq_ignore_ascii_case(t);
    let prefixed = |p: &[u8], at_end: bool| {
        essence.len() > p.len() && {
            let part = if at_end {
                &essence[essence.len() - p.len()..]
            } else {
                &essence[..p.len()]
            };
            part.eq_ignore_ascii_case(p)
        }
    };
    let json =
        is(b"application/json") || (prefixed(b"application/", false) && prefixed(b"+json", true));
    if json || is(b"application/x-www-form-urlencoded") || is(b"text/plain") {
        return Ok(());
    }
    let raw = String::from_utf8_lossy(bytes);
    Err(ApiError::validation(format!(
        "unsupported Content-Type {raw:?}: request bodies are JSON (application/json)"
    )))
}

pub(crate) fn payload_too_large() -> ApiError {
    ApiError::new(
        ErrorType::PayloadTooLarge,
        "request body is larger than the server accepts (server.max_body)",
    )
}

/// Parses a JSON body (every body of the API is an object) into `T` with a
/// message that says what is wrong. Another JSON value is refused before
/// serde sees it: serde reads a struct from an array too (`["w", {}]` as
/// `{"workflow": "w", "parameters": {}}`), which no client means.
pub fn parse_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        None => {
            return Err(ApiError::validation(
                "request body is empty: expected a JSON object",
            ));
        }
        Some(b'{') => {}
        Some(_) => {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(bytes) {
                return Err(ApiError::validation(format!(
                    "invalid request body: expected a JSON object, got {}",
                    json_kind(&v)
                )));
            }
        }
    }
    serde_json::from_slice(bytes).map_err(|e| {
        let what = match e.classify() {
            serde_json::error::Category::Data => "invalid request body",
            _ => "request body is not valid JSON",
        };
        ApiError::validation(format!("{what}: {e}"))
    })
}

/// What a JSON value is, in the words of serde's messages.
fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// A job id from a path segment; anything that is not one names no job (404).
pub fn job_id(raw: &str) -> Result<JobId, ApiError> {
    raw.parse::<JobId>()
        .map_err(|_| ApiError::not_found(format!("no job {raw:?}")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tsbridge_proto::api::SubmitRequest;

    #[test]
    fn messages_say_what_is_wrong() {
        let e = parse_body::<SubmitRequest>(b"{nope").unwrap_err();
        assert_eq!(e.kind, ErrorType::ValidationError);
        assert!(
            e.message.starts_with("request body is not valid JSON"),
            "{}",
            e.message
        );
        let e = parse_body::<SubmitRequest>(br#"{"workflow":1}"#).unwrap_err();
        assert!(e.message.contains("invalid type"), "{}", e.message);
        let e = parse_body::<SubmitRequest>(br#"{"workflow":"a","bogus":1}"#).unwrap_err();
        assert!(e.message.contains("unknown field `bogus`"), "{}", e.message);
        let e = parse_body::<SubmitRequest>(b"  ").unwrap_err();
        assert!(e.message.contains("empty"), "{}", e.message);
        let e = parse_body::<SubmitRequest>(br#" ["w", {}]"#).unwrap_err();
        assert!(
            e.message.ends_with("expected a JSON object, got an array"),
            "{}",
            e.message
        );
        let e = parse_body::<SubmitRequest>(b"[nope").unwrap_err();
        assert!(
            e.message.starts_with("request body is not valid JSON"),
            "{}",
            e.message
        );
        assert_eq!(job_id("x").unwrap_err().kind, ErrorType::NotFound);
    }

    #[test]
    fn only_json_content_types_are_accepted() {
        let with = |ct: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, ct.parse().unwrap());
            check_content_type(&h)
        };
        assert!(check_content_type(&HeaderMap::new()).is_ok());
        for ok in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/vnd.api+json",
            "application/x-www-form-urlencoded",
            "text/plain",
            "text/plain;charset=UTF-8",
        ] {
            assert!(with(ok).is_ok(), "{ok}");
        }
        for bad in [
            "text/html",
            "multipart/form-data; boundary=x",
            "application/xml",
            "",
        ] {
            let e = with(bad).unwrap_err();
            assert_eq!(e.kind, ErrorType::ValidationError, "{bad}");
            assert!(e.message.contains("Content-Type"), "{}", e.message);
        }
    }
}
