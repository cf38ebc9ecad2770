//! Send templates: `{placeholder}` substitution with escaping by construction.
//!
//! No expression language: a template is literal text and placeholders. Where the result
//! goes decides the escaping, never the operator: URL values are percent-encoded, JSON bodies
//! are built as `serde_json::Value` trees (string leaves substituted, then serialised), form
//! bodies are encoded by the form encoder. `{{` and `}}` stand for literal braces.

use std::borrow::Cow;
use std::collections::BTreeMap;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::Value;

use crate::secret::Secret;
use crate::wire::{Attachment, AttachmentKind};

/// RFC 3986 unreserved characters stay; everything else in a substituted value is encoded,
/// so a value can never add a path segment, a query parameter or a fragment.
const URL_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Placeholders every send template knows.
pub const PLACEHOLDERS: &[&str] = &[
    "mid",
    "contact_id",
    "contact_id_digits",
    "text",
    "status_url",
    "now_s",
    "now_ms",
    "secret.NAME",
];

/// Placeholders only `[channel.http.send.attachment]` knows (a text message has none).
pub const ATTACHMENT_PLACEHOLDERS: &[&str] = &[
    "attachment_url",
    "attachment_type",
    "attachment_file_name",
    "attachment_caption",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placeholder {
    /// Our mId.
    Mid,
    /// respond.io's contactId as given (`+61422222222`).
    ContactId,
    /// The contactId without a leading `+` (Plivo, Vonage).
    ContactIdDigits,
    /// The message as plain text (attachments: caption and URL; quick replies numbered).
    Text,
    /// Our receipt webhook URL, with `?secret=` when webhooks are authenticated that way.
    StatusUrl,
    /// Unix seconds / milliseconds, as JSON numbers when a leaf is only this placeholder.
    NowS,
    NowMs,
    Secret(String),
    AttachmentUrl,
    AttachmentType,
    AttachmentFileName,
    AttachmentCaption,
}

impl Placeholder {
    fn parse(name: &str, scope: &Scope<'_>) -> Result<Placeholder, String> {
        let p = match name {
            "mid" => Placeholder::Mid,
            "contact_id" => Placeholder::ContactId,
            "contact_id_digits" => Placeholder::ContactIdDigits,
            "text" => Placeholder::Text,
            "status_url" => Placeholder::StatusUrl,
            "now_s" => Placeholder::NowS,
            "now_ms" => Placeholder::NowMs,
            "attachment_url" => Placeholder::AttachmentUrl,
            "attachment_type" => Placeholder::AttachmentType,
            "attachment_file_name" => Placeholder::AttachmentFileName,
            "attachment_caption" => Placeholder::AttachmentCaption,
            _ => {
                if let Some(secret) = name.strip_prefix("secret.") {
                    if !scope.secrets.contains_key(secret) {
                        return Err(format!(
                            "{{{name}}}: there is no secret {secret:?} in [channel.http.secrets]"
                        ));
                    }
                    return Ok(Placeholder::Secret(secret.to_string()));
                }
                let mut known: Vec<&str> = PLACEHOLDERS.to_vec();
                if scope.attachment {
                    known.extend(ATTACHMENT_PLACEHOLDERS);
                }
                return Err(format!(
                    "unknown placeholder {{{name}}} (known: {})",
                    known.join(", ")
                ));
            }
        };
        if p.is_attachment_only() && !scope.attachment {
            return Err(format!(
                "{{{name}}} is only known in [channel.http.send.attachment] (a text message has no attachment)"
            ));
        }
        Ok(p)
    }

    fn is_attachment_only(&self) -> bool {
        matches!(
            self,
            Placeholder::AttachmentUrl
                | Placeholder::AttachmentType
                | Placeholder::AttachmentFileName
                | Placeholder::AttachmentCaption
        )
    }
}

/// What a template may refer to where it is written.
pub struct Scope<'a> {
    pub secrets: &'a BTreeMap<String, Secret>,
    /// Inside `[channel.http.send.attachment]`.
    pub attachment: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(String),
    Ph(Placeholder),
}

