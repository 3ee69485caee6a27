//! The gRPC listener under connections that never speak: each address gets
//! so many places, a silent connection is closed after the handshake
//! timeout, and callers already connected are not shut out.

use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::common::binary::Tenantd;
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

/// Sets the open-file limit (soft, hard) of the process `command` starts.
fn open_files(command: &mut std::process::Command, soft: u64, hard: u64) {
    use nix::sys::resource::{Resource, setrlimit};
    use std::os::unix::process::CommandExt;
    // SAFETY: between fork and exec only setrlimit runs, which is
    // async-signal-safe, and nothing is allocated.
    unsafe {
        command.pre_exec(move || {
            setrlimit(Resource::RLIMIT_NOFILE, soft, hard).map_err(std::io::Error::from)
        });
    }
}

/// The process's (soft, hard) open-file limit from /proc.
fn open_file_limit(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("an open-files line");
    let n: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (n[0], n[1])
}

#[tokio::test]
async fn the_open_file_limit_is_raised_or_the_grpc_cap_is_fitted_under_it() {
    let db = crate::common::TestDb::create().await;
    let url = crate::common::database_url(&db);
    let lowered = |log: &[String]| {
        log.iter()
            .find(|l| l.contains("--max-connections lowered"))
            .cloned()
    };
    // A soft limit under a higher hard one (systemd's 1024 soft limit): raised.
    let mut raised = Tenantd::start_adjusted(&url, &[], &[], |c| open_files(c, 1024, 8192));
    assert_eq!(open_file_limit(raised.pid()), (8192, 8192));
    assert_eq!(lowered(&raised.log.lock().unwrap()), None);
    assert!(raised.terminate(Duration::from_secs(30)).await.success());

    // A hard limit too low for 4,096 connections beside the database's and
    // the HTTP listeners': the cap is lowered to what fits, and said.
    let mut tight = Tenantd::start_adjusted(
        &url,
        &[
            "--max-connections-per-address",
            "4096",
            "--handshake-timeout",
            "2s",
        ],
        &[],
        |c| open_files(c, 600, 600),
    );
    let line = lowered(&tight.log.lock().unwrap()).expect("a warning that the cap was lowered");
    let cap: usize = line
        .split("lowered from 4096 to ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!((16..600).contains(&cap), "{line}");
    // The cap holds: its connections are taken, the next is closed at once…
    let mut silent = Vec::new();
    for _ in 0..cap {
        silent.push(TcpStream::connect(&tight.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut extra = TcpStream::connect(&tight.addr).await.unwrap();
    let took = closed_within(&mut extra, Duration::from_secs(3)).await;
    assert!(took < Duration::from_secs(2), "{took:?}");
    // …and once the silent ones are gone the process serves: it never ran
    // out of descriptors for PostgreSQL.
    for s in &mut silent {
        closed_within(s, Duration::from_secs(8)).await;
    }
    let mut c = crate::common::clients_at(&tight.endpoint()).await;
    c.tenant("fitted").await;
    assert!(tight.terminate(Duration::from_secs(30)).await.success());
}

/// The grpc-status of an h2 response: in its headers (trailers-only) or
/// its trailers.
async fn grpc_status(response: http::Response<h2::RecvStream>) -> String {
    if let Some(s) = response.headers().get("grpc-status") {
        return s.to_str().unwrap().to_owned();
    }
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        chunk.unwrap();
    }
    let trailers = body.trailers().await.unwrap().expect("trailers");
    trailers["grpc-status"].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn streams_per_connection_are_capped_and_a_request_that_never_arrives_ends() {
    let server = TestServer::start_with(|c| {
        c.connections.handshake_timeout = Duration::from_secs(2);
        c.max_streams_per_connection = 8;
    })
    .await;
    // A raw HTTP/2 client, no credential: the health service is open.
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let (send, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut send = send.ready().await.unwrap();
    // The server's SETTINGS advertise the cap.
    let deadline = Instant::now() + Duration::from_secs(5);
    while send.current_max_send_streams() != 8 {
        assert!(
            Instant::now() < deadline,
            "max concurrent streams: {}",
            send.current_max_send_streams()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Calls that announce a 1,000-byte message and never send it: the
    // health check and an API method end DEADLINE_EXCEEDED; reflection's
    // stream of requests ends when its request stream fails (OK, by
    // tonic-reflection).
    let paths = [
        ("/grpc.health.v1.Health/Check", "4"),
        (
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "0",
        ),
        ("/tenantd.v1.TenantService/ListTenants", "4"),
    ];
    let started = Instant::now();
    let mut held = Vec::new();
    for i in 0..8 {
        let request = http::Request::builder()
            .method("POST")
            .uri(format!(
                "http://{}{}",
                server.addr,
                paths[i % paths.len()].0
            ))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header(
                "authorization",
                format!("Bearer {}", crate::common::admin_key()),
            )
            .body(())
            .unwrap();
        send = send.ready().await.unwrap();
        let (response, mut body) = send.send_request(request, false).unwrap();
        body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 3, 232, 1, 2]), false)
            .unwrap();
        held.push((response, body, paths[i % paths.len()]));
    }
    // Each ends DEADLINE_EXCEEDED once the timeout has passed; nothing
    // keeps them, or what their handlers hold, open.
    for (response, _body, (path, status)) in held {
        let response = tokio::time::timeout(Duration::from_secs(10), response)
            .await
            .expect("an answer to a request that never arrived")
            .unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(10), grpc_status(response))
            .await
            .unwrap_or_else(|_| panic!("{path}: the stream stayed open"));
        assert_eq!(ended, status, "{path}");
    }
    let took = started.elapsed();
    assert!(
        (Duration::from_millis(1500)..Duration::from_secs(8)).contains(&took),
        "{took:?}"
    );
    // Whole requests are served as before.
    let mut c = server.clients().await;
    c.tenant("arrival").await;
}

/// A raw HTTP/2 connection to `addr` from `source` (any 127.0.0.0/8
/// address), driven in the background.
async fn h2_from(
    addr: std::net::SocketAddr,
    source: [u8; 4],
) -> h2::client::SendRequest<bytes::Bytes> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(std::net::SocketAddr::from((source, 0)))
        .unwrap();
    let tcp = socket.connect(addr).await.unwrap();
    let (send, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    send.ready().await.unwrap()
}

/// A health check (no credential needed) that announces a 1,000-byte
/// message and never sends it; its response, when it comes.
async fn stalled_call(
    send: &mut h2::client::SendRequest<bytes::Bytes>,
    addr: std::net::SocketAddr,
) -> (h2::client::ResponseFuture, h2::SendStream<bytes::Bytes>) {
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/grpc.health.v1.Health/Check"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    *send = send.clone().ready().await.unwrap();
    let (response, mut body) = send.send_request(request, false).unwrap();
    body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 3, 232, 1, 2]), false)
        .unwrap();
    (response, body)
}

