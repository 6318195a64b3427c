//! Building the request and reading the parts of the answer that steer the poller.

use std::time::{Duration, SystemTime};

use http::header::{HeaderMap, HeaderValue, ACCEPT, ETAG, IF_NONE_MATCH, RETRY_AFTER, USER_AGENT};
use http::StatusCode;
use url::Url;

use crate::config::Config;
use crate::error::is_retryable_status;
use crate::transport::Request;

/// `{base}/flags?client=..&distribution=..&environment=..[&user=..]`, percent-encoded.
pub(crate) fn flags_url(config: &Config) -> Url {
    let mut url = config.base_url.clone();
    // Appending keeps any base path (`/v1`) whether or not it ends in a slash.
    let path = format!("{}/flags", url.path().trim_end_matches('/'));
    url.set_path(&path);
    url.set_query(None);
    {
        let mut query = url.query_pairs_mut();
        query
            .append_pair("client", config.client.as_str())
            .append_pair("distribution", config.distribution.as_str())
            .append_pair("environment", config.environment.as_str());
        if let Some(user) = &config.profile_id {
            query.append_pair("user", user);
        }
    }
    url
}

/// `{base}/flags/stream?client=..&distribution=..&environment=..`: the change stream names no
/// profile (the events are the same for everyone), so no `user=`.
#[cfg(feature = "stream")]
pub(crate) fn stream_url(config: &Config) -> Url {
    let mut url = flags_url(config);
    let path = format!("{}/stream", url.path());
    url.set_path(&path);
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| k != "user")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    url.query_pairs_mut().clear().extend_pairs(pairs);
    url
}

/// The request that opens the change stream: `Accept: text/event-stream`, no caching, with the
/// caller's headers and hook as for the flags.
#[cfg(feature = "stream")]
pub(crate) fn build_stream(config: &Config, url: &Url) -> Request {
    let mut request = build(config, url, None);
    request
        .headers
        .insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
    request.headers.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache"),
    );
    request
}

/// The request for the flag set, conditional on `etag` when one is known. Headers in order:
/// `Accept`, `User-Agent`, the caller's headers (which may replace those), `If-None-Match`, then
/// the caller's hook.
pub(crate) fn build(config: &Config, url: &Url, etag: Option<&str>) -> Request {
    let mut headers = HeaderMap::new();
    headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
    headers.insert(USER_AGENT, config.user_agent.clone());
    for (name, value) in &config.headers {
        headers.insert(name, value.clone());
    }
    if let Some(value) = etag.and_then(|e| HeaderValue::from_str(e).ok()) {
        headers.insert(IF_NONE_MATCH, value);
    }
    if let Some(hook) = &config.header_hook {
        (hook.0)(&mut headers);
    }
    Request {
        url: url.clone(),
        headers,
        max_body_bytes: config.max_body_bytes,
        timeout: config.timeout,
    }
}

/// What a response status means for the poller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StatusClass {
    /// 2xx other than 304-like cases: a body to parse.
    Success,
    /// 304: the known flags are still current.
    NotModified,
    /// A failure worth retrying soon (408, 429, 5xx, and unexpected 1xx/3xx).
    Retryable,
    /// A failure that retrying will not fix soon (other 4xx): back off to the cap.
    Permanent,
}

pub(crate) fn classify(status: StatusCode) -> StatusClass {
    match status.as_u16() {
        304 => StatusClass::NotModified,
        200..=299 => StatusClass::Success,
        s if is_retryable_status(s) => StatusClass::Retryable,
        _ => StatusClass::Permanent,
    }
}

