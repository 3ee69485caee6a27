//! Every error the service can return, turned into a `tonic::Status` in one
//! place, variant by variant. Internal errors are logged here, once, with
//! their cause chain, and answered without any SQL or driver text.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::catalog::DbFailure;
use crate::clusters::ClusterError;
use crate::clusters::mover::MoveError;
use crate::data::{DataError, ExecError, Lost, PoolError};
use crate::domain::ValidationError;
use crate::fleet::UpgradeError;
use crate::identity::IdentityError;
use crate::tenant::TenantError;

pub fn invalid(err: ValidationError) -> Status {
    let violations: Vec<tonic_types::FieldViolation> = err
        .violations
        .iter()
        .map(|v| tonic_types::FieldViolation::new(v.field.clone(), v.description.clone()))
        .collect();
    Status::with_error_details(
        Code::InvalidArgument,
        err.to_string(),
        ErrorDetails::with_bad_request(violations),
    )
}

pub fn tenant(err: TenantError) -> Status {
    match err {
        TenantError::NotFound => Status::not_found("tenant not found"),
        TenantError::SlugTaken(_) => Status::already_exists(err.to_string()),
        TenantError::IdempotencyKeyReused { .. } => Status::with_error_details(
            Code::FailedPrecondition,
            err.to_string(),
            ErrorDetails::with_precondition_failure_violation(
                "IDEMPOTENCY_KEY_REUSED",
                "idempotency_key",
                "the key was already used for a request with a different slug",
            ),
        ),
        TenantError::OwnerNotFound(_) => invalid(ValidationError::single(
            "owner_user_id",
            "no active user has this id",
        )),
        TenantError::VersionConflict { .. } => Status::aborted(err.to_string()),
        TenantError::InvalidTransition { .. } => Status::failed_precondition(err.to_string()),
        TenantError::ConfirmationMismatch => invalid(ValidationError::single(
            "confirm_slug",
            "must equal the tenant's slug",
        )),
        TenantError::UnknownCluster(_) => invalid(ValidationError::single(
            "cluster",
            "no cluster of this name is registered (ListClusters)",
        )),
        TenantError::ClusterRefused { .. }
        | TenantError::NoClusterRoom
        | TenantError::Moving(_) => Status::failed_precondition(err.to_string()),
        TenantError::Cluster(e) => cluster(e),
        TenantError::Db(failure) => db(failure),
    }
}

pub fn moving(err: MoveError) -> Status {
    match err {
        MoveError::NotFound(_) => Status::not_found(err.to_string()),
        MoveError::Precondition(why) => Status::failed_precondition(why),
        MoveError::Unavailable(why) => Status::unavailable(why),
        MoveError::Db(failure) => db(failure),
    }
}

pub fn cluster(err: ClusterError) -> Status {
    match err {
        ClusterError::NotFound(_) => Status::not_found(err.to_string()),
        ClusterError::NameTaken(_) | ClusterError::SameDatabase { .. } => {
            Status::already_exists(err.to_string())
        }
        ClusterError::Unreachable { .. } => {
            tracing::warn!(error = %err, "cluster unreachable");
            Status::unavailable(err.to_string())
        }
        ClusterError::Unfit { .. }
        | ClusterError::NotEmpty { .. }
        | ClusterError::Moving { .. }
        | ClusterError::RemoveDefault => Status::failed_precondition(err.to_string()),
        ClusterError::InvalidSetting { field, ref message } => {
            invalid(ValidationError::single(field, message.clone()))
        }
        ClusterError::Db(failure) => db(failure),
    }
}

pub fn db(failure: DbFailure) -> Status {
    match failure {
        DbFailure::Conflict(source) => {
            tracing::info!(error = %source, "concurrent change");
            Status::aborted("concurrent change, try again")
        }
        DbFailure::Unavailable(source) => {
            tracing::warn!(error = %source, "database unavailable");
            Status::unavailable("database unavailable, try again")
        }
        DbFailure::Internal { context, source } => internal(context, &source),
    }
}

/// Logs an unexpected failure with its cause chain and answers INTERNAL.
pub fn internal(context: &str, source: &anyhow::Error) -> Status {
    tracing::error!(error = format!("{source:#}"), "{context} failed");
    Status::internal(format!("internal error while trying to {context}"))
}

