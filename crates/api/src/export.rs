//! `ExportViews`: every counter of the views at one checkpoint, streamed in
//! chunks (what `kpictl verify` compares with a rebuild).

use std::pin::Pin;

use kpi_domain::Counter;
use kpi_store::ViewsExport;
use tokio_stream::Stream;
use tonic::Status;

use crate::pb;

/// Day rows per chunk: about 100 KiB.
const DAYS_PER_CHUNK: usize = 1000;

pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<pb::ViewsChunk, Status>> + Send>>;

pub fn chunks(export: ViewsExport) -> ChunkStream {
    let mut chunks = vec![pb::ViewsChunk {
        stream_sequence: export.checkpoint,
        live_day: export
            .live_day
            .map(|day| day.to_date().to_string())
            .unwrap_or_default(),
        counters: Counter::ALL
            .iter()
            .map(|counter| counter.name().to_owned())
            .collect(),
        days: Vec::new(),
        open: export
            .open
            .into_iter()
            .map(|(unit_id, open, without_apology)| pb::OpenCases {
                unit_id,
                open: u64::from(open),
                without_apology: u64::from(without_apology),
            })
            .collect(),
    }];
    for rows in export.days.chunks(DAYS_PER_CHUNK) {
        chunks.push(pb::ViewsChunk {
            days: rows
                .iter()
                .map(|(unit_id, day, counters)| pb::DayCounters {
                    unit_id: unit_id.clone(),
                    day: day.to_date().to_string(),
                    counts: counters.iter().map(|(_, value)| value).collect(),
                })
                .collect(),
            ..pb::ViewsChunk::default()
        });
    }
    Box::pin(tokio_stream::iter(chunks.into_iter().map(Ok)))
}
