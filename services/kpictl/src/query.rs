//! `kpictl rates` and `kpictl rejected`: reading the gRPC API.

use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use kpi_api::pb::kpi_service_client::KpiServiceClient;
use kpi_api::pb::{self, GetRatesRequest, ListRejectedRequest, ListUnitsRequest, RatesReply};
use kpi_api::Bearer;
use kpi_domain::Kpi;
use serde_json::{json, Map, Value};
use tonic::codegen::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::ApiArgs;

#[derive(Debug, Args)]
pub struct RatesArgs {
    /// The unit (commune, district or province id).
    #[arg(long)]
    pub unit: String,
    /// The period: 2025, 2025-H1, 2025-Q1, 2025-03, 2025-03-15, R2025,
    /// R2025-Q1, R2025-6M, R2025-9M, R2025-03 or 2025-03-15..2025-06-14.
    #[arg(long)]
    pub period: String,
    #[command(flatten)]
    pub api: ApiArgs,
    /// Print the answer as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RejectedArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Only events after this stream sequence.
    #[arg(long, default_value_t = 0)]
    pub after: u64,
    /// At most this many.
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

/// A KpiService client that sends the caller's token with every call.
pub type Client = KpiServiceClient<InterceptedService<Channel, Bearer>>;

pub async fn connect(api: &ApiArgs) -> anyhow::Result<Client> {
    let addr = &api.addr;
    if api.token.is_some() {
        kpi_access::token_may_travel(addr, "--token").map_err(anyhow::Error::msg)?;
    }
    let mut endpoint = Endpoint::from_shared(addr.clone())
        .with_context(|| format!("--addr {addr} is not a URL like http://127.0.0.1:50051"))?;
    if let Some(ca) = &api.ca {
        let pem = std::fs::read(ca)
            .with_context(|| format!("reading the CA certificate {}", ca.display()))?;
        endpoint = endpoint
            .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))?;
    } else if addr.starts_with("https:") {
        endpoint = endpoint.tls_config(ClientTlsConfig::new().with_native_roots())?;
    }
    let channel = endpoint
        .connect()
        .await
        .map_err(|err| connect_error(addr, &err))?;
    let bearer =
        Bearer::new(api.token.as_deref()).map_err(|err| anyhow::anyhow!("--token: {err}"))?;
    Ok(KpiServiceClient::with_interceptor(channel, bearer))
}

/// Why `addr` could not be reached, with what to do about it: an untrusted
/// certificate, TLS on one side only, or nothing listening.
fn connect_error(addr: &str, err: &tonic::transport::Error) -> anyhow::Error {
    let mut causes = Vec::new();
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(current) = cause {
        causes.push(current.to_string());
        cause = current.source();
    }
    let detail = causes.join(": ");
    if detail.contains("invalid peer certificate") {
        anyhow::anyhow!(
            "the certificate of the KPI API at {addr} is not trusted ({detail}): pass --ca with the \
             CA certificate that signed it (env KPI_CA)"
        )
    } else if detail.contains("InvalidContentType") || detail.contains("corrupt message") {
        anyhow::anyhow!("the KPI API at {addr} does not speak TLS ({detail}): use http:// for it")
    } else {
        anyhow::anyhow!("cannot reach the KPI API at {addr} ({detail}): is the projector running?")
    }
}

/// A refused or failed call as the user reads it: the server's own message,
/// without the gRPC code's boilerplate; a broken connection says what
/// usually breaks it.
pub fn status_error(status: tonic::Status) -> anyhow::Error {
    use tonic::Code;
    // A connection that broke or never carried gRPC: the server is gone, or
    // speaks TLS to a client that does not. The call then fails as Unknown
    // ("transport error"), Internal ("h2 protocol error"), Cancelled or
    // Unavailable, depending on timing; the API itself never answers with
    // these but Internal, with its own message.
    let broken = match status.code() {
        Code::Unavailable | Code::Unknown | Code::Cancelled => true,
        Code::Internal => status.message().starts_with("h2 protocol error"),
        _ => false,
    };
    if broken {
        return anyhow::anyhow!(
            "the connection to the KPI API failed ({}): is the projector running? If its port \
             speaks TLS (a projector started with --tls-cert), use https:// and --ca",
            status.message()
        );
    }
    anyhow::anyhow!("{}", status.message())
}

