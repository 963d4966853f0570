//! CSV exports into contract events (`kpictl import` of a `.csv` file).
//!
//! A header row names the columns: the envelope (`event_id`, `kind`,
//! `case_id`, `unit_id`, `occurred_at`, optionally `schema`) and any of the
//! kinds' data fields (`procedure_code`, `field`, `channel`, `due_at`, …).
//! Each row becomes one JSON event whose `data` holds the non-empty cells of
//! its kind's fields; the event then goes through the same validation as
//! any other, so a CSV row and an NDJSON line are refused for the same
//! reasons. Columns may come in any order; an unknown column name is
//! refused at once (a typo would otherwise drop a field from every row).

use std::io::Read;

use kpi_events::Kind;
use serde_json::{Map, Value};

use crate::batch::LineError;

/// The envelope columns every export must have.
pub const REQUIRED_COLUMNS: &[&str] = &["event_id", "kind", "case_id", "unit_id", "occurred_at"];

/// The data fields of each kind, with how a cell is read.
fn data_fields(kind: Kind) -> &'static [(&'static str, Cell)] {
    use Cell::{Flag, Text, Whole};
    match kind {
        Kind::CaseReceived => &[
            ("procedure_code", Text),
            ("field", Text),
            ("channel", Text),
            ("due_at", Text),
            ("dossier_digitized", Flag),
            ("reused_data", Flag),
        ],
        Kind::CaseSupplementRequested => &[("reason", Text), ("due_at", Text)],
        Kind::CaseApologyIssued => &[("letter_ref", Text), ("reason", Text), ("new_due_at", Text)],
        Kind::CaseResolved => &[
            ("result", Text),
            ("result_electronic", Flag),
            ("result_digitized", Flag),
        ],
        Kind::CaseWithdrawn => &[("reason", Text)],
        Kind::CasePaid => &[("amount_vnd", Whole), ("online", Flag)],
        Kind::CaseRated => &[("level", Text)],
        Kind::CaseSynced => &[("portal", Text)],
        Kind::FeedbackReceived => &[("due_at", Text)],
        Kind::FeedbackResolved => &[],
    }
}

/// How a cell becomes a JSON value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cell {
    Text,
    /// `true`/`false` (also `1`/`0`); anything else is passed on as text,
    /// so that validation names the field and what it found.
    Flag,
    /// A whole number; anything else is passed on as text.
    Whole,
}

impl Cell {
    fn value(self, text: &str) -> Value {
        let trimmed = text.trim();
        match self {
            Cell::Text => Value::String(text.to_owned()),
            Cell::Flag => match trimmed.to_ascii_lowercase().as_str() {
                "true" | "1" => Value::Bool(true),
                "false" | "0" => Value::Bool(false),
                _ => Value::String(text.to_owned()),
            },
            Cell::Whole => trimmed
                .parse::<i64>()
                .map(Value::from)
                .unwrap_or_else(|_| Value::String(text.to_owned())),
        }
    }
}

fn is_known_column(name: &str) -> bool {
    REQUIRED_COLUMNS.contains(&name)
        || name == "schema"
        || Kind::ALL
            .iter()
            .any(|kind| data_fields(*kind).iter().any(|(field, _)| *field == name))
}

/// A CSV export that cannot be read at all.
#[derive(Debug, thiserror::Error)]
pub enum CsvError {
    #[error("the CSV header row cannot be read: {0}")]
    Header(String),
    #[error("the CSV header has no column `{0}`; required columns: {columns}", columns = REQUIRED_COLUMNS.join(", "))]
    MissingColumn(String),
    #[error("the CSV header names an unknown column `{0}`; known columns are the envelope ({columns}, schema) and the data fields of CONTRACT §2", columns = REQUIRED_COLUMNS.join(", "))]
    UnknownColumn(String),
    #[error("the CSV header names column `{0}` twice")]
    DuplicateColumn(String),
}

/// Counts the lines of what passes through it, so that a row's line number
/// is exact: the `csv` crate's own count is off after a blank line
/// (BurntSushi/rust-csv#208). Only the newlines not yet matched to a row are
/// kept, so memory stays within the reader's buffer.
struct LineCounter<R> {
    inner: R,
    /// Bytes read so far.
    offset: u64,
    /// Offsets of newlines read but not yet before a row's start.
    newlines: std::collections::VecDeque<u64>,
    /// Newlines before the last row asked about.
    lines_before: usize,
}