/// One parsed template string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

/// A placeholder's value for one message.
#[derive(Debug, Clone, PartialEq)]
pub enum Val<'a> {
    Str(Cow<'a, str>),
    Num(i64),
    /// Optional data the message does not have (an attachment without a file name).
    Missing,
}

/// Everything a template can be filled from, for one send.
pub struct Vars<'a> {
    pub mid: &'a str,
    pub contact_id: &'a str,
    pub text: String,
    pub status_url: &'a str,
    pub attachment: Option<&'a Attachment>,
    pub secrets: &'a BTreeMap<String, Secret>,
    pub now_ms: i64,
}

impl Vars<'_> {
    fn value(&self, p: &Placeholder) -> Val<'_> {
        let s = |v: &str| Val::Str(Cow::Owned(v.to_string()));
        let opt = |v: Option<&String>| match v {
            Some(v) if !v.trim().is_empty() => s(v),
            _ => Val::Missing,
        };
        match p {
            Placeholder::Mid => s(self.mid),
            Placeholder::ContactId => s(self.contact_id),
            Placeholder::ContactIdDigits => s(self.contact_id.trim_start_matches('+')),
            Placeholder::Text => Val::Str(Cow::Borrowed(&self.text)),
            Placeholder::StatusUrl => s(self.status_url),
            Placeholder::NowS => Val::Num(self.now_ms / 1000),
            Placeholder::NowMs => Val::Num(self.now_ms),
            // Compiled templates only name secrets that exist.
            Placeholder::Secret(name) => self
                .secrets
                .get(name)
                .map_or(Val::Missing, |v| Val::Str(Cow::Borrowed(v.expose()))),
            Placeholder::AttachmentUrl => opt(self.attachment.map(|a| &a.url)),
            Placeholder::AttachmentType => match self.attachment.map(|a| a.kind) {
                Some(k) => s(kind_name(k)),
                None => Val::Missing,
            },
            Placeholder::AttachmentFileName => {
                opt(self.attachment.and_then(|a| a.file_name.as_ref()))
            }
            Placeholder::AttachmentCaption => {
                opt(self.attachment.and_then(|a| a.description.as_ref()))
            }
        }
    }
}

pub fn kind_name(k: AttachmentKind) -> &'static str {
    match k {
        AttachmentKind::Image => "image",
        AttachmentKind::Video => "video",
        AttachmentKind::Audio => "audio",
        AttachmentKind::File => "file",
    }
}

