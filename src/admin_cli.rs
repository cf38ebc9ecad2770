//! `rio-bridge admin ...`: the admin API from a shell, against a running server over HTTP.
//! A readable table by default, the API's JSON with `--json` (for scripts).

use std::io::Write;

use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};

/// `Parser` (not just `Args`) so tests and scripts can parse an argument list directly.
#[derive(Debug, Parser)]
#[command(name = "admin")]
pub struct AdminArgs {
    /// The server's admin address (the internal listener if `server.admin_listen` is set).
    #[arg(long, env = "RIO_ADMIN_URL", default_value = "http://127.0.0.1:3030")]
    pub url: String,
    /// An admin token (`[[admin.token]]`); prefer the environment variable to the flag,
    /// which other users can see in the process list.
    #[arg(long, env = "RIO_ADMIN_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Debug, Args, Default, Clone)]
pub struct FilterArgs {
    #[arg(long)]
    pub channel: Option<String>,
    /// to_respondio or to_provider
    #[arg(long)]
    pub direction: Option<String>,
    #[arg(long)]
    pub contact: Option<String>,
    #[arg(long)]
    pub mid: Option<String>,
    /// message, echo, status or send
    #[arg(long)]
    pub kind: Option<String>,
    /// Created at or after (epoch ms).
    #[arg(long)]
    pub since: Option<i64>,
    /// Created before (epoch ms).
    #[arg(long)]
    pub until: Option<i64>,
}

impl FilterArgs {
    fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let mut add = |k: &'static str, v: Option<String>| {
            if let Some(v) = v {
                out.push((k, v));
            }
        };
        add("channel", self.channel.clone());
        add("direction", self.direction.clone());
        add("contact", self.contact.clone());
        add("mid", self.mid.clone());
        add("kind", self.kind.clone());
        add("since", self.since.map(|v| v.to_string()));
        add("until", self.until.map(|v| v.to_string()));
        out
    }

    fn is_empty(&self) -> bool {
        self.pairs().is_empty()
    }

    fn json(&self) -> Value {
        let mut m = serde_json::Map::new();
        for (k, v) in self.pairs() {
            let v = match k {
                "since" | "until" => json!(v.parse::<i64>().unwrap_or_default()),
                _ => json!(v),
            };
            m.insert(k.to_string(), v);
        }
        Value::Object(m)
    }
}

#[derive(Debug, Args, Default, Clone)]
pub struct PageArgs {
    #[arg(long)]
    pub limit: Option<usize>,
    /// `next_cursor` of the previous page.
    #[arg(long)]
    pub cursor: Option<String>,
}

