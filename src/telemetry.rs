//! Logging setup: human-readable by default, JSON lines with `--log-format json`.
//! `RUST_LOG` filters (default `info`).

use clap::ValueEnum;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, ValueEnum, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // log_internal_errors(false): when a log line cannot be written (disk full, closed
    // pipe) tracing-subscriber would report it with eprintln!, which panics when stderr is
    // the thing that failed, taking down whatever thread was logging (the store writer
    // included). A lost log line must never cost a request or the store.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