/// The grpc-status a call ends with, and how long from now it took.
async fn ends_with(
    call: (h2::client::ResponseFuture, h2::SendStream<bytes::Bytes>),
) -> (String, Duration) {
    let started = Instant::now();
    let (response, _body) = call;
    let response = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .expect("an answer")
        .unwrap();
    (grpc_status(response).await, started.elapsed())
}

#[tokio::test]
async fn calls_in_flight_are_capped_per_address_and_in_all() {
    let server = TestServer::start_with(|c| {
        c.connections.handshake_timeout = Duration::from_secs(3);
        c.calls = tenantd::grpc::admission::CallLimits {
            max: 6,
            per_address: 4,
        };
    })
    .await;
    let addr = server.addr;
    let mut a = h2_from(addr, [127, 0, 0, 1]).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(stalled_call(&mut a, addr).await);
    }
    // The address's fifth is refused at once, not held.
    let (status, took) = ends_with(stalled_call(&mut a, addr).await).await;
    assert_eq!(status, "8", "RESOURCE_EXHAUSTED");
    assert!(took < Duration::from_secs(2), "{took:?}");
    // Another address has its own count, under the total: two fill it,
    // and the next call from anywhere is refused at once.
    let mut b = h2_from(addr, [127, 0, 0, 2]).await;
    for _ in 0..2 {
        held.push(stalled_call(&mut b, addr).await);
    }
    let (status, took) = ends_with(stalled_call(&mut b, addr).await).await;
    assert_eq!(status, "8", "RESOURCE_EXHAUSTED");
    assert!(took < Duration::from_secs(2), "{took:?}");
    // The held calls end at the arrival deadline and give their places back.
    for call in held {
        assert_eq!(ends_with(call).await.0, "4");
    }
    let mut c = server.clients().await;
    c.tenant("admitted").await;
}
