//! The identity command groups over `UserService` and `SessionService`:
//! `users` (accounts and passwords), `members` (who holds which role in a
//! tenant) and `sessions` (logins and tokens). Each maps onto the RPCs the
//! API offers and nothing more: there is no listing of all users and no
//! reactivation of a deactivated one, because the API has neither.
//!
//! Passwords and tokens never come from the command line, where any user of
//! the machine can read them in the process list: `secret` reads them from
//! standard input or a file.

pub mod members;
mod secret;
pub mod sessions;
pub mod users;

pub use members::MembersCommand;
pub use sessions::SessionsCommand;
pub use users::UsersCommand;
