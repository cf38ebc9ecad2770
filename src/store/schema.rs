//! Which schema versions a build may run on: the rule both backends' migrations apply.
//!
//! A rolling upgrade of a cluster runs the old release beside the new one for a while, on
//! a database the new one has already migrated. So each migration says which is the oldest
//! schema version whose release still runs correctly after it (`readable_by`: new indexes,
//! a nullable column the old release leaves empty, a table it does not know), and the
//! database keeps that as `schema_min_reader` in its `meta` table. A build opens a database
//! newer than itself only when its own version is at least that; otherwise it refuses and
//! says to run the newer release.

/// One migration: its version, SQL, and the oldest schema version that can run after it.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i64,
    pub sql: &'static str,
    pub readable_by: i64,
}

/// The `meta` key holding the oldest schema version that may run on the database.
pub const MIN_READER_KEY: &str = "schema_min_reader";

/// What a build at schema `known` does with a database at `found` whose migrations allow
/// readers from `min_reader` on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compat {
    /// Migrate it up (or nothing to do).
    Migrate,
    /// Newer, but written to be run on by this release too (a rolling upgrade).
    RunOnNewer,
    /// Newer, and this release must not run on it.
    TooNew,
}

pub fn compat(found: i64, min_reader: Option<i64>, known: i64) -> Compat {
    if found <= known {
        Compat::Migrate
    } else if min_reader.is_some_and(|m| m <= known) {
        Compat::RunOnNewer
    } else {
        Compat::TooNew
    }
}

/// The oldest reader after applying every migration up to `version`.
pub fn min_reader(migrations: &[Migration], version: i64) -> i64 {
    migrations
        .iter()
        .filter(|m| m.version <= version)
        .map(|m| m.readable_by)
        .max()
        .unwrap_or(0)
}

/// Both backends' migrations, for the checks below.
pub fn check_migrations(migrations: &[Migration]) -> Result<(), String> {
    for (i, m) in migrations.iter().enumerate() {
        if m.version != i as i64 + 1 {
            return Err(format!("migration {} is not number {}", m.version, i + 1));
        }
        if m.readable_by < 1 || m.readable_by > m.version {
            return Err(format!(
                "migration {}: readable_by {} must be in 1..={}",
                m.version, m.readable_by, m.version
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_build_runs_on_a_newer_database_only_when_its_migrations_allow_it() {
        assert_eq!(compat(3, Some(1), 4), Compat::Migrate);
        assert_eq!(compat(4, Some(3), 4), Compat::Migrate);
        assert_eq!(compat(5, Some(4), 4), Compat::RunOnNewer);
        assert_eq!(compat(5, Some(3), 4), Compat::RunOnNewer);
        assert_eq!(compat(5, Some(5), 4), Compat::TooNew);
        // A database from before the rule (no key): newer means refused.
        assert_eq!(compat(5, None, 4), Compat::TooNew);
    }

    #[test]
    fn both_backends_declare_consistent_migrations() {
        for m in [
            crate::store::sqlite::migrate::MIGRATIONS,
            crate::store::postgres::MIGRATIONS,
        ] {
            check_migrations(m).unwrap();
        }
        // The same rule on both: a release at one schema runs beside the next.
        let sqlite: Vec<i64> = crate::store::sqlite::migrate::MIGRATIONS
            .iter()
            .map(|m| m.readable_by)
            .collect();
        let pg: Vec<i64> = crate::store::postgres::MIGRATIONS
            .iter()
            .map(|m| m.readable_by)
            .collect();
        assert_eq!(sqlite, pg);
    }
}
