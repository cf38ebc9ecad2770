//! Redaction and truncation of what channel logs keep.
//!
//! Two layers: by name (headers, query parameters, JSON and form fields whose name says
//! secret: authorization, signature, token, key, password...; Telegram's `/bot<token>/`
//! path; the password of `user:pass@` URLs), and by value (every secret configured for the
//! channel is replaced wherever it appears, even where no name gives it away). Bodies are
//! redacted before they are cut to [`BODY_MAX`], so a cut never exposes half a secret that
//! the name-based pass would have caught.

pub const REDACTED: &str = "[redacted]";

/// How much of a request or response body is kept.
pub const BODY_MAX: usize = 4096;

/// Bodies larger than this are not parsed for field-level redaction (they are redacted as
/// text, by value and by `"name": "value"` pairs).
const PARSE_MAX: usize = 256 * 1024;

/// Whether a header, query parameter or field with this name carries a credential.
pub fn sensitive_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n == "sig"
        || n == "key"
        || n.ends_with("key")
        || n.ends_with("_key")
        || [
            "secret",
            "token",
            "password",
            "passwd",
            "signature",
            "authorization",
            "auth",
            "cookie",
            "credential",
        ]
        .iter()
        .any(|s| n.contains(s))
}

/// Replaces every known secret value in `text`.
pub fn scrub(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_string();
    for s in secrets.iter().filter(|s| s.len() >= 4) {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), REDACTED);
        }
    }
    out
}

