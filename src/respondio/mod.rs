//! Everything respond.io: the wire format, the webhook client, and the emulator.

pub mod client;
pub mod emulator;
pub mod wire;
