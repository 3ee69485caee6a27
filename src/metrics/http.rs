//! The metrics listener: plain HTTP/1.1, `GET /metrics` answers the
//! OpenMetrics text, anything else 404 (405 for another method on
//! /metrics). It is separate from the gRPC port so that it can be exposed to
//! the scraper only.
//!
//! Bounded: at most `MAX_CONNECTIONS` connections at once (more are closed
//! on accept), request headers within `HEADER_TIMEOUT`. It stops, dropping
//! its connections, when `stop` is cancelled.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{CONTENT_TYPE, Refresh};

/// Scrapers are few; anything beyond this is not one.
const MAX_CONNECTIONS: usize = 32;
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `collector`'s metrics on `listener` until `stop` is cancelled.
pub async fn serve<C: Refresh>(listener: TcpListener, collector: C, stop: CancellationToken) {
    let collector = Arc::new(collector);
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: pause, don't spin.
                tracing::warn!(error = %e, "metrics listener cannot accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if connections.len() >= MAX_CONNECTIONS {
            tracing::warn!(
                limit = MAX_CONNECTIONS,
                "too many metrics connections; closing a new one"
            );
            continue;
        }
        let collector = collector.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let collector = collector.clone();
                async move { Ok::<_, Infallible>(answer(&request, &*collector).await) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(error = %e, "metrics connection ended with an error");
            }
        });
    }
    // Scrapes still open are cut off.
    connections.shutdown().await;
}

async fn answer<C: Refresh>(request: &Request<Incoming>, collector: &C) -> Response<Full<Bytes>> {
    if request.uri().path() != "/metrics" {
        return plain(
            StatusCode::NOT_FOUND,
            "not found; metrics are at /metrics\n",
        );
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
        response
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    collector.refresh().await;
    let mut response = Response::new(Full::new(Bytes::from(collector.metrics().encode())));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(CONTENT_TYPE),
    );
    response
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
