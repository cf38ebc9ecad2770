//! `rio-bridge backup`: a consistent copy of the SQLite store while the gateway runs.
//!
//! `VACUUM INTO` reads the database inside one read transaction (a snapshot: WAL lets the
//! gateway keep committing meanwhile) and writes a compact, self-contained copy with no
//! WAL beside it. The copy is written under a temporary name, synced, checked with
//! `PRAGMA integrity_check`, and only then renamed into place, so a backup that exists is
//! a whole one. (PostgreSQL stores are backed up with `pg_dump`.)

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use rusqlite::{Connection, OpenFlags};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupReport {
    pub path: PathBuf,
    pub bytes: u64,
    pub schema_version: i64,
    /// Items (messages, statuses and sends, any state) in the copy.
    pub items: i64,
}

pub fn backup_sqlite(db: &Path, out: &Path) -> anyhow::Result<BackupReport> {
    if !db.exists() {
        bail!("no database at {}", db.display());
    }
    if out.exists() {
        bail!("{} exists; refusing to overwrite a backup", out.display());
    }
    let out_str = out
        .to_str()
        .context("the backup path must be valid UTF-8")?;
    let tmp = out.with_file_name(format!(
        ".{}.partial",
        out.file_name()
            .and_then(|n| n.to_str())
            .context("the backup path needs a file name")?
    ));
    let _ = std::fs::remove_file(&tmp);
    let src = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("open {}", db.display()))?;
    // The writer holds the lock only for the length of one group commit.
    src.busy_timeout(Duration::from_secs(30))?;
    let tmp_str = tmp.to_str().context("backup path")?;
    src.execute("VACUUM INTO ?1", [tmp_str])
        .with_context(|| format!("copy into {}", tmp.display()))?;
    drop(src);
    let report = (|| -> anyhow::Result<BackupReport> {
        std::fs::File::open(&tmp)?.sync_all()?;
        let copy = Connection::open_with_flags(&tmp, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        let check: String = copy.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
        if check != "ok" {
            bail!("the copy failed its integrity check: {check}");
        }
        let schema_version: i64 = copy.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        let items: i64 = copy.query_row("SELECT count(*) FROM items", [], |r| r.get(0))?;
        Ok(BackupReport {
            path: PathBuf::from(out_str),
            bytes: std::fs::metadata(&tmp)?.len(),
            schema_version,
            items,
        })
    })();
    match report {
        Ok(r) => {
            std::fs::rename(&tmp, out)?;
            if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(r)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}
