//! rio-bridge: connects any messaging provider to respond.io as a Custom Channel.

pub mod clock;
pub mod providers;
pub mod respondio;
pub mod secret;
pub mod simulators;
