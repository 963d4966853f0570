//! `kpictl flow` and `kpictl late`: the case-flow report every unit files
//! each quarter (Biểu số 06/VPCP/KSTT, CONTRACT §9) and its late cases,
//! in the terminal, as JSON, or as the filing itself (`.xlsx`, printable
//! `.html`, `.csv`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use html_escape::encode_text;
use kpi_api::pb::{self, CaseFlowReply, GetCaseFlowRequest, ListLateReply, ListLateRequest};
use rust_xlsxwriter::{Format, FormatAlign, FormatBorder, Workbook, Worksheet, XlsxError};
use serde_json::{json, Value};

use crate::query::{connect, status_error};
use crate::ApiArgs;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum By {
    Unit,
    Field,
    Procedure,
}

#[derive(Debug, Args)]
pub struct FlowArgs {
    #[arg(long)]
    pub unit: String,
    /// Any period of CONTRACT §4 (2025-Q1, R2025-Q1, 2025, 2025-03-15..2025-06-14, …).
    #[arg(long)]
    pub period: String,
    /// Rows by the unit's children, by field or by procedure.
    #[arg(long, value_enum, default_value = "unit")]
    pub by: By,
    /// Write the filing to FILE, by its extension: .xlsx, .html or .csv.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub api: ApiArgs,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LateArgs {
    #[arg(long)]
    pub unit: String,
    #[arg(long)]
    pub period: String,
    /// Write the list to FILE, by its extension: .html, .csv or .xlsx.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub api: ApiArgs,
    #[arg(long)]
    pub json: bool,
}

/// A column of the form: its number as the form prints it, and its value.
type FormColumn = (&'static str, fn(&pb::CaseFlow) -> u64);

/// The columns of the form after STT and the name, in its order (§9).
const FORM_COLUMNS: [FormColumn; 14] = [
    ("(3) = (4) + (5) + (6)", |f| f.to_handle),
    ("(4)", |f| f.received_online),
    ("(5)", |f| f.received_in_person + f.received_postal),
    ("(6)", |f| f.carried_over),
    ("(7) = (8) + (9) + (10)", |f| f.resolved),
    ("(8)", |f| f.resolved_early),
    ("(9)", |f| f.resolved_on_time),
    ("(10)", |f| f.resolved_late),
    ("(11) = (12) + (13)", |f| f.pending),
    ("(12)", |f| f.pending_not_due),
    ("(13)", |f| f.pending_overdue),
    ("(14)", |f| f.withdrawn),
    ("(15)", |f| f.resolved_rejected),
    ("(16)", |f| f.late_with_apology),
];

/// Short Vietnamese headers for the terminal, one per [`FORM_COLUMNS`].
const SHORT_HEADERS: [&str; 14] = [
    "Tổng nhận",
    "Trực tuyến",
    "Trực tiếp+BC",
    "Kỳ trước",
    "Đã giải quyết",
    "Trước hạn",
    "Đúng hạn",
    "Quá hạn",
    "Đang giải quyết",
    "Trong hạn",
    "Quá hạn",
    "Rút",
    "Trả lại",
    "Trễ có xin lỗi",
];

const HEADING: &str =
    "TÌNH HÌNH, KẾT QUẢ GIẢI QUYẾT TTHC TẠI CƠ QUAN, ĐƠN VỊ TRỰC TIẾP GIẢI QUYẾT TTHC";

/// The §9 names of a `CaseFlow`, in the order of the contract's table.
fn flow_json(flow: &pb::CaseFlow) -> Value {
    json!({
        "carried_over": flow.carried_over,
        "received_online": flow.received_online,
        "received_in_person": flow.received_in_person,
        "received_postal": flow.received_postal,
        "to_handle": flow.to_handle,
        "resolved_early": flow.resolved_early,
        "resolved_on_time": flow.resolved_on_time,
        "resolved_late": flow.resolved_late,
        "resolved": flow.resolved,
        "resolved_rejected": flow.resolved_rejected,
        "withdrawn": flow.withdrawn,
        "pending_not_due": flow.pending_not_due,
        "pending_overdue": flow.pending_overdue,
        "pending": flow.pending,
        "late_total": flow.late_total,
        "late_with_apology": flow.late_with_apology,
    })
}

/// A count the Vietnamese way: `12.345`.
pub fn count_vi(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push('.');
        }
        out.push(digit);
    }
    out
}

