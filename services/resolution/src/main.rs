//! `resolution`: the specialist departments' ingest service. It takes
//! results handed back and apology letters (`POST /v1/events`), validates
//! them and publishes them to the `CASES` stream, answering only after
//! JetStream's ack.

use std::process::ExitCode;

use clap::Parser;
use kpi_ingest::server::{main as serve, ServiceArgs};
use kpi_ingest::Service;

/// The resolution service: case.resolved and case.apology_issued over HTTP.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    service: ServiceArgs,
}

fn main() -> ExitCode {
    serve(Service::Resolution, Args::parse().service, None)
}
