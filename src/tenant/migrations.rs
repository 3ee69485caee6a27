//! The tenant migration set: `tenant_sql/NNNN_name.sql`, embedded at build
//! time or read from a directory given at run time, numbered without gaps
//! from 1, each with the SHA-256 of its text. At start the set is checked
//! against the catalog: a shipped migration never changes (DESIGN invariant 4).

use std::path::Path;

use anyhow::Context;
use sha2::{Digest, Sha256};
use sqlx::PgConnection;

static EMBEDDED: &[(&str, &str)] = include!(concat!(env!("OUT_DIR"), "/tenant_migrations.rs"));

/// One tenant migration.
#[derive(Debug, Clone)]
pub struct TenantMigration {
    pub version: i64,
    /// The file name without `.sql`, e.g. `0001_default_tables`.
    pub name: String,
    pub sql: String,
    pub checksum: [u8; 32],
    /// False when the file starts with `-- tenantd:no-transaction`: it then
    /// holds one statement that cannot run in a transaction block (such as
    /// `CREATE INDEX CONCURRENTLY`), which must be idempotent because a crash
    /// between running it and recording it runs it again.
    pub transactional: bool,
}

/// The first line of a migration that must run outside a transaction.
pub const NO_TRANSACTION: &str = "-- tenantd:no-transaction";

impl TenantMigration {
    /// The text to run when a brand-new tenant is created. Everything runs
    /// in the create transaction there, so `CONCURRENTLY` (pointless on empty
    /// tables, and refused inside a transaction) is left out.
    pub fn sql_for_new_tenant(&self) -> std::borrow::Cow<'_, str> {
        if self.transactional {
            return self.sql.as_str().into();
        }
        let mut out = String::with_capacity(self.sql.len());
        let mut rest = self.sql.as_str();
        while let Some(at) = find_ascii_ci(rest, " concurrently") {
            out.push_str(&rest[..at]);
            rest = &rest[at + " concurrently".len()..];
        }
        out.push_str(rest);
        out.into()
    }
}

fn find_ascii_ci(haystack: &str, needle: &str) -> Option<usize> {
    haystack
        .as_bytes()
        .windows(needle.len())
        .position(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

/// A complete, gap-free set of tenant migrations, ordered by version.
#[derive(Debug, Clone)]
pub struct TenantMigrations {
    list: Vec<TenantMigration>,
}

#[derive(Debug, thiserror::Error)]
pub enum MigrationSetError {
    #[error("tenant migration file {0:?} is not named NNNN_lower_case_name.sql")]
    BadName(String),
    #[error(
        "tenant migrations must be numbered 1, 2, 3 … without gaps; found {found} where {expected} was expected"
    )]
    Gap { expected: i64, found: i64 },
    #[error("there are no tenant migrations")]
    Empty,
    #[error(
        "tenant migration {version} ({name}) differs from the one already shipped: \
         the catalog has checksum {catalog}, this build has {ours}. A shipped migration \
         must never change; add a new migration instead"
    )]
    ChecksumMismatch {
        version: i64,
        name: String,
        catalog: String,
        ours: String,
    },
    #[error(
        "the catalog knows tenant migrations up to version {catalog_latest}, this build only \
         up to {ours}: run a tenantd at least as new as the one that registered them"
    )]
    CatalogAhead { catalog_latest: i64, ours: i64 },
}

impl TenantMigrations {
    /// The migrations compiled into this binary from `tenant_sql/`.
    pub fn embedded() -> Result<Self, MigrationSetError> {
        Self::from_files(
            EMBEDDED
                .iter()
                .map(|(n, s)| ((*n).to_owned(), (*s).to_owned())),
        )
    }

