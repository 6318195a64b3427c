//! OFREP, the OpenFeature Remote Evaluation Protocol: bulk and single evaluation, and the
//! configuration endpoint.

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use super::route::{self, Body};
use super::State;

/// Not yet implemented (issue 16).
pub(super) async fn bulk(_request: Request<Incoming>, _state: &State) -> Response<Body> {
    route::error(
        StatusCode::NOT_IMPLEMENTED,
        "GENERAL",
        "not implemented yet",
    )
}

/// Not yet implemented (issue 16).
pub(super) async fn one(_request: Request<Incoming>, _key: &str, _state: &State) -> Response<Body> {
    route::error(
        StatusCode::NOT_IMPLEMENTED,
        "GENERAL",
        "not implemented yet",
    )
}

/// Not yet implemented (issue 16).
pub(super) fn configuration(_state: &State) -> Response<Body> {
    route::error(
        StatusCode::NOT_IMPLEMENTED,
        "GENERAL",
        "not implemented yet",
    )
}
