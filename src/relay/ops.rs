//! Operations: `/health` (each parameter set's state) and `/metrics` (Prometheus text).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};
use serde_json::{json, Value};

use super::route::{self, Body, Route};
use super::sets::Set;
use super::State;
use crate::status::Status;

/// The statuses counted one by one; any other counts as `other`.
const STATUSES: [u16; 9] = [200, 304, 400, 404, 405, 413, 500, 503, 0];

/// Counters, updated with relaxed atomics (a scrape needs no exact cut across them).
pub(crate) struct Metrics {
    requests: Vec<AtomicU64>,
    refused: AtomicU64,
    /// Change streams open now.
    streams: AtomicU64,
    /// Change streams closed because the client stopped reading.
    streams_dropped: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: (0..Route::ALL.len() * STATUSES.len())
                .map(|_| AtomicU64::new(0))
                .collect(),
            refused: AtomicU64::new(0),
            streams: AtomicU64::new(0),
            streams_dropped: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    pub(crate) fn record(&self, route: Route, status: StatusCode) {
        let r = Route::ALL.iter().position(|x| *x == route).unwrap_or(0);
        let s = STATUSES
            .iter()
            .position(|x| *x == status.as_u16())
            .unwrap_or(STATUSES.len() - 1);
        self.requests[r * STATUSES.len() + s].fetch_add(1, Ordering::Relaxed);
    }

    /// A connection closed at once because the relay was at its connection limit.
    pub(crate) fn refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// A change stream opened.
    pub(crate) fn stream_opened(&self) {
        self.streams.fetch_add(1, Ordering::Relaxed);
    }

    /// A change stream closed (each opened one closes once).
    pub(crate) fn stream_closed(&self) {
        self.streams.fetch_sub(1, Ordering::Relaxed);
    }

    /// A change stream dropped because its client stopped reading.
    pub(crate) fn stream_dropped(&self) {
        self.streams_dropped.fetch_add(1, Ordering::Relaxed);
    }

    #[cfg(test)]
    pub(crate) fn streams_dropped(&self) -> u64 {
        self.streams_dropped.load(Ordering::Relaxed)
    }
}

/// `GET /health`: 200 while the relay serves flags for some started set (or none has started),
/// else 503; per set its state
/// (`starting`, `fresh`, `stale`), the source and age of its flags, and while stale the last
/// error, how long the failures have lasted and when the next attempt is due.
pub(super) fn health(state: &State) -> Response<Body> {
    let now = std::time::Instant::now();
    let mut sets = serde_json::Map::new();
    // Any client can start a set (a combination upstream rejects, say): one set without flags
    // must not take a relay that serves the others out of service.
    let (mut started, mut serving_any) = (0, false);
    for set in state.sets.started() {
        let status = set.flags.status();
        let snapshot = set.flags.snapshot();
        let serving = snapshot.cache_timestamp().is_some();
        started += 1;
        serving_any |= serving;
        let mut entry = json!({
            "state": match status { Status::Initializing { .. } => "starting", ref other => other.as_str() },
            "source": snapshot.source().as_str(),
            "age_s": age_s(snapshot.cache_timestamp()),
        });
        if let Status::Stale {
            since,
            last_error,
            next_retry,
            ..
        } = &status
        {
            entry["last_error"] = Value::from(last_error.to_string());
            entry["stale_for_s"] = Value::from(now.saturating_duration_since(*since).as_secs());
            entry["next_retry_in_s"] =
                Value::from(next_retry.map(|at| at.saturating_duration_since(now).as_secs()));
        }
        sets.insert(set.params.name(), entry);
    }
    let healthy = started == 0 || serving_any;
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    route::json(
        status,
        &json!({ "status": if healthy { "ok" } else { "starting" }, "sets": sets }),
    )
}

/// Seconds since the flags were fetched, if any.
fn age_s(cache_timestamp: Option<u64>) -> Option<u64> {
    let now = crate::clock::ms_since_epoch(std::time::SystemTime::now());
    cache_timestamp.map(|ts| now.saturating_sub(ts) / 1000)
}

/// `GET /metrics`: Prometheus text format 0.0.4.
pub(super) fn metrics(state: &State) -> Response<Body> {
    let m = &state.metrics;
    let mut out = String::new();
    out.push_str("# HELP flagpole_relay_requests_total Requests answered, by route and status.\n");
    out.push_str("# TYPE flagpole_relay_requests_total counter\n");
    for (r, route) in Route::ALL.iter().enumerate() {
        for (s, status) in STATUSES.iter().enumerate() {
            let n = m.requests[r * STATUSES.len() + s].load(Ordering::Relaxed);
            if n > 0 {
                let status = if *status == 0 {
                    "other".to_owned()
                } else {
                    status.to_string()
                };
                let _ = writeln!(
                    out,
                    "flagpole_relay_requests_total{{route=\"{}\",status=\"{status}\"}} {n}",
                    route.label()
                );
            }
        }
    }
    sample(
        &mut out,
        "connections_refused_total",
        "counter",
        "Connections closed at the connection limit.",
        m.refused.load(Ordering::Relaxed),
    );
    sample(
        &mut out,
        "sse_clients",
        "gauge",
        "Open change streams.",
        m.streams.load(Ordering::Relaxed),
    );
    sample(
        &mut out,
        "sse_dropped_total",
        "counter",
        "Change streams closed because the client stopped reading.",
        m.streams_dropped.load(Ordering::Relaxed),
    );
    per_set(
        &mut out,
        state,
        "upstream_fetches_total",
        "counter",
        "Upstream requests that ended, by parameter set.",
        |set| Some(set.flags.fetch_counts().0),
    );
    per_set(
        &mut out,
        state,
        "upstream_failures_total",
        "counter",
        "Upstream requests that brought no flags (connection error, timeout, error status, \
         unparsable body), by parameter set.",
        |set| Some(set.flags.fetch_counts().1),
    );
    per_set(
        &mut out,
        state,
        "flags_age_seconds",
        "gauge",
        "Age of the newest flags, by parameter set (none before the first).",
        |set| age_s(set.flags.snapshot().cache_timestamp()),
    );
    let mut response = Response::new(route::full(out));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// One unlabelled sample with its `HELP` and `TYPE` lines.
fn sample(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    let _ = writeln!(out, "# HELP flagpole_relay_{name} {help}");
    let _ = writeln!(out, "# TYPE flagpole_relay_{name} {kind}");
    let _ = writeln!(out, "flagpole_relay_{name} {value}");
}

/// One sample per started parameter set, labelled `set`, with its `HELP` and `TYPE` lines.
fn per_set(
    out: &mut String,
    state: &State,
    name: &str,
    kind: &str,
    help: &str,
    value: impl Fn(&Set) -> Option<u64>,
) {
    let _ = writeln!(out, "# HELP flagpole_relay_{name} {help}");
    let _ = writeln!(out, "# TYPE flagpole_relay_{name} {kind}");
    for set in state.sets.started() {
        if let Some(v) = value(set) {
            let _ = writeln!(
                out,
                "flagpole_relay_{name}{{set=\"{}\"}} {v}",
                set.params.name()
            );
        }
    }
}
