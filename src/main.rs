//! The `rio-bridge` command line: serve, check-config, emulate, demo.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use rio_bridge::config::Config;
use rio_bridge::telemetry::{self, LogFormat};

#[derive(Parser)]
#[command(
    name = "rio-bridge",
    version,
    about = "Connects any messaging provider to respond.io as a Custom Channel"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// The TOML config file.
        #[arg(long, env = "RIO_BRIDGE_CONFIG", default_value = "rio-bridge.toml")]
        config: PathBuf,
    },
    /// The admin API from a shell, against a running server (see `admin --help`).
    Admin(rio_bridge::admin_cli::AdminArgs),
    /// Load and validate a config; print every problem with its key; exit 1 on any.
    CheckConfig {
        #[arg(long, env = "RIO_BRIDGE_CONFIG", default_value = "rio-bridge.toml")]
        config: PathBuf,
    },
    /// Apply the store's schema migrations and exit (`serve` also applies them at start).
    Migrate {
        #[arg(long, env = "RIO_BRIDGE_CONFIG", default_value = "rio-bridge.toml")]
        config: PathBuf,
    },
    /// Run a local stand-in for an outside service.
    Emulate {
        #[command(subcommand)]
        what: Emulate,
    },
    /// The benchmark harness: real HTTP on loopback against the real server (BENCHMARKS.md).
    Bench(rio_bridge::bench::BenchArgs),
    /// Write a consistent copy of the SQLite store, safe while the gateway runs.
    Backup {
        #[arg(long, env = "RIO_BRIDGE_CONFIG", default_value = "rio-bridge.toml")]
        config: PathBuf,
        /// Where to write the copy (must not exist).
        #[arg(long)]
        out: PathBuf,
    },
    /// Gateway + respond.io emulator + ClickSend stand-in on loopback, on a throw-away
    /// SQLite store: prints the URLs and a curl line for each flow.
    Demo {
        /// Where the gateway listens.
        #[arg(long, default_value = "127.0.0.1:3030")]
        listen: SocketAddr,
    },
}

#[derive(Subcommand)]
enum Emulate {
    /// The respond.io emulator: validates webhook calls as respond.io does, enforces the
    /// rate limit, records events (GET /_emulator/events) and can call a gateway's /message.
    Respondio {
        #[arg(long, default_value = "127.0.0.1:4000")]
        listen: SocketAddr,
        /// A channel: ID=TOKEN[:phone|custom[:RATE]] (repeatable).
        #[arg(long = "channel")]
        channels: Vec<String>,
        /// Acknowledge but do not record an event whose mId was accepted before.
        #[arg(long)]
        dedupe_by_mid: bool,
        /// Reject calls with more events than this (400).
        #[arg(long)]
        max_events_per_call: Option<usize>,
        /// Retry-After form on 429: seconds, http-date or none.
        #[arg(long, default_value = "seconds")]
        retry_after: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    #[cfg(unix)]
    // SAFETY: setting a signal disposition at start-up, before any thread is spawned.
    unsafe {
        // A file-size limit (RLIMIT_FSIZE) must make writes fail, so the store answers 503
        // and recovers when the limit is lifted, not kill the process mid-commit.
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    telemetry::init(cli.log_format);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Serve { config } => serve(config).await,
            Command::CheckConfig { config } => return Ok(check_config(config)),
            Command::Migrate { config } => migrate(config).await,
            Command::Admin(args) => rio_bridge::admin_cli::run(args, &mut std::io::stdout()).await,
            Command::Emulate {
                what:
                    Emulate::Respondio {
                        listen,
                        channels,
                        dedupe_by_mid,
                        max_events_per_call,
                        retry_after,
                    },
            } => {
                rio_bridge::demo::emulate_respondio(
                    listen,
                    &channels,
                    dedupe_by_mid,
                    max_events_per_call,
                    &retry_after,
                    shutdown_signal(),
                )
                .await
            }
            Command::Bench(args) => rio_bridge::bench::run(args).await,
            Command::Backup { config, out } => backup(config, out).await,
            Command::Demo { listen } => rio_bridge::demo::run(listen, shutdown_signal()).await,
        }
        .map(|()| ExitCode::SUCCESS)
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rio-bridge: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check_config(path: PathBuf) -> ExitCode {
    match Config::load(&path) {
        Ok(cfg) => {
            println!("{}: ok ({} channel(s))", path.display(), cfg.channels.len());
            ExitCode::SUCCESS
        }
        Err(e) => {
            for p in &e.0 {
                println!("{p}");
            }
            ExitCode::FAILURE
        }
    }
}

async fn migrate(path: PathBuf) -> anyhow::Result<()> {
    let cfg = Config::load(&path)
        .map_err(|e| anyhow::anyhow!("invalid config {}:\n{e}", path.display()))?;
    if let Some(url) = &cfg.store.url {
        let version = rio_bridge::store::postgres::migrate(url.expose()).await?;
        println!("PostgreSQL schema at version {version}");
        return Ok(());
    }
    let applied = rio_bridge::store::sqlite::SqliteStore::migrate_only(&cfg.store)?;
    if applied.is_empty() {
        println!(
            "{}: up to date (schema version {})",
            cfg.store.path.display(),
            rio_bridge::store::sqlite::migrate::latest()
        );
    } else {
        println!(
            "{}: applied migrations {applied:?}",
            cfg.store.path.display()
        );
    }
    Ok(())
}

async fn serve(path: PathBuf) -> anyhow::Result<()> {
    let cfg = Config::load(&path)
        .map_err(|e| anyhow::anyhow!("invalid config {}:\n{e}", path.display()))?;
    let listener = tokio::net::TcpListener::bind(cfg.server.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", cfg.server.listen))?;
    let app = rio_bridge::app::App::build(cfg).await?;
    app.run_with_reloads(listener, shutdown_signal(), Some(reload_on_sighup(path)?))
        .await
}

/// On each SIGHUP, reads the config file again; a valid one is handed to the running app,
/// an invalid one is reported with every problem and changes nothing.
fn reload_on_sighup(path: PathBuf) -> anyhow::Result<tokio::sync::mpsc::Receiver<Config>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup())?;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!(config = %path.display(), "SIGHUP: reloading the config");
            match Config::load(&path) {
                Ok(cfg) => {
                    if tx.send(cfg).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    for p in &e.0 {
                        tracing::error!(key = %p.key, problem = %p.message, "config reload refused; the running config stays");
                    }
                }
            }
        }
    });
    Ok(rx)
}

/// Cancelled on SIGTERM or Ctrl-C.
fn shutdown_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => {
                        let _ = ctrl_c.await;
                        t.cancel();
                        return;
                    }
                };
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        t.cancel();
    });
    token
}

async fn backup(config: PathBuf, out: PathBuf) -> anyhow::Result<()> {
    let cfg = Config::load(&config).map_err(|e| anyhow::anyhow!("{}:\n{e}", config.display()))?;
    if cfg.store.url.is_some() {
        anyhow::bail!(
            "the store is PostgreSQL: back it up with pg_dump (it is consistent while the nodes run)"
        );
    }
    let db = cfg.store.path.clone();
    let r =
        tokio::task::spawn_blocking(move || rio_bridge::store::backup::backup_sqlite(&db, &out))
            .await??;
    println!(
        "backup written: {} ({} bytes, schema version {}, {} items)",
        r.path.display(),
        r.bytes,
        r.schema_version,
        r.items
    );
    Ok(())
}