impl PageArgs {
    fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let Some(l) = self.limit {
            out.push(("limit", l.to_string()));
        }
        if let Some(c) = &self.cursor {
            out.push(("cursor", c.clone()));
        }
        out
    }
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// List messages, newest first.
    Messages {
        #[command(flatten)]
        filter: FilterArgs,
        /// pending, attempting, done or dead
        #[arg(long)]
        state: Option<String>,
        #[command(flatten)]
        page: PageArgs,
    },
    /// One message: its timeline (history, attempts, HTTP exchanges).
    Show { mid: String },
    /// Dead letters (items that gave up).
    Dead {
        #[command(flatten)]
        filter: FilterArgs,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Send dead items again: by --id, or every dead item matching the filters.
    Replay {
        #[arg(long = "id")]
        ids: Vec<i64>,
        #[command(flatten)]
        filter: FilterArgs,
        /// At most this many by filter (default 1000).
        #[arg(long)]
        limit: Option<usize>,
        /// Also send again the sends whose earlier attempt may already have reached the
        /// contact (ambiguous); without it they stay dead. Recorded in the audit log.
        #[arg(long)]
        force: bool,
    },
    /// Settle dead items without sending them: by --id, or by filter.
    Discard {
        #[arg(long = "id")]
        ids: Vec<i64>,
        #[command(flatten)]
        filter: FilterArgs,
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Webhooks we could not parse (kept raw).
    Raw {
        #[arg(long)]
        channel: Option<String>,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Parse a kept webhook again and commit its events.
    ReplayRaw { id: i64 },
    /// Delete a kept webhook.
    DiscardRaw { id: i64 },
    /// Lanes: depth, age, dead letters, pause, rates.
    Lanes,
    /// Pause a lane (to_respondio or to_provider); until resumed, or --for-secs.
    Pause {
        channel: String,
        direction: String,
        #[arg(long)]
        for_secs: Option<u64>,
    },
    /// Resume a paused lane.
    Resume { channel: String, direction: String },
    /// Delete everything stored about one contact.
    Purge { channel: String, contact: String },
    /// The audit log.
    Audit {
        #[arg(long)]
        actor: Option<String>,
        #[command(flatten)]
        page: PageArgs,
    },
    /// HTTP exchanges by channel and/or mId.
    Logs {
        #[arg(long)]
        channel: Option<String>,
        #[arg(long)]
        mid: Option<String>,
        #[command(flatten)]
        page: PageArgs,
    },
}

/// Runs one admin command, writing its output to `out`.
pub async fn run(args: AdminArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let client = Client {
        http: reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(60))
            .build()?,
        base: args.url.trim_end_matches('/').to_string(),
        token: args.token.clone(),
    };
    let (value, table) = match &args.command {
        AdminCommand::Messages {
            filter,
            state,
            page,
        } => {
            let mut q = filter.pairs();
            q.extend(state.clone().map(|s| ("state", s)));
            q.extend(page.pairs());
            let v = client.get("/admin/messages", &q).await?;
            let t = message_table(&v);
            (v, t)
        }
        AdminCommand::Show { mid } => {
            let v = client
                .get(&format!("/admin/messages/{}", encode(mid)), &[])
                .await?;
            let t = show_table(&v);
            (v, t)
        }
        AdminCommand::Dead { filter, page } => {
            let mut q = filter.pairs();
            q.extend(page.pairs());
            let v = client.get("/admin/dead-letters", &q).await?;
            let t = message_table(&v);
            (v, t)
        }
        AdminCommand::Replay {
            ids, filter, limit, ..
        }
        | AdminCommand::Discard { ids, filter, limit } => {
            let (action, force) = match &args.command {
                AdminCommand::Replay { force, .. } => ("replay", *force),
                _ => ("discard", false),
            };
            let mut body = selection(ids, filter, *limit)?;
            if force {
                body["force"] = json!(true);
            }
            let v = client
                .post(&format!("/admin/dead-letters/{action}"), body)
                .await?;
            let t = summary_table(&v);
            (v, t)
        }
        AdminCommand::Raw { channel, page } => {
            let mut q: Vec<(&str, String)> = channel
                .clone()
                .map(|c| ("channel", c))
                .into_iter()
                .collect();
            q.extend(page.pairs());
            let v = client.get("/admin/raw-webhooks", &q).await?;
            let t = table(
                &["ID", "CHANNEL", "ROUTE", "RECEIVED", "REASON"],
                items(&v)
                    .iter()
                    .map(|r| {
                        vec![
                            s(&r["id"]),
                            s(&r["channel"]),
                            s(&r["route"]),
                            time(&r["received_ms"]),
                            s(&r["reason"]),
                        ]
                    })
                    .collect(),
            );
            (v, t)
        }
        AdminCommand::ReplayRaw { id } => {
            let v = client
                .post(&format!("/admin/raw-webhooks/{id}/replay"), json!({}))
                .await?;
            let t = summary_table(&v);
            (v, t)
        }
        AdminCommand::DiscardRaw { id } => {
            let v = client
                .post(&format!("/admin/raw-webhooks/{id}/discard"), json!({}))
                .await?;
            let t = summary_table(&v);
            (v, t)
        }
        AdminCommand::Lanes => {
            let v = client.get("/admin/lanes", &[]).await?;
            let rows = v["lanes"].as_array().cloned().unwrap_or_default();
            let t = table(
                &[
                    "CHANNEL",
                    "DIRECTION",
                    "DEPTH",
                    "OLDEST",
                    "DEAD",
                    "PAUSED",
                    "CIRCUIT",
                    "REQ/S",
                    "LIMIT/S",
                ],
                rows.iter()
                    .map(|l| {
                        vec![
                            s(&l["channel"]),
                            s(&l["direction"]),
                            s(&l["depth"]),
                            l["oldest_pending_age_ms"]
                                .as_i64()
                                .map_or("-".into(), |ms| format!("{:.1}s", ms as f64 / 1000.0)),
                            s(&l["dead"]),
                            if l["paused_indefinitely"] == true {
                                "until resumed".into()
                            } else if l["paused"] == true {
                                format!("until {}", time(&l["paused_until_ms"]))
                            } else {
                                "no".into()
                            },
                            if l["circuit_open"] == true {
                                "open".into()
                            } else {
                                "closed".into()
                            },
                            format!("{:.2}", l["requests_per_sec"].as_f64().unwrap_or(0.0)),
                            s(&l["rate_limit_per_sec"]),
                        ]
                    })
                    .collect(),
            );
            (v, t)
        }
        AdminCommand::Pause {
            channel,
            direction,
            for_secs,
        } => {
            let body = match for_secs {
                Some(n) => json!({"for_secs": n}),
                None => json!({}),
            };
            let v = client
                .post(
                    &format!(
                        "/admin/lanes/{}/{}/pause",
                        encode(channel),
                        encode(direction)
                    ),
                    body,
                )
                .await?;
            let t = summary_table(&v);
            (v, t)
        }
        AdminCommand::Resume { channel, direction } => {
            let v = client
                .post(
                    &format!(
                        "/admin/lanes/{}/{}/resume",
                        encode(channel),
                        encode(direction)
                    ),
                    json!({}),
                )
                .await?;
            let t = summary_table(&v);
            (v, t)
        }
        AdminCommand::Purge { channel, contact } => {
            let v = client
                .post(
                    "/admin/contacts/purge",
                    json!({"channel": channel, "contact": contact}),
                )
                .await?;
            let t = summary_table(&v["purged"]);
            (v, t)
        }
        AdminCommand::Audit { actor, page } => {
            let mut q: Vec<(&str, String)> =
                actor.clone().map(|a| ("actor", a)).into_iter().collect();
            q.extend(page.pairs());
            let v = client.get("/admin/audit", &q).await?;
            let t = table(
                &["ID", "WHEN", "WHO", "ACTION", "TARGET", "DETAIL"],
                items(&v)
                    .iter()
                    .map(|a| {
                        vec![
                            s(&a["id"]),
                            time(&a["at_ms"]),
                            s(&a["actor"]),
                            s(&a["action"]),
                            s(&a["target"]),
                            s(&a["detail"]),
                        ]
                    })
                    .collect(),
            );
            (v, t)
        }
        AdminCommand::Logs { channel, mid, page } => {
            let mut q: Vec<(&str, String)> = Vec::new();
            q.extend(channel.clone().map(|c| ("channel", c)));
            q.extend(mid.clone().map(|m| ("mid", m)));
            q.extend(page.pairs());
            let v = client.get("/admin/channel-logs", &q).await?;
            let t = log_table(items(&v));
            (v, t)
        }
    };
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
    } else {
        write!(out, "{table}")?;
        if let Some(c) = value.get("next_cursor").and_then(Value::as_str) {
            writeln!(out, "(more: --cursor {c})")?;
        }
    }
    Ok(())
}

