//! `kpictl watch`, `rank`, `at-risk`, `scores` and `targets`: the live
//! views and what districts and communes do with them.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use futures::StreamExt;
use kpi_api::pb::{self, GetRatesRequest, GetScoresRequest, ListAtRiskRequest, RankUnitsRequest};
use kpi_domain::targets::next_year_target;
use kpi_domain::Kpi;
use serde_json::{json, Value};

use crate::query::{connect, rates_json, rates_table, status_error};
use crate::ApiArgs;

#[derive(Debug, Args)]
pub struct WatchArgs {
    #[arg(long)]
    pub unit: String,
    #[arg(long)]
    pub period: String,
    #[command(flatten)]
    pub api: ApiArgs,
    /// One JSON answer a line (NDJSON) instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// How long the table stays as drawn while only its live block (open
/// cases now, which move with every case received anywhere below the
/// unit) changes: a past period's table is redrawn when a late event
/// revises it, not once a second under live traffic.
const LIVE_ONLY_REDRAW: std::time::Duration = std::time::Duration::from_secs(60);

/// Whether two answers give the same figures for the period (rates and
/// counts), whatever their live block and stream sequence.
fn same_period_figures(a: &pb::RatesReply, b: &pb::RatesReply) -> bool {
    a.rates == b.rates && a.counts == b.counts && a.unit_name == b.unit_name
}

/// Follows `WatchRates`, redrawing the table on a terminal when the
/// period's figures change (its live block at most every
/// [`LIVE_ONLY_REDRAW`]); `--json` prints every answer.
pub async fn watch(args: WatchArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args.api).await?;
    let mut answers = client
        .watch_rates(GetRatesRequest {
            unit_id: args.unit,
            period: args.period,
            min_stream_sequence: None,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let terminal = std::io::stdout().is_terminal();
    let mut drawn: Option<(pb::RatesReply, std::time::Instant)> = None;
    while let Some(answer) = answers.next().await {
        let reply = answer.map_err(status_error)?;
        let mut out = std::io::stdout().lock();
        if args.json {
            writeln!(out, "{}", rates_json(&reply))?;
        } else {
            let live_only = drawn.as_ref().is_some_and(|(last, at)| {
                at.elapsed() < LIVE_ONLY_REDRAW && same_period_figures(last, &reply)
            });
            if live_only {
                continue;
            }
            drawn = Some((reply.clone(), std::time::Instant::now()));
            if terminal {
                // Clear the screen and go home: the table is redrawn.
                write!(out, "\x1b[2J\x1b[H")?;
            }
            write!(out, "{}", rates_table(&reply))?;
            writeln!(out)?;
        }
        out.flush()?;
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub struct RankArgs {
    /// The unit whose children are ranked (a district or a province).
    #[arg(long)]
    pub parent: String,
    #[arg(long)]
    pub period: String,
    /// The KPI to rank by, e.g. on_time_rate.
    #[arg(long, default_value = "on_time_rate")]
    pub kpi: String,
    #[command(flatten)]
    pub api: ApiArgs,
    #[arg(long)]
    pub json: bool,
}

pub async fn rank(args: RankArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args.api).await?;
    let reply = client
        .rank_units(RankUnitsRequest {
            parent_id: args.parent,
            period: args.period,
            kpi: args.kpi,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    if args.json {
        let units: Vec<Value> = reply
            .units
            .iter()
            .map(|unit| {
                let rate = unit.rate.clone().unwrap_or_default();
                json!({"rank": unit.rank, "unit_id": unit.unit_id, "unit_name": unit.unit_name,
                       "numerator": rate.numerator, "denominator": rate.denominator,
                       "percent": rate.percent, "target_percent": rate.target_percent, "met": rate.met})
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"parent_id": reply.parent_id, "period": reply.period,
                "kpi": reply.kpi, "higher_is_better": reply.higher_is_better,
                "stream_sequence": reply.stream_sequence, "units": units})
            )?
        );
        return Ok(ExitCode::SUCCESS);
    }
    let title = Kpi::parse(&reply.kpi).map_or("", Kpi::title_vi);
    println!(
        "Xếp hạng (ranking) {} — {} ({}), {}",
        reply.parent_id, title, reply.kpi, reply.period
    );
    for unit in &reply.units {
        let rate = unit.rate.clone().unwrap_or_default();
        println!(
            "{:>3}. {:<12} {:<34} {:>9} {:>13}",
            unit.rank,
            unit.unit_id,
            unit.unit_name,
            crate::report::percent_vi(rate.percent),
            format!("{}/{}", rate.numerator, rate.denominator)
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub struct AtRiskArgs {
    #[arg(long)]
    pub unit: String,
    /// Cases due within this many hours, and every overdue one.
    #[arg(long, default_value_t = 24)]
    pub within_hours: u32,
    #[command(flatten)]
    pub api: ApiArgs,
    #[arg(long)]
    pub json: bool,
}

pub async fn at_risk(args: AtRiskArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args.api).await?;
    let mut cases = Vec::new();
    let mut after = String::new();
    loop {
        let page = client
            .list_at_risk(ListAtRiskRequest {
                unit_id: args.unit.clone(),
                within_hours: args.within_hours,
                limit: 1000,
                after,
            })
            .await
            .map_err(status_error)?
            .into_inner();
        cases.extend(page.cases);
        if page.next.is_empty() {
            break;
        }
        after = page.next;
    }
    if args.json {
        let rows: Vec<Value> = cases
            .iter()
            .map(|c| {
                json!({"case_id": c.case_id, "unit_id": c.unit_id, "received_at": c.received_at,
                "due_at": c.due_at, "overdue": c.overdue, "days_overdue": c.days_overdue,
                "hours_left": c.hours_left, "has_apology": c.has_apology,
                "procedure_code": c.procedure_code, "field": c.field})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    for case in &cases {
        let when = if case.overdue {
            format!(
                "quá hạn {} ngày (overdue {} days)",
                case.days_overdue, case.days_overdue
            )
        } else {
            format!(
                "còn {:.1} giờ (due in {:.1} h)",
                case.hours_left, case.hours_left
            )
        };
        println!(
            "{:<32} {:<10} hạn {} — {}{}",
            case.case_id,
            case.unit_id,
            case.due_at,
            when,
            if case.overdue && !case.has_apology {
                " — chưa có thư xin lỗi (no apology letter)"
            } else {
                ""
            }
        );
    }
    println!(
        "{} open cases of {} due within {} h or overdue",
        cases.len(),
        args.unit,
        args.within_hours
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub struct ScoresArgs {
    #[arg(long)]
    pub unit: String,
    #[arg(long)]
    pub period: String,
    #[command(flatten)]
    pub api: ApiArgs,
    #[arg(long)]
    pub json: bool,
}

pub fn scores_json(reply: &pb::ScoresReply) -> Value {
    json!({
        "unit_id": reply.unit_id, "unit_name": reply.unit_name, "period": reply.period,
        "first_day": reply.first_day, "last_day": reply.last_day,
        "points": reply.points, "max_points": reply.max_points,
        "stream_sequence": reply.stream_sequence,
        "components": reply.components.iter().map(|c| json!({
            "code": c.code, "group": c.group, "numerator": c.numerator,
            "denominator": c.denominator, "rate": c.rate, "points": c.points,
            "max_points": c.max_points, "reason": c.reason})).collect::<Vec<_>>(),
    })
}

pub async fn scores(args: ScoresArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args.api).await?;
    let reply = client
        .get_scores(GetScoresRequest {
            unit_id: args.unit,
            period: args.period,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&scores_json(&reply))?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "Điểm QĐ 766 — {} ({}) — {}: {} … {}",
        reply.unit_name, reply.unit_id, reply.period, reply.first_day, reply.last_day
    );
    for c in &reply.components {
        println!(
            "{:<24} {:<36} {:>13} {:>9} {:>6} / {:<4} {}",
            c.group,
            c.code,
            if c.denominator > 0 || c.points.is_some() && c.numerator > 0 {
                format!("{}/{}", c.numerator, c.denominator)
            } else {
                String::new()
            },
            crate::report::percent_vi(c.rate),
            c.points
                .map_or_else(|| "—".to_owned(), |p| format!("{p:.2}")),
            c.max_points,
            c.reason
        );
    }
    println!(
        "Tổng (total): {:.2} of {} computable points (of 100)",
        reply.points, reply.max_points
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub struct TargetsArgs {
    /// The year whose results set next year's targets.
    #[arg(long)]
    pub year: i32,
    /// Only this unit and those under it (default: every unit).
    #[arg(long)]
    pub root: Option<String>,
    /// Write the targets file here (the projector's --targets format).
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub api: ApiArgs,
    #[arg(long)]
    pub json: bool,
}

/// Next year's targets for every unit (seed 001, appendix 1): the central
/// target of next year where this year's result is below it; otherwise
/// the result plus 10 points, capped at 100, never below the central one.
pub async fn targets(args: TargetsArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args.api).await?;
    let next = args.year + 1;
    let units =
        crate::query::unit_ids(&mut client, args.root.as_deref(), &format!("{next}-01-01")).await?;
    let mut entries = Vec::new();
    let mut shown = Vec::new();
    for unit in units {
        let ask = |period: String| GetRatesRequest {
            unit_id: unit.clone(),
            period,
            min_stream_sequence: None,
        };
        let this_year = client
            .get_rates(ask(args.year.to_string()))
            .await
            .map_err(status_error)?
            .into_inner();
        let next_year = client
            .get_rates(ask(next.to_string()))
            .await
            .map_err(status_error)?
            .into_inner();
        let mut rates = serde_json::Map::new();
        for rate in &this_year.rates {
            let Some(central) = next_year
                .rates
                .iter()
                .find(|r| r.kpi == rate.kpi)
                .and_then(|r| r.target_percent)
            else {
                continue;
            };
            // Two decimals, as the targets are written by people.
            let target = kpi_domain::scores::round2(next_year_target(central, rate.percent));
            let central_vi = crate::query::target_vi(central);
            let rule_vi = match rate.percent {
                None => format!("chưa có kết quả: lấy mục tiêu chung {central_vi}"),
                Some(result) if result < central => format!(
                    "{} thấp hơn mục tiêu chung {central_vi}: lấy mục tiêu chung",
                    crate::report::percent_vi(Some(result))
                ),
                Some(result) if result + 10.0 > 100.0 => {
                    format!(
                        "{} + 10 điểm, tối đa 100%",
                        crate::report::percent_vi(Some(result))
                    )
                }
                Some(result) => format!("{} + 10 điểm", crate::report::percent_vi(Some(result))),
            };
            let rule = match rate.percent {
                None => "no result: the central target".to_owned(),
                Some(result) if result < central => {
                    format!("{result:.2}% < central {central}%: the central target")
                }
                Some(result) if result + 10.0 > 100.0 => {
                    format!("{result:.2}% + 10 capped at 100")
                }
                Some(result) => format!("{result:.2}% + 10"),
            };
            shown.push(
                json!({"unit_id": unit, "unit_name": this_year.unit_name, "kpi": rate.kpi,
                "result": rate.percent, "central": central, "target": target, "rule": rule,
                "rule_vi": rule_vi}),
            );
            rates.insert(rate.kpi.clone(), json!(target));
        }
        entries.push(json!({"year": next, "unit_id": unit, "rates": rates}));
    }
    let file = json!({ "targets": entries });
    if let Some(path) = &args.out {
        std::fs::write(path, serde_json::to_string_pretty(&file)? + "\n")?;
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"computation": shown, "file": file}))?
        );
    } else {
        for row in &shown {
            let kpi = row["kpi"].as_str().unwrap_or_default();
            println!(
                "{:<12} {} — {} → {}  ({})",
                row["unit_id"].as_str().unwrap_or_default(),
                row["unit_name"].as_str().unwrap_or_default(),
                match kpi_domain::Kpi::parse(kpi) {
                    Some(kpi) => kpi.title_vi(),
                    None => kpi,
                },
                crate::query::target_vi(row["target"].as_f64().unwrap_or_default()),
                row["rule_vi"].as_str().unwrap_or_default()
            );
        }
        if let Some(path) = &args.out {
            println!(
                "đã ghi mục tiêu năm {next} vào {} (dùng làm --targets của projector)",
                path.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
