//! TLS to PostgreSQL, with libpq's conventions.
//!
//! The database URL's `sslmode` (`disable`, `prefer`, `require`,
//! `verify-ca`, `verify-full`), `sslrootcert` (a PEM file of CA
//! certificates, or `system` for the machine's trusted roots), and
//! `sslcert` + `sslkey` (a client certificate, optional) — else the
//! environment's PGSSLMODE, PGSSLROOTCERT, PGSSLCERT, PGSSLKEY, as libpq
//! reads them. The catalog pool (sqlx) reads the same URL; this module is
//! what tenant connections use, which tenantd opens itself (see
//! `data::socket`): the SSLRequest, then a rustls handshake.
//!
//! As in libpq: `prefer` (the default) uses TLS when the server offers it,
//! without verifying anything; `require` insists on TLS and verifies the
//! chain (not the host name) when a root certificate is given; `verify-ca`
//! verifies the chain; `verify-full` the chain and the host name.
//! `sslrootcert=system` needs `verify-full`. Unix sockets never use TLS.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sqlx::postgres::{PgConnectOptions, PgSslMode};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// The query parameters a database URL may have: libpq's that tenantd's
/// drivers understand. sqlx's spellings (`ssl-mode`, …) are not taken: one
/// spelling each, so that a setting cannot hide behind another.
const KNOWN_PARAMETERS: [&str; 12] = [
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "application_name",
    "options",
];

/// How hard a connection insists on TLS, and what it verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum SslMode {
    Disable,
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl FromStr for SslMode {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            // libpq's "allow" tries without TLS first: nothing a server
            // that requires TLS accepts, and nothing tenantd needs.
            other => bail!(
                "sslmode {other:?} is not one of disable, prefer, require, verify-ca, verify-full"
            ),
        })
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        })
    }
}

/// Where the server's certificate chain is checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    /// A PEM file of CA certificates.
    File(PathBuf),
    /// The machine's trusted roots (`sslrootcert=system`).
    System,
}

/// The TLS settings of the database URL.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DbTlsSettings {
    pub mode: SslMode,
    pub root_cert: Option<RootCert>,
    /// A client certificate chain and its key (PEM files), both or neither.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

impl DbTlsSettings {
    /// No TLS: tenantd's own private cluster, on a Unix socket.
    pub fn disabled() -> Self {
        Self {
            mode: SslMode::Disable,
            ..Self::default()
        }
    }

    /// The settings of a database URL (its query's sslmode, sslrootcert,
    /// sslcert, sslkey), with the environment's PGSSL* variables where the
    /// URL is silent.
    pub fn from_url(url: &str) -> anyhow::Result<Self> {
        Self::from_url_and_env(url, |name| std::env::var(name).ok())
    }

