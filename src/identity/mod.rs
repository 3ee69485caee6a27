//! Identity: users and their passwords, tenant memberships, sessions with
//! rotating refresh tokens, access tokens, service keys, and the checks that
//! decide what a caller may do.

pub mod keys;
mod memberships;
pub mod passwords;
pub(crate) mod revocations;
mod service;
mod sessions;
pub(crate) mod tokens;
mod users;

pub use service::{Identity, IdentityError, IdentitySettings, Principal, SigningKey};
pub use sessions::{Issued, LoginInput, Session};
pub use users::UserPatch;