impl<R: Read> Read for LineCounter<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let read = self.inner.read(buf)?;
        for (index, byte) in buf[..read].iter().enumerate() {
            if *byte == b'\n' {
                self.newlines.push_back(self.offset + index as u64);
            }
        }
        self.offset += read as u64;
        Ok(read)
    }
}

impl<R> LineCounter<R> {
    /// The line (from 1) of a byte offset: one more than the newlines
    /// before it. Offsets must not go backwards.
    fn line_at(&mut self, byte: u64) -> usize {
        while self.newlines.front().is_some_and(|newline| *newline < byte) {
            self.newlines.pop_front();
            self.lines_before += 1;
        }
        self.lines_before + 1
    }
}

/// The events of a CSV export, one a row, in file order.
pub struct CsvEvents<R> {
    reader: ::csv::Reader<LineCounter<R>>,
    columns: Vec<String>,
    record: ::csv::ByteRecord,
}

impl<R: Read> CsvEvents<R> {
    /// Reads and checks the header row.
    pub fn new(input: R) -> Result<Self, CsvError> {
        let mut reader = ::csv::ReaderBuilder::new()
            .has_headers(true)
            .flexible(true)
            .from_reader(LineCounter {
                inner: input,
                offset: 0,
                newlines: Default::default(),
                lines_before: 0,
            });
        let header = reader
            .byte_headers()
            .map_err(|err| CsvError::Header(err.to_string()))?
            .clone();
        let mut columns: Vec<String> = Vec::with_capacity(header.len());
        for raw in header.iter() {
            let name = String::from_utf8_lossy(raw)
                .trim_start_matches('\u{feff}')
                .trim()
                .to_owned();
            if !is_known_column(&name) {
                return Err(CsvError::UnknownColumn(name));
            }
            if columns.contains(&name) {
                return Err(CsvError::DuplicateColumn(name));
            }
            columns.push(name);
        }
        for required in REQUIRED_COLUMNS {
            if !columns.iter().any(|column| column == required) {
                return Err(CsvError::MissingColumn((*required).to_owned()));
            }
        }
        Ok(CsvEvents {
            reader,
            columns,
            record: ::csv::ByteRecord::new(),
        })
    }

    /// The next row as a JSON event, with the line it starts on; `None`
    /// at the end of the file.
    pub fn next_event(&mut self) -> Option<(usize, Result<Vec<u8>, LineError>)> {
        let outcome = self.reader.read_byte_record(&mut self.record);
        // The line a row ends on: the newlines before its own terminator
        // (the reader's position is just past it). The `csv` crate's own
        // row positions are off after blank lines.
        let end = self.reader.position().byte();
        let last_line = self.reader.get_mut().line_at(end.saturating_sub(1));
        match outcome {
            Ok(false) => None,
            Ok(true) => {
                let inner_newlines = self
                    .record
                    .iter()
                    .map(|cell| cell.iter().filter(|byte| **byte == b'\n').count())
                    .sum::<usize>();
                Some((last_line - inner_newlines, self.row_to_event()))
            }
            Err(err) => {
                let line = last_line;
                if matches!(err.kind(), ::csv::ErrorKind::Io(_)) {
                    return Some((
                        line,
                        Err(LineError {
                            field: None,
                            reason: format!("reading the file: {err}"),
                        }),
                    ));
                }
                Some((
                    line,
                    Err(LineError {
                        field: None,
                        reason: format!("not a valid CSV row: {err}"),
                    }),
                ))
            }
        }
    }