    fn from_url_and_env(url: &str, env: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let parsed = url::Url::parse(url).context("the database URL is not a URL")?;
        // libpq refuses what it does not know, and a parameter given twice
        // is ambiguous (libpq takes the last, others the first): both are
        // refused, so a typo cannot quietly turn TLS off.
        let mut seen = std::collections::HashSet::new();
        for (key, _) in parsed.query_pairs() {
            if !KNOWN_PARAMETERS.contains(&key.as_ref()) {
                bail!(
                    "the database URL has an unknown parameter {key:?} (known: {})",
                    KNOWN_PARAMETERS.join(", ")
                );
            }
            if !seen.insert(key.clone()) {
                bail!("the database URL gives {key:?} more than once");
            }
        }
        let param = |name: &str, var: &str| {
            parsed
                .query_pairs()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.into_owned())
                .or_else(|| env(var))
                .filter(|v| !v.is_empty())
        };
        let root_cert = param("sslrootcert", "PGSSLROOTCERT").map(|v| match v.as_str() {
            "system" => RootCert::System,
            _ => RootCert::File(PathBuf::from(v)),
        });
        let mode = match param("sslmode", "PGSSLMODE") {
            Some(mode) => mode.parse().context("the database URL's sslmode")?,
            // libpq: the system's roots make the default verify-full.
            None if root_cert == Some(RootCert::System) => SslMode::VerifyFull,
            None => SslMode::Prefer,
        };
        if root_cert == Some(RootCert::System) && mode != SslMode::VerifyFull {
            bail!(
                "sslrootcert=system needs sslmode=verify-full (the database URL has sslmode={mode})"
            );
        }
        let client_cert = match (param("sslcert", "PGSSLCERT"), param("sslkey", "PGSSLKEY")) {
            (Some(cert), Some(key)) => Some((PathBuf::from(cert), PathBuf::from(key))),
            (None, None) => None,
            (Some(_), None) => bail!("the database URL has sslcert but no sslkey"),
            (None, Some(_)) => bail!("the database URL has sslkey but no sslcert"),
        };
        Ok(Self {
            mode,
            root_cert,
            client_cert,
        })
    }

    /// What tenant connections negotiate with; `None` for `disable`.
    /// Fails (naming the file and the setting) when a file cannot be read,
    /// or when a verifying mode has nothing to verify against.
    pub fn connector(&self) -> anyhow::Result<Option<Arc<DbTls>>> {
        if self.mode == SslMode::Disable {
            return Ok(None);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        self.check_verifiable()?;
        // libpq: prefer verifies nothing, whatever sslrootcert says.
        let roots = match &self.root_cert {
            _ if self.mode == SslMode::Prefer => None,
            Some(RootCert::File(path)) => Some(roots_from_file(path)?),
            Some(RootCert::System) => Some(system_roots()?),
            None => None,
        };
        let verifier: Arc<dyn ServerCertVerifier> = match roots {
            // libpq: require with a root certificate verifies as verify-ca.
            Some(roots) => {
                let webpki =
                    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .context("the database URL's sslrootcert")?;
                if self.mode == SslMode::VerifyFull {
                    webpki
                } else {
                    Arc::new(ChainOnly(webpki))
                }
            }
            None => Arc::new(Unverified(provider.clone())),
        };
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match &self.client_cert {
            Some((cert, key)) => {
                let chain = CertificateDer::pem_slice_iter(&read_pem(cert, "sslcert")?)
                    .collect::<Result<Vec<_>, _>>()
                    .with_context(|| format!("sslcert {} holds no certificate", cert.display()))?;
                check_key_private(key)?;
                let key = PrivateKeyDer::from_pem_slice(&read_pem(key, "sslkey")?)
                    .with_context(|| format!("sslkey {} holds no private key", key.display()))?;
                builder.with_client_auth_cert(chain, key).context(
                    "the database URL's sslcert and sslkey do not make a client identity",
                )?
            }
            None => builder.with_no_client_auth(),
        };
        Ok(Some(Arc::new(DbTls {
            mode: self.mode,
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        })))
    }
}

impl DbTlsSettings {
    /// A verifying mode needs something to verify against.
    fn check_verifiable(&self) -> anyhow::Result<()> {
        if self.mode >= SslMode::VerifyCa && self.root_cert.is_none() {
            bail!(
                "sslmode={} verifies the server's certificate and needs sslrootcert: a PEM file \
                 of the CA that signed it, or sslrootcert=system for the machine's trusted roots",
                self.mode
            );
        }
        Ok(())
    }

    /// The same settings given to the catalog's sqlx options, so that every
    /// connection tenantd makes behaves alike: `require` with a root
    /// certificate verifies the chain (libpq's rule, not sqlx's), and
    /// `system` means the machine's roots (sqlx would read a file of that
    /// name).
    pub fn apply_to_sqlx(&self, options: PgConnectOptions) -> anyhow::Result<PgConnectOptions> {
        self.check_verifiable()?;
        let mode = match self.mode {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Prefer => PgSslMode::Prefer,
            SslMode::Require if self.root_cert.is_some() => PgSslMode::VerifyCa,
            SslMode::Require => PgSslMode::Require,
            SslMode::VerifyCa => PgSslMode::VerifyCa,
            SslMode::VerifyFull => PgSslMode::VerifyFull,
        };
        let mut options = options.ssl_mode(mode);
        match &self.root_cert {
            Some(RootCert::File(path)) => options = options.ssl_root_cert(path),
            Some(RootCert::System) => {
                options = options.ssl_root_cert_from_pem(pem_of(system_roots_der()?));
            }
            None => {}
        }
        if let Some((cert, key)) = &self.client_cert {
            options = options.ssl_client_cert(cert).ssl_client_key(key);
        }
        Ok(options)
    }
}

