//! Generated request types into validated domain values (every bad field
//! named), and domain values into generated response types.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};

use super::pb;
use crate::domain::{
    ClusterName, Country, NewTenant, Slug, Tenant, TenantId, TenantName, TenantPatch, TenantStatus,
    TextField, ValidationError, Violations,
};

const MAX_INDUSTRY: usize = 100;
const MAX_DESCRIPTION: usize = 2000;
const MAX_IDEMPOTENCY_KEY: usize = 200;
pub const DEFAULT_PAGE_SIZE: usize = 100;
pub const MAX_PAGE_SIZE: usize = 1000;

impl TryFrom<pb::CreateTenantRequest> for NewTenant {
    type Error = ValidationError;

    fn try_from(r: pb::CreateTenantRequest) -> Result<Self, Self::Error> {
        let mut v = Violations::new();
        let name = v.check(TenantName::parse("name", &r.name));
        let slug = v.check(Slug::parse("slug", &r.slug));
        let industry = v.check(TextField::parse("industry", &r.industry, MAX_INDUSTRY));
        let description = v.check(TextField::parse(
            "description",
            &r.description,
            MAX_DESCRIPTION,
        ));
        let country = v.check(Country::parse_optional("country", &r.country));
        let owner_user_id = if r.owner_user_id.is_empty() {
            Some(None)
        } else {
            v.check(
                TenantId::parse("owner_user_id", &r.owner_user_id).map(|id| Some(*id.as_uuid())),
            )
        };
        let cluster = if r.cluster.is_empty() {
            Some(None)
        } else {
            v.check(ClusterName::parse("cluster", &r.cluster).map(Some))
        };
        let key = r.idempotency_key.trim();
        if key.chars().count() > MAX_IDEMPOTENCY_KEY {
            v.add(
                "idempotency_key",
                format!("must be at most {MAX_IDEMPOTENCY_KEY} characters"),
            );
        }
        v.finish()?;
        // finish() succeeded, so every check above returned a value.
        match (
            name,
            slug,
            industry,
            description,
            country,
            owner_user_id,
            cluster,
        ) {
            (
                Some(name),
                Some(slug),
                Some(industry),
                Some(description),
                Some(country),
                Some(owner_user_id),
                Some(cluster),
            ) => Ok(NewTenant {
                name,
                slug,
                industry,
                description,
                country,
                owner_user_id,
                idempotency_key: (!key.is_empty()).then(|| key.to_owned()),
                cluster,
            }),
            _ => Err(ValidationError::single("request", "invalid")),
        }
    }
}

/// A validated UpdateTenantRequest.
pub struct UpdateTenant {
    pub id: TenantId,
    pub patch: TenantPatch,
}

impl TryFrom<pb::UpdateTenantRequest> for UpdateTenant {
    type Error = ValidationError;

    fn try_from(r: pb::UpdateTenantRequest) -> Result<Self, Self::Error> {
        let mut v = Violations::new();
        let id = v.check(TenantId::parse("id", &r.id));
        let mut patch = TenantPatch {
            expected_version: r.expected_version,
            ..TenantPatch::default()
        };
        if let Some(name) = &r.name {
            patch.name = v.check(TenantName::parse("name", name));
        }
        if let Some(industry) = &r.industry {
            patch.industry = v.check(TextField::parse("industry", industry, MAX_INDUSTRY));
        }
        if let Some(description) = &r.description {
            patch.description = v.check(TextField::parse(
                "description",
                description,
                MAX_DESCRIPTION,
            ));
        }
        if let Some(country) = &r.country {
            patch.country = v.check(Country::parse_optional("country", country));
        }
        if let Some(expected) = r.expected_version
            && expected < 1
        {
            v.add("expected_version", "must be at least 1");
        }
        v.finish()?;
        let id = id.ok_or_else(|| ValidationError::single("id", "is required"))?;
        Ok(UpdateTenant { id, patch })
    }
}

pub fn expected_version(field: &str, value: Option<i64>) -> Result<Option<i64>, ValidationError> {
    match value {
        Some(v) if v < 1 => Err(ValidationError::single(field, "must be at least 1")),
        other => Ok(other),
    }
}

