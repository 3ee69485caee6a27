//! gRPC over TLS and mutual TLS, and the token signing key from a file: a
//! CA made for the test (rcgen) signs the server's certificate and a
//! client's; a second CA plays the stranger.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use tenantd::grpc::tls::ServerTls;
use tenantd::pb;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::common::{TestDb, TestServer, admin_key};

/// The PEM files of one test: a CA, the server's certificate for
/// `localhost` and 127.0.0.1, a client certificate of that CA, and a
/// stranger CA with a client certificate of its own.
pub(crate) struct Pki {
    dir: tempfile::TempDir,
}

/// Writes `name.pem` and `name.key`: a certificate for `cn` and `sans`,
/// signed by `ca`.
pub(crate) fn issue(
    dir: &Path,
    name: &str,
    cn: &str,
    sans: &[&str],
    usage: ExtendedKeyUsagePurpose,
    ca: &CertifiedIssuer<'static, KeyPair>,
) {
    let mut params =
        CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, ca).unwrap();
    std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
}

/// Writes `name.pem`: a self-signed CA, and answers it.
pub(crate) fn ca(dir: &Path, name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    std::fs::write(dir.join(format!("{name}.pem")), ca.pem()).unwrap();
    ca
}

impl Pki {
    pub(crate) fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ours = ca(dir.path(), "ca");
        issue(
            dir.path(),
            "server",
            "server",
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
            &ours,
        );
        issue(
            dir.path(),
            "client",
            "client",
            &[],
            ExtendedKeyUsagePurpose::ClientAuth,
            &ours,
        );
        let stranger = ca(dir.path(), "stranger-ca");
        issue(
            dir.path(),
            "stranger",
            "stranger",
            &[],
            ExtendedKeyUsagePurpose::ClientAuth,
            &stranger,
        );
        Pki { dir }
    }

    pub(crate) fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    fn read(&self, file: &str) -> Vec<u8> {
        std::fs::read(self.path(file)).unwrap()
    }

    pub(crate) fn server(&self, mutual: bool) -> ServerTls {
        ServerTls {
            cert: self.path("server.pem"),
            key: self.path("server.key"),
            client_ca: mutual.then(|| self.path("ca.pem")),
        }
    }

    /// A client trusting `ca_file`, presenting `identity` (`name.pem`/`.key`).
    pub(crate) fn client(&self, ca_file: &str, identity: Option<&str>) -> ClientTlsConfig {
        let mut config = ClientTlsConfig::new()
            .domain_name("localhost")
            .ca_certificate(Certificate::from_pem(self.read(ca_file)));
        if let Some(name) = identity {
            config = config.identity(Identity::from_pem(
                self.read(&format!("{name}.pem")),
                self.read(&format!("{name}.key")),
            ));
        }
        config
    }
}

