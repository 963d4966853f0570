//! `kpictl`: the operators' tool (CONTRACT §6).
//!
//! Every subcommand prints a table for people, or JSON with `--json` for
//! scripts. Those that publish take `--nats-url` and `--units`; those that
//! read the API take `--addr`.

#![recursion_limit = "256"]

mod audit;
mod bench;
mod flow;
mod import;
mod query;
mod redrive;
mod report;
mod simulate;
mod token;
mod vietnamese;
mod views;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Operate the one-stop desk KPI system: import events, read rates, simulate traffic, benchmark."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate and publish events from a file: NDJSON (one event a line),
    /// a CSV export, or DVCQG payloads. Exit status 1 when any line was
    /// rejected.
    Import(import::ImportArgs),
    /// The rates of a unit for a period, from the gRPC API.
    Rates(query::RatesArgs),
    /// List the invalid events the projector kept aside, with their reason.
    Rejected(query::RejectedArgs),
    /// The tree of units of a day (the 2025 reform changed it), from the API.
    Units(query::UnitsArgs),
    /// A case's audit trail: its events read back from the log, in stream
    /// order, and what follows from them.
    Case(audit::CaseArgs),
    /// Cases whose events wait for their case.received (counted nowhere yet).
    Held(audit::HeldArgs),
    /// Fold the whole log (or up to --until) into fresh views in a new
    /// directory, as the projector would; the live projector keeps serving.
    Replay(audit::ReplayArgs),
    /// Rebuild aside up to the live views' sequence and compare every
    /// counter; exit status 1 on any difference.
    Verify(audit::VerifyArgs),
    /// Ask the projector to rebuild its views from the log beside the live
    /// ones and switch when caught up (blue/green, no gap in service).
    Rebuild(audit::RebuildArgs),
    /// Follow a unit's rates live (WatchRates), redrawing the table.
    Watch(views::WatchArgs),
    /// Rank the units under a district or province by one KPI.
    Rank(views::RankArgs),
    /// Open cases due within N hours or overdue, by due time.
    AtRisk(views::AtRiskArgs),
    /// The QĐ 766 component scores computable from case events.
    Scores(views::ScoresArgs),
    /// Next year's targets for every unit by the rule of seed 001.
    Targets(views::TargetsArgs),
    /// The monthly public page of progress, satisfaction and QĐ 766 results
    /// (HTML for A4 with charts, or CSV).
    Report(report::ReportArgs),
    /// The quarterly case-flow report (Biểu 06): carried over, received,
    /// finished early/on time/late, still open in time or overdue, as it
    /// stood at the period's end; --out FILE.xlsx|.html|.csv for the filing.
    Flow(flow::FlowArgs),
    /// The late cases of a unit and period with their apology letters,
    /// for publishing (--out FILE.html|.csv|.xlsx).
    Late(flow::LateArgs),
    /// Send parked events again after a fix (they then count, once).
    Redrive(redrive::RedriveArgs),
    /// Make a bearer token for the projector's --tokens file (CONTRACT §8).
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Create the CASES stream, or check an existing one (as the operator).
    StreamInit(StreamInitArgs),
    /// Publish realistic synthetic traffic for the units of a registry.
    Simulate(simulate::SimulateArgs),
    /// Measure the fold rate, GetRates latency and memory against the raw
    /// bus, in one run, on a private nats-server on 127.0.0.1.
    Bench(bench::BenchArgs),
}

/// Where the bus is and which units exist.
#[derive(Debug, Clone, Args)]
pub struct BusArgs {
    #[command(flatten)]
    pub nats: kpi_bus::NatsArgs,
    /// The unit registry (JSON, CONTRACT §1).
    #[arg(long, env = "KPI_UNITS")]
    pub units: PathBuf,
}

#[derive(Debug, Args)]
pub struct StreamInitArgs {
    #[command(flatten)]
    pub nats: kpi_bus::NatsArgs,
}

/// Where the gRPC API is.
#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    /// The projector's gRPC address (https://… when it serves TLS).
    #[arg(long, env = "KPI_ADDR", default_value = "http://127.0.0.1:50051")]
    pub addr: String,
    /// The bearer token, when the projector has --tokens.
    #[arg(long, env = "KPI_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Trust this CA (PEM) for the projector's TLS certificate instead of
    /// the system's roots.
    #[arg(long, env = "KPI_CA")]
    pub ca: Option<PathBuf>,
}

pub use kpi_ingest::server::load_units;

/// Who events `kpictl <command>` publishes say sent them (`Kpi-Sender`):
/// kpictl, as the NATS user it logs in as.
pub fn publisher_name(command: &str, nats: &kpi_bus::NatsArgs) -> String {
    format!(
        "kpictl {command} ({})",
        nats.nats_user
            .as_deref()
            .unwrap_or(kpi_ingest::senders::LOCAL_SENDER)
    )
}

async fn stream_init(args: StreamInitArgs) -> anyhow::Result<ExitCode> {
    let bus = args.nats.connect("kpictl-stream-init").await?;
    let window_before = bus.set_duplicate_window().await?;
    let state = bus.stream_state().await?;
    let window = humantime::format_duration(args.nats.duplicate_window);
    println!(
        "nhật ký {} sẵn sàng: lưu trên đĩa, giữ mãi mãi, không xóa; sự kiện số {}..{}; \
         gửi lại trong vòng {window} được trả lời là trùng lặp{}",
        kpi_bus::STREAM_NAME,
        state.first_sequence,
        state.last_sequence,
        if window_before == args.nats.duplicate_window {
            String::new()
        } else {
            format!(" (trước đây {})", humantime::format_duration(window_before))
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// `kpictl … | head`: a reader that closes the pipe ends kpictl quietly,
/// with the status a shell gives a process ended by SIGPIPE (141), instead
/// of println!'s panic. (SIGPIPE itself stays ignored: restored, it would
/// also kill kpictl on a connection the server closed.)
fn quiet_on_closed_stdout() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        default_hook(info)
    }));
}

fn main() -> ExitCode {
    quiet_on_closed_stdout();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        // Plain text when stderr is a file or a pipe (a report beside it).
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: starting the async runtime: {err}");
            return ExitCode::from(2);
        }
    };
    let outcome = runtime.block_on(async {
        match cli.command {
            Command::Import(args) => import::run(args).await,
            Command::Rates(args) => query::rates(args).await,
            Command::Rejected(args) => query::rejected(args).await,
            Command::Units(args) => query::units(args).await,
            Command::Case(args) => audit::case(args).await,
            Command::Held(args) => audit::held(args).await,
            Command::Replay(args) => audit::replay(args).await,
            Command::Verify(args) => audit::verify(args).await,
            Command::Rebuild(args) => audit::rebuild(args).await,
            Command::Watch(args) => views::watch(args).await,
            Command::Rank(args) => views::rank(args).await,
            Command::AtRisk(args) => views::at_risk(args).await,
            Command::Scores(args) => views::scores(args).await,
            Command::Targets(args) => views::targets(args).await,
            Command::Report(args) => report::run(args).await,
            Command::Flow(args) => flow::flow(args).await,
            Command::Late(args) => flow::late(args).await,
            Command::Redrive(args) => redrive::run(args).await,
            Command::Token(command) => token::run(command),
            Command::StreamInit(args) => stream_init(args).await,
            Command::Simulate(args) => simulate::run(args).await,
            Command::Bench(args) => bench::run(args).await,
        }
    });
    match outcome {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}
