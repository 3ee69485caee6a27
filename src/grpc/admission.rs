//! Calls in flight: at most so many in all, and at most so many from one
//! client address. A call past either is answered RESOURCE_EXHAUSTED at
//! once, before anything is read or allocated for it. With the arrival
//! layer (a request must arrive whole in time) and the streams cap per
//! connection, this bounds what stalled calls can hold: without it one
//! address's connections could keep 512 × 128 handlers (~10 KiB each)
//! waiting at any moment. A call counts until its response starts; a
//! watch's stream after that is the event service's to cap.

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tower::{Layer, Service};

use crate::log_bursts::LogBursts;

/// How many calls may be in flight.
#[derive(Debug, Clone, Copy)]
pub struct CallLimits {
    /// In all.
    pub max: usize,
    /// From one client address.
    pub per_address: usize,
}

impl Default for CallLimits {
    fn default() -> Self {
        Self {
            max: 16_384,
            per_address: 1024,
        }
    }
}

/// Wraps the server's services; one count for the whole listener.
#[derive(Clone)]
pub struct AdmissionLayer {
    counts: Arc<Counts>,
}

impl AdmissionLayer {
    pub fn new(limits: CallLimits) -> Self {
        Self {
            counts: Arc::new(Counts {
                limits,
                in_flight: Mutex::default(),
                bursts: LogBursts::new(Duration::from_secs(10)),
            }),
        }
    }
}

struct Counts {
    limits: CallLimits,
    in_flight: Mutex<InFlight>,
    bursts: LogBursts,
}

#[derive(Default)]
struct InFlight {
    all: usize,
    by_address: HashMap<IpAddr, usize>,
}

impl Counts {
    /// A place for a call from `ip`, or why not.
    fn admit(self: &Arc<Self>, ip: Option<IpAddr>) -> Result<Place, String> {
        let mut in_flight = self.in_flight.lock().map_err(|_| "admission poisoned")?;
        if in_flight.all >= self.limits.max {
            return Err(format!(
                "this replica has {} calls in flight, its limit (--max-calls); retry shortly",
                self.limits.max
            ));
        }
        if let Some(ip) = ip {
            let n = in_flight.by_address.entry(ip).or_default();
            if *n >= self.limits.per_address {
                return Err(format!(
                    "{} calls in flight from {ip}, the limit per address \
                     (--max-calls-per-address); retry shortly",
                    self.limits.per_address
                ));
            }
            *n += 1;
        }
        in_flight.all += 1;
        Ok(Place {
            counts: Arc::clone(self),
            ip,
        })
    }
}

/// A call's place among those in flight, given back when dropped.
struct Place {
    counts: Arc<Counts>,
    ip: Option<IpAddr>,
}

impl Drop for Place {
    fn drop(&mut self) {
        if let Ok(mut in_flight) = self.counts.in_flight.lock() {
            in_flight.all -= 1;
            if let Some(ip) = &self.ip {
                crate::counts::release(&mut in_flight.by_address, ip);
            }
        }
    }
}

impl<S> Layer<S> for AdmissionLayer {
    type Service = Admission<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Admission {
            inner,
            counts: Arc::clone(&self.counts),
        }
    }
}

#[derive(Clone)]
pub struct Admission<S> {
    inner: S,
    counts: Arc<Counts>,
}

/// The client's address, as tonic's `Request::remote_addr` finds it.
fn client_ip<B>(request: &Request<B>) -> Option<IpAddr> {
    let e = request.extensions();
    e.get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            e.get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|i| i.get_ref().remote_addr())
        })
        .map(|a| a.ip())
}

impl<S, B, R> Service<Request<B>> for Admission<S>
where
    S: Service<Request<B>, Response = Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        match self.counts.admit(client_ip(&request)) {
            Ok(place) => {
                let response = self.inner.call(request);
                Box::pin(async move {
                    let response = response.await;
                    drop(place);
                    response
                })
            }
            Err(why) => {
                self.counts.bursts.warn("calls refused", "calls", &why);
                let response = tonic::Status::resource_exhausted(why).into_http();
                Box::pin(std::future::ready(Ok(response)))
            }
        }
    }
}