/// `YYYY-MM-DD` as `DD/MM/YYYY`.
pub fn date_vi(day: &str) -> String {
    chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d")
        .map(|date| date.format("%d/%m/%Y").to_string())
        .unwrap_or_else(|_| day.to_owned())
}

/// An RFC 3339 instant as `DD/MM/YYYY HH:MM`, Vietnam time.
pub fn time_vi(text: &str) -> String {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|at| {
            at.with_timezone(&kpi_domain::vietnam())
                .format("%d/%m/%Y %H:%M")
                .to_string()
        })
        .unwrap_or_else(|_| text.to_owned())
}

fn period_line(period: &str, first_day: &str, last_day: &str) -> String {
    format!(
        "Kỳ báo cáo: {period} (Từ ngày {} đến ngày {})",
        date_vi(first_day),
        date_vi(last_day)
    )
}

fn name_header(by: By) -> &'static str {
    match by {
        By::Unit => "Đơn vị",
        By::Field => "Lĩnh vực",
        By::Procedure => "Thủ tục hành chính",
    }
}

enum Filing {
    Xlsx,
    Html,
    Csv,
}

fn filing_of(path: &Path) -> anyhow::Result<Filing> {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("xlsx") => Ok(Filing::Xlsx),
        Some("html") | Some("htm") => Ok(Filing::Html),
        Some("csv") => Ok(Filing::Csv),
        _ => anyhow::bail!(
            "--out {}: tên tệp phải kết thúc bằng .xlsx, .html hoặc .csv (the extension chooses the format)",
            path.display()
        ),
    }
}

pub async fn flow(args: FlowArgs) -> anyhow::Result<ExitCode> {
    let filing = args.out.as_deref().map(filing_of).transpose()?;
    let mut client = connect(&args.api).await?;
    let group_by = match args.by {
        By::Unit => pb::GroupBy::Unit,
        By::Field => pb::GroupBy::Field,
        By::Procedure => pb::GroupBy::Procedure,
    };
    let reply = client
        .get_case_flow(GetCaseFlowRequest {
            unit_id: args.unit.clone(),
            period: args.period.clone(),
            group_by: group_by as i32,
            min_stream_sequence: None,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    if let (Some(path), Some(filing)) = (&args.out, filing) {
        let bytes = match filing {
            Filing::Xlsx => flow_xlsx(&reply, args.by)?,
            Filing::Html => flow_html(&reply, args.by).into_bytes(),
            Filing::Csv => flow_csv(&reply)?,
        };
        std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
        eprintln!(
            "đã ghi {} ({} dòng, tổng số {} hồ sơ)",
            path.display(),
            reply.rows.len(),
            count_vi(reply.total.unwrap_or_default().to_handle)
        );
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&flow_reply_json(&reply, args.by))?
        );
    } else if args.out.is_none() {
        print!("{}", flow_text(&reply, args.by));
    }
    Ok(ExitCode::SUCCESS)
}

fn flow_reply_json(reply: &CaseFlowReply, by: By) -> Value {
    json!({
        "unit_id": reply.unit_id,
        "unit_name": reply.unit_name,
        "period": reply.period,
        "first_day": reply.first_day,
        "last_day": reply.last_day,
        "as_of": reply.as_of,
        "group_by": format!("{by:?}").to_lowercase(),
        "rows": reply.rows.iter().map(|row| json!({
            "key": row.key,
            "name": row.name,
            "flow": flow_json(&row.flow.unwrap_or_default()),
        })).collect::<Vec<_>>(),
        "total": flow_json(&reply.total.unwrap_or_default()),
        "stream_sequence": reply.stream_sequence,
    })
}

