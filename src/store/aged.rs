//! A store that has aged: a week of history at a steady rate, for the soak suite and the
//! benchmarks (a store's cost must not grow with its age, so both run on one).
//!
//! Every row is what the gateway itself would have left behind: delivered inbound
//! messages with their dedupe keys, sends with provider ids and delivered statuses, status
//! events, one attempt, one history row and one channel-log exchange per item, a dead
//! letter per thousand items (of each kind in turn), and the contacts they came from. Times are spread evenly
//! over the `span_secs` before the build, so the oldest rows reach the default retention as a
//! run starts and pruning works from its first minute.
//!
//! The schema is the store's own (its migrations run first); the rows are generated inside
//! the database (a recursive CTE on SQLite, `generate_series` on PostgreSQL), in chunks of
//! their own transactions, with the secondary indexes built once at the end. Builds are
//! cached: SQLite as a file kept under a cache directory, PostgreSQL as a template database;
//! a run gets a copy.

use std::path::{Path, PathBuf};

/// Bumped whenever the rows generated change, so a cached store of another shape is rebuilt.
pub const BUILDER_VERSION: u32 = 2;

/// What to build.
#[derive(Debug, Clone)]
pub struct AgeSpec {
    /// The channel the history belongs to (the run's channel, so its queries share the
    /// indexes with the aged rows).
    pub channel: String,
    pub items: u64,
    /// Distinct contacts the items are spread over.
    pub contacts: u64,
    /// How far back the oldest item is, in seconds (a week; the soak suite's short form
    /// compresses the week into an hour and runs with a retention of that hour).
    pub span_secs: u64,
    /// `store.dedupe_ttl_secs` the keys were written with.
    pub dedupe_ttl_secs: u64,
}

impl AgeSpec {
    /// A week at a steady rate: `items` over 7 days, one contact per 50 items.
    pub fn week(channel: &str, items: u64) -> AgeSpec {
        AgeSpec {
            channel: channel.to_string(),
            items,
            contacts: (items / 50).max(1),
            span_secs: 7 * 86_400,
            dedupe_ttl_secs: 7 * 86_400,
        }
    }

    /// Names a cached build: the same spec, builder and schema give the same name.
    pub fn cache_key(&self, schema_version: i64) -> String {
        format!(
            "aged-b{BUILDER_VERSION}-s{schema_version}-{}-{}i-{}c-{}s",
            self.channel, self.items, self.contacts, self.span_secs
        )
    }

    /// Bytes one item costs with its rows and indexes: 710 measured on a SQLite build of a
    /// million items, rounded up (used to check free disk space before a build).
    pub const BYTES_PER_ITEM: u64 = 800;

    pub fn estimated_bytes(&self) -> u64 {
        self.items.saturating_mul(Self::BYTES_PER_ITEM)
    }
}

/// How a build went.
#[derive(Debug, Clone)]
pub struct AgedReport {
    pub items: u64,
    /// Reused from the cache rather than built.
    pub cached: bool,
    pub build_secs: f64,
}

/// Free bytes on the file system holding `path` (or its nearest existing parent).
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let mut p = path.to_path_buf();
    while !p.exists() {
        if !p.pop() {
            p = PathBuf::from(".");
            break;
        }
    }
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statvfs writes into the struct we pass; the path is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Fails with what is needed when the disk holding `path` has less than `need` bytes free.
pub fn check_free_disk(path: &Path, need: u64) -> anyhow::Result<()> {
    let free = free_bytes(path)?;
    if free < need {
        anyhow::bail!(
            "an aged store needs about {} GiB free at {} and only {} GiB are: free space or build a smaller one",
            need >> 30,
            path.display(),
            free >> 30
        );
    }
    Ok(())
}

/// Where cached builds live: `RIO_AGED_CACHE`, else `~/.cache/rio-bridge/aged`.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("RIO_AGED_CACHE") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
    home.join(".cache/rio-bridge/aged")
}