/// `UNSPECIFIED` means "no filter"; values the enum does not know are refused.
pub fn status_filter(field: &str, value: i32) -> Result<Option<TenantStatus>, ValidationError> {
    match pb::TenantStatus::try_from(value) {
        Ok(pb::TenantStatus::Unspecified) => Ok(None),
        Ok(s) => Ok(Some(status_from_pb(s))),
        Err(_) => Err(ValidationError::single(
            field,
            format!("unknown tenant status {value}"),
        )),
    }
}

fn status_from_pb(s: pb::TenantStatus) -> TenantStatus {
    match s {
        pb::TenantStatus::Provisioning => TenantStatus::Provisioning,
        pb::TenantStatus::Active | pb::TenantStatus::Unspecified => TenantStatus::Active,
        pb::TenantStatus::Suspended => TenantStatus::Suspended,
        pb::TenantStatus::Archived => TenantStatus::Archived,
        pb::TenantStatus::Purged => TenantStatus::Purged,
    }
}

fn status_to_pb(s: TenantStatus) -> pb::TenantStatus {
    match s {
        TenantStatus::Provisioning => pb::TenantStatus::Provisioning,
        TenantStatus::Active => pb::TenantStatus::Active,
        TenantStatus::Suspended => pb::TenantStatus::Suspended,
        TenantStatus::Archived => pb::TenantStatus::Archived,
        TenantStatus::Purged => pb::TenantStatus::Purged,
    }
}

pub fn page_size(value: i32) -> Result<usize, ValidationError> {
    match value {
        0 => Ok(DEFAULT_PAGE_SIZE),
        v if v < 0 || v as usize > MAX_PAGE_SIZE => Err(ValidationError::single(
            "page_size",
            format!("must be between 1 and {MAX_PAGE_SIZE}"),
        )),
        v => Ok(v as usize),
    }
}

const PAGE_TOKEN_PREFIX: &[u8] = b"t1:";

/// Opaque to callers: the last id of the previous page.
pub fn encode_page_token(after: TenantId) -> String {
    let mut raw = PAGE_TOKEN_PREFIX.to_vec();
    raw.extend_from_slice(after.as_uuid().as_bytes());
    URL_SAFE_NO_PAD.encode(raw)
}

pub fn decode_page_token(token: &str) -> Result<Option<TenantId>, ValidationError> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || ValidationError::single("page_token", "is not a token this service issued");
    let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let id = raw.strip_prefix(PAGE_TOKEN_PREFIX).ok_or_else(bad)?;
    let id = uuid::Uuid::from_slice(id).map_err(|_| bad())?;
    Ok(Some(TenantId::from_uuid(id)))
}

pub fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

impl From<Tenant> for pb::Tenant {
    fn from(t: Tenant) -> Self {
        pb::Tenant {
            id: t.id.to_string(),
            slug: t.slug,
            name: t.name,
            industry: t.industry,
            description: t.description,
            country: t.country.unwrap_or_default(),
            status: status_to_pb(t.status) as i32,
            schema_name: t.schema_name.to_string(),
            schema_version: t.schema_version,
            version: t.version,
            created_at: Some(timestamp(t.created_at)),
            updated_at: Some(timestamp(t.updated_at)),
            // GetTenant fills it in on Citus.
            node: String::new(),
            cluster: t.placement.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_reject_garbage() {
        let id = TenantId::new();
        assert_eq!(decode_page_token(&encode_page_token(id)).unwrap(), Some(id));
        assert_eq!(decode_page_token("").unwrap(), None);
        for bad in [
            "x",
            "dDE6",
            "!!!!",
            &URL_SAFE_NO_PAD.encode(b"t2:0123456789abcdef"),
        ] {
            assert_eq!(
                decode_page_token(bad).unwrap_err().violations[0].field,
                "page_token"
            );
        }
    }

    #[test]
    fn create_request_names_every_bad_field() {
        let err = NewTenant::try_from(pb::CreateTenantRequest {
            name: String::new(),
            slug: "A!".into(),
            country: "XX".into(),
            owner_user_id: "nope".into(),
            ..Default::default()
        })
        .unwrap_err();
        let fields: Vec<_> = err.violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["name", "slug", "country", "owner_user_id"]);
    }
}