    fn row_to_event(&self) -> Result<Vec<u8>, LineError> {
        let mut cells = Map::new();
        for (column, raw) in self.columns.iter().zip(self.record.iter()) {
            let text = std::str::from_utf8(raw).map_err(|err| LineError {
                field: Some(column.clone()),
                reason: format!(
                    "the cell is not valid UTF-8 (first bad byte at offset {}); export the file in UTF-8",
                    err.valid_up_to()
                ),
            })?;
            if !text.is_empty() {
                cells.insert(column.clone(), Value::String(text.to_owned()));
            }
        }
        let mut event = Map::new();
        for column in REQUIRED_COLUMNS {
            if let Some(value) = cells.get(*column) {
                event.insert((*column).to_owned(), value.clone());
            }
        }
        if let Some(Value::String(schema)) = cells.get("schema") {
            event.insert("schema".to_owned(), Cell::Whole.value(schema));
        }
        let mut data = Map::new();
        let kind = cells
            .get("kind")
            .and_then(Value::as_str)
            .and_then(Kind::parse);
        if let Some(kind) = kind {
            for (field, cell) in data_fields(kind) {
                if let Some(Value::String(text)) = cells.get(*field) {
                    data.insert((*field).to_owned(), cell.value(text));
                }
            }
        }
        event.insert("data".to_owned(), Value::Object(data));
        serde_json::to_vec(&Value::Object(event)).map_err(|err| LineError {
            field: None,
            reason: err.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(text: &str) -> Vec<(usize, Result<Value, LineError>)> {
        let mut reader = CsvEvents::new(text.as_bytes()).expect("header");
        std::iter::from_fn(|| reader.next_event())
            .map(|(line, event)| {
                (
                    line,
                    event.map(|bytes| serde_json::from_slice(&bytes).unwrap()),
                )
            })
            .collect()
    }

    #[test]
    fn rows_become_events_with_their_kinds_data() {
        let text = "\u{feff}event_id,kind,case_id,unit_id,occurred_at,procedure_code,field,channel,due_at,dossier_digitized,amount_vnd,online,level\n\
            e1,case.received,H31-1,5153105,2025-03-03T08:00:00+07:00,1.001193,ho_tich,online,2025-03-05T17:00:00+07:00,1,,,\n\
            e2,case.paid,H31-1,5153105,2025-03-03T08:10:00+07:00,,,,,,50000,true,\n\
            \n\
            e3,case.rated,\"Hồ sơ, số 2\",5153105,2025-03-06T08:00:00+07:00,,,,,,,,very_satisfied\n";
        let rows = events(text);
        assert_eq!(rows.len(), 3);
        let (line, received) = &rows[0];
        assert_eq!(*line, 2);
        let received = received.as_ref().unwrap();
        assert_eq!(received["data"]["dossier_digitized"], Value::Bool(true));
        assert_eq!(received["data"]["channel"], "online");
        assert!(
            received["data"].get("amount_vnd").is_none(),
            "only its kind's fields"
        );
        let paid = rows[1].1.as_ref().unwrap();
        assert_eq!(paid["data"]["amount_vnd"], 50000);
        assert_eq!(paid["data"]["online"], true);
        let (line, rated) = &rows[2];
        assert_eq!(*line, 5, "blank lines keep the numbering");
        assert_eq!(rated.as_ref().unwrap()["case_id"], "Hồ sơ, số 2");
    }

    #[test]
    fn line_numbers_count_blank_lines_crlf_and_quoted_newlines() {
        let text = "event_id,kind,case_id,unit_id,occurred_at,reason\r\n\
            e1,case.withdrawn,A,C1,2025-03-03T08:00:00+07:00,x\r\n\
            \r\n\
            \r\n\
            e2,case.withdrawn,B,C1,2025-03-03T08:00:00+07:00,\"hai\ndòng\"\r\n\
            e3,case.withdrawn,C,C1,2025-03-03T08:00:00+07:00,y";
        let lines: Vec<usize> = events(text).into_iter().map(|(line, _)| line).collect();
        assert_eq!(lines, [2, 5, 7]);
    }

    #[test]
    fn a_bad_header_is_refused_naming_the_column() {
        let err = CsvEvents::new("event_id,kind,case_id,unit_id\n".as_bytes())
            .err()
            .unwrap();
        assert!(err.to_string().contains("no column `occurred_at`"), "{err}");
        let err = CsvEvents::new("event_id,kind,case_id,unit_id,occurred_at,chanel\n".as_bytes())
            .err()
            .unwrap();
        assert!(err.to_string().contains("unknown column `chanel`"), "{err}");
    }

    #[test]
    fn cells_that_are_not_flags_or_numbers_are_left_for_validation_to_name() {
        let rows = events(
            "event_id,kind,case_id,unit_id,occurred_at,amount_vnd,online\n\
             e1,case.paid,X,C1,2025-03-03T08:00:00+07:00,năm mươi,có\n",
        );
        let paid = rows[0].1.as_ref().unwrap();
        assert_eq!(paid["data"]["amount_vnd"], "năm mươi");
        assert_eq!(paid["data"]["online"], "có");
    }

    #[test]
    fn a_cell_that_is_not_utf8_is_named() {
        let mut bytes = b"event_id,kind,case_id,unit_id,occurred_at\ne1,case.synced,X".to_vec();
        bytes.push(0xff);
        bytes.extend_from_slice(b",C1,2025-03-03T08:00:00+07:00\n");
        let mut reader = CsvEvents::new(&bytes[..]).unwrap();
        let (line, outcome) = reader.next_event().unwrap();
        assert_eq!(line, 2);
        let err = outcome.unwrap_err();
        assert_eq!(err.field.as_deref(), Some("case_id"));
    }
}
