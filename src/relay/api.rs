//! `GET /v1/flags`: the Client Config API, served from the set's view.

use http::header::{
    HeaderName, HeaderValue, CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH, RETRY_AFTER,
};
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
            _ = status.wait_for(|s| !matches!(s, Status::Initializing { .. })) => {}
        }
    };
    let _ = tokio::time::timeout(FIRST_FLAGS_WAIT, first).await;
    set.view()
}

/// `X-Flagpole-Source`, named once (a name given as `&str` is parsed on every insert).
pub(crate) const X_FLAGPOLE_SOURCE: HeaderName = HeaderName::from_static("x-flagpole-source");

/// `ETag`, `Cache-Control: max-age=<freshness left>` and `X-Flagpole-Source`.
pub(crate) fn cache_headers(headers: &mut HeaderMap, view: &View, state: &State) {
    headers.insert(ETAG, view.etag.clone());
    let now = crate::clock::ms_since_epoch(std::time::SystemTime::now());
    let age = now.saturating_sub(view.cache_timestamp) / 1000;
    let left = state.sets.interval.as_secs().saturating_sub(age);
    headers.insert(CACHE_CONTROL, max_age(left));
    headers.insert(
        X_FLAGPOLE_SOURCE,
        HeaderValue::from_static(view.source.as_str()),
    );
}

/// `max-age=<seconds>`, written in place (no `format!` and its `String` per request).
fn max_age(mut seconds: u64) -> HeaderValue {
    const PREFIX: &[u8] = b"max-age=";
    let mut text = [0u8; PREFIX.len() + 20];
    text[..PREFIX.len()].copy_from_slice(PREFIX);
    let mut digits = 1;
    while 10u64.checked_pow(digits).is_some_and(|p| p <= seconds) {
        digits += 1;
    }
    let end = PREFIX.len() + digits as usize;
    for at in (PREFIX.len()..end).rev() {
        text[at] = b'0' + (seconds % 10) as u8;
        seconds /= 10;
    }
    HeaderValue::from_bytes(&text[..end]).expect("ASCII digits are a valid header")
}

/// Whether `If-None-Match` names the tag (or is `*`). Weak comparison, as RFC 9110 asks for
/// `If-None-Match`: `W/"x"` matches `"x"`.
pub(crate) fn matches_etag(headers: &HeaderMap, etag: &str) -> bool {
    let values = headers.get_all(IF_NONE_MATCH);
    // The usual conditional request sends back the one tag it got: compared as is.
    values
        .iter()
        .any(|value| value.as_bytes() == etag.as_bytes())
        || values
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(|tag| tag.trim().trim_start_matches("W/"))
            .any(|tag| tag == etag || tag == "*")
}

/// The parameters of a query; those it does not name are the relay's defaults. Other
/// parameters (`user=` among them) are ignored: never forwarded, logged or stored.
pub(crate) fn parse_query(query: Option<&str>, defaults: Params) -> Result<Params, UnknownValue> {
    let query = query.unwrap_or("");
    let mut params = defaults;
    // The usual query (`client=extension&distribution=main&environment=prod`) has nothing to
    // decode: split in place, as `form_urlencoded` would, without its decoding (a copy per pair).
    if !query.bytes().any(|b| b == b'%' || b == b'+') {
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            set_param(&mut params, name, value)?;
        }
        return Ok(params);
    }
    for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
        set_param(&mut params, &name, &value)?;
    }
    Ok(params)
}

fn set_param(params: &mut Params, name: &str, value: &str) -> Result<(), UnknownValue> {
    match name {
        "client" => params.client = value.parse::<Client>()?,
        "distribution" => params.distribution = value.parse::<Distribution>()?,
        "environment" => params.environment = value.parse::<Environment>()?,
        _ => {}
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(query: &str, defaults: Params) -> Result<Params, UnknownValue> {
        let mut params = defaults;
        for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
            set_param(&mut params, &name, &value)?;
        }
        Ok(params)
    }

    #[test]
    fn plain_queries_parse_as_form_urlencoded_does() {
        let defaults = Params {
            client: Client::Extension,
            distribution: Distribution::Main,
            environment: Environment::Prod,
        };
        for query in [
            "",
            "&&",
            "client=mobile",
            "client=mobile&distribution=flask&environment=dev&user=someone",
            "user&client=mobile&=x&environment",
            "environment=test&environment=prod",
            "client=mobile=x",
            "client=desktop",
            "client=mob%69le&environment=e2e-test",
            "user=a+b&client=mobile",
            "client=mobile+",
        ] {
            let got = parse_query(Some(query), defaults);
            let want = decoded(query, defaults);
            match (got, want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{query}"),
                (Err(got), Err(want)) => assert_eq!(got.to_string(), want.to_string(), "{query}"),
                (got, want) => panic!("{query}: {got:?} against {want:?}"),
            }
        }
        assert_eq!(parse_query(None, defaults).unwrap(), defaults);
    }

    #[test]
    fn max_age_writes_the_seconds() {
        for seconds in [0, 7, 9, 10, 86_399, 86_400, 1_000_000, u64::MAX] {
            assert_eq!(max_age(seconds), format!("max-age={seconds}").as_str());
        }
    }

    #[test]
    fn if_none_match_compares_weakly() {
        let tagged = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(IF_NONE_MATCH, HeaderValue::from_str(value).unwrap());
            matches_etag(&headers, "\"abc\"")
        };
        assert!(tagged("\"abc\""));
        assert!(tagged("W/\"abc\""));
        assert!(tagged("\"x\", W/\"abc\""));
        assert!(tagged("*"));
        assert!(!tagged("\"abcd\""));
        assert!(!tagged("\"x\""));
        assert!(!matches_etag(&HeaderMap::new(), "\"abc\""));
    }
}
