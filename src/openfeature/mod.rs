//! An [OpenFeature](https://openfeature.dev) provider over a [`Flags`] handle (feature
//! `openfeature`).
//!
//! Every resolution reads the lock-free snapshot, like [`Flags::get_bool`]; no resolution ever
//! waits for the network. The evaluation context is not used: flagpole's flags are evaluated by
//! the flag service for the parameters given to the builder (client, distribution, environment,
//! profile id), not per call.
//!
//! | situation | result |
//! |---|---|
//! | flag from a fetch in this process or, in shared mode, in another (`Source::Network`, `Source::Shared`) | value, reason `STATIC` |
//! | flag from the persisted cache (`Source::Cache`) | value, reason `CACHED` |
//! | flag chosen by a threshold rollout ([`Snapshot::threshold_group`]) | value, reason `SPLIT`, variant: the group's name |
//! | flag from a local override ([`Snapshot::is_override`]) | value, reason `STATIC`, metadata `override: true` |
//! | flag from the caller's defaults ([`Snapshot::is_default`]) | value, reason `DEFAULT` |
//! | flag of another type | error `TYPE_MISMATCH` |
//! | flag absent, no remote flags yet and the poller still trying (`Initializing`, or `Stale` with defaults only) | error `PROVIDER_NOT_READY` |
//! | flag absent otherwise | error `FLAG_NOT_FOUND` |
//!
//! With open-feature 0.3 an error carries only a code and a message: the client returns it as
//! `Err`, and hooks see the reason `ERROR` with the caller's default.

use std::fmt;
use std::time::Duration;

use open_feature::provider::{
    FeatureProvider, ProviderMetadata, ProviderStatus, ResolutionDetails,
};
use open_feature::{
    EvaluationContext, EvaluationError, EvaluationErrorCode, EvaluationReason, EvaluationResult,
    FlagMetadata, StructValue,
};
use serde_json::Value;

use crate::client::Flags;
use crate::snapshot::{Snapshot, Source};
use crate::status::Status;

mod events;
pub use events::{ProviderEvent, ProviderEvents};

/// How long [`FeatureProvider::initialize`] waits for remote flags by default.
pub const DEFAULT_INIT_TIMEOUT: Duration = Duration::from_secs(5);

/// An OpenFeature [`FeatureProvider`] serving a [`Flags`] handle's flags.
///
/// Register it with `OpenFeature::set_provider` (or on an `OpenFeature` of your own, as here);
/// registration runs [`initialize`](FeatureProvider::initialize), which waits at most
/// [`DEFAULT_INIT_TIMEOUT`] (see [`with_init_timeout`](Self::with_init_timeout)) for the cache or
/// the network to answer.
///
/// ```
/// use flagpole::{Flags, FlagpoleProvider};
/// use open_feature::{EvaluationReason, OpenFeature};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), flagpole::Error> {
/// let flags = Flags::builder()
///     .default_flag("new-checkout", true)
///     .enabled(false) // no request in this example
///     .build()?;
/// let mut api = OpenFeature::default(); // or OpenFeature::singleton_mut().await
/// api.set_provider(FlagpoleProvider::new(flags)).await;
/// let client = api.create_client();
///
/// let details = client.get_bool_details("new-checkout", None, None).await.unwrap();
/// assert!(details.value);
/// assert_eq!(details.reason, Some(EvaluationReason::Default));
/// assert!(client.get_int_value("new-checkout", None, None).await.is_err()); // TYPE_MISMATCH
/// # Ok(()) }
/// ```
pub struct FlagpoleProvider {
    flags: Flags,
    metadata: ProviderMetadata,
    init_timeout: Duration,
}

impl fmt::Debug for FlagpoleProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlagpoleProvider")
            .field("flags", &self.flags)
            .field("init_timeout", &self.init_timeout)
            .finish()
    }
}

impl FlagpoleProvider {
    /// The provider's name in its metadata.
    pub const NAME: &'static str = "flagpole";

    /// A provider over `flags` (a clone of the handle is enough: all clones read the same flags).
    pub fn new(flags: Flags) -> Self {
        FlagpoleProvider {
            flags,
            metadata: ProviderMetadata::new(Self::NAME),
            init_timeout: DEFAULT_INIT_TIMEOUT,
        }
    }

    /// How long [`initialize`](FeatureProvider::initialize) (run by `set_provider`) waits for
    /// remote flags; zero does not wait. Resolutions before they arrive serve the defaults, or
    /// fail with `PROVIDER_NOT_READY`.
    #[must_use]
    pub fn with_init_timeout(mut self, timeout: Duration) -> Self {
        self.init_timeout = timeout;
        self
    }

    /// The handle this provider reads.
    pub fn flags(&self) -> &Flags {
        &self.flags
    }

