//! Schema migrations for the SQLite store.
//!
//! Each migration is a numbered SQL file embedded in the binary. `PRAGMA user_version`
//! records the last one applied; at open, every newer migration runs in its own
//! transaction together with the bump of `user_version`, so a crash mid-way leaves the
//! database at the previous version, never half-migrated. A database written by a newer
//! release (a version we do not know) is refused rather than guessed at.

use rusqlite::Connection;

use crate::store::schema::{self, Compat, MIN_READER_KEY, Migration};

/// In order. Version 1 is the schema of the first release. `readable_by`: see
/// `store::schema` (v2 adds tables, v3 indexes, v4 a nullable column an older release
/// leaves empty, read as `created_ms`).
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        sql: include_str!("schema_v1.sql"),
        readable_by: 1,
    },
    Migration {
        version: 2,
        sql: include_str!("schema_v2.sql"),
        readable_by: 1,
    },
    Migration {
        version: 3,
        sql: include_str!("schema_v3.sql"),
        readable_by: 2,
    },
    Migration {
        version: 4,
        sql: include_str!("schema_v4.sql"),
        readable_by: 3,
    },
];

/// The version this build writes.
pub fn latest() -> i64 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(
        "the database is at schema version {found}, newer than this build knows ({known}) and not runnable by it: run the newer release"
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

fn min_reader_of(conn: &Connection) -> rusqlite::Result<Option<i64>> {
    use rusqlite::OptionalExtension;
    let has_meta: bool = conn.query_row(
        "SELECT EXISTS(SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta')",
        [],
        |r| r.get(0),
    )?;
    if !has_meta {
        return Ok(None);
    }
    Ok(conn
        .query_row("SELECT v FROM meta WHERE k = ?1", [MIN_READER_KEY], |r| {
            r.get::<_, String>(0)
        })
        .optional()?
        .and_then(|v| v.parse().ok()))
}

/// Applies every migration newer than the database's `user_version`; returns the versions
/// applied (empty when it was up to date, or when the database is newer but runnable by
/// this build: a rolling upgrade, logged).
pub fn migrate(conn: &mut Connection) -> Result<Vec<i64>, MigrateError> {
    let current: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    match schema::compat(current, min_reader_of(conn)?, latest()) {
        Compat::Migrate => {}
        Compat::RunOnNewer => {
            tracing::warn!(
                found = current,
                known = latest(),
                "the database was migrated by a newer release that this one may run beside (a rolling upgrade): upgrade this node too"
            );
            return Ok(Vec::new());
        }
        Compat::TooNew => {
            return Err(MigrateError::TooNew {
                found: current,
                known: latest(),
            });
        }
    }
    let mut applied = Vec::new();
    for m in MIGRATIONS.iter().filter(|m| m.version > current) {
        let version = m.version;
        let run = |conn: &mut Connection| -> rusqlite::Result<()> {
            // IMMEDIATE: a second process opening the same file at the same moment waits
            // (busy timeout) instead of migrating alongside.
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let seen: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
            if seen < version {
                tx.execute_batch(m.sql)?;
                tx.execute(
                    "INSERT INTO meta(k, v) VALUES (?1, ?2) ON CONFLICT(k) DO UPDATE SET v = excluded.v",
                    rusqlite::params![MIN_READER_KEY, schema::min_reader(MIGRATIONS, version).to_string()],
                )?;
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
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i64 + 1);
        }
    }

    #[test]
    fn a_newer_database_this_release_may_run_on_is_opened_as_it_is() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        // What the next release's migration would leave: one version up, readable by us.
        conn.pragma_update(None, "user_version", latest() + 1)
            .unwrap();
        conn.execute(
            "UPDATE meta SET v = ?1 WHERE k = ?2",
            rusqlite::params![latest().to_string(), MIN_READER_KEY],
        )
        .unwrap();
        assert!(migrate(&mut conn).unwrap().is_empty());
        let v: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, latest() + 1, "left as the newer release made it");
        conn.execute(
            "UPDATE meta SET v = ?1 WHERE k = ?2",
            rusqlite::params![(latest() + 1).to_string(), MIN_READER_KEY],
        )
        .unwrap();
        assert!(matches!(
            migrate(&mut conn),
            Err(MigrateError::TooNew { .. })
        ));
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
        conn.execute_batch(MIGRATIONS[0].sql).unwrap();
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
