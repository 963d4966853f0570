//! `kpictl import FILE`: validate every line (or CSV row, or DVCQG
//! payload), publish the valid events with `Nats-Msg-Id` = `event_id`, and
//! report the rest by line number, field and reason.
//!
//! The file is read as a stream with a bounded window of acks in flight, so
//! memory stays flat however long it is; files over 10,000 lines show a
//! progress bar. Re-running an import is safe: events already in the stream
//! are dropped by JetStream within its duplicate window and by the
//! projector after it.

use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use kpi_bus::NatsArgs;
use kpi_ingest::csv::CsvEvents;
use kpi_ingest::http::ingest_dvcqg;
use kpi_ingest::server::{load_field_map, load_units};
use kpi_ingest::Sender;
use kpi_ingest::{Accepts, Ingestor, LineError, Publisher, Stored};
use serde_json::{json, Value};
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// One JSON event a line.
    Ndjson,
    /// A CSV export with a header row naming the columns (README).
    Csv,
    /// One DVCQG payload a line: a DongBoHoSoMC or CapNhatTienDoHoSoMC
    /// envelope, or a bare data array (with --madonvi).
    Dvcqg,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The file (`-` reads standard input).
    pub file: PathBuf,
    /// The file's format (default: csv for a .csv file, else ndjson).
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    #[command(flatten)]
    pub nats: NatsArgs,
    /// The unit registry (JSON, CONTRACT §1).
    #[arg(long, env = "KPI_UNITS")]
    pub units: PathBuf,
    /// How long an event may take to be stored (retried meanwhile).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub publish_deadline: Duration,
    /// DVCQG: the agency code of bare data arrays.
    #[arg(long)]
    pub madonvi: Option<String>,
    /// DVCQG: the province's field codes mapped to contract field codes.
    #[arg(long, env = "KPI_FIELD_MAP")]
    pub field_map: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Lines above which a progress bar is shown.
const PROGRESS_ABOVE_LINES: usize = 10_000;

/// What happened to the whole file. Accepted events are only counted, and
/// rejections printed as they come (kept only for the `--json` report),
/// so memory does not grow with the file.
#[derive(Default)]
struct Tally {
    lines: usize,
    accepted: usize,
    duplicates: usize,
    rejected_count: usize,
    /// Only with `--json`.
    rejected: Vec<Value>,
    not_stored: Vec<Value>,
    print_as_we_go: bool,
}

impl Tally {
    fn reject(&mut self, line: usize, what: Option<String>, error: LineError) {
        self.rejected_count += 1;
        if self.print_as_we_go {
            let what = what.map_or_else(String::new, |what| format!("{what}: "));
            println!(
                "dòng {line}: từ chối: {what}{}",
                crate::vietnamese::reason_vi(&error.reason)
            );
            return;
        }
        let mut entry = json!({
            "line": line,
            "field": error.field,
            "reason": error.reason,
        });
        if let Some(what) = what {
            entry["item"] = Value::String(what);
        }
        self.rejected.push(entry);
    }

    fn not_stored(&mut self, line: usize, reason: String) {
        if self.print_as_we_go {
            println!("dòng {line}: chưa được JetStream lưu: {reason}");
        }
        self.not_stored
            .push(json!({"line": line, "reason": reason}));
    }

    fn record(&mut self, outcomes: Vec<((usize, Uuid), Result<Stored, String>)>) {
        for ((line, _), outcome) in outcomes {
            match outcome {
                Ok(stored) => {
                    self.accepted += 1;
                    if stored.duplicate {
                        self.duplicates += 1;
                    }
                }
                Err(reason) => self.not_stored(line, reason),
            }
        }
    }
}

fn format_of(args: &ImportArgs) -> Format {
    args.format.unwrap_or_else(|| {
        let is_csv = args
            .file
            .extension()
            .and_then(|extension| extension.to_str())
            .is_some_and(|extension| extension.eq_ignore_ascii_case("csv"));
        if is_csv {
            Format::Csv
        } else {
            Format::Ndjson
        }
    })
}

