//! A string that must never be printed: tokens, API keys, webhook secrets.
//!
//! `Debug` and `Display` both redact, so a secret that slips into a `tracing` field or an
//! error message shows as `[redacted]`. Comparison is constant-time (`subtle`), so a
//! timing side channel does not reveal how many leading bytes of a guess were right.

use serde::{Deserialize, Deserializer};
use subtle::ConstantTimeEq;

#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The raw value, for building an outgoing request. Never log what this returns.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Constant-time equality against a presented value. Lengths are compared in the clear
    /// (that leaks only the length, which is not secret for random tokens).
    pub fn matches(&self, presented: &str) -> bool {
        let a = self.0.as_bytes();
        let b = presented.as_bytes();
        !a.is_empty() && a.len() == b.len() && bool::from(a.ct_eq(b))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_redact() {
        let s = Secret::new("super-secret-value");
        assert!(!format!("{s:?}").contains("super"));
        assert!(!format!("{s}").contains("super"));
    }

    #[test]
    fn matches_exact_only() {
        let s = Secret::new("abc");
        assert!(s.matches("abc"));
        assert!(!s.matches("abd"));
        assert!(!s.matches("ab"));
        assert!(!s.matches(""));
        assert!(!Secret::new("").matches(""));
    }
}
