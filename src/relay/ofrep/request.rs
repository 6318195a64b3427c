//! What an OFREP request asks, as pure functions of its bytes: the evaluation context read into
//! an [`Identity`], the parameter set its headers select, and the flag key of its path. Each
//! returns a value or a typed error for any input (property-tested in `tests.rs`).

use std::collections::HashSet;

use http::HeaderMap;
use serde_json::{Map, Value};

use crate::config::{Client, Distribution, Environment};
use crate::error::UnknownValue;
use crate::relay::sets::Params;
use crate::rollout::{parse_version, Identity};

/// The context attribute holding the profile id, the canonical segmentation id.
pub(crate) const TARGETING_KEY: &str = "targetingKey";
/// The context attribute holding the MetaMetrics id (explicit targeting, metrics rollouts).
pub(crate) const METRICS_ID: &str = "metaMetricsId";
/// The context attribute listing the flags whose rollouts segment by the metrics id.
pub(crate) const METRICS_FLAGS: &str = "metaMetricsFlags";
/// The context attribute holding the app's semantic version.
pub(crate) const CLIENT_VERSION: &str = "clientVersion";

/// The header selecting the client (header names match in any case).
pub(crate) const CLIENT_HEADER: &str = "X-Flagpole-Client";
/// The header selecting the distribution.
pub(crate) const DISTRIBUTION_HEADER: &str = "X-Flagpole-Distribution";
/// The header selecting the environment.
pub(crate) const ENVIRONMENT_HEADER: &str = "X-Flagpole-Environment";

/// Why a request body is refused (400 with this OFREP error code).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ContextError {
    /// Not JSON at all: `PARSE_ERROR`.
    #[error("the request body is not valid JSON: {0}")]
    Parse(String),
    /// JSON of the wrong shape: `INVALID_CONTEXT`.
    #[error("{0}")]
    Invalid(String),
}

impl ContextError {
    /// The OFREP error code.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            ContextError::Parse(_) => "PARSE_ERROR",
            ContextError::Invalid(_) => "INVALID_CONTEXT",
        }
    }
}

/// The identity an evaluation request's body describes: `{"context": {...}}`, every part
/// optional (an empty body evaluates for nobody in particular, as a handle without ids does).
///
/// Read from the context: `targetingKey` (the profile id), `metaMetricsId`, `metaMetricsFlags`
/// (an array of flag names) and `clientVersion` (node-semver's `valid()`); an empty id counts as
/// none, `null` as absent, other attributes are ignored. A missing targeting key is not an
/// error: MetaMask serves rollout arrays unchanged without an id, and so does this.
pub(crate) fn parse_body(body: &[u8]) -> Result<Identity, ContextError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Identity::default());
    }
    // serde_json stops at 128 levels of nesting: deep input is an error, never a stack overflow.
    let request: Value =
        serde_json::from_slice(body).map_err(|e| ContextError::Parse(e.to_string()))?;
    let Value::Object(mut request) = request else {
        return Err(invalid("the request body must be a JSON object"));
    };
    let context = match request.remove("context") {
        None | Some(Value::Null) => return Ok(Identity::default()),
        Some(Value::Object(context)) => context,
        Some(_) => return Err(invalid("`context` must be an object")),
    };
    identity(&context)
}

/// The identity of an evaluation context (the object under `context`).
pub(crate) fn identity(context: &Map<String, Value>) -> Result<Identity, ContextError> {
    let client_version = match string(context, CLIENT_VERSION)? {
        None => None,
        // The raw text is kept: a version key matches when it is the identical string.
        Some(raw) => match parse_version(raw) {
            Some(version) => Some((raw.to_owned(), version)),
            None => {
                return Err(invalid(
                    "`clientVersion` is not a semantic version (like 13.1.0)",
                ))
            }
        },
    };
    let metrics_flags = match context.get(METRICS_FLAGS) {
        None | Some(Value::Null) => HashSet::new(),
        Some(Value::Array(names)) => names
            .iter()
            .map(|name| name.as_str().map(str::to_owned))
            .collect::<Option<HashSet<String>>>()
            .ok_or_else(|| invalid("`metaMetricsFlags` must be an array of strings"))?,
        Some(_) => return Err(invalid("`metaMetricsFlags` must be an array of strings")),
    };
    Ok(Identity {
        profile_id: non_empty(string(context, TARGETING_KEY)?),
        metrics_id: non_empty(string(context, METRICS_ID)?),
        metrics_flags,
        client_version,
    })
}

/// A string attribute: absent or `null` is `None`, any other non-string is an error.
fn string<'a>(
    context: &'a Map<String, Value>,
    name: &str,
) -> Result<Option<&'a str>, ContextError> {
    match context.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(_) => Err(invalid(&format!("`{name}` must be a string"))),
    }
}

fn non_empty(id: Option<&str>) -> Option<String> {
    id.filter(|id| !id.is_empty()).map(str::to_owned)
}

fn invalid(details: &str) -> ContextError {
    ContextError::Invalid(details.to_owned())
}

/// The parameter set the `X-Flagpole-Client`, `-Distribution` and `-Environment` headers
/// select; those absent are the relay's defaults. A value that is not one of the accepted names
/// (or not text) is an error naming them.
pub(crate) fn parse_headers(headers: &HeaderMap, defaults: Params) -> Result<Params, UnknownValue> {
    let mut params = defaults;
    if let Some(value) = header(headers, CLIENT_HEADER) {
        params.client = value.parse::<Client>()?;
    }
    if let Some(value) = header(headers, DISTRIBUTION_HEADER) {
        params.distribution = value.parse::<Distribution>()?;
    }
    if let Some(value) = header(headers, ENVIRONMENT_HEADER) {
        params.environment = value.parse::<Environment>()?;
    }
    Ok(params)
}

/// The header's first value as text (bytes that are not UTF-8 replaced, so they match no name).
fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
}

/// The flag key of a path's percent-encoded rest: `%XX` escapes decoded (a `%` not followed by
/// two hex digits is kept as it is); `None` when the bytes are not UTF-8, so no flag can match.
pub(crate) fn decode_key(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&high), Some(&low)) => hex(high).zip(hex(low)),
            _ => None,
        };
        match escaped {
            Some((high, low)) => {
                out.push(high << 4 | low);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn hex(digit: u8) -> Option<u8> {
    (digit as char).to_digit(16).map(|d| d as u8)
}
