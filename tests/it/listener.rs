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
        c.connections = tenantd::listener::ConnectionLimits {
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

/// Sends one HTTP/1.1 request on a new connection to `addr` and returns
/// the response's status line.
async fn status_line(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::AsyncWriteExt;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut response))
        .await
        .expect("a response within 10 s")
        .expect("read the response");
    let text = String::from_utf8_lossy(&response);
    text.lines().next().unwrap_or_default().to_owned()
}

/// Reads `s` until the server closes it (whatever it sends first); how
/// long that took.
async fn ended_within(s: &mut TcpStream, within: Duration) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(within, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => {}
            Err(_) => panic!("the connection was still open after {within:?}"),
        }
    }
}

#[tokio::test]
async fn the_console_and_metrics_listeners_cap_silent_and_slow_connections() {
    use tokio::io::AsyncWriteExt;
    let server = TestServer::start_with(|c| {
        c.console_addr = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
        c.http_connections = tenantd::listener::ConnectionLimits {
            max: 32,
            per_address: 4,
            handshake_timeout: Duration::from_secs(2),
        };
    })
    .await;
    let listeners = [
        (
            "metrics",
            server.metrics_addr().expect("metrics on"),
            "/metrics",
        ),
        ("console", server.console_addr().expect("console on"), "/"),
    ];
    for (name, addr, path) in listeners {
        assert!(
            status_line(addr, path).await.starts_with("HTTP/1.1 "),
            "{name} answers before the flood"
        );
        // Two that never speak, two that send half a request's headers
        // and then nothing (slowloris): the address's four places.
        let mut held = Vec::new();
        for i in 0..4 {
            let mut s = TcpStream::connect(addr).await.unwrap();
            if i % 2 == 1 {
                s.write_all(
                    format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow:").as_bytes(),
                )
                .await
                .unwrap();
            }
            held.push(s);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Past the address's places: closed at once, whatever it sends.
        for _ in 0..3 {
            let mut extra = TcpStream::connect(addr).await.unwrap();
            let _ = extra
                .write_all(format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
                .await;
            let took = ended_within(&mut extra, Duration::from_secs(3)).await;
            assert!(took < Duration::from_secs(2), "{name}: {took:?}");
        }
        // The silent and the slow are closed after the handshake timeout…
        for s in &mut held {
            let took = ended_within(s, Duration::from_secs(8)).await;
            assert!(took < Duration::from_secs(6), "{name}: {took:?}");
        }
        // …and their places serve new requests.
        let line = status_line(addr, path).await;
        assert!(
            line.starts_with("HTTP/1.1 "),
            "{name} after the flood: {line:?}"
        );
        if name == "metrics" {
            assert_eq!(line, "HTTP/1.1 200 OK");
        }
    }
}
