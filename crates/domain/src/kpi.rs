//! The KPI catalogue (§3): each rate as a ratio of counter sums, with its
//! target and whether it is met.

use std::fmt;

use crate::counters::{Counter, Counters};

macro_rules! kpis {
    ($($variant:ident => $name:literal: [$($numerator:ident),+] / $denominator:ident),+ $(,)?) => {
        /// One key performance indicator of §3.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Kpi { $($variant),+ }

        impl Kpi {
            /// In the order of §3, which is the order of every answer.
            pub const ALL: &'static [Kpi] = &[$(Kpi::$variant),+];

            pub fn name(self) -> &'static str {
                match self { $(Kpi::$variant => $name),+ }
            }

            /// The counters summed for the numerator.
            pub fn numerator(self) -> &'static [Counter] {
                match self { $(Kpi::$variant => &[$(Counter::$numerator),+]),+ }
            }

            pub fn denominator(self) -> Counter {
                match self { $(Kpi::$variant => Counter::$denominator),+ }
            }
        }
    };
}

kpis! {
    OnTimeRate => "on_time_rate": [ResolvedEarly, ResolvedOnTime] / Resolved,
    LateRate => "late_rate": [ResolvedLate] / Resolved,
    ApologyRate => "apology_rate": [ResolvedLateWithApology] / ResolvedLate,
    ElectronicResultRate => "electronic_result_rate": [ResolvedElectronic] / Resolved,
    ResultDigitizationRate => "result_digitization_rate": [ResolvedDigitized] / Resolved,
    OnlineApplicationRate => "online_application_rate": [ReceivedOnline] / Received,
    DossierDigitizationRate => "dossier_digitization_rate": [ReceivedDossierDigitized] / Received,
    DataReuseRate => "data_reuse_rate": [ReceivedReusedData] / Received,
    PortalSyncRate => "portal_sync_rate": [ReceivedSynced] / Received,
    OnlinePaymentRate => "online_payment_rate": [PaymentsOnline] / Payments,
    SatisfactionRate => "satisfaction_rate": [RatedVerySatisfied, RatedSatisfied] / Rated,
    SatisfactionRateLand => "satisfaction_rate_land": [RatedLandSatisfied] / RatedLand,
    FeedbackOnTimeRate => "feedback_on_time_rate": [FeedbackResolvedOnTime] / FeedbackResolved,
}

impl Kpi {
    pub fn parse(name: &str) -> Option<Kpi> {
        Kpi::ALL.iter().copied().find(|kpi| kpi.name() == name)
    }

    /// The accepted names, comma-separated, for error messages.
    pub fn accepted() -> String {
        Kpi::ALL
            .iter()
            .map(|kpi| kpi.name())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The indicator in the words of the commune plans, for people.
    pub fn title_vi(self) -> &'static str {
        match self {
            Kpi::OnTimeRate => "Hồ sơ giải quyết đúng hạn",
            Kpi::LateRate => "Hồ sơ giải quyết trễ hạn",
            Kpi::ApologyRate => "Hồ sơ trễ hạn có thư xin lỗi",
            Kpi::ElectronicResultRate => "Trả kết quả điện tử",
            Kpi::ResultDigitizationRate => "Số hóa kết quả giải quyết",
            Kpi::OnlineApplicationRate => "Hồ sơ nộp trực tuyến",
            Kpi::DossierDigitizationRate => "Số hóa hồ sơ",
            Kpi::DataReuseRate => "Tái sử dụng dữ liệu",
            Kpi::PortalSyncRate => "Đồng bộ lên Cổng DVC quốc gia",
            Kpi::OnlinePaymentRate => "Thanh toán trực tuyến",
            Kpi::SatisfactionRate => "Mức độ hài lòng",
            Kpi::SatisfactionRateLand => "Hài lòng: đất đai, xây dựng, đầu tư",
            Kpi::FeedbackOnTimeRate => "Phản ánh, kiến nghị xử lý đúng hạn",
        }
    }

    /// `late_rate` is informational: lower is better and it has no target.
    pub fn takes_target(self) -> bool {
        self != Kpi::LateRate
    }
}

impl fmt::Display for Kpi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One KPI's figures for a unit and period.
#[derive(Debug, Clone, PartialEq)]
pub struct Rate {
    pub kpi: Kpi,
    pub numerator: u64,
    pub denominator: u64,
    /// Absent when the denominator is 0.
    pub percent: Option<f64>,
    /// Absent for a KPI without a target.
    pub target_percent: Option<f64>,
    /// Absent when either the percent or the target is.
    pub met: Option<bool>,
}

impl Rate {
    pub fn compute(kpi: Kpi, counters: &Counters, target_percent: Option<f64>) -> Rate {
        let numerator: u64 = kpi.numerator().iter().map(|c| counters[*c]).sum();
        let denominator = counters[kpi.denominator()];
        let percent = (denominator > 0).then(|| numerator as f64 * 100.0 / denominator as f64);
        // Met compares numerator/denominator >= target/100 without rounding.
        let met = match (denominator, target_percent) {
            (0, _) | (_, None) => None,
            (_, Some(target)) => Some(numerator as f64 * 100.0 >= target * denominator as f64),
        };
        Rate {
            kpi,
            numerator,
            denominator,
            percent,
            target_percent,
            met,
        }
    }
}

/// Every KPI in catalogue order, with targets from `target_of`.
pub fn rates(counters: &Counters, target_of: impl Fn(Kpi) -> Option<f64>) -> Vec<Rate> {
    Kpi::ALL
        .iter()
        .map(|kpi| Rate::compute(*kpi, counters, target_of(*kpi)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_with_no_denominator_has_no_value_and_is_neither_met_nor_missed() {
        let rate = Rate::compute(Kpi::OnTimeRate, &Counters::default(), Some(97.0));
        assert_eq!((rate.numerator, rate.denominator), (0, 0));
        assert_eq!(rate.percent, None);
        assert_eq!(rate.met, None);
        assert_eq!(rate.target_percent, Some(97.0));
    }

    #[test]
    fn met_means_at_least_the_target() {
        let mut counters = Counters::default();
        counters[Counter::Resolved] = 100;
        counters[Counter::ResolvedOnTime] = 90;
        counters[Counter::ResolvedEarly] = 7;
        let rate = Rate::compute(Kpi::OnTimeRate, &counters, Some(97.0));
        assert_eq!(rate.percent, Some(97.0));
        assert_eq!(rate.met, Some(true));
        let rate = Rate::compute(Kpi::OnTimeRate, &counters, Some(97.5));
        assert_eq!(rate.met, Some(false));
        let rate = Rate::compute(Kpi::LateRate, &counters, None);
        assert_eq!(rate.met, None);
    }

    #[test]
    fn names_parse_back() {
        for kpi in Kpi::ALL {
            assert_eq!(Kpi::parse(kpi.name()), Some(*kpi));
        }
        assert_eq!(Kpi::ALL.len(), 13);
        assert_eq!(Kpi::parse("speed"), None);
    }
}