    /// Every `*.sql` file of `dir`; replaces the embedded set.
    pub fn from_dir(dir: &Path) -> anyhow::Result<Self> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir)
            .with_context(|| format!("read tenant migrations from {}", dir.display()))?
        {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "sql") {
                let name = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .with_context(|| format!("non UTF-8 file name {}", path.display()))?
                    .to_owned();
                let sql = std::fs::read_to_string(&path)
                    .with_context(|| format!("read {}", path.display()))?;
                files.push((name, sql));
            }
        }
        Ok(Self::from_files(files)?)
    }

    fn from_files(
        files: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, MigrationSetError> {
        let mut list = Vec::new();
        for (file, sql) in files {
            let stem = file.strip_suffix(".sql").unwrap_or(&file);
            let (digits, rest) = stem.split_at(stem.find('_').unwrap_or(0));
            let well_formed = digits.len() == 4
                && digits.bytes().all(|b| b.is_ascii_digit())
                && rest.len() > 1
                && rest[1..]
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            let version: i64 = match digits.parse() {
                Ok(v) if well_formed => v,
                _ => return Err(MigrationSetError::BadName(file)),
            };
            let checksum: [u8; 32] = Sha256::digest(sql.as_bytes()).into();
            let transactional = !sql.trim_start().starts_with(NO_TRANSACTION);
            list.push(TenantMigration {
                version,
                name: stem.to_owned(),
                sql,
                checksum,
                transactional,
            });
        }
        list.sort_by_key(|m| m.version);
        if list.is_empty() {
            return Err(MigrationSetError::Empty);
        }
        for (i, m) in list.iter().enumerate() {
            let expected = i as i64 + 1;
            if m.version != expected {
                return Err(MigrationSetError::Gap {
                    expected,
                    found: m.version,
                });
            }
        }
        Ok(Self { list })
    }

    pub fn all(&self) -> &[TenantMigration] {
        &self.list
    }

    /// The migrations after `version` up to and including `target`.
    pub fn between(&self, version: i64, target: i64) -> &[TenantMigration] {
        let from = version.clamp(0, self.latest()) as usize;
        let to = target.clamp(0, self.latest()) as usize;
        if from >= to {
            &[]
        } else {
            &self.list[from..to]
        }
    }

    /// The version every new tenant is created at.
    pub fn latest(&self) -> i64 {
        self.list.len() as i64
    }

    /// Checks this set against the catalog's record of shipped migrations and
    /// registers the new ones. Call under the catalog migration lock or in a
    /// transaction: concurrent callers register each version once.
    pub async fn register(&self, conn: &mut PgConnection) -> anyhow::Result<()> {
        let known = crate::catalog::tenant_migrations::registered(&mut *conn)
            .await
            .context("read the tenant migration catalog")?;
        if let Some((catalog_latest, ..)) = known.last()
            && *catalog_latest > self.latest()
        {
            return Err(MigrationSetError::CatalogAhead {
                catalog_latest: *catalog_latest,
                ours: self.latest(),
            }
            .into());
        }
        for (version, name, checksum) in &known {
            let ours = &self.list[(*version - 1) as usize];
            if ours.checksum.as_slice() != checksum.as_slice() {
                return Err(MigrationSetError::ChecksumMismatch {
                    version: *version,
                    name: name.clone(),
                    catalog: hex::encode(checksum),
                    ours: hex::encode(ours.checksum),
                }
                .into());
            }
        }
        for m in &self.list[known.len()..] {
            crate::catalog::tenant_migrations::register(
                &mut *conn,
                m.version,
                &m.name,
                m.checksum.as_slice(),
                m.transactional,
            )
            .await
            .with_context(|| format!("register tenant migration {}", m.name))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(names: &[&str]) -> Vec<(String, String)> {
        names
            .iter()
            .map(|n| ((*n).to_owned(), format!("-- {n}")))
            .collect()
    }

    #[test]
    fn embedded_set_is_valid() {
        let set = TenantMigrations::embedded().unwrap();
        assert_eq!(set.all()[0].name, "0001_default_tables");
        assert!(set.latest() >= 1);
    }

    #[test]
    fn gaps_and_bad_names_are_refused() {
        let err = TenantMigrations::from_files(files(&["0001_a.sql", "0003_c.sql"])).unwrap_err();
        assert!(
            matches!(
                err,
                MigrationSetError::Gap {
                    expected: 2,
                    found: 3
                }
            ),
            "{err}"
        );
        for bad in [
            "1_a.sql",
            "0001.sql",
            "0001_A.sql",
            "0001-a.sql",
            "abcd_x.sql",
        ] {
            let err = TenantMigrations::from_files(files(&[bad])).unwrap_err();
            assert!(matches!(err, MigrationSetError::BadName(_)), "{bad}: {err}");
        }
        assert!(matches!(
            TenantMigrations::from_files(Vec::new()).unwrap_err(),
            MigrationSetError::Empty
        ));
    }

    #[test]
    fn non_transactional_migrations_are_marked_and_made_plain_for_new_tenants() {
        let set = TenantMigrations::from_files(vec![
            (
                "0001_a.sql".to_owned(),
                "CREATE TABLE t (x int);".to_owned(),
            ),
            (
                "0002_b.sql".to_owned(),
                format!("{NO_TRANSACTION}\nCREATE INDEX CONCURRENTLY IF NOT EXISTS t_x ON t (x);"),
            ),
        ])
        .unwrap();
        assert!(set.all()[0].transactional);
        assert!(!set.all()[1].transactional);
        assert!(
            set.all()[1]
                .sql_for_new_tenant()
                .contains("CREATE INDEX IF NOT EXISTS t_x")
        );
        assert_eq!(set.between(0, 2).len(), 2);
        assert_eq!(set.between(1, 2)[0].version, 2);
        assert!(set.between(2, 2).is_empty());
        assert!(set.between(2, 1).is_empty());
    }

    #[test]
    fn ordered_by_version_with_checksums() {
        let set = TenantMigrations::from_files(files(&["0002_b.sql", "0001_a.sql"])).unwrap();
        assert_eq!(set.all()[0].version, 1);
        assert_eq!(set.all()[1].name, "0002_b");
        assert_ne!(set.all()[0].checksum, set.all()[1].checksum);
    }
}
