//! Reading fields out of a gateway's payloads: JSON Pointers (RFC 6901) into JSON bodies,
//! field names into form bodies (or a GET's query string).

use serde_json::Value;

use super::config::PayloadFormat;
use crate::provider::WebhookRequest;

/// Checks a JSON Pointer's syntax: empty (the whole document) or `/`-separated tokens in
/// which `~` is only ever followed by `0` (`~`) or `1` (`/`).
pub fn check_pointer(p: &str) -> Result<(), String> {
    if p.is_empty() {
        return Ok(());
    }
    if !p.starts_with('/') {
        return Err(format!(
            "{p:?} is not a JSON Pointer: it must start with / (e.g. \"/data/id\")"
        ));
    }
    let mut chars = p.chars();
    while let Some(c) = chars.next() {
        if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
            return Err(format!(
                "{p:?} is not a JSON Pointer: ~ must be written ~0, and / inside a key ~1"
            ));
        }
    }
    Ok(())
}

/// A scalar as text: strings as they are, numbers and booleans printed; anything else
/// (null, objects, arrays) and blank strings count as absent.
pub fn scalar_text(v: &Value) -> Option<String> {
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => return None,
    };
    (!s.trim().is_empty()).then_some(s)
}

/// The text at a JSON Pointer, if it is a non-blank scalar. `serde_json` implements RFC 6901
/// unescaping (`~1` before `~0`) and array indices (no leading zeros, no `-`).
pub fn at_pointer(v: &Value, pointer: &str) -> Option<String> {
    v.pointer(pointer).and_then(scalar_text)
}

/// Where a mapped field is: a pointer or a form field name, checked against the format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPath {
    format: PayloadFormat,
    path: String,
}

impl FieldPath {
    pub fn new(format: PayloadFormat, path: &str) -> Result<FieldPath, String> {
        match format {
            PayloadFormat::Json => {
                check_pointer(path)?;
                if path.is_empty() {
                    return Err("must point into the payload, not at the whole of it".into());
                }
            }
            PayloadFormat::Form => {
                if path.trim().is_empty() {
                    return Err("is empty (the name of a form field)".into());
                }
                if path.starts_with('/') {
                    return Err(format!(
                        "{path:?} looks like a JSON Pointer, but format is \"form\": give the field name"
                    ));
                }
            }
        }
        Ok(FieldPath {
            format,
            path: path.to_string(),
        })
    }

    pub fn get(&self, p: &Payload) -> Option<String> {
        match p {
            Payload::Json(v) => at_pointer(v, &self.path),
            Payload::Form(pairs) => pairs
                .iter()
                .find(|(k, _)| *k == self.path)
                .map(|(_, v)| v.clone())
                .filter(|v| !v.trim().is_empty()),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.path
    }
}

/// One message's (or receipt's) worth of webhook data.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    Json(Value),
    /// Pairs in order; the first occurrence of a name wins, as a form parser reads it.
    Form(Vec<(String, String)>),
}

