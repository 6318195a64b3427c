//! Request parameters (`Client`, `Distribution`, `Environment`), the settings a
//! [`FlagsBuilder`](crate::FlagsBuilder) collects, and their validation into the [`Config`] the
//! poller runs with (with its cache key).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value};
use url::Url;

use crate::clock::WallClock;
use crate::defaults::{
    DEFAULT_BACKOFF_INITIAL, DEFAULT_BACKOFF_MAX, DEFAULT_BASE_URL, DEFAULT_FETCH_INTERVAL,
    DEFAULT_MAX_BODY_BYTES, DEFAULT_SCHEDULE_JITTER, DEFAULT_TIMEOUT, USER_AGENT,
};
use crate::error::{Error, UnknownValue};
use crate::rollout::{self, Identity};

/// A function that edits the headers of every request; see
/// [`FlagsBuilder::header_hook`](crate::FlagsBuilder::header_hook).
#[derive(Clone)]
pub(crate) struct HeaderHook(pub(crate) Arc<dyn Fn(&mut HeaderMap) + Send + Sync>);

impl fmt::Debug for HeaderHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HeaderHook")
    }
}

// One macro for the three parameter enums so their names, parsing and serde stay in one place.
macro_rules! name_enum {
    ($(#[$doc:meta])* $name:ident, $kind:literal, { $($(#[$vdoc:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
        #[non_exhaustive]
        pub enum $name {
            $($(#[$vdoc])* $variant,)+
        }

        impl $name {
            /// Every accepted name, in declaration order.
            pub const NAMES: &'static [&'static str] = &[$($text),+];

            /// The name sent on the wire.
            pub const fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text,)+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownValue;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownValue { kind: $kind, value: s.to_owned(), expected: Self::NAMES }),
                }
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

name_enum!(
    /// Which app asks for flags (`client=`).
    ///
    /// ```
    /// use flagpole::Client;
    /// assert_eq!("mobile".parse::<Client>().unwrap(), Client::Mobile);
    /// assert_eq!(Client::default().to_string(), "extension");
    /// ```
    Client, "client", {
        /// The browser extension (the default).
        #[default]
        Extension => "extension",
        /// The mobile app.
        Mobile => "mobile",
    }
);

name_enum!(
    /// Which build of the app asks (`distribution=`).
    ///
    /// ```
    /// use flagpole::Distribution;
    /// assert_eq!("flask".parse::<Distribution>().unwrap(), Distribution::Flask);
    /// assert_eq!(Distribution::NAMES, ["main", "flask"]);
    /// ```
    Distribution, "distribution", {
        /// The main build (the default).
        #[default]
        Main => "main",
        /// The Flask (experimental) build.
        Flask => "flask",
    }
);

name_enum!(
    /// Which deployment environment asks (`environment=`).
    ///
    /// ```
    /// use flagpole::Environment;
    /// assert_eq!(Environment::Rc.as_str(), "rc");
    /// assert_eq!(serde_json::to_string(&Environment::Dev).unwrap(), "\"dev\"");
    /// ```
    Environment, "environment", {
        /// Production (the default).
        #[default]
        Prod => "prod",
        /// Release candidate.
        Rc => "rc",
        /// Development.
        Dev => "dev",
    }
);

/// Every plain setting of a [`FlagsBuilder`](crate::FlagsBuilder), as given (unvalidated).
/// The builder also holds what is not configuration: the store, the token, the transport.
#[derive(Clone)]
pub(crate) struct Settings {
    pub(crate) base_url: String,
    pub(crate) client: Client,
    pub(crate) distribution: Distribution,
    pub(crate) environment: Environment,
    pub(crate) profile_id: Option<String>,
    pub(crate) metrics_id: Option<String>,
    pub(crate) metrics_flags: HashSet<String>,
    pub(crate) client_version: Option<String>,
    pub(crate) fetch_interval: Duration,
    pub(crate) timeout: Duration,
    pub(crate) backoff_initial: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) max_body_bytes: usize,
    pub(crate) schedule_jitter: f64,
    pub(crate) defaults: HashMap<String, Value>,
    pub(crate) overrides: Map<String, Value>,
    pub(crate) enabled: bool,
    pub(crate) polling: bool,
    pub(crate) stream: bool,
    pub(crate) user_agent: Option<String>,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) header_hook: Option<HeaderHook>,
    pub(crate) wall_clock: WallClock,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            base_url: DEFAULT_BASE_URL.to_owned(),
            client: Client::default(),
            distribution: Distribution::default(),
            environment: Environment::default(),
            profile_id: None,
            metrics_id: None,
            metrics_flags: HashSet::new(),
            client_version: None,
            fetch_interval: DEFAULT_FETCH_INTERVAL,
            timeout: DEFAULT_TIMEOUT,
            backoff_initial: DEFAULT_BACKOFF_INITIAL,
            backoff_max: DEFAULT_BACKOFF_MAX,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            schedule_jitter: DEFAULT_SCHEDULE_JITTER,
            defaults: HashMap::new(),
            overrides: Map::new(),
            enabled: true,
            polling: true,
            stream: false,
            user_agent: None,
            headers: Vec::new(),
            header_hook: None,
            wall_clock: WallClock::default(),
        }
    }
}

