//! The audit commands: every figure traceable to the log.
//!
//! - `kpictl case CASE_ID`: a case's events read back from the stream and
//!   what follows from them;
//! - `kpictl held`: cases whose events wait for their `case.received`;
//! - `kpictl replay --data-dir DIR [--until SEQ|TIME]`: fresh views from
//!   sequence 1, folded exactly as the projector folds (the same
//!   pipeline), while the live projector keeps serving;
//! - `kpictl verify`: a replay aside up to the live views' sequence,
//!   compared counter by counter with the live views;
//! - `kpictl rebuild`: asks the projector for a blue/green rebuild.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use kpi_api::pb::{self, ExportViewsRequest, GetCaseRequest, ListHeldRequest, RebuildRequest};
use kpi_domain::{Counter, Day, UnitRegistry};
use kpi_projection::Until;
use kpi_store::{Store, StoreOptions, ViewsExport};
use serde_json::json;

use crate::query::{connect, status_error};
use crate::{ApiArgs, BusArgs};

#[derive(Debug, Args)]
pub struct CaseArgs {
    /// The case code (mã hồ sơ) or feedback code.
    pub case_id: String,
    #[command(flatten)]
    pub api: ApiArgs,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn case(args: CaseArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args.api).await?;
    let reply = client
        .get_case(GetCaseRequest {
            case_id: args.case_id,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&case_json(&reply))?);
        return Ok(ExitCode::SUCCESS);
    }
    let state = reply.state.clone().unwrap_or_default();
    // An empty time stays empty.
    let time = crate::flow::time_vi;
    println!(
        "{} {} — {} (số liệu đến sự kiện số {})",
        if reply.feedback {
            "Phản ánh, kiến nghị"
        } else {
            "Hồ sơ"
        },
        reply.case_id,
        word_vi(&state.status),
        reply.stream_sequence
    );
    let line = |label: &str, value: &str| {
        if !value.is_empty() {
            println!("  {label:<28} {value}");
        }
    };
    line("đơn vị", &state.unit_id);
    line("tiếp nhận", &time(&state.received_at));
    line("kênh", word_vi(&state.channel));
    // Names when the projector's catalogue has them, else the codes.
    let or_code = |name: &str, code: &str| {
        if name.is_empty() {
            code.to_owned()
        } else {
            name.to_owned()
        }
    };
    line("lĩnh vực", &or_code(&state.field_name, &state.field));
    line(
        "thủ tục",
        &or_code(&state.procedure_name, &state.procedure_code),
    );
    line("hạn ban đầu", &time(&state.original_due_at));
    line("hạn trả kết quả", &time(&state.due_at));
    for supplement in &state.supplements {
        line(
            "yêu cầu bổ sung",
            &format!(
                "{} → hạn mới {}: {}",
                time(&supplement.requested_at),
                time(&supplement.due_at),
                supplement.reason
            ),
        );
    }
    if let Some(apology) = &state.apology {
        line(
            "thư xin lỗi",
            &format!(
                "{} số {} (hẹn mới {})",
                time(&apology.issued_at),
                apology.letter_ref,
                time(&apology.new_due_at)
            ),
        );
    }
    line("giải quyết", &time(&state.resolved_at));
    line("kết quả", word_vi(&state.result));
    line("tiến độ", word_vi(&state.timeliness));
    line("rút hồ sơ", &time(&state.withdrawn_at));
    line(
        "đánh giá",
        format!("{} {}", word_vi(&state.rating), time(&state.rated_at)).trim(),
    );
    line("đồng bộ Cổng DVC quốc gia", &time(&state.synced_at));
    for payment in &state.payments {
        line(
            "thanh toán",
            &format!(
                "{} {} đồng{}",
                time(&payment.paid_at),
                crate::flow::count_vi(payment.amount_vnd),
                if payment.online {
                    " trực tuyến"
                } else {
                    ""
                }
            ),
        );
    }
    if state.held_events > 0 {
        line(
            "sự kiện đang chờ",
            &format!("{} (chờ sự kiện tiếp nhận hồ sơ)", state.held_events),
        );
    }
    if state.overdue {
        line("quá hạn", "có");
    }
    println!("  các sự kiện, theo thứ tự trong nhật ký:");
    for event in &reply.events {
        println!(
            "  #{:<8} {:<22} {:<16} {:<12} {}{}",
            event.stream_sequence,
            word_vi(&event.kind),
            time(&event.occurred_at),
            word_vi(&event.status),
            event.event_id,
            if event.reason.is_empty() {
                String::new()
            } else {
                format!(" — {}", event.reason)
            }
        );
        if !event.sender.is_empty() {
            println!("            người gửi: {}", event.sender);
        }
        if !event.payload_error.is_empty() {
            println!(
                "            (không đọc được sự kiện: {})",
                event.payload_error
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The Vietnamese of the codes `kpictl case` shows (statuses, results,
/// timeliness, channels, ratings, event kinds): README.md's table of terms
/// lists the same pairs.
pub const CASE_WORDS: &[(&str, &str)] = &[
    ("open", "đang giải quyết"),
    ("resolved", "đã giải quyết"),
    ("withdrawn", "đã rút"),
    ("held", "đang chờ"),
    ("counts", "được tính"),
    ("kept_aside", "để riêng"),
    ("early", "trước hạn"),
    ("on_time", "đúng hạn"),
    ("late", "trễ hạn"),
    ("approved", "chấp thuận"),
    ("rejected", "từ chối"),
    ("online", "trực tuyến"),
    ("in_person", "trực tiếp"),
    ("postal", "bưu chính"),
    ("very_satisfied", "rất hài lòng"),
    ("satisfied", "hài lòng"),
    ("unsatisfied", "không hài lòng"),
    ("case.received", "tiếp nhận"),
    ("case.supplement_requested", "yêu cầu bổ sung"),
    ("case.apology_issued", "thư xin lỗi"),
    ("case.resolved", "giải quyết"),
    ("case.withdrawn", "rút hồ sơ"),
    ("case.paid", "thanh toán"),
    ("case.rated", "đánh giá"),
    ("case.synced", "đồng bộ DVCQG"),
    ("feedback.received", "nhận phản ánh"),
    ("feedback.resolved", "trả lời phản ánh"),
];

/// The words people read for a code of a case's state or events; the
/// code itself when there are none.
fn word_vi(code: &str) -> &str {
    CASE_WORDS
        .iter()
        .find(|(known, _)| *known == code)
        .map_or(code, |(_, words)| words)
}

fn case_json(reply: &pb::CaseReply) -> serde_json::Value {
    let events: Vec<serde_json::Value> = reply
        .events
        .iter()
        .map(|event| {
            json!({
                "stream_sequence": event.stream_sequence,
                "event_id": event.event_id,
                "kind": event.kind,
                "occurred_at": event.occurred_at,
                "unit_id": event.unit_id,
                "subject": event.subject,
                "payload": String::from_utf8_lossy(&event.payload),
                "payload_error": event.payload_error,
                "published_at": event.published_at,
                "status": event.status,
                "reason": event.reason,
                "sender": event.sender,
            })
        })
        .collect();
    let state = reply.state.clone().unwrap_or_default();
    json!({
        "case_id": reply.case_id,
        "feedback": reply.feedback,
        "stream_sequence": reply.stream_sequence,
        "events": events,
        "state": {
            "status": state.status, "unit_id": state.unit_id, "received_at": state.received_at,
            "channel": state.channel, "field": state.field, "procedure_code": state.procedure_code,
            "due_at": state.due_at, "original_due_at": state.original_due_at,
            "supplements": state.supplements.iter().map(|s| json!({
                "requested_at": s.requested_at, "due_at": s.due_at, "reason": s.reason})).collect::<Vec<_>>(),
            "resolved_at": state.resolved_at, "result": state.result, "timeliness": state.timeliness,
            "withdrawn_at": state.withdrawn_at,
            "apology": state.apology.as_ref().map(|a| json!({
                "issued_at": a.issued_at, "letter_ref": a.letter_ref, "new_due_at": a.new_due_at})),
            "rating": state.rating, "rated_at": state.rated_at,
            "payments": state.payments.iter().map(|p| json!({
                "paid_at": p.paid_at, "amount_vnd": p.amount_vnd, "online": p.online})).collect::<Vec<_>>(),
            "synced_at": state.synced_at, "held_events": state.held_events, "overdue": state.overdue,
        },
    })
}

#[derive(Debug, Args)]
pub struct HeldArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn held(args: HeldArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args.api).await?;
    let mut records = Vec::new();
    let mut after = String::new();
    loop {
        let page = client
            .list_held(ListHeldRequest { after, limit: 1000 })
            .await
            .map_err(status_error)?
            .into_inner();
        records.extend(page.records);
        if page.next.is_empty() {
            break;
        }
        after = page.next;
    }
    if args.json {
        let rows: Vec<serde_json::Value> = records
            .iter()
            .map(|r| {
                json!({"case_id": r.case_id, "feedback": r.feedback, "unit_id": r.unit_id,
                            "first_at": r.first_at, "events": r.events})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        for record in &records {
            println!(
                "{} {} at {}: {} event(s) since {}, waiting for its {}",
                if record.feedback { "feedback" } else { "case" },
                record.case_id,
                record.unit_id,
                record.events,
                record.first_at,
                if record.feedback {
                    "feedback.received"
                } else {
                    "case.received"
                }
            );
        }
        println!("{} held", records.len());
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Where to write the fresh views (a new or empty directory).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Stop after this stream sequence, or after the last message NATS
    /// stored at or before this time (RFC 3339): what the system had been
    /// told by then, whenever the events occurred (a late report of a June
    /// event stored in July is not in a replay until 1 July). Default: the
    /// stream's end.
    #[arg(long)]
    pub until: Option<String>,
    #[command(flatten)]
    pub bus: BusArgs,
    /// sled cache of the new views, MiB.
    #[arg(long, default_value_t = 64)]
    pub cache_mb: u64,
    /// Messages folded into one atomic write.
    #[arg(long, default_value_t = kpi_projection::DEFAULT_BATCH_SIZE)]
    pub batch_size: usize,
}

fn parse_until(text: &str) -> anyhow::Result<Until> {
    if let Ok(sequence) = text.parse::<u64>() {
        return Ok(Until::Sequence(sequence));
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|at| Until::Time(at.with_timezone(&chrono::Utc)))
        .map_err(|_| {
            anyhow::anyhow!(
                "--until `{text}` is neither a stream sequence (e.g. 120000) nor an RFC 3339 time (e.g. 2025-07-01T00:00:00+07:00)"
            )
        })
}

fn today() -> Day {
    kpi_domain::Moment::from(chrono::Utc::now().fixed_offset()).local_day()
}

/// Folds the log into fresh views in `dir` up to `until`, with a progress
/// bar; the same pipeline as the projector's.
pub(crate) async fn replay_into(
    dir: &Path,
    units: Arc<UnitRegistry>,
    nats: &kpi_bus::NatsArgs,
    until: Until,
    live_day: Day,
    cache_mb: u64,
    batch_size: usize,
) -> anyhow::Result<(Arc<Store>, f64)> {
    let not_empty = std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some());
    anyhow::ensure!(
        !not_empty,
        "{} is not empty: replay writes fresh views into a new or empty directory",
        dir.display()
    );
    let store = Arc::new(Store::open(
        dir,
        &StoreOptions {
            cache_bytes: cache_mb * 1024 * 1024,
            ..StoreOptions::default()
        },
    )?);
    store.adopt_units(&units, live_day)?;
    let bus = nats.connect("kpictl-replay").await?;
    let stream_last = bus.stream_state().await?.last_sequence;
    let target = match until {
        Until::Sequence(sequence) => sequence.min(stream_last),
        Until::Time(_) | Until::StreamEnd => stream_last,
    };
    let bar = ProgressBar::new(target).with_style(
        ProgressStyle::with_template(
            "replay [{bar:40}] {pos}/{len} ({percent}%) {per_sec}, eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    let started = Instant::now();
    let pipeline = tokio::spawn(kpi_projection::run(
        kpi_projection::Config {
            nats: nats.clone(),
            client_name: "kpictl-replay".to_owned(),
            batch_size: batch_size.max(1),
            until: Some(until),
            metrics: None,
        },
        store.clone(),
        units,
        stopped,
    ));
    while !pipeline.is_finished() {
        bar.set_position(store.checkpoint()?.min(target));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    pipeline.await.context("the replay task")??;
    bar.set_position(store.checkpoint()?.min(target));
    bar.finish_and_clear();
    store.flush()?;
    Ok((store, started.elapsed().as_secs_f64()))
}

pub async fn replay(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let units = Arc::new(crate::load_units(&args.bus.units)?);
    let until = match &args.until {
        Some(text) => parse_until(text)?,
        None => Until::StreamEnd,
    };
    let (store, seconds) = replay_into(
        &args.data_dir,
        units,
        &args.bus.nats,
        until,
        today(),
        args.cache_mb,
        args.batch_size,
    )
    .await?;
    let checkpoint = store.checkpoint()?;
    let totals = store.totals()?;
    let events = totals.folded + totals.duplicates + totals.parked;
    println!(
        "đã dựng lại sự kiện số 1..{checkpoint} vào {} trong {seconds:.1} giây ({:.0} sự kiện/giây): {} được tính, {} trùng lặp, {} để riêng vì không hợp lệ, {} trùng mã khác nội dung",
        args.data_dir.display(),
        events as f64 / seconds.max(1e-3),
        totals.folded,
        totals.duplicates,
        totals.parked,
        totals.conflicts
    );
    // A port free now, so the hint works as printed beside a running projector.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map_or(50052, |address| address.port());
    println!(
        "phục vụ bản này đúng như vậy (không đọc nhật ký, số liệu dừng ở sự kiện số {checkpoint}): \
         projector --frozen --data-dir {} --units {} --listen 127.0.0.1:{port}\n\
         rồi hỏi: kpictl rates --addr http://127.0.0.1:{port} --unit <đơn vị> --period <kỳ>",
        args.data_dir.display(),
        args.bus.units.display()
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(flatten)]
    pub bus: BusArgs,
    /// Where to rebuild aside (default: a temporary directory, removed
    /// afterwards).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Print the differences as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The live views' counters, as of one sequence.
async fn live_export(api: &ApiArgs) -> anyhow::Result<ViewsExport> {
    let mut client = connect(api).await?;
    let mut chunks = client
        .export_views(ExportViewsRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    let mut export = ViewsExport::default();
    let mut names: Vec<String> = Vec::new();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(status_error)?;
        if !chunk.counters.is_empty() {
            export.checkpoint = chunk.stream_sequence;
            export.live_day = chrono::NaiveDate::parse_from_str(&chunk.live_day, "%Y-%m-%d")
                .ok()
                .map(Day::from_date);
            names = chunk.counters;
            export.open = chunk
                .open
                .into_iter()
                .map(|o| (o.unit_id, o.open as u32, o.without_apology as u32))
                .collect();
        }
        for row in chunk.days {
            let day = chrono::NaiveDate::parse_from_str(&row.day, "%Y-%m-%d")
                .with_context(|| format!("day `{}` in the export", row.day))?;
            let mut counters = kpi_domain::Counters::default();
            for (name, value) in names.iter().zip(row.counts) {
                if let Some(counter) = Counter::ALL.iter().find(|c| c.name() == name) {
                    counters[*counter] = value;
                }
            }
            export
                .days
                .push((row.unit_id, Day::from_date(day), counters));
        }
    }
    Ok(export)
}

/// One counter that differs.
struct Difference {
    unit: String,
    day: String,
    counter: String,
    live: u64,
    rebuilt: u64,
}

fn differences(live: &ViewsExport, rebuilt: &ViewsExport) -> Vec<Difference> {
    let by_key = |export: &ViewsExport| -> BTreeMap<(String, Day), kpi_domain::Counters> {
        export
            .days
            .iter()
            .map(|(unit, day, counters)| ((unit.clone(), *day), *counters))
            .collect()
    };
    let (live_days, rebuilt_days) = (by_key(live), by_key(rebuilt));
    let mut keys: Vec<&(String, Day)> = live_days.keys().chain(rebuilt_days.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut found = Vec::new();
    for key in keys {
        let a = live_days.get(key).copied().unwrap_or_default();
        let b = rebuilt_days.get(key).copied().unwrap_or_default();
        for counter in Counter::ALL {
            if a[*counter] != b[*counter] {
                found.push(Difference {
                    unit: key.0.clone(),
                    day: key.1.to_date().to_string(),
                    counter: counter.name().to_owned(),
                    live: a[*counter],
                    rebuilt: b[*counter],
                });
            }
        }
    }
    let open = |export: &ViewsExport| -> BTreeMap<String, (u32, u32)> {
        export
            .open
            .iter()
            .map(|(unit, open, without)| (unit.clone(), (*open, *without)))
            .collect()
    };
    let (live_open, rebuilt_open) = (open(live), open(rebuilt));
    let mut units: Vec<&String> = live_open.keys().chain(rebuilt_open.keys()).collect();
    units.sort();
    units.dedup();
    for unit in units {
        let a = live_open.get(unit).copied().unwrap_or_default();
        let b = rebuilt_open.get(unit).copied().unwrap_or_default();
        for (name, x, y) in [("open", a.0, b.0), ("open_without_apology", a.1, b.1)] {
            if x != y {
                found.push(Difference {
                    unit: unit.clone(),
                    day: "(live)".to_owned(),
                    counter: name.to_owned(),
                    live: u64::from(x),
                    rebuilt: u64::from(y),
                });
            }
        }
    }
    found
}

/// Event ids that appear in more than one case: counted in each (CONTRACT
/// §1.2), worth a look. A temporary sled tree keeps memory flat.
fn ids_reused_across_cases(
    store: &Store,
    dir: &Path,
) -> anyhow::Result<Vec<(String, Vec<String>)>> {
    let ids = sled::Config::new()
        .path(dir.join("event-ids"))
        .temporary(true)
        .open()?;
    for entry in store.records() {
        let (key, record) = entry?;
        for event in record.events.iter().chain(&record.kept_aside) {
            let mut id_key = event.event_id.as_bytes().to_vec();
            id_key.extend_from_slice(key.code().as_bytes());
            ids.insert(id_key, &[])?;
        }
    }
    let mut reused = Vec::new();
    let mut current: Option<(Vec<u8>, Vec<String>)> = None;
    for entry in ids.iter() {
        let (key, _) = entry?;
        let (id, case) = key.split_at(16);
        let case = String::from_utf8_lossy(case).into_owned();
        match &mut current {
            Some((seen, cases)) if seen.as_slice() == id => cases.push(case),
            _ => {
                if let Some((id, cases)) = current.take() {
                    if cases.len() > 1 {
                        reused.push((uuid_text(&id), cases));
                    }
                }
                current = Some((id.to_vec(), vec![case]));
            }
        }
    }
    if let Some((id, cases)) = current {
        if cases.len() > 1 {
            reused.push((uuid_text(&id), cases));
        }
    }
    Ok(reused)
}

fn uuid_text(bytes: &[u8]) -> String {
    uuid::Uuid::from_slice(bytes).map_or_else(|_| "?".to_owned(), |id| id.to_string())
}

pub async fn verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let units = Arc::new(crate::load_units(&args.bus.units)?);
    let live = live_export(&args.api).await?;
    if live.checkpoint == 0 {
        println!("số liệu đang chạy chưa có sự kiện nào: không có gì để kiểm tra");
        return Ok(ExitCode::SUCCESS);
    }
    let temporary;
    let work = match &args.work_dir {
        Some(dir) => dir.clone(),
        None => {
            temporary = tempfile::Builder::new().prefix("kpi-verify-").tempdir()?;
            temporary.path().to_path_buf()
        }
    };
    let views_dir = work.join("views");
    let live_day = live.live_day.unwrap_or_else(today);
    eprintln!(
        "verify: dựng lại từ nhật ký đến sự kiện số {} của số liệu đang chạy, vào {}",
        live.checkpoint,
        views_dir.display()
    );
    let (store, seconds) = replay_into(
        &views_dir,
        units,
        &args.bus.nats,
        Until::Sequence(live.checkpoint),
        live_day,
        64,
        kpi_projection::DEFAULT_BATCH_SIZE,
    )
    .await?;
    let rebuilt = store.export()?;
    anyhow::ensure!(
        rebuilt.checkpoint == live.checkpoint,
        "the rebuild reached stream sequence {} but the live views are at {}: the stream ends earlier than the views (it lost messages?)",
        rebuilt.checkpoint,
        live.checkpoint
    );
    let found = differences(&live, &rebuilt);
    let reused = ids_reused_across_cases(&store, &work)?;
    let units_cause = if found.is_empty() {
        Vec::new()
    } else {
        kept_aside_for_their_unit_only_here(&store, &args.api).await?
    };
    if args.json {
        let report = json!({
            "units_file_cause": units_cause.iter().map(|(unit, events)| json!({
                "unit": unit, "events": events,
                "cause": format!("the rebuild under {} keeps these events aside for their unit; the live views count them", args.bus.units.display()),
            })).collect::<Vec<_>>(),
            "stream_sequence": live.checkpoint,
            "differences": found.iter().map(|d| json!({"unit": d.unit, "day": d.day,
                "counter": d.counter, "live": d.live, "rebuilt": d.rebuilt})).collect::<Vec<_>>(),
            "warnings": reused.iter().map(|(id, cases)| json!({
                "event_id": id, "cases": cases,
                "warning": "event_id used in more than one case: it counts in each"})).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for (id, cases) in &reused {
            println!(
                "cảnh báo: event_id {id} được dùng trong {} hồ sơ ({}): được tính ở mỗi hồ sơ",
                cases.len(),
                cases.join(", ")
            );
        }
        for d in &found {
            println!(
                "khác nhau: đơn vị {} ngày {} chỉ số {}: đang chạy {}, dựng lại {}",
                d.unit, d.day, d.counter, d.live, d.rebuilt
            );
        }
        for (unit, events) in &units_cause {
            println!(
                "nguyên nhân: theo tệp đơn vị {}, bản dựng lại để riêng {events} sự kiện của đơn vị {unit} \
                 (đơn vị không tồn tại vào ngày của chúng) mà số liệu đang chạy vẫn tính: projector đã \
                 tính chúng theo một tệp đơn vị khác, hoặc một tệp đã đổi ngày từ đó. Cho projector và \
                 verify dùng cùng một tệp đơn vị; nếu tệp này đúng, dựng lại số liệu (kpictl rebuild)",
                args.bus.units.display()
            );
        }
        println!(
            "verify: đã so {} dòng theo ngày và hồ sơ đang mở của {} đơn vị tại sự kiện số {} (dựng lại trong {seconds:.1} giây): {}",
            rebuilt.days.len().max(live.days.len()),
            rebuilt.open.len().max(live.open.len()),
            live.checkpoint,
            if found.is_empty() {
                "số liệu đang chạy khớp với nhật ký".to_owned()
            } else {
                format!(
                    "{} chỉ số khác nhau: dựng lại số liệu (`kpictl rebuild`; README, Rebuilding the views)",
                    found.len()
                )
            }
        );
    }
    Ok(if found.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Units whose events the rebuild kept aside as invalid for their unit
/// while the live views did not (they count them): the units file of the
/// rebuild is not the one the live views were folded with. With how many
/// such events each.
async fn kept_aside_for_their_unit_only_here(
    rebuilt: &Store,
    api: &ApiArgs,
) -> anyhow::Result<Vec<(String, u64)>> {
    let live: std::collections::HashSet<u64> = crate::redrive::all_parked(api)
        .await?
        .iter()
        .map(|event| event.stream_sequence)
        .collect();
    let mut units: BTreeMap<String, u64> = BTreeMap::new();
    for parked in rebuilt.parked_iter(0) {
        let parked = parked?;
        if parked.cause == kpi_store::ParkCause::Invalid
            && parked.field.as_deref() == Some("unit_id")
            && !live.contains(&parked.sequence)
        {
            *units.entry(parked.unit_id().to_owned()).or_default() += 1;
        }
    }
    Ok(units.into_iter().collect())
}

#[derive(Debug, Args)]
pub struct RebuildArgs {
    #[command(flatten)]
    pub api: ApiArgs,
}

pub async fn rebuild(args: RebuildArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args.api).await?;
    let reply = client
        .rebuild(RebuildRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    println!("{}", reply.message);
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::CASE_WORDS;
    use kpi_domain::Kpi;

    const README: &str = include_str!("../../../README.md");

    /// README.md's table of terms says what `kpictl` prints for each code.
    #[test]
    fn the_readme_lists_the_words_kpictl_prints_for_each_code() {
        let terms = README
            .split("### The words on the tables")
            .nth(1)
            .and_then(|rest| rest.split("\n### ").next())
            .expect("README.md has a section of terms");
        let mut missing = Vec::new();
        let kpis = Kpi::ALL.iter().map(|kpi| (kpi.name(), kpi.title_vi()));
        for (code, words) in CASE_WORDS.iter().copied().chain(kpis) {
            let row = format!("| `{code}` | {words} |");
            if !terms.contains(&row) {
                missing.push(row);
            }
        }
        assert_eq!(missing, Vec::<String>::new(), "rows missing from README.md");
    }
}