pub async fn rates(args: RatesArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args.api).await?;
    let reply = client
        .get_rates(GetRatesRequest {
            unit_id: args.unit,
            period: args.period,
            min_stream_sequence: None,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rates_json(&reply))?);
    } else {
        print!("{}", rates_table(&reply));
        // The table stands on its own: a note that cannot be made (the
        // units listed are the token's only) is left out, not an error.
        match existence_notice(&mut client, &reply).await {
            Ok(Some(notice)) => println!("{notice}"),
            Ok(None) => {}
            Err(err) => tracing::debug!(error = %err, "no note on the unit's days"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A note for people when the unit did not exist for the whole period
/// (CONTRACT §1.1: a ward merged, a district ended, a unit formed in it):
/// its table then counts only the days it existed, and the note says
/// which and who carries its cases since. `None` when it existed
/// throughout.
async fn existence_notice(
    client: &mut Client,
    reply: &RatesReply,
) -> anyhow::Result<Option<String>> {
    use crate::flow::date_vi;
    let named = |unit: &pb::Unit| format!("{} ({})", unit.name, unit.id);
    // The tree of the last day, read once: the unit if it exists then, or
    // the units that succeeded it.
    let (_, tree) = walk_units(client, None, &reply.last_day).await?;
    let at_end = tree
        .iter()
        .map(|(_, unit)| unit)
        .find(|unit| unit.id == reply.unit_id);
    if let Some(unit) = at_end {
        if unit.valid_from.is_empty() || unit.valid_from <= reply.first_day {
            return Ok(None);
        }
        let mut note = format!(
            "Lưu ý: {} được thành lập ngày {}",
            named(unit),
            date_vi(&unit.valid_from)
        );
        if !unit.successor_of.is_empty() {
            note.push_str(&format!(" từ {}", unit.successor_of.join(", ")));
        }
        note.push_str("; bảng chỉ tính từ ngày đó, trước đó hồ sơ thuộc các đơn vị cũ.");
        return Ok(Some(note));
    }
    let successors: Vec<String> = tree
        .iter()
        .filter(|(_, unit)| unit.successor_of.contains(&reply.unit_id))
        .map(|(_, unit)| named(unit))
        .collect();
    let carried = if successors.is_empty() {
        String::new()
    } else {
        format!(" Hồ sơ của đơn vị này nay thuộc {}.", successors.join(", "))
    };
    let note = match find_unit(client, &reply.unit_id, &reply.first_day).await? {
        Some(unit) if !unit.valid_to.is_empty() => format!(
            "Lưu ý: {} không còn từ sau ngày {}; bảng chỉ tính đến ngày đó.{carried}",
            named(&unit),
            date_vi(&unit.valid_to)
        ),
        _ => format!(
            "Lưu ý: {} ({}) không tồn tại trong kỳ {} ({} … {}): bảng không có hồ sơ nào.{carried}",
            reply.unit_name,
            reply.unit_id,
            reply.period,
            date_vi(&reply.first_day),
            date_vi(&reply.last_day)
        ),
    };
    Ok(Some(note))
}

/// The answer in the shape of the scenario's expected.json.
pub fn rates_json(reply: &RatesReply) -> Value {
    let rates: Map<String, Value> = reply
        .rates
        .iter()
        .map(|rate| {
            (
                rate.kpi.clone(),
                json!({
                    "numerator": rate.numerator,
                    "denominator": rate.denominator,
                    "percent": rate.percent,
                    "target_percent": rate.target_percent,
                    "met": rate.met,
                }),
            )
        })
        .collect();
    let live = reply.live.unwrap_or_default();
    json!({
        "unit_id": reply.unit_id,
        "unit_name": reply.unit_name,
        "period": reply.period,
        "first_day": reply.first_day,
        "last_day": reply.last_day,
        "target_year": reply.target_year,
        "stream_sequence": reply.stream_sequence,
        "rates": rates,
        "counts": reply.counts,
        "live": {
            "open": live.open,
            "overdue_open": live.overdue_open,
            "overdue_without_apology": live.overdue_without_apology,
        },
    })
}

/// A target as people write it: `97%`, `76,67%`.
pub fn target_vi(target: f64) -> String {
    if target.fract() == 0.0 {
        format!("{target:.0}%")
    } else {
        format!("{target:.2}%").replace('.', ",")
    }
}

/// `text` padded with spaces to `width` characters (not bytes).
pub fn pad_to(text: &str, width: usize) -> String {
    let length = text.chars().count();
    format!("{text}{}", " ".repeat(width.saturating_sub(length)))
}

/// A table for people, in Vietnamese (codes are in `--json`).
pub fn rates_table(reply: &RatesReply) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} ({}) — kỳ {}: {} … {} — mục tiêu năm {} — số liệu đến sự kiện số {}",
        reply.unit_name,
        reply.unit_id,
        reply.period,
        crate::flow::date_vi(&reply.first_day),
        crate::flow::date_vi(&reply.last_day),
        reply.target_year,
        reply.stream_sequence
    );
    let _ = writeln!(
        out,
        "{:<44} {:>9} {:>13} {:>9}  Đánh giá",
        "Chỉ tiêu", "Tỷ lệ", "Tử số/Mẫu số", "Mục tiêu"
    );
    for rate in &reply.rates {
        let title: &str = match Kpi::parse(&rate.kpi) {
            Some(kpi) => kpi.title_vi(),
            None => &rate.kpi,
        };
        let met = match rate.met {
            Some(true) => "đạt",
            Some(false) => "chưa đạt",
            None => "—",
        };
        let _ = writeln!(
            out,
            "{:<44} {:>9} {:>13} {:>9}  {}",
            pad_to(title, 44),
            crate::report::percent_vi(rate.percent),
            format!("{}/{}", rate.numerator, rate.denominator),
            rate.target_percent
                .map_or_else(|| "—".to_owned(), target_vi),
            met
        );
    }
    let live = reply.live.unwrap_or_default();
    let _ = writeln!(
        out,
        "Hồ sơ đang giải quyết (hiện nay): {} — quá hạn: {} — quá hạn chưa có thư xin lỗi: {}",
        live.open, live.overdue_open, live.overdue_without_apology
    );
    out
}

