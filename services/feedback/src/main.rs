//! `feedback`: the ratings kiosk's and complaints desk's ingest service. It
//! takes satisfaction ratings and feedback (phản ánh, kiến nghị) received
//! and answered (`POST /v1/events`), validates them and publishes them to
//! the `CASES` stream, answering only after JetStream's ack.

use std::process::ExitCode;

use clap::Parser;
use kpi_ingest::server::{main as serve, ServiceArgs};
use kpi_ingest::Service;

/// The feedback service: case.rated, feedback.received and
/// feedback.resolved over HTTP.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    service: ServiceArgs,
}

fn main() -> ExitCode {
    serve(Service::Feedback, Args::parse().service, None)
}
