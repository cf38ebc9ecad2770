//! Local stand-ins for providers we cannot reach from tests: they enforce the provider's
//! documented rules, record every raw arrival and never dedupe.

pub mod clicksend;
mod control;
pub mod plivo;
pub mod telegram;

pub mod twilio;
pub mod vonage;
