//! `tenantctl sessions …`: SessionService from the operator's seat — log a
//! user in (for scripts: `TENANTD_KEY=$(tenantctl sessions login …
//! --token-only)`), refresh, validate a token, check a permission, list a
//! user's sessions and end one or all of them. Passwords and tokens are read
//! from stdin or a file; a token the server refuses is a non-zero exit that
//! says what that can mean.

use clap::{ArgGroup, Args, Subcommand};
use serde_json::{Value, json};
use tenantd::pb::{self, login_request::Identifier};

use super::members::role_word;
use super::secret::{PasswordArgs, TokenArgs};
use super::users::UserArg;
use crate::error::CliError;
use crate::output::{self, OutputFormat};
use crate::session::Session;
use crate::tenants;

#[derive(Debug, Subcommand)]
pub enum SessionsCommand {
    /// Log a user in: prints the access and refresh tokens (with
    /// --token-only, just the access token).
    Login(LoginArgs),
    /// Trade a refresh token for new tokens; the old refresh token is spent.
    Refresh(RefreshArgs),
    /// Whose access token this is; exits 1 when it is not valid.
    Validate(TokenArgs),
    /// Whether an access token grants a permission in a tenant; exits 1 when
    /// it does not.
    Check(CheckArgs),
    /// A user's sessions, ended ones included.
    List(UserArg),
    /// End the session of one access token.
    Logout(TokenArgs),
    /// End every session of a user.
    Revoke(RevokeArgs),
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("identifier").args(["email", "phone"]).required(true)))]
pub struct LoginArgs {
    /// The user's e-mail address.
    #[arg(long)]
    email: Option<String>,
    /// The user's phone number.
    #[arg(long)]
    phone: Option<String>,
    #[command(flatten)]
    password: PasswordArgs,
    /// Log into this tenant (id or slug): the token then carries the user's
    /// role there.
    #[arg(long, value_name = "TENANT")]
    tenant: Option<String>,
    /// What the session is called in `sessions list`.
    #[arg(long, default_value = "tenantctl")]
    device: String,
    /// The end user's IP address, when logging in on their behalf (rate
    /// limiting, session records).
    #[arg(long, default_value = "")]
    client_ip: String,
    /// Print only the access token, whatever --output says.
    #[arg(long)]
    token_only: bool,
}

#[derive(Debug, Args)]
pub struct RefreshArgs {
    /// The refresh token's source.
    #[command(flatten)]
    token: TokenArgs,
    /// The end user's IP address, when refreshing on their behalf.
    #[arg(long, default_value = "")]
    client_ip: String,
    /// Print only the new access token, whatever --output says.
    #[arg(long)]
    token_only: bool,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    token: TokenArgs,
    /// The tenant's id or slug.
    #[arg(long, value_name = "TENANT")]
    tenant: String,
    /// The permission, e.g. data:write (see the permission matrix).
    #[arg(long)]
    permission: String,
}

#[derive(Debug, Args)]
pub struct RevokeArgs {
    #[command(flatten)]
    user: UserArg,
    /// Why; kept in the audit log.
    #[arg(long, default_value = "")]
    reason: String,
}

/// What a refused access token can mean.
const ACCESS_TOKEN_REFUSED: &str = "the access token is not valid: malformed, expired, or its \
     session ended (logout, `sessions revoke`, a password change, deactivation)";
const REFRESH_TOKEN_REFUSED: &str = "the refresh token is not valid: unknown, expired, already \
     used (a reused one ends its session), or its session ended";
const LOGIN_REFUSED: &str = "wrong password, or no active user with that e-mail or phone \
     (the server does not say which)";

