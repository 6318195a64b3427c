//! Which handler answers a request, and the response shapes they share.

use std::convert::Infallible;

use bytes::Bytes;
use http::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use std::sync::Arc;

use super::{api, ofrep, ops, stream, State};

/// A response body: bytes in one piece, or a stream (the change stream).
pub(crate) type Body = Either<Full<Bytes>, BoxBody<Bytes, Infallible>>;

/// Closes the connection a request came on at once, with no graceful end: put in every
/// request's extensions by the server, used by the change stream to drop a client that stopped
/// reading.
#[derive(Debug, Clone, Default)]
pub(crate) struct Disconnect(pub(crate) tokio_util::sync::CancellationToken);

/// The relay's routes, for dispatch and for the request metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    Flags,
    Stream,
    OfrepBulk,
    OfrepOne,
    OfrepConfiguration,
    Health,
    Metrics,
    NotFound,
}

impl Route {
    pub(crate) const ALL: [Route; 8] = [
        Route::Flags,
        Route::Stream,
        Route::OfrepBulk,
        Route::OfrepOne,
        Route::OfrepConfiguration,
        Route::Health,
        Route::Metrics,
        Route::NotFound,
    ];

    fn of(path: &str) -> Route {
        match path {
            "/v1/flags" => Route::Flags,
            "/v1/flags/stream" => Route::Stream,
            "/ofrep/v1/evaluate/flags" => Route::OfrepBulk,
            "/ofrep/v1/configuration" => Route::OfrepConfiguration,
            "/health" => Route::Health,
            "/metrics" => Route::Metrics,
            _ if path.starts_with(OFREP_ONE) => Route::OfrepOne,
            _ => Route::NotFound,
        }
    }

    /// The methods the route answers.
    fn allows(self, method: &Method) -> bool {
        match self {
            Route::NotFound => true,
            Route::OfrepBulk | Route::OfrepOne => method == Method::POST,
            _ => method == Method::GET || method == Method::HEAD,
        }
    }

    fn allow_header(self) -> &'static str {
        match self {
            Route::OfrepBulk | Route::OfrepOne => "POST",
            _ => "GET, HEAD",
        }
    }

    /// The `route` label of the metrics.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Route::Flags => "flags",
            Route::Stream => "stream",
            Route::OfrepBulk => "ofrep_bulk",
            Route::OfrepOne => "ofrep_flag",
            Route::OfrepConfiguration => "ofrep_configuration",
            Route::Health => "health",
            Route::Metrics => "metrics",
            Route::NotFound => "other",
        }
    }
}

/// The single-flag OFREP path, before the (percent-encoded) key.
const OFREP_ONE: &str = "/ofrep/v1/evaluate/flags/";

pub(super) async fn handle(request: Request<Incoming>, state: &Arc<State>) -> Response<Body> {
    let route = Route::of(request.uri().path());
    let mut response = if !route.allows(request.method()) {
        let mut response = error(
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
            "method not allowed",
        );
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static(route.allow_header()));
        response
    } else {
        match route {
            Route::Flags => api::flags(&request, state).await,
            Route::Stream => stream::flags_stream(&request, state),
            Route::OfrepBulk => ofrep::bulk(request, state).await,
            Route::OfrepOne => {
                let key = request.uri().path()[OFREP_ONE.len()..].to_owned();
                ofrep::one(request, &key, state).await
            }
            Route::OfrepConfiguration => ofrep::configuration(request.headers(), state),
            Route::Health => ops::health(state),
            Route::Metrics => ops::metrics(state),
            Route::NotFound => error(StatusCode::NOT_FOUND, "NOT_FOUND", "no such route"),
        }
    };
    let status = response.status();
    state.metrics.record(route, status);
    // An error must not be kept by a cache in front of the relay (RFC 9111 lets a shared cache
    // store some of them, 404 and 405 among them, without any header).
    if !status.is_success() && status != StatusCode::NOT_MODIFIED {
        response
            .headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// A complete body.
pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    Either::Left(Full::new(bytes.into()))
}

/// A JSON response.
pub(crate) fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A JSON error: `{"errorCode": code, "errorDetails": details}` (OFREP's shape, used throughout).
pub(crate) fn error(status: StatusCode, code: &str, details: &str) -> Response<Body> {
    json(
        status,
        &serde_json::json!({ "errorCode": code, "errorDetails": details }),
    )
}
