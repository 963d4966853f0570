//! `kpictl import FILE`: validate every line, publish the valid ones with
//! `Nats-Msg-Id` = `event_id`, report the rest by line number and reason.
//!
//! Re-running an import is safe: events already in the stream are dropped by
//! JetStream within its duplicate window and by the projector after it.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use kpi_bus::Bus;
use kpi_events::parse_event;
use serde_json::json;

use crate::publish::Publisher;
use crate::{load_units, BusArgs};

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The NDJSON file, one event a line (`-` reads standard input).
    pub file: PathBuf,
    #[command(flatten)]
    pub bus: BusArgs,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

struct Rejected {
    line: usize,
    field: Option<String>,
    reason: String,
}

pub async fn run(args: ImportArgs) -> anyhow::Result<ExitCode> {
    let units = load_units(&args.bus.units)?;
    let reader: Box<dyn BufRead> = if args.file.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        let file = std::fs::File::open(&args.file)
            .with_context(|| format!("opening {}", args.file.display()))?;
        Box::new(std::io::BufReader::new(file))
    };
    let bus = Bus::connect(&args.bus.nats_url, "kpictl-import").await?;
    bus.ensure_stream().await?;
    let mut publisher = Publisher::new(bus);

    let mut rejected = Vec::new();
    let mut acks = Vec::new();
    let mut lines = 0usize;
    for (index, line) in reader.split(b'\n').enumerate() {
        let number = index + 1;
        let mut line = line.with_context(|| format!("reading line {number}"))?;
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        lines += 1;
        match parse_event(&line, &units) {
            Ok(event) => {
                let sent = publisher
                    .send(number, event.subject(), &event.event_id.to_string(), Bytes::from(line))
                    .await
                    .with_context(|| {
                        format!("publishing line {number}; the lines before it were sent (re-running the import is safe)")
                    })?;
                acks.extend(sent);
            }
            Err(error) => rejected.push(Rejected {
                line: number,
                field: error.field().map(str::to_owned),
                reason: error.to_string(),
            }),
        }
    }
    acks.extend(publisher.finish().await);

    let mut failed: Vec<(usize, String)> = Vec::new();
    let mut duplicates = 0;
    for (line, ack) in &acks {
        match ack {
            Ok(ack) if ack.duplicate => duplicates += 1,
            Ok(_) => {}
            Err(err) => failed.push((*line, err.clone())),
        }
    }
    failed.sort();
    let accepted = acks.len() - failed.len();

    if args.json {
        let report = json!({
            "lines": lines,
            "accepted": accepted,
            "already_in_stream": duplicates,
            "rejected": rejected.iter().map(|r| json!({"line": r.line, "field": r.field, "reason": r.reason})).collect::<Vec<_>>(),
            "not_stored": failed.iter().map(|(line, reason)| json!({"line": line, "reason": reason})).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for item in &rejected {
            println!("line {}: rejected: {}", item.line, item.reason);
        }
        for (line, reason) in &failed {
            println!("line {line}: not stored by JetStream: {reason}");
        }
        println!(
            "{lines} lines: {accepted} accepted ({duplicates} already in the stream), {} rejected{}",
            rejected.len(),
            if failed.is_empty() { String::new() } else { format!(", {} not stored", failed.len()) }
        );
    }
    if !failed.is_empty() {
        anyhow::bail!(
            "{} valid lines were not stored by JetStream; run the import again (duplicates are dropped)",
            failed.len()
        );
    }
    Ok(if rejected.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