/// The payloads of a webhook. JSON: an object, or a non-empty array of objects. Form: the
/// body, or for a GET (empty body) the query string without our own auth parameter.
pub fn payloads(
    req: &WebhookRequest<'_>,
    format: PayloadFormat,
    auth_param: Option<&str>,
) -> Result<Vec<Payload>, String> {
    let body = req.body.trim_ascii();
    match format {
        PayloadFormat::Json => {
            if body.is_empty() {
                return Err("webhook has an empty body (a JSON payload was expected)".into());
            }
            let v: Value =
                serde_json::from_slice(body).map_err(|e| format!("body is not valid JSON: {e}"))?;
            match v {
                Value::Object(_) => Ok(vec![Payload::Json(v)]),
                Value::Array(items) if !items.is_empty() => items
                    .into_iter()
                    .map(|i| {
                        if i.is_object() {
                            Ok(Payload::Json(i))
                        } else {
                            Err("JSON array items must be objects".to_string())
                        }
                    })
                    .collect(),
                _ => Err("JSON body must be an object (or a non-empty array of objects)".into()),
            }
        }
        PayloadFormat::Form => {
            let raw = if body.is_empty() {
                req.query.as_bytes()
            } else {
                body
            };
            let pairs: Vec<(String, String)> = url::form_urlencoded::parse(raw)
                .filter(|(k, _)| !(body.is_empty() && Some(k.as_ref()) == auth_param))
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            if pairs.is_empty() {
                return Err("webhook has neither a body nor query fields".into());
            }
            Ok(vec![Payload::Form(pairs)])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pointer_syntax() {
        let cases: &[(&str, bool)] = &[
            ("", true),
            ("/a", true),
            ("/a/0/b", true),
            ("/a~1b", true),
            ("/m~0n", true),
            ("/", true),
            ("a/b", false),
            ("/a~2b", false),
            ("/a~", false),
            ("data.id", false),
        ];
        for (p, ok) in cases {
            assert_eq!(check_pointer(p).is_ok(), *ok, "{p:?}");
        }
    }

    #[test]
    fn pointer_lookup_edge_cases() {
        let doc = json!({
            "a/b": "slash", "m~n": "tilde", "~1": "tilde-one", "": "empty-key",
            "list": ["x", {"id": 7}], "n": 1.5, "t": true, "z": null, "blank": "  ",
            "obj": {"k": "v"}
        });
        let cases: &[(&str, Option<&str>)] = &[
            ("/a~1b", Some("slash")),
            ("/m~0n", Some("tilde")),
            // ~01 is the key "~1": ~1 is unescaped before ~0, so the result is never read again.
            ("/~01", Some("tilde-one")),
            ("/", Some("empty-key")),
            ("/list/0", Some("x")),
            ("/list/1/id", Some("7")),
            ("/list/01", None),
            ("/list/2", None),
            ("/list/-", None),
            ("/n", Some("1.5")),
            ("/t", Some("true")),
            ("/z", None),
            ("/blank", None),
            ("/obj", None),
            ("/missing", None),
            ("/obj/k/deeper", None),
        ];
        for (p, want) in cases {
            assert_eq!(at_pointer(&doc, p).as_deref(), *want, "{p:?}");
        }
    }

    #[test]
    fn field_paths_follow_the_format() {
        assert!(FieldPath::new(PayloadFormat::Json, "/from").is_ok());
        assert!(FieldPath::new(PayloadFormat::Json, "from").is_err());
        assert!(FieldPath::new(PayloadFormat::Json, "").is_err());
        assert!(FieldPath::new(PayloadFormat::Form, "from").is_ok());
        assert!(FieldPath::new(PayloadFormat::Form, "/from").is_err());
        assert!(FieldPath::new(PayloadFormat::Form, " ").is_err());

        let f = FieldPath::new(PayloadFormat::Form, "b").unwrap();
        let p = Payload::Form(vec![
            ("a".into(), "1".into()),
            ("b".into(), "first".into()),
            ("b".into(), "second".into()),
            ("e".into(), "".into()),
        ]);
        assert_eq!(f.get(&p).as_deref(), Some("first"));
        let e = FieldPath::new(PayloadFormat::Form, "e").unwrap();
        assert_eq!(e.get(&p), None);
    }

    fn req<'a>(query: &'a str, body: &'a [u8], h: &'a http::HeaderMap) -> WebhookRequest<'a> {
        WebhookRequest {
            query,
            headers: h,
            body,
            public_url: "https://gw.test/x",
        }
    }

    #[test]
    fn payload_shapes() {
        let h = http::HeaderMap::new();
        let form = payloads(
            &req("secret=s", b"a=1&b=x+y", &h),
            PayloadFormat::Form,
            None,
        )
        .unwrap();
        assert_eq!(
            form,
            vec![Payload::Form(vec![
                ("a".into(), "1".into()),
                ("b".into(), "x y".into())
            ])]
        );
        // GET: the query string, minus our own secret.
        let get = payloads(
            &req("secret=s&a=2", b"", &h),
            PayloadFormat::Form,
            Some("secret"),
        )
        .unwrap();
        assert_eq!(get, vec![Payload::Form(vec![("a".into(), "2".into())])]);
        let err = payloads(
            &req("secret=s", b"", &h),
            PayloadFormat::Form,
            Some("secret"),
        )
        .unwrap_err();
        assert!(err.contains("neither"), "{err}");

        let arr = payloads(
            &req("", br#"[{"a":1},{"a":2}]"#, &h),
            PayloadFormat::Json,
            None,
        )
        .unwrap();
        assert_eq!(arr.len(), 2);
        for bad in [&b"{"[..], b"[]", b"[1]", b"\"x\"", b""] {
            assert!(
                payloads(&req("", bad, &h), PayloadFormat::Json, None).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
