//! The gRPC listener under connections that never speak: each address gets
//! so many places, a silent connection is closed after the handshake
//! timeout, and callers already connected are not shut out.

use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::common::{TestServer, lifecycle};

/// Waits until the server closes `s` (EOF or reset); how long it took.
async fn closed_within(s: &mut TcpStream, within: Duration) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 64];
    match tokio::time::timeout(within, s.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => started.elapsed(),
        Ok(Ok(n)) => panic!("the server sent {n} bytes to a silent connection"),
        Err(_) => panic!("the connection was still open after {within:?}"),
    }
}

#[tokio::test]
async fn silent_connections_are_capped_per_address_and_closed_after_the_handshake_timeout() {
    let server = TestServer::start_with(|c| {
        c.connections = tenantd::grpc::incoming::ConnectionLimits {
            max: 64,
            per_address: 6,
            handshake_timeout: Duration::from_secs(3),
        };
    })
    .await;
    // A caller connected before the flood (one of the address's six).
    let mut c = server.clients().await;
    let tenant = c.tenant("listener").await;
    let mut silent = Vec::new();
    for _ in 0..5 {
        silent.push(TcpStream::connect(server.addr).await.unwrap());
    }
    // Past the address's places: closed at once.
    for _ in 0..3 {
        let mut extra = TcpStream::connect(server.addr).await.unwrap();
        let took = closed_within(&mut extra, Duration::from_secs(2)).await;
        assert!(took < Duration::from_secs(2), "{took:?}");
    }
    // The caller already connected goes on.
    c.tenants
        .suspend_tenant(lifecycle(&tenant.id))
        .await
        .expect("a connected caller is served during the flood");
    // The silent ones are closed after the handshake timeout…
    for s in &mut silent {
        closed_within(s, Duration::from_secs(8)).await;
    }
    // …and their places serve new callers.
    let mut fresh = server.clients().await;
    fresh
        .tenants
        .resume_tenant(lifecycle(&tenant.id))
        .await
        .expect("a new caller after the silent connections were closed");
}