/// The entity tag to send back as `If-None-Match`.
pub(crate) fn etag(headers: &HeaderMap) -> Option<String> {
    headers
        .get(ETAG)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

/// `Retry-After` as a delay from `now`: delta-seconds or an HTTP date. Only 429 and 503 carry a
/// meaningful one (RFC 9110); a past date means "now".
pub(crate) fn retry_after(
    status: StatusCode,
    headers: &HeaderMap,
    now: SystemTime,
) -> Option<Duration> {
    if !matches!(status.as_u16(), 429 | 503) {
        return None;
    }
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Client, Distribution, Environment};
    use crate::Flags;

    fn config(profile: Option<&str>) -> Config {
        let mut builder = Flags::builder().base_url("https://api.example/v1/");
        if let Some(p) = profile {
            builder = builder.profile_id(p);
        }
        builder.validate().unwrap()
    }

    #[test]
    fn url_for_every_parameter_value() {
        let mut c = config(None);
        for client in [Client::Extension, Client::Mobile] {
            for distribution in [Distribution::Main, Distribution::Flask] {
                for environment in [Environment::Prod, Environment::Rc, Environment::Dev] {
                    c.client = client;
                    c.distribution = distribution;
                    c.environment = environment;
                    assert_eq!(
                        flags_url(&c).as_str(),
                        format!(
                            "https://api.example/v1/flags?client={client}&distribution={distribution}&environment={environment}"
                        )
                    );
                }
            }
        }
    }

    #[test]
    fn user_only_with_profile_id_and_encoded() {
        let c = config(Some("a b&c=d/é"));
        assert_eq!(
            flags_url(&c).as_str(),
            "https://api.example/v1/flags?client=extension&distribution=main&environment=prod&user=a+b%26c%3Dd%2F%C3%A9"
        );
        let c = config(Some(""));
        assert!(!flags_url(&c).as_str().contains("user="));
    }

    #[test]
    fn base_without_path_or_with_query() {
        let mut c = config(None);
        c.base_url = Url::parse("http://127.0.0.1:9000?x=1").unwrap();
        assert_eq!(
            flags_url(&c).as_str(),
            "http://127.0.0.1:9000/flags?client=extension&distribution=main&environment=prod"
        );
    }

    #[test]
    fn headers_accept_and_conditional() {
        let c = config(None);
        let url = flags_url(&c);
        let r = build(&c, &url, None);
        assert_eq!(r.headers[ACCEPT], "application/json");
        assert!(r.headers.get(IF_NONE_MATCH).is_none());
        let r = build(&c, &url, Some("\"v1\""));
        assert_eq!(r.headers[IF_NONE_MATCH], "\"v1\"");
        assert_eq!(r.headers[USER_AGENT], crate::defaults::USER_AGENT);
    }

    #[test]
    fn caller_headers_then_hook() {
        let c = Flags::builder()
            .base_url("https://api.example/v1/")
            .user_agent("app/1")
            .header("x-api-key", "k")
            .header("accept", "application/vnd.flags+json")
            .header_hook(|h: &mut HeaderMap| {
                let n = h.len().to_string();
                h.insert("x-seen", HeaderValue::from_str(&n).unwrap());
            })
            .validate()
            .unwrap();
        let r = build(&c, &flags_url(&c), Some("\"e\""));
        assert_eq!(r.headers["x-api-key"], "k");
        assert_eq!(r.headers[ACCEPT], "application/vnd.flags+json");
        assert_eq!(
            r.headers[USER_AGENT],
            format!("app/1 {}", crate::defaults::USER_AGENT).as_str()
        );
        // Accept, User-Agent, x-api-key, If-None-Match were set before the hook ran.
        assert_eq!(r.headers["x-seen"], "4");
        assert!(!format!("{r:?}").contains("\"k\""));
    }

    #[test]
    fn status_table() {
        let table = [
            (200, StatusClass::Success),
            (204, StatusClass::Success),
            (304, StatusClass::NotModified),
            (301, StatusClass::Retryable),
            (400, StatusClass::Permanent),
            (401, StatusClass::Permanent),
            (403, StatusClass::Permanent),
            (404, StatusClass::Permanent),
            (408, StatusClass::Retryable),
            (429, StatusClass::Retryable),
            (500, StatusClass::Retryable),
            (502, StatusClass::Retryable),
            (503, StatusClass::Retryable),
            (504, StatusClass::Retryable),
        ];
        for (status, class) in table {
            assert_eq!(
                classify(StatusCode::from_u16(status).unwrap()),
                class,
                "{status}"
            );
        }
    }

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(
            retry_after(StatusCode::from_u16(429).unwrap(), &h, now),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            retry_after(StatusCode::from_u16(503).unwrap(), &h, now),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            retry_after(StatusCode::from_u16(500).unwrap(), &h, now),
            None
        );
        let date = httpdate::fmt_http_date(now + Duration::from_secs(90));
        h.insert(RETRY_AFTER, HeaderValue::from_str(&date).unwrap());
        assert_eq!(
            retry_after(StatusCode::from_u16(503).unwrap(), &h, now),
            Some(Duration::from_secs(90))
        );
        let past = httpdate::fmt_http_date(now - Duration::from_secs(90));
        h.insert(RETRY_AFTER, HeaderValue::from_str(&past).unwrap());
        assert_eq!(
            retry_after(StatusCode::from_u16(503).unwrap(), &h, now),
            Some(Duration::ZERO)
        );
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(
            retry_after(StatusCode::from_u16(429).unwrap(), &h, now),
            None
        );
    }

    #[test]
    fn etag_is_trimmed_and_optional() {
        let mut h = HeaderMap::new();
        assert_eq!(etag(&h), None);
        h.insert(ETAG, HeaderValue::from_static(" \"abc\" "));
        assert_eq!(etag(&h).as_deref(), Some("\"abc\""));
    }
}
