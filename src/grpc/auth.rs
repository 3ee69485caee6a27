//! Who is calling, and may they. Every API call carries
//! `authorization: Bearer <credential>`: a service key (`tdk_…`, with scopes)
//! or a user's access token. The interceptor authenticates it from memory
//! (no database) and leaves a [`Caller`] in the request; each handler then
//! states what it needs: a scope, or a permission in a tenant.

use tonic::service::Interceptor;
use tonic::{Request, Status};
use uuid::Uuid;

use crate::domain::identity::{Permission, Scope};
use crate::identity::keys::ServiceKey;
use crate::identity::{Identity, Principal};

/// An authenticated caller.
#[derive(Debug, Clone)]
pub enum Caller {
    Service(ServiceKey),
    User(Principal),
}

impl Caller {
    /// How the audit log names this caller.
    pub fn actor(&self) -> String {
        match self {
            Caller::Service(k) => format!("service:{}", k.name),
            Caller::User(p) => format!("user:{}", p.user_id),
        }
    }

    pub fn user_id(&self) -> Option<Uuid> {
        match self {
            Caller::User(p) => Some(p.user_id),
            Caller::Service(_) => None,
        }
    }
}

/// Authenticates every call of the services it wraps.
#[derive(Clone)]
pub struct Authenticator {
    identity: Identity,
}

impl Authenticator {
    pub fn new(identity: Identity) -> Self {
        Self { identity }
    }
}

/// The credential of `authorization: Bearer <credential>`.
fn bearer<T>(request: &Request<T>) -> Result<&str, Status> {
    let header = request.metadata().get("authorization").ok_or_else(|| {
        Status::unauthenticated(
            "missing credentials: send `authorization: Bearer <service key or access token>`",
        )
    })?;
    header
        .to_str()
        .ok()
        .and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        })
        .map(str::trim)
        .ok_or_else(|| {
            Status::unauthenticated("the authorization header must be `Bearer <credential>`")
        })
}

/// The credential a call came with, for a long call that checks it again.
pub fn credential<T>(request: &Request<T>) -> Option<&str> {
    bearer(request).ok()
}

impl Interceptor for Authenticator {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let credential = bearer(&request)?;
        let caller = if credential.starts_with("tdk_") {
            self.identity.keys.verify(credential).map(Caller::Service)
        } else {
            self.identity.validate(credential).ok().map(Caller::User)
        };
        let caller = caller
            .ok_or_else(|| Status::unauthenticated("invalid, expired or revoked credentials"))?;
        tracing::Span::current().record("caller", caller.actor());
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}

/// The caller the interceptor authenticated.
pub fn caller<T>(request: &Request<T>) -> Result<Caller, Status> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("missing credentials"))
}

fn denied(what: &str) -> Status {
    Status::permission_denied(what.to_owned())
}

/// A service key with `scope`; user tokens are refused.
pub fn require_scope(caller: &Caller, scope: Scope) -> Result<(), Status> {
    match caller {
        Caller::Service(k) if k.has(scope) => Ok(()),
        Caller::Service(k) => Err(denied(&format!(
            "service key {:?} lacks the scope {scope}",
            k.name
        ))),
        Caller::User(_) => Err(denied(&format!(
            "this call needs a service key with the scope {scope}"
        ))),
    }
}

/// A service key with `scope`, or a user whose role in `tenant` grants
/// `permission`: the token's role while it is bound to that tenant and
/// current, the catalog's otherwise (and always for permissions that change
/// authority). A tenant that is not ACTIVE grants its members only reads.
pub async fn require_in_tenant(
    identity: &Identity,
    caller: &Caller,
    scope: Scope,
    tenant: Uuid,
    permission: Permission,
) -> Result<(), Status> {
    tracing::Span::current().record("tenant_id", tenant.to_string());
    match caller {
        Caller::Service(_) => require_scope(caller, scope),
        Caller::User(p) => match identity
            .access(p, tenant, permission)
            .await
            .map_err(super::status::identity)?
        {
            Some(access) => access
                .check(permission)
                .map(drop)
                .map_err(|why| denied(&why)),
            None => Err(denied("not a member of this tenant")),
        },
    }
}

/// A service key with `scope`, or the user `user` themself.
pub fn require_self_or(caller: &Caller, scope: Scope, user: Uuid) -> Result<(), Status> {
    match caller {
        Caller::User(p) if p.user_id == user => Ok(()),
        Caller::User(_) => Err(denied("users may only do this for themselves")),
        Caller::Service(_) => require_scope(caller, scope),
    }
}

/// Client side: adds `authorization: Bearer <credential>` to every call
/// (`XServiceClient::with_interceptor(channel, Bearer::new(key)?)`).
#[derive(Clone)]
pub struct Bearer(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl Bearer {
    pub fn new(credential: &str) -> Result<Self, Status> {
        format!("Bearer {credential}")
            .parse()
            .map(Self)
            .map_err(|_| Status::invalid_argument("the credential is not valid header text"))
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}