/// A URL with credentials in its query, path or user info replaced.
pub fn url(raw: &str, secrets: &[String]) -> String {
    let Ok(mut u) = url::Url::parse(raw) else {
        return scrub(raw, secrets);
    };
    if u.password().is_some() {
        let _ = u.set_password(Some(REDACTED));
    }
    // Telegram puts the bot token in the path: /bot<token>/method.
    let path: Vec<String> = u
        .path()
        .split('/')
        .map(|seg| {
            if seg.len() > 3 && seg.starts_with("bot") && seg.contains(':') {
                format!("bot{REDACTED}")
            } else {
                seg.to_string()
            }
        })
        .collect();
    u.set_path(&path.join("/"));
    if u.query().is_some() {
        let pairs: Vec<(String, String)> = u
            .query_pairs()
            .map(|(k, v)| {
                let v = if sensitive_name(&k) {
                    REDACTED.to_string()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        u.query_pairs_mut().clear().extend_pairs(pairs);
    }
    scrub(u.as_str(), secrets)
}

/// Request headers as `Name: value` lines, credentials replaced.
pub fn headers<'a>(pairs: impl Iterator<Item = (&'a str, &'a [u8])>, secrets: &[String]) -> String {
    let mut out = String::new();
    for (name, value) in pairs {
        let value = String::from_utf8_lossy(value);
        let shown = if sensitive_name(name) {
            // Keep the scheme (Basic, Bearer): it tells which credential was presented.
            match value.split_once(' ') {
                Some((scheme, _)) if name.eq_ignore_ascii_case("authorization") => {
                    format!("{scheme} {REDACTED}")
                }
                _ => REDACTED.to_string(),
            }
        } else {
            scrub(&value, secrets)
        };
        out.push_str(name);
        out.push_str(": ");
        out.push_str(&shown);
        out.push('\n');
    }
    out
}

/// A body redacted and cut to [`BODY_MAX`] (None when empty).
pub fn body(raw: &[u8], secrets: &[String]) -> Option<String> {
    if raw.is_empty() {
        return None;
    }
    let text = String::from_utf8_lossy(raw);
    let redacted = redact_structured(&text).unwrap_or_else(|| redact_json_pairs(&text));
    Some(truncate(&scrub(&redacted, secrets), BODY_MAX))
}

fn redact_structured(text: &str) -> Option<String> {
    if text.len() > PARSE_MAX {
        return None;
    }
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        let mut v: serde_json::Value = serde_json::from_str(text).ok()?;
        redact_value(&mut v);
        return serde_json::to_string(&v).ok();
    }
    // A form body: name=value pairs with no spaces (a plain-text body has some).
    if text.contains('=') && !text.contains(' ') && !text.contains('\n') {
        let pairs: Vec<(String, String)> = url::form_urlencoded::parse(text.as_bytes())
            .map(|(k, v)| {
                let v = if sensitive_name(&k) {
                    REDACTED.to_string()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        return Some(
            url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(pairs)
                .finish(),
        );
    }
    None
}

fn redact_value(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, val) in map.iter_mut() {
                if sensitive_name(k) && !val.is_object() && !val.is_array() {
                    *val = serde_json::Value::String(REDACTED.into());
                } else {
                    redact_value(val);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(redact_value),
        _ => {}
    }
}

/// For text that is not parseable JSON (cut, or not JSON at all): replaces the string value
/// of every `"name": "value"` pair whose name is sensitive.
fn redact_json_pairs(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('"') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let Some(end) = after.find('"') else {
            out.push_str(&rest[start..]);
            return out;
        };
        let name = &after[..end];
        out.push('"');
        out.push_str(name);
        out.push('"');
        rest = &after[end + 1..];
        if sensitive_name(name) {
            let trimmed = rest.trim_start();
            if let Some(v) = trimmed.strip_prefix(':') {
                let v = v.trim_start();
                if let Some(val) = v.strip_prefix('"') {
                    // Skip the value up to its closing quote (or the end of a cut body).
                    let close = val.find('"').map_or(val.len(), |i| i + 1);
                    out.push_str(&format!(":\"{REDACTED}\""));
                    rest = &val[close..];
                }
            }
        }
    }
    out.push_str(rest);
    out
}

/// Cuts at a character boundary and says how much was left out.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…[{} more bytes]", &s[..cut], s.len() - cut)
}

/// The forms a contact id takes in stored payloads (`+614...` is `%2B614...` in a form
/// body), for finding the ones a purge must delete.
pub fn contact_forms(contact: &str) -> Vec<String> {
    let mut out = vec![contact.to_string()];
    let encoded: String = url::form_urlencoded::byte_serialize(contact.as_bytes()).collect();
    if encoded != contact {
        out.push(encoded);
    }
    if let Some(bare) = contact.strip_prefix('+') {
        out.push(bare.to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets() -> Vec<String> {
        vec!["s3cr3t-value".into()]
    }

    #[test]
    fn url_secrets_are_replaced() {
        let u = url(
            "https://h/channels/sms/inbound?secret=abc123&x=1",
            &secrets(),
        );
        assert!(!u.contains("abc123"), "{u}");
        assert!(u.contains("x=1"));
        let t = url(
            "https://api.telegram.org/bot123456:AAH-secretpart/sendMessage",
            &[],
        );
        assert!(!t.contains("AAH-secretpart"), "{t}");
        assert!(t.ends_with("/sendMessage"));
        let b = url("https://user:pa55word@h/x", &[]);
        assert!(!b.contains("pa55word"), "{b}");
        let v = url("https://h/x?api_key=k1&token=t1&sig=z", &[]);
        assert!(
            !v.contains("k1") && !v.contains("t1") && !v.contains("=z"),
            "{v}"
        );
    }

    #[test]
    fn headers_keep_the_scheme_only() {
        let h = headers(
            [
                ("authorization", b"Basic dXNlcjpwYXNz".as_slice()),
                ("x-twilio-signature", b"abcdef".as_slice()),
                ("content-type", b"application/json".as_slice()),
            ]
            .into_iter(),
            &[],
        );
        assert!(h.contains("authorization: Basic [redacted]"));
        assert!(!h.contains("dXNlcjpwYXNz") && !h.contains("abcdef"));
        assert!(h.contains("content-type: application/json"));
    }

    #[test]
    fn json_form_and_text_bodies() {
        let j = body(
            br#"{"api_key":"k-1","nested":{"Token":"t-2"},"text":"hi"}"#,
            &[],
        )
        .unwrap();
        assert!(
            !j.contains("k-1") && !j.contains("t-2") && j.contains("hi"),
            "{j}"
        );
        let f = body(b"from=%2B614&api_secret=zz9&text=hello", &[]).unwrap();
        assert!(!f.contains("zz9") && f.contains("hello"), "{f}");
        let cut = body(br#"{"password": "pw-123", "text": "unterminated"#, &[]).unwrap();
        assert!(!cut.contains("pw-123"), "{cut}");
        let by_value = body(b"free text with s3cr3t-value inside", &secrets()).unwrap();
        assert!(!by_value.contains("s3cr3t-value"), "{by_value}");
    }

    #[test]
    fn long_bodies_are_cut_at_a_char_boundary() {
        let long = "é".repeat(BODY_MAX);
        let b = body(long.as_bytes(), &[]).unwrap();
        assert!(b.len() < BODY_MAX + 40);
        assert!(b.contains("more bytes"));
    }

    #[test]
    fn sensitive_names() {
        for n in [
            "Authorization",
            "X-Api-Key",
            "api_secret",
            "auth_token",
            "signature",
            "key",
            "apikey",
        ] {
            assert!(sensitive_name(n), "{n}");
        }
        for n in ["to", "from", "body", "message_id", "content-type"] {
            assert!(!sensitive_name(n), "{n}");
        }
    }
}
