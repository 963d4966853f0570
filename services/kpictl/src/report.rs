//! `kpictl report`: the page a commune publishes every month on its
//! website (seed 000, II.2) — progress in handling cases, satisfaction and
//! the QĐ 766 results — as one self-contained HTML file in Vietnamese,
//! readable offline and printable on A4, or the same figures as CSV.
//!
//! Every figure comes from the API (`GetRates`, `GetScores`, `ListUnits`);
//! every name is escaped. Charts are inline SVG: each rate as a bar
//! against its target line, and the monthly trend over the reporting year.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use html_escape::encode_text;
use kpi_api::pb::{self, GetRatesRequest, GetScoresRequest, RatesReply};
use kpi_domain::{Kpi, Period};

use crate::query::{connect, status_error};
use crate::ApiArgs;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Html,
    Csv,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    #[arg(long)]
    pub unit: String,
    /// The period, e.g. 2025-03, R2025-03, 2025-Q1, R2025.
    #[arg(long)]
    pub period: String,
    /// Where to write the page.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value = "html")]
    pub format: Format,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// Everything the page shows.
struct Figures {
    main: RatesReply,
    scores: pb::ScoresReply,
    /// The units under it on the period's last day, with their rates.
    children: Vec<RatesReply>,
    /// The reporting year's months (`R2025-01` …), with their rates.
    trend: Vec<RatesReply>,
    /// The period's Biểu 06 (CONTRACT §9) and its late cases.
    flow: pb::CaseFlowReply,
    late: pb::ListLateReply,
}

async fn rates(
    client: &mut crate::query::Client,
    unit: &str,
    period: &str,
) -> anyhow::Result<RatesReply> {
    Ok(client
        .get_rates(GetRatesRequest {
            unit_id: unit.to_owned(),
            period: period.to_owned(),
            min_stream_sequence: None,
        })
        .await
        .map_err(status_error)?
        .into_inner())
}

/// The reporting year (15 Dec – 14 Dec) that holds a day.
fn reporting_year(day: chrono::NaiveDate) -> i32 {
    use chrono::Datelike;
    if (day.month(), day.day()) >= (12, 15) {
        day.year() + 1
    } else {
        day.year()
    }
}

