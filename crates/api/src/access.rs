//! Who may read what (CONTRACT §8): bearer tokens, each scoped to a unit
//! and everything under it, with a role.
//!
//! The server keeps only each token's SHA-256 (the tokens file) and
//! compares hashes in constant time. A reader sees its scope unit and the
//! units under it, placed in the tree of the day asked about: for a
//! period, its last day, or a unit's own last day when it ceased earlier
//! (so a district that ended on 2025-06-30 reads its communes' first half
//! of 2025, not the second, when they answered to the province). An
//! operator may also call the audit calls (ListRejected, GetCase,
//! ListHeld, ExportViews), which show only the cases and events of units
//! in its scope; Rebuild needs scope `*`. When the file is read again, an
//! open WatchRates of a token no longer in it ends.
//!
//! Without a tokens file every call is answered, which the projector
//! allows only on a loopback address.

use std::path::Path;
use std::sync::Arc;

use kpi_domain::{Day, UnitIdx, UnitRegistry};
use tonic::metadata::{Ascii, MetadataMap, MetadataValue};
use tonic::{Request, Status};

use kpi_access::TokensInForce;
pub use kpi_access::{token_sha256, within, Caller, Role, Scope, Tokens, TokensError};

use crate::KpiApi;

/// The server's access control: none (every call answered), or a tokens
/// file, reloadable while serving.
#[derive(Clone, Default)]
pub struct Access {
    tokens: TokensInForce,
}

impl Access {
    /// Every call answered, without a token.
    pub fn open() -> Access {
        Access::default()
    }

    /// Calls need a token of the file at `path`.
    pub fn from_file(path: &Path, units: Arc<UnitRegistry>) -> Result<Access, TokensError> {
        Ok(Access {
            tokens: TokensInForce::from_file(path, units)?,
        })
    }

    pub fn needs_tokens(&self) -> bool {
        self.tokens.needs_tokens()
    }

    /// Reads the tokens file again (SIGHUP). A file that does not load
    /// leaves the tokens in force as they were. Returns how many tokens
    /// are in force.
    pub fn reload(&self) -> Result<usize, TokensError> {
        self.tokens.reload()
    }

    /// News of the tokens file being read again (never, without one).
    pub fn reloads(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.tokens.file().map(|file| file.reloads())
    }

    /// Whether `caller`'s token is still in force with the same scope and
    /// role (an open stream of a revoked token ends).
    pub fn still_holds(&self, caller: &Caller) -> bool {
        self.tokens
            .file()
            .is_none_or(|file| file.current().holds(caller))
    }

    /// The caller of a request: `None` when the server needs no token,
    /// UNAUTHENTICATED without a known one, PERMISSION_DENIED for a
    /// sender's token (it sends events, it does not read).
    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<Option<Caller>, Status> {
        let Some(file) = self.tokens.file() else {
            return Ok(None);
        };
        let header = metadata.get("authorization").ok_or_else(|| {
            Status::unauthenticated(
                "this server needs a token: send the header `authorization: Bearer <token>` \
                 (kpictl: --token or KPI_TOKEN)",
            )
        })?;
        let token = header
            .to_str()
            .ok()
            .and_then(kpi_access::bearer_token)
            .ok_or_else(|| {
                Status::unauthenticated("the authorization header must be `Bearer <token>`")
            })?;
        let caller = file.current().find(token).cloned().ok_or_else(|| {
            Status::unauthenticated(
                "the token is not in this server's tokens file (revoked, or for another server)",
            )
        })?;
        if caller.role == Role::Sender {
            return Err(Status::permission_denied(format!(
                "token `{}` is a sender's: it sends events to the ingest services, it does not read",
                caller.name
            )));
        }
        Ok(Some(caller))
    }

    /// Checks a call's token and hands its caller to the handler.
    pub fn intercept(&self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(caller) = self.authenticate(request.metadata())? {
            request.extensions_mut().insert(caller);
        }
        Ok(request)
    }
}

/// The caller a request was let in as (`None`: the server needs no token).
pub fn caller_of<T>(request: &Request<T>) -> Option<Caller> {
    request.extensions().get::<Caller>().cloned()
}

impl KpiApi {
    /// The unit a call names, if its caller may read it on `day`. A unit
    /// outside the scope is PERMISSION_DENIED whether or not it exists.
    pub(crate) fn permitted_unit(
        &self,
        caller: Option<&Caller>,
        unit_id: &str,
        field: &str,
        day: Day,
    ) -> Result<UnitIdx, Status> {
        let Some(Caller {
            scope: Scope::Unit(scope),
            name,
            ..
        }) = caller
        else {
            return self.find_unit(unit_id, field);
        };
        if unit_id.is_empty() {
            return self.find_unit(unit_id, field);
        }
        self.units
            .find(unit_id)
            .filter(|unit| within(&self.units, *unit, *scope, day))
            .ok_or_else(|| {
                Status::permission_denied(format!(
                    "token `{name}` reads unit `{}` and the units under it; {field} `{unit_id}` \
                     is not one of them on {}",
                    self.units.unit(*scope).id,
                    day.to_date()
                ))
            })
    }
}

