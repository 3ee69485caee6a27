//! The connection to tenantd: the endpoint as the operator wrote it turned
//! into a gRPC address, one eagerly connected channel, and every call made
//! through it under the `--timeout` deadline with transport failures reported
//! as an unreachable server. Server streams get no overall deadline: each of
//! their messages must arrive within a bound the caller gives.

use std::time::Duration;

use tenantd::grpc::tls::ClientTls;
use tenantd::pb::migration_service_client::MigrationServiceClient;
use tenantd::pb::session_service_client::SessionServiceClient;
use tenantd::pb::tenant_service_client::TenantServiceClient;
use tenantd::pb::user_service_client::UserServiceClient;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status, Streaming};

use crate::cli::GlobalArgs;
use crate::error::{CliError, connection_failure};
use crate::output::OutputFormat;

/// A connected server and the options every command needs.
pub struct Session {
    channel: Channel,
    /// `Bearer <key>`, sent with every call when a key was found.
    authorization: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    endpoint: String,
    timeout: Duration,
    pub output: OutputFormat,
}

impl Session {
    /// Connects now, so that a missing server is reported before any command
    /// starts, with the address that was tried.
    pub async fn connect(global: &GlobalArgs) -> Result<Session, CliError> {
        let endpoint = Endpoint::from_shared(global.endpoint.clone())
            .map_err(|e| {
                CliError::Usage(format!(
                    "invalid --endpoint {:?}: {}",
                    global.endpoint,
                    connection_failure(&e)
                ))
            })?
            .connect_timeout(global.timeout);
        let tls = ClientTls {
            ca: global.ca.clone(),
            cert: global.cert.clone(),
            key: global.cert_key.clone(),
        };
        let endpoint = match endpoint.uri().scheme_str() {
            Some("https") => {
                let host = endpoint.uri().host().unwrap_or_default().to_owned();
                let config = tls
                    .load(&host)
                    .map_err(|e| CliError::Usage(format!("{e:#}")))?;
                endpoint
                    .tls_config(config)
                    .map_err(|e| CliError::Usage(format!("TLS: {}", connection_failure(&e))))?
            }
            _ if !tls.is_empty() => {
                return Err(CliError::Usage(
                    "--ca, --cert and --cert-key need an https:// endpoint".into(),
                ));
            }
            _ => endpoint,
        };
        let unreachable = |reason: String| CliError::Unreachable {
            endpoint: global.endpoint.clone(),
            reason,
        };
        let channel = match tokio::time::timeout(global.timeout, endpoint.connect()).await {
            Ok(Ok(channel)) => channel,
            Ok(Err(e)) => return Err(unreachable(connection_failure(&e))),
            Err(_) => {
                return Err(unreachable(format!(
                    "no connection within {}",
                    humantime::format_duration(global.timeout)
                )));
            }
        };
        // The key travels in every call: over plaintext to another machine
        // anyone on the path can read it.
        if endpoint.uri().scheme_str() != Some("https") {
            let host = endpoint.uri().host().unwrap_or_default();
            let loopback = host == "localhost"
                || host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if !loopback {
                eprintln!(
                    "tenantctl: warning: {} is plaintext to another host: the service key \
                     is sent unencrypted (use https:// with --ca)",
                    global.endpoint
                );
            }
        }
        let authorization = match resolve_key(global)? {
            Some(key) => Some(format!("Bearer {key}").parse().map_err(|_| {
                CliError::Usage("the service key contains characters a header cannot carry".into())
            })?),
            None => None,
        };
        Ok(Session {
            channel,
            authorization,
            endpoint: global.endpoint.clone(),
            timeout: global.timeout,
            output: global.output,
        })
    }

    pub fn tenants(&self) -> TenantServiceClient<Channel> {
        TenantServiceClient::new(self.channel.clone())
    }