fn selection(ids: &[i64], filter: &FilterArgs, limit: Option<usize>) -> anyhow::Result<Value> {
    match (ids.is_empty(), filter.is_empty()) {
        (false, true) => Ok(json!({"ids": ids})),
        (true, false) => {
            let mut v = json!({"filter": filter.json()});
            if let Some(l) = limit {
                v["limit"] = json!(l);
            }
            Ok(v)
        }
        (false, false) => anyhow::bail!("give --id or filters, not both"),
        (true, true) => {
            anyhow::bail!("give --id N (repeatable) or filters (--channel, --contact, ...)")
        }
    }
}

struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    async fn get(&self, path: &str, query: &[(&str, String)]) -> anyhow::Result<Value> {
        let mut url = format!("{}{path}", self.base);
        if !query.is_empty() {
            url.push('?');
            url.push_str(&serde_urlencoded::to_string(query)?);
        }
        let req = self.http.get(url);
        self.call(req).await
    }

    async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let req = self.http.post(format!("{}{path}", self.base)).json(&body);
        self.call(req).await
    }

    async fn call(&self, req: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let resp = req
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach {}: {e}", self.base))?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let msg = body["error"]["message"]
                .as_str()
                .unwrap_or("no error message");
            anyhow::bail!("{} answered {}: {msg}", self.base, status.as_u16());
        }
        Ok(body)
    }
}

fn encode(segment: &str) -> String {
    url::form_urlencoded::byte_serialize(segment.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

fn items(v: &Value) -> &[Value] {
    v["items"].as_array().map(Vec::as_slice).unwrap_or(&[])
}

/// A cell: strings bare, null as "-", anything else as JSON.
fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(t) => t.replace(['\n', '\t'], " "),
        other => other.to_string(),
    }
}

