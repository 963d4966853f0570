//! The QĐ 766 scores (Quyết định 766/QĐ-TTg, `SCORING-766.md`): the
//! components the national portal computes that follow from case events,
//! from the same day counters as the rates; the others listed with the
//! reason, or taken from an operator's facts file.
//!
//! "Open at the period's end" is as of the end of its last day: received
//! minus closed (resolved or withdrawn) up to that day, and of those the
//! ones past their due time as it stood then (counters `became_overdue`
//! minus `stopped_overdue`). For a period not over yet, the cases open now
//! are the live counts. Every input is a sum of day counters, so the scores
//! of a past period are exact whatever order the events arrived in.

use crate::contribution::LiveCounts;
use crate::counters::{Counter, Counters};

/// The six groups of the index.
pub const GROUPS: [(&str, f64); 6] = [
    ("Công khai, minh bạch", 18.0),
    ("Tiến độ giải quyết", 20.0),
    ("Dịch vụ công trực tuyến", 12.0),
    ("Thanh toán trực tuyến", 10.0),
    ("Số hóa hồ sơ", 22.0),
    ("Mức độ hài lòng", 18.0),
];

/// One component: computed (points present) or not (the reason says why).
#[derive(Debug, Clone, PartialEq)]
pub struct Component {
    /// The portal's own code, e.g. `PROGRESS`.
    pub code: &'static str,
    pub group: &'static str,
    pub numerator: u64,
    pub denominator: u64,
    /// Percent; absent when the denominator is 0 or it is not computed.
    pub rate: Option<f64>,
    pub points: Option<f64>,
    pub max_points: f64,
    pub reason: String,
}

/// The counters a score needs.
#[derive(Debug, Clone, Copy)]
pub struct ScoreInputs<'a> {
    /// Summed over the period's days.
    pub period: &'a Counters,
    /// Summed over every day up to the period's last.
    pub through_end: &'a Counters,
    /// Summed over every day before the period's first.
    pub before_start: &'a Counters,
    /// The live counts, for a period not over yet: cases open now and past
    /// due now replace those open at the end of the last day.
    pub now: Option<LiveCounts>,
}

/// A component's points from an operator's facts file, by code.
pub type Facts<'a> = &'a dyn Fn(&str) -> Option<f64>;

fn percent(numerator: u64, denominator: u64) -> Option<f64> {
    (denominator > 0).then(|| 100.0 * numerator as f64 / denominator as f64)
}

fn difference(a: u64, b: u64) -> u64 {
    a.saturating_sub(b)
}