    /// The connection, for clients of services outside tenantd's API.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    pub fn users(&self) -> UserServiceClient<Channel> {
        UserServiceClient::new(self.channel.clone())
    }

    pub fn sessions(&self) -> SessionServiceClient<Channel> {
        SessionServiceClient::new(self.channel.clone())
    }

    pub fn migrations(&self) -> MigrationServiceClient<Channel> {
        MigrationServiceClient::new(self.channel.clone())
    }

    /// The `--timeout` every call is bounded by.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A request that opens a server stream: no grpc-timeout, which would end
    /// the stream after `--timeout` however healthy it is. Opening it is still
    /// bounded when it goes through [`Session::call`].
    pub fn stream_request<T>(&self, message: T) -> Request<T> {
        self.authorize(Request::new(message))
    }

    fn authorize<T>(&self, mut request: Request<T>) -> Request<T> {
        if let Some(value) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        request
    }

    /// The next message of a server stream, `None` when it ended; a
    /// [`CliError::Timeout`] when none arrived `within`.
    pub async fn next_message<T>(
        &self,
        stream: &mut Streaming<T>,
        within: Duration,
    ) -> Result<Option<T>, CliError> {
        match tokio::time::timeout(within, stream.message()).await {
            Ok(Ok(message)) => Ok(message),
            Ok(Err(status)) => Err(self.status_error(status)),
            Err(_) => Err(CliError::Timeout {
                endpoint: self.endpoint.clone(),
                after: within,
            }),
        }
    }

    /// A request that tells the server the deadline too.
    pub fn request<T>(&self, message: T) -> Request<T> {
        let mut request = self.authorize(Request::new(message));
        request.set_timeout(self.timeout);
        request
    }

    /// A request without the service key, for calls that need none (the
    /// health service): the key goes nowhere it is not needed.
    pub fn anonymous_request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(self.timeout);
        request
    }

    /// Awaits one call under the deadline.
    pub async fn call<T>(
        &self,
        call: impl Future<Output = Result<Response<T>, Status>>,
    ) -> Result<T, CliError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(self.status_error(status)),
            Err(_) => Err(CliError::Timeout {
                endpoint: self.endpoint.clone(),
                after: self.timeout,
            }),
        }
    }

    /// Awaits a call that carries a credential for the server to judge (a
    /// password, a token). When tenantctl sent a key of its own, an
    /// UNAUTHENTICATED answer is about that credential and reads as `why`
    /// rather than as advice on passing a key.
    pub async fn call_judging<T>(
        &self,
        call: impl Future<Output = Result<Response<T>, Status>>,
        why: &'static str,
    ) -> Result<T, CliError> {
        match self.call(call).await {
            Err(CliError::Rpc(status))
                if status.code() == Code::Unauthenticated && self.authorization.is_some() =>
            {
                Err(CliError::Refused { status, why })
            }
            other => other,
        }
    }

    /// Statuses the client made up itself carry their cause as a source: the
    /// channel's deadline (from the request's grpc-timeout) is a timeout, a
    /// failed connection an unreachable server. A status the server sent has
    /// no source and is reported as it is.
    fn status_error(&self, status: Status) -> CliError {
        let Some(source) = std::error::Error::source(&status) else {
            return CliError::Rpc(status);
        };
        let mut cause = Some(source);
        while let Some(e) = cause {
            if e.is::<tonic::TimeoutExpired>() {
                return CliError::Timeout {
                    endpoint: self.endpoint.clone(),
                    after: self.timeout,
                };
            }
            cause = e.source();
        }
        if status.code() == Code::Unavailable {
            return CliError::Unreachable {
                endpoint: self.endpoint.clone(),
                reason: connection_failure(source),
            };
        }
        CliError::Rpc(status)
    }
}

/// The `--endpoint` value: `host:port` gains `http://`; only plain HTTP/2
/// (`http://`) is spoken, and the address must not carry a path.
pub fn parse_endpoint(raw: &str) -> Result<String, String> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Err("must not be empty".to_owned());
    }
    let url = if raw.contains("://") {
        raw.to_owned()
    } else {
        format!("http://{raw}")
    };
    let endpoint = Endpoint::from_shared(url.clone())
        .map_err(|e| format!("{url} is not an address: {}", connection_failure(&e)))?;
    let uri = endpoint.uri();
    let scheme = match uri.scheme_str() {
        Some(scheme @ ("http" | "https")) => scheme.to_owned(),
        _ => return Err(format!("{url}: the scheme must be http:// or https://")),
    };
    let Some(authority) = uri.authority().filter(|a| !a.host().is_empty()) else {
        return Err(format!("{url} names no host"));
    };
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!("{url}: give only scheme, host and port"));
    }
    Ok(format!("{scheme}://{authority}"))
}

/// Where the service key comes from: `--key` (`TENANTD_KEY`), else the file
/// named by `--key-file` (`TENANTD_KEY_FILE`), else the key a tenantd running
/// its private cluster wrote to `tenantd-data/admin.key`, if that exists here.
fn resolve_key(global: &GlobalArgs) -> Result<Option<String>, CliError> {
    if let Some(key) = &global.key {
        return Ok(Some(key.trim().to_owned()));
    }
    let (path, must_exist) = match &global.key_file {
        Some(path) => (path.clone(), true),
        None => (std::path::PathBuf::from("tenantd-data/admin.key"), false),
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(text.trim().to_owned())),
        Err(e) if !must_exist && e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CliError::Usage(format!(
            "cannot read the key file {}: {e}",
            path.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_gain_a_scheme_and_refuse_nonsense() {
        assert_eq!(
            parse_endpoint("127.0.0.1:50051").as_deref(),
            Ok("http://127.0.0.1:50051")
        );
        assert_eq!(
            parse_endpoint("http://tenantd.internal:7000/").as_deref(),
            Ok("http://tenantd.internal:7000")
        );
        assert_eq!(
            parse_endpoint("[::1]:50051").as_deref(),
            Ok("http://[::1]:50051")
        );
        assert_eq!(
            parse_endpoint("https://tenantd.internal:7000").as_deref(),
            Ok("https://tenantd.internal:7000")
        );
        for bad in [
            "",
            "ftp://x:1",
            "https://x:1/api",
            "http://x:1/api",
            "http://",
            "a b:1",
        ] {
            assert!(parse_endpoint(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
