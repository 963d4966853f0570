//! `intake`: the one-stop desk's ingest service. It takes cases received,
//! returned for papers, withdrawn, paid and synced (`POST /v1/events`), and
//! the DVCQG dossier snapshots the provincial system already sends to the
//! national portal (`POST /v1/dvcqg`), validates them and publishes them to
//! the `CASES` stream, answering only after JetStream's ack.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use kpi_ingest::server::{main as serve, ServiceArgs};
use kpi_ingest::Service;

/// The intake service: cases received, supplement requests, withdrawals,
/// payments, portal syncs, and DVCQG dossier snapshots, over HTTP.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    service: ServiceArgs,
    /// Maps the province's DVCQG field codes (MaLinhVuc) to contract field
    /// codes: JSON {"<MaLinhVuc>": "dat_dai", ...}.
    #[arg(long, env = "KPI_FIELD_MAP")]
    field_map: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    serve(Service::Intake, args.service, args.field_map)
}