/// The rows of items `i` from a backend's sequence `g(i, k, c, m, t, dk)` (k = i % 10, c the
/// contact, m the mId, t the time, dk the dedupe key), the same on both backends; `{CH}`
/// and `{TTL}` stand for the backend's placeholders of the channel and the dedupe TTL, and
/// the number is how many parameters the statement names. By `k`: 0–5 an inbound message
/// (with its dedupe key), 6–8 a send with its provider id and a delivered status, 9 a
/// status event; one in a thousand a dead letter, of each kind in turn.
pub(crate) const ROWS: [(&str, usize); 5] = [
    // items
    (
        r#"        INSERT INTO items(id, channel, lane, qkey, contact, kind, mid, payload, state, attempts,
                          created_ms, queued_ms, next_ms, updated_ms, provider_id, status, last_error)
        SELECT i + 1, {CH},
               CASE WHEN k BETWEEN 6 AND 8 THEN 1 ELSE 0 END,
               CASE WHEN k = 9 THEN 's:' || m ELSE 'c:' || c END,
               c,
               CASE WHEN k < 6 THEN 0 WHEN k < 9 THEN 3 ELSE 2 END,
               m,
               CASE WHEN k < 6 THEN '{"type":"message","mId":"' || m || '","timestamp":' || t ||
                                    ',"message":{"type":"text","text":"aged message ' || i || '"}}'
                    WHEN k < 9 THEN '{"type":"text","text":"aged send ' || i || '"}'
                    ELSE '{"type":"message_status","mId":"' || m || '","timestamp":' || t ||
                         ',"status":{"value":"delivered"}}' END,
               CASE WHEN i % 1000 = 999 - (i / 1000) % 10 THEN 3 ELSE 2 END,
               1, t, t, t, t + 150,
               CASE WHEN k < 6 THEN 'aged-in-' || i WHEN k < 9 THEN 'aged-out-' || i END,
               CASE WHEN k BETWEEN 6 AND 8 THEN 2 ELSE 0 END,
               CASE WHEN i % 1000 = 999 - (i / 1000) % 10 THEN 'aged dead letter' END
        FROM g"#,
        6,
    ),
    // dedupe
    (
        r#"        INSERT INTO dedupe(channel, key, expires_ms)
        SELECT {CH}, dk, t + {TTL} FROM g WHERE k < 6"#,
        7,
    ),
    // attempts
    (
        r#"        INSERT INTO attempts(item_id, channel, lane, at_ms, outcome, call_first, duration_ms)
        SELECT i + 1, {CH}, CASE WHEN k BETWEEN 6 AND 8 THEN 1 ELSE 0 END, t + 50,
               CASE WHEN i % 1000 = 999 - (i / 1000) % 10 THEN 'dead' ELSE 'ok' END, 1, 40 FROM g"#,
        6,
    ),
    // history
    (
        r#"        INSERT INTO history(item_id, at_ms, event)
        SELECT i + 1, t + 150, CASE WHEN i % 1000 = 999 - (i / 1000) % 10 THEN 'dead' ELSE 'delivered' END FROM g"#,
        5,
    ),
    // channel_logs
    (
        r#"        INSERT INTO channel_logs(channel, mid, at_ms, direction, kind, method, url, status,
                                 duration_ms, request_body, response_body)
        SELECT {CH}, m, t + 50, 'out',
               CASE WHEN k BETWEEN 6 AND 8 THEN 'provider' ELSE 'respondio' END, 'POST',
               CASE WHEN k BETWEEN 6 AND 8 THEN 'https://rest.clicksend.com/v3/sms/send'
                    ELSE 'https://webhook.respond.io/custom/channel/webhook/' END,
               200, 40, '{"aged":' || i || '}', '{}' FROM g"#,
        6,
    ),
];

/// `sql` with the backend's placeholders for the channel and the dedupe TTL.
pub(crate) fn with_placeholders(sql: &str, channel: &str, ttl: &str) -> String {
    sql.replace("{CH}", channel).replace("{TTL}", ttl)
}

/// Milliseconds since the epoch.
pub(crate) fn now_ms() -> i64 {
    crate::clock::now_ms()
}