/// The validated configuration the poller runs with.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) base_url: Url,
    pub(crate) client: Client,
    pub(crate) distribution: Distribution,
    pub(crate) environment: Environment,
    pub(crate) profile_id: Option<String>,
    /// Who the flags are processed for (the profile id again, the metrics id, the version).
    pub(crate) identity: Identity,
    pub(crate) fetch_interval: Duration,
    pub(crate) timeout: Duration,
    pub(crate) backoff_initial: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) max_body_bytes: usize,
    pub(crate) schedule_jitter: f64,
    pub(crate) defaults: HashMap<String, Value>,
    pub(crate) overrides: Map<String, Value>,
    pub(crate) enabled: bool,
    pub(crate) polling: bool,
    /// Follow the server's change stream (`{base}/flags/stream`) besides polling.
    pub(crate) stream: bool,
    pub(crate) user_agent: HeaderValue,
    pub(crate) headers: HeaderMap,
    pub(crate) header_hook: Option<HeaderHook>,
    pub(crate) wall_clock: WallClock,
}

impl Config {
    /// The retry delay cap actually used: never longer than the fetch interval.
    pub(crate) fn backoff_cap(&self) -> Duration {
        self.backoff_max.min(self.fetch_interval)
    }

    /// What the request depends on (base URL, client, distribution, environment, a hash of the
    /// profile id): the processes that share it share their raw flags, whatever their metrics
    /// ids or versions.
    pub(crate) fn request_key(&self) -> String {
        format!(
            "{}|{}|{}|{}|user:{}",
            self.base_url.as_str().trim_end_matches('/'),
            self.client,
            self.distribution,
            self.environment,
            self.profile_id
                .as_deref()
                .map_or_else(|| "-".to_owned(), hash_id),
        )
    }

    /// Identifies the request a cache record answers and who it was processed for: another
    /// profile id, metrics id or client version makes the cache unusable. The ids enter only as
    /// hashes, so the cache file never holds them.
    pub(crate) fn cache_key(&self) -> String {
        let hashed = |id: Option<&str>| id.map_or_else(|| "-".to_owned(), hash_id);
        format!(
            "{}|metrics:{}|version:{}",
            self.request_key(),
            hashed(self.identity.metrics_id.as_deref()),
            self.identity
                .client_version
                .as_ref()
                .map_or("-", |(raw, _)| raw.as_str()),
        )
    }
}

