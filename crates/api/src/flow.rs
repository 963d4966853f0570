//! `GetCaseFlow` and `ListLate`: the case-flow report (Biểu 06) of a unit
//! and its late cases, as the views state them at the period's end
//! (CONTRACT §9).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use kpi_domain::{CaseFlow, Day, Moment, Period, UnitIdx};
use kpi_store::FlowGroup;
use serde::Deserialize;
use tonic::Status;

use crate::access::Caller;
use crate::case::{rfc3339, Log};
use crate::{internal, pb, KpiApi};

/// The names of fields and procedures (`--catalogue PATH`):
/// `{"fields": {"dat_dai": "Đất đai"}, "procedures": {"1.001234": "…"}}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalogue {
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
    #[serde(default)]
    pub procedures: BTreeMap<String, String>,
}

impl Catalogue {
    /// A field's name, else its code.
    pub fn field_name<'a>(&'a self, code: &'a str) -> &'a str {
        self.fields.get(code).map_or(code, String::as_str)
    }

    /// A field's name, else empty.
    pub fn known_field(&self, code: &str) -> &str {
        self.fields.get(code).map_or("", String::as_str)
    }

    /// A procedure's name, else empty.
    pub fn known_procedure(&self, code: &str) -> &str {
        self.procedures.get(code).map_or("", String::as_str)
    }

    /// A procedure's name, else its code.
    pub fn procedure_name<'a>(&'a self, code: &'a str) -> &'a str {
        self.procedures.get(code).map_or(code, String::as_str)
    }
}

/// A catalogue file that does not load: the operator must fix it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CatalogueError(String);

impl Catalogue {
    pub fn from_file(path: &Path) -> Result<Catalogue, CatalogueError> {
        let bytes = std::fs::read(path).map_err(|err| {
            CatalogueError(format!(
                "the catalogue {} cannot be read: {err}",
                path.display()
            ))
        })?;
        serde_json::from_slice(&bytes).map_err(|err| {
            CatalogueError(format!(
                "the catalogue {} is not {{\"fields\": {{code: name}}, \"procedures\": {{code: name}}}}: {err}",
                path.display()
            ))
        })
    }
}

fn flow_reply(flow: &CaseFlow) -> pb::CaseFlow {
    pb::CaseFlow {
        carried_over: flow.carried_over,
        received_online: flow.received_online,
        received_in_person: flow.received_in_person,
        received_postal: flow.received_postal,
        to_handle: flow.to_handle,
        resolved_early: flow.resolved_early,
        resolved_on_time: flow.resolved_on_time,
        resolved_late: flow.resolved_late,
        resolved: flow.resolved,
        resolved_rejected: flow.resolved_rejected,
        withdrawn: flow.withdrawn,
        pending_not_due: flow.pending_not_due,
        pending_overdue: flow.pending_overdue,
        pending: flow.pending,
        late_total: flow.late_total,
        late_with_apology: flow.late_with_apology,
    }
}

