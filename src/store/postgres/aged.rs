//! Builds an aged PostgreSQL store (see `store::aged`): a template database with the
//! store's schema (its migrations) and the rows generated server-side by
//! `generate_series`, the secondary indexes built once at the end. A run gets its own
//! database copied from the template (`CREATE DATABASE … TEMPLATE`, a file copy).

use std::time::Instant;

use tokio_postgres::NoTls;

use crate::store::aged::{AgeSpec, AgedReport, ROWS, now_ms, with_placeholders};

const CHUNK: i64 = 500_000;

const FILLED: [&str; 6] = [
    "items",
    "dedupe",
    "attempts",
    "history",
    "channel_logs",
    "contacts",
];

/// `url` with its database replaced by `db`.
pub fn with_database(url: &str, db: &str) -> anyhow::Result<String> {
    let mut u = url::Url::parse(url)?;
    u.set_path(&format!("/{db}"));
    Ok(u.to_string())
}

async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// A database named `run_db` holding an aged store for `spec`, copied from a cached
/// template (built if missing or older than a day). `admin_url` names any database of the
/// server, as a user that may create databases. Returns the run database's URL.
pub async fn aged_database(
    spec: &AgeSpec,
    admin_url: &str,
    run_db: &str,
) -> anyhow::Result<(String, AgedReport)> {
    let admin = connect(admin_url).await?;
    let template = format!(
        "rio_{}",
        spec.cache_key(super::LATEST_VERSION)
            .replace('-', "_")
            .to_lowercase()
    );
    anyhow::ensure!(template.len() <= 63, "template name too long: {template}");
    let built_ms: Option<i64> = admin
        .query_opt(
            "SELECT (shobj_description(oid, 'pg_database'))::BIGINT FROM pg_database WHERE datname = $1",
            &[&template],
        )
        .await?
        .and_then(|r| r.get::<_, Option<i64>>(0));
    let fresh = built_ms.is_some_and(|t| now_ms() - t < 86_400_000);
    let mut report = AgedReport {
        items: spec.items,
        cached: fresh,
        build_secs: 0.0,
    };
    if !fresh {
        let started = Instant::now();
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {template} WITH (FORCE)"))
            .await?;
        admin
            .batch_execute(&format!("CREATE DATABASE {template}"))
            .await?;
        let url = with_database(admin_url, &template)?;
        fill(spec, &url).await?;
        admin
            .batch_execute(&format!("COMMENT ON DATABASE {template} IS '{}'", now_ms()))
            .await?;
        report.build_secs = started.elapsed().as_secs_f64();
    }
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {run_db} WITH (FORCE)"))
        .await?;
    admin
        .batch_execute(&format!("CREATE DATABASE {run_db} TEMPLATE {template}"))
        .await?;
    Ok((with_database(admin_url, run_db)?, report))
}

/// Drops a run's database.
pub async fn drop_database(admin_url: &str, db: &str) -> anyhow::Result<()> {
    connect(admin_url)
        .await?
        .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        .await?;
    Ok(())
}

async fn fill(spec: &AgeSpec, url: &str) -> anyhow::Result<()> {
    super::migrate(url).await?;
    let db = connect(url).await?;
    // Secondary indexes go for the load and come back once, built by sorting.
    let mut indexes: Vec<String> = Vec::new();
    for table in FILLED {
        for r in db
            .query(
                "SELECT i.indexname, i.indexdef FROM pg_indexes i
                 WHERE i.schemaname = current_schema() AND i.tablename = $1
                   AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname)",
                &[&table],
            )
            .await?
        {
            let (name, def): (String, String) = (r.get(0), r.get(1));
            db.batch_execute(&format!("DROP INDEX {name}")).await?;
            indexes.push(def);
        }
    }
    db.batch_execute("SET synchronous_commit = off").await?;
    let now = now_ms();
    let span_ms = (spec.span_secs as i64) * 1000;
    let t0 = now - span_ms;
    let step = span_ms as f64 / spec.items.max(1) as f64;
    let ttl_ms = (spec.dedupe_ttl_secs as i64) * 1000;
    let (contacts, channel) = (spec.contacts as i64, spec.channel.as_str());
    let mut lo: i64 = 0;
    while lo < spec.items as i64 {
        let hi = (lo + CHUNK).min(spec.items as i64);
        fill_chunk(&db, lo, hi, contacts, t0, step, channel, ttl_ms).await?;
        lo = hi;
    }
    db.execute(
        "INSERT INTO contacts(channel, contact, last_inbound_ms)
         SELECT channel, contact, MAX(created_ms) FROM items WHERE lane = 0 AND kind = 0
         GROUP BY channel, contact",
        &[],
    )
    .await?;
    for table in ["items", "attempts", "history", "channel_logs"] {
        db.batch_execute(&format!(
            "SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT COALESCE(MAX(id), 1) FROM {table}))"
        ))
        .await?;
    }
    db.batch_execute("SET maintenance_work_mem = '512MB'")
        .await?;
    for def in &indexes {
        db.batch_execute(def).await?;
    }
    db.batch_execute("VACUUM ANALYZE").await?;
    db.execute(
        "INSERT INTO meta(k, v) VALUES ('aged_spec', $1) ON CONFLICT(k) DO UPDATE SET v = excluded.v",
        &[&format!("{spec:?}")],
    )
    .await?;
    Ok(())
}

/// Items `lo..hi` and their rows, the same shapes as the SQLite builder's.
#[allow(clippy::too_many_arguments)]
async fn fill_chunk(
    db: &tokio_postgres::Client,
    lo: i64,
    hi: i64,
    contacts: i64,
    t0: i64,
    step: f64,
    channel: &str,
    ttl_ms: i64,
) -> anyhow::Result<()> {
    // $1–$5 shape the sequence, $6 the channel, $7 the dedupe TTL.
    const G: &str = "WITH g AS (SELECT i, i % 10 AS k, '+614' || lpad((i % $3)::TEXT, 8, '0') AS c,
                          '01AGED' || lpad(i::TEXT, 20, '0') AS m, 'aged:' || lpad(i::TEXT, 12, '0') AS dk, $4::BIGINT + (i * $5::FLOAT8)::BIGINT AS t
                   FROM generate_series($1::BIGINT, $2::BIGINT - 1) AS i)";
    let all: [&(dyn tokio_postgres::types::ToSql + Sync); 7] =
        [&lo, &hi, &contacts, &t0, &step, &channel, &ttl_ms];
    for (sql, n) in ROWS {
        let sql = format!("{G}\n{}", with_placeholders(sql, "$6::TEXT", "$7::BIGINT"));
        db.execute(sql.as_str(), &all[..n]).await?;
    }
    Ok(())
}
