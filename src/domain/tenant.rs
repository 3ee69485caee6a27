//! The tenant as the rest of the service sees it, and the validated inputs
//! that create and change one.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};

use super::{SchemaName, TenantId, ValidationError};

/// Lower-case letters, digits and inner hyphens, 3–63 characters: safe in a
/// URL and a DNS label.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Slug(String);

impl Slug {
    pub fn parse(field: &str, value: &str) -> Result<Self, ValidationError> {
        let bad = |why: &str| Err(ValidationError::single(field, why));
        if value.is_empty() {
            return bad("is required");
        }
        if !(3..=63).contains(&value.len()) {
            return bad("must be 3-63 characters");
        }
        if !value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return bad("may contain only lower-case letters, digits and hyphens");
        }
        if value.starts_with('-') || value.ends_with('-') {
            return bad("must not start or end with a hyphen");
        }
        Ok(Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Slug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A tenant's display name: 1–200 characters, not blank, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantName(String);

impl TenantName {
    pub fn parse(field: &str, value: &str) -> Result<Self, ValidationError> {
        let trimmed = value.trim();
        if trimmed.is_empty() {
            return Err(ValidationError::single(field, "is required"));
        }
        if trimmed.chars().count() > 200 {
            return Err(ValidationError::single(
                field,
                "must be at most 200 characters",
            ));
        }
        if trimmed.chars().any(char::is_control) {
            return Err(ValidationError::single(
                field,
                "must not contain control characters",
            ));
        }
        Ok(Self(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Free text with a length limit (industry, description); may be empty.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TextField(String);

impl TextField {
    pub fn parse(field: &str, value: &str, max_chars: usize) -> Result<Self, ValidationError> {
        let trimmed = value.trim();
        if trimmed.chars().count() > max_chars {
            return Err(ValidationError::single(
                field,
                format!("must be at most {max_chars} characters"),
            ));
        }
        if trimmed.contains('\0') {
            return Err(ValidationError::single(
                field,
                "must not contain NUL characters",
            ));
        }
        Ok(Self(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// An officially assigned ISO 3166-1 alpha-2 code, upper case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Country([u8; 2]);

/// Every officially assigned ISO 3166-1 alpha-2 code.
const ISO_3166_ALPHA2: &str = "AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM \
BN BO BQ BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC EE \
EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT HU ID \
IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC \
MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF \
PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY \
SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW";

impl Country {
    /// Accepts either case; an empty value is "not given".
    pub fn parse_optional(field: &str, value: &str) -> Result<Option<Self>, ValidationError> {
        let value = value.trim();
        if value.is_empty() {
            return Ok(None);
        }
        let upper = value.to_ascii_uppercase();
        let known = upper.len() == 2
            && upper.bytes().all(|b| b.is_ascii_uppercase())
            && ISO_3166_ALPHA2.split(' ').any(|c| c == upper);
        if !known {
            return Err(ValidationError::single(
                field,
                "must be an ISO 3166-1 alpha-2 country code such as DE or IN",
            ));
        }
        let b = upper.as_bytes();
        Ok(Some(Self([b[0], b[1]])))
    }

    pub fn as_str(&self) -> &str {
        // Only ever built from two ASCII upper-case letters.
        std::str::from_utf8(&self.0).unwrap_or("??")
    }
}

/// Where a tenant is in its life. PURGED is a tombstone: the schema and
/// roles are gone, the catalog row stays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TenantStatus {
    Provisioning,
    Active,
    Suspended,
    Archived,
    Purged,
}

impl TenantStatus {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Provisioning => "provisioning",
            Self::Active => "active",
            Self::Suspended => "suspended",
            Self::Archived => "archived",
            Self::Purged => "purged",
        }
    }
}

impl FromStr for TenantStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "provisioning" => Self::Provisioning,
            "active" => Self::Active,
            "suspended" => Self::Suspended,
            "archived" => Self::Archived,
            "purged" => Self::Purged,
            other => return Err(format!("unknown tenant status {other:?}")),
        })
    }
}

impl TryFrom<String> for TenantStatus {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl fmt::Display for TenantStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A lifecycle change an operator asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifecycleAction {
    Suspend,
    Resume,
    Archive,
    Purge,
}

impl LifecycleAction {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Suspend => "suspend",
            Self::Resume => "resume",
            Self::Archive => "archive",
            Self::Purge => "purge",
        }
    }
}

impl TenantStatus {
    /// The status `action` moves a tenant in this status to: `Ok(None)` when
    /// it is there already (the action is a no-op), `Err(())` when the action
    /// is not allowed from here.
    #[allow(clippy::result_unit_err)]
    pub fn after(self, action: LifecycleAction) -> Result<Option<TenantStatus>, ()> {
        use LifecycleAction as A;
        use TenantStatus as S;
        match (action, self) {
            (A::Suspend, S::Active) => Ok(Some(S::Suspended)),
            (A::Suspend, S::Suspended) => Ok(None),
            (A::Resume, S::Suspended) => Ok(Some(S::Active)),
            (A::Resume, S::Active) => Ok(None),
            (A::Archive, S::Active | S::Suspended) => Ok(Some(S::Archived)),
            (A::Archive, S::Archived) => Ok(None),
            (A::Purge, S::Archived) => Ok(Some(S::Purged)),
            _ => Err(()),
        }
    }
}

/// A validated CreateTenant request.
#[derive(Debug, Clone)]
pub struct NewTenant {
    pub name: TenantName,
    pub slug: Slug,
    pub industry: TextField,
    pub description: TextField,
    pub country: Option<Country>,
    pub owner_user_id: Option<uuid::Uuid>,
    pub idempotency_key: Option<String>,
    /// The cluster to place the tenant on; `None`: placement picks one.
    pub cluster: Option<super::ClusterName>,
}

/// A validated UpdateTenant request: `None` leaves a field as it is;
/// `Some(None)` for country clears it.
#[derive(Debug, Clone, Default)]
pub struct TenantPatch {
    pub name: Option<TenantName>,
    pub industry: Option<TextField>,
    pub description: Option<TextField>,
    pub country: Option<Option<Country>>,
    pub expected_version: Option<i64>,
}

impl TenantPatch {
    pub fn is_empty(&self) -> bool {
        self.name.is_none()
            && self.industry.is_none()
            && self.description.is_none()
            && self.country.is_none()
    }
}

/// A tenant as recorded in the catalog.
#[derive(Debug, Clone, PartialEq)]
pub struct Tenant {
    pub id: TenantId,
    pub slug: String,
    pub name: String,
    pub industry: String,
    pub description: String,
    pub country: Option<String>,
    pub status: TenantStatus,
    pub schema_name: SchemaName,
    pub schema_version: i64,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The cluster that holds the tenant's role and schema.
    pub placement: super::ClusterName,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs() {
        for ok in ["abc", "acme-gmbh", "a1-b2-c3", &"a".repeat(63)] {
            assert!(Slug::parse("slug", ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "ab",
            "-abc",
            "abc-",
            "Acme",
            "a_b_c",
            "ab c",
            "ümlaut",
            &"a".repeat(64),
        ] {
            let err = Slug::parse("slug", bad).unwrap_err();
            assert_eq!(err.violations[0].field, "slug", "{bad}");
        }
    }

    #[test]
    fn countries() {
        assert_eq!(
            Country::parse_optional("country", "de")
                .unwrap()
                .unwrap()
                .as_str(),
            "DE"
        );
        assert!(Country::parse_optional("country", "").unwrap().is_none());
        for bad in ["XX", "DEU", "D", "1A", "ZZ"] {
            assert!(Country::parse_optional("country", bad).is_err(), "{bad}");
        }
        assert_eq!(ISO_3166_ALPHA2.split(' ').count(), 249);
    }

    #[test]
    fn names() {
        assert_eq!(
            TenantName::parse("name", "  Acme  ").unwrap().as_str(),
            "Acme"
        );
        assert!(TenantName::parse("name", "   ").is_err());
        assert!(TenantName::parse("name", &"x".repeat(201)).is_err());
        assert!(TenantName::parse("name", "a\u{7}b").is_err());
    }

    #[test]
    fn lifecycle() {
        use LifecycleAction as A;
        use TenantStatus as S;
        assert_eq!(S::Active.after(A::Suspend), Ok(Some(S::Suspended)));
        assert_eq!(S::Suspended.after(A::Suspend), Ok(None));
        assert_eq!(S::Suspended.after(A::Resume), Ok(Some(S::Active)));
        assert_eq!(S::Suspended.after(A::Archive), Ok(Some(S::Archived)));
        assert_eq!(S::Archived.after(A::Purge), Ok(Some(S::Purged)));
        assert!(S::Active.after(A::Purge).is_err());
        assert!(S::Archived.after(A::Resume).is_err());
        assert!(S::Purged.after(A::Purge).is_err());
        assert!(S::Provisioning.after(A::Suspend).is_err());
    }

    #[test]
    fn statuses_round_trip() {
        for s in [
            TenantStatus::Provisioning,
            TenantStatus::Active,
            TenantStatus::Suspended,
            TenantStatus::Archived,
            TenantStatus::Purged,
        ] {
            assert_eq!(s.as_str().parse::<TenantStatus>().unwrap(), s);
        }
    }
}
