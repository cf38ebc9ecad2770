//! rio-bridge's readers of outside input, kept apart from the server so they can be fuzzed
//! with quick builds (no tokio, axum, reqwest or SQLite here; see `fuzz/` at the repository
//! root) and replayed as ordinary tests (`tests/corpora.rs`).
//!
//! What lives here is everything that turns bytes from outside into our types, with no I/O:
//!
//! - [`wire`]: respond.io's Custom Channel wire format, including the `/message` body.
//! - [`provider`]: the webhook as it reached us and the canonical events, receipts and send
//!   outcomes every provider produces; [`provider::parse_retry_after`].
//! - [`clicksend`], [`generic`], [`plivo`], [`telegram`], [`twilio`], [`vonage`]: each
//!   provider's webhook authentication (signature checks included), webhook reading and
//!   send-answer classification; [`support`]: the number and timestamp readers they share.
//! - [`config_text`]: the config file's TOML with `${VAR}` interpolation.
//! - [`secret`]: the redacting, constant-time-compared `Secret`.
//! - [`harness`]: the fuzz targets' entry points, shared with the corpus replay test.
//!
//! The server crate (`rio-bridge`) re-exports these at their historical paths
//! (`rio_bridge::respondio::wire`, `rio_bridge::secret`, `rio_bridge::providers::{...}`), so
//! code there is written as if they were its own modules.
//!
//! # Adding a provider
//!
//! A provider is split in two, one file on each side:
//!
//! - Here, `src/<provider>.rs`: the pure functions — `authenticate(&Secret/credentials,
//!   &WebhookRequest) -> Result<(), String>`, `parse_inbound(&WebhookRequest) ->
//!   Result<Vec<InboundEvent>, String>`, `parse_receipts(...)`, and `classify(status,
//!   retry_after, body) -> Result<Accepted, SendError>` for the send API's answer — plus
//!   whatever helpers they need (signature checks, field readers). Unit tests for them live
//!   beside them. No network, no clock beyond [`clock::now_ms`], no config loading.
//! - In the server, `src/providers/<provider>.rs`: its config section, the `Provider` impl
//!   (sending with reqwest, reading the capped answer) calling the functions here, and the
//!   end-to-end tests against the provider's stand-in.
//!
//! Then add a fuzz target per reader in `fuzz/fuzz_targets/`, its seed corpus from the
//! provider's fixtures, and the same call in `tests/corpora.rs` (see `fuzz/README.md`).

pub mod clicksend;
pub mod clock;
pub mod config_text;
pub mod generic;
pub mod harness;
pub mod plivo;
pub mod provider;
pub mod secret;
pub mod support;
pub mod telegram;
pub mod twilio;
pub mod vonage;
pub mod wire;
