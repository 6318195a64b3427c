//! `GET /v1/flags`: the Client Config API, served from the set's view.

use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH, RETRY_AFTER};
use http::{HeaderMap, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

use super::route::{self, Body};
use super::sets::{Params, Set};
use super::view::View;
use super::State;
use crate::config::{Client, Distribution, Environment};
use crate::error::UnknownValue;
use crate::status::Status;

/// How long a request waits for the first flags of a set that is still initialising (its cache
/// loading, or its first fetch): a restarted relay's first client gets the cached flags instead
/// of a 503 (the load runs beside the poller, after the request started it), and a one-attempt
/// client of a cold relay gets the fetch if upstream answers quickly. A set whose first fetch
/// failed answers 503 at once.
const FIRST_FLAGS_WAIT: Duration = Duration::from_secs(1);

/// The parameter set a query names, started if need be; else the error to answer.
pub(crate) fn set_of(
    request: &Request<Incoming>,
    state: &State,
) -> Result<Arc<Set>, Box<Response<Body>>> {
    let params = parse_query(request.uri().query(), state.sets.defaults)
        .map_err(|unknown| Box::new(unknown_value(&unknown)))?;
    state.sets.get(params).map_err(|error| {
        tracing::error!(%error, "relay could not start an upstream poller");
        Box::new(route::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "GENERAL",
            "upstream poller failed to start",
        ))
    })
}

pub(super) async fn flags(request: &Request<Incoming>, state: &State) -> Response<Body> {
    let set = match set_of(request, state) {
        Ok(set) => set,
        Err(response) => return *response,
    };
    let Some(view) = first_view(&set).await else {
        let mut response = route::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "FLAGS_NOT_READY",
            "no flags from upstream yet",
        );
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    };
    let fresh = matches_etag(request.headers(), view.etag_str());
    let mut response = Response::new(route::full(if fresh {
        bytes::Bytes::new()
    } else {
        view.body.clone()
    }));
    if fresh {
        *response.status_mut() = StatusCode::NOT_MODIFIED;
    }
    cache_headers(response.headers_mut(), &view, state);
    if !fresh {
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    response
}

/// The set's view; while it has none and its first outcome (cache load or fetch) has not come,
/// waits for it up to [`FIRST_FLAGS_WAIT`].
async fn first_view(set: &Set) -> Option<Arc<View>> {
    if let Some(view) = set.view() {
        return Some(view);
    }
    let mut status = set.flags.status_receiver();
    let first = async {
        tokio::select! {
            _ = set.flags.ready() => {}
            _ = status.wait_for(|s| !matches!(s, Status::Initializing)) => {}
        }
    };
    let _ = tokio::time::timeout(FIRST_FLAGS_WAIT, first).await;
    set.view()
}

/// `ETag`, `Cache-Control: max-age=<freshness left>` and `X-Flagpole-Source`.
pub(crate) fn cache_headers(headers: &mut HeaderMap, view: &View, state: &State) {
    headers.insert(ETAG, view.etag.clone());
    let now = crate::clock::ms_since_epoch(std::time::SystemTime::now());
    let age = now.saturating_sub(view.cache_timestamp) / 1000;
    let left = state.sets.interval.as_secs().saturating_sub(age);
    if let Ok(value) = HeaderValue::from_str(&format!("max-age={left}")) {
        headers.insert(CACHE_CONTROL, value);
    }
    headers.insert(
        "x-flagpole-source",
        HeaderValue::from_static(view.source.as_str()),
    );
}

/// Whether `If-None-Match` names the tag (or is `*`). Weak comparison, as RFC 9110 asks for
/// `If-None-Match`: `W/"x"` matches `"x"`.
pub(crate) fn matches_etag(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|tag| tag.trim().trim_start_matches("W/"))
        .any(|tag| tag == etag || tag == "*")
}

/// The parameters of a query; those it does not name are the relay's defaults. Other
/// parameters (`user=` among them) are ignored: never forwarded, logged or stored.
pub(crate) fn parse_query(query: Option<&str>, defaults: Params) -> Result<Params, UnknownValue> {
    let mut params = defaults;
    for (name, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match &*name {
            "client" => params.client = value.parse::<Client>()?,
            "distribution" => params.distribution = value.parse::<Distribution>()?,
            "environment" => params.environment = value.parse::<Environment>()?,
            _ => {}
        }
    }
    Ok(params)
}

/// 400 naming the parameter, the value and the accepted ones.
pub(crate) fn unknown_value(unknown: &UnknownValue) -> Response<Body> {
    route::json(
        StatusCode::BAD_REQUEST,
        &json!({
            "errorCode": "INVALID_PARAMETER",
            "errorDetails": unknown.to_string(),
            "parameter": unknown.kind,
            "accepted": unknown.expected,
        }),
    )
}