/// Certificates in PEM.
fn pem_of(certs: Vec<CertificateDer<'static>>) -> Vec<u8> {
    use base64::Engine as _;
    let mut pem = String::new();
    for cert in certs {
        let b64 = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
        pem.push_str("-----BEGIN CERTIFICATE-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).unwrap_or_default());
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
    }
    pem.into_bytes()
}

/// A PEM file of the URL's, bounded (see [`crate::files`]).
fn read_pem(path: &Path, setting: &str) -> anyhow::Result<Vec<u8>> {
    crate::files::read_bounded(path, setting, crate::files::PEM_LIMIT)
}

/// libpq's rule for sslkey: no access for group or others, unless root owns
/// it and only its group may read it.
fn check_key_private(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(path).with_context(|| format!("sslkey {}", path.display()))?;
    let mode = meta.mode() & 0o777;
    let private = mode & 0o077 == 0 || (meta.uid() == 0 && mode & 0o037 == 0);
    if !private {
        bail!(
            "sslkey {} has permissions {mode:o}: it must be readable by its owner only \
             (chmod 600), or by root's group only when root owns it (640)",
            path.display()
        );
    }
    Ok(())
}

fn roots_from_file(path: &Path) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_slice_iter(&read_pem(path, "sslrootcert")?)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("sslrootcert {} holds no certificate", path.display()))?;
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        bail!(
            "sslrootcert {} holds no usable CA certificate",
            path.display()
        );
    }
    Ok(roots)
}

fn system_roots_der() -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let found = rustls_native_certs::load_native_certs();
    if found.certs.is_empty() {
        bail!(
            "sslrootcert=system: the machine has no trusted root certificates \
             (install ca-certificates, or give sslrootcert a PEM file)"
        );
    }
    Ok(found.certs)
}

fn system_roots() -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(system_roots_der()?);
    Ok(roots)
}

/// What tenant connections negotiate TLS with.
pub struct DbTls {
    mode: SslMode,
    connector: tokio_rustls::TlsConnector,
}

impl fmt::Debug for DbTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DbTls").field("mode", &self.mode).finish()
    }
}

/// What a connection became.
pub enum Negotiated {
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// The server does not do TLS, and the mode did not insist.
    Plain(TcpStream),
}

/// The protocol's SSLRequest: length 8, code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

impl DbTls {
    /// Asks the server for TLS over `tcp` and makes the handshake, the
    /// certificate checked against `host` as the mode says.
    pub async fn negotiate(&self, mut tcp: TcpStream, host: &str) -> io::Result<Negotiated> {
        tcp.write_all(&SSL_REQUEST).await?;
        let mut answer = [0u8; 1];
        tcp.read_exact(&mut answer).await?;
        match answer[0] {
            b'S' => {}
            b'N' if self.mode == SslMode::Prefer => return Ok(Negotiated::Plain(tcp)),
            b'N' => {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    format!(
                        "the server does not accept TLS connections, and sslmode={} requires TLS",
                        self.mode
                    ),
                ));
            }
            other => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("the server answered the TLS request with {other:#04x}"),
                ));
            }
        }
        let name = ServerName::try_from(host.to_owned()).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{host:?} is not a host name TLS can verify: {e}"),
            )
        })?;
        let stream = self.connector.connect(name, tcp).await.map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("TLS handshake with PostgreSQL (sslmode={}): {e}", self.mode),
            )
        })?;
        Ok(Negotiated::Tls(Box::new(stream)))
    }
}