/// The server's port, for an https:// or http:// address of our choosing.
fn port(server: &TestServer) -> u16 {
    server
        .endpoint()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// Connects and asks for health: Ok when the whole TLS exchange works.
async fn health(endpoint: Endpoint) -> Result<(), String> {
    let channel: Channel = endpoint
        .connect_timeout(std::time::Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .map(|_| ())
        .map_err(|e| format!("health: {e:?}"))
}

pub(crate) fn https(server: &TestServer, tls: ClientTlsConfig) -> Endpoint {
    Endpoint::from_shared(format!("https://localhost:{}", port(server)))
        .unwrap()
        .tls_config(tls)
        .unwrap()
}

fn plaintext(server: &TestServer) -> Endpoint {
    Endpoint::from_shared(format!("http://127.0.0.1:{}", port(server))).unwrap()
}

#[tokio::test]
async fn tls_serves_who_trusts_the_ca_and_refuses_plaintext_and_strangers() {
    let pki = Pki::new();
    let tls = pki.server(false);
    let server = TestServer::start_with(|c| c.tls = Some(tls)).await;

    health(https(&server, pki.client("ca.pem", None)))
        .await
        .expect("a client trusting the CA is served");
    // An authenticated API call over TLS, too.
    let channel = https(&server, pki.client("ca.pem", None))
        .connect()
        .await
        .unwrap();
    let mut tenants = pb::tenant_service_client::TenantServiceClient::with_interceptor(
        channel,
        tenantd::grpc::auth::Bearer::new(admin_key()).unwrap(),
    );
    tenants
        .list_tenants(pb::ListTenantsRequest::default())
        .await
        .expect("ListTenants over TLS");

    assert!(
        health(plaintext(&server)).await.is_err(),
        "a plaintext client must not be served by a TLS server"
    );
    assert!(
        health(https(&server, pki.client("stranger-ca.pem", None)))
            .await
            .is_err(),
        "a client that does not trust the server's CA must not complete the handshake"
    );
    // A certificate names the host it is for: 127.0.0.2 is not in it.
    let wrong_name = Endpoint::from_shared(format!("https://127.0.0.1:{}", port(&server)))
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .domain_name("tenantd.example")
                .ca_certificate(Certificate::from_pem(pki.read("ca.pem"))),
        )
        .unwrap();
    assert!(
        health(wrong_name).await.is_err(),
        "a wrong host name is refused"
    );
}

#[tokio::test]
async fn mutual_tls_refuses_clients_without_a_certificate_of_its_ca() {
    let pki = Pki::new();
    let tls = pki.server(true);
    let server = TestServer::start_with(|c| c.tls = Some(tls)).await;

    health(https(&server, pki.client("ca.pem", Some("client"))))
        .await
        .expect("a client with a certificate of the CA is served");
    for (why, identity) in [
        ("no client certificate", None),
        ("a certificate of another CA", Some("stranger")),
        (
            "the server's own certificate, not a client's",
            Some("server"),
        ),
    ] {
        assert!(
            health(https(&server, pki.client("ca.pem", identity)))
                .await
                .is_err(),
            "{why} must be refused"
        );
    }
    assert!(health(plaintext(&server)).await.is_err());
}

/// tenantctl against a TLS server: `--ca` (and `--cert`/`--cert-key` for
/// mutual TLS) in, the tenant list out; without them it is refused.
#[tokio::test]
async fn tenantctl_speaks_tls_and_mutual_tls() {
    let pki = Pki::new();
    let tls = pki.server(true);
    let server = TestServer::start_with(|c| c.tls = Some(tls)).await;
    let endpoint = format!("https://localhost:{}", port(&server));
    let run = |extra: Vec<String>| {
        let endpoint = endpoint.clone();
        async move {
            tokio::process::Command::new(env!("CARGO_BIN_EXE_tenantctl"))
                .env_clear()
                .env("TENANTD_KEY", admin_key())
                .arg("--endpoint")
                .arg(&endpoint)
                .args(["--output", "json", "--timeout", "10s"])
                .args(extra)
                .args(["tenants", "list"])
                .output()
                .await
                .unwrap()
        }
    };
    // Flags naming files of the test's PKI: ("--ca", "ca.pem"), …
    let flags = |pairs: &[(&str, &str)]| -> Vec<String> {
        pairs
            .iter()
            .flat_map(|(flag, file)| [flag.to_string(), pki.path(file).display().to_string()])
            .collect()
    };
    let client_cert = [("--cert", "client.pem"), ("--cert-key", "client.key")];
    let ok = run(flags(&[&[("--ca", "ca.pem")][..], &client_cert].concat())).await;
    assert!(
        ok.status.success(),
        "tenantctl over mutual TLS: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let without_cert = run(flags(&[("--ca", "ca.pem")])).await;
    assert!(!without_cert.status.success(), "no client certificate");
    let untrusted = run(flags(&client_cert)).await;
    assert!(
        !untrusted.status.success(),
        "the system roots do not know the test CA"
    );

    // TLS options with a plaintext endpoint are a usage error (exit 2).
    let usage = tokio::process::Command::new(env!("CARGO_BIN_EXE_tenantctl"))
        .env_clear()
        .args(["--endpoint", &server.endpoint(), "--ca"])
        .arg(pki.path("ca.pem"))
        .args(["tenants", "list"])
        .output()
        .await
        .unwrap();
    assert_eq!(usage.status.code(), Some(2), "{usage:?}");
    assert!(String::from_utf8_lossy(&usage.stderr).contains("https://"));
}

/// With a signing key from a file, every replica that reads the same file
/// accepts the others' tokens, and one using the catalog's key does not.
#[tokio::test]
async fn replicas_sharing_a_signing_key_file_accept_each_others_tokens() {
    let key = tenantd::identity::SigningKey(vec![42u8; 32]);
    let db = TestDb::create().await;
    let options = db.options();
    let a = TestServer::start_in(db, {
        let key = key.clone();
        move |c| c.identity.signing_key = Some(key)
    })
    .await;
    let mut c = a.clients().await;
    c.users
        .create_user(pb::CreateUserRequest {
            first_name: "Key".into(),
            last_name: "Holder".into(),
            email: "key.holder@example.com".into(),
            password: "correct horse battery staple".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let issued = c
        .sessions
        .login(pb::LoginRequest {
            identifier: Some(pb::login_request::Identifier::Email(
                "key.holder@example.com".into(),
            )),
            password: "correct horse battery staple".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let validate = |server: &TestServer| {
        let token = issued.access_token.clone();
        let endpoint = server.endpoint();
        async move {
            crate::common::clients_at(&endpoint)
                .await
                .sessions
                .validate_token(pb::ValidateTokenRequest {
                    access_token: token,
                })
                .await
        }
    };
    validate(&a).await.expect("the issuing replica");

    let same_key = TestServer::start_with(|c| {
        c.database = options.clone();
        c.identity.signing_key = Some(key.clone());
    })
    .await;
    validate(&same_key)
        .await
        .expect("a replica with the same key file");
    let catalog_key = TestServer::start_with(|c| c.database = options.clone()).await;
    let err = validate(&catalog_key).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
}

/// A client that connects and never starts its handshake is dropped after
/// the handshake timeout: idle sockets cannot pile up before anyone has
/// authenticated.
#[tokio::test]
async fn a_silent_connection_is_dropped_after_the_handshake_timeout() {
    use tokio::io::AsyncReadExt as _;
    let pki = Pki::new();
    let tls = pki.server(true);
    let server = TestServer::start_with(|c| c.tls = Some(tls)).await;
    let mut silent = tokio::net::TcpStream::connect(("127.0.0.1", port(&server)))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(
        tenantd::grpc::tls::HANDSHAKE_TIMEOUT + std::time::Duration::from_secs(10),
        silent.read(&mut byte),
    )
    .await
    .expect("the server must close a connection that never handshakes");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(started.elapsed() >= tenantd::grpc::tls::HANDSHAKE_TIMEOUT / 2);
}
