//! `tenantd serve` as a newcomer runs it: no database URL, so it starts its
//! own private PostgreSQL cluster, serves, and on SIGTERM shuts down in order
//! (health NOT_SERVING, requests finish, cluster stopped, exit 0). The second
//! start reuses the cluster and its data. The data directory has one owner:
//! a restart right after Ctrl-C waits for the previous process, and a second
//! process on a live data directory is refused.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tenantd::pb::{self, tenant_service_client::TenantServiceClient};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::common::binary::{exited, follow_log, serve, signal};
use crate::common::{Authed, authed_channel};

struct Server {
    child: Child,
    addr: String,
    /// Its log so far.
    lines: Arc<Mutex<Vec<String>>>,
}

impl Drop for Server {
    /// A test that failed half-way leaves no server (and cluster) behind:
    /// SIGTERM, then SIGKILL if it has not exited within 30 s.
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        signal(&self.child, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `tenantd serve` on `data_dir`, on ports of its own.
fn command(data_dir: &Path) -> Command {
    let mut command = serve();
    command.arg("--data-dir").arg(data_dir);
    command
}

/// Starts the binary and reads its JSON log until it says where it listens.
fn start(data_dir: &Path) -> Server {
    let mut child = command(data_dir).spawn().expect("run tenantd");
    let (addr, lines) = follow_log(&mut child, Duration::from_secs(90));
    Server { child, addr, lines }
}

/// Waits for the process to exit.
async fn exit_of(mut server: Server) -> std::process::ExitStatus {
    exited(&mut server.child, Duration::from_secs(60)).await
}

async fn stop(server: Server) -> std::process::ExitStatus {
    signal(&server.child, Signal::SIGTERM);
    exit_of(server).await
}

/// A fresh data directory that the postgres user can reach when the tests
/// run as root.
fn data_dir() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let data_dir = dir.path().join("data");
    (dir, data_dir)
}

async fn channel(addr: &str) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn api_client(addr: &str, key: &str) -> TenantServiceClient<Authed> {
    TenantServiceClient::new(authed_channel(&format!("http://{addr}"), key).await)
}

async fn serving(addr: &str) -> i32 {
    let mut health = HealthClient::new(channel(addr).await);
    health
        .check(HealthCheckRequest {
            service: "tenantd.v1.TenantService".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
}

#[tokio::test]
async fn private_cluster_starts_serves_stops_and_is_reused() {
    let (_dir, data_dir) = data_dir();

    let server = start(&data_dir);
    assert_eq!(serving(&server.addr).await, ServingStatus::Serving as i32);
    // Dev mode wrote an admin key for tenantctl and friends, readable by the
    // owner only; without a credential the API refuses.
    let key_file = data_dir.join("admin.key");
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the key file is private");
    let key = std::fs::read_to_string(&key_file)
        .unwrap()
        .trim()
        .to_owned();
    let mut anonymous = TenantServiceClient::new(channel(&server.addr).await);
    let err = anonymous
        .list_tenants(pb::ListTenantsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let mut client = api_client(&server.addr, &key).await;
    let created = client
        .create_tenant(pb::CreateTenantRequest {
            name: "Private Cluster GmbH".into(),
            slug: "private-cluster".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    // Reflection is on, so stock tooling can discover the API.
    let mut reflection =
        tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(
            channel(&server.addr).await,
        );
    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            tonic_reflection::pb::v1::server_reflection_request::MessageRequest::ListServices(
                String::new(),
            ),
        ),
    };
    let mut replies = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let reply = replies.message().await.unwrap().unwrap();
    let listed = format!("{:?}", reply.message_response);
    assert!(listed.contains("tenantd.v1.TenantService"), "{listed}");
    assert!(listed.contains("grpc.health.v1.Health"), "{listed}");
    drop((client, replies, reflection));

    let status = stop(server).await;
    assert!(status.success(), "graceful exit: {status}");
    let pgdata = data_dir.join("pgdata");
    assert!(
        pgdata.join("PG_VERSION").exists(),
        "the cluster lives under --data-dir"
    );
    assert!(
        !pgdata.join("postmaster.pid").exists(),
        "the cluster was stopped"
    );

    // Second start: same cluster, same data.
    let server = start(&data_dir);
    let mut client = api_client(&server.addr, &key).await;
    let again = client
        .get_tenant(pb::GetTenantRequest {
            selector: Some(pb::get_tenant_request::Selector::Slug(
                "private-cluster".into(),
            )),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.id, created.id);
    drop(client);
    assert!(stop(server).await.success());
    assert!(!pgdata.join("postmaster.pid").exists());
}

/// Ctrl-C and at once `tenantd serve` again, as a newcomer does: the new
/// process waits (and says for which pid) until the old one has stopped the
/// cluster, then starts it again and serves — for SIGINT and SIGTERM alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_right_after_a_signal_waits_for_the_previous_process() {
    let (_dir, data_dir) = data_dir();
    let mut server = start(&data_dir);
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        let old_pid = server.child.id();
        signal(&server.child, sig);
        let next = start(&data_dir);
        assert!(
            exit_of(server).await.success(),
            "the previous process exits 0 after {sig}"
        );
        assert_eq!(serving(&next.addr).await, ServingStatus::Serving as i32);
        let key = std::fs::read_to_string(data_dir.join("admin.key")).unwrap();
        let mut client = api_client(&next.addr, key.trim()).await;
        client
            .list_tenants(pb::ListTenantsRequest::default())
            .await
            .expect("the catalog answers");
        drop(client);
        let waited = next
            .lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("waiting") && l.contains(&format!("pid {old_pid}")));
        assert!(waited, "the new process said it waited for pid {old_pid}");
        let lock = std::fs::read_to_string(data_dir.join("tenantd.lock")).unwrap();
        assert_eq!(lock, format!("{}\nrunning\n", next.child.id()));
        server = next;
    }
    assert!(stop(server).await.success());
}

/// A second `tenantd serve` on a data directory another one is serving
/// (other ports) exits at once, naming the owner's pid, and leaves the
/// owner's database alone.
#[tokio::test]
async fn a_second_process_on_a_live_data_dir_is_refused() {
    let (_dir, data_dir) = data_dir();
    let first = start(&data_dir);
    let key = std::fs::read_to_string(data_dir.join("admin.key")).unwrap();
    for attempt in 0..2 {
        let started = Instant::now();
        let mut second = command(&data_dir).spawn().expect("run tenantd");
        let mut pipe = second.stderr.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        });
        let status = loop {
            if let Some(status) = second.try_wait().unwrap() {
                break Some(status);
            }
            if started.elapsed() > Duration::from_secs(20) {
                second.kill().unwrap();
                second.wait().unwrap();
                break None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let stderr = reader.join().unwrap();
        let status = status.unwrap_or_else(|| {
            panic!("attempt {attempt}: still running after 20 s, not refused:\n{stderr}")
        });
        assert!(!status.success(), "attempt {attempt}: {status}\n{stderr}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "refused at once, not after {:?}",
            started.elapsed()
        );
        assert!(
            stderr.contains(&format!("pid {}", first.child.id())),
            "the error names the owner: {stderr}"
        );
        assert!(!stderr.contains("tenantd listening"), "{stderr}");
        // The first still serves, its database with it.
        assert_eq!(serving(&first.addr).await, ServingStatus::Serving as i32);
        let mut client = api_client(&first.addr, key.trim()).await;
        client
            .list_tenants(pb::ListTenantsRequest::default())
            .await
            .expect("the first one's catalog answers");
    }
    assert!(stop(first).await.success());
}
