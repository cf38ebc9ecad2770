//! `rio-bridge bench`: the benchmark harness (see BENCHMARKS.md).
//!
//! The gateway runs as its own process, on its own SQLite file, configured like
//! production (synchronous = FULL). The respond.io emulator and the ClickSend stand-in run
//! in this process, on loopback; so does the load generator. Every scenario prints its
//! figures next to its target. `--quick` shrinks every scenario to a smoke run (CI runs
//! it so the harness keeps working; its figures mean nothing).

mod load;
mod proc;
mod scenarios;

use std::net::SocketAddr;

use clap::{Args, Subcommand, ValueEnum};

pub use proc::serve_bare;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// 1. Provider webhooks accepted durably per second, p50/p99, vs a bare axum ceiling.
    Ingest,
    /// 2. A broadcast burst of /message calls accepted, then drained at the provider rate.
    Outbound,
    /// 3. 200 channels drained toward respond.io at 20/s each.
    Ratelimit,
    /// 4. Provider webhook in → respond.io receives, with no backlog.
    Latency,
    /// 5 and 6. RSS idle and with a large queue; start-up to ready with that queue.
    Backlog,
    /// 7. An agent's reply while a broadcast drains.
    Conversation,
    All,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: Option<BenchCommand>,
    /// Which scenario to run.
    #[arg(long, value_enum, default_value_t = Scenario::All)]
    pub scenario: Scenario,
    /// A small smoke run of every scenario (no meaningful figures).
    #[arg(long)]
    pub quick: bool,
    /// Where the gateway's store and logs go (default: a temp dir, removed afterwards).
    #[arg(long)]
    pub dir: Option<std::path::PathBuf>,
    /// Run on PostgreSQL instead of SQLite (ingest and outbound only): each scenario gets
    /// a fresh schema in this database, dropped afterwards.
    #[arg(long, env = "RIO_BENCH_PG_URL")]
    pub pg_url: Option<String>,
    /// Gateway nodes sharing the PostgreSQL store; the load is spread over all of them.
    #[arg(long, default_value_t = 1)]
    pub nodes: usize,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// The bare axum server used as the ingest ceiling (started by the harness).
    #[command(hide = true)]
    BareServer {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Builds (or reuses from the cache) a store aged by a week of history, as the soak
    /// suite and the aged-store scenarios run on, and copies it to `--out`.
    Aged {
        /// Items of history.
        #[arg(long, default_value_t = 10_000_000)]
        items: u64,
        /// The channel the history belongs to.
        #[arg(long, default_value = "sms")]
        channel: String,
        /// Where the copy goes: a SQLite file, or with `--pg-url` the name of the database
        /// made from the cached template.
        #[arg(long)]
        out: String,
    },
}

