//! The metrics listener: plain HTTP/1.1, `GET /metrics` answers the
//! OpenMetrics text, anything else 404 (405 for another method on
//! /metrics). It is separate from the gRPC port so that it can be exposed to
//! the scraper only.
//!
//! Its connections are guarded as every listener's are
//! ([`crate::listener`]); it stops when `stop` is cancelled, letting a
//! scrape in flight finish.

use std::convert::Infallible;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{CONTENT_TYPE, Refresh};
use crate::listener::{ConnectionLimits, Served};

/// Serves `collector`'s metrics on `listener` until `stop` is cancelled.
pub async fn serve<C: Refresh>(
    listener: TcpListener,
    limits: ConnectionLimits,
    collector: C,
    stop: CancellationToken,
) {
    let collector = Arc::new(collector);
    let service = hyper::service::service_fn(move |request| {
        let collector = collector.clone();
        async move { Ok::<_, Infallible>(answer(&request, &*collector).await) }
    });
    crate::listener::serve_http1(listener, limits, Served::Metrics, service, stop).await;
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
