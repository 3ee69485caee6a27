//! `tenantd serve` as a newcomer runs it: no database URL, so it starts its
//! own private PostgreSQL cluster, serves, and on SIGTERM shuts down in order
//! (health NOT_SERVING, requests finish, cluster stopped, exit 0). The second
//! start reuses the cluster and its data.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tenantd::pb::{self, tenant_service_client::TenantServiceClient};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

struct Server {
    child: Child,
    addr: String,
}

/// Starts the binary and reads its JSON log until it says where it listens.
fn start(data_dir: &Path) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tenantd"))
        .args([
            "serve",
            "--listen-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("TENANTD_DATABASE_URL")
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tenantd");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("tenantd: {line}");
            if !sent && line.contains("tenantd listening") {
                let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                tx.send(v["addr"].as_str().unwrap().to_owned()).unwrap();
                sent = true;
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(90))
        .expect("tenantd reports its address");
    Server { child, addr }
}

async fn stop(mut server: Server) -> std::process::ExitStatus {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "tenantd did not stop within 60 s of SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn channel(addr: &str) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn api_client(
    addr: &str,
    key: &str,
) -> TenantServiceClient<
    tonic::service::interceptor::InterceptedService<
        tonic::transport::Channel,
        tenantd::grpc::auth::Bearer,
    >,
> {
    TenantServiceClient::with_interceptor(
        channel(addr).await,
        tenantd::grpc::auth::Bearer::new(key).unwrap(),
    )
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
    let dir = tempfile::tempdir().unwrap();
    // Let the postgres user reach it when the tests run as root.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let data_dir = dir.path().join("data");

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