/// The rows of the form: (STT, name, flow), then "Tổng số".
fn form_rows(reply: &CaseFlowReply) -> Vec<(String, String, pb::CaseFlow)> {
    let mut rows: Vec<(String, String, pb::CaseFlow)> = reply
        .rows
        .iter()
        .enumerate()
        .map(|(index, row)| {
            let name = if row.name == row.key {
                row.key.clone()
            } else {
                format!("{} ({})", row.name, row.key)
            };
            ((index + 1).to_string(), name, row.flow.unwrap_or_default())
        })
        .collect();
    rows.push((
        String::new(),
        "Tổng số".to_owned(),
        reply.total.unwrap_or_default(),
    ));
    rows
}

fn flow_text(reply: &CaseFlowReply, by: By) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{HEADING}");
    let _ = writeln!(
        out,
        "Đơn vị báo cáo: {} ({})",
        reply.unit_name, reply.unit_id
    );
    let _ = writeln!(
        out,
        "{}",
        period_line(&reply.period, &reply.first_day, &reply.last_day)
    );
    let _ = writeln!(
        out,
        "Số liệu tại thời điểm {} · Đơn vị tính: Số hồ sơ TTHC",
        time_vi(&reply.as_of)
    );
    let rows = form_rows(reply);
    let name_width = rows
        .iter()
        .map(|(_, name, _)| name.chars().count())
        .chain([name_header(by).chars().count()])
        .max()
        .unwrap_or(10)
        .min(48);
    let pad = crate::query::pad_to;
    let right = |text: &str, width: usize| {
        let length = text.chars().count();
        format!("{}{text}", " ".repeat(width.saturating_sub(length)))
    };
    let mut line = format!("{} {}", right("STT", 4), pad(name_header(by), name_width));
    for header in SHORT_HEADERS {
        let _ = write!(line, " {}", right(header, header.chars().count().max(6)));
    }
    let _ = writeln!(out, "{}", line.trim_end());
    for (number, name, flow) in &rows {
        let name: String = name.chars().take(name_width).collect();
        let mut line = format!("{} {}", right(number, 4), pad(&name, name_width));
        for ((_, value), header) in FORM_COLUMNS.iter().zip(SHORT_HEADERS) {
            let _ = write!(
                line,
                " {}",
                right(&count_vi(value(flow)), header.chars().count().max(6))
            );
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
    let _ = writeln!(
        out,
        "(Tổng nhận = Kỳ trước + Trực tuyến + Trực tiếp, bưu chính = Đã giải quyết + Đang giải quyết + Rút; số liệu đến sự kiện số {})",
        reply.stream_sequence
    );
    out
}

/// The three header rows of the form, as (first column, last column,
/// text) per row; a cell spanning rows is written once, in its first
/// row, with the rows it spans.
struct HeaderCell {
    row: u32,
    rows: u32,
    first: u16,
    last: u16,
    text: &'static str,
}

fn header_cells(by: By) -> Vec<HeaderCell> {
    let cell = |row, rows, first, last, text| HeaderCell {
        row,
        rows,
        first,
        last,
        text,
    };
    vec![
        cell(0, 3, 0, 0, "STT"),
        cell(0, 3, 1, 1, name_header(by)),
        cell(0, 1, 2, 5, "Số hồ sơ nhận giải quyết"),
        cell(0, 1, 6, 12, "Kết quả giải quyết"),
        cell(0, 3, 13, 13, "Số hồ sơ rút"),
        cell(0, 3, 14, 14, "Số hồ sơ trả lại (từ chối giải quyết)"),
        cell(0, 3, 15, 15, "Số hồ sơ trễ hạn có văn bản xin lỗi"),
        cell(1, 2, 2, 2, "Tổng số"),
        cell(1, 1, 3, 5, "Trong đó"),
        cell(1, 1, 6, 9, "Số hồ sơ đã giải quyết"),
        cell(1, 1, 10, 12, "Số hồ sơ đang giải quyết"),
        cell(2, 1, 3, 3, "Số mới tiếp nhận trực tuyến"),
        cell(
            2,
            1,
            4,
            4,
            "Số mới tiếp nhận trực tiếp và qua dịch vụ bưu chính công ích",
        ),
        cell(2, 1, 5, 5, "Số kỳ trước chuyển qua"),
        cell(2, 1, 6, 6, "Tổng số"),
        cell(2, 1, 7, 7, "Trả trước hạn"),
        cell(2, 1, 8, 8, "Trả đúng hạn"),
        cell(2, 1, 9, 9, "Trả quá hạn"),
        cell(2, 1, 10, 10, "Tổng số"),
        cell(2, 1, 11, 11, "Chưa đến hạn"),
        cell(2, 1, 12, 12, "Quá hạn"),
    ]
}

fn flow_xlsx(reply: &CaseFlowReply, by: By) -> anyhow::Result<Vec<u8>> {
    let build = || -> Result<Vec<u8>, XlsxError> {
        let mut workbook = Workbook::new();
        let sheet = workbook.add_worksheet();
        sheet.set_name("Biểu 06")?;
        let bold = Format::new().set_bold();
        let title = Format::new()
            .set_bold()
            .set_font_size(13)
            .set_align(FormatAlign::Center);
        let centered = Format::new().set_align(FormatAlign::Center);
        let header = Format::new()
            .set_bold()
            .set_text_wrap()
            .set_align(FormatAlign::Center)
            .set_align(FormatAlign::VerticalCenter)
            .set_border(FormatBorder::Thin)
            .set_background_color("#EEEEEE");
        let number_row = Format::new()
            .set_italic()
            .set_align(FormatAlign::Center)
            .set_border(FormatBorder::Thin);
        let cell = Format::new().set_border(FormatBorder::Thin).set_text_wrap();
        let number = Format::new()
            .set_border(FormatBorder::Thin)
            .set_num_format("#,##0");
        let total_name = cell.clone().set_bold();
        let total_number = number.clone().set_bold();

        sheet.write_string_with_format(0, 0, "Biểu số 06/VPCP/KSTT", &bold)?;
        sheet.merge_range(1, 0, 1, 15, HEADING, &title)?;
        sheet.merge_range(
            2,
            0,
            2,
            15,
            &format!("Đơn vị báo cáo: {} ({})", reply.unit_name, reply.unit_id),
            &centered,
        )?;
        sheet.merge_range(
            3,
            0,
            3,
            15,
            &period_line(&reply.period, &reply.first_day, &reply.last_day),
            &centered,
        )?;
        sheet.write_string(4, 0, "Đơn vị tính: Số hồ sơ TTHC")?;
        sheet.write_string(
            4,
            10,
            format!("Số liệu tại thời điểm {}", time_vi(&reply.as_of)),
        )?;
        const TOP: u32 = 5;
        for item in header_cells(by) {
            let (first_row, last_row) = (TOP + item.row, TOP + item.row + item.rows - 1);
            if first_row == last_row && item.first == item.last {
                sheet.write_string_with_format(first_row, item.first, item.text, &header)?;
            } else {
                sheet.merge_range(
                    first_row, item.first, last_row, item.last, item.text, &header,
                )?;
            }
        }
        let numbers_row = TOP + 3;
        sheet.write_string_with_format(numbers_row, 0, "(1)", &number_row)?;
        sheet.write_string_with_format(numbers_row, 1, "(2)", &number_row)?;
        for (offset, (label, _)) in FORM_COLUMNS.iter().enumerate() {
            sheet.write_string_with_format(numbers_row, 2 + offset as u16, *label, &number_row)?;
        }
        let rows = form_rows(reply);
        let last_index = rows.len() - 1;
        for (index, (stt, name, flow)) in rows.iter().enumerate() {
            let row = numbers_row + 1 + index as u32;
            let (name_format, number_format) = if index == last_index {
                (&total_name, &total_number)
            } else {
                (&cell, &number)
            };
            match stt.parse::<f64>() {
                Ok(value) => sheet.write_number_with_format(row, 0, value, &cell)?,
                Err(_) => sheet.write_blank(row, 0, &cell)?,
            };
            sheet.write_string_with_format(row, 1, name, name_format)?;
            for (offset, (_, value)) in FORM_COLUMNS.iter().enumerate() {
                sheet.write_number_with_format(
                    row,
                    2 + offset as u16,
                    value(flow) as f64,
                    number_format,
                )?;
            }
        }
        layout(sheet)?;
        sheet.set_freeze_panes(numbers_row + 1, 2)?;
        workbook.save_to_buffer()
    };
    build().context("writing the .xlsx")
}

/// Column widths and A4 landscape printing, the header rows repeated.
fn layout(sheet: &mut Worksheet) -> Result<(), XlsxError> {
    sheet.set_column_width(0, 5)?;
    sheet.set_column_width(1, 34)?;
    sheet.set_column_range_width(2, 15, 10.5)?;
    sheet.set_row_height(7, 78)?;
    sheet.set_landscape();
    sheet.set_paper_size(9);
    sheet.set_print_fit_to_pages(1, 0);
    sheet.set_repeat_rows(5, 8)?;
    Ok(())
}

const FORM_STYLE: &str = r#"
@page { size: A4 landscape; margin: 10mm; }
body { font-family: "Times New Roman", "Liberation Serif", serif; font-size: 10.5pt; color: #111; margin: 0 auto; max-width: 277mm; }
h1 { font-size: 13pt; text-align: center; margin: 0.3em 0; }
p { margin: 0.2em 0; } .c { text-align: center; } .form { font-weight: bold; }
table { border-collapse: collapse; width: 100%; table-layout: fixed; }
th, td { border: 1px solid #555; padding: 2px 3px; overflow-wrap: anywhere; }
th { background: #eee; font-weight: bold; font-size: 9pt; }
tr.numbers td { text-align: center; font-style: italic; font-size: 8.5pt; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
tr.total td { font-weight: bold; }
col.stt { width: 10mm; } col.name { width: 52mm; }
"#;

/// The start of a self-contained Vietnamese page: `title` (escaped here)
/// and its `style`, up to the opened body.
pub fn page_start(title: &str, style: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"vi\">\n<head>\n<meta charset=\"utf-8\">\n<title>{}</title>\n<style>{style}</style>\n</head>\n<body>\n",
        encode_text(title)
    )
}

fn flow_html(reply: &CaseFlowReply, by: By) -> String {
    let mut page = page_start(
        &format!("Biểu 06 — {} — {}", reply.unit_name, reply.period),
        FORM_STYLE,
    );
    let _ = writeln!(page, "<p class=\"form\">Biểu số 06/VPCP/KSTT</p>");
    let _ = writeln!(page, "<h1>{HEADING}</h1>");
    let _ = writeln!(
        page,
        "<p class=\"c\">Đơn vị báo cáo: {} ({})</p>\n<p class=\"c\">{}</p>",
        encode_text(&reply.unit_name),
        encode_text(&reply.unit_id),
        encode_text(&period_line(
            &reply.period,
            &reply.first_day,
            &reply.last_day
        ))
    );
    let _ = writeln!(
        page,
        "<p>Đơn vị tính: Số hồ sơ TTHC · Số liệu tại thời điểm {}</p>",
        encode_text(&time_vi(&reply.as_of))
    );
    page.push_str("<table>\n<colgroup><col class=\"stt\"><col class=\"name\">");
    for _ in 0..FORM_COLUMNS.len() {
        page.push_str("<col>");
    }
    page.push_str("</colgroup>\n<thead>\n");
    let cells = header_cells(by);
    for row in 0..3 {
        page.push_str("<tr>");
        for item in cells.iter().filter(|item| item.row == row) {
            let _ = write!(
                page,
                "<th colspan=\"{}\" rowspan=\"{}\">{}</th>",
                item.last - item.first + 1,
                item.rows,
                encode_text(item.text)
            );
        }
        page.push_str("</tr>\n");
    }
    page.push_str("<tr class=\"numbers\"><td>(1)</td><td>(2)</td>");
    for (label, _) in FORM_COLUMNS {
        let _ = write!(page, "<td>{label}</td>");
    }
    page.push_str("</tr>\n</thead>\n<tbody>\n");
    let rows = form_rows(reply);
    let last_index = rows.len() - 1;
    for (index, (stt, name, flow)) in rows.iter().enumerate() {
        let class = if index == last_index {
            " class=\"total\""
        } else {
            ""
        };
        let _ = write!(
            page,
            "<tr{class}><td class=\"n\">{}</td><td>{}</td>",
            encode_text(stt),
            encode_text(name)
        );
        for (_, value) in FORM_COLUMNS {
            let _ = write!(page, "<td class=\"n\">{}</td>", count_vi(value(flow)));
        }
        page.push_str("</tr>\n");
    }
    page.push_str("</tbody>\n</table>\n</body>\n</html>\n");
    page
}

/// UTF-8 with a byte-order mark, so that Excel reads the diacritics.
fn csv_with_bom(
    write: impl FnOnce(&mut csv::Writer<Vec<u8>>) -> csv::Result<()>,
) -> anyhow::Result<Vec<u8>> {
    let mut writer = csv::Writer::from_writer("\u{feff}".as_bytes().to_vec());
    write(&mut writer)?;
    writer
        .into_inner()
        .map_err(|err| anyhow::anyhow!("writing the CSV: {err}"))
}

fn flow_csv(reply: &CaseFlowReply) -> anyhow::Result<Vec<u8>> {
    csv_with_bom(|writer| {
        let mut header = vec!["key", "name"];
        header.extend(kpi_domain::CASE_FLOW_COLUMNS);
        writer.write_record(&header)?;
        let rows = reply
            .rows
            .iter()
            .map(|row| {
                (
                    row.key.as_str(),
                    row.name.as_str(),
                    row.flow.unwrap_or_default(),
                )
            })
            .chain([("", "Tổng số", reply.total.unwrap_or_default())]);
        for (key, name, flow) in rows {
            let values = flow_json(&flow);
            let mut record = vec![key.to_owned(), name.to_owned()];
            record.extend(
                kpi_domain::CASE_FLOW_COLUMNS
                    .iter()
                    .map(|column| values[*column].to_string()),
            );
            writer.write_record(&record)?;
        }
        Ok(())
    })
}

pub async fn late(args: LateArgs) -> anyhow::Result<ExitCode> {
    let filing = args.out.as_deref().map(filing_of).transpose()?;
    let mut client = connect(&args.api).await?;
    let reply = client
        .list_late(ListLateRequest {
            unit_id: args.unit.clone(),
            period: args.period.clone(),
            min_stream_sequence: None,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    if let (Some(path), Some(filing)) = (&args.out, filing) {
        let bytes = match filing {
            Filing::Xlsx => late_xlsx(&reply)?,
            Filing::Html => late_html(&reply).into_bytes(),
            Filing::Csv => late_csv(&reply)?,
        };
        std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
        eprintln!(
            "đã ghi {} ({} hồ sơ trễ hạn)",
            path.display(),
            reply.cases.len()
        );
    }
    if args.json {
        let cases: Vec<Value> = reply
            .cases
            .iter()
            .map(|case| {
                json!({
                    "case_id": case.case_id, "unit_id": case.unit_id,
                    "procedure_code": case.procedure_code, "field": case.field,
                    "received_at": case.received_at, "due_at": case.due_at,
                    "resolved_at": case.resolved_at, "days_late": case.days_late,
                    "apologies": case.apologies.iter().map(|a| json!({
                        "letter_ref": a.letter_ref, "occurred_at": a.occurred_at,
                        "new_due_at": a.new_due_at,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        let value = json!({
            "unit_id": reply.unit_id, "unit_name": reply.unit_name, "period": reply.period,
            "first_day": reply.first_day, "last_day": reply.last_day, "as_of": reply.as_of,
            "cases": cases, "stream_sequence": reply.stream_sequence,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else if args.out.is_none() {
        print!("{}", late_text(&reply));
    }
    Ok(ExitCode::SUCCESS)
}

const LATE_HEADING: &str = "DANH SÁCH HỒ SƠ TTHC TRỄ HẠN VÀ VĂN BẢN XIN LỖI";

/// A late case's cells for people: case, procedure, field, received,
/// due, returned (or still open), days late, letters.
fn late_cells(case: &pb::LateCase) -> [String; 8] {
    let letters = if case.apologies.is_empty() {
        "Chưa có".to_owned()
    } else {
        case.apologies
            .iter()
            .map(|a| {
                let reference = if a.letter_ref.is_empty() {
                    "(không đọc được số văn bản)"
                } else {
                    &a.letter_ref
                };
                format!("{reference} ngày {}", time_vi(&a.occurred_at))
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    let named = |name: &str, code: &str| {
        if name.is_empty() || name == code {
            code.to_owned()
        } else {
            name.to_owned()
        }
    };
    [
        case.case_id.clone(),
        named(&case.procedure_name, &case.procedure_code),
        named(&case.field_name, &case.field),
        time_vi(&case.received_at),
        time_vi(&case.due_at),
        case.resolved_at
            .as_deref()
            .map_or_else(|| "Đang giải quyết".to_owned(), time_vi),
        count_vi(case.days_late),
        letters,
    ]
}

const LATE_HEADERS: [&str; 8] = [
    "Mã hồ sơ",
    "Thủ tục",
    "Lĩnh vực",
    "Ngày tiếp nhận",
    "Hạn trả kết quả",
    "Ngày trả kết quả",
    "Số ngày trễ",
    "Văn bản xin lỗi",
];

fn late_text(reply: &ListLateReply) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{LATE_HEADING}");
    let _ = writeln!(out, "Đơn vị: {} ({})", reply.unit_name, reply.unit_id);
    let _ = writeln!(
        out,
        "{}",
        period_line(&reply.period, &reply.first_day, &reply.last_day)
    );
    for case in &reply.cases {
        let cells = late_cells(case);
        let _ = writeln!(
            out,
            "{} · {} · {} · nhận {} · hạn {} · trả {} · trễ {} ngày · xin lỗi: {}",
            cells[0], cells[1], cells[2], cells[3], cells[4], cells[5], cells[6], cells[7]
        );
    }
    let with_letter = reply
        .cases
        .iter()
        .filter(|c| !c.apologies.is_empty())
        .count();
    let _ = writeln!(
        out,
        "{} hồ sơ trễ hạn, {} có văn bản xin lỗi (số liệu tại thời điểm {})",
        count_vi(reply.cases.len() as u64),
        count_vi(with_letter as u64),
        time_vi(&reply.as_of)
    );
    out
}

fn late_html(reply: &ListLateReply) -> String {
    let mut page = page_start(
        &format!("Hồ sơ trễ hạn — {} — {}", reply.unit_name, reply.period),
        FORM_STYLE,
    );
    let _ = writeln!(page, "<h1>{LATE_HEADING}</h1>");
    let _ = writeln!(
        page,
        "<p class=\"c\">{} ({})</p>\n<p class=\"c\">{}</p>",
        encode_text(&reply.unit_name),
        encode_text(&reply.unit_id),
        encode_text(&period_line(
            &reply.period,
            &reply.first_day,
            &reply.last_day
        ))
    );
    page.push_str(&late_table(&reply.cases));
    page.push_str("</body>\n</html>\n");
    page
}

/// The late cases as an HTML table (also on the monthly page).
pub fn late_table(cases: &[pb::LateCase]) -> String {
    let mut table = String::from("<table class=\"late\">\n<thead><tr><th>STT</th>");
    for header in LATE_HEADERS {
        let _ = write!(table, "<th>{header}</th>");
    }
    table.push_str("</tr></thead>\n<tbody>\n");
    for (index, case) in cases.iter().enumerate() {
        let _ = write!(table, "<tr><td class=\"n\">{}</td>", index + 1);
        for (column, cell) in late_cells(case).iter().enumerate() {
            let class = if column == 6 { " class=\"n\"" } else { "" };
            let _ = write!(table, "<td{class}>{}</td>", encode_text(cell));
        }
        table.push_str("</tr>\n");
    }
    if cases.is_empty() {
        let _ = writeln!(
            table,
            "<tr><td colspan=\"{}\">Không có hồ sơ trễ hạn.</td></tr>",
            LATE_HEADERS.len() + 1
        );
    }
    table.push_str("</tbody>\n</table>\n");
    table
}

fn late_csv(reply: &ListLateReply) -> anyhow::Result<Vec<u8>> {
    csv_with_bom(|writer| {
        writer.write_record(LATE_HEADERS)?;
        for case in &reply.cases {
            writer.write_record(late_cells(case))?;
        }
        Ok(())
    })
}

fn late_xlsx(reply: &ListLateReply) -> anyhow::Result<Vec<u8>> {
    let build = || -> Result<Vec<u8>, XlsxError> {
        let mut workbook = Workbook::new();
        let sheet = workbook.add_worksheet();
        sheet.set_name("Hồ sơ trễ hạn")?;
        let header = Format::new()
            .set_bold()
            .set_text_wrap()
            .set_border(FormatBorder::Thin)
            .set_background_color("#EEEEEE");
        let cell = Format::new().set_border(FormatBorder::Thin).set_text_wrap();
        sheet.merge_range(0, 0, 0, 8, LATE_HEADING, &Format::new().set_bold())?;
        sheet.write_string(
            1,
            0,
            format!(
                "{} ({}) · {}",
                reply.unit_name,
                reply.unit_id,
                period_line(&reply.period, &reply.first_day, &reply.last_day)
            ),
        )?;
        sheet.write_string_with_format(3, 0, "STT", &header)?;
        for (column, text) in LATE_HEADERS.iter().enumerate() {
            sheet.write_string_with_format(3, 1 + column as u16, *text, &header)?;
        }
        for (index, case) in reply.cases.iter().enumerate() {
            let row = 4 + index as u32;
            sheet.write_number_with_format(row, 0, (index + 1) as f64, &cell)?;
            for (column, text) in late_cells(case).iter().enumerate() {
                if column == 6 {
                    sheet.write_number_with_format(row, 7, case.days_late as f64, &cell)?;
                } else {
                    sheet.write_string_with_format(row, 1 + column as u16, text, &cell)?;
                }
            }
        }
        sheet.set_column_width(1, 30)?;
        sheet.set_column_range_width(2, 7, 16)?;
        sheet.set_column_width(8, 40)?;
        sheet.set_landscape();
        sheet.set_paper_size(9);
        sheet.set_freeze_panes(4, 0)?;
        workbook.save_to_buffer()
    };
    build().context("writing the .xlsx")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_grouped_the_vietnamese_way() {
        assert_eq!(count_vi(0), "0");
        assert_eq!(count_vi(999), "999");
        assert_eq!(count_vi(1000), "1.000");
        assert_eq!(count_vi(1234567), "1.234.567");
    }

    #[test]
    fn the_form_columns_sum_as_the_form_prints_them() {
        let flow = pb::CaseFlow {
            carried_over: 2,
            received_online: 3,
            received_in_person: 1,
            received_postal: 1,
            to_handle: 7,
            resolved_early: 1,
            resolved_on_time: 1,
            resolved_late: 1,
            resolved: 3,
            pending_not_due: 2,
            pending_overdue: 1,
            pending: 3,
            withdrawn: 1,
            ..pb::CaseFlow::default()
        };
        let value = |index: usize| FORM_COLUMNS[index].1(&flow);
        assert_eq!(value(0), value(1) + value(2) + value(3));
        assert_eq!(value(4), value(5) + value(6) + value(7));
        assert_eq!(value(8), value(9) + value(10));
        assert_eq!(value(0), value(4) + value(8) + value(11));
    }
}