pub async fn rejected(args: RejectedArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args.api).await?;
    let reply = client
        .list_rejected(ListRejectedRequest {
            after_sequence: args.after,
            limit: args.limit,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    if args.json {
        let events: Vec<Value> = reply
            .events
            .iter()
            .map(|event| {
                json!({
                    "stream_sequence": event.stream_sequence,
                    "subject": event.subject,
                    "field": event.field,
                    "reason": event.reason,
                    "published_at": event.published_at,
                    "payload": String::from_utf8_lossy(&event.payload),
                })
            })
            .collect();
        let report = json!({"total_rejected": reply.total_rejected, "events": events});
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for event in &reply.events {
            println!(
                "#{} lúc {} {}",
                event.stream_sequence,
                crate::flow::time_vi(&event.published_at),
                event.subject
            );
            println!("  lý do:   {}", crate::vietnamese::reason_vi(&event.reason));
            println!("  sự kiện: {}", String::from_utf8_lossy(&event.payload));
        }
        println!(
            "hiển thị {}, tổng số sự kiện bị từ chối {}",
            reply.events.len(),
            reply.total_rejected
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub struct UnitsArgs {
    /// The tree of this day (YYYY-MM-DD, Vietnam time); default today.
    #[arg(long)]
    pub as_of: Option<String>,
    /// Only the subtree of this unit.
    #[arg(long)]
    pub root: Option<String>,
    #[command(flatten)]
    pub api: ApiArgs,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `kpictl units`: the tree of units of a day, from the API, each unit
/// followed by the units under it that day.
pub async fn units(args: UnitsArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args.api).await?;
    let as_of = args.as_of.unwrap_or_default();
    let (listed_day, walked) = walk_units(&mut client, args.root.as_deref(), &as_of).await?;
    let mut rows = Vec::new();
    if let Some(root) = &args.root {
        let found = find_unit(&mut client, root, &as_of).await?;
        rows.push((
            0,
            found
                .as_ref()
                .map_or_else(|| json!({"id": root}), unit_json),
        ));
    }
    let shift = usize::from(args.root.is_some());
    for (depth, unit) in walked {
        rows.push((depth + shift, unit_json(&unit)));
    }
    print_tree(&listed_day, rows, args.json)
}

fn unit_json(unit: &pb::Unit) -> Value {
    json!({
        "id": unit.id, "name": unit.name, "level": unit.level,
        "parent_id": unit.parent_id, "valid_from": unit.valid_from,
        "valid_to": unit.valid_to, "successor_of": unit.successor_of,
    })
}

/// A unit of the tree of a day, looked up from the roots down, level by
/// level (a province, its districts, their communes): ListUnits lists
/// children only.
async fn find_unit(
    client: &mut crate::query::Client,
    id: &str,
    as_of: &str,
) -> anyhow::Result<Option<pb::Unit>> {
    let mut level = vec![String::new()];
    for _ in 0..4 {
        let mut next = Vec::new();
        for parent_id in level {
            let listed = client
                .list_units(ListUnitsRequest {
                    parent_id,
                    as_of: as_of.to_owned(),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            if let Some(unit) = listed.units.iter().find(|unit| unit.id == id) {
                return Ok(Some(unit.clone()));
            }
            next.extend(listed.units.into_iter().map(|unit| unit.id));
        }
        level = next;
    }
    Ok(None)
}

/// The tree of units of a day (`as_of`, empty for today), under `root` or
/// from the roots, depth first: each unit with its depth, followed by the
/// units under it. Also the day listed.
pub async fn walk_units(
    client: &mut crate::query::Client,
    root: Option<&str>,
    as_of: &str,
) -> anyhow::Result<(String, Vec<(usize, pb::Unit)>)> {
    let list = |parent_id: String| {
        let request = ListUnitsRequest {
            parent_id,
            as_of: as_of.to_owned(),
        };
        let mut client = client.clone();
        async move {
            client
                .list_units(request)
                .await
                .map_err(status_error)
                .map(tonic::Response::into_inner)
        }
    };
    let first = list(root.unwrap_or_default().to_owned()).await?;
    let listed_day = first.as_of.clone();
    let mut rows = Vec::new();
    let mut stack: Vec<(usize, pb::Unit)> = first
        .units
        .into_iter()
        .rev()
        .map(|unit| (0, unit))
        .collect();
    while let Some((depth, unit)) = stack.pop() {
        let children = list(unit.id.clone()).await?;
        stack.extend(
            children
                .units
                .into_iter()
                .rev()
                .map(|child| (depth + 1, child)),
        );
        rows.push((depth, unit));
    }
    Ok((listed_day, rows))
}

/// Every unit id of the tree of a day, under `root` (itself included) or
/// from the roots.
pub async fn unit_ids(
    client: &mut crate::query::Client,
    root: Option<&str>,
    as_of: &str,
) -> anyhow::Result<Vec<String>> {
    let (_, walked) = walk_units(client, root, as_of).await?;
    Ok(root
        .map(str::to_owned)
        .into_iter()
        .chain(walked.into_iter().map(|(_, unit)| unit.id))
        .collect())
}

fn print_tree(as_of: &str, rows: Vec<(usize, Value)>, as_json: bool) -> anyhow::Result<ExitCode> {
    if as_json {
        let units: Vec<Value> = rows.into_iter().map(|(_, unit)| unit).collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"as_of": as_of, "units": units}))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!("Đơn vị hành chính ngày {}", crate::flow::date_vi(as_of));
    for (depth, unit) in rows {
        let text = |key: &str| unit[key].as_str().unwrap_or_default().to_owned();
        let mut line = format!("{}{} {}", "  ".repeat(depth), text("id"), text("name"));
        let level = match text("level").as_str() {
            "province" => "tỉnh",
            "district" => "huyện",
            "commune" => "xã",
            _ => "",
        };
        if !level.is_empty() {
            line.push_str(&format!(" [{level}]"));
        }
        let (from, to) = (text("valid_from"), text("valid_to"));
        match (from.is_empty(), to.is_empty()) {
            (false, false) => line.push_str(&format!(
                " (từ {} đến {})",
                crate::flow::date_vi(&from),
                crate::flow::date_vi(&to)
            )),
            (false, true) => line.push_str(&format!(" (từ {})", crate::flow::date_vi(&from))),
            (true, false) => line.push_str(&format!(" (đến {})", crate::flow::date_vi(&to))),
            (true, true) => {}
        }
        if let Some(predecessors) = unit["successor_of"]
            .as_array()
            .filter(|list| !list.is_empty())
        {
            let ids: Vec<&str> = predecessors.iter().filter_map(Value::as_str).collect();
            line.push_str(&format!(" (kế thừa {})", ids.join(", ")));
        }
        println!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}
