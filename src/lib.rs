//! rio-bridge: connects any messaging provider to respond.io as a Custom Channel.

pub mod clock;
pub mod providers;
pub mod respondio;
pub mod secret;
pub mod simulators;
pub mod app;
pub mod config;
pub mod http;
pub mod lanes;
pub mod status;
pub mod store;
pub mod telemetry;
pub mod demo;
