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

/// Milliseconds since the epoch.
pub(crate) fn now_ms() -> i64 {
    crate::clock::now_ms()
}
