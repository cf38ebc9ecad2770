//! The config file's text: TOML, then `${VAR}` replaced from the environment in every string
//! value (`$${` stands for a literal `${`). Validation of what the values mean is the
//! server's (`rio_bridge::config`), which runs on the value this returns.

use std::collections::BTreeMap;

/// A problem as (config key, message); the key is a dotted path such as `channel[0].name`.
pub type Problem = (String, String);

/// Parses the file's text into a TOML value; `Err` carries the parser's message.
pub fn parse(text: &str) -> Result<toml::Value, String> {
    toml::from_str(text).map_err(|e: toml::de::Error| e.message().to_string())
}

/// Replaces `${VAR}` in every string value of `v`, resolving names with `env`. Returns one
/// problem per string that names an unset variable or leaves a `${` unclosed.
pub fn interpolate(v: &mut toml::Value, env: &dyn Fn(&str) -> Option<String>) -> Vec<Problem> {
    let mut problems = Vec::new();
    interpolate_at(v, "", env, &mut problems);
    problems
}

fn interpolate_at(
    v: &mut toml::Value,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
) {
    match v {
        toml::Value::String(s) => match substitute(s, env) {
            Ok(new) => *s = new,
            Err(e) => problems.push((path.to_string(), e.to_string())),
        },
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                interpolate_at(item, &format!("{path}[{i}]"), env, problems);
            }
        }
        toml::Value::Table(t) => {
            let keys: BTreeMap<_, _> = t.iter_mut().collect();
            for (k, item) in keys {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                interpolate_at(item, &p, env, problems);
            }
        }
        _ => {}
    }
}

/// Why a string could not be interpolated. Never carries the string itself: it may hold a
/// secret, and the message is printed by `check-config`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubstituteError {
    /// `${NAME}` names a variable that is not set.
    Unset(String),
    /// A `${` without its `}`.
    Unclosed,
}

impl std::fmt::Display for SubstituteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SubstituteError::Unset(name) => write!(f, "environment variable {name} is not set"),
            SubstituteError::Unclosed => {
                f.write_str("has a ${ without its closing } (write $${ for a literal ${)")
            }
        }
    }
}

/// Replaces every `${NAME}` in `s` with `env(NAME)`; `$${` is a literal `${`, any other `$`
/// stays as it is.
pub fn substitute(
    s: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, SubstituteError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("${") {
            let end = tail.find('}').ok_or(SubstituteError::Unclosed)?;
            let name = &tail[..end];
            out.push_str(&env(name).ok_or_else(|| SubstituteError::Unset(name.to_string()))?);
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitution_rules() {
        let e = |k: &str| (k == "A").then(|| "x".to_string());
        assert_eq!(
            substitute("a${A}b$${A}$c", &e).unwrap(),
            "ax b${A}$c".replace(' ', "")
        );
        assert_eq!(
            substitute("${B}", &e).unwrap_err(),
            SubstituteError::Unset("B".into())
        );
    }

    #[test]
    fn an_unclosed_reference_does_not_echo_the_value() {
        let mut v = parse("[server]\ntoken = \"hunter2${A\"").unwrap();
        let problems = interpolate(&mut v, &|_| None);
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].0, "server.token");
        assert!(problems[0].1.contains("closing }"), "{}", problems[0].1);
        assert!(!problems[0].1.contains("hunter2"), "{}", problems[0].1);
    }

    #[test]
    fn every_string_is_interpolated_with_its_path() {
        let mut v = parse("a = [\"${X}\", { b = \"${Y}\" }]\n[t]\nc = \"${X}\"\nn = 3").unwrap();
        let problems = interpolate(&mut v, &|k| (k == "X").then(|| "x".into()));
        assert_eq!(
            problems,
            vec![("a[1].b".into(), "environment variable Y is not set".into())]
        );
        assert_eq!(v["a"][0].as_str(), Some("x"));
        assert_eq!(v["t"]["c"].as_str(), Some("x"));
    }
}
