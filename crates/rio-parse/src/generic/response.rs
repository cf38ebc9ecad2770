//! Reading a gateway's answer to a send: accepted (with its message id) or a typed
//! [`SendError`], from the HTTP status, an in-band code and the mapped JSON fields.

use std::time::Duration;

use serde_json::Value;

use super::config::ResponseConfig;
use super::fields::{at_pointer, check_pointer};
use crate::provider::{Accepted, SendError};

/// `[channel.http.send.response]`, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct ResponseMapping {
    success_status: Option<Vec<u16>>,
    success: Option<(String, String)>,
    id_pointer: String,
    error_pointers: Vec<String>,
    code_pointer: Option<String>,
    retry_after_pointer: Option<String>,
    throttled_status: Vec<u16>,
    channel_fault_status: Vec<u16>,
    permanent_status: Vec<u16>,
    ambiguous_status: Vec<u16>,
    throttled_codes: Vec<String>,
    channel_fault_codes: Vec<String>,
    permanent_codes: Vec<String>,
    ambiguous_codes: Vec<String>,
}

impl ResponseMapping {
    /// `key` is where the table sits (`channel[0].http.send.response`).
    pub fn compile(
        c: &ResponseConfig,
        key: &str,
    ) -> Result<ResponseMapping, Vec<(String, String)>> {
        let mut problems = Vec::new();
        if c.id_pointer.is_none() {
            problems.push((
                format!("{key}.id_pointer"),
                "is required: the JSON Pointer to the gateway's message id in its answer (receipts are matched by it)"
                    .into(),
            ));
        }
        let pointers = [
            ("id_pointer".to_string(), c.id_pointer.as_ref()),
            ("success_pointer".to_string(), c.success_pointer.as_ref()),
            ("code_pointer".to_string(), c.code_pointer.as_ref()),
            (
                "retry_after_pointer".to_string(),
                c.retry_after_pointer.as_ref(),
            ),
        ]
        .into_iter()
        .chain(
            c.error_pointers
                .iter()
                .enumerate()
                .map(|(i, p)| (format!("error_pointers[{i}]"), Some(p))),
        );
        for (name, p) in pointers {
            if let Some(Err(e)) = p.map(|p| check_pointer(p)) {
                problems.push((format!("{key}.{name}"), e));
            }
        }
        match (&c.success_pointer, &c.success_value) {
            (Some(_), None) => problems.push((
                format!("{key}.success_value"),
                "is required with success_pointer (the value that means accepted)".into(),
            )),
            (None, Some(_)) => problems.push((
                format!("{key}.success_pointer"),
                "is required with success_value (where that value is)".into(),
            )),
            _ => {}
        }
        let lists = [
            ("success_status", c.success_status.as_deref().unwrap_or(&[])),
            (
                "throttled_status",
                c.throttled_status.as_deref().unwrap_or(&[]),
            ),
            (
                "channel_fault_status",
                c.channel_fault_status.as_deref().unwrap_or(&[]),
            ),
            ("permanent_status", &c.permanent_status),
            ("ambiguous_status", &c.ambiguous_status),
        ];
        for (name, list) in lists {
            if let Some(bad) = list.iter().find(|s| !(100..=599).contains(*s)) {
                problems.push((
                    format!("{key}.{name}"),
                    format!("{bad} is not an HTTP status"),
                ));
            }
        }
        if matches!(&c.success_status, Some(s) if s.is_empty()) {
            problems.push((
                format!("{key}.success_status"),
                "is empty: no answer could ever count as accepted".into(),
            ));
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(ResponseMapping {
            success_status: c.success_status.clone(),
            success: c.success_pointer.clone().zip(c.success_value.clone()),
            id_pointer: c.id_pointer.clone().unwrap_or_default(),
            error_pointers: c.error_pointers.clone(),
            code_pointer: c.code_pointer.clone(),
            retry_after_pointer: c.retry_after_pointer.clone(),
            throttled_status: c.throttled_status.clone().unwrap_or_else(|| vec![429]),
            channel_fault_status: c
                .channel_fault_status
                .clone()
                .unwrap_or_else(|| vec![401, 403]),
            permanent_status: c.permanent_status.clone(),
            ambiguous_status: c.ambiguous_status.clone(),
            throttled_codes: c.throttled_codes.clone(),
            channel_fault_codes: c.channel_fault_codes.clone(),
            permanent_codes: c.permanent_codes.clone(),
            ambiguous_codes: c.ambiguous_codes.clone(),
        })
    }

    fn is_success_status(&self, status: u16) -> bool {
        match &self.success_status {
            Some(list) => list.contains(&status),
            None => (200..300).contains(&status),
        }
    }

    /// Types the gateway's answer. `body` is `Err` when reading it failed;
    /// `retry_after` is the `Retry-After` header, if any.
    pub fn classify(
        &self,
        status: u16,
        retry_after: Option<Duration>,
        body: Result<&[u8], String>,
    ) -> Result<Accepted, SendError> {
        let json: Option<Value> = body
            .as_ref()
            .ok()
            .and_then(|b| serde_json::from_slice(b).ok());
        let field = |p: &str| json.as_ref().and_then(|v| at_pointer(v, p));
        let detail = self
            .error_pointers
            .iter()
            .find_map(|p| field(p))
            .or_else(|| match (&json, &body) {
                // Not JSON: a short excerpt of whatever came, for the operator.
                (None, Ok(b)) => Some(excerpt(b)).filter(|s| !s.is_empty()),
                _ => None,
            });
        // "what (HTTP 200, code 7): the gateway's words"
        let reason_code = |what: &str, code: Option<&str>| {
            let mut r = format!("{what} (HTTP {status}");
            if let Some(c) = code {
                r.push_str(&format!(", code {c}"));
            }
            r.push(')');
            if let Some(d) = &detail {
                r.push_str(&format!(": {d}"));
            }
            r
        };
        let reason = |what: &str| reason_code(what, None);
        let retry_after = retry_after.or_else(|| {
            let secs = field(self.retry_after_pointer.as_deref()?)?;
            crate::provider::parse_retry_after(&secs)
        });

        // An in-band code decides first: gateways that answer 200 with an error inside
        // (Vonage's SMS API) or 4xx with a "try later" code.
        if let Some(code) = self.code_pointer.as_deref().and_then(field) {
            let has = |list: &[String]| list.contains(&code);
            let what = |kind: &str| reason_code(kind, Some(&code));
            if has(&self.throttled_codes) {
                return Err(SendError::Throttled {
                    retry_after,
                    reason: what("the gateway throttled the send"),
                });
            }
            if has(&self.channel_fault_codes) {
                return Err(SendError::ChannelFault(what(
                    "the gateway refused the channel",
                )));
            }
            if has(&self.ambiguous_codes) {
                return Err(SendError::Ambiguous(what(
                    "the gateway failed, the message may have been sent",
                )));
            }
            if has(&self.permanent_codes) {
                return Err(SendError::Permanent(what(
                    "the gateway rejected the message",
                )));
            }
        }

        if self.is_success_status(status) {
            let body = body.map_err(|e| SendError::Ambiguous(format!("HTTP {status} but {e}")))?;
            let Some(json) = &json else {
                return Err(SendError::Ambiguous(format!(
                    "HTTP {status} with a body that is not JSON: {}",
                    excerpt(body)
                )));
            };
            if let Some((pointer, want)) = &self.success {
                match at_pointer(json, pointer) {
                    Some(got) if got == *want => {}
                    // The answer has no verdict where we look: it may have been sent.
                    None => {
                        return Err(SendError::Ambiguous(format!(
                            "HTTP {status} without a value at {pointer}"
                        )));
                    }
                    Some(got) => {
                        return Err(SendError::Permanent(reason_code(
                            "the gateway did not accept the message",
                            Some(&got),
                        )));
                    }
                }
            }
            return match at_pointer(json, &self.id_pointer) {
                Some(id) => Ok(Accepted {
                    provider_id: id.trim().to_string(),
                }),
                None => Err(SendError::Ambiguous(format!(
                    "HTTP {status} without a message id at {}",
                    self.id_pointer
                ))),
            };
        }

        Err(if self.throttled_status.contains(&status) {
            SendError::Throttled {
                retry_after,
                reason: reason("the gateway throttled the send"),
            }
        } else if self.channel_fault_status.contains(&status) {
            SendError::ChannelFault(reason("the gateway rejected the credentials"))
        } else if self.ambiguous_status.contains(&status) {
            SendError::Ambiguous(reason("the gateway failed, the message may have been sent"))
        } else if self.permanent_status.contains(&status) {
            SendError::Permanent(reason("the gateway rejected the message"))
        } else {
            match status {
                // Redirects are not followed (a redirected POST becomes a GET and loses the
                // message): the URL is wrong, for every message.
                300..=399 => SendError::ChannelFault(reason(
                    "the gateway answered with a redirect, which is not followed; check send.url",
                )),
                400..=499 => SendError::Permanent(reason("the gateway rejected the message")),
                // 5xx, and a 2xx that is not in success_status: may have been acted on.
                _ => SendError::Ambiguous(reason(
                    "the gateway failed, the message may have been sent",
                )),
            }
        })
    }
}

fn excerpt(body: &[u8]) -> String {
    String::from_utf8_lossy(body)
        .chars()
        .take(200)
        .collect::<String>()
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(r: &Result<Accepted, SendError>) -> String {
        match r {
            Ok(a) => format!("ok {}", a.provider_id),
            Err(SendError::Ambiguous(_)) => "ambiguous".into(),
            Err(SendError::Permanent(_)) => "permanent".into(),
            Err(SendError::ChannelFault(_)) => "channel".into(),
            Err(SendError::Throttled {
                retry_after: Some(d),
                ..
            }) => format!("throttled {}s", d.as_secs()),
            Err(SendError::Throttled { .. }) => "throttled".into(),
            Err(SendError::Unsent(_)) => "unsent".into(),
            Err(SendError::Rotated(_)) => "rotated".into(),
        }
    }

    fn mapping(toml_text: &str) -> ResponseMapping {
        let c: ResponseConfig = toml::from_str(toml_text).unwrap();
        ResponseMapping::compile(&c, "r").unwrap()
    }

    /// ClickSend's shape: HTTP 200 with a per-message status.
    const CLICKSEND: &str = r#"
success_pointer = "/data/messages/0/status"
success_value = "SUCCESS"
id_pointer = "/data/messages/0/message_id"
code_pointer = "/data/messages/0/status"
error_pointers = ["/response_msg"]
channel_fault_codes = ["INSUFFICIENT_CREDIT"]
"#;

    /// Vonage's legacy SMS API: always 200, `status` "0" is success, codes in-band.
    const VONAGE: &str = r#"
success_pointer = "/messages/0/status"
success_value = "0"
id_pointer = "/messages/0/message-id"
code_pointer = "/messages/0/status"
error_pointers = ["/messages/0/error-text"]
throttled_codes = ["1"]
ambiguous_codes = ["5"]
channel_fault_codes = ["4", "8", "9", "11", "14"]
"#;

    #[test]
    fn classify_table() {
        let cs = mapping(CLICKSEND);
        let vo = mapping(VONAGE);
        let bare = mapping(
            r#"id_pointer = "/id"
retry_after_pointer = "/parameters/retry_after"
permanent_status = [500]
ambiguous_status = [408]
success_status = [202]"#,
        );
        let cs_ok = r#"{"response_code":"SUCCESS","data":{"messages":[{"status":"SUCCESS","message_id":"BF7A"}]}}"#;
        let cs_status =
            |s: &str| cs_ok.replace("\"status\":\"SUCCESS\"", &format!("\"status\":\"{s}\""));
        let vo_msg = |status: &str, extra: &str| {
            format!(r#"{{"message-count":"1","messages":[{{"status":"{status}"{extra}}}]}}"#)
        };
        type Body = Result<String, String>;
        /// (name, mapping, HTTP status, Retry-After, body, expected)
        type Case<'a> = (
            &'a str,
            &'a ResponseMapping,
            u16,
            Option<u64>,
            Body,
            &'a str,
        );
        let cases: Vec<Case> = vec![
            ("cs success", &cs, 200, None, Ok(cs_ok.into()), "ok BF7A"),
            (
                "cs invalid recipient",
                &cs,
                200,
                None,
                Ok(cs_status("INVALID_RECIPIENT")),
                "permanent",
            ),
            (
                "cs no credit",
                &cs,
                200,
                None,
                Ok(cs_status("INSUFFICIENT_CREDIT")),
                "channel",
            ),
            (
                "cs no verdict",
                &cs,
                200,
                None,
                Ok(r#"{"data":{}}"#.into()),
                "ambiguous",
            ),
            (
                "cs no id",
                &cs,
                200,
                None,
                Ok(cs_ok.replace("\"BF7A\"", "\"\"")),
                "ambiguous",
            ),
            (
                "cs not json",
                &cs,
                200,
                None,
                Ok("<html>".into()),
                "ambiguous",
            ),
            (
                "cs body cut",
                &cs,
                200,
                None,
                Err("reset".into()),
                "ambiguous",
            ),
            (
                "cs 400",
                &cs,
                400,
                None,
                Ok(r#"{"response_msg":"bad to"}"#.into()),
                "permanent",
            ),
            ("cs 401", &cs, 401, None, Ok("".into()), "channel"),
            ("cs 403", &cs, 403, None, Ok("".into()), "channel"),
            (
                "cs 429 retry-after",
                &cs,
                429,
                Some(7),
                Ok("".into()),
                "throttled 7s",
            ),
            ("cs 429", &cs, 429, None, Ok("".into()), "throttled"),
            ("cs 500", &cs, 500, None, Ok("".into()), "ambiguous"),
            (
                "cs 503 cut",
                &cs,
                503,
                None,
                Err("reset".into()),
                "ambiguous",
            ),
            ("cs redirect", &cs, 302, None, Ok("".into()), "channel"),
            (
                "cs 202 counts as 2xx",
                &cs,
                202,
                None,
                Ok(cs_ok.into()),
                "ok BF7A",
            ),
            (
                "vo success",
                &vo,
                200,
                None,
                Ok(vo_msg("0", r#","message-id":"0A01""#)),
                "ok 0A01",
            ),
            (
                "vo throttled",
                &vo,
                200,
                None,
                Ok(vo_msg("1", r#","error-text":"Throughput Rate Exceeded""#)),
                "throttled",
            ),
            (
                "vo internal",
                &vo,
                200,
                None,
                Ok(vo_msg("5", "")),
                "ambiguous",
            ),
            (
                "vo bad creds",
                &vo,
                200,
                None,
                Ok(vo_msg("4", "")),
                "channel",
            ),
            (
                "vo no credit",
                &vo,
                200,
                None,
                Ok(vo_msg("9", "")),
                "channel",
            ),
            (
                "vo invalid params",
                &vo,
                200,
                None,
                Ok(vo_msg("3", "")),
                "permanent",
            ),
            (
                "vo barred",
                &vo,
                200,
                None,
                Ok(vo_msg("7", "")),
                "permanent",
            ),
            (
                "bare 202",
                &bare,
                202,
                None,
                Ok(r#"{"id":42}"#.into()),
                "ok 42",
            ),
            (
                "bare 200 not success",
                &bare,
                200,
                None,
                Ok(r#"{"id":42}"#.into()),
                "ambiguous",
            ),
            (
                "bare body retry_after",
                &bare,
                429,
                None,
                Ok(r#"{"parameters":{"retry_after":3}}"#.into()),
                "throttled 3s",
            ),
            (
                "bare header wins",
                &bare,
                429,
                Some(9),
                Ok(r#"{"parameters":{"retry_after":3}}"#.into()),
                "throttled 9s",
            ),
            (
                "bare 500 listed permanent",
                &bare,
                500,
                None,
                Ok("".into()),
                "permanent",
            ),
            (
                "bare 408 listed ambiguous",
                &bare,
                408,
                None,
                Ok("".into()),
                "ambiguous",
            ),
            ("bare 404", &bare, 404, None, Ok("".into()), "permanent"),
        ];
        for (name, m, status, ra, body, want) in cases {
            let body_ref = body.as_ref().map(|s| s.as_bytes()).map_err(Clone::clone);
            let got = m.classify(status, ra.map(Duration::from_secs), body_ref);
            assert_eq!(kind(&got), want, "{name}: {got:?}");
        }
    }

    #[test]
    fn reasons_carry_the_gateways_words() {
        let vo = mapping(VONAGE);
        let body = r#"{"messages":[{"status":"7","error-text":"Number barred."}]}"#;
        let err = vo.classify(200, None, Ok(body.as_bytes())).unwrap_err();
        assert!(err.reason().contains("Number barred."), "{err:?}");
        assert!(err.reason().contains("code 7"), "{err:?}");
        let cs = mapping(CLICKSEND);
        let err = cs
            .classify(502, None, Ok(b"<h1>Bad gateway</h1>"))
            .unwrap_err();
        assert!(err.reason().contains("Bad gateway"), "{err:?}");
    }

    #[test]
    fn compile_problems_have_keys() {
        let cases: &[(&str, &str)] = &[
            ("", "r.id_pointer"),
            ("id_pointer = \"id\"", "r.id_pointer"),
            ("id_pointer = \"/a~2\"", "r.id_pointer"),
            (
                "id_pointer = \"/id\"\nsuccess_pointer = \"/ok\"",
                "r.success_value",
            ),
            (
                "id_pointer = \"/id\"\nsuccess_value = \"1\"",
                "r.success_pointer",
            ),
            (
                "id_pointer = \"/id\"\nerror_pointers = [\"/ok\", \"bad\"]",
                "r.error_pointers[1]",
            ),
            (
                "id_pointer = \"/id\"\nsuccess_status = []",
                "r.success_status",
            ),
            (
                "id_pointer = \"/id\"\nthrottled_status = [42]",
                "r.throttled_status",
            ),
            (
                "id_pointer = \"/id\"\ncode_pointer = \"x\"",
                "r.code_pointer",
            ),
        ];
        for (text, key) in cases {
            let c: ResponseConfig = toml::from_str(text).unwrap();
            let problems = ResponseMapping::compile(&c, "r").unwrap_err();
            assert!(
                problems.iter().any(|(k, _)| k == key),
                "{text}: {problems:?}"
            );
        }
    }
}
