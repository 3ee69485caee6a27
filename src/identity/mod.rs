//! Identity: users and their passwords, tenant memberships, sessions with
//! rotating refresh tokens, access tokens, service keys, and the checks that
//! decide what a caller may do.

pub mod keys;
pub mod passwords;
pub mod revocations;
mod service;
pub mod tokens;

pub use service::{
    Identity, IdentityError, IdentitySettings, Issued, LoginInput, Principal, Session, UserPatch,
};