pub fn identity(err: IdentityError) -> Status {
    match err {
        IdentityError::Invalid(v) => invalid(v),
        IdentityError::NotFound(what) => Status::not_found(format!("{what} not found")),
        IdentityError::AlreadyExists(m) => Status::already_exists(m),
        IdentityError::VersionConflict { .. } => Status::aborted(err.to_string()),
        IdentityError::LastOwner | IdentityError::Precondition(_) => {
            Status::failed_precondition(err.to_string())
        }
        IdentityError::Forbidden(why) => Status::permission_denied(why),
        IdentityError::BadCredentials | IdentityError::BadToken => {
            Status::unauthenticated(err.to_string())
        }
        IdentityError::RateLimited => Status::resource_exhausted(err.to_string()),
        IdentityError::Db(f) => db(f),
        IdentityError::Internal { context, source } => internal(context, &source),
    }
}

pub fn upgrade(err: UpgradeError) -> Status {
    match err {
        UpgradeError::Invalid(v) => invalid(v),
        UpgradeError::NotFound => Status::not_found("upgrade run not found"),
        UpgradeError::InvalidTransition { .. } => Status::failed_precondition(err.to_string()),
        UpgradeError::Cluster(why) => Status::unavailable(why),
        UpgradeError::Db(failure) => db(failure),
    }
}

/// The status of a failed call. SQL errors carry their SQLSTATE and never
/// become INTERNAL.
pub fn data(err: DataError, prefix: fn(usize) -> String) -> Status {
    match err {
        DataError::Pool(e) => match e {
            PoolError::NotFound => Status::not_found("tenant not found"),
            PoolError::NotActive(s) => Status::with_error_details(
                Code::FailedPrecondition,
                format!("tenant is {s}; only an active tenant's data can be used"),
                ErrorDetails::with_precondition_failure_violation(
                    "TENANT_NOT_ACTIVE",
                    "tenant_id",
                    format!("the tenant is {s}"),
                ),
            ),
            PoolError::Exhausted(..)
            | PoolError::ClusterExhausted(..)
            | PoolError::PoolBusy(..) => Status::resource_exhausted(e.to_string()),
            // PostgreSQL has no connection slot (53300: max_connections or
            // the role's CONNECTION LIMIT) or other resources (class 53) left.
            PoolError::Connect {
                sqlstate: Some(code),
                ..
            } if code.starts_with("53") => {
                let what = if code == "53300" {
                    "too many connections"
                } else {
                    "insufficient resources"
                };
                Status::with_error_details(
                    Code::ResourceExhausted,
                    format!(
                        "PostgreSQL refused the tenant's connection: {what} (SQLSTATE {code}); try again later"
                    ),
                    ErrorDetails::with_error_info(
                        "TENANT_DATABASE_EXHAUSTED",
                        "tenantd",
                        HashMap::from([("sqlstate".to_owned(), code)]),
                    ),
                )
            }
            // Logged where it failed, once per burst; the driver's text (role
            // names, addresses) stays in the log.
            PoolError::Connect { .. } | PoolError::Catalog(_) | PoolError::Cluster(_) => {
                Status::unavailable("cannot reach the tenant's database; try again")
            }
            PoolError::Closed => {
                tracing::warn!(error = %e, "no tenant connection");
                Status::unavailable("cannot reach the tenant's database; try again")
            }
        },
        DataError::Exec(e) => match e {
            ExecError::Invalid {
                statement,
                field,
                message,
            } => invalid(ValidationError::single(
                format!("{}{field}", prefix(statement)),
                message,
            )),
            ExecError::Client(message) => {
                tracing::warn!(error = %message, "a value could not be passed to or read from PostgreSQL");
                Status::failed_precondition(format!(
                    "a value could not be passed to or read from PostgreSQL: {message}"
                ))
            }
            // Nothing was written: as any value this side cannot take.
            ExecError::Unreadable {
                message,
                committed: false,
            } => {
                tracing::warn!(error = %message, "a result value could not be read");
                Status::failed_precondition(format!(
                    "a value of the result could not be read: {message}; nothing was committed"
                ))
            }
            // The writes are in: the caller must not send the call again.
            ExecError::Unreadable {
                message,
                committed: true,
            } => {
                tracing::warn!(error = %message, "a result value could not be read after the call committed");
                Status::with_error_details(
                    Code::Unknown,
                    format!(
                        "the call committed, but a value of its result could not be read: \
                         {message}; do not send it again"
                    ),
                    ErrorDetails::with_error_info("COMMITTED", "tenantd", HashMap::new()),
                )
            }
            ExecError::TimedOut(t) => Status::deadline_exceeded(format!(
                "the call ran past its timeout of {t:?} and was cancelled"
            )),
            ExecError::TooLarge(message) => Status::resource_exhausted(message),
            // Whether a write may have committed decides whether the caller
            // may simply try again: UNAVAILABLE says it may, UNKNOWN that it
            // must find out first.
            ExecError::ConnectionLost { message, stage } => {
                tracing::warn!(error = %message, ?stage, "tenant connection lost");
                let (code, text, reason) = match stage {
                    Lost::OutcomeUnknown => (
                        Code::Unknown,
                        "connection to PostgreSQL lost after the call was sent: its writes \
                         may have committed; check before trying again",
                        "OUTCOME_UNKNOWN",
                    ),
                    Lost::BeforeAnyStatement | Lost::Terminated | Lost::NotCommitted => (
                        Code::Unavailable,
                        "connection to PostgreSQL lost before the call committed: nothing was \
                         written; try again",
                        "NOT_EXECUTED",
                    ),
                };
                Status::with_error_details(
                    code,
                    text,
                    ErrorDetails::with_error_info(reason, "tenantd", HashMap::new()),
                )
            }
            ExecError::Sql {
                statement,
                code,
                message,
                detail,
                hint,
                position,
            } => {
                let mut metadata = HashMap::from([
                    ("sqlstate".to_owned(), code.clone()),
                    ("message".to_owned(), message.clone()),
                ]);
                for (k, v) in [("detail", detail), ("hint", hint)] {
                    if let Some(v) = v {
                        metadata.insert(k.to_owned(), v);
                    }
                }
                if let Some(p) = position {
                    metadata.insert("position".to_owned(), p.to_string());
                }
                let text = match statement {
                    Some(i) => {
                        metadata.insert("statement_index".to_owned(), i.to_string());
                        format!("statement {i}: SQLSTATE {code}: {message}")
                    }
                    None => format!("SQLSTATE {code}: {message}"),
                };
                Status::with_error_details(
                    sql_code(&code),
                    text,
                    ErrorDetails::with_error_info("SQL_ERROR", "tenantd", metadata),
                )
            }
        },
    }
}

