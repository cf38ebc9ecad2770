//! The operator's files in deploy/ against a running gateway: every metric a Prometheus
//! rule, a rule's unit test or a Grafana panel names must be one the gateway exports on
//! `/metrics`, with the labels it exports; every alert has a promtool unit test; and the
//! README's list of metrics names only exported ones. promtool itself (syntax, alert
//! behaviour) runs in `.ci/run`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use common::*;
use rio_bridge::simulators::clicksend::SimFault;
use serde_json::Value;
use yaml_rust2::{Yaml, YamlLoader};

const RULES: &str = "deploy/prometheus/rio-bridge.rules.yml";
const RULE_TESTS: &str = "deploy/prometheus/rio-bridge.rules.test.yml";
const DASHBOARD: &str = "deploy/grafana/rio-bridge.json";

/// Series Prometheus makes itself for every target, not the gateway.
const FROM_PROMETHEUS: [&str; 1] = ["up"];
/// Target labels Prometheus adds to every series it scrapes.
const TARGET_LABELS: [&str; 2] = ["job", "instance"];

fn read(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml(rel: &str) -> Yaml {
    let mut docs = YamlLoader::load_from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    assert_eq!(docs.len(), 1, "{rel}: one YAML document");
    docs.remove(0)
}

// --- PromQL: which metric names an expression selects -----------------------------------

/// Words that are PromQL syntax, not metric names, where they are not followed by `(`.
const PROMQL_WORDS: [&str; 24] = [
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
];
/// Aggregations and modifiers whose parenthesised argument is a list of label names.
const LABEL_LISTS: [&str; 6] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The metric names an expression selects. Skips strings, label matchers `{...}`, ranges
/// and subqueries `[...]`, label lists of `by`/`without`/`on`/`ignoring`/`group_*`, numbers
/// and durations, function and aggregation names, and Grafana's `$variables`. Grafana's
/// `label_values(selector, label)` counts its selector only.
fn promql_metrics(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    collect_metrics(expr, &mut out);
    out
}

fn collect_metrics(expr: &str, out: &mut BTreeSet<String>) {
    let s: Vec<char> = expr.chars().collect();
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        match c {
            '"' | '\'' | '`' => i = skip_string(&s, i),
            '{' => i = skip_group(&s, i, '{', '}'),
            '[' => i = skip_group(&s, i, '[', ']'),
            '$' => {
                // A Grafana variable: `$name`, `$__rate_interval` or `${name}`.
                i += 1;
                if s.get(i) == Some(&'{') {
                    i = skip_group(&s, i, '{', '}');
                } else {
                    while i < s.len() && is_ident(s[i]) {
                        i += 1;
                    }
                }
            }
            c if c.is_ascii_digit() || c == '.' => {
                // A number or a duration (`5m`, `1e3`, `0x1f`).
                while i < s.len() && (s[i].is_ascii_alphanumeric() || s[i] == '.' || s[i] == '_') {
                    i += 1;
                }
            }
            c if is_ident_start(c) => {
                let start = i;
                while i < s.len() && is_ident(s[i]) {
                    i += 1;
                }
                let word: String = s[start..i].iter().collect();
                let mut j = i;
                while j < s.len() && s[j].is_whitespace() {
                    j += 1;
                }
                let call = s.get(j) == Some(&'(');
                if call && LABEL_LISTS.contains(&word.as_str()) {
                    i = skip_group(&s, j, '(', ')');
                } else if call && word == "label_values" {
                    let end = skip_group(&s, j, '(', ')');
                    let inner: String = s[j + 1..end - 1].iter().collect();
                    // label_values(label) names no metric; label_values(selector, label) does.
                    if let Some((selector, _label)) = split_last_top_level_comma(&inner) {
                        collect_metrics(&selector, out);
                    }
                    i = end;
                } else if !call && !PROMQL_WORDS.contains(&word.as_str()) {
                    out.insert(word);
                }
            }
            _ => i += 1,
        }
    }
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Index just past the string literal starting at `i`.
fn skip_string(s: &[char], i: usize) -> usize {
    let quote = s[i];
    let mut k = i + 1;
    while k < s.len() && s[k] != quote {
        if s[k] == '\\' && quote != '`' {
            k += 1;
        }
        k += 1;
    }
    k + 1
}

/// Index just past the bracket that closes the one at `i`, skipping strings inside.
fn skip_group(s: &[char], i: usize, open: char, close: char) -> usize {
    let mut depth = 0;
    let mut k = i;
    while k < s.len() {
        match s[k] {
            '"' | '\'' | '`' => {
                k = skip_string(s, k);
                continue;
            }
            c if c == open => depth += 1,
            c if c == close => {
                depth -= 1;
                if depth == 0 {
                    return k + 1;
                }
            }
            _ => {}
        }
        k += 1;
    }
    panic!(
        "unbalanced {open}{close} in {:?}",
        s.iter().collect::<String>()
    )
}

fn split_last_top_level_comma(inner: &str) -> Option<(String, String)> {
    let s: Vec<char> = inner.chars().collect();
    let (mut k, mut depth, mut last) = (0, 0i32, None);
    while k < s.len() {
        match s[k] {
            '"' | '\'' | '`' => {
                k = skip_string(&s, k);
                continue;
            }
            '(' | '{' | '[' => depth += 1,
            ')' | '}' | ']' => depth -= 1,
            ',' if depth == 0 => last = Some(k),
            _ => {}
        }
        k += 1;
    }
    let at = last?;
    Some((
        s[..at].iter().collect(),
        s[at + 1..].iter().collect::<String>().trim().to_string(),
    ))
}

#[test]
fn promql_names_are_found_and_nothing_else() {
    let names = |e: &str| promql_metrics(e).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names(
            r#"histogram_quantile(0.99, sum by (le, route) (rate(rio_http_request_duration_seconds_bucket{job=~"$job", route="/channels/{name}/message"}[$__rate_interval])))"#
        ),
        ["rio_http_request_duration_seconds_bucket"]
    );
    assert_eq!(
        names(
            "max by (channel, direction) (a_seconds) > 900\nunless on (channel, direction)\nmax by (channel, direction) (b_paused) == 1"
        ),
        ["a_seconds", "b_paused"]
    );
    assert_eq!(
        names(
            "sum(rate(x_total[5m] offset 1h)) by (channel) / ignoring(direction) group_left(route) y * 60 > 1e3"
        ),
        ["x_total", "y"]
    );
    assert_eq!(
        names(
            r#"count(m == 1) or vector(0) and on() label_replace(n, "dst", "$1", "src", "(.*)")"#
        ),
        ["m", "n"]
    );
    assert_eq!(names(r#"rate(z[5m:1m]) @ start()"#), ["z"]);
    assert_eq!(
        names(r#"label_values(rio_lane_depth{job=~"$job"}, channel)"#),
        ["rio_lane_depth"]
    );
    assert_eq!(names("label_values(job)"), Vec::<String>::new());
    assert_eq!(names("up{job=\"a\\\"b\"} == 0"), ["up"]);
}

// --- The exposition format ---------------------------------------------------------------

/// One scrape: each series' name and labels.
struct Scrape {
    series: Vec<(String, BTreeMap<String, String>)>,
}

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let mut series = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let name_end = line.find(['{', ' ']).unwrap_or(line.len());
            let name = line[..name_end].to_string();
            let mut labels = BTreeMap::new();
            if line[name_end..].starts_with('{') {
                let s: Vec<char> = line[name_end + 1..].chars().collect();
                let mut k = 0;
                loop {
                    while k < s.len() && (s[k] == ',' || s[k] == ' ') {
                        k += 1;
                    }
                    if k >= s.len() || s[k] == '}' {
                        break;
                    }
                    let eq = k + s[k..].iter().position(|&c| c == '=').expect("label =");
                    let key: String = s[k..eq].iter().collect();
                    assert_eq!(s[eq + 1], '"', "{line}");
                    let mut value = String::new();
                    k = eq + 2;
                    while s[k] != '"' {
                        if s[k] == '\\' {
                            k += 1;
                            value.push(if s[k] == 'n' { '\n' } else { s[k] });
                        } else {
                            value.push(s[k]);
                        }
                        k += 1;
                    }
                    k += 1;
                    labels.insert(key, value);
                }
            }
            series.push((name, labels));
        }
        Scrape { series }
    }

    fn names(&self) -> BTreeSet<String> {
        self.series.iter().map(|(n, _)| n.clone()).collect()
    }

    /// The label names `metric`'s series carry (`le` and `quantile` aside).
    fn label_names(&self, metric: &str) -> BTreeSet<String> {
        self.series
            .iter()
            .filter(|(n, _)| n == metric)
            .flat_map(|(_, l)| l.keys().cloned())
            .filter(|k| k != "le" && k != "quantile")
            .collect()
    }

    fn label_values(&self, metric: &str, label: &str) -> BTreeSet<String> {
        self.series
            .iter()
            .filter(|(n, _)| n == metric)
            .filter_map(|(_, l)| l.get(label).cloned())
            .collect()
    }
}