    /// The provider's events, driven by flagpole's status and snapshot channels (open-feature 0.3
    /// has no event API of its own). The first event describes the current state unless it is
    /// `NOT_READY`, as OpenFeature asks of handlers added late.
    ///
    /// ```
    /// use flagpole::{Flags, FlagpoleProvider, ProviderEvent};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), flagpole::Error> {
    /// let flags = Flags::builder().default_flag("a", 1).enabled(false).build()?;
    /// let provider = FlagpoleProvider::new(flags.clone());
    /// let mut events = provider.events();
    /// assert_eq!(events.recv().await, Some(ProviderEvent::Ready)); // disabled: defaults, ready
    /// flags.shutdown().await;
    /// assert!(matches!(events.recv().await, Some(ProviderEvent::Stale { .. })));
    /// assert_eq!(events.recv().await, None);
    /// # Ok(()) }
    /// ```
    pub fn events(&self) -> ProviderEvents {
        ProviderEvents::new(&self.flags)
    }

    fn resolve<T>(
        &self,
        name: &str,
        expected: &str,
        convert: impl FnOnce(&Value) -> Option<T>,
    ) -> EvaluationResult<ResolutionDetails<T>> {
        let snapshot = self.flags.snapshot();
        let Some(value) = snapshot.get_ref(name) else {
            return Err(self.missing(name, &snapshot));
        };
        let Some(value) = convert(value) else {
            return Err(error(
                EvaluationErrorCode::TypeMismatch,
                format!("flag `{name}` is {}, not {expected}", json_type(value)),
            ));
        };
        let mut metadata = FlagMetadata::default().with_value("source", snapshot.source().as_str());
        if let Some(ms) = snapshot.cache_timestamp() {
            metadata.add_value("cache_timestamp", i64::try_from(ms).unwrap_or(i64::MAX));
        }
        if snapshot.is_override(name) {
            metadata.add_value("override", true);
        }
        let (reason, variant) = reason(&snapshot, name);
        Ok(ResolutionDetails {
            value,
            variant,
            reason: Some(reason),
            flag_metadata: Some(metadata),
        })
    }

    fn missing(&self, name: &str, snapshot: &Snapshot) -> EvaluationError {
        let status = self.flags.status();
        let waiting = matches!(status, Status::Initializing { .. } | Status::Stale { .. });
        if snapshot.source() == Source::Defaults && waiting {
            let why = match status.last_error() {
                Some(e) => format!("no remote flags yet (last fetch: {e})"),
                None => "no remote flags yet".to_owned(),
            };
            return error(
                EvaluationErrorCode::ProviderNotReady,
                format!("flag `{name}`: {why}"),
            );
        }
        error(
            EvaluationErrorCode::FlagNotFound,
            format!("flag `{name}` is not served"),
        )
    }
}

/// The reason and variant of a served flag: overrides are `STATIC`, defaults `DEFAULT`, a
/// threshold rollout's pick `SPLIT` (its group is the variant), other remote flags `STATIC` when
/// fetched in this process and `CACHED` from the persisted cache.
fn reason(snapshot: &Snapshot, name: &str) -> (EvaluationReason, Option<String>) {
    if snapshot.is_override(name) {
        return (EvaluationReason::Static, None);
    }
    if snapshot.is_default(name) {
        return (EvaluationReason::Default, None);
    }
    if let Some(group) = snapshot.threshold_group(name) {
        return (EvaluationReason::Split, Some(group.to_owned()));
    }
    let reason = match snapshot.source() {
        Source::Network | Source::Shared | Source::Defaults => EvaluationReason::Static,
        Source::Cache => EvaluationReason::Cached,
    };
    (reason, None)
}

/// flagpole's status (and whether remote flags are served) as an OpenFeature provider status.
///
/// | flagpole | remote flags served | provider |
/// |---|---|---|
/// | `Fresh`, `Disabled` | any | `READY` |
/// | `Initializing` | no | `NOT_READY` |
/// | `Initializing` (a stale cache), `Stale` | yes | `STALE` |
/// | `Stale` | no | `ERROR` |
/// | `Stopped` | any | `STALE` (the last flags, never updated again) |
fn provider_status(status: &Status, source: Source) -> ProviderStatus {
    let remote = source != Source::Defaults;
    match status {
        Status::Fresh { .. } | Status::Disabled => ProviderStatus::Ready,
        Status::Initializing { .. } if !remote => ProviderStatus::NotReady,
        Status::Stale { .. } if !remote => ProviderStatus::Error,
        Status::Initializing { .. } | Status::Stale { .. } | Status::Stopped => {
            ProviderStatus::STALE
        }
    }
}

