//! TLS for gRPC: the server's certificate and, for mutual TLS, the CA its
//! clients' certificates must chain to; and the client side tenantctl uses.
//! PEM files in, tonic's (rustls) configurations out; every failure names
//! the file.

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// How long a client has to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn read(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    let pem = crate::files::read_bounded(path, what, crate::files::PEM_LIMIT)?;
    anyhow::ensure!(
        String::from_utf8_lossy(&pem).contains("-----BEGIN "),
        "{} (the {what}) holds no PEM block",
        path.display()
    );
    Ok(pem)
}

/// The server's TLS files.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, every client must present a certificate this CA signed.
    pub client_ca: Option<PathBuf>,
}

impl ServerTls {
    pub fn load(&self) -> anyhow::Result<ServerTlsConfig> {
        let identity = Identity::from_pem(
            read(&self.cert, "TLS certificate")?,
            read(&self.key, "TLS private key")?,
        );
        // A connection that never finishes its handshake is dropped: idle
        // sockets must not pile up before anyone has authenticated.
        let mut config = ServerTlsConfig::new()
            .identity(identity)
            .timeout(HANDSHAKE_TIMEOUT);
        if let Some(ca) = &self.client_ca {
            config = config.client_ca_root(Certificate::from_pem(read(ca, "client CA")?));
        }
        Ok(config)
    }
}

/// A client's TLS files: the CA to trust (the system's roots without one)
/// and, for mutual TLS, its own certificate and key.
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl ClientTls {
    pub fn is_empty(&self) -> bool {
        self.ca.is_none() && self.cert.is_none() && self.key.is_none()
    }

    /// The configuration for a server whose certificate names `domain`.
    pub fn load(&self, domain: &str) -> anyhow::Result<ClientTlsConfig> {
        let mut config = ClientTlsConfig::new().domain_name(domain);
        config = match &self.ca {
            Some(ca) => config.ca_certificate(Certificate::from_pem(read(ca, "CA certificate")?)),
            None => config.with_native_roots(),
        };
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => Ok(config.identity(Identity::from_pem(
                read(cert, "client certificate")?,
                read(key, "client private key")?,
            ))),
            (None, None) => Ok(config),
            _ => anyhow::bail!("a client certificate needs its key, and a key its certificate"),
        }
    }
}
