//! `tenantctl users …`: user accounts through UserService — create, show,
//! change, deactivate, set a password, and the tenants a user belongs to.
//! The API lists no users and reactivates none, so neither does this group.

use std::path::PathBuf;

use clap::{ArgGroup, Args, Subcommand};
use serde_json::{Value, json};
use tenantd::pb;

use super::members;
use super::secret::{self, PasswordArgs};
use crate::cli::parse_uuid;
use crate::error::CliError;
use crate::output::{self, OutputFormat};
use crate::session::Session;

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Create a user; the password comes from stdin or a file.
    Create(CreateArgs),
    /// Show one user.
    Get(UserArg),
    /// Change a user's name, e-mail or phone.
    Update(UpdateArgs),
    /// End every session of a user and refuse their logins from now on (the
    /// API has no way back).
    #[command(visible_alias = "disable")]
    Deactivate(DeactivateArgs),
    /// Set a user's password; the user's sessions end.
    SetPassword(SetPasswordArgs),
    /// The tenants a user belongs to, with the role in each.
    Tenants(UserArg),
}

/// One user, by id.
#[derive(Debug, Args)]
pub struct UserArg {
    /// The user's id.
    #[arg(value_name = "USER_ID", value_parser = parse_uuid)]
    pub user_id: String,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Given name, 1-100 characters.
    #[arg(long)]
    first_name: String,
    /// Family name, 1-100 characters.
    #[arg(long)]
    last_name: String,
    /// E-mail address, unique regardless of case (give it, a phone, or both).
    #[arg(long, default_value = "")]
    email: String,
    /// Phone number in international form, e.g. +4930123456.
    #[arg(long, default_value = "")]
    phone: String,
    #[command(flatten)]
    password: PasswordArgs,
}

