//! A PostgreSQL schema of its own for one test, dropped afterwards (also when the test
//! panics). The server is `RIO_TEST_PG_URL`, by default the local one CI also has:
//! 127.0.0.1:5432, database `test`, user `postgres`, trust auth.
//!
//! The tests that need it are marked `#[ignore = "needs PostgreSQL ..."]`, so a plain
//! `cargo nextest run` lists them as skipped; `--run-ignored all` (what `.ci/run` does)
//! runs them, and then a missing server fails them.

#![allow(dead_code)]

use tokio_postgres::NoTls;

pub fn base_url() -> String {
    std::env::var("RIO_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

pub struct PgSchema {
    pub name: String,
    /// Connects to the test database with this schema as the search path.
    pub url: String,
}

impl PgSchema {
    /// A fresh, empty schema. Panics, saying what to start, when no server answers.
    pub async fn create() -> PgSchema {
        let base = base_url();
        let connected = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            tokio_postgres::connect(&base, NoTls),
        )
        .await;
        let (client, conn) = match connected {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => unreachable(&base, &e.to_string()),
            Err(_) => unreachable(&base, "timed out"),
        };
        tokio::spawn(conn);
        let name = format!("t_{}", ulid::Ulid::new().to_string().to_lowercase());
        client
            .batch_execute(&format!("CREATE SCHEMA {name}"))
            .await
            .expect("create a test schema");
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options=-csearch_path%3D{name}");
        PgSchema { name, url }
    }
}

fn unreachable(base: &str, why: &str) -> ! {
    panic!(
        "this test needs PostgreSQL at {base} and it is unreachable ({why}). Start one \
         (`bash .ci/run` starts the packaged server) or set RIO_TEST_PG_URL; without it, \
         run `cargo nextest run` alone, which skips the PostgreSQL tests."
    )
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        // Drop runs outside any async context we could await in (and also while a test
        // unwinds): use a short-lived runtime on its own thread.
        let (base, name) = (base_url(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                if let Ok((client, conn)) = tokio_postgres::connect(&base, NoTls).await {
                    tokio::spawn(conn);
                    let _ = client
                        .batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                        .await;
                }
            });
        })
        .join();
    }
}
