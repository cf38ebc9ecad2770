//! Builds an aged SQLite store (see `store::aged`): the schema by the store's migrations,
//! the rows generated inside SQLite by a recursive CTE, chunk by chunk, the secondary
//! indexes dropped for the load and built once at the end (a sort instead of millions of
//! random B-tree inserts).

use std::path::{Path, PathBuf};
use std::time::Instant;

use rusqlite::{Connection, params};

use super::migrate;
use crate::store::aged::{AgeSpec, AgedReport, ROWS, check_free_disk, now_ms, with_placeholders};

/// Rows per transaction.
const CHUNK: u64 = 500_000;

/// The tables the builder fills; their secondary indexes are dropped during the load.
const FILLED: [&str; 6] = [
    "items",
    "dedupe",
    "attempts",
    "history",
    "channel_logs",
    "contacts",
];

/// A cached build for `spec` under `cache_dir` (built if missing or older than a day, so
/// its history still ends at about now), copied to `dest` for one run.
pub fn aged_copy(spec: &AgeSpec, cache_dir: &Path, dest: &Path) -> anyhow::Result<AgedReport> {
    std::fs::create_dir_all(cache_dir)?;
    let cached = cache_dir.join(format!("{}.db", spec.cache_key(migrate::latest())));
    let fresh = std::fs::metadata(&cached)
        .and_then(|m| m.modified())
        .is_ok_and(|t| t.elapsed().is_ok_and(|age| age.as_secs() < 86_400));
    let mut report = if fresh {
        AgedReport {
            items: spec.items,
            cached: true,
            build_secs: 0.0,
        }
    } else {
        // The build, its WAL while loading, and the run's copy.
        check_free_disk(cache_dir, spec.estimated_bytes() * 5 / 2)?;
        let tmp = cached.with_extension("building");
        let _ = std::fs::remove_file(&tmp);
        let r = build(spec, &tmp)?;
        std::fs::rename(&tmp, &cached)?;
        r
    };
    check_free_disk(dest, std::fs::metadata(&cached)?.len() + (1 << 30))?;
    let started = Instant::now();
    std::fs::copy(&cached, dest)?;
    report.build_secs += if report.cached {
        started.elapsed().as_secs_f64()
    } else {
        0.0
    };
    Ok(report)
}

/// Builds the aged store at `path` (which must not exist).
pub fn build(spec: &AgeSpec, path: &Path) -> anyhow::Result<AgedReport> {
    let started = Instant::now();
    let mut conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    migrate::migrate(&mut conn)?;
    // A build that dies is thrown away, so nothing needs to reach the disk until the end.
    conn.pragma_update(None, "synchronous", "OFF")?;
    conn.pragma_update(None, "cache_size", -1_000_000)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    let indexes = drop_secondary_indexes(&conn)?;

    let now = now_ms();
    let span_ms = (spec.span_secs as i64) * 1000;
    let t0 = now - span_ms;
    let step = span_ms as f64 / spec.items.max(1) as f64;
    let ttl_ms = (spec.dedupe_ttl_secs as i64) * 1000;
    let mut lo = 0;
    while lo < spec.items {
        let hi = (lo + CHUNK).min(spec.items);
        let tx = conn.transaction()?;
        fill_chunk(&tx, spec, lo, hi, t0, step, ttl_ms)?;
        tx.commit()?;
        lo = hi;
    }
    conn.execute(
        "INSERT INTO contacts(channel, contact, last_inbound_ms)
         SELECT channel, contact, MAX(created_ms) FROM items WHERE lane = 0 AND kind = 0
         GROUP BY channel, contact
         ON CONFLICT(channel, contact) DO UPDATE SET last_inbound_ms = excluded.last_inbound_ms",
        [],
    )?;
    for sql in &indexes {
        conn.execute_batch(sql)?;
    }
    conn.execute_batch("ANALYZE; PRAGMA wal_checkpoint(TRUNCATE);")?;
    conn.execute(
        "INSERT INTO meta(k, v) VALUES ('aged_spec', ?1) ON CONFLICT(k) DO UPDATE SET v = excluded.v",
        params![format!("{spec:?}")],
    )?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    drop(conn);
    Ok(AgedReport {
        items: spec.items,
        cached: false,
        build_secs: started.elapsed().as_secs_f64(),
    })
}

