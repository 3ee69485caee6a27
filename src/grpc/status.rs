//! Every error the service can return, turned into a `tonic::Status` in one
//! place, variant by variant. Internal errors are logged here, once, with
//! their cause chain, and answered without any SQL or driver text.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::catalog::DbFailure;
use crate::domain::ValidationError;
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
        TenantError::Db(failure) => db(failure),
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