impl Template {
    pub fn parse(s: &str, scope: &Scope<'_>) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut chars = s.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            match c {
                '{' if chars.peek().map(|(_, c)| *c) == Some('{') => {
                    chars.next();
                    lit.push('{');
                }
                '}' if chars.peek().map(|(_, c)| *c) == Some('}') => {
                    chars.next();
                    lit.push('}');
                }
                '{' => {
                    let rest = &s[i + 1..];
                    let end = rest.find('}').ok_or_else(|| {
                        format!("unclosed {{ in {s:?} (write {{{{ for a literal brace)")
                    })?;
                    let name = &rest[..end];
                    if name.contains('{') {
                        return Err(format!(
                            "unclosed {{ in {s:?} (write {{{{ for a literal brace)"
                        ));
                    }
                    if !lit.is_empty() {
                        parts.push(Part::Lit(std::mem::take(&mut lit)));
                    }
                    parts.push(Part::Ph(Placeholder::parse(name, scope)?));
                    // Skip the name and its closing brace.
                    for _ in 0..name.chars().count() + 1 {
                        chars.next();
                    }
                }
                '}' => {
                    return Err(format!(
                        "stray }} in {s:?} (write }}}} for a literal brace)"
                    ));
                }
                c => lit.push(c),
            }
        }
        if !lit.is_empty() {
            parts.push(Part::Lit(lit));
        }
        Ok(Template { parts })
    }

    /// The template's only part, when it is exactly one placeholder.
    fn single(&self) -> Option<&Placeholder> {
        match self.parts.as_slice() {
            [Part::Ph(p)] => Some(p),
            _ => None,
        }
    }

    pub fn placeholders(&self) -> impl Iterator<Item = &Placeholder> {
        self.parts.iter().filter_map(|p| match p {
            Part::Ph(p) => Some(p),
            Part::Lit(_) => None,
        })
    }

    pub fn uses_secret(&self) -> bool {
        self.placeholders()
            .any(|p| matches!(p, Placeholder::Secret(_)))
    }

    /// As text; a missing optional value is empty. `url` percent-encodes substituted values
    /// (literal parts are the operator's URL and stay as written).
    pub fn render(&self, vars: &Vars<'_>, url: bool) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Lit(l) => out.push_str(l),
                Part::Ph(p) => {
                    let v = match vars.value(p) {
                        Val::Str(s) => s.into_owned(),
                        Val::Num(n) => n.to_string(),
                        Val::Missing => String::new(),
                    };
                    if url {
                        out.extend(utf8_percent_encode(&v, URL_VALUE));
                    } else {
                        out.push_str(&v);
                    }
                }
            }
        }
        out
    }

    /// As a field value: `None` when the whole template is one placeholder with no value,
    /// so the field is left out rather than sent empty.
    pub fn render_field(&self, vars: &Vars<'_>) -> Option<String> {
        if let Some(p) = self.single()
            && vars.value(p) == Val::Missing
        {
            return None;
        }
        Some(self.render(vars, false))
    }

    /// As a JSON leaf: a lone placeholder keeps its type (`{now_s}` is a number) and is left
    /// out when it has no value; anything else is a string.
    fn render_json(&self, vars: &Vars<'_>) -> Option<Value> {
        if let Some(p) = self.single() {
            return match vars.value(p) {
                Val::Str(s) => Some(Value::String(s.into_owned())),
                Val::Num(n) => Some(Value::from(n)),
                Val::Missing => None,
            };
        }
        Some(Value::String(self.render(vars, false)))
    }
}

/// A JSON body template: the TOML structure, with templates in its string leaves.
#[derive(Debug, Clone, PartialEq)]
pub enum JsonTemplate {
    Object(Vec<(String, JsonTemplate)>),
    Array(Vec<JsonTemplate>),
    Str(Template),
    Lit(Value),
}

