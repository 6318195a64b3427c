//! OFREP, the OpenFeature Remote Evaluation Protocol (open-feature/protocol,
//! `service/openapi.yaml`): bulk and single evaluation, and the configuration endpoint.
//!
//! - `POST /ofrep/v1/evaluate/flags`: `{"flags": [evaluation, ..]}`, every flag the context is
//!   served, in name order, with an `ETag` over the set's flags and the context
//!   (`If-None-Match` → 304 with no body).
//! - `POST /ofrep/v1/evaluate/flags/{key}`: one evaluation, or 404
//!   `{"key", "errorCode": "FLAG_NOT_FOUND"}`.
//! - `GET /ofrep/v1/configuration`: the relay's name and capabilities, with an `ETag`.
//!
//! The body is `{"context": {...}}` (see [`request::parse_body`]; read as JSON whatever its
//! `Content-Type`, and an empty body is an empty context); the parameter set comes from
//! the `X-Flagpole-Client`, `-Distribution` and `-Environment` headers, else the relay's
//! defaults. Errors are `{"errorCode", "errorDetails"}`, plus `"key"` on the single endpoint as
//! the spec's evaluation failures require: 400 `PARSE_ERROR` (not JSON), 400 `INVALID_CONTEXT`
//! (wrong shapes, an invalid `clientVersion`, an unknown header value with `header` and
//! `accepted`), 413 / 408 `GENERAL` (a body over the limit / too slow), 503 `GENERAL` with
//! `Retry-After: 1` while the set has no flags yet (the spec names no status for that; this is
//! what `GET /v1/flags` answers too), 500 `GENERAL` when the set's poller cannot start.
//!
//! The evaluation context carries the user's ids: they are never logged, and the entity tag only
//! holds a hash of them.