// --- What the files in deploy/ name -------------------------------------------------------

/// Every rule's expression, by alert name.
fn rule_exprs() -> Vec<(String, String)> {
    let doc = yaml(RULES);
    let mut out = Vec::new();
    for group in doc["groups"].as_vec().expect("groups") {
        for rule in group["rules"].as_vec().expect("rules") {
            let name = rule["alert"]
                .as_str()
                .or(rule["record"].as_str())
                .expect("alert or record");
            let expr = rule["expr"].as_str().expect("expr");
            out.push((name.to_string(), expr.to_string()));
        }
    }
    out
}

/// The input series of the promtool unit tests, as (name, labels).
fn test_series() -> Vec<(String, BTreeMap<String, String>)> {
    let doc = yaml(RULE_TESTS);
    let mut out = Vec::new();
    for test in doc["tests"].as_vec().expect("tests") {
        for input in test["input_series"].as_vec().expect("input_series") {
            let selector = input["series"].as_str().expect("series");
            let line = format!("{selector} 0");
            out.extend(Scrape::parse(&line).series);
        }
    }
    out
}

fn tested_alerts() -> BTreeSet<String> {
    let doc = yaml(RULE_TESTS);
    doc["tests"]
        .as_vec()
        .expect("tests")
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_vec().cloned().unwrap_or_default())
        .filter_map(|a| a["alertname"].as_str().map(str::to_string))
        .collect()
}

