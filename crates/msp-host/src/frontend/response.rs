//! Responses the front ends build: refusals in the shape of spec §12.4 (`{"error": "<code>"}`, status of the
//! reason, `x-msp-reason`) and plain JSON, XML and text bodies.
//!
//! This module must never echo request data into a response.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use msp_core::Reason;

pub(crate) type Resp = Response<Full<Bytes>>;

/// The extension header naming the reason of a non-2xx answer (spec §12.4).
pub(crate) const REASON_HEADER: &str = "x-msp-reason";

const JSON: &str = "application/json";
const JSON_UTF8: &str = "application/json; charset=utf-8";

fn build(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// A refusal: the reason's status, `{"error": "<code>"}` and `x-msp-reason` (spec §12.4).
pub(crate) fn refuse(reason: Reason) -> Resp {
    refuse_with(reason, reason.status())
}

/// A refusal with a status other than the reason's own (404 `KEY_UNKNOWN` on the attestation route, §12.2).
pub(crate) fn refuse_with(reason: Reason, status: u16) -> Resp {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    let body = format!("{{\"error\": \"{}\"}}", reason.code());
    let mut r = build(status, JSON, body);
    r.headers_mut()
        .insert(REASON_HEADER, HeaderValue::from_static(reason.code()));
    r
}

/// A refusal that also closes the connection (framing limits: the rest of the request is not read).
pub(crate) fn refuse_and_close(reason: Reason) -> Resp {
    let mut r = refuse(reason);
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

pub(crate) fn json(body: impl Into<Bytes>) -> Resp {
    build(StatusCode::OK, JSON_UTF8, body)
}

/// A JSON answer with another status, for service-level errors that mimic the real service's bodies.
pub(crate) fn json_status(status: StatusCode, body: impl Into<Bytes>) -> Resp {
    build(status, JSON_UTF8, body)
}

pub(crate) fn xml(body: impl Into<Bytes>) -> Resp {
    build(StatusCode::OK, "application/xml; charset=utf-8", body)
}

pub(crate) fn text(status: StatusCode, body: &'static str) -> Resp {
    build(status, "text/plain; charset=utf-8", body)
}

/// Adds `x-msp-reason` to a service-level error so clients and tests can tell the cause.
pub(crate) fn with_reason(mut r: Resp, reason: Reason) -> Resp {
    r.headers_mut()
        .insert(REASON_HEADER, HeaderValue::from_static(reason.code()));
    r
}

pub(crate) fn text_owned(body: String) -> Resp {
    build(StatusCode::OK, "text/plain; charset=utf-8", body)
}
