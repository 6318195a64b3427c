//! `--stream`: the server's change stream, as a relay serves it. Each open gets a body of its
//! own (`Chunks::channel`) that starts with an `event: flags` naming the current ETag; each new
//! version sends one to every open stream, and a keep-alive comment goes out every 30 s (under
//! the clients' 45 s inactivity limit). While the API is down, new opens get a 503; streams
//! already open stay open (the server runs, its flags are what fail).

use std::sync::Arc;
use std::time::Duration;

use flagpole::{Chunks, Error, StreamResponse};
use http::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use http::StatusCode;
use tokio::sync::mpsc;

use super::{ColdResult, Server};

const KEEP_ALIVE: Duration = Duration::from_secs(30);

/// The open streams' feeds, and how many opens there were.
#[derive(Default)]
pub(super) struct Streams {
    feeds: Vec<mpsc::Sender<Result<Vec<u8>, Error>>>,
    opens: u64,
}

impl Streams {
    /// Sends `chunk` to every stream still open. A client that has not read the last few is
    /// skipped (it gets the next one): nothing queues up per client.
    pub(super) fn send(&mut self, chunk: &[u8]) {
        self.feeds.retain(|feed| !feed.is_closed());
        for feed in &self.feeds {
            let _ = feed.try_send(Ok(chunk.to_vec()));
        }
    }
}

/// `event: flags` for `etag`.
pub(super) fn event(etag: &HeaderValue) -> Vec<u8> {
    let etag = etag.to_str().unwrap_or_default();
    format!("event: flags\nid: {etag}\ndata: {{\"etag\":{etag:?}}}\n\n").into_bytes()
}

impl Server {
    pub(super) fn open(&self) -> StreamResponse {
        let mut state = self.state.lock().unwrap();
        state.streams.opens += 1;
        if state.down {
            return StreamResponse::new(
                StatusCode::SERVICE_UNAVAILABLE,
                HeaderMap::new(),
                Chunks::channel(1).1,
            );
        }
        let (feed, body) = Chunks::channel(4);
        let _ = feed.try_send(Ok(event(&state.etag)));
        state.streams.feeds.push(feed);
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        StreamResponse::new(StatusCode::OK, headers, body)
    }

    pub(super) fn opens(&self) -> u64 {
        self.state.lock().unwrap().streams.opens
    }
}

/// Sends the keep-alive comments, for as long as the runtime runs.
pub(super) fn keep_alives(server: &Arc<Server>) {
    let server = Arc::clone(server);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(KEEP_ALIVE);
        loop {
            tick.tick().await;
            server
                .state
                .lock()
                .unwrap()
                .streams
                .send(b": keep-alive\n\n");
        }
    });
}

/// The table's rows and the JSON line's fields of `--stream`.
pub(super) struct Report {
    pub(super) rows: Vec<(&'static str, String)>,
    pub(super) json: String,
}

pub(super) fn report(cold: &ColdResult, clients: usize) -> Report {
    let n = clients as f64;
    let rows = vec![
        (
            "change requests per client",
            format!("{:.3}", cold.change_requests as f64 / n),
        ),
        (
            "peak/mean after the change",
            format!("{:.2}", cold.after_change_peak_over_mean),
        ),
        (
            "requests in all (cold run)",
            cold.requests_total.to_string(),
        ),
        ("stream opens (cold run)", cold.stream_opens.to_string()),
    ];
    let json = format!(
        ",\"stream\":{{\"change_99_s\":{},\"change_requests\":{},\"change_requests_per_client\":{:.3},\"after_change_peak_over_mean\":{:.3},\"requests_total\":{},\"stream_opens\":{}}}",
        cold.change_99_s
            .map_or("null".to_owned(), |s| format!("{s:.3}")),
        cold.change_requests,
        cold.change_requests as f64 / n,
        cold.after_change_peak_over_mean,
        cold.requests_total,
        cold.stream_opens,
    );
    Report { rows, json }
}