/// The gRPC code that fits a SQLSTATE.
pub fn sql_code(sqlstate: &str) -> Code {
    match sqlstate {
        "42501" => Code::PermissionDenied,
        "23505" => Code::AlreadyExists,
        "25006" => Code::InvalidArgument,
        "57014" => Code::DeadlineExceeded,
        "40001" | "40P01" | "55P03" => Code::Aborted,
        s if s.starts_with("53") => Code::ResourceExhausted,
        s if s.starts_with("08") || s.starts_with("57P") => Code::Unavailable,
        s if ["22", "42", "0A", "2F", "3F", "26", "34", "44"]
            .iter()
            .any(|class| s.starts_with(class)) =>
        {
            Code::InvalidArgument
        }
        s if s.starts_with("40") => Code::Aborted,
        _ => Code::FailedPrecondition,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_map_to_fitting_codes_never_internal() {
        let cases = [
            ("42501", Code::PermissionDenied),
            ("42P01", Code::InvalidArgument),
            ("42601", Code::InvalidArgument),
            ("22P02", Code::InvalidArgument),
            ("23505", Code::AlreadyExists),
            ("23503", Code::FailedPrecondition),
            ("23514", Code::FailedPrecondition),
            ("40001", Code::Aborted),
            ("40P01", Code::Aborted),
            ("57014", Code::DeadlineExceeded),
            ("P0001", Code::FailedPrecondition),
            ("XX000", Code::FailedPrecondition),
            ("25006", Code::InvalidArgument),
        ];
        for (state, code) in cases {
            assert_eq!(sql_code(state), code, "{state}");
        }
    }
}
