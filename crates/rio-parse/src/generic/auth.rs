//! Webhook authenticity for the generic provider: a shared secret (query parameter or
//! header, compared in constant time) or an HMAC of the raw body, optionally bound to a
//! timestamp header of bounded age. Runs before anything is parsed.

use base64::Engine;
use hmac::{Hmac, Mac};
use http::HeaderName;

use super::config::{AuthConfig, AuthKind, HmacAlgorithm, SignatureEncoding};
use crate::provider::WebhookRequest;
use crate::secret::Secret;

/// `[channel.http.auth]`, checked, with the channel's `webhook_secret`.
#[derive(Debug, Clone)]
pub struct WebhookAuth {
    kind: AuthKind,
    param: String,
    header: Option<HeaderName>,
    prefix: String,
    algorithm: HmacAlgorithm,
    encoding: SignatureEncoding,
    timestamp_header: Option<HeaderName>,
    timestamp_separator: String,
    max_age_secs: u64,
    secret: Secret,
}

fn header_name(v: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(v.as_bytes()).map_err(|_| format!("{v:?} is not a valid header name"))
}

impl WebhookAuth {
    /// `key` is where the table sits (`channel[0].http.auth`); `secret_key` is the channel's
    /// `webhook_secret` key.
    pub fn compile(
        c: &AuthConfig,
        secret: &Secret,
        key: &str,
        secret_key: &str,
    ) -> Result<WebhookAuth, Vec<(String, String)>> {
        let mut problems = Vec::new();
        if secret.is_empty() {
            problems.push((
                secret_key.to_string(),
                "is required by the http provider: its webhooks are checked against it".into(),
            ));
        } else if c.kind != AuthKind::Hmac && secret.expose().len() < 16 {
            // A secret carried in every request is all that keeps strangers out.
            problems.push((
                secret_key.to_string(),
                "is too short to be guessed safely: use at least 16 random characters".into(),
            ));
        }
        let mut header = None;
        if matches!(c.kind, AuthKind::HeaderSecret | AuthKind::Hmac) {
            match c.header.as_deref() {
                None => problems.push((
                    format!("{key}.header"),
                    "is required for this kind (the header that carries the secret or signature)"
                        .into(),
                )),
                Some(h) => match header_name(h) {
                    Ok(h) => header = Some(h),
                    Err(e) => problems.push((format!("{key}.header"), e)),
                },
            }
        }
        if c.kind == AuthKind::QuerySecret
            && (c.param.is_empty() || c.param.contains(['&', '=', '#', ' ']))
        {
            problems.push((
                format!("{key}.param"),
                "must be a plain query parameter name".into(),
            ));
        }
        let mut timestamp_header = None;
        if let Some(h) = &c.timestamp_header {
            if c.kind != AuthKind::Hmac {
                problems.push((
                    format!("{key}.timestamp_header"),
                    "only applies to kind = \"hmac\"".into(),
                ));
            }
            match header_name(h) {
                Ok(h) => timestamp_header = Some(h),
                Err(e) => problems.push((format!("{key}.timestamp_header"), e)),
            }
            if c.max_age_secs == 0 {
                problems.push((format!("{key}.max_age_secs"), "must be at least 1".into()));
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(WebhookAuth {
            kind: c.kind,
            param: c.param.clone(),
            header,
            prefix: c.prefix.clone(),
            algorithm: c.algorithm,
            encoding: c.encoding,
            timestamp_header,
            timestamp_separator: c.timestamp_separator.clone(),
            max_age_secs: c.max_age_secs,
            secret: secret.clone(),
        })
    }

    /// The query parameter that carries our secret, for `{status_url}` and for ignoring it
    /// when a GET's query string is the payload.
    pub fn query_param(&self) -> Option<&str> {
        (self.kind == AuthKind::QuerySecret).then_some(self.param.as_str())
    }

    /// `?{param}={secret}` to add to the webhook URLs we hand out, when that is the scheme.
    pub fn url_suffix(&self) -> String {
        match self.query_param() {
            Some(p) => {
                let q: String = url::form_urlencoded::Serializer::new(String::new())
                    .append_pair(p, self.secret.expose())
                    .finish();
                format!("?{q}")
            }
            None => String::new(),
        }
    }

    /// `now_s` is the current Unix time (a parameter, so tests can pin it).
    pub fn check(&self, req: &WebhookRequest<'_>, now_s: i64) -> Result<(), String> {
        match self.kind {
            AuthKind::QuerySecret => {
                let presented = req
                    .query_param(&self.param)
                    .ok_or_else(|| format!("webhook URL has no {} query parameter", self.param))?;
                if self.secret.matches(&presented) {
                    Ok(())
                } else {
                    Err("webhook secret does not match".into())
                }
            }
            AuthKind::HeaderSecret => {
                let value = self.header_value(req, self.header.as_ref())?;
                let presented = value
                    .strip_prefix(self.prefix.as_str())
                    .ok_or("webhook secret header lacks its prefix")?;
                if self.secret.matches(presented) {
                    Ok(())
                } else {
                    Err("webhook secret does not match".into())
                }
            }
            AuthKind::Hmac => self.check_hmac(req, now_s),
        }
    }

    fn header_value<'a>(
        &self,
        req: &'a WebhookRequest<'_>,
        name: Option<&HeaderName>,
    ) -> Result<&'a str, String> {
        let name = name.ok_or("no header configured")?;
        req.headers
            .get(name)
            .ok_or_else(|| format!("webhook has no {name} header"))?
            .to_str()
            .map_err(|_| format!("webhook {name} header is not text"))
    }

