//! A string that must never be printed: tokens, API keys, webhook secrets.
//!
//! `Debug` and `Display` both redact, so a secret that slips into a `tracing` field or an
//! error message shows as `[redacted]`. Comparison is constant-time (`subtle`), so a
//! timing side channel does not reveal how many leading bytes of a guess were right.
//!
//! A secret that verifies what others send (a webhook secret, a provider's signing key) can
//! be rotated without refusing what was signed with the old value: written as a list in the
//! config, `["new", "old"]`, the first is the one we use and all are accepted when checking.
//! The old value is removed from the list once the other side has switched.

use serde::{Deserialize, Deserializer};
use subtle::ConstantTimeEq;

#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret {
    value: String,
    /// Earlier values still accepted when verifying (a rotation's window).
    previous: Vec<String>,
}

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret {
            value: value.into(),
            previous: Vec::new(),
        }
    }

    /// `value` used from now on, `previous` still accepted when verifying.
    pub fn rotating(value: impl Into<String>, previous: Vec<String>) -> Self {
        Secret {
            value: value.into(),
            previous,
        }
    }

    /// The raw value, for building an outgoing request. Never log what this returns.
    pub fn expose(&self) -> &str {
        &self.value
    }

    /// Every value accepted when verifying what the other side signed or presented: the
    /// current one first. Never log what this returns.
    pub fn accepted(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.value.as_str())
            .chain(self.previous.iter().map(String::as_str))
            .filter(|v| !v.is_empty())
    }

    /// How many earlier values are still accepted (for a startup note that a rotation is open).
    pub fn previous_count(&self) -> usize {
        self.previous.len()
    }

    pub fn is_empty(&self) -> bool {
        self.value.is_empty()
    }

    /// Constant-time equality against a presented value, for each accepted value (all are
    /// compared, so timing does not tell which one matched). Lengths are compared in the
    /// clear (that leaks only the length, which is not secret for random tokens).
    pub fn matches(&self, presented: &str) -> bool {
        let b = presented.as_bytes();
        let mut any = false;
        for v in self.accepted() {
            let a = v.as_bytes();
            any |= a.len() == b.len() && bool::from(a.ct_eq(b));
        }
        any
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

/// A secret in the config: `"value"`, or during a rotation `["new", "old", …]`. Values are
/// never echoed in errors.
impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Form;
        impl<'de> serde::de::Visitor<'de> for Form {
            type Value = Secret;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(
                    "a string, or a list of strings during a rotation (the new value first)",
                )
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Secret, E> {
                Ok(Secret::new(v))
            }

            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Secret, E> {
                Ok(Secret::new(v))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Secret, A::Error> {
                let mut list: Vec<String> = Vec::new();
                while let Some(v) = seq.next_element::<String>()? {
                    list.push(v);
                }
                if list.is_empty() || list.iter().any(String::is_empty) {
                    return Err(serde::de::Error::custom(
                        "a rotation list needs at least one value and no empty ones (the new value first)",
                    ));
                }
                let value = list.remove(0);
                Ok(Secret::rotating(value, list))
            }
        }
        d.deserialize_any(Form)
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

    #[derive(Deserialize)]
    struct Cfg {
        s: Secret,
    }

    #[test]
    fn a_rotation_list_uses_the_first_and_accepts_all() {
        let c: Cfg = serde_json::from_str(r#"{"s": ["new-value", "old-value"]}"#).unwrap();
        assert_eq!(c.s.expose(), "new-value");
        assert!(c.s.matches("new-value"));
        assert!(c.s.matches("old-value"));
        assert!(!c.s.matches("other"));
        assert_eq!(
            c.s.accepted().collect::<Vec<_>>(),
            ["new-value", "old-value"]
        );
        assert_eq!(c.s.previous_count(), 1);
        let one: Cfg = serde_json::from_str(r#"{"s": "only"}"#).unwrap();
        assert_eq!(one.s.accepted().count(), 1);
        for bad in [r#"{"s": []}"#, r#"{"s": ["s3cr3t", ""]}"#, r#"{"s": 5}"#] {
            let err = serde_json::from_str::<Cfg>(bad)
                .err()
                .expect(bad)
                .to_string();
            assert!(!err.contains("s3cr3t"), "values are never echoed: {err}");
        }
    }
}