/// Every component of the index for one unit and period, in the portal's
/// order.
pub fn scores(inputs: &ScoreInputs<'_>, facts: Facts<'_>) -> Vec<Component> {
    let p = inputs.period;
    let end = inputs.through_end;
    let start = inputs.before_start;
    let (open_at_end, past_due_at_end) = match inputs.now {
        Some(live) => (live.open, live.overdue_open),
        None => (
            difference(end[Counter::Received], end[Counter::Closed]),
            difference(end[Counter::BecameOverdue], end[Counter::StoppedOverdue]),
        ),
    };
    let feedback_open = difference(
        end[Counter::FeedbackReceived],
        end[Counter::FeedbackResolved],
    );
    let feedback_past_due = difference(
        end[Counter::FeedbackBecameOverdue],
        end[Counter::FeedbackStoppedOverdue],
    );

    let computed =
        |code, group, numerator, denominator, points: f64, max_points, reason: &str| Component {
            code,
            group,
            numerator,
            denominator,
            rate: percent(numerator, denominator),
            points: Some(points),
            max_points,
            reason: reason.to_owned(),
        };
    let scaled = |numerator: u64, denominator: u64, max: f64, full_from: f64| {
        percent(numerator, denominator).map_or(0.0, |rate| (max * rate / full_from).min(max))
    };
    let [publicity, progress, online, payment, digitization, satisfaction] =
        GROUPS.map(|(name, _)| name);

    // Công khai: dossiers active in the period that reached the portal.
    let active = difference(end[Counter::Received], start[Counter::Closed]);
    let active_synced = difference(end[Counter::ReceivedSynced], start[Counter::ClosedSynced]);
    // Tiến độ: resolved early or on time, and open but not past due.
    let progress_n = p[Counter::ResolvedEarly]
        + p[Counter::ResolvedOnTime]
        + difference(open_at_end, past_due_at_end);
    let progress_d = p[Counter::Resolved] + open_at_end;
    // PAKN: answered by the due time, and open but not past due.
    let petition_n =
        p[Counter::FeedbackResolvedOnTime] + difference(feedback_open, feedback_past_due);
    let petition_d = p[Counter::FeedbackResolved] + feedback_open;
    let satisfied = difference(p[Counter::Resolved], p[Counter::ResolvedLateOrUnsatisfied]);
    let none = "no dossier in the period: 0 points";
    let reason_if_none = |denominator: u64| if denominator == 0 { none } else { "" };

    let mut components = vec![
        missing("PUBLISH_ON_TIME", publicity, 6.0, CATALOGUE, facts),
        missing("PUBLIC_UPDATE_ON_TIME", publicity, 4.0, CATALOGUE, facts),
        missing("PUBLIC_CONTENT_FULL", publicity, 2.0, CATALOGUE, facts),
        computed(
            "DOSSIER_SYNC",
            publicity,
            active_synced,
            active,
            scaled(active_synced, active, 6.0, 100.0),
            6.0,
            reason_if_none(active),
        ),
        computed(
            "PROGRESS",
            progress,
            progress_n,
            progress_d,
            scaled(progress_n, progress_d, 20.0, 100.0),
            20.0,
            reason_if_none(progress_d),
        ),
        missing(
            "FULL_ONLINE",
            online,
            12.0,
            "the portal's conversion of full-online dossiers of eligible procedures is not public",
            facts,
        ),
        computed(
            "ONLINE_PAYMENT",
            payment,
            p[Counter::PaymentsOnline],
            p[Counter::Payments],
            scaled(p[Counter::PaymentsOnline], p[Counter::Payments], 6.0, 100.0),
            6.0,
            if p[Counter::Payments] == 0 {
                "no payment in the period: 0 points"
            } else {
                ""
            },
        ),
        missing("ONLINE_PAYMENT_CATALOGUE", payment, 4.0, CATALOGUE, facts),
        computed(
            "ORIGINAL_RESULT_AVAILABLE",
            digitization,
            p[Counter::ResolvedElectronic],
            p[Counter::Resolved],
            scaled(
                p[Counter::ResolvedElectronic],
                p[Counter::Resolved],
                6.0,
                100.0,
            ),
            6.0,
            reason_if_none(p[Counter::Resolved]),
        ),
        computed(
            "SO_HOA_GIAY_TO_GIAI_QUYET",
            digitization,
            p[Counter::ReceivedDossierDigitized],
            p[Counter::Received],
            scaled(
                p[Counter::ReceivedDossierDigitized],
                p[Counter::Received],
                4.0,
                100.0,
            ),
            4.0,
            reason_if_none(p[Counter::Received]),
        ),
        missing(
            "ELECTRONIC_CERTIFIED_COPY",
            digitization,
            2.0,
            "needs the e-certified copies issued, which are not case events",
            facts,
        ),
        computed(
            "REUSED_DIGITIZED_DATA",
            digitization,
            p[Counter::ReceivedReusedData],
            p[Counter::Received],
            scaled(
                p[Counter::ReceivedReusedData],
                p[Counter::Received],
                2.0,
                80.0,
            ),
            2.0,
            if p[Counter::Received] == 0 {
                none
            } else {
                "full marks from 80%"
            },
        ),
        missing(
            "SYNCED_WITH_DVCQG_PERSONAL_STORAGE",
            digitization,
            4.0,
            "needs the citizens' DVCQG data stores, which are not case events",
            facts,
        ),
        missing(
            "CITIZEN_DATA_CONNECTED_DOSSIER",
            digitization,
            2.0,
            "needs the use of the national population database, which is not a case event",
            facts,
        ),
        missing(
            "CITIZEN_DATA_CONNECTED_FORMALITY",
            digitization,
            2.0,
            CATALOGUE,
            facts,
        ),
        Component {
            code: "PETITION_PROCESSING_ON_TIME",
            group: satisfaction,
            numerator: petition_n,
            denominator: petition_d,
            rate: percent(petition_n, petition_d),
            points: Some(if petition_d == 0 {
                6.0
            } else {
                6.0 * petition_n as f64 / petition_d as f64
            }),
            max_points: 6.0,
            reason: if petition_d == 0 {
                "no feedback in the period: 6 points, as the portal gives (the decision's text would share them out)".to_owned()
            } else {
                String::new()
            },
        },
        missing(
            "PETITION_HANDLING_SATISFACTION",
            satisfaction,
            6.0,
            "needs the citizens' ratings of feedback handling, which are not case events",
            facts,
        ),
        computed(
            "DOSSIER_RECEIVING_SATISFACTION",
            satisfaction,
            satisfied,
            p[Counter::Resolved],
            scaled(satisfied, p[Counter::Resolved], 6.0, 90.0),
            6.0,
            if p[Counter::Resolved] == 0 {
                none
            } else {
                "full marks from 90%"
            },
        ),
    ];
    for component in &mut components {
        if let Some(points) = component.points {
            component.points = Some(round2(points));
        }
    }
    components
}