    fn check_hmac(&self, req: &WebhookRequest<'_>, now_s: i64) -> Result<(), String> {
        let presented = self.header_value(req, self.header.as_ref())?;
        let presented = presented
            .trim()
            .strip_prefix(self.prefix.as_str())
            .ok_or("webhook signature lacks its prefix")?;
        let signature = match self.encoding {
            SignatureEncoding::Hex => decode_hex(presented),
            SignatureEncoding::Base64 => base64::engine::general_purpose::STANDARD
                .decode(presented)
                .ok(),
        }
        .ok_or("webhook signature is not validly encoded")?;
        let mut signed_prefix = Vec::new();
        if let Some(h) = &self.timestamp_header {
            let ts = self.header_value(req, Some(h))?.trim();
            let when: i64 = ts
                .parse()
                .map_err(|_| format!("webhook {h} header is not Unix seconds"))?;
            if now_s.abs_diff(when) > self.max_age_secs {
                return Err(format!(
                    "webhook timestamp is {} s away from now (more than {} s)",
                    now_s.abs_diff(when),
                    self.max_age_secs
                ));
            }
            signed_prefix.extend_from_slice(ts.as_bytes());
            signed_prefix.extend_from_slice(self.timestamp_separator.as_bytes());
        }
        // verify_slice compares in constant time.
        let ok = match self.algorithm {
            HmacAlgorithm::Sha256 => {
                verify::<Hmac<sha2::Sha256>>(&self.secret, &signed_prefix, req.body, &signature)
            }
            HmacAlgorithm::Sha1 => {
                verify::<Hmac<sha1::Sha1>>(&self.secret, &signed_prefix, req.body, &signature)
            }
        };
        if ok {
            Ok(())
        } else {
            Err("webhook signature does not match".into())
        }
    }
}

