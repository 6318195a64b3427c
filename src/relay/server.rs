//! The HTTP/1.1 server: accepting within the connection limit, the header timeout against slow
//! clients, and a drain at shutdown.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use super::route::{self, Disconnect};
use super::State;

pub(super) async fn serve(listener: TcpListener, state: Arc<State>) {
    let permits = Arc::new(Semaphore::new(state.limits.max_connections));
    let mut connections = JoinSet::new();
    let token = state.token.clone();
    loop {
        tokio::select! {
            () = token.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => match Arc::clone(&permits).try_acquire_owned() {
                    Ok(permit) => {
                        connections.spawn(connection(stream, Arc::clone(&state), permit));
                    }
                    // Past the limit: closed at once, so a flood cannot take the memory.
                    Err(_) => {
                        state.metrics.refused();
                        drop(stream);
                    }
                },
                Err(error) => {
                    // Out of file descriptors, say: wait a little instead of spinning.
                    tracing::warn!(%error, "relay could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(state.limits.drain, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            left = connections.len(),
            "relay drain timed out; closing the rest"
        );
        connections.abort_all();
    }
}

async fn connection(stream: TcpStream, state: Arc<State>, _permit: OwnedSemaphorePermit) {
    let _ = stream.set_nodelay(true);
    // A child of its own: every connection polls it on each wake, and waiters on one shared
    // token would all take that token's lock.
    let token = state.token.child_token();
    let header_timeout = state.limits.header_read_timeout;
    let disconnect = Disconnect::default();
    let for_requests = disconnect.clone();
    let service = service_fn(move |mut request: Request<Incoming>| {
        let state = Arc::clone(&state);
        request.extensions_mut().insert(for_requests.clone());
        async move { Ok::<_, Infallible>(route::handle(request, &state).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    // A disconnect drops the connection unfinished, which closes the socket: hyper is stuck
    // writing to a client that reads nothing, so no graceful end would ever complete.
    let dropped = disconnect.0.cancelled();
    tokio::pin!(dropped);
    tokio::select! {
        _ = conn.as_mut() => {}
        () = dropped.as_mut() => {}
        () = token.cancelled() => {
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                _ = conn => {}
                () = dropped => {}
            }
        }
    }
}