/// Drops the secondary indexes of the filled tables; returns the SQL that makes them again.
fn drop_secondary_indexes(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut out = Vec::new();
    for table in FILLED {
        let mut stmt =
            conn.prepare("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ?1 AND sql IS NOT NULL")?;
        let found: Vec<(String, String)> = stmt
            .query_map([table], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        for (name, sql) in found {
            conn.execute_batch(&format!("DROP INDEX \"{name}\""))?;
            out.push(sql);
        }
    }
    Ok(out)
}

/// Items `lo..hi` and their rows (`store::aged::ROWS`).
fn fill_chunk(
    tx: &rusqlite::Transaction<'_>,
    spec: &AgeSpec,
    lo: u64,
    hi: u64,
    t0: i64,
    step: f64,
    ttl_ms: i64,
) -> rusqlite::Result<()> {
    const SEQ: &str =
        "WITH RECURSIVE seq(i) AS (SELECT ?1 UNION ALL SELECT i + 1 FROM seq WHERE i + 1 < ?2),
        g AS (SELECT i, i % 10 AS k, printf('+614%08d', i % ?3) AS c, printf('01AGED%020d', i) AS m, printf('aged:%012d', i) AS dk,
                     ?4 + CAST(i * ?5 AS INTEGER) AS t FROM seq)";
    use rusqlite::types::Value;
    // ?1–?5 shape the sequence; ?6 the channel, ?7 the dedupe TTL, for the statements
    // that use them (SQLite counts a statement's parameters by the highest one named).
    let all: [Value; 7] = [
        Value::Integer(lo as i64),
        Value::Integer(hi as i64),
        Value::Integer(spec.contacts as i64),
        Value::Integer(t0),
        Value::Real(step),
        Value::Text(spec.channel.clone()),
        Value::Integer(ttl_ms),
    ];
    let with = |n: usize| rusqlite::params_from_iter(all[..n].iter());
    for (sql, n) in ROWS {
        let sql = format!("{SEQ}\n{}", with_placeholders(sql, "?6", "?7"));
        tx.execute(&sql, with(n))?;
    }
    Ok(())
}

/// Where a run's copy goes by default: beside the other files of the run.
pub fn run_copy_path(dir: &Path) -> PathBuf {
    dir.join("rio-bridge.db")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    /// A small aged store opens as a normal one: its rows are the gateway's own shape
    /// (the store reads them back), its indexes are all there, retention prunes its oldest.
    #[tokio::test]
    async fn an_aged_store_is_a_store_like_any_other() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("aged.db");
        let spec = AgeSpec::week("sms", 20_000);
        let report = build(&spec, &path).unwrap();
        assert_eq!(report.items, 20_000);
        let conn = Connection::open(&path).unwrap();
        let count = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap();
        assert_eq!(count("SELECT COUNT(*) FROM items"), 20_000);
        assert_eq!(count("SELECT COUNT(*) FROM attempts"), 20_000);
        assert_eq!(count("SELECT COUNT(*) FROM history"), 20_000);
        assert_eq!(count("SELECT COUNT(*) FROM channel_logs"), 20_000);
        assert_eq!(count("SELECT COUNT(*) FROM dedupe"), 12_000);
        assert_eq!(count("SELECT COUNT(*) FROM items WHERE state = 3"), 20);
        assert!(count("SELECT COUNT(*) FROM contacts") > 0);
        let indexes_now =
            count("SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL");
        let fresh = tempfile::tempdir().unwrap();
        let mut empty = Connection::open(fresh.path().join("e.db")).unwrap();
        migrate::migrate(&mut empty).unwrap();
        let indexes_schema: i64 = empty
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(indexes_now, indexes_schema, "every index is rebuilt");
        drop(conn);

        let store = crate::store::sqlite::SqliteStore::open(&crate::config::StoreConfig {
            path: path.clone(),
            ..Default::default()
        })
        .unwrap();
        let item = store
            .item_by_mid("sms", "01AGED00000000000000000042")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(item.state, 2);
        assert!(item.payload.contains("aged message 42"));
        let report = store
            .prune_batch(now_ms(), 6 * 86_400_000, 100_000)
            .await
            .unwrap();
        assert!(
            report.items > 0,
            "the oldest day is past a six-day retention"
        );
    }
}