pub async fn run(command: SessionsCommand, session: &Session) -> Result<(), CliError> {
    let mut client = session.sessions();
    match command {
        SessionsCommand::Login(a) => {
            let request = pb::LoginRequest {
                identifier: match (a.email, a.phone) {
                    (Some(email), _) => Some(Identifier::Email(email)),
                    (None, phone) => phone.map(Identifier::Phone),
                },
                password: a.password.read()?,
                tenant_id: match &a.tenant {
                    Some(tenant) => tenants::resolve_id(session, tenant).await?,
                    None => String::new(),
                },
                device: a.device,
                client_ip: a.client_ip,
            };
            let issued = session
                .call_judging(client.login(session.request(request)), LOGIN_REFUSED)
                .await?;
            print_issued(session.output, &issued, a.token_only)
        }
        SessionsCommand::Refresh(a) => {
            let request = pb::RefreshRequest {
                refresh_token: a.token.read()?,
                client_ip: a.client_ip,
            };
            let issued = session
                .call_judging(
                    client.refresh(session.request(request)),
                    REFRESH_TOKEN_REFUSED,
                )
                .await?;
            print_issued(session.output, &issued, a.token_only)
        }
        SessionsCommand::Validate(a) => {
            let request = pb::ValidateTokenRequest {
                access_token: a.read()?,
            };
            let principal = session
                .call_judging(
                    client.validate_token(session.request(request)),
                    ACCESS_TOKEN_REFUSED,
                )
                .await?;
            print_principal(session.output, &principal)
        }
        SessionsCommand::Check(a) => check(a, session).await,
        SessionsCommand::List(a) => {
            let request = pb::ListSessionsRequest { user_id: a.user_id };
            let answer = session
                .call(client.list_sessions(session.request(request)))
                .await?;
            print_sessions(session.output, &answer.sessions)
        }
        SessionsCommand::Logout(a) => {
            let request = pb::LogoutRequest {
                access_token: a.read()?,
            };
            session
                .call_judging(
                    client.logout(session.request(request)),
                    ACCESS_TOKEN_REFUSED,
                )
                .await?;
            match session.output {
                OutputFormat::Json => output::print_json(&json!({ "ended": true })),
                OutputFormat::Table => output::print_text("the token's session has ended"),
            }
        }
        SessionsCommand::Revoke(a) => {
            let request = pb::RevokeAllSessionsRequest {
                user_id: a.user.user_id.clone(),
                reason: a.reason,
            };
            let answer = session
                .call(client.revoke_all_sessions(session.request(request)))
                .await?;
            match session.output {
                OutputFormat::Json => output::print_json(&json!({
                    "user_id": a.user.user_id,
                    "sessions_revoked": answer.sessions_revoked,
                })),
                OutputFormat::Table => output::print_text(&format!(
                    "{} session(s) of user {} ended",
                    answer.sessions_revoked, a.user.user_id
                )),
            }
        }
    }
}

/// Prints the answer, then fails unless the permission is granted.
async fn check(a: CheckArgs, session: &Session) -> Result<(), CliError> {
    let request = pb::CheckPermissionRequest {
        access_token: a.token.read()?,
        tenant_id: tenants::resolve_id(session, &a.tenant).await?,
        permission: a.permission.clone(),
    };
    let answer = session
        .call_judging(
            session
                .sessions()
                .check_permission(session.request(request)),
            ACCESS_TOKEN_REFUSED,
        )
        .await?;
    match session.output {
        OutputFormat::Json => output::print_json(&json!({
            "allowed": answer.allowed,
            "reason": answer.reason,
            "role": role_word(answer.role),
        }))?,
        OutputFormat::Table => output::print_text(
            &output::key_value_table(vec![
                ("allowed", answer.allowed.to_string()),
                ("reason", answer.reason.clone()),
                ("role", role_word(answer.role)),
            ])
            .to_string(),
        )?,
    }
    if answer.allowed {
        Ok(())
    } else {
        Err(CliError::Failed(format!(
            "{} is not granted: {}",
            a.permission, answer.reason
        )))
    }
}

/// Who holds a token, as JSON with the proto's field names.
fn principal_json(p: &pb::Principal) -> Value {
    json!({
        "user_id": p.user_id,
        "session_id": p.session_id,
        "tenant_id": p.tenant_id,
        "role": role_word(p.role),
        "expires_at": output::rfc3339(p.expires_at.as_ref()),
    })
}

fn principal_rows(p: &pb::Principal) -> Vec<(&'static str, String)> {
    vec![
        ("user_id", p.user_id.clone()),
        ("session_id", p.session_id.clone()),
        ("tenant_id", p.tenant_id.clone()),
        ("role", role_word(p.role)),
        ("expires_at", output::rfc3339_seconds(p.expires_at.as_ref())),
    ]
}

fn print_principal(format: OutputFormat, p: &pb::Principal) -> Result<(), CliError> {
    match format {
        OutputFormat::Json => output::print_json(&principal_json(p)),
        OutputFormat::Table => {
            output::print_text(&output::key_value_table(principal_rows(p)).to_string())
        }
    }
}