impl KpiApi {
    /// The unit and period of a report, if the caller may read the unit
    /// and it exists on the period's last day.
    fn report_unit(
        &self,
        caller: Option<&Caller>,
        unit_id: &str,
        period: &str,
    ) -> Result<(UnitIdx, Period), Status> {
        let (unit, period) = self.parse_request(caller, ("unit_id", unit_id), period)?;
        let last = Day::from_date(period.last_day);
        let info = self.units.unit(unit);
        if info.exists_on(last) {
            return Ok((unit, period));
        }
        let names = |units: &[UnitIdx]| {
            units
                .iter()
                .map(|u| {
                    format!(
                        "`{}` ({})",
                        self.units.unit(*u).id,
                        self.units.unit(*u).name
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let message = match (info.days.from, info.days.to) {
            (Some(from), _) if last < from => format!(
                "unit `{unit_id}` was formed on {}, after the last day of {} ({}): it has no report for it{}",
                from.to_date(),
                period.label,
                period.last_day,
                match self.units.predecessors_on(unit, last).as_slice() {
                    [] => String::new(),
                    before => format!("; its cases were then held by {}", names(before)),
                }
            ),
            (_, Some(to)) => format!(
                "unit `{unit_id}` ceased on {}, before the last day of {} ({}): it has no report for it{}",
                to.to_date(),
                period.label,
                period.last_day,
                match self.units.successors(unit) {
                    [] => String::new(),
                    after => format!("; its cases are in the report of {}", names(after)),
                }
            ),
            _ => format!("unit `{unit_id}` does not exist on {}", period.last_day),
        };
        Err(Status::invalid_argument(message))
    }

    pub(crate) async fn case_flow(
        &self,
        caller: Option<&Caller>,
        request: pb::GetCaseFlowRequest,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<pb::CaseFlowReply, Status> {
        let (unit, period) = self.report_unit(caller, &request.unit_id, &request.period)?;
        let group = match pb::GroupBy::try_from(request.group_by) {
            Ok(pb::GroupBy::Unit) => FlowGroup::Unit,
            Ok(pb::GroupBy::Field) => FlowGroup::Field,
            Ok(pb::GroupBy::Procedure) => FlowGroup::Procedure,
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "group_by {} is not GROUP_BY_UNIT (0), GROUP_BY_FIELD (1) or GROUP_BY_PROCEDURE (2)",
                    request.group_by
                )))
            }
        };
        if let Some(sequence) = request.min_stream_sequence {
            self.wait_for_sequence(sequence, deadline).await?;
        }
        let _permit = self.permits.call().await?;
        // Answers are shared until a unit of the report changes.
        let hub = self.views.hub();
        let key = (unit, period.label.clone(), request.group_by);
        if let Some(reply) = hub.cached_flow(&key, request.min_stream_sequence.unwrap_or(0)) {
            return Ok(Arc::unwrap_or_clone(reply));
        }
        let sequence_before = self.views.current().checkpoint().map_err(internal)?;
        let now = Moment::from((self.clock)());
        let running = Day::from_date(period.last_day) >= now.local_day();
        let table = self
            .views
            .current()
            .case_flow(
                &self.units,
                unit,
                Day::from_date(period.first_day),
                Day::from_date(period.last_day),
                now,
                group,
            )
            .map_err(internal)?;
        let name_of = |key: &str| -> String {
            let named = match group {
                FlowGroup::Unit => self
                    .units
                    .find(key)
                    .map(|u| self.units.unit(u).name.clone()),
                FlowGroup::Field => self.catalogue.fields.get(key).cloned(),
                FlowGroup::Procedure => self.catalogue.procedures.get(key).cloned(),
            };
            named.unwrap_or_else(|| key.to_owned())
        };
        let info = self.units.unit(unit);
        let reply = pb::CaseFlowReply {
            unit_id: info.id.clone(),
            unit_name: info.name.clone(),
            period: period.label.clone(),
            first_day: period.first_day.to_string(),
            last_day: period.last_day.to_string(),
            as_of: rfc3339(table.as_of),
            rows: table
                .rows
                .iter()
                .map(|(key, flow)| pb::CaseFlowRow {
                    key: key.clone(),
                    name: name_of(key),
                    flow: Some(flow_reply(flow)),
                })
                .collect(),
            total: Some(flow_reply(&table.total)),
            stream_sequence: table.sequence,
        };
        // Kept only when no commit came between the check of the units and
        // the read (the answer's sequence then says what it reflects).
        if table.sequence == sequence_before {
            hub.keep_flow(
                key,
                running,
                table.receiving.into(),
                Arc::new(reply.clone()),
            );
        }
        Ok(reply)
    }

    pub(crate) async fn late_list(
        &self,
        caller: Option<&Caller>,
        request: pb::ListLateRequest,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<pb::ListLateReply, Status> {
        let (unit, period) = self.report_unit(caller, &request.unit_id, &request.period)?;
        if let Some(sequence) = request.min_stream_sequence {
            self.wait_for_sequence(sequence, deadline).await?;
        }
        let _permit = self.permits.call().await?;
        let now = Moment::from((self.clock)());
        let list = self
            .views
            .current()
            .late_cases(
                &self.units,
                unit,
                Day::from_date(period.first_day),
                Day::from_date(period.last_day),
                now,
            )
            .map_err(internal)?;
        let sequences: Vec<u64> = list
            .cases
            .iter()
            .flat_map(|(_, case)| case.apologies.iter().map(|(sequence, ..)| *sequence))
            .collect();
        let letters = letter_refs(self.log.as_ref(), &sequences).await;
        let mut cases = Vec::with_capacity(list.cases.len());
        for (case_id, case) in &list.cases {
            cases.push(pb::LateCase {
                case_id: case_id.clone(),
                procedure_code: case.procedure_code.clone(),
                field: case.field.clone(),
                received_at: rfc3339(case.received_at),
                due_at: rfc3339(case.due_at),
                resolved_at: case.resolved_at.map(rfc3339),
                days_late: case.days_late,
                apologies: case
                    .apologies
                    .iter()
                    .map(|(sequence, at, new_due_at)| pb::LateApology {
                        letter_ref: letters.get(sequence).cloned().unwrap_or_default(),
                        occurred_at: rfc3339(*at),
                        new_due_at: rfc3339(*new_due_at),
                    })
                    .collect(),
                unit_id: case.unit_id.clone(),
                field_name: self.catalogue.field_name(&case.field).to_owned(),
                procedure_name: self
                    .catalogue
                    .procedure_name(&case.procedure_code)
                    .to_owned(),
            });
        }
        let info = self.units.unit(unit);
        Ok(pb::ListLateReply {
            unit_id: info.id.clone(),
            unit_name: info.name.clone(),
            period: period.label.clone(),
            first_day: period.first_day.to_string(),
            last_day: period.last_day.to_string(),
            as_of: rfc3339(list.as_of),
            cases,
            stream_sequence: list.sequence,
        })
    }
}

/// The `letter_ref` of each apology letter, read back from the log (the
/// views do not keep free text); missing where the log cannot be read.
async fn letter_refs(log: Option<&Log>, sequences: &[u64]) -> BTreeMap<u64, String> {
    let Some(log) = log else {
        return BTreeMap::new();
    };
    log.event_data(sequences)
        .await
        .into_iter()
        .filter_map(|(sequence, data)| {
            Some((sequence, data.get("letter_ref")?.as_str()?.to_owned()))
        })
        .collect()
}