/// Epoch ms as UTC `YYYY-MM-DD HH:MM:SS`.
fn time(v: &Value) -> String {
    let Some(ms) = v.as_i64() else {
        return "-".into();
    };
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Columns padded to their widest cell; long cells cut at 60 characters.
fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let cut = |c: &str| -> String {
        if c.chars().count() > 60 {
            format!("{}…", c.chars().take(59).collect::<String>())
        } else {
            c.to_string()
        }
    };
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .map(|r| r.iter().map(|c| cut(c)).collect())
        .collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| -> String {
        let mut l = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c}{}", " ".repeat(widths[i] - c.chars().count())))
            .collect::<Vec<_>>()
            .join("  ");
        l.truncate(l.trim_end().len());
        l + "\n"
    };
    let mut out = line(headers.iter().map(|h| h.to_string()).collect());
    if rows.is_empty() {
        out.push_str("(none)\n");
    }
    for r in rows {
        out.push_str(&line(r));
    }
    out
}

fn message_table(v: &Value) -> String {
    table(
        &[
            "ID",
            "CHANNEL",
            "DIRECTION",
            "KIND",
            "MID",
            "CONTACT",
            "STATE",
            "STATUS",
            "TRIES",
            "CREATED",
            "LAST ERROR",
        ],
        items(v)
            .iter()
            .map(|m| {
                vec![
                    s(&m["id"]),
                    s(&m["channel"]),
                    s(&m["direction"]),
                    s(&m["kind"]),
                    s(&m["mid"]),
                    s(&m["contact"]),
                    if m["discarded"] == true {
                        "discarded".into()
                    } else {
                        s(&m["state"])
                    },
                    s(&m["status"]),
                    s(&m["attempts"]),
                    time(&m["created_ms"]),
                    s(&m["last_error"]),
                ]
            })
            .collect(),
    )
}

fn log_table(rows: &[Value]) -> String {
    table(
        &[
            "WHEN", "MID", "DIR", "KIND", "METHOD", "URL", "STATUS", "MS", "ERROR",
        ],
        rows.iter()
            .map(|l| {
                vec![
                    time(&l["at_ms"]),
                    s(&l["mid"]),
                    s(&l["direction"]),
                    s(&l["kind"]),
                    s(&l["method"]),
                    s(&l["url"]),
                    s(&l["status"]),
                    s(&l["duration_ms"]),
                    s(&l["error"]),
                ]
            })
            .collect(),
    )
}

fn show_table(v: &Value) -> String {
    let mut out = message_table(&json!({"items": [v["message"].clone()]}));
    out.push('\n');
    out.push_str(&table(
        &["WHEN", "SOURCE", "EVENT", "DETAIL"],
        v["timeline"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[])
            .iter()
            .map(|e| {
                vec![
                    time(&e["at_ms"]),
                    s(&e["source"]),
                    s(&e["event"]),
                    s(&e["detail"]),
                ]
            })
            .collect(),
    ));
    if let Some(logs) = v["channel_logs"].as_array().filter(|l| !l.is_empty()) {
        out.push('\n');
        out.push_str(&log_table(logs));
    }
    out
}

/// An object's fields as KEY  VALUE lines.
fn summary_table(v: &Value) -> String {
    let rows = v
        .as_object()
        .map(|m| m.iter().map(|(k, val)| vec![k.clone(), s(val)]).collect())
        .unwrap_or_default();
    table(&["FIELD", "VALUE"], rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_utc() {
        assert_eq!(time(&json!(0)), "1970-01-01 00:00:00");
        assert_eq!(time(&json!(1_709_251_199_000i64)), "2024-02-29 23:59:59");
        assert_eq!(time(&Value::Null), "-");
    }

    #[test]
    fn tables_align_and_say_none() {
        let t = table(&["A", "BB"], vec![vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "A    BB\nxyz  1\n");
        assert!(table(&["A"], vec![]).contains("(none)"));
    }

    #[test]
    fn selection_needs_ids_or_filters() {
        let none = FilterArgs::default();
        assert!(selection(&[], &none, None).is_err());
        assert_eq!(selection(&[3], &none, None).unwrap(), json!({"ids": [3]}));
        let f = FilterArgs {
            channel: Some("sms".into()),
            since: Some(5),
            ..Default::default()
        };
        assert_eq!(
            selection(&[], &f, Some(7)).unwrap(),
            json!({"filter": {"channel": "sms", "since": 5}, "limit": 7})
        );
        assert!(selection(&[1], &f, None).is_err());
    }
}