/// `verify-ca` (and `require` with a root certificate): the chain is
/// verified, the host name is not.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer` and `require` without a root certificate: encrypted, nothing
/// about the server verified (the handshake's signatures still are).
#[derive(Debug)]
struct Unverified(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> anyhow::Result<DbTlsSettings> {
        DbTlsSettings::from_url_and_env(url, |_| None)
    }

    #[test]
    fn modes_and_files_come_from_the_url() {
        let s = parse(
            "postgres://u@db.example:5432/d?sslmode=verify-full&sslrootcert=/ca.pem\
             &sslcert=/c.pem&sslkey=/k.pem",
        )
        .unwrap();
        assert_eq!(s.mode, SslMode::VerifyFull);
        assert_eq!(s.root_cert, Some(RootCert::File("/ca.pem".into())));
        assert_eq!(
            s.client_cert,
            Some((PathBuf::from("/c.pem"), PathBuf::from("/k.pem")))
        );
        for (mode, want) in [
            ("disable", SslMode::Disable),
            ("prefer", SslMode::Prefer),
            ("require", SslMode::Require),
            ("verify-ca", SslMode::VerifyCa),
        ] {
            let s = parse(&format!("postgres://u@h/d?sslmode={mode}")).unwrap();
            assert_eq!(s.mode, want);
        }
        assert_eq!(parse("postgres://u@h/d").unwrap().mode, SslMode::Prefer);
    }

    #[test]
    fn the_environment_fills_what_the_url_leaves_out() {
        let env = |name: &str| match name {
            "PGSSLMODE" => Some("require".to_owned()),
            "PGSSLROOTCERT" => Some("/env-ca.pem".to_owned()),
            _ => None,
        };
        let s = DbTlsSettings::from_url_and_env("postgres://u@h/d", env).unwrap();
        assert_eq!(s.mode, SslMode::Require);
        assert_eq!(s.root_cert, Some(RootCert::File("/env-ca.pem".into())));
        let s = DbTlsSettings::from_url_and_env("postgres://u@h/d?sslmode=verify-ca", env).unwrap();
        assert_eq!(s.mode, SslMode::VerifyCa);
    }

    #[test]
    fn inconsistent_settings_are_refused_with_what_to_change() {
        for (url, want) in [
            ("postgres://u@h/d?sslmode=allow", "sslmode"),
            ("postgres://u@h/d?sslmode=VERIFY-FULL", "sslmode"),
            (
                "postgres://u@h/d?sslmode=require&sslrootcert=system",
                "verify-full",
            ),
            ("postgres://u@h/d?sslcert=/c.pem", "sslkey"),
            ("postgres://u@h/d?sslkey=/k.pem", "sslcert"),
        ] {
            let err = format!("{:#}", parse(url).unwrap_err());
            assert!(err.contains(want), "{url}: {err}");
        }
        let system = parse("postgres://u@h/d?sslrootcert=system").unwrap();
        assert_eq!(system.mode, SslMode::VerifyFull);
    }

    #[test]
    fn unknown_and_repeated_parameters_are_refused() {
        for (url, want) in [
            (
                "postgres://u@h/d?sslmode=disable&sslmode=verify-full",
                "more than once",
            ),
            (
                "postgres://u@h/d?sslmode=verify-full&sslmode=disable",
                "more than once",
            ),
            ("postgres://u@h/d?sslmod=verify-full", "unknown parameter"),
            ("postgres://u@h/d?ssl_mode=require", "unknown parameter"),
            ("postgres://u@h/d?SSLMODE=disable", "unknown parameter"),
            ("postgres://u@h/d?ssl-mode=disable", "unknown parameter"),
        ] {
            let err = format!("{:#}", parse(url).unwrap_err());
            assert!(err.contains(want), "{url}: {err}");
        }
        assert!(
            parse("postgres://u@h/d?application_name=x&sslmode=require&options=-c%20a%3Db").is_ok()
        );
    }

    #[test]
    fn a_client_key_others_may_read_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.pem");
        std::fs::write(&key, "not read").unwrap();
        for mode in [0o644, 0o604, 0o660] {
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = format!("{:#}", check_key_private(&key).unwrap_err());
            assert!(err.contains("chmod 600"), "{mode:o}: {err}");
        }
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        check_key_private(&key).unwrap();
    }

    #[test]
    fn verifying_without_a_root_certificate_is_refused_at_start() {
        for mode in ["verify-ca", "verify-full"] {
            let s = parse(&format!("postgres://u@h/d?sslmode={mode}")).unwrap();
            let err = format!("{:#}", s.connector().unwrap_err());
            assert!(err.contains("sslrootcert"), "{err}");
        }
        let missing =
            parse("postgres://u@h/d?sslmode=verify-full&sslrootcert=/nonexistent.pem").unwrap();
        let err = format!("{:#}", missing.connector().unwrap_err());
        assert!(err.contains("/nonexistent.pem"), "{err}");
        assert!(
            parse("postgres://u@h/d?sslmode=disable")
                .unwrap()
                .connector()
                .unwrap()
                .is_none()
        );
        assert!(
            parse("postgres://u@h/d?sslmode=require")
                .unwrap()
                .connector()
                .unwrap()
                .is_some()
        );
    }
}