/// Refuses a reader the audit calls; for an operator, the unit its scope
/// is limited to (`None`: every unit, or a server without tokens).
pub(crate) fn operator_scope(
    caller: Option<&Caller>,
    call: &str,
) -> Result<Option<UnitIdx>, Status> {
    match caller {
        Some(Caller {
            role: Role::Reader,
            name,
            ..
        }) => Err(Status::permission_denied(format!(
            "{call} is for operators; token `{name}` is a reader's"
        ))),
        Some(Caller {
            scope: Scope::Unit(unit),
            ..
        }) => Ok(Some(*unit)),
        _ => Ok(None),
    }
}

impl KpiApi {
    /// Whether an operator limited to `scope` sees what unit `unit_id`
    /// holds on `day`; a unit the registry does not know only scope `*`.
    pub(crate) fn in_scope(&self, scope: Option<UnitIdx>, unit_id: &str, day: Day) -> bool {
        let Some(scope) = scope else {
            return true;
        };
        self.units
            .find(unit_id)
            .is_some_and(|unit| within(&self.units, unit, scope, day))
    }

    /// Whether an operator limited to `scope` sees a case: its unit on the
    /// day it was received, or the unit holding it today (its successor).
    pub(crate) fn record_in_scope(
        &self,
        scope: Option<UnitIdx>,
        record: &kpi_domain::Record,
    ) -> bool {
        let Some(scope_unit) = scope else {
            return true;
        };
        let Some((unit_id, at)) = record.home() else {
            return false;
        };
        let Some(unit) = self.units.find(unit_id) else {
            return false;
        };
        let today = kpi_domain::Moment::from((self.clock)()).local_day();
        within(&self.units, unit, scope_unit, at.local_day())
            || within(
                &self.units,
                self.units.holder_on(unit, today),
                scope_unit,
                today,
            )
    }
}

/// Adds `authorization: Bearer <token>` to every call of a client.
#[derive(Clone, Default)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    /// No header when `token` is `None`.
    pub fn new(token: Option<&str>) -> Result<Bearer, String> {
        token
            .map(|token| {
                format!("Bearer {token}")
                    .parse()
                    .map_err(|_| "the token has characters a header cannot carry".to_owned())
            })
            .transpose()
            .map(Bearer)
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REFORM: &str = r#"{"units": [
      {"id": "P", "name": "Tỉnh P", "level": "province"},
      {"id": "D", "name": "Huyện D", "level": "district", "parent": "P", "valid_to": "2025-06-30"},
      {"id": "E", "name": "Huyện E", "level": "district", "parent": "P", "valid_to": "2025-06-30"},
      {"id": "A", "name": "Xã A", "level": "commune",
       "parents": [{"id": "D", "to": "2025-06-30"}, {"id": "P", "from": "2025-07-01"}]},
      {"id": "B", "name": "Xã B", "level": "commune", "parent": "D", "valid_to": "2025-06-30"},
      {"id": "C", "name": "Xã C", "level": "commune", "parent": "E", "valid_to": "2025-06-30"}]}"#;

    fn units() -> UnitRegistry {
        UnitRegistry::from_json(REFORM.as_bytes()).unwrap()
    }

    fn file(entries: &str) -> String {
        format!(r#"{{"tokens": [{entries}]}}"#)
    }

    fn entry(name: &str, token: &str, scope: &str, role: &str) -> String {
        format!(
            r#"{{"name": "{name}", "sha256": "{}", "scope": "{scope}", "role": "{role}"}}"#,
            token_sha256(token)
        )
    }

    #[test]
    fn the_authorization_header_is_checked() {
        let units = Arc::new(units());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.json");
        std::fs::write(
            &path,
            file(&format!(
                "{},{}",
                entry("d", "secret-d", "D", "reader"),
                entry("x", "secret-sender", "D", "sender")
            )),
        )
        .unwrap();
        let access = Access::from_file(&path, units.clone()).unwrap();
        let metadata = |value: Option<&str>| {
            let mut map = MetadataMap::new();
            if let Some(value) = value {
                map.insert("authorization", value.parse().unwrap());
            }
            map
        };
        let refused = |value: Option<&str>| access.authenticate(&metadata(value)).unwrap_err();
        assert_eq!(refused(None).code(), tonic::Code::Unauthenticated);
        // A sender's token sends events; it does not read.
        assert_eq!(
            refused(Some("Bearer secret-sender")).code(),
            tonic::Code::PermissionDenied
        );
        assert!(refused(None).message().contains("Bearer <token>"));
        assert!(refused(Some("Basic secret-d"))
            .message()
            .contains("must be `Bearer"));
        assert!(refused(Some("Bearer other"))
            .message()
            .contains("not in this server's"));
        let caller = access
            .authenticate(&metadata(Some("bearer secret-d")))
            .unwrap()
            .unwrap();
        assert_eq!(caller.name, "d");
        assert!(Access::open()
            .authenticate(&metadata(None))
            .unwrap()
            .is_none());

        // A reload takes the file as it is now; a broken file changes nothing.
        std::fs::write(&path, file(&entry("d2", "secret-d2", "D", "reader"))).unwrap();
        assert_eq!(access.reload().unwrap(), 1);
        assert!(refused(Some("Bearer secret-d"))
            .message()
            .contains("not in this server's"));
        std::fs::write(&path, "{").unwrap();
        assert!(access.reload().is_err());
        let caller = access.authenticate(&metadata(Some("Bearer secret-d2")));
        assert_eq!(caller.unwrap().unwrap().name, "d2");
    }
}
