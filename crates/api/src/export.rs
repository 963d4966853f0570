//! `ExportViews`: every counter of the views at one checkpoint, streamed in
//! chunks (what `kpictl verify` compares with a rebuild).
//!
//! The views are read part by part while the fold waits (so the export is
//! of one checkpoint) and spilled to an anonymous temporary file; the fold
//! goes on and the chunks are sent from the file as the client takes them.
//! Memory holds a chunk at a time however large the views, and a slow
//! client holds up nothing.

use std::io::{BufReader, BufWriter, Read, Seek, Write};
use std::pin::Pin;
use std::sync::Arc;

use kpi_domain::{Counter, Day};
use kpi_store::{ExportPart, Store};
use prost::Message;
use tokio_stream::Stream;
use tonic::Status;

use crate::pb;

/// Day rows per chunk: about 100 KiB.
const DAYS_PER_CHUNK: usize = 1000;

pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<pb::ViewsChunk, Status>> + Send>>;

/// What the caller may see: a unit's counters on a day, its open cases.
pub type Visible = Box<dyn Fn(&str, Option<Day>) -> bool + Send>;

fn chunk_of(part: ExportPart, visible: &Visible) -> pb::ViewsChunk {
    match part {
        ExportPart::Head {
            checkpoint,
            live_day,
            open,
        } => pb::ViewsChunk {
            stream_sequence: checkpoint,
            live_day: live_day
                .map(|day| day.to_date().to_string())
                .unwrap_or_default(),
            counters: Counter::ALL
                .iter()
                .map(|counter| counter.name().to_owned())
                .collect(),
            days: Vec::new(),
            open: open
                .into_iter()
                .filter(|(unit_id, ..)| visible(unit_id, None))
                .map(|(unit_id, open, without_apology)| pb::OpenCases {
                    unit_id,
                    open: u64::from(open),
                    without_apology: u64::from(without_apology),
                })
                .collect(),
        },
        ExportPart::Days(rows) => pb::ViewsChunk {
            days: rows
                .into_iter()
                .filter(|(unit_id, day, _)| visible(unit_id, Some(*day)))
                .map(|(unit_id, day, counters)| pb::DayCounters {
                    unit_id,
                    day: day.to_date().to_string(),
                    counts: counters.iter().map(|(_, value)| value).collect(),
                })
                .collect(),
            ..pb::ViewsChunk::default()
        },
    }
}

fn io_error(err: std::io::Error) -> Status {
    Status::internal(format!(
        "the export could not be staged in a temporary file: {err}"
    ))
}

/// Why a part could not be staged.
struct Staging(Status);

impl From<kpi_store::StoreError> for Staging {
    fn from(error: kpi_store::StoreError) -> Self {
        Staging(crate::internal(error))
    }
}

/// Spills the export of `store` (what `visible` lets through) and
/// streams it.
pub fn chunks(store: Arc<Store>, visible: Visible) -> ChunkStream {
    let (sender, receiver) = tokio::sync::mpsc::channel(2);
    tokio::task::spawn_blocking(move || {
        let sent = (|| -> Result<(), Status> {
            let file = tempfile::tempfile().map_err(io_error)?;
            let mut writer = BufWriter::new(&file);
            store
                .export_each(DAYS_PER_CHUNK, |part| {
                    let bytes = chunk_of(part, &visible).encode_to_vec();
                    let length = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
                    writer
                        .write_all(&length.to_le_bytes())
                        .and_then(|()| writer.write_all(&bytes))
                        .map_err(|err| Staging(io_error(err)))
                })
                .map_err(|Staging(status)| status)?;
            writer.flush().map_err(io_error)?;
            drop(writer);
            let mut file = file;
            file.rewind().map_err(io_error)?;
            let mut reader = BufReader::new(file);
            loop {
                let mut length = [0; 4];
                match reader.read_exact(&mut length) {
                    Ok(()) => {}
                    Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                    Err(err) => return Err(io_error(err)),
                }
                let mut bytes = vec![0; u32::from_le_bytes(length) as usize];
                reader.read_exact(&mut bytes).map_err(io_error)?;
                let chunk = pb::ViewsChunk::decode(bytes.as_slice())
                    .map_err(|err| Status::internal(format!("a staged chunk: {err}")))?;
                if sender.blocking_send(Ok(chunk)).is_err() {
                    // The client went away.
                    return Ok(());
                }
            }
        })();
        if let Err(status) = sent {
            let _ = sender.blocking_send(Err(status));
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver))
}