async fn gather(args: &ReportArgs) -> anyhow::Result<Figures> {
    let mut client = connect(&args.api).await?;
    let main = rates(&mut client, &args.unit, &args.period).await?;
    let scores = client
        .get_scores(GetScoresRequest {
            unit_id: args.unit.clone(),
            period: args.period.clone(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let period = Period::parse(&args.period).map_err(|err| anyhow::anyhow!("{err}"))?;
    let last_day = period.last_day.to_string();
    let children_ids: Vec<String> = client
        .list_units(pb::ListUnitsRequest {
            parent_id: args.unit.clone(),
            as_of: last_day,
        })
        .await
        .map_err(status_error)?
        .into_inner()
        .units
        .into_iter()
        .map(|unit| unit.id)
        .collect();
    let mut children = Vec::with_capacity(children_ids.len());
    for child in children_ids {
        children.push(rates(&mut client, &child, &args.period).await?);
    }
    let year = reporting_year(period.last_day);
    let mut trend = Vec::with_capacity(12);
    for month in 1..=12 {
        trend.push(rates(&mut client, &args.unit, &format!("R{year}-{month:02}")).await?);
    }
    let flow = client
        .get_case_flow(pb::GetCaseFlowRequest {
            unit_id: args.unit.clone(),
            period: args.period.clone(),
            group_by: pb::GroupBy::Unit as i32,
            min_stream_sequence: None,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let late = client
        .list_late(pb::ListLateRequest {
            unit_id: args.unit.clone(),
            period: args.period.clone(),
            min_stream_sequence: None,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    Ok(Figures {
        main,
        scores,
        children,
        trend,
        flow,
        late,
    })
}

pub async fn run(args: ReportArgs) -> anyhow::Result<ExitCode> {
    let figures = gather(&args).await?;
    let generated = chrono::Utc::now().with_timezone(&kpi_domain::vietnam());
    let text = match args.format {
        Format::Html => html(&figures, &generated.format("%d/%m/%Y %H:%M").to_string()),
        // A byte-order mark, so that Excel reads the diacritics.
        Format::Csv => format!("\u{feff}{}", csv(&figures)?),
    };
    std::fs::write(&args.out, text)?;
    println!(
        "{} — {} ({}) — written to {}",
        figures.main.unit_name,
        figures.main.period,
        match args.format {
            Format::Html => "HTML",
            Format::Csv => "CSV",
        },
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// A percentage the Vietnamese way: `97,50%`.
pub fn percent_vi(value: Option<f64>) -> String {
    value.map_or_else(|| "—".to_owned(), |p| format!("{p:.2}%").replace('.', ","))
}

fn rate(reply: &RatesReply, kpi: Kpi) -> Option<&pb::Rate> {
    reply.rates.iter().find(|rate| rate.kpi == kpi.name())
}

fn count(reply: &RatesReply, name: &str) -> u64 {
    reply.counts.get(name).copied().unwrap_or(0)
}

/// A KPI's Vietnamese title, or its name.
fn kpi_title(kpi: &str) -> &str {
    match Kpi::parse(kpi) {
        Some(kpi) => kpi.title_vi(),
        None => kpi,
    }
}

fn met_vi(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "Đạt",
        Some(false) => "Chưa đạt",
        None => "—",
    }
}

const STYLE: &str = r#"
@page { size: A4; margin: 14mm; }
body { font-family: "Times New Roman", "Liberation Serif", serif; font-size: 11pt; color: #111; max-width: 190mm; margin: 0 auto; }
h1 { font-size: 15pt; text-align: center; margin: 0.2em 0; }
h2 { font-size: 12.5pt; margin: 1.1em 0 0.4em; border-bottom: 1px solid #999; }
.sub { text-align: center; margin: 0 0 0.8em; }
table { border-collapse: collapse; width: 100%; margin: 0.3em 0; page-break-inside: avoid; }
th, td { border: 1px solid #777; padding: 2px 5px; }
th { background: #eee; }
td { overflow-wrap: anywhere; }
td.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.why { font-size: 9pt; color: #444; }
table.late { table-layout: fixed; font-size: 9pt; }
table.late td.n { white-space: normal; }
.met { color: #0a6b2b; font-weight: bold; } .missed { color: #a4161a; font-weight: bold; }
.note { font-size: 9pt; color: #444; }
svg { display: block; margin: 0.3em auto; page-break-inside: avoid; }
"#;

fn html(figures: &Figures, generated: &str) -> String {
    let main = &figures.main;
    let name = encode_text(&main.unit_name);
    let mut page = crate::flow::page_start(
        &format!(
            "Kết quả giải quyết TTHC — {} — {}",
            main.unit_name, main.period
        ),
        STYLE,
    );
    let _ = write!(
        page,
        "<h1>KẾT QUẢ GIẢI QUYẾT THỦ TỤC HÀNH CHÍNH VÀ MỨC ĐỘ HÀI LÒNG</h1>\n<p class=\"sub\"><b>{name}</b><br>Kỳ báo cáo {period}: từ {first} đến {last} — chỉ tiêu năm {year}</p>\n",
        period = encode_text(&main.period),
        first = crate::flow::date_vi(&main.first_day),
        last = crate::flow::date_vi(&main.last_day),
        year = main.target_year,
    );

    // 1. Progress and satisfaction, against targets.
    let late = count(main, "resolved_late");
    let _ = write!(
        page,
        "<h2>1. Tình hình tiếp nhận và giải quyết hồ sơ</h2>\n<table>\n<tr><th>Nội dung</th><th>Số hồ sơ</th></tr>\n\
         <tr><td>Hồ sơ tiếp nhận</td><td class=\"n\">{}</td></tr>\n\
         <tr><td>Hồ sơ đã giải quyết</td><td class=\"n\">{}</td></tr>\n\
         <tr><td>— trước hạn</td><td class=\"n\">{}</td></tr>\n\
         <tr><td>— đúng hạn</td><td class=\"n\">{}</td></tr>\n\
         <tr><td>— trễ hạn</td><td class=\"n\">{late}</td></tr>\n\
         <tr><td>Hồ sơ trễ hạn có thư xin lỗi</td><td class=\"n\">{} / {late}</td></tr>\n\
         <tr><td>Hồ sơ đang giải quyết (hiện nay)</td><td class=\"n\">{}</td></tr>\n\
         <tr><td>— trong đó quá hạn</td><td class=\"n\">{}</td></tr>\n</table>\n",
        count(main, "received"),
        count(main, "resolved"),
        count(main, "resolved_early"),
        count(main, "resolved_on_time"),
        count(main, "resolved_late_with_apology"),
        main.live.unwrap_or_default().open,
        main.live.unwrap_or_default().overdue_open,
    );
    let flow = figures.flow.total.unwrap_or_default();
    let _ = write!(
        page,
        "<h2>2. Tình hình, kết quả giải quyết TTHC trong kỳ (Biểu số 06/VPCP/KSTT)</h2>\n<p class=\"note\">Số liệu tại thời điểm {as_of}.</p>\n<table>\n<tr><th>Nội dung</th><th>Số hồ sơ</th></tr>\n\
         <tr><td>Tổng số hồ sơ nhận giải quyết</td><td class=\"n\">{}</td></tr>\n\
         <tr><td>— từ kỳ trước chuyển qua</td><td class=\"n\">{}</td></tr>\n\
         <tr><td>— mới tiếp nhận trực tuyến</td><td class=\"n\">{}</td></tr>\n\
         <tr><td>— mới tiếp nhận trực tiếp và qua dịch vụ bưu chính công ích</td><td class=\"n\">{}</td></tr>\n\
         <tr><td>Đã giải quyết: trước hạn / đúng hạn / quá hạn</td><td class=\"n\">{} / {} / {}</td></tr>\n\
         <tr><td>Đang giải quyết: chưa đến hạn / quá hạn</td><td class=\"n\">{} / {}</td></tr>\n\
         <tr><td>Rút hồ sơ</td><td class=\"n\">{}</td></tr>\n\
         <tr><td>Tổng số hồ sơ trễ hạn / có văn bản xin lỗi</td><td class=\"n\">{} / {}</td></tr>\n</table>\n",
        crate::flow::count_vi(flow.to_handle),
        crate::flow::count_vi(flow.carried_over),
        crate::flow::count_vi(flow.received_online),
        crate::flow::count_vi(flow.received_in_person + flow.received_postal),
        crate::flow::count_vi(flow.resolved_early),
        crate::flow::count_vi(flow.resolved_on_time),
        crate::flow::count_vi(flow.resolved_late),
        crate::flow::count_vi(flow.pending_not_due),
        crate::flow::count_vi(flow.pending_overdue),
        crate::flow::count_vi(flow.withdrawn),
        crate::flow::count_vi(flow.late_total),
        crate::flow::count_vi(flow.late_with_apology),
        as_of = encode_text(&crate::flow::time_vi(&figures.flow.as_of)),
    );
    page.push_str("<h2>3. Các chỉ tiêu so với mục tiêu</h2>\n<table>\n<tr><th>Chỉ tiêu</th><th>Tỷ lệ</th><th>Tử số / mẫu số</th><th>Mục tiêu</th><th>Đánh giá</th></tr>\n");
    for reply_rate in &main.rates {
        let title = kpi_title(&reply_rate.kpi);
        let class = match reply_rate.met {
            Some(true) => "met",
            Some(false) => "missed",
            None => "",
        };
        let _ = writeln!(
            page,
            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{} / {}</td><td class=\"n\">{}</td><td class=\"{class}\">{}</td></tr>",
            encode_text(title),
            percent_vi(reply_rate.percent),
            reply_rate.numerator,
            reply_rate.denominator,
            percent_vi(reply_rate.target_percent),
            met_vi(reply_rate.met)
        );
    }
    page.push_str("</table>\n");
    page.push_str(&bars_svg(main));

    // 3. The monthly trend over the reporting year.
    let year = figures
        .trend
        .first()
        .map(|t| t.period.clone())
        .unwrap_or_default();
    let _ = writeln!(
        page,
        "<h2>4. Diễn biến theo tháng báo cáo (năm {})</h2>",
        encode_text(year.get(1..5).unwrap_or_default())
    );
    page.push_str(&trend_svg(&figures.trend));

    // 4. QĐ 766.
    let scores = &figures.scores;
    page.push_str("<h2>5. Kết quả đánh giá theo Quyết định số 766/QĐ-TTg</h2>\n<table>\n<tr><th>Nhóm</th><th>Thành phần</th><th>Tử số / mẫu số</th><th>Tỷ lệ</th><th>Điểm</th><th>Tối đa</th></tr>\n");
    for component in &scores.components {
        let _ = writeln!(
            page,
            "<tr><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"{}\">{}</td><td class=\"n\">{}</td></tr>",
            encode_text(&component.group),
            encode_text(kpi_domain::scores::component_name_vi(&component.code)),
            if component.points.is_some() && (component.denominator > 0 || component.numerator > 0) {
                format!("{} / {}", component.numerator, component.denominator)
            } else {
                String::new()
            },
            percent_vi(component.rate),
            if component.points.is_some() { "n" } else { "why" },
            component
                .points
                .map_or_else(
                    || {
                        let reason = kpi_domain::scores::reason_vi(&component.reason).unwrap_or("chưa tính được");
                        format!("— <span class=\"note\">{}</span>", encode_text(reason))
                    },
                    |p| format!("{p:.2}").replace('.', ","),
                ),
            format!("{}", component.max_points).replace('.', ","),
        );
    }
    let _ = writeln!(
        page,
        "<tr><th colspan=\"4\">Tổng điểm các thành phần tính được</th><th class=\"n\">{}</th><th class=\"n\">{}</th></tr>\n</table>",
        format!("{:.2}", scores.points).replace('.', ","),
        format!("{}", scores.max_points).replace('.', ",")
    );

    // 6. The late cases and their letters (seed 001 asks to publish them).
    let _ = writeln!(
        page,
        "<h2>6. Hồ sơ trễ hạn và văn bản xin lỗi</h2>\n<p class=\"note\">{} hồ sơ trễ hạn trong kỳ (đã trả quá hạn hoặc đang quá hạn), {} có văn bản xin lỗi.</p>",
        crate::flow::count_vi(figures.late.cases.len() as u64),
        crate::flow::count_vi(figures.late.cases.iter().filter(|case| !case.apologies.is_empty()).count() as u64),
    );
    page.push_str(&crate::flow::late_table(&figures.late.cases));

    // 7. The units under it.
    if !figures.children.is_empty() {
        page.push_str("<h2>7. Kết quả của các đơn vị trực thuộc</h2>\n<table>\n<tr><th>Đơn vị</th><th>Tiếp nhận</th><th>Đã giải quyết</th><th>Đúng hạn</th><th>Trễ hạn có thư xin lỗi</th><th>Hài lòng</th><th>Nộp trực tuyến</th></tr>\n");
        for child in &figures.children {
            let _ = writeln!(
                page,
                "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
                encode_text(&child.unit_name),
                count(child, "received"),
                count(child, "resolved"),
                percent_vi(rate(child, Kpi::OnTimeRate).and_then(|r| r.percent)),
                percent_vi(rate(child, Kpi::ApologyRate).and_then(|r| r.percent)),
                percent_vi(rate(child, Kpi::SatisfactionRate).and_then(|r| r.percent)),
                percent_vi(rate(child, Kpi::OnlineApplicationRate).and_then(|r| r.percent)),
            );
        }
        page.push_str("</table>\n");
    }
    let _ = write!(
        page,
        "<p class=\"note\">Số liệu tính trực tiếp từ nhật ký sự kiện hồ sơ (đến sự kiện số {}), lập lúc {generated} (giờ Việt Nam). Tỷ lệ có mẫu số bằng 0 không có giá trị (—).</p>\n</body>\n</html>\n",
        main.stream_sequence
    );
    page
}

/// Each rate as a bar, with its target as a line.
fn bars_svg(reply: &RatesReply) -> String {
    let (left, row, width) = (250.0, 22.0, 640.0);
    let plot = width - left - 60.0;
    let height = row * reply.rates.len() as f64 + 30.0;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" role=\"img\" aria-label=\"Tỷ lệ so với mục tiêu\">\n"
    );
    for (index, item) in reply.rates.iter().enumerate() {
        let y = 10.0 + row * index as f64;
        let title = kpi_title(&item.kpi);
        let value = item.percent.unwrap_or(0.0).clamp(0.0, 100.0);
        let color = match item.met {
            Some(true) => "#2d8a4e",
            Some(false) => "#c0392b",
            None => "#7f8c8d",
        };
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{}\" font-size=\"10\" text-anchor=\"end\">{}</text><rect x=\"{left}\" y=\"{y}\" width=\"{:.1}\" height=\"{}\" fill=\"{color}\"/><text x=\"{:.1}\" y=\"{}\" font-size=\"9\">{}</text>",
            left - 6.0,
            y + 12.0,
            encode_text(title),
            plot * value / 100.0,
            row - 6.0,
            left + plot * value / 100.0 + 3.0,
            y + 12.0,
            percent_vi(item.percent)
        );
        if let Some(target) = item.target_percent {
            let x = left + plot * target.clamp(0.0, 100.0) / 100.0;
            let _ = writeln!(
                svg,
                "<line x1=\"{x:.1}\" y1=\"{}\" x2=\"{x:.1}\" y2=\"{}\" stroke=\"#111\" stroke-width=\"2\"/>",
                y - 2.0,
                y + row - 4.0
            );
        }
    }
    svg.push_str("</svg>\n");
    svg
}

/// On-time and satisfaction rates month by month.
fn trend_svg(months: &[RatesReply]) -> String {
    let (width, height, left, top, plot_h) = (640.0, 220.0, 40.0, 15.0, 160.0);
    let step = (width - left - 20.0) / months.len().max(1) as f64;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" role=\"img\" aria-label=\"Diễn biến theo tháng\">\n"
    );
    for percent in [0.0, 50.0, 100.0] {
        let y = top + plot_h * (1.0 - percent / 100.0);
        let _ = writeln!(
            svg,
            "<line x1=\"{left}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"#ccc\"/><text x=\"{}\" y=\"{}\" font-size=\"9\" text-anchor=\"end\">{percent}%</text>",
            width - 20.0,
            left - 4.0,
            y + 3.0
        );
    }
    for (kpi, color, label) in [
        (Kpi::OnTimeRate, "#1f5fa8", "Đúng hạn"),
        (Kpi::SatisfactionRate, "#d68910", "Hài lòng"),
    ] {
        let points: Vec<String> = months
            .iter()
            .enumerate()
            .filter_map(|(index, month)| {
                let value = rate(month, kpi)?.percent?;
                let x = left + step * (index as f64 + 0.5);
                let y = top + plot_h * (1.0 - value.clamp(0.0, 100.0) / 100.0);
                Some(format!("{x:.1},{y:.1}"))
            })
            .collect();
        if !points.is_empty() {
            let _ = writeln!(
                svg,
                "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>",
                points.join(" ")
            );
        }
        let legend_x = if kpi == Kpi::OnTimeRate {
            left
        } else {
            left + 120.0
        };
        let _ = writeln!(
            svg,
            "<rect x=\"{legend_x}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{color}\"/><text x=\"{}\" y=\"{}\" font-size=\"10\">{label}</text>",
            height - 14.0,
            legend_x + 14.0,
            height - 5.0
        );
    }
    for (index, month) in months.iter().enumerate() {
        let x = left + step * (index as f64 + 0.5);
        let label = month.period.rsplit('-').next().unwrap_or_default();
        let _ = writeln!(
            svg,
            "<text x=\"{x:.1}\" y=\"{}\" font-size=\"9\" text-anchor=\"middle\">T{}</text>",
            top + plot_h + 14.0,
            encode_text(label)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// The same figures, a row each.
fn csv(figures: &Figures) -> anyhow::Result<String> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer.write_record([
        "section",
        "unit_id",
        "unit_name",
        "period",
        "item",
        "numerator",
        "denominator",
        "percent",
        "target_percent",
        "met",
        "points",
        "max_points",
    ])?;
    let number = |value: Option<f64>| value.map_or_else(String::new, |v| format!("{v:.4}"));
    let mut rates_rows = |section: &str, reply: &RatesReply| -> anyhow::Result<()> {
        for item in &reply.rates {
            writer.write_record([
                section,
                &reply.unit_id,
                &reply.unit_name,
                &reply.period,
                &item.kpi,
                &item.numerator.to_string(),
                &item.denominator.to_string(),
                &number(item.percent),
                &number(item.target_percent),
                &item.met.map(|met| met.to_string()).unwrap_or_default(),
                "",
                "",
            ])?;
        }
        Ok(())
    };
    rates_rows("rates", &figures.main)?;
    for child in &figures.children {
        rates_rows("unit", child)?;
    }
    for month in &figures.trend {
        rates_rows("month", month)?;
    }
    let scores = &figures.scores;
    for component in &scores.components {
        writer.write_record([
            "qd766",
            &scores.unit_id,
            &scores.unit_name,
            &scores.period,
            &component.code,
            &component.numerator.to_string(),
            &component.denominator.to_string(),
            &number(component.rate),
            "",
            "",
            &component
                .points
                .map(|p| format!("{p:.2}"))
                .unwrap_or_default(),
            &component.max_points.to_string(),
        ])?;
    }
    Ok(String::from_utf8(writer.into_inner()?)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_escaped_and_percents_written_the_vietnamese_way() {
        let reply = RatesReply {
            unit_name: "Xã <script>alert(1)</script> & Co".into(),
            period: "2025-03".into(),
            ..RatesReply::default()
        };
        let figures = Figures {
            main: reply.clone(),
            scores: pb::ScoresReply::default(),
            children: vec![reply],
            trend: Vec::new(),
            flow: pb::CaseFlowReply::default(),
            late: pb::ListLateReply::default(),
        };
        let page = html(&figures, "01/04/2025 08:00");
        assert!(!page.contains("<script>alert"), "names are escaped");
        assert!(page.contains("Xã &lt;script&gt;alert(1)&lt;/script&gt; &amp; Co"));
        assert_eq!(percent_vi(Some(97.5)), "97,50%");
        assert_eq!(percent_vi(None), "—");
        assert_eq!(
            reporting_year(chrono::NaiveDate::from_ymd_opt(2024, 12, 15).unwrap()),
            2025
        );
        assert_eq!(
            reporting_year(chrono::NaiveDate::from_ymd_opt(2025, 12, 14).unwrap()),
            2025
        );
    }
}