impl JsonTemplate {
    /// Compiles a TOML value; problems are reported per leaf with `key` extended by the
    /// leaf's path (`…json.messages[0].to`).
    pub fn compile(
        v: &toml::Value,
        key: &str,
        scope: &Scope<'_>,
        problems: &mut Vec<(String, String)>,
    ) -> JsonTemplate {
        match v {
            toml::Value::String(s) => match Template::parse(s, scope) {
                Ok(t) => JsonTemplate::Str(t),
                Err(e) => {
                    problems.push((key.to_string(), e));
                    JsonTemplate::Lit(Value::Null)
                }
            },
            toml::Value::Integer(i) => JsonTemplate::Lit(Value::from(*i)),
            toml::Value::Float(f) => JsonTemplate::Lit(
                serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
            ),
            toml::Value::Boolean(b) => JsonTemplate::Lit(Value::Bool(*b)),
            toml::Value::Datetime(d) => JsonTemplate::Lit(Value::String(d.to_string())),
            toml::Value::Array(items) => JsonTemplate::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| Self::compile(item, &format!("{key}[{i}]"), scope, problems))
                    .collect(),
            ),
            toml::Value::Table(t) => JsonTemplate::Object(
                t.iter()
                    .map(|(k, item)| {
                        (
                            k.clone(),
                            Self::compile(item, &format!("{key}.{k}"), scope, problems),
                        )
                    })
                    .collect(),
            ),
        }
    }

    /// The body for one message. Leaves without a value are left out of their object or
    /// array; the top level always renders.
    pub fn render(&self, vars: &Vars<'_>) -> Value {
        self.render_inner(vars).unwrap_or(Value::Null)
    }

    fn render_inner(&self, vars: &Vars<'_>) -> Option<Value> {
        match self {
            JsonTemplate::Lit(v) => Some(v.clone()),
            JsonTemplate::Str(t) => t.render_json(vars),
            JsonTemplate::Array(items) => Some(Value::Array(
                items.iter().filter_map(|i| i.render_inner(vars)).collect(),
            )),
            JsonTemplate::Object(fields) => Some(Value::Object(
                fields
                    .iter()
                    .filter_map(|(k, t)| t.render_inner(vars).map(|v| (k.clone(), v)))
                    .collect(),
            )),
        }
    }

    pub fn visit_templates<'a>(&'a self, f: &mut dyn FnMut(&'a Template)) {
        match self {
            JsonTemplate::Str(t) => f(t),
            JsonTemplate::Array(items) => items.iter().for_each(|i| i.visit_templates(f)),
            JsonTemplate::Object(fields) => fields.iter().for_each(|(_, t)| t.visit_templates(f)),
            JsonTemplate::Lit(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn secrets() -> BTreeMap<String, Secret> {
        BTreeMap::from([("key".to_string(), Secret::new("k&y=1/2"))])
    }

    fn vars<'a>(
        secrets: &'a BTreeMap<String, Secret>,
        text: &str,
        a: Option<&'a Attachment>,
    ) -> Vars<'a> {
        Vars {
            mid: "01MID",
            contact_id: "+61422222222",
            text: text.to_string(),
            status_url: "https://gw.test/channels/sms/status?secret=s",
            attachment: a,
            secrets,
            now_ms: 1_736_900_000_123,
        }
    }

    fn scope(s: &BTreeMap<String, Secret>, attachment: bool) -> Scope<'_> {
        Scope {
            secrets: s,
            attachment,
        }
    }

    #[test]
    fn parse_errors_name_the_problem() {
        let s = secrets();
        let cases: &[(&str, bool, Option<&str>)] = &[
            ("plain", false, None),
            ("{mid}-{contact_id}", false, None),
            ("{{literal}} {text}", false, None),
            ("{secret.key}", false, None),
            ("{attachment_url}", true, None),
            (
                "{attachment_url}",
                false,
                Some("only known in [channel.http.send.attachment]"),
            ),
            ("{nope}", false, Some("unknown placeholder {nope}")),
            ("{}", false, Some("unknown placeholder {}")),
            ("{secret.other}", false, Some("no secret \"other\"")),
            ("{text", false, Some("unclosed {")),
            ("{te{xt}", false, Some("unclosed {")),
            ("a}b", false, Some("stray }")),
            ("{ mid }", false, Some("unknown placeholder")),
        ];
        for (t, attach, want) in cases {
            let got = Template::parse(t, &scope(&s, *attach));
            match want {
                None => assert!(got.is_ok(), "{t}: {got:?}"),
                Some(w) => {
                    let e = got.unwrap_err();
                    assert!(e.contains(w), "{t}: {e}");
                }
            }
        }
    }

    #[test]
    fn text_rendering_table() {
        let s = secrets();
        let a = Attachment {
            kind: AttachmentKind::Image,
            url: "https://cdn.test/a b.jpg?x=1&y=2".into(),
            file_name: None,
            description: Some("Café".into()),
        };
        // (template, attachment scope, url-encode, expected)
        let cases: &[(&str, bool, bool, &str)] = &[
            ("{mid}", false, false, "01MID"),
            ("to={contact_id}", false, false, "to=+61422222222"),
            ("{contact_id_digits}", false, false, "61422222222"),
            ("{{{mid}}}", false, false, "{01MID}"),
            ("{now_s}/{now_ms}", false, false, "1736900000/1736900000123"),
            ("{secret.key}", false, false, "k&y=1/2"),
            ("{text}", false, false, "a \"quoted\" & <b>\nline"),
            // URL: substituted values are percent-encoded, literals are not.
            (
                "https://api.test/v1/{secret.key}/send?to={contact_id}&t={text}",
                false,
                true,
                "https://api.test/v1/k%26y%3D1%2F2/send?to=%2B61422222222&t=a%20%22quoted%22%20%26%20%3Cb%3E%0Aline",
            ),
            (
                "{attachment_url}",
                true,
                true,
                "https%3A%2F%2Fcdn.test%2Fa%20b.jpg%3Fx%3D1%26y%3D2",
            ),
            ("{attachment_caption}", true, true, "Caf%C3%A9"),
            ("[{attachment_file_name}]", true, false, "[]"),
            ("{attachment_type}", true, false, "image"),
        ];
        for (t, attach, url, want) in cases {
            let tpl = Template::parse(t, &scope(&s, *attach)).unwrap();
            let v = vars(&s, "a \"quoted\" & <b>\nline", Some(&a));
            assert_eq!(tpl.render(&v, *url), *want, "{t}");
        }
        // A field that is only a missing value is left out; with other text it renders empty.
        let v = vars(&s, "x", Some(&a));
        let lone = Template::parse("{attachment_file_name}", &scope(&s, true)).unwrap();
        assert_eq!(lone.render_field(&v), None);
        let mixed = Template::parse("f:{attachment_file_name}", &scope(&s, true)).unwrap();
        assert_eq!(mixed.render_field(&v).as_deref(), Some("f:"));
    }

    #[test]
    fn json_bodies_are_escaped_by_construction() {
        let s = secrets();
        let body: toml::Value = toml::from_str(
            r#"
source = "rio-bridge"
count = 1
ratio = 0.5
flag = true
schedule = "{now_s}"
label = "at {now_s}"
messages = [ { to = "{contact_id}", body = "{text}", ref = "{mid}", name = "{attachment_file_name}", caption = "{attachment_caption}" } ]
media = ["{attachment_url}", "{attachment_file_name}"]
"#,
        )
        .unwrap();
        let mut problems = Vec::new();
        let t = JsonTemplate::compile(&body, "json", &scope(&s, true), &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        let a = Attachment {
            kind: AttachmentKind::File,
            url: "https://cdn.test/f.pdf".into(),
            file_name: None,
            description: Some("He said \"hi\"\\".into()),
        };
        let text = "quote \" backslash \\ newline \n tab \t unicode ✓ {mid} }";
        let got = t.render(&vars(&s, text, Some(&a)));
        assert_eq!(
            got,
            json!({
                "source": "rio-bridge", "count": 1, "ratio": 0.5, "flag": true,
                "schedule": 1736900000, "label": "at 1736900000",
                "messages": [{"to": "+61422222222", "body": text, "ref": "01MID",
                              "caption": "He said \"hi\"\\"}],
                "media": ["https://cdn.test/f.pdf"]
            })
        );
        // Serialised and read back, the text is exactly what the contact should get.
        let wire = serde_json::to_string(&got).unwrap();
        let back: Value = serde_json::from_str(&wire).unwrap();
        assert_eq!(back["messages"][0]["body"], text);
    }

    #[test]
    fn json_problems_carry_the_leaf_key() {
        let s = secrets();
        let body: toml::Value =
            toml::from_str(r#"messages = [ { to = "{contact}", body = "{text" } ]"#).unwrap();
        let mut problems = Vec::new();
        JsonTemplate::compile(&body, "send.json", &scope(&s, false), &mut problems);
        let keys: Vec<&str> = problems.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            vec!["send.json.messages[0].body", "send.json.messages[0].to"]
        );
    }
}