/// One figure of a scenario, with its target if it has one.
#[derive(Debug, Clone)]
pub struct Figure {
    pub name: String,
    pub value: f64,
    pub unit: &'static str,
    /// (comparison, bound): "≥" or "≤".
    pub target: Option<(&'static str, f64)>,
}

impl Figure {
    pub fn new(name: impl Into<String>, value: f64, unit: &'static str) -> Figure {
        Figure {
            name: name.into(),
            value,
            unit,
            target: None,
        }
    }
    pub fn at_least(mut self, bound: f64) -> Figure {
        self.target = Some(("≥", bound));
        self
    }
    pub fn at_most(mut self, bound: f64) -> Figure {
        self.target = Some(("≤", bound));
        self
    }
    pub fn met(&self) -> Option<bool> {
        self.target.map(|(cmp, b)| {
            if cmp == "≥" {
                self.value >= b
            } else {
                self.value <= b
            }
        })
    }
}

pub struct Report {
    pub scenario: &'static str,
    pub figures: Vec<Figure>,
    pub notes: Vec<String>,
}

fn print_report(r: &Report, quick: bool) {
    println!("\n== {}", r.scenario);
    for f in &r.figures {
        let target = match (f.target, f.met()) {
            (Some((cmp, b)), Some(ok)) if !quick => {
                format!(
                    "target {cmp} {b} {} → {}",
                    f.unit,
                    if ok { "met" } else { "MISSED" }
                )
            }
            (Some((cmp, b)), _) => format!("target {cmp} {b} {}", f.unit),
            _ => String::new(),
        };
        println!(
            "  {:<44} {:>12.2} {:<8} {}",
            f.name, f.value, f.unit, target
        );
    }
    for n in &r.notes {
        println!("  note: {n}");
    }
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.command {
        Some(BenchCommand::BareServer { listen }) => return serve_bare(listen).await,
        Some(BenchCommand::Aged {
            items,
            channel,
            out,
        }) => {
            let spec = crate::store::aged::AgeSpec::week(&channel, items);
            let r = match &args.pg_url {
                Some(url) => {
                    let (run_url, r) =
                        crate::store::postgres::aged::aged_database(&spec, url, &out).await?;
                    println!("database: {run_url}");
                    r
                }
                None => {
                    tokio::task::spawn_blocking(move || {
                        crate::store::sqlite::aged::aged_copy(
                            &spec,
                            &crate::store::aged::cache_dir(),
                            std::path::Path::new(&out),
                        )
                    })
                    .await??
                }
            };
            println!(
                "aged store: {} items, {} in {:.1} s",
                r.items,
                if r.cached {
                    "copied from the cache"
                } else {
                    "built"
                },
                r.build_secs
            );
            return Ok(());
        }
        None => {}
    }
    let tmp;
    let dir = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let q = args.quick;
    let cluster = scenarios::Cluster {
        pg_url: args.pg_url.clone(),
        nodes: args.nodes,
    };
    if args.nodes == 0 || (args.nodes > 1 && args.pg_url.is_none()) {
        anyhow::bail!("--nodes above 1 needs --pg-url (nodes share a PostgreSQL store)");
    }
    if cluster.pg_url.is_some() && !matches!(args.scenario, Scenario::Ingest | Scenario::Outbound) {
        anyhow::bail!("--pg-url runs the ingest and outbound scenarios only: pass --scenario");
    }
    let want = |s: Scenario| args.scenario == Scenario::All || args.scenario == s;
    println!(
        "rio-bridge bench{}: {} cores, {}, store in {}",
        if q {
            " --quick (smoke run: figures are not meaningful)"
        } else {
            ""
        },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        match &cluster.pg_url {
            Some(_) => format!("PostgreSQL, {} node(s)", cluster.nodes),
            None => "SQLite".to_string(),
        },
        dir.display()
    );
    let mut reports = Vec::new();
    let plan: [(Scenario, &str); 6] = [
        (Scenario::Ingest, "ingest"),
        (Scenario::Outbound, "outbound"),
        (Scenario::Ratelimit, "ratelimit"),
        (Scenario::Latency, "latency"),
        (Scenario::Backlog, "backlog"),
        (Scenario::Conversation, "conversation"),
    ];
    for (s, name) in plan {
        if !want(s) {
            continue;
        }
        let sdir = dir.join(name);
        std::fs::create_dir_all(&sdir)?;
        let r = match s {
            Scenario::Ingest => scenarios::ingest(&sdir, q, &cluster).await?,
            Scenario::Outbound => scenarios::outbound(&sdir, q, &cluster).await?,
            Scenario::Ratelimit => scenarios::ratelimit(&sdir, q).await?,
            Scenario::Latency => scenarios::latency(&sdir, q).await?,
            Scenario::Backlog => scenarios::backlog(&sdir, q).await?,
            Scenario::Conversation => scenarios::conversation(&sdir, q).await?,
            Scenario::All => unreachable!(),
        };
        print_report(&r, q);
        reports.push(r);
    }
    let missed: Vec<String> = reports
        .iter()
        .flat_map(|r| r.figures.iter().map(move |f| (r.scenario, f)))
        .filter(|(_, f)| f.met() == Some(false))
        .map(|(s, f)| format!("{s}: {}", f.name))
        .collect();
    if !q {
        if missed.is_empty() {
            println!("\nall targets met");
        } else {
            println!("\ntargets missed: {}", missed.join("; "));
        }
    }
    Ok(())
}