impl Settings {
    /// Checks every setting and builds the [`Config`] the poller runs with.
    pub(crate) fn validate(&self) -> Result<Config, Error> {
        let base_url = parse_base_url(&self.base_url)?;
        if self.fetch_interval.is_zero() {
            return Err(Error::config("fetch interval must be above zero"));
        }
        if self.timeout.is_zero() {
            return Err(Error::config("timeout must be above zero"));
        }
        if self.backoff_initial.is_zero() {
            return Err(Error::config("initial backoff must be above zero"));
        }
        let year = Duration::from_secs(365 * 24 * 60 * 60);
        for (what, value) in [
            ("fetch interval", self.fetch_interval),
            ("timeout", self.timeout),
            ("maximum backoff", self.backoff_max),
        ] {
            if value > year {
                return Err(Error::config(format!("{what} must be at most 365 days")));
            }
        }
        if self.backoff_max < self.backoff_initial {
            return Err(Error::config(
                "maximum backoff must not be below the initial backoff",
            ));
        }
        if !(0.0..=1.0).contains(&self.schedule_jitter) {
            return Err(Error::config("schedule jitter must be between 0 and 1"));
        }
        if self.max_body_bytes == 0 {
            return Err(Error::config("max body bytes must be above zero"));
        }
        let user_agent = match &self.user_agent {
            Some(product) => HeaderValue::from_str(&format!("{product} {USER_AGENT}"))
                .map_err(|_| Error::config("user agent is not a valid header value"))?,
            None => HeaderValue::from_static(USER_AGENT),
        };
        let mut headers = HeaderMap::with_capacity(self.headers.len());
        for (name, value) in &self.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| Error::config(format!("header name `{name}` is not valid")))?;
            // The value may be a secret: the message names the header only.
            let mut value = HeaderValue::from_str(value)
                .map_err(|_| Error::config(format!("header `{name}` has an invalid value")))?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        let client_version = match &self.client_version {
            None => None,
            Some(raw) => match rollout::parse_version(raw) {
                Some(version) => Some((raw.clone(), version)),
                None => {
                    return Err(Error::config(format!(
                        "client version `{raw}` is not a semantic version (like 13.1.0)"
                    )))
                }
            },
        };
        Ok(Config {
            base_url,
            client: self.client,
            distribution: self.distribution,
            environment: self.environment,
            profile_id: self.profile_id.clone(),
            identity: Identity {
                profile_id: self.profile_id.clone(),
                metrics_id: self.metrics_id.clone(),
                metrics_flags: self.metrics_flags.clone(),
                client_version,
            },
            fetch_interval: self.fetch_interval,
            timeout: self.timeout,
            backoff_initial: self.backoff_initial,
            backoff_max: self.backoff_max,
            max_body_bytes: self.max_body_bytes,
            schedule_jitter: self.schedule_jitter,
            defaults: self.defaults.clone(),
            overrides: self.overrides.clone(),
            enabled: self.enabled,
            polling: self.polling,
            stream: self.stream,
            user_agent,
            headers,
            header_hook: self.header_hook.clone(),
            wall_clock: self.wall_clock.clone(),
        })
    }
}

pub(crate) fn non_empty(id: String) -> Option<String> {
    (!id.is_empty()).then_some(id)
}

fn hash_id(id: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(id.as_bytes());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_base_url(raw: &str) -> Result<Url, Error> {
    let url = Url::parse(raw).map_err(|e| Error::config(format!("base URL `{raw}`: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Error::config(format!(
            "base URL `{raw}`: scheme must be http or https"
        )));
    }
    if url.cannot_be_a_base() || url.host().is_none() {
        return Err(Error::config(format!("base URL `{raw}`: no host")));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for name in Client::NAMES {
            assert_eq!(name.parse::<Client>().unwrap().to_string(), *name);
        }
        for name in Distribution::NAMES {
            assert_eq!(name.parse::<Distribution>().unwrap().to_string(), *name);
        }
        for name in Environment::NAMES {
            assert_eq!(name.parse::<Environment>().unwrap().to_string(), *name);
        }
    }

    #[test]
    fn unknown_value_lists_accepted_names() {
        let err = "staging".parse::<Environment>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown environment `staging`: expected one of prod, rc, dev"
        );
        let err = "Extension".parse::<Client>().unwrap_err();
        assert_eq!(err.expected, &["extension", "mobile"]);
    }

    #[test]
    fn serde_uses_wire_names() {
        assert_eq!(
            serde_json::to_string(&Distribution::Flask).unwrap(),
            "\"flask\""
        );
        assert_eq!(
            serde_json::from_str::<Environment>("\"rc\"").unwrap(),
            Environment::Rc
        );
        let err = serde_json::from_str::<Client>("\"web\"").unwrap_err();
        assert!(err
            .to_string()
            .contains("expected one of extension, mobile"));
    }

    #[test]
    fn base_url_validation() {
        assert!(parse_base_url("https://example.com/v1").is_ok());
        assert!(parse_base_url("http://127.0.0.1:8080").is_ok());
        for bad in [
            "",
            "not a url",
            "ftp://example.com",
            "mailto:a@b.c",
            "https://",
        ] {
            let err = parse_base_url(bad).unwrap_err();
            assert!(matches!(err, Error::Config { .. }), "{bad}: {err}");
        }
    }
}
