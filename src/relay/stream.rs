//! `GET /v1/flags/stream`: Server-Sent Events announcing each change of a parameter set.

use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use super::route::{self, Body};
use super::State;

/// Not yet implemented (issue 16).
pub(super) fn flags_stream(_request: &Request<Incoming>, _state: &Arc<State>) -> Response<Body> {
    route::error(
        StatusCode::NOT_IMPLEMENTED,
        "GENERAL",
        "not implemented yet",
    )
}