fn verify<M: Mac + hmac::digest::KeyInit>(
    key: &Secret,
    prefix: &[u8],
    body: &[u8],
    sig: &[u8],
) -> bool {
    // Every value of a secret in rotation is tried (`Secret::accepted`).
    key.accepted().any(|key| {
        let Ok(mut mac) = <M as hmac::digest::KeyInit>::new_from_slice(key.as_bytes()) else {
            return false;
        };
        mac.update(prefix);
        mac.update(body);
        mac.verify_slice(sig).is_ok()
    })
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue};

    pub const SECRET: &str = "a-long-webhook-secret-0123456789";

    /// What a gateway would send: the HMAC of `prefix + body`, encoded.
    pub fn sign(alg: HmacAlgorithm, enc: SignatureEncoding, prefix: &str, body: &[u8]) -> String {
        let bytes = match alg {
            HmacAlgorithm::Sha256 => {
                let mut m = <Hmac<sha2::Sha256> as hmac::digest::KeyInit>::new_from_slice(
                    SECRET.as_bytes(),
                )
                .unwrap();
                m.update(prefix.as_bytes());
                m.update(body);
                m.finalize().into_bytes().to_vec()
            }
            HmacAlgorithm::Sha1 => {
                let mut m =
                    <Hmac<sha1::Sha1> as hmac::digest::KeyInit>::new_from_slice(SECRET.as_bytes())
                        .unwrap();
                m.update(prefix.as_bytes());
                m.update(body);
                m.finalize().into_bytes().to_vec()
            }
        };
        match enc {
            SignatureEncoding::Hex => bytes.iter().map(|b| format!("{b:02x}")).collect(),
            SignatureEncoding::Base64 => base64::engine::general_purpose::STANDARD.encode(bytes),
        }
    }

    fn auth(toml_text: &str) -> WebhookAuth {
        let c: AuthConfig = toml::from_str(toml_text).unwrap();
        WebhookAuth::compile(&c, &Secret::new(SECRET), "a", "s").unwrap()
    }

    fn check(a: &WebhookAuth, query: &str, headers: &[(&str, &str)], body: &str) -> bool {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let req = WebhookRequest {
            query,
            headers: &h,
            body: body.as_bytes(),
            public_url: "https://gw.test/channels/x/inbound",
        };
        a.check(&req, NOW).is_ok()
    }

    const NOW: i64 = 1_736_900_000;

    #[test]
    fn shared_secrets() {
        let q = auth("");
        let h = auth("kind = \"header_secret\"\nheader = \"Authorization\"\nprefix = \"Bearer \"");
        let other = &format!("{SECRET}x");
        /// (name, auth, query, headers, accepted)
        type Case<'a> = (
            &'a str,
            &'a WebhookAuth,
            String,
            Vec<(&'a str, String)>,
            bool,
        );
        let cases: Vec<Case> = vec![
            (
                "query good",
                &q,
                format!("a=1&secret={SECRET}"),
                vec![],
                true,
            ),
            ("query bad", &q, format!("secret={other}"), vec![], false),
            ("query empty", &q, "secret=".into(), vec![], false),
            ("query missing", &q, "a=1".into(), vec![], false),
            (
                "query in header only",
                &q,
                "".into(),
                vec![("secret", SECRET.into())],
                false,
            ),
            (
                "header good",
                &h,
                "".into(),
                vec![("authorization", format!("Bearer {SECRET}"))],
                true,
            ),
            (
                "header no prefix",
                &h,
                "".into(),
                vec![("authorization", SECRET.into())],
                false,
            ),
            (
                "header bad",
                &h,
                "".into(),
                vec![("authorization", format!("Bearer {other}"))],
                false,
            ),
            (
                "header missing",
                &h,
                format!("secret={SECRET}"),
                vec![],
                false,
            ),
        ];
        for (name, a, query, headers, want) in cases {
            let hs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            assert_eq!(check(a, &query, &hs, "x=1"), want, "{name}");
        }
    }

    #[test]
    fn hmac_signatures() {
        use HmacAlgorithm::*;
        use SignatureEncoding::*;
        let body = r#"{"from":"+61422222222","text":"hi"}"#;
        let hex256 = auth("kind = \"hmac\"\nheader = \"X-Signature\"\nprefix = \"sha256=\"");
        let b64sha1 = auth(
            "kind = \"hmac\"\nheader = \"X-Sig\"\nalgorithm = \"sha1\"\nencoding = \"base64\"",
        );
        let stamped = auth(
            "kind = \"hmac\"\nheader = \"X-Sig\"\ntimestamp_header = \"X-Ts\"\ntimestamp_separator = \".\"\nmax_age_secs = 300",
        );
        let good256 = format!("sha256={}", sign(Sha256, Hex, "", body.as_bytes()));
        let good1 = sign(Sha1, Base64, "", body.as_bytes());
        let ts = |t: i64| t.to_string();
        let stamp_sig = |t: i64| sign(Sha256, Hex, &format!("{t}."), body.as_bytes());
        type Case<'a> = (
            &'a str,
            &'a WebhookAuth,
            Vec<(&'a str, String)>,
            &'a str,
            bool,
        );
        let cases: Vec<Case> = vec![
            (
                "hex good",
                &hex256,
                vec![("x-signature", good256.clone())],
                body,
                true,
            ),
            (
                "hex upper-case",
                &hex256,
                vec![(
                    "x-signature",
                    good256.to_uppercase().replace("SHA256=", "sha256="),
                )],
                body,
                true,
            ),
            (
                "hex body changed",
                &hex256,
                vec![("x-signature", good256.clone())],
                "{}",
                false,
            ),
            (
                "hex no prefix",
                &hex256,
                vec![("x-signature", good256[7..].to_string())],
                body,
                false,
            ),
            (
                "hex garbage",
                &hex256,
                vec![("x-signature", "sha256=zz".into())],
                body,
                false,
            ),
            ("hex missing", &hex256, vec![], body, false),
            (
                "sha1 base64 good",
                &b64sha1,
                vec![("x-sig", good1.clone())],
                body,
                true,
            ),
            (
                "sha1 base64 wrong alg",
                &b64sha1,
                vec![("x-sig", sign(Sha256, Base64, "", body.as_bytes()))],
                body,
                false,
            ),
            (
                "stamped good",
                &stamped,
                vec![("x-sig", stamp_sig(NOW)), ("x-ts", ts(NOW))],
                body,
                true,
            ),
            (
                "stamped within age",
                &stamped,
                vec![("x-sig", stamp_sig(NOW - 299)), ("x-ts", ts(NOW - 299))],
                body,
                true,
            ),
            (
                "stamped stale",
                &stamped,
                vec![("x-sig", stamp_sig(NOW - 301)), ("x-ts", ts(NOW - 301))],
                body,
                false,
            ),
            (
                "stamped future",
                &stamped,
                vec![("x-sig", stamp_sig(NOW + 301)), ("x-ts", ts(NOW + 301))],
                body,
                false,
            ),
            (
                "stamped ts swapped",
                &stamped,
                vec![("x-sig", stamp_sig(NOW)), ("x-ts", ts(NOW - 1))],
                body,
                false,
            ),
            (
                "stamped ts missing",
                &stamped,
                vec![("x-sig", stamp_sig(NOW))],
                body,
                false,
            ),
            (
                "stamped ts not a number",
                &stamped,
                vec![("x-sig", stamp_sig(NOW)), ("x-ts", "soon".into())],
                body,
                false,
            ),
        ];
        for (name, a, headers, b, want) in cases {
            let hs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            assert_eq!(check(a, "", &hs, b), want, "{name}");
        }
    }

    #[test]
    fn compile_problems() {
        let problems = |text: &str, secret: &str| {
            let c: AuthConfig = toml::from_str(text).unwrap();
            WebhookAuth::compile(&c, &Secret::new(secret), "a", "s")
                .err()
                .unwrap_or_default()
                .into_iter()
                .map(|(k, _)| k)
                .collect::<Vec<_>>()
        };
        assert_eq!(problems("", ""), vec!["s"]);
        assert_eq!(problems("", "short"), vec!["s"]);
        assert!(problems("kind = \"hmac\"\nheader = \"X\"", "short").is_empty());
        assert_eq!(
            problems("kind = \"header_secret\"", SECRET),
            vec!["a.header"]
        );
        assert_eq!(
            problems("kind = \"hmac\"\nheader = \"bad header\"", SECRET),
            vec!["a.header"]
        );
        assert_eq!(problems("param = \"a&b\"", SECRET), vec!["a.param"]);
        assert_eq!(
            problems("timestamp_header = \"X-Ts\"", SECRET),
            vec!["a.timestamp_header"]
        );
        assert_eq!(auth("").url_suffix(), format!("?secret={SECRET}"));
    }
}