fn error(code: EvaluationErrorCode, message: String) -> EvaluationError {
    EvaluationError {
        code,
        message: Some(message),
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Value::Number(_) => "a float",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// JSON to an OpenFeature value. Null has no counterpart: null object fields are left out, and
/// an array holding null cannot be converted.
fn to_value(value: &Value) -> Option<open_feature::Value> {
    use open_feature::Value as Of;
    Some(match value {
        Value::Null => return None,
        Value::Bool(b) => Of::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Of::Int(i),
            None => Of::Float(n.as_f64()?),
        },
        Value::String(s) => Of::String(s.clone()),
        Value::Array(items) => Of::Array(items.iter().map(to_value).collect::<Option<_>>()?),
        Value::Object(_) => Of::Struct(to_struct(value)?),
    })
}

fn to_struct(value: &Value) -> Option<StructValue> {
    let object = value.as_object()?;
    let mut fields = std::collections::HashMap::with_capacity(object.len());
    for (name, value) in object {
        if !value.is_null() {
            fields.insert(name.clone(), to_value(value)?);
        }
    }
    Some(StructValue { fields })
}

#[open_feature::async_trait]
impl FeatureProvider for FlagpoleProvider {
    /// Waits at most the init timeout for remote flags (cache or network). It never fails:
    /// [`status`](FeatureProvider::status) reports the outcome, live.
    async fn initialize(&mut self, _context: &EvaluationContext) {
        if !self.init_timeout.is_zero() {
            let _ = tokio::time::timeout(self.init_timeout, self.flags.ready()).await;
        }
    }

    fn status(&self) -> ProviderStatus {
        provider_status(&self.flags.status(), self.flags.snapshot().source())
    }

    fn metadata(&self) -> &ProviderMetadata {
        &self.metadata
    }

    async fn resolve_bool_value(
        &self,
        flag_key: &str,
        _context: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<bool>> {
        self.resolve(flag_key, "a boolean", Value::as_bool)
    }

    /// JSON integers within `i64`; a float (even `2.0`) is a type mismatch.
    async fn resolve_int_value(
        &self,
        flag_key: &str,
        _context: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<i64>> {
        self.resolve(flag_key, "an integer", Value::as_i64)
    }

    /// Any JSON number; integers convert.
    async fn resolve_float_value(
        &self,
        flag_key: &str,
        _context: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<f64>> {
        self.resolve(flag_key, "a number", Value::as_f64)
    }

    async fn resolve_string_value(
        &self,
        flag_key: &str,
        _context: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<String>> {
        self.resolve(flag_key, "a string", |v| v.as_str().map(str::to_owned))
    }

    /// JSON objects; an array or a scalar is a type mismatch.
    async fn resolve_struct_value(
        &self,
        flag_key: &str,
        _context: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<StructValue>> {
        self.resolve(flag_key, "an object (without null in arrays)", to_struct)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn status_table() {
        let stale = Status::Stale {
            since: std::time::Instant::now(),
            last_error: crate::Error::Http { status: 500 },
            next_retry: None,
            stream: crate::StreamState::Off,
        };
        let table = [
            (Status::fresh(), Source::Network, ProviderStatus::Ready),
            (Status::fresh(), Source::Cache, ProviderStatus::Ready),
            (Status::Disabled, Source::Defaults, ProviderStatus::Ready),
            (
                Status::initializing(),
                Source::Defaults,
                ProviderStatus::NotReady,
            ),
            (Status::initializing(), Source::Cache, ProviderStatus::STALE),
            (stale.clone(), Source::Network, ProviderStatus::STALE),
            (stale, Source::Defaults, ProviderStatus::Error),
            (Status::Stopped, Source::Network, ProviderStatus::STALE),
        ];
        for (status, source, expected) in table {
            assert_eq!(
                provider_status(&status, source),
                expected,
                "{status:?} {source}"
            );
        }
    }

    #[test]
    fn json_converts_to_openfeature_values() {
        use open_feature::Value as Of;
        let v = json!({"i": 1, "f": 1.5, "big": u64::MAX, "s": "x", "b": true, "n": null,
            "a": [1, "y"], "o": {"k": false}});
        let s = to_struct(&v).unwrap();
        assert_eq!(s.fields["i"], Of::Int(1));
        assert_eq!(s.fields["f"], Of::Float(1.5));
        assert_eq!(s.fields["big"], Of::Float(u64::MAX as f64));
        assert_eq!(s.fields["s"], Of::String("x".into()));
        assert_eq!(s.fields["b"], Of::Bool(true));
        assert!(!s.fields.contains_key("n"));
        assert_eq!(
            s.fields["a"],
            Of::Array(vec![Of::Int(1), Of::String("y".into())])
        );
        assert_eq!(
            s.fields["o"],
            Of::Struct(StructValue::default().with_field("k", false))
        );
        assert!(to_struct(&json!([1])).is_none());
        assert!(to_struct(&json!({"a": [null]})).is_none());
    }
}
