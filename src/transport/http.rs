use std::fmt;

use http::header::CONTENT_LENGTH;

use super::{BoxFuture, Request, Response, Transport};
use crate::error::Error;

/// The real transport: `reqwest`, reading the body in chunks and stopping as soon as it passes the
/// size limit.
///
/// TLS comes from the cargo features: `rustls` (the default) or `native-tls`. With neither, the
/// client speaks plain `http` only (unless another crate in the build enables a reqwest TLS
/// backend), and an `https` request fails with [`Error::Connect`]. Proxies, custom roots and
/// pooling are configured on a caller's `reqwest::Client`, given with
/// [`FlagsBuilder::http_client`](crate::FlagsBuilder::http_client) or
/// [`with_client`](Self::with_client).
///
/// ```
/// let transport = flagpole::HttpTransport::new().unwrap();
/// # let _ = transport;
/// let client = reqwest::Client::builder()
///     // .proxy(reqwest::Proxy::https("http://proxy.internal:3128")?)
///     .build()
///     .unwrap();
/// let transport = flagpole::HttpTransport::with_client(client);
/// # let _ = transport;
/// ```
#[derive(Clone)]
pub struct HttpTransport {
    client: reqwest::Client,
}

impl fmt::Debug for HttpTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpTransport").finish_non_exhaustive()
    }
}

impl HttpTransport {
    /// A transport with a new `reqwest::Client` identifying itself as `flagpole/<version>`.
    ///
    /// # Errors
    /// [`Error::Config`] when the TLS backend cannot be initialised.
    pub fn new() -> Result<Self, Error> {
        let client = reqwest::Client::builder()
            .user_agent(crate::defaults::USER_AGENT)
            .build()
            .map_err(|e| Error::config(format!("cannot build the HTTP client: {e}")))?;
        Ok(HttpTransport { client })
    }

    /// A transport over a caller-configured client (proxies, TLS roots, user agent).
    pub fn with_client(client: reqwest::Client) -> Self {
        HttpTransport { client }
    }
}

impl Transport for HttpTransport {
    fn send(&self, request: Request) -> BoxFuture<'static, Result<Response, Error>> {
        let client = self.client.clone();
        Box::pin(async move {
            let limit = request.max_body_bytes;
            let (status, headers, mut response) = head(&client, request).await?;
            // A declared length over the limit fails before a single body byte is read.
            let declared = headers
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if declared.is_some_and(|n| n > limit as u64) {
                return Err(Error::TooLarge { limit });
            }
            // The declared length is a hint from the server, not a promise: reserve a little.
            let mut body = Vec::with_capacity(declared.map_or(0, |n| n.min(64 * 1024) as usize));
            while let Some(chunk) = response.chunk().await.map_err(map_reqwest)? {
                if body.len() + chunk.len() > limit {
                    return Err(Error::TooLarge { limit });
                }
                body.extend_from_slice(&chunk);
            }
            Ok(Response::new(status, headers, body))
        })
    }

    /// A client given with [`with_client`](Self::with_client) that has its own total `timeout`
    /// cuts the stream at that age; the stream then reconnects.
    #[cfg(feature = "stream")]
    fn open(&self, request: Request) -> BoxFuture<'static, Result<super::StreamResponse, Error>> {
        let client = self.client.clone();
        Box::pin(async move {
            let (status, headers, response) = head(&client, request).await?;
            Ok(super::StreamResponse::new(
                status,
                headers,
                super::Chunks::http(response),
            ))
        })
    }
}

/// Sends the GET and waits for the status and headers (taken out of the response); the body is
/// left to read.
async fn head(
    client: &reqwest::Client,
    request: Request,
) -> Result<(http::StatusCode, http::HeaderMap, reqwest::Response), Error> {
    let mut response = client
        .get(request.url)
        .headers(request.headers)
        .send()
        .await
        .map_err(map_reqwest)?;
    let headers = std::mem::take(response.headers_mut());
    Ok((response.status(), headers, response))
}

pub(super) fn map_reqwest(e: reqwest::Error) -> Error {
    // The URL carries `user=<profile id>`: it must never reach an error message or a log.
    let e = e.without_url();
    // Timeouts are enforced by the poller around the whole request; reqwest's own only fire for
    // a caller-supplied client with its own timeout, and mean the same thing.
    if e.is_timeout() {
        Error::Timeout {
            after: std::time::Duration::ZERO,
        }
    } else {
        Error::connect(e)
    }
}
