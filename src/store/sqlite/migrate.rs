//! Schema migrations for the SQLite store.
//!
//! Each migration is a numbered SQL file embedded in the binary. `PRAGMA user_version`
//! records the last one applied; at open, every newer migration runs in its own
//! transaction together with the bump of `user_version`, so a crash mid-way leaves the
//! database at the previous version, never half-migrated. A database written by a newer
//! release (a version we do not know) is refused rather than guessed at.

use rusqlite::Connection;

/// (version, SQL), in order. Version 1 is the schema of the first release.
pub const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("schema_v1.sql")),
    (2, include_str!("schema_v2.sql")),
    (3, include_str!("schema_v3.sql")),
    (4, include_str!("schema_v4.sql")),
];

/// The version this build writes.
pub fn latest() -> i64 {
    MIGRATIONS.last().map_or(0, |m| m.0)
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(
        "the database is at schema version {found}, newer than this build knows ({known}): run the newer release"
    )]
    TooNew { found: i64, known: i64 },
    #[error("migration to version {version} failed: {source}")]
    Failed {
        version: i64,
        source: rusqlite::Error,
    },
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
}

/// Applies every migration newer than the database's `user_version`; returns the versions
/// applied (empty when it was up to date).
pub fn migrate(conn: &mut Connection) -> Result<Vec<i64>, MigrateError> {
    let current: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if current > latest() {
        return Err(MigrateError::TooNew {
            found: current,
            known: latest(),
        });
    }
    let mut applied = Vec::new();
    for &(version, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
        let run = |conn: &mut Connection| -> rusqlite::Result<()> {
            // IMMEDIATE: a second process opening the same file at the same moment waits
            // (busy timeout) instead of migrating alongside.
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let seen: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
            if seen < version {
                tx.execute_batch(sql)?;
                // user_version lives in the file header, which is written with this
                // transaction: the bump commits (or rolls back) with the migration.
                tx.pragma_update(None, "user_version", version)?;
            }
            tx.commit()
        };
        run(conn).map_err(|source| MigrateError::Failed { version, source })?;
        applied.push(version);
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_consecutive_from_one() {
        for (i, (v, _)) in MIGRATIONS.iter().enumerate() {
            assert_eq!(*v, i as i64 + 1);
        }
    }

    #[test]
    fn fresh_database_gets_every_migration_once() {
        let mut conn = Connection::open_in_memory().unwrap();
        assert_eq!(migrate(&mut conn).unwrap(), vec![1, 2, 3, 4]);
        assert!(migrate(&mut conn).unwrap().is_empty());
        let v: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, latest());
        let n: i64 = conn
            .query_row("SELECT COUNT(*) FROM audit_log", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0);
    }

    #[test]
    fn newer_database_is_refused() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "user_version", latest() + 1)
            .unwrap();
        assert!(matches!(
            migrate(&mut conn),
            Err(MigrateError::TooNew { .. })
        ));
    }

    #[test]
    fn failed_migration_leaves_the_previous_version() {
        let mut conn = Connection::open_in_memory().unwrap();
        // Version 1 applied by hand, then a table that makes version 2 fail.
        conn.execute_batch(MIGRATIONS[0].1).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute_batch("CREATE VIEW channel_logs AS SELECT 1 AS id")
            .unwrap();
        assert!(matches!(
            migrate(&mut conn),
            Err(MigrateError::Failed { version: 2, .. })
        ));
        let v: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, 1);
    }
}
