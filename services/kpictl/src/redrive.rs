//! `kpictl redrive [--sequence N ...]`: sends parked events again after a
//! fix (a unit added to the registry, say).
//!
//! Each chosen event is validated again, as of now and against the current
//! registry; a valid one is published on its own subject with the header
//! `Kpi-Redrive-Of: <parked sequence>` (its `Nats-Msg-Id` the hash of that
//! header and the body, so a redrive sent twice is stored once). The projector then counts it — once, since
//! events are deduplicated by case and event id — and retires the parked
//! copy. What is still invalid is reported with its reason again.
//!
//! Only events kept aside as invalid are sent: one kept aside because its
//! case already held as much as one may, or as the loser of an identity
//! conflict, would be kept aside again, and the log, which is never
//! purged, would grow by a copy on every run. So running it twice changes
//! nothing.

use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use kpi_api::pb::{ListRejectedRequest, RejectedEvent};
use kpi_events::{parse_event, Validation};
use serde_json::json;

use crate::query::{connect, status_error};
use crate::{ApiArgs, BusArgs};

#[derive(Debug, Args)]
pub struct RedriveArgs {
    /// The stream sequences of the parked events to send again (as
    /// `kpictl rejected` lists them); none: every one that is valid now.
    #[arg(long = "sequence", value_name = "N")]
    pub sequences: Vec<u64>,
    #[command(flatten)]
    pub bus: BusArgs,
    #[command(flatten)]
    pub api: ApiArgs,
    /// Only say what would be sent.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Parked events per `ListRejected` page.
const PAGE: u32 = 1000;

/// Every event the projector keeps aside, oldest first.
pub(crate) async fn all_parked(api: &ApiArgs) -> anyhow::Result<Vec<RejectedEvent>> {
    let mut client = connect(api).await?;
    let mut events = Vec::new();
    let mut after = 0;
    loop {
        let page = client
            .list_rejected(ListRejectedRequest {
                after_sequence: after,
                limit: PAGE,
            })
            .await
            .map_err(status_error)?
            .into_inner()
            .events;
        let Some(last) = page.last() else { break };
        after = last.stream_sequence;
        events.extend(page);
    }
    Ok(events)
}

pub async fn run(args: RedriveArgs) -> anyhow::Result<ExitCode> {
    let units = crate::load_units(&args.bus.units)?;
    let parked = all_parked(&args.api).await?;
    let mut chosen = Vec::new();
    let mut unknown = Vec::new();
    if args.sequences.is_empty() {
        chosen = parked;
    } else {
        for sequence in &args.sequences {
            match parked
                .iter()
                .find(|event| event.stream_sequence == *sequence)
            {
                Some(event) => chosen.push(event.clone()),
                None => unknown.push(*sequence),
            }
        }
    }
    // An older projector names no cause: its entries are sent as invalid.
    let (chosen, kept): (Vec<RejectedEvent>, Vec<RejectedEvent>) = chosen
        .into_iter()
        .partition(|event| matches!(event.cause.as_str(), "" | "invalid"));
    let not_redrivable: Vec<(u64, String)> = kept
        .iter()
        .map(|event| (event.stream_sequence, event.cause.clone()))
        .collect();

    let bus = if args.dry_run {
        None
    } else {
        let bus = args.bus.nats.connect("kpictl-redrive").await?;
        bus.ensure_stream().await?;
        Some(bus)
    };
    let validation = Validation::now(&units);
    // kpictl publishes as its NATS user: the events say so (Kpi-Sender).
    let sender = crate::publisher_name("redrive", &args.bus.nats);
    let mut sent = Vec::new();
    let mut still_invalid = Vec::new();
    let mut held_by_stream = Vec::new();
    for parked in chosen {
        let event = match parse_event(&parked.payload, &validation) {
            Ok(event) => event,
            Err(error) => {
                still_invalid.push((parked.stream_sequence, error.to_string()));
                continue;
            }
        };
        let Some(bus) = &bus else {
            sent.push((parked.stream_sequence, event.subject(), None));
            continue;
        };
        let ack = bus
            .publish_redrive(
                event.subject(),
                parked.stream_sequence,
                parked.payload.clone().into(),
                &sender,
            )
            .await?
            .await
            .with_context(|| {
                format!(
                    "redriving sequence {}: JetStream did not store it; run redrive again",
                    parked.stream_sequence
                )
            })?;
        if ack.duplicate {
            // An earlier run sent this redrive already and the projector
            // has not folded it yet: JetStream dropped the copy.
            held_by_stream.push((parked.stream_sequence, ack.sequence));
            continue;
        }
        sent.push((parked.stream_sequence, event.subject(), Some(ack.sequence)));
    }

    if args.json {
        let report = json!({
            "sent": sent.iter().map(|(parked, subject, sequence)| json!({
                "parked_sequence": parked, "subject": subject, "stream_sequence": sequence,
            })).collect::<Vec<_>>(),
            "still_invalid": still_invalid.iter().map(|(sequence, reason)| json!({
                "parked_sequence": sequence, "reason": reason,
            })).collect::<Vec<_>>(),
            "not_parked": unknown,
            "not_sent_kept_aside": not_redrivable.iter().map(|(sequence, cause)| json!({
                "parked_sequence": sequence, "cause": cause,
            })).collect::<Vec<_>>(),
            "already_sent": held_by_stream.iter().map(|(sequence, stored)| json!({
                "parked_sequence": sequence, "stream_sequence": stored,
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for (parked, subject, sequence) in &sent {
            match sequence {
                Some(sequence) => {
                    println!("sự kiện số {parked}: đã gửi lại trên {subject}, thành sự kiện số {sequence}")
                }
                None => println!("sự kiện số {parked}: sẽ được gửi lại trên {subject}"),
            }
        }
        for (sequence, reason) in &still_invalid {
            println!(
                "sự kiện số {sequence}: vẫn chưa hợp lệ: {}",
                crate::vietnamese::reason_vi(reason)
            );
        }
        for sequence in &unknown {
            println!(
                "sự kiện số {sequence}: không nằm trong các sự kiện để riêng (đã gửi lại rồi, hoặc chưa từng bị để riêng)"
            );
        }
        for (sequence, cause) in &not_redrivable {
            let why = match cause.as_str() {
                "conflict" => {
                    "nó thua trong một lần trùng mã khác nội dung và không bao giờ được tính"
                }
                _ => "hồ sơ của nó đã đạt mức tối đa cho một hồ sơ",
            };
            println!("sự kiện số {sequence}: không gửi: {why}; gửi lại thì nó lại bị để riêng");
        }
        for (sequence, stored) in &held_by_stream {
            println!(
                "sự kiện số {sequence}: đã được gửi lại (sự kiện số {stored}); projector chưa tính \
                 nó: xem lại sau giây lát"
            );
        }
        println!(
            "{} đã gửi lại, {} vẫn chưa hợp lệ, {} không gửi (để riêng vì giới hạn hoặc trùng mã){}",
            sent.len(),
            still_invalid.len(),
            not_redrivable.len(),
            if unknown.is_empty() {
                String::new()
            } else {
                format!(", {} không bị để riêng", unknown.len())
            }
        );
    }
    Ok(if still_invalid.is_empty() && unknown.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
