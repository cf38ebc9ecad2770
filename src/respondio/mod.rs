//! Everything respond.io: the wire format, the webhook client, and the emulator.

pub mod client;
pub mod emulator;

// The wire format is read from outside input, so it lives in the parser crate (fuzzed).
pub use rio_parse::wire;