const CATALOGUE: &str = "needs facts of the procedure catalogue, which are not case events";

/// A component the events cannot give: from the facts file, else absent.
fn missing(
    code: &'static str,
    group: &'static str,
    max_points: f64,
    reason: &str,
    facts: Facts<'_>,
) -> Component {
    let from_facts = facts(code).map(|points| points.clamp(0.0, max_points));
    Component {
        code,
        group,
        numerator: 0,
        denominator: 0,
        rate: None,
        points: from_facts,
        max_points,
        reason: if from_facts.is_some() {
            "from the facts file".to_owned()
        } else {
            reason.to_owned()
        },
    }
}

/// The portal's Vietnamese name of a component (SCORING-766.md, "Names
/// people read"), for pages and sheets; the code when it has none.
pub fn component_name_vi(code: &str) -> &str {
    match code {
        "PUBLISH_ON_TIME" => "Tỷ lệ TTHC công bố đúng hạn",
        "PUBLIC_UPDATE_ON_TIME" => "Tỷ lệ TTHC cập nhật, công khai đúng hạn",
        "PUBLIC_CONTENT_FULL" => "Tỷ lệ TTHC công khai đầy đủ nội dung",
        "DOSSIER_SYNC" => {
            "Tỷ lệ hồ sơ được đồng bộ trạng thái theo thời gian thực với Cổng DVC quốc gia"
        }
        "PROGRESS" => "Tỷ lệ hồ sơ xử lý đúng hạn (trước hạn, đúng hạn)",
        "FULL_ONLINE" => "Tỷ lệ hồ sơ dịch vụ công trực tuyến toàn trình",
        "ONLINE_PAYMENT" => "Tỷ lệ hồ sơ thanh toán trực tuyến",
        "ONLINE_PAYMENT_CATALOGUE" => "Tỷ lệ TTHC có thanh toán trực tuyến",
        "ORIGINAL_RESULT_AVAILABLE" => "Tỷ lệ hồ sơ có cấp kết quả giải quyết TTHC điện tử",
        "SO_HOA_GIAY_TO_GIAI_QUYET" => "Tỷ lệ hồ sơ TTHC thực hiện số hóa hồ sơ",
        "ELECTRONIC_CERTIFIED_COPY" => {
            "Tỷ lệ cung cấp dịch vụ chứng thực bản sao điện tử từ bản chính"
        }
        "REUSED_DIGITIZED_DATA" => "Tỷ lệ hồ sơ khai thác, sử dụng lại thông tin, dữ liệu số hóa",
        "SYNCED_WITH_DVCQG_PERSONAL_STORAGE" => {
            "Tỷ lệ hồ sơ TTHC được số hóa có kết nối, chia sẻ dữ liệu phục vụ tái sử dụng"
        }
        "CITIZEN_DATA_CONNECTED_DOSSIER" => "Tỷ lệ hồ sơ TTHC có sử dụng thông tin, dữ liệu dân cư",
        "CITIZEN_DATA_CONNECTED_FORMALITY" => {
            "Tỷ lệ TTHC triển khai kết nối, chia sẻ dữ liệu dân cư phục vụ giải quyết TTHC"
        }
        "PETITION_PROCESSING_ON_TIME" => "Tỷ lệ phản ánh, kiến nghị xử lý đúng hạn",
        "PETITION_HANDLING_SATISFACTION" => "Tỷ lệ hài lòng trong xử lý phản ánh, kiến nghị",
        "DOSSIER_RECEIVING_SATISFACTION" => "Tỷ lệ hài lòng trong tiếp nhận, giải quyết TTHC",
        other => other,
    }
}

/// Every reason a component gives (English, for the API and logs) with
/// the words people read on a page.
const REASONS_VI: &[(&str, &str)] = &[
    ("no dossier in the period: 0 points", "không có hồ sơ trong kỳ: 0 điểm"),
    (
        "no payment in the period: 0 points",
        "không có hồ sơ thanh toán trong kỳ: 0 điểm",
    ),
    (
        "the portal's conversion of full-online dossiers of eligible procedures is not public",
        "Cổng DVC quốc gia chưa công bố cách quy đổi hồ sơ trực tuyến toàn trình của các TTHC đủ điều kiện",
    ),
    (
        CATALOGUE,
        "cần số liệu của Cơ sở dữ liệu quốc gia về TTHC, không có trong dữ liệu hồ sơ",
    ),
    (
        "needs the e-certified copies issued, which are not case events",
        "cần số bản sao điện tử đã chứng thực, không có trong dữ liệu hồ sơ",
    ),
    (
        "needs the citizens' DVCQG data stores, which are not case events",
        "cần dữ liệu kho lưu trữ cá nhân trên Cổng DVC quốc gia, không có trong dữ liệu hồ sơ",
    ),
    (
        "needs the use of the national population database, which is not a case event",
        "cần số liệu khai thác Cơ sở dữ liệu quốc gia về dân cư, không có trong dữ liệu hồ sơ",
    ),
    (
        "needs the citizens' ratings of feedback handling, which are not case events",
        "cần đánh giá của người dân về xử lý phản ánh, kiến nghị, không có trong dữ liệu hồ sơ",
    ),
    (
        "no feedback in the period: 6 points, as the portal gives (the decision's text would share them out)",
        "không có phản ánh, kiến nghị trong kỳ: 6 điểm, như Cổng DVC quốc gia tính",
    ),
    ("full marks from 80%", "đạt điểm tối đa từ 80%"),
    ("full marks from 90%", "đạt điểm tối đa từ 90%"),
    (
        "from the facts file",
        "theo số liệu cơ quan cung cấp (tệp số liệu bổ sung)",
    ),
];

