//! rio-bridge: connects any messaging provider to respond.io as a Custom Channel.

// Handlers return `Result<_, Response>` to answer early with a ready error response; the
// size of axum's Response in the Err variant is fine on this path.
#![allow(clippy::result_large_err)]

pub mod admin_cli;
pub mod app;
pub mod bench;
pub mod channel_log;
pub mod clock;
pub mod config;
pub mod demo;
pub mod http;
pub mod lane_history;
pub mod lanes;
pub mod media;
pub mod providers;
pub mod respondio;
pub mod simulators;
pub mod status;
pub mod store;
pub mod telemetry;

// Readers of outside input live in the parser crate (crates/rio-parse, fuzzed); these
// re-exports keep their historical paths.
pub use rio_parse::secret;
