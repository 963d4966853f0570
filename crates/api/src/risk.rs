//! `ListAtRisk`: open cases of a unit due soon or overdue, by due time —
//! what commune staff look at every morning.

use kpi_domain::{Fact, Moment, RecordKey};
use tonic::Status;

use crate::access::Caller;
use crate::case::rfc3339;
use crate::{internal, pb, KpiApi};

/// The most cases one page returns.
const MAX_PAGE: usize = 1000;

pub fn list(
    api: &KpiApi,
    caller: Option<&Caller>,
    request: pb::ListAtRiskRequest,
) -> Result<pb::ListAtRiskReply, Status> {
    let today = Moment::from((api.clock)()).local_day();
    let unit = api.permitted_unit(caller, &request.unit_id, "unit_id", today)?;
    let unit_id = &api.units.unit(unit).id;
    let limit = match request.limit as usize {
        0 => 100,
        limit => limit.min(MAX_PAGE),
    };
    let after = if request.after.is_empty() {
        None
    } else {
        Some(hex::decode(&request.after).map_err(|_| {
            Status::invalid_argument("after is not a `next` of an earlier ListAtRisk answer")
        })?)
    };
    let now = Moment::from((api.clock)());
    let until = Moment::from_parts(
        now.unix_seconds() + i64::from(request.within_hours) * 3600,
        now.subsec_nanos(),
    );
    let store = api.views.current();
    let page = store
        .open_cases(unit_id, until, after.as_deref(), limit)
        .map_err(internal)?;
    let mut cases = Vec::with_capacity(page.cases.len());
    for (due_at, case_id, has_apology) in page.cases {
        let record = store
            .record_at_checkpoint(&RecordKey::Case(case_id.clone()))
            .map_err(internal)?
            .0;
        let received = record
            .as_ref()
            .and_then(|record| record.case_state().received.cloned());
        let (procedure_code, field) = match received.as_ref().map(|event| &event.fact) {
            Some(Fact::Received {
                procedure_code,
                field,
                ..
            }) => (procedure_code.clone(), field.clone()),
            _ => Default::default(),
        };
        let late_seconds = now.unix_seconds() - due_at.unix_seconds();
        let overdue = due_at < now;
        cases.push(pb::AtRiskCase {
            case_id,
            unit_id: received
                .as_ref()
                .map(|event| event.unit_id.clone())
                .unwrap_or_default(),
            received_at: received
                .as_ref()
                .map(|event| rfc3339(event.at))
                .unwrap_or_default(),
            due_at: rfc3339(due_at),
            overdue,
            days_overdue: if overdue {
                (late_seconds / 86_400) as u32
            } else {
                0
            },
            hours_left: if overdue {
                0.0
            } else {
                ((-late_seconds) as f64 / 3600.0 * 10.0).round() / 10.0
            },
            has_apology,
            procedure_code,
            field,
        });
    }
    Ok(pb::ListAtRiskReply {
        cases,
        next: page.next.map(hex::encode).unwrap_or_default(),
        stream_sequence: page.sequence,
    })
}
