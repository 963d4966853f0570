//! The three ingest services and the kinds each owns (CONTRACT §7).
//!
//! Each service publishes only its own kinds (and its NATS user may publish
//! only their subjects, §8), so a kind sent to the wrong service is refused
//! with the name and default address of the right one.

use kpi_events::Kind;

/// One of the ingest services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    /// The one-stop desk: cases received, returned for papers, withdrawn,
    /// paid, synced; DVCQG dossier snapshots.
    Intake,
    /// The specialist departments: results and apology letters.
    Resolution,
    /// The ratings kiosk and the complaints desk (phản ánh, kiến nghị).
    Feedback,
}

impl Service {
    pub const ALL: [Service; 3] = [Service::Intake, Service::Resolution, Service::Feedback];

    pub fn name(self) -> &'static str {
        match self {
            Service::Intake => "intake",
            Service::Resolution => "resolution",
            Service::Feedback => "feedback",
        }
    }

    /// The kinds this service accepts.
    pub fn kinds(self) -> &'static [Kind] {
        match self {
            Service::Intake => &[
                Kind::CaseReceived,
                Kind::CaseSupplementRequested,
                Kind::CaseWithdrawn,
                Kind::CasePaid,
                Kind::CaseSynced,
            ],
            Service::Resolution => &[Kind::CaseApologyIssued, Kind::CaseResolved],
            Service::Feedback => &[
                Kind::CaseRated,
                Kind::FeedbackReceived,
                Kind::FeedbackResolved,
            ],
        }
    }

    /// The default `--listen` address.
    pub fn default_listen(self) -> &'static str {
        match self {
            Service::Intake => "127.0.0.1:8081",
            Service::Resolution => "127.0.0.1:8082",
            Service::Feedback => "127.0.0.1:8083",
        }
    }

    /// The service that owns a kind.
    pub fn owner_of(kind: Kind) -> Service {
        Service::ALL
            .into_iter()
            .find(|service| service.kinds().contains(&kind))
            .unwrap_or(Service::Intake)
    }

    /// The NATS subjects this service may publish on: its kinds, any unit.
    pub fn subjects(self) -> Vec<String> {
        self.kinds()
            .iter()
            .map(|kind| kpi_events::subject_for("*", *kind))
            .collect()
    }
}

/// Which kinds an ingest path takes: one service's, or all (`kpictl import`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepts {
    Service(Service),
    Any,
}

impl Accepts {
    /// `Err` names the service that takes the kind.
    pub fn check(self, kind: Kind) -> Result<(), String> {
        match self {
            Accepts::Any => Ok(()),
            Accepts::Service(service) if service.kinds().contains(&kind) => Ok(()),
            Accepts::Service(service) => {
                let owner = Service::owner_of(kind);
                Err(format!(
                    "`{kind}` is not taken by the {} service: send it to the {} service (POST /v1/events, default {})",
                    service.name(),
                    owner.name(),
                    owner.default_listen()
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_exactly_one_service() {
        for kind in Kind::ALL {
            let owners: Vec<_> = Service::ALL
                .into_iter()
                .filter(|service| service.kinds().contains(kind))
                .collect();
            assert_eq!(owners.len(), 1, "{kind}");
        }
    }

    #[test]
    fn a_kind_for_another_service_names_it() {
        let err = Accepts::Service(Service::Feedback)
            .check(Kind::CaseResolved)
            .unwrap_err();
        assert!(err.contains("send it to the resolution service"), "{err}");
        assert!(err.contains("127.0.0.1:8082"), "{err}");
        assert!(Accepts::Any.check(Kind::CaseResolved).is_ok());
        assert!(Accepts::Service(Service::Intake)
            .check(Kind::CasePaid)
            .is_ok());
    }

    #[test]
    fn subjects_are_per_kind_for_any_unit() {
        assert_eq!(
            Service::Resolution.subjects(),
            ["cases.*.case.apology_issued", "cases.*.case.resolved"]
        );
    }
}