/// A component's reason in Vietnamese, for pages and sheets people read;
/// `None` for a reason this build does not know.
pub fn reason_vi(reason: &str) -> Option<&'static str> {
    if reason.is_empty() {
        return Some("");
    }
    REASONS_VI
        .iter()
        .find(|(english, _)| *english == reason)
        .map(|(_, vietnamese)| *vietnamese)
}

/// Two decimals, as the portal shows points.
pub fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

/// The points of the components that have them, and their maximum.
pub fn totals(components: &[Component]) -> (f64, f64) {
    components
        .iter()
        .filter_map(|component| {
            component
                .points
                .map(|points| (points, component.max_points))
        })
        .fold((0.0, 0.0), |(points, max), (p, m)| {
            (round2(points + p), max + m)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(pairs: &[(Counter, u64)]) -> Counters {
        let mut counters = Counters::default();
        for (counter, value) in pairs {
            counters[*counter] = *value;
        }
        counters
    }

    fn no_facts(_: &str) -> Option<f64> {
        None
    }

    fn find<'a>(components: &'a [Component], code: &str) -> &'a Component {
        components.iter().find(|c| c.code == code).unwrap()
    }

    #[test]
    fn with_no_event_the_computable_components_are_56_points_of_which_6_are_given() {
        let zero = Counters::default();
        let inputs = ScoreInputs {
            period: &zero,
            through_end: &zero,
            before_start: &zero,
            now: None,
        };
        let components = scores(&inputs, &no_facts);
        assert_eq!(components.len(), 18);
        let max: f64 = components.iter().map(|c| c.max_points).sum();
        assert_eq!(max, 100.0);
        assert_eq!(totals(&components), (6.0, 56.0));
        assert_eq!(
            find(&components, "PETITION_PROCESSING_ON_TIME").points,
            Some(6.0)
        );
        assert_eq!(
            find(&components, "DOSSIER_RECEIVING_SATISFACTION").points,
            Some(0.0)
        );
        assert_eq!(find(&components, "FULL_ONLINE").points, None);
    }

    #[test]
    fn full_marks_thresholds_and_facts() {
        let period = counters(&[
            (Counter::Received, 10),
            (Counter::ReceivedReusedData, 8),
            (Counter::Resolved, 10),
            (Counter::ResolvedLateOrUnsatisfied, 1),
        ]);
        let inputs = ScoreInputs {
            period: &period,
            through_end: &period,
            before_start: &Counters::default(),
            now: None,
        };
        let facts = |code: &str| (code == "FULL_ONLINE").then_some(20.0);
        let components = scores(&inputs, &facts);
        // 80% reuse is full marks; 90% satisfied is full marks.
        assert_eq!(find(&components, "REUSED_DIGITIZED_DATA").points, Some(2.0));
        assert_eq!(
            find(&components, "DOSSIER_RECEIVING_SATISFACTION").points,
            Some(6.0)
        );
        // Facts are capped at the component's maximum.
        for component in &components {
            assert!(
                reason_vi(&component.reason).is_some(),
                "{}",
                component.reason
            );
            assert_ne!(component_name_vi(component.code), component.code);
        }
        let full_online = find(&components, "FULL_ONLINE");
        assert_eq!(
            (full_online.points, full_online.reason.as_str()),
            (Some(12.0), "from the facts file")
        );
    }

    #[test]
    fn every_reason_has_its_vietnamese_words() {
        let empty = Counters::default();
        let inputs = ScoreInputs {
            period: &empty,
            through_end: &empty,
            before_start: &empty,
            now: None,
        };
        for facts in [&(|_: &str| None) as Facts<'_>, &|_: &str| Some(1.0)] {
            for component in scores(&inputs, facts) {
                assert!(
                    reason_vi(&component.reason).is_some(),
                    "{}",
                    component.reason
                );
            }
        }
    }
}
