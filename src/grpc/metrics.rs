//! The tower layer that counts gRPC calls by method and status code and
//! times them.
//!
//! Where the status is: a call that fails before its first message (every
//! unary error, an interceptor's UNAUTHENTICATED, an unknown method) is
//! answered "trailers-only", with `grpc-status` in the response headers, and
//! is recorded when the response leaves the service. Otherwise (every OK
//! call, every stream) the status is in the trailers at the end of the body:
//! the body is wrapped and the call is recorded when the trailers pass, so a
//! stream's duration is its whole life. A body dropped before its trailers
//! (the client went away) counts as CANCELLED.
//!
//! Method labels are the `/package.Service/Method` paths of the API the
//! server describes through reflection (tenantd, health, reflection); any
//! other path counts as "unknown", so callers cannot add label values.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use prost::Message as _;
use tonic::Code;
use tower::{Layer, Service};

use super::code_name;
use crate::metrics::{CallLabels, MethodLabels, Metrics, Name};

/// The label of a path outside the served API.
pub const UNKNOWN_METHOD: &str = "unknown";

/// Every `/package.Service/Method` the server can answer; built from the
/// descriptor sets it registers for reflection, which are compile-time
/// constants.
static METHODS: LazyLock<HashSet<String>> = LazyLock::new(|| {
    let sets = [
        crate::pb::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
    ];
    let mut methods = HashSet::new();
    for set in sets {
        let set =
            prost_types::FileDescriptorSet::decode(set).expect("a built-in descriptor set decodes");
        for file in set.file {
            let package = file.package();
            for service in &file.service {
                for method in &service.method {
                    let service = service.name();
                    let method = method.name();
                    methods.insert(if package.is_empty() {
                        format!("/{service}/{method}")
                    } else {
                        format!("/{package}.{service}/{method}")
                    });
                }
            }
        }
    }
    methods
});

/// The method label of a request path.
pub fn method_label(path: &str) -> &'static str {
    METHODS.get(path).map_or(UNKNOWN_METHOD, String::as_str)
}

fn grpc_status(headers: &HeaderMap) -> Option<Code> {
    headers
        .get("grpc-status")
        .map(|v| Code::from_bytes(v.as_bytes()))
}

/// The code a client infers from an HTTP status without `grpc-status`
/// (gRPC's "HTTP to gRPC status code mapping").
fn from_http(status: http::StatusCode) -> Code {
    match status.as_u16() {
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502 | 503 | 504 => Code::Unavailable,
        _ => Code::Unknown,
    }
}

/// Wraps the server's services.
#[derive(Debug, Clone)]
pub struct GrpcMetricsLayer {
    metrics: Metrics,
}

impl GrpcMetricsLayer {
    pub fn new(metrics: Metrics) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetricsService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct GrpcMetricsService<S> {
    inner: S,
    metrics: Metrics,
}

impl<S, B, R> Service<Request<B>> for GrpcMetricsService<S>
where
    S: Service<Request<B>, Response = Response<R>>,
    S::Future: Send + 'static,
    R: Body + Unpin,
{
    type Response = Response<MetricsBody<R>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let mut call = Call {
            metrics: self.metrics.clone(),
            method: method_label(request.uri().path()),
            started: Instant::now(),
            recorded: false,
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = match response.await {
                Ok(response) => response,
                Err(e) => {
                    call.record(Code::Unknown);
                    return Err(e);
                }
            };
            let code = grpc_status(response.headers()).or_else(|| {
                let status = response.status();
                (status != http::StatusCode::OK).then(|| from_http(status))
            });
            let pending = match code {
                // Trailers-only: the body holds nothing more to wait for.
                Some(code) => {
                    call.record(code);
                    None
                }
                None => Some(call),
            };
            Ok(response.map(|inner| MetricsBody { inner, pending }))
        })
    }
}

/// One call until its status is known.
struct Call {
    metrics: Metrics,
    method: &'static str,
    started: Instant,
    recorded: bool,
}

impl Call {
    fn record(&mut self, code: Code) {
        if std::mem::replace(&mut self.recorded, true) {
            return;
        }
        let grpc = self.metrics.grpc();
        grpc.requests
            .get_or_create(&CallLabels {
                method: Name(self.method),
                code: Name(code_name(code)),
            })
            .inc();
        grpc.duration
            .get_or_create(&MethodLabels {
                method: Name(self.method),
            })
            .observe(self.started.elapsed().as_secs_f64());
    }
}

impl Drop for Call {
    /// Dropped unrecorded: the response body went before its trailers, so
    /// the client cancelled (or the connection broke).
    fn drop(&mut self) {
        self.record(Code::Cancelled);
    }
}

/// A response body that records its call when the trailers go by.
pub struct MetricsBody<B> {
    inner: B,
    /// `None` once recorded (or when the response was trailers-only).
    pending: Option<Call>,
}

impl<B: Body + Unpin> Body for MetricsBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        let code = match &polled {
            Poll::Ready(Some(Ok(frame))) => frame
                .trailers_ref()
                .map(|t| grpc_status(t).unwrap_or(Code::Unknown)),
            // A body that fails or ends without trailers gives the client
            // no status: it sees an error.
            Poll::Ready(Some(Err(_))) => Some(Code::Unknown),
            Poll::Ready(None) => Some(Code::Unknown),
            Poll::Pending => None,
        };
        if let Some(code) = code
            && let Some(mut call) = this.pending.take()
        {
            call.record(code);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_of_the_served_api_and_nothing_else() {
        assert_eq!(
            method_label("/tenantd.v1.TenantService/CreateTenant"),
            "/tenantd.v1.TenantService/CreateTenant"
        );
        assert_eq!(
            method_label("/tenantd.v1.MigrationService/WatchUpgrade"),
            "/tenantd.v1.MigrationService/WatchUpgrade"
        );
        assert_eq!(
            method_label("/grpc.health.v1.Health/Check"),
            "/grpc.health.v1.Health/Check"
        );
        assert_eq!(
            method_label("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
        );
        assert_eq!(
            method_label("/tenantd.v1.TenantService/0f8a1c52-5a4e-4c1e-9d7e-2f8f6a1b3c4d"),
            UNKNOWN_METHOD
        );
        assert_eq!(method_label("/"), UNKNOWN_METHOD);
    }

    #[test]
    fn code_names_are_canonical() {
        assert_eq!(code_name(Code::from_bytes(b"0")), "OK");
        assert_eq!(code_name(Code::from_bytes(b"5")), "NOT_FOUND");
        assert_eq!(code_name(Code::from_bytes(b"16")), "UNAUTHENTICATED");
        assert_eq!(code_name(Code::from_bytes(b"99")), "UNKNOWN");
    }
}
