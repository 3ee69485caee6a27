//! Every way a tenantctl command can fail, the exit code of each, and how it
//! reads on stderr: gRPC statuses by code name with their field violations,
//! an unreachable server with the address tried and how to start one, and a
//! password or token the server refused with what that can mean.

use std::fmt;
use std::time::Duration;

use tenantd::grpc::code_name;
use tonic::Status;
use tonic_types::StatusExt;

/// Exit code of a failure the server or the connection reported.
const EXIT_FAILURE: u8 = 1;
/// Exit code of a command line that cannot be run (clap uses it too).
const EXIT_USAGE: u8 = 2;

#[derive(Debug)]
pub enum CliError {
    /// The command line is well-formed for clap but still unusable.
    Usage(String),
    /// No connection to the server could be made or kept.
    Unreachable { endpoint: String, reason: String },
    /// The server or the connection did not answer in time.
    Timeout { endpoint: String, after: Duration },
    /// The server answered with an error status.
    Rpc(Status),
    /// The server refused a credential the command carried for it to judge
    /// (a password at login, a token to validate), not tenantctl's own key;
    /// `why` says what that can mean.
    Refused { status: Status, why: &'static str },
    /// Anything else that stopped the command.
    Failed(String),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => EXIT_USAGE,
            CliError::Unreachable { .. }
            | CliError::Timeout { .. }
            | CliError::Rpc(_)
            | CliError::Refused { .. }
            | CliError::Failed(_) => EXIT_FAILURE,
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Usage(message) | CliError::Failed(message) => f.write_str(message),
            CliError::Unreachable { endpoint, reason } => write!(
                f,
                "cannot reach tenantd at {endpoint}: {reason}\n  \
                 start one with: tenantd serve\n  \
                 or point --endpoint (or TENANTD_ENDPOINT) at a running tenantd"
            ),
            CliError::Timeout { endpoint, after } => write!(
                f,
                "no answer from tenantd at {endpoint} within {} (raise it with \
                 --timeout); a change the command asked for may still have been applied",
                humantime::format_duration(*after)
            ),
            CliError::Rpc(status) => write_status(f, status, true),
            CliError::Refused { status, why } => {
                write_status(f, status, false)?;
                write!(f, "\n  {why}")
            }
        }
    }
}

impl std::error::Error for CliError {}

/// `CODE: message`, then one indented line per field violation or failed
/// precondition the status carries in its details; with `key_hint`, how to
/// pass a key when the status says tenantctl's credentials were refused.
fn write_status(f: &mut fmt::Formatter<'_>, status: &Status, key_hint: bool) -> fmt::Result {
    f.write_str(code_name(status.code()))?;
    if !status.message().is_empty() {
        write!(f, ": {}", status.message())?;
    }
    if key_hint && status.code() == tonic::Code::Unauthenticated {
        f.write_str(
            "\n  pass a service key with --key or TENANTD_KEY (or --key-file); a tenantd running \
             its private cluster writes one to tenantd-data/admin.key",
        )?;
    }
    let details = status.get_error_details();
    if let Some(bad_request) = details.bad_request() {
        for v in &bad_request.field_violations {
            write!(f, "\n  field {}: {}", v.field, v.description)?;
        }
    }
    if let Some(failure) = details.precondition_failure() {
        for v in &failure.violations {
            write!(f, "\n  {} {}: {}", v.r#type, v.subject, v.description)?;
        }
    }
    Ok(())
}

/// The most specific description of why a connection failed: the operating
/// system's error when there is one ("Connection refused"), otherwise the
/// whole cause chain.
pub fn connection_failure(err: &(dyn std::error::Error + 'static)) -> String {
    let mut chain = Vec::new();
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return io.to_string();
        }
        let text = e.to_string();
        if chain.last() != Some(&text) {
            chain.push(text);
        }
        next = e.source();
    }
    chain.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;
    use tonic_types::{ErrorDetails, FieldViolation};

    #[test]
    fn invalid_argument_lists_each_field() {
        let status = Status::with_error_details(
            Code::InvalidArgument,
            "invalid request",
            ErrorDetails::with_bad_request(vec![
                FieldViolation::new("slug", "must be lower case"),
                FieldViolation::new("country", "must be ISO 3166-1 alpha-2"),
            ]),
        );
        let err = CliError::Rpc(status);
        assert_eq!(
            err.to_string(),
            "INVALID_ARGUMENT: invalid request\n  \
             field slug: must be lower case\n  \
             field country: must be ISO 3166-1 alpha-2"
        );
        assert_eq!(err.exit_code(), 1);
    }

    #[test]
    fn a_refused_token_is_not_blamed_on_the_key() {
        let err = CliError::Refused {
            status: Status::unauthenticated("invalid or expired token"),
            why: "the token has expired or its session ended",
        };
        assert_eq!(
            err.to_string(),
            "UNAUTHENTICATED: invalid or expired token\n  \
             the token has expired or its session ended"
        );
        assert_eq!(err.exit_code(), 1);
        let own = CliError::Rpc(Status::unauthenticated("missing credentials"));
        assert!(own.to_string().contains("--key"), "{own}");
    }

    #[test]
    fn unreachable_names_address_and_remedy() {
        let err = CliError::Unreachable {
            endpoint: "http://127.0.0.1:9".into(),
            reason: "Connection refused".into(),
        };
        let text = err.to_string();
        assert!(text.contains("http://127.0.0.1:9"), "{text}");
        assert!(text.contains("tenantd serve"), "{text}");
        assert!(text.contains("TENANTD_ENDPOINT"), "{text}");
    }

    #[test]
    fn connection_failure_prefers_the_os_error() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl fmt::Display for Outer {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("transport error")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(connection_failure(&Outer(io)), "refused");
    }
}