/// Tokens from a login or refresh. In tables the tokens follow on lines of
/// their own, so that a narrow terminal does not wrap them inside a cell.
fn print_issued(
    format: OutputFormat,
    issued: &pb::LoginResponse,
    token_only: bool,
) -> Result<(), CliError> {
    if token_only {
        return output::print_text(&issued.access_token);
    }
    let principal = issued.principal.clone().unwrap_or_default();
    match format {
        OutputFormat::Json => output::print_json(&json!({
            "access_token": issued.access_token,
            "access_expires_at": output::rfc3339(issued.access_expires_at.as_ref()),
            "refresh_token": issued.refresh_token,
            "refresh_expires_at": output::rfc3339(issued.refresh_expires_at.as_ref()),
            "session_id": issued.session_id,
            "principal": principal_json(&principal),
        })),
        OutputFormat::Table => {
            let mut rows = principal_rows(&principal);
            rows.retain(|(key, _)| *key != "expires_at");
            rows.push((
                "access_expires_at",
                output::rfc3339_seconds(issued.access_expires_at.as_ref()),
            ));
            rows.push((
                "refresh_expires_at",
                output::rfc3339_seconds(issued.refresh_expires_at.as_ref()),
            ));
            output::print_text(&output::key_value_table(rows).to_string())?;
            output::print_text(&format!(
                "access_token: {}\nrefresh_token: {}",
                issued.access_token, issued.refresh_token
            ))
        }
    }
}

fn session_json(s: &pb::Session) -> Value {
    json!({
        "id": s.id,
        "tenant_id": s.tenant_id,
        "device": s.device,
        "client_ip": s.client_ip,
        "created_at": output::rfc3339(s.created_at.as_ref()),
        "last_used_at": output::rfc3339(s.last_used_at.as_ref()),
        "expires_at": output::rfc3339(s.expires_at.as_ref()),
        "revoked": s.revoked,
    })
}

fn print_sessions(format: OutputFormat, sessions: &[pb::Session]) -> Result<(), CliError> {
    if format == OutputFormat::Json {
        return output::print_json(&json!({
            "sessions": sessions.iter().map(session_json).collect::<Vec<_>>(),
        }));
    }
    if sessions.is_empty() {
        return output::print_text("no sessions");
    }
    let mut table = output::table(Some(&[
        "ID",
        "TENANT",
        "DEVICE",
        "CLIENT IP",
        "CREATED",
        "LAST USED",
        "EXPIRES",
        "STATE",
    ]));
    for s in sessions {
        table.add_row(vec![
            s.id.clone(),
            s.tenant_id.clone(),
            s.device.clone(),
            s.client_ip.clone(),
            output::rfc3339_seconds(s.created_at.as_ref()),
            output::rfc3339_seconds(s.last_used_at.as_ref()),
            output::rfc3339_seconds(s.expires_at.as_ref()),
            if s.revoked { "revoked" } else { "active" }.to_owned(),
        ]);
    }
    output::print_text(&table.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    use crate::cli::{Cli, Command};

    fn parse(args: &[&str]) -> Result<SessionsCommand, clap::Error> {
        let cli = Cli::try_parse_from(["tenantctl", "sessions"].iter().chain(args))?;
        match cli.command {
            Command::Sessions { command } => Ok(command),
            other => panic!("not a sessions command: {other:?}"),
        }
    }

    #[test]
    fn login_needs_one_identifier_and_one_password_source() {
        let ok = parse(&[
            "login",
            "--email",
            "a@b.de",
            "--password-stdin",
            "--token-only",
        ]);
        assert!(matches!(ok, Ok(SessionsCommand::Login(a)) if a.token_only));
        for args in [
            &["login", "--password-stdin"][..],
            &["login", "--email", "a@b.de"],
            &[
                "login",
                "--email",
                "a@b.de",
                "--phone",
                "+4930123456",
                "--password-stdin",
            ],
            &["validate"],
            &["validate", "eyJhbGciOiJIUzI1NiJ9.e30.sig"],
            &["revoke", "not-a-user"],
        ] {
            assert!(parse(args).is_err(), "{args:?} was accepted");
        }
    }

    #[test]
    fn json_uses_proto_names_and_role_words() {
        let p = pb::Principal {
            user_id: "u1".into(),
            role: pb::MemberRole::Admin as i32,
            ..Default::default()
        };
        let v = principal_json(&p);
        assert_eq!(v["role"], "admin");
        assert_eq!(v["tenant_id"], "");
        assert_eq!(v["expires_at"], Value::Null);
    }
}