mod evaluate;
mod request;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, ETAG, RETRY_AFTER};
use http::{HeaderMap, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::body::{self, BodyError};
use super::route::{self, Body};
use super::sets::Params;
use super::view::View;
use super::{api, State};
use crate::error::UnknownValue;
use crate::rollout::Identity;
use request::{ContextError, CLIENT_HEADER, DISTRIBUTION_HEADER, ENVIRONMENT_HEADER};

/// `POST /ofrep/v1/evaluate/flags`.
pub(super) async fn bulk(request: Request<Incoming>, state: &State) -> Response<Body> {
    let (params, headers, identity) = match evaluation_request(request, state).await {
        Ok(asked) => asked,
        Err(failure) => return failure.response(None),
    };
    let view = match view(state, params) {
        Ok(view) => view,
        Err(failure) => return failure.response(None),
    };
    let etag = evaluate::etag(view.etag_str(), params, &identity);
    let fresh = api::matches_etag(&headers, &etag);
    let mut response = if fresh {
        let mut response = Response::new(route::full(bytes::Bytes::new()));
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        response
    } else {
        let flags = evaluate::all(&view.raw, &identity);
        route::json(StatusCode::OK, &json!({ "flags": flags }))
    };
    let headers = response.headers_mut();
    api::cache_headers(headers, &view, state);
    // The answer is this context's own: no shared cache may keep it.
    if let Some(age) = headers.get(CACHE_CONTROL).and_then(|v| v.to_str().ok()) {
        if let Ok(value) = HeaderValue::from_str(&format!("private, {age}")) {
            headers.insert(CACHE_CONTROL, value);
        }
    }
    if let Ok(value) = HeaderValue::from_str(&etag) {
        headers.insert(ETAG, value);
    }
    response
}

/// `POST /ofrep/v1/evaluate/flags/{key}`; `raw_key` is the path's percent-encoded rest.
pub(super) async fn one(
    request: Request<Incoming>,
    raw_key: &str,
    state: &State,
) -> Response<Body> {
    // A key that is not UTF-8 once decoded names no flag; the error echoes it as it came.
    let decoded = request::decode_key(raw_key);
    let key = decoded.as_deref().unwrap_or(raw_key);
    let (params, _, identity) = match evaluation_request(request, state).await {
        Ok(asked) => asked,
        Err(failure) => return failure.response(Some(key)),
    };
    let view = match view(state, params) {
        Ok(view) => view,
        Err(failure) => return failure.response(Some(key)),
    };
    let evaluation = decoded
        .as_deref()
        .and_then(|key| evaluate::one(&view.raw, key, &identity));
    let Some(evaluation) = evaluation else {
        return Failure::NotFound.response(Some(key));
    };
    let mut response = route::json(StatusCode::OK, &evaluation);
    response.headers_mut().insert(
        "x-flagpole-source",
        HeaderValue::from_static(view.source.as_str()),
    );
    response
}

/// `GET /ofrep/v1/configuration`: `{"name", "capabilities": {"cacheInvalidation": {"polling":
/// {"enabled", "minPollingIntervalMs"}}, "flagEvaluation": {"supportedTypes"}}}`.
pub(super) fn configuration(request_headers: &HeaderMap, state: &State) -> Response<Body> {
    let body = configuration_body(state.sets.interval);
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    let digest = Sha256::digest(&bytes);
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    let etag = format!("\"{hex}\"");
    let fresh = api::matches_etag(request_headers, &etag);
    let mut response = Response::new(route::full(if fresh { Vec::new() } else { bytes }));
    if fresh {
        *response.status_mut() = StatusCode::NOT_MODIFIED;
    } else {
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    if let Ok(value) = HeaderValue::from_str(&etag) {
        response.headers_mut().insert(ETAG, value);
    }
    response
}

/// The configuration document. Both spellings of the spec's revisions are given
/// (`minPollingIntervalMs` / `minPollingInterval`, `supportedTypes` / `unsupportedTypes`), so
/// that older and newer providers read the same thing.
fn configuration_body(interval: Duration) -> Value {
    // The relay's own flags change at most once per upstream fetch; polling it faster than a
    // minute (or than a shorter fetch interval) buys little. Never below a second.
    let min_poll = interval
        .min(Duration::from_secs(60))
        .max(Duration::from_secs(1));
    let min_poll_ms = u64::try_from(min_poll.as_millis()).unwrap_or(u64::MAX);
    json!({
        "name": "flagpole",
        "capabilities": {
            "cacheInvalidation": {
                "polling": {
                    "enabled": true,
                    "minPollingIntervalMs": min_poll_ms,
                    "minPollingInterval": min_poll_ms,
                },
            },
            "flagEvaluation": {
                "supportedTypes": ["boolean", "string", "int", "float", "object"],
                "unsupportedTypes": [],
            },
        },
    })
}

/// The request's parameter set, headers and identity. The body is read first, whatever the
/// headers say, so that a refused request leaves the connection clean.
async fn evaluation_request(
    request: Request<Incoming>,
    state: &State,
) -> Result<(Params, HeaderMap, Identity), Failure> {
    let (parts, mut incoming) = request.into_parts();
    let bytes = body::read(
        &parts.headers,
        &mut incoming,
        state.limits.max_body_bytes,
        state.limits.header_read_timeout,
    )
    .await
    .map_err(Failure::Body)?;
    let params =
        request::parse_headers(&parts.headers, state.sets.defaults).map_err(Failure::Header)?;
    let identity = request::parse_body(&bytes).map_err(Failure::Context)?;
    Ok((params, parts.headers, identity))
}

/// The set's current view, started on first use.
fn view(state: &State, params: Params) -> Result<Arc<View>, Failure> {
    let set = state.sets.get(params).map_err(|error| {
        tracing::error!(%error, "relay could not start an upstream poller");
        Failure::Internal
    })?;
    set.view().ok_or(Failure::NotReady)
}

/// Every way an evaluation fails, and its answer.
#[derive(Debug)]
enum Failure {
    Body(BodyError),
    Header(UnknownValue),
    Context(ContextError),
    NotReady,
    Internal,
    NotFound,
}

impl Failure {
    /// The error response; `key` is given on the single-flag endpoint.
    fn response(&self, key: Option<&str>) -> Response<Body> {
        let (status, code) = match self {
            Failure::Body(BodyError::TooLarge { .. }) => (StatusCode::PAYLOAD_TOO_LARGE, "GENERAL"),
            Failure::Body(BodyError::Timeout) => (StatusCode::REQUEST_TIMEOUT, "GENERAL"),
            Failure::Body(BodyError::Unreadable) => (StatusCode::BAD_REQUEST, "PARSE_ERROR"),
            Failure::Header(_) => (StatusCode::BAD_REQUEST, "INVALID_CONTEXT"),
            Failure::Context(error) => (StatusCode::BAD_REQUEST, error.code()),
            Failure::NotReady => (StatusCode::SERVICE_UNAVAILABLE, "GENERAL"),
            Failure::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "GENERAL"),
            Failure::NotFound => (StatusCode::NOT_FOUND, "FLAG_NOT_FOUND"),
        };
        let details = match self {
            Failure::Body(error) => error.to_string(),
            Failure::Header(unknown) => unknown.to_string(),
            Failure::Context(error) => error.to_string(),
            Failure::NotReady => "no flags from upstream yet".to_owned(),
            Failure::Internal => "upstream poller failed to start".to_owned(),
            Failure::NotFound => "flag not found".to_owned(),
        };
        let mut body = Map::new();
        if let Some(key) = key {
            body.insert("key".to_owned(), Value::String(key.to_owned()));
        }
        body.insert("errorCode".to_owned(), Value::String(code.to_owned()));
        body.insert("errorDetails".to_owned(), Value::String(details));
        if let Failure::Header(unknown) = self {
            body.insert("header".to_owned(), json!(header_name(unknown.kind)));
            body.insert("accepted".to_owned(), json!(unknown.expected));
        }
        let mut response = route::json(status, &Value::Object(body));
        if let Failure::NotReady = self {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// The header that carries a parameter, as errors name it.
fn header_name(kind: &str) -> &'static str {
    match kind {
        "client" => CLIENT_HEADER,
        "distribution" => DISTRIBUTION_HEADER,
        _ => ENVIRONMENT_HEADER,
    }
}