/// Every query of the dashboard, by where it is: panel targets and template variables.
fn dashboard_queries() -> Vec<(String, String)> {
    let dash: Value = serde_json::from_str(&read(DASHBOARD)).expect("dashboard JSON");
    let mut out = Vec::new();
    fn walk(v: &Value, title: &str, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(m) => {
                let title = m.get("title").and_then(Value::as_str).unwrap_or(title);
                if let Some(expr) = m.get("expr").and_then(Value::as_str) {
                    out.push((format!("panel {title:?}"), expr.to_string()));
                }
                for child in m.values() {
                    walk(child, title, out);
                }
            }
            Value::Array(a) => a.iter().for_each(|c| walk(c, title, out)),
            _ => {}
        }
    }
    walk(&dash["panels"], "", &mut out);
    for var in dash["templating"]["list"].as_array().expect("templating") {
        if var["type"] != "query" {
            continue;
        }
        let name = var["name"].as_str().unwrap_or("?");
        let query = var["query"]["query"]
            .as_str()
            .or(var["query"].as_str())
            .expect("a query variable's query");
        out.push((format!("variable ${name}"), query.to_string()));
        if let Some(def) = var["definition"].as_str() {
            out.push((format!("variable ${name} (definition)"), def.to_string()));
        }
    }
    out
}

/// The metric names the README's `/metrics` paragraph lists.
fn readme_metrics() -> BTreeSet<String> {
    let readme = read("README.md");
    let start = readme
        .find("- `GET /metrics` (Prometheus)")
        .expect("README: the /metrics paragraph");
    let para = &readme[start..];
    let end = para[2..].find("\n- ").map_or(para.len(), |e| e + 2);
    para[..end]
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|w| w.starts_with("rio_"))
        .map(str::to_string)
        .collect()
}

#[test]
fn every_alert_has_a_promtool_unit_test() {
    let tested = tested_alerts();
    let untested: Vec<_> = rule_exprs()
        .into_iter()
        .map(|(name, _)| name)
        .filter(|n| !tested.contains(n))
        .collect();
    assert!(
        untested.is_empty(),
        "alerts without a test in {RULE_TESTS}: {untested:?}"
    );
}

