//! The generic HTTP provider's readers (`provider = "http"`): the `[channel.http]` mapping's
//! TOML shape (`config`), URL/body templates (`template`), JSON Pointer field paths and
//! webhook payloads (`fields`), webhook authentication by shared secret or HMAC (`auth`),
//! reading inbound messages and receipts by the mapping (`webhook`), and typing the send
//! API's answer (`response`).
//!
//! Compiling a whole channel's mapping (`compile`, which `check-config` runs) and sending
//! over HTTP stay in the server crate, `rio_bridge::providers::generic`.

pub mod auth;
pub mod config;
pub mod fields;
pub mod response;
pub mod template;
pub mod webhook;