#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("change")
        .args(["first_name", "last_name", "email", "phone"])
        .required(true)
        .multiple(true)
))]
pub struct UpdateArgs {
    #[command(flatten)]
    user: UserArg,
    #[arg(long)]
    first_name: Option<String>,
    #[arg(long)]
    last_name: Option<String>,
    /// New e-mail address; an empty value clears it (a phone must remain).
    #[arg(long)]
    email: Option<String>,
    /// New phone number; an empty value clears it (an e-mail must remain).
    #[arg(long)]
    phone: Option<String>,
    /// Apply only if the user's version is still this one.
    #[arg(long, value_parser = clap::value_parser!(i64).range(1..))]
    expected_version: Option<i64>,
    /// The current password, from this file: needed to change the e-mail
    /// address or phone number when tenantctl runs with the user's own
    /// access token instead of a service key.
    #[arg(long, value_name = "PATH")]
    current_password_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DeactivateArgs {
    #[command(flatten)]
    user: UserArg,
    /// Why; kept in the audit log.
    #[arg(long, default_value = "")]
    reason: String,
}

#[derive(Debug, Args)]
pub struct SetPasswordArgs {
    #[command(flatten)]
    user: UserArg,
    #[command(flatten)]
    password: PasswordArgs,
    /// The current password, from this file: needed when tenantctl runs with
    /// the user's own access token instead of a service key.
    #[arg(long, value_name = "PATH")]
    current_password_file: Option<PathBuf>,
}

/// What a refused current password means.
const WRONG_CURRENT_PASSWORD: &str = "the current password (--current-password-file) is wrong";

pub async fn run(command: UsersCommand, session: &Session) -> Result<(), CliError> {
    let mut client = session.users();
    let user = match command {
        UsersCommand::Create(a) => {
            let request = pb::CreateUserRequest {
                first_name: a.first_name,
                last_name: a.last_name,
                email: a.email,
                phone: a.phone,
                password: a.password.read()?,
            };
            session
                .call(client.create_user(session.request(request)))
                .await?
        }
        UsersCommand::Get(a) => {
            let request = pb::GetUserRequest { id: a.user_id };
            session
                .call(client.get_user(session.request(request)))
                .await?
        }
        UsersCommand::Update(a) => {
            let current_password = current_password(a.current_password_file.as_deref())?;
            let request = pb::UpdateUserRequest {
                id: a.user.user_id,
                first_name: a.first_name,
                last_name: a.last_name,
                email: a.email,
                phone: a.phone,
                expected_version: a.expected_version,
                current_password,
            };
            let call = client.update_user(session.request(request));
            if a.current_password_file.is_some() {
                session.call_judging(call, WRONG_CURRENT_PASSWORD).await?
            } else {
                session.call(call).await?
            }
        }
        UsersCommand::Deactivate(a) => {
            let request = pb::DeactivateUserRequest {
                id: a.user.user_id,
                reason: a.reason,
            };
            session
                .call(client.deactivate_user(session.request(request)))
                .await?
        }
        UsersCommand::SetPassword(a) => return set_password(a, session).await,
        UsersCommand::Tenants(a) => {
            let request = pb::ListUserTenantsRequest { user_id: a.user_id };
            let answer = session
                .call(client.list_user_tenants(session.request(request)))
                .await?;
            return members::print_memberships(
                session.output,
                "memberships",
                &answer.memberships,
                None,
            );
        }
    };
    print_user(session.output, &user)
}

/// The current password from `--current-password-file`, or none.
fn current_password(file: Option<&std::path::Path>) -> Result<String, CliError> {
    match file {
        Some(path) => secret::from_file(path, "current password"),
        None => Ok(String::new()),
    }
}

async fn set_password(a: SetPasswordArgs, session: &Session) -> Result<(), CliError> {
    let current_password = current_password(a.current_password_file.as_deref())?;
    let request = session.request(pb::ChangePasswordRequest {
        user_id: a.user.user_id.clone(),
        current_password,
        new_password: a.password.read()?,
    });
    let mut client = session.users();
    let call = client.change_password(request);
    let answer = if a.current_password_file.is_some() {
        session.call_judging(call, WRONG_CURRENT_PASSWORD).await?
    } else {
        session.call(call).await?
    };
    match session.output {
        OutputFormat::Json => output::print_json(&json!({
            "user_id": a.user.user_id,
            "sessions_revoked": answer.sessions_revoked,
        })),
        OutputFormat::Table => output::print_text(&format!(
            "password of user {} set; {} session(s) ended",
            a.user.user_id, answer.sessions_revoked
        )),
    }
}

/// The lower-case status word ("active"); unknown numbers stay visible.
fn status_word(status: i32) -> String {
    let name = pb::UserStatus::try_from(status).ok();
    output::enum_word(name.map(|s| s.as_str_name()), "USER_STATUS_", status)
}

/// A user as JSON with the proto's field names.
fn user_json(u: &pb::User) -> Value {
    json!({
        "id": u.id,
        "first_name": u.first_name,
        "last_name": u.last_name,
        "email": u.email,
        "phone": u.phone,
        "status": status_word(u.status),
        "version": u.version,
        "created_at": output::rfc3339(u.created_at.as_ref()),
        "updated_at": output::rfc3339(u.updated_at.as_ref()),
    })
}

fn print_user(format: OutputFormat, u: &pb::User) -> Result<(), CliError> {
    match format {
        OutputFormat::Json => output::print_json(&user_json(u)),
        OutputFormat::Table => output::print_text(
            &output::key_value_table(vec![
                ("id", u.id.clone()),
                ("first_name", u.first_name.clone()),
                ("last_name", u.last_name.clone()),
                ("email", u.email.clone()),
                ("phone", u.phone.clone()),
                ("status", status_word(u.status)),
                ("version", u.version.to_string()),
                ("created_at", output::rfc3339_seconds(u.created_at.as_ref())),
                ("updated_at", output::rfc3339_seconds(u.updated_at.as_ref())),
            ])
            .to_string(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    use crate::cli::{Cli, Command};

    fn parse(args: &[&str]) -> Result<UsersCommand, clap::Error> {
        let cli = Cli::try_parse_from(["tenantctl", "users"].iter().chain(args))?;
        match cli.command {
            Command::Users { command } => Ok(command),
            other => panic!("not a users command: {other:?}"),
        }
    }

    const ID: &str = "0190a6f2-7d4b-7cc3-9f00-7d0f6b1d2e3a";

    #[test]
    fn passwords_come_from_exactly_one_source_never_an_argument() {
        let create = ["create", "--first-name", "Ada", "--last-name", "L"];
        assert!(parse(&[&create[..], &["--password-stdin"]].concat()).is_ok());
        assert!(parse(&[&create[..], &["--password-file", "pw"]].concat()).is_ok());
        for extra in [
            &[][..],
            &["--password-stdin", "--password-file", "pw"],
            &["--password", "hunter2hunter2"],
        ] {
            let args = [&create[..], extra].concat();
            assert!(parse(&args).is_err(), "{args:?} was accepted");
        }
        assert!(parse(&["set-password", ID]).is_err());
    }

    #[test]
    fn ids_are_checked_and_disable_means_deactivate() {
        assert!(parse(&["get", "not-a-user"]).is_err());
        assert!(
            parse(&["update", ID]).is_err(),
            "an update must change something"
        );
        let command = parse(&["disable", ID, "--reason", "left"]).expect("valid");
        assert!(matches!(command, UsersCommand::Deactivate(a) if a.user.user_id == ID));
    }

    #[test]
    fn json_uses_proto_names_and_status_words() {
        let u = pb::User {
            id: ID.into(),
            email: "ada@example.com".into(),
            status: pb::UserStatus::Deactivated as i32,
            version: 2,
            ..Default::default()
        };
        let v = user_json(&u);
        assert_eq!(v["status"], "deactivated");
        assert_eq!(v["email"], "ada@example.com");
        assert_eq!(v["created_at"], Value::Null);
    }
}