/// Starts a gateway, sends traffic through every path the rules and panels watch (an
/// inbound message, a redelivery, an unreadable webhook, respond.io's sends, a 429), then
/// compares what deploy/ names with what `/metrics` shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_files_name_only_metrics_the_gateway_exports() {
    let stage = Stage::new(Opts::default()).await;
    let gw = InProcess::start(&stage).await;
    let http = reqwest::Client::new();

    // A contact writes in, and the provider delivers the same webhook twice.
    let form = [
        ("from", "+61400000001"),
        ("to", OUR_NUMBER),
        ("body", "hello"),
        ("message_id", "DEPLOY-1"),
        ("timestamp", "1767225600"),
    ];
    let inbound = format!("{}/channels/sms/inbound?secret={SECRET}", stage.base());
    for _ in 0..2 {
        let r = http.post(&inbound).form(&form).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    // An authentic receipt the gateway cannot read: kept raw.
    let r = http
        .post(format!(
            "{}/channels/sms/status?secret={SECRET}",
            stage.base()
        ))
        .header("content-type", "application/json")
        .body(r#"{"unexpected": true}"#)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    // respond.io sends; the provider throttles the first one (429, Retry-After: 1).
    stage.sim.push_fault(SimFault::Throttle {
        retry_after: Some(1),
    });
    for n in 0..3 {
        let (status, body) = stage.send("+61400000002", &format!("reply {n}")).await;
        assert_eq!(status, 200, "{body}");
    }

    let named = deploy_names();
    let missing = |scrape: &Scrape| -> Vec<String> {
        let exported = scrape.names();
        named
            .keys()
            .filter(|n| !exported.contains(*n) && !FROM_PROMETHEUS.contains(&n.as_str()))
            .cloned()
            .collect()
    };
    // The lanes publish as they work: poll until every name is there (or the deadline).
    let deadline = std::time::Instant::now() + scaled_deadline(60);
    let scrape = loop {
        let text = http
            .get(format!("{}/metrics", stage.base()))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics body");
        let scrape = Scrape::parse(&text);
        let absent = missing(&scrape);
        if absent.is_empty() {
            break scrape;
        }
        if std::time::Instant::now() > deadline {
            for name in &absent {
                eprintln!("not exported: {name}, named by {:?}", named[name]);
            }
            panic!(
                "deploy/ names metrics the gateway does not export: {absent:?}; it exports {:?}",
                scrape.names()
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let exported = scrape.names();

    // The unit tests' series carry the gateway's labels (plus the target's), and only
    // label values the gateway uses for `direction`.
    for (name, labels) in test_series() {
        if FROM_PROMETHEUS.contains(&name.as_str()) {
            continue;
        }
        assert!(
            exported.contains(&name),
            "{RULE_TESTS}: {name} is not exported"
        );
        let theirs: BTreeSet<String> = labels
            .keys()
            .filter(|k| !TARGET_LABELS.contains(&k.as_str()))
            .cloned()
            .collect();
        assert_eq!(
            theirs,
            scrape.label_names(&name),
            "{RULE_TESTS}: {name}'s labels differ from the gateway's"
        );
        if let Some(direction) = labels.get("direction") {
            assert!(
                scrape.label_values(&name, "direction").contains(direction),
                "{RULE_TESTS}: {name}{{direction={direction:?}}} is not a direction the gateway exports"
            );
        }
    }

    // The README lists exported metrics (a histogram by its base name).
    for name in readme_metrics() {
        assert!(
            exported.contains(&name) || exported.contains(&format!("{name}_bucket")),
            "README names {name}, which /metrics does not export"
        );
    }
    gw.shutdown().await;
}

/// Metric name → where deploy/ names it.
fn deploy_names() -> BTreeMap<String, Vec<String>> {
    let mut named: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (alert, expr) in rule_exprs() {
        for m in promql_metrics(&expr) {
            named.entry(m).or_default().push(format!("rule {alert}"));
        }
    }
    for (name, _) in test_series() {
        named
            .entry(name)
            .or_default()
            .push(format!("{RULE_TESTS} input series"));
    }
    for (place, expr) in dashboard_queries() {
        for m in promql_metrics(&expr) {
            named.entry(m).or_default().push(place.clone());
        }
    }
    assert!(
        named.len() > 20,
        "too few metric names found in deploy/: {named:?}"
    );
    named
}
