//! Helpers shared by the wiremock-based test files (`cli.rs`, `http_wire.rs`).

use wiremock::{MockServer, Request};

/// Every request the server got so far, oldest first.
pub async fn requests(server: &MockServer) -> Vec<Request> {
    server
        .received_requests()
        .await
        .expect("request recording is on")
}

/// `http://127.0.0.1:<port>` for a port that was just free: connecting is refused.
pub fn closed_port_base() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}
