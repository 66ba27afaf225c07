//! Serves the HTTP API with the limits a listener facing a network needs.
//!
//! `axum::serve` reads request headers with no deadline and accepts every connection,
//! so 3,000 slowloris connections (a header byte every few seconds) were held for as
//! long as their senders liked. This loop accepts at most [`MAX_HTTP_CONNECTIONS`]
//! at once (the next ones are closed at accept, before any work), gives each
//! [`HEADER_READ_TIMEOUT`] to send its request head, and on shutdown lets requests
//! in progress finish.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

/// Most HTTP connections open at once.
pub const MAX_HTTP_CONNECTIONS: usize = 1024;
/// Time a connection has to send a request's head (and between requests, to begin
/// the next one).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for requests in progress.
const DRAIN: Duration = Duration::from_secs(5);

/// Serves `router` on `listener` until `stop` changes.
pub async fn serve(listener: TcpListener, router: Router, mut stop: watch::Receiver<bool>) {
    let permits = Arc::new(Semaphore::new(MAX_HTTP_CONNECTIONS));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, say: wait rather than spin.
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics::counter!("tern_http_connections_refused_total").increment(1);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "HTTP connection ended");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("HTTP requests still running at shutdown");
    }
}