/// A progress bar over the file's bytes, for files of more than
/// [`PROGRESS_ABOVE_LINES`] lines.
fn progress_for(path: &Path) -> anyhow::Result<Option<ProgressBar>> {
    if path.as_os_str() == "-" {
        return Ok(None);
    }
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let size = file.metadata()?.len();
    let mut lines = 0usize;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    loop {
        let buffer = reader.fill_buf()?;
        if buffer.is_empty() {
            break;
        }
        lines += buffer.iter().filter(|byte| **byte == b'\n').count();
        let consumed = buffer.len();
        reader.consume(consumed);
        if lines > PROGRESS_ABOVE_LINES {
            let bar = ProgressBar::new(size).with_message("0 dòng").with_style(
                ProgressStyle::with_template(
                    "nhập [{bar:40}] {percent}% của {total_bytes}, {msg}, còn khoảng {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            return Ok(Some(bar));
        }
    }
    Ok(None)
}

/// The largest file read whole as one JSON document.
const DOCUMENT_MAX_BYTES: u64 = 16 << 20;

/// A file that is one JSON document over several lines (pretty-printed,
/// as `deploy/examples/event.json` is) rather than one a line: its events
/// (or DVCQG envelopes) one a line, and a note on stderr saying so. An
/// array gives one line per element, numbered as the elements are. `None`
/// for a file whose first line is a JSON value of its own (NDJSON), for
/// standard input, and for a file over [`DOCUMENT_MAX_BYTES`].
fn one_document(path: &Path, format: Format) -> anyhow::Result<Option<Vec<u8>>> {
    if path.as_os_str() == "-" {
        return Ok(None);
    }
    let size = std::fs::metadata(path)
        .with_context(|| format!("opening {}", path.display()))?
        .len();
    if size > DOCUMENT_MAX_BYTES {
        return Ok(None);
    }
    // The first line that is not blank decides: a JSON value of its own
    // is NDJSON, read as a stream; only otherwise is the whole file read.
    let reading = |err| anyhow::anyhow!("reading {}: {err}", path.display());
    let mut lines = std::io::BufReader::new(
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?,
    );
    let mut first_line = Vec::new();
    while first_line.iter().all(u8::is_ascii_whitespace) {
        first_line.clear();
        if lines.read_until(b'\n', &mut first_line).map_err(reading)? == 0 {
            return Ok(None);
        }
    }
    if serde_json::from_slice::<serde::de::IgnoredAny>(&first_line).is_ok() {
        return Ok(None);
    }
    let text = std::fs::read(path).map_err(reading)?;
    if first_line.trim_ascii().len() == text.trim_ascii().len() {
        // One line that is not JSON: its own error, line by line.
        return Ok(None);
    }
    let Ok(document) = serde_json::from_slice::<Value>(&text) else {
        return Ok(None);
    };
    // A DVCQG payload may itself be a bare array of dossiers: one line.
    let items = match document {
        Value::Array(items) if format == Format::Ndjson => items,
        other => vec![other],
    };
    let mut lines = Vec::with_capacity(text.len());
    for item in &items {
        serde_json::to_writer(&mut lines, item)?;
        lines.push(b'\n');
    }
    eprintln!(
        "{} là một tài liệu JSON nhiều dòng, không phải mỗi dòng một {}: đọc cả tệp, {} mục \
         (số dòng trong báo cáo là số thứ tự của mục)",
        path.display(),
        if format == Format::Dvcqg {
            "gói DVCQG"
        } else {
            "sự kiện"
        },
        items.len()
    );
    Ok(Some(lines))
}

/// Counts the bytes read, for the progress bar.
struct Counted<R> {
    inner: R,
    bar: Option<ProgressBar>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        let read = self.inner.read(buffer)?;
        if let Some(bar) = &self.bar {
            bar.inc(read as u64);
        }
        Ok(read)
    }
}

pub async fn run(args: ImportArgs) -> anyhow::Result<ExitCode> {
    let units = std::sync::Arc::new(load_units(&args.units)?);
    let format = format_of(&args);
    let field_map = match format {
        Format::Dvcqg => Some(load_field_map(args.field_map.as_deref())?),
        _ => None,
    };
    let document = match format {
        Format::Ndjson | Format::Dvcqg => one_document(&args.file, format)?,
        Format::Csv => None,
    };
    let bar = match document {
        Some(_) => None,
        None => progress_for(&args.file)?,
    };
    let input: Box<dyn Read> = if let Some(lines) = document {
        Box::new(std::io::Cursor::new(lines))
    } else if args.file.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(
            std::fs::File::open(&args.file)
                .with_context(|| format!("opening {}", args.file.display()))?,
        )
    };
    let input = std::io::BufReader::with_capacity(
        1 << 20,
        Counted {
            inner: input,
            bar: bar.clone(),
        },
    );
    let bus = args.nats.connect("kpictl-import").await?;
    bus.ensure_stream().await?;
    let ingestor = Ingestor::new(bus, units, Accepts::Any, args.publish_deadline);
    // kpictl publishes as its NATS user: the events say so (Kpi-Sender).
    let sender = Sender::named(&crate::publisher_name("import", &args.nats));

    let mut tally = Tally {
        print_as_we_go: !args.json,
        ..Tally::default()
    };
    match format {
        Format::Ndjson => {
            import_ndjson(&ingestor, &sender, input, &mut tally, bar.as_ref()).await?
        }
        Format::Csv => import_csv(&ingestor, &sender, input, &mut tally, bar.as_ref()).await?,
        Format::Dvcqg => {
            let field_map = field_map.unwrap_or_default();
            import_dvcqg(
                &ingestor,
                &sender,
                &field_map,
                args.madonvi.as_deref(),
                input,
                &mut tally,
            )
            .await?
        }
    }
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }

    let unit = if format == Format::Dvcqg {
        "hồ sơ"
    } else {
        "sự kiện"
    };
    if args.json {
        let report = json!({
            "lines": tally.lines,
            "accepted": tally.accepted,
            "already_in_stream": tally.duplicates,
            "rejected": tally.rejected,
            "not_stored": tally.not_stored,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} dòng: nhận {} {unit} (trong đó {} đã có trong nhật ký từ trước), từ chối {} dòng{}",
            tally.lines,
            tally.accepted,
            tally.duplicates,
            tally.rejected_count,
            if tally.not_stored.is_empty() {
                String::new()
            } else {
                format!(", {} dòng chưa được lưu", tally.not_stored.len())
            }
        );
    }
    if let Some(violation) = ingestor.bus().violated() {
        anyhow::bail!(
            "{} valid lines were not stored: {violation}. Import as a user that may publish \
             these events (the operator, or the service user of each kind)",
            tally.not_stored.len()
        );
    }
    if !tally.not_stored.is_empty() {
        anyhow::bail!(
            "{} valid lines were not stored by JetStream; run the import again (duplicates are dropped)",
            tally.not_stored.len()
        );
    }
    Ok(if tally.rejected_count == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn show_progress(bar: Option<&ProgressBar>, tally: &Tally) {
    if let Some(bar) = bar {
        if tally.lines.is_multiple_of(1000) {
            bar.set_message(format!(
                "{} dòng, {} dòng bị từ chối",
                tally.lines, tally.rejected_count
            ));
        }
    }
}

async fn import_ndjson(
    ingestor: &Ingestor,
    sender: &Sender,
    mut input: impl BufRead,
    tally: &mut Tally,
    bar: Option<&ProgressBar>,
) -> anyhow::Result<()> {
    let mut publisher: Publisher<(usize, Uuid)> = ingestor.publisher();
    let mut line = Vec::new();
    let mut number = 0;
    loop {
        line.clear();
        if input
            .read_until(b'\n', &mut line)
            .with_context(|| format!("reading line {}", number + 1))?
            == 0
        {
            break;
        }
        number += 1;
        let bytes = line.strip_suffix(b"\n").unwrap_or(&line);
        let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        if bytes.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        tally.lines += 1;
        match ingestor.prepare(bytes, sender) {
            Ok((event, message)) => {
                let done = publisher.send((number, event.event_id), message).await;
                tally.record(done);
            }
            Err(error) => tally.reject(number, None, error),
        }
        show_progress(bar, tally);
    }
    tally.record(publisher.finish().await);
    Ok(())
}

async fn import_csv(
    ingestor: &Ingestor,
    sender: &Sender,
    input: impl Read,
    tally: &mut Tally,
    bar: Option<&ProgressBar>,
) -> anyhow::Result<()> {
    let mut rows = CsvEvents::new(input)?;
    let mut publisher: Publisher<(usize, Uuid)> = ingestor.publisher();
    while let Some((number, row)) = rows.next_event() {
        tally.lines += 1;
        match row.and_then(|event| ingestor.prepare(&event, sender)) {
            Ok((event, message)) => {
                let done = publisher.send((number, event.event_id), message).await;
                tally.record(done);
            }
            Err(error) => tally.reject(number, None, error),
        }
        show_progress(bar, tally);
    }
    tally.record(publisher.finish().await);
    Ok(())
}

async fn import_dvcqg(
    ingestor: &Ingestor,
    sender: &Sender,
    field_map: &kpi_ingest::dvcqg::FieldMap,
    madonvi: Option<&str>,
    input: impl BufRead,
    tally: &mut Tally,
) -> anyhow::Result<()> {
    for (index, line) in input.split(b'\n').enumerate() {
        let number = index + 1;
        let line = line.with_context(|| format!("reading line {number}"))?;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        tally.lines += 1;
        match ingest_dvcqg(ingestor, field_map, &line, madonvi, sender).await {
            Err(error) => tally.reject(number, None, error),
            Ok(report) => {
                for dossier in report.accepted {
                    if dossier.events.is_empty() && tally.print_as_we_go {
                        // A progress step (CapNhatTienDoHoSoMC) other than
                        // a withdrawal: valid, and nothing to count.
                        println!(
                            "dòng {number}, hồ sơ {}: hợp lệ, không sinh sự kiện nào (trong các \
                             bước xử lý chỉ việc rút hồ sơ được tính; tiếp nhận, bổ sung và trả \
                             kết quả đến từ DongBoHoSoMC)",
                            dossier.case_id.as_deref().unwrap_or("?")
                        );
                    }
                    tally.accepted += 1;
                    if dossier.events.iter().all(|event| event.duplicate) {
                        tally.duplicates += 1;
                    }
                }
                for rejected in report.rejected {
                    let error = LineError {
                        field: rejected.field,
                        reason: rejected.reason,
                    };
                    tally.reject(number, Some(format!("dossier {}", rejected.line)), error);
                }
                for unstored in report.not_stored {
                    tally.not_stored(
                        number,
                        format!(
                            "dossier {} ({}): {}",
                            unstored.line,
                            unstored.case_id.unwrap_or_default(),
                            unstored.reason
                        ),
                    );
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("file.json");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn a_pretty_printed_event_is_read_as_one_line() {
        let (_dir, path) =
            written("{\n  \"kind\": \"case.received\",\n  \"data\": {\"field\": \"x\"}\n}\n");
        let lines = one_document(&path, Format::Ndjson).unwrap().unwrap();
        assert_eq!(
            String::from_utf8(lines).unwrap(),
            "{\"data\":{\"field\":\"x\"},\"kind\":\"case.received\"}\n"
        );
    }

    #[test]
    fn a_pretty_printed_array_gives_a_line_per_element_but_a_dvcqg_array_stays_whole() {
        let (_dir, path) = written("[\n  {\"a\": 1},\n  {\"b\": 2}\n]\n");
        let lines = one_document(&path, Format::Ndjson).unwrap().unwrap();
        assert_eq!(String::from_utf8(lines).unwrap(), "{\"a\":1}\n{\"b\":2}\n");
        let lines = one_document(&path, Format::Dvcqg).unwrap().unwrap();
        assert_eq!(String::from_utf8(lines).unwrap(), "[{\"a\":1},{\"b\":2}]\n");
    }

    #[test]
    fn the_progress_bar_of_a_long_file_names_its_lines_from_the_start() {
        let (_dir, path) = written(&"{}\n".repeat(PROGRESS_ABOVE_LINES + 1));
        let bar = progress_for(&path).unwrap().expect("a bar for a long file");
        assert_eq!(bar.message(), "0 dòng");
        let (_dir, path) = written("{}\n{}\n");
        assert!(progress_for(&path).unwrap().is_none());
    }

    #[test]
    fn ndjson_and_broken_files_are_read_line_by_line() {
        let (_dir, path) = written("{\"a\": 1}\n{\"b\": 2}\n");
        assert!(one_document(&path, Format::Ndjson).unwrap().is_none());
        let (_dir, path) = written("{\"a\": 1}\n");
        assert!(one_document(&path, Format::Ndjson).unwrap().is_none());
        // Not one document either: the lines get their own errors.
        let (_dir, path) = written("{\n\"a\": \n");
        assert!(one_document(&path, Format::Ndjson).unwrap().is_none());
    }
}
