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

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use kpi_domain::{Day, UnitIdx, UnitRegistry};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::metadata::{Ascii, MetadataMap, MetadataValue};
use tonic::{Request, Status};

use crate::KpiApi;

/// What a token may do besides reading its scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Reader,
    /// A reader that may also call the audit calls.
    Operator,
}

impl Role {
    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "reader" => Some(Role::Reader),
            "operator" => Some(Role::Operator),
            _ => None,
        }
    }
}

/// The units a token reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `"*"`: every unit.
    Everything,
    /// This unit and every unit under it.
    Unit(UnitIdx),
}

/// Who is calling, as the token they sent says.
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: String,
    pub scope: Scope,
    pub role: Role,
    /// The SHA-256 of the token: whether it is still in the file.
    sha256: [u8; 32],
}

struct Entry {
    caller: Caller,
    sha256: [u8; 32],
}

/// The tokens a server accepts.
pub struct Tokens {
    entries: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensJson {
    tokens: Vec<EntryJson>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryJson {
    name: String,
    sha256: String,
    scope: String,
    role: String,
}

/// A tokens file that cannot be used, or a server that would be open to
/// the network without one.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    #[error("cannot read the tokens file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("tokens file {path}: {detail}")]
    Invalid { path: String, detail: String },
    #[error(
        "--listen {listen} is not a loopback address: give --tokens (CONTRACT §8), \
         or anyone who reaches the port reads every unit"
    )]
    OpenOnNetwork { listen: String },
}

/// The SHA-256 of a token, as the tokens file holds it (lowercase hex).
pub fn token_sha256(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

impl Tokens {
    /// Reads a tokens file; each mistake is named by its entry and field.
    pub fn from_json(bytes: &[u8], units: &UnitRegistry) -> Result<Tokens, String> {
        let file: TokensJson = serde_json::from_slice(bytes).map_err(|err| {
            format!(
                "not a tokens file ({err}); expected {{\"tokens\": [{{\"name\", \"sha256\", \
                 \"scope\", \"role\"}}]}}"
            )
        })?;
        let mut entries: Vec<Entry> = Vec::with_capacity(file.tokens.len());
        for (index, entry) in file.tokens.into_iter().enumerate() {
            let at = format!("tokens[{index}] (`{}`)", entry.name);
            if entry.name.trim().is_empty() {
                return Err(format!(
                    "tokens[{index}]: name is empty; name whom the token is for"
                ));
            }
            let sha256: [u8; 32] = hex::decode(&entry.sha256)
                .ok()
                .and_then(|bytes| bytes.try_into().ok())
                .ok_or_else(|| {
                    format!(
                        "{at}: sha256 must be the 64 hex digits of the token's SHA-256 \
                         (`kpictl token new` prints the line)"
                    )
                })?;
            let scope = match entry.scope.as_str() {
                "*" => Scope::Everything,
                id => Scope::Unit(units.find(id).ok_or_else(|| {
                    format!("{at}: scope `{id}` is not in the units file (or `*` for every unit)")
                })?),
            };
            let role = Role::parse(&entry.role).ok_or_else(|| {
                format!("{at}: role `{}` is not `reader` or `operator`", entry.role)
            })?;
            if let Some(same) = entries.iter().position(|seen| seen.sha256 == sha256) {
                return Err(format!(
                    "{at}: the same sha256 as tokens[{same}]; one token, one entry"
                ));
            }
            entries.push(Entry {
                caller: Caller {
                    name: entry.name,
                    scope,
                    role,
                    sha256,
                },
                sha256,
            });
        }
        Ok(Tokens { entries })
    }

    pub fn load(path: &Path, units: &UnitRegistry) -> Result<Tokens, TokensError> {
        let bytes = std::fs::read(path).map_err(|source| TokensError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Tokens::from_json(&bytes, units).map_err(|detail| TokensError::Invalid {
            path: path.display().to_string(),
            detail,
        })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The caller a token stands for. Every entry's hash is compared, in
    /// constant time, whichever matches.
    pub fn find(&self, token: &str) -> Option<&Caller> {
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for entry in &self.entries {
            let same = bool::from(entry.sha256.ct_eq(&presented));
            if same && found.is_none() {
                found = Some(&entry.caller);
            }
        }
        found
    }
}

/// The server's access control: none (every call answered), or a tokens
/// file, reloadable while serving.
#[derive(Clone, Default)]
pub struct Access {
    file: Option<Arc<TokensFile>>,
}

struct TokensFile {
    path: PathBuf,
    units: Arc<UnitRegistry>,
    tokens: RwLock<Arc<Tokens>>,
    /// Bumped each time the file is read again.
    reloaded: tokio::sync::watch::Sender<u64>,
}

impl Access {
    /// Every call answered, without a token.
    pub fn open() -> Access {
        Access::default()
    }

    /// Calls need a token of the file at `path`.
    pub fn from_file(path: &Path, units: Arc<UnitRegistry>) -> Result<Access, TokensError> {
        let tokens = Tokens::load(path, &units)?;
        Ok(Access {
            file: Some(Arc::new(TokensFile {
                path: path.to_path_buf(),
                units,
                tokens: RwLock::new(Arc::new(tokens)),
                reloaded: tokio::sync::watch::channel(0).0,
            })),
        })
    }

    pub fn needs_tokens(&self) -> bool {
        self.file.is_some()
    }

    /// Reads the tokens file again (SIGHUP). A file that does not load
    /// leaves the tokens in force as they were. Returns how many tokens
    /// are in force.
    pub fn reload(&self) -> Result<usize, TokensError> {
        let Some(file) = &self.file else {
            return Ok(0);
        };
        let tokens = Tokens::load(&file.path, &file.units)?;
        let count = tokens.len();
        *file
            .tokens
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(tokens);
        file.reloaded.send_modify(|generation| *generation += 1);
        Ok(count)
    }

    /// News of the tokens file being read again (never, without one).
    pub fn reloads(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.file.as_ref().map(|file| file.reloaded.subscribe())
    }

    /// Whether `caller`'s token is still in force with the same scope and
    /// role (an open stream of a revoked token ends).
    pub fn still_holds(&self, caller: &Caller) -> bool {
        let Some(file) = &self.file else {
            return true;
        };
        let tokens = file
            .tokens
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        tokens.entries.iter().any(|entry| {
            bool::from(entry.sha256.ct_eq(&caller.sha256))
                && entry.caller.scope == caller.scope
                && entry.caller.role == caller.role
        })
    }

    /// The caller of a request: `None` when the server needs no token,
    /// UNAUTHENTICATED without a known one.
    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<Option<Caller>, Status> {
        let Some(file) = &self.file else {
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
            .and_then(|value| {
                let (scheme, token) = value.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .ok_or_else(|| {
                Status::unauthenticated("the authorization header must be `Bearer <token>`")
            })?;
        let tokens = file
            .tokens
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        tokens.find(token).cloned().map(Some).ok_or_else(|| {
            Status::unauthenticated(
                "the token is not in this server's tokens file (revoked, or for another server)",
            )
        })
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

/// Whether `unit` is `scope` or under it, in the tree of `day` — or of
/// the unit's own last (first) day when it ceased before (began after).
pub fn within(units: &UnitRegistry, unit: UnitIdx, scope: UnitIdx, day: Day) -> bool {
    let days = units.unit(unit).days;
    let day = days.to.map_or(day, |to| day.min(to));
    let day = days.from.map_or(day, |from| day.max(from));
    units.lineage(unit, day).contains(&scope)
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

    fn day(text: &str) -> Day {
        Day::from_date(text.parse().unwrap())
    }

    #[test]
    fn a_token_is_found_by_its_hash_and_only_by_it() {
        let units = units();
        let tokens = Tokens::from_json(
            file(&format!(
                "{},{}",
                entry("Sở Nội vụ", "secret-d", "D", "reader"),
                entry("Vận hành", "secret-ops", "*", "operator")
            ))
            .as_bytes(),
            &units,
        )
        .unwrap();
        let d = tokens.find("secret-d").unwrap();
        assert_eq!(
            (d.name.as_str(), d.scope, d.role),
            (
                "Sở Nội vụ",
                Scope::Unit(units.find("D").unwrap()),
                Role::Reader
            )
        );
        assert_eq!(tokens.find("secret-ops").unwrap().scope, Scope::Everything);
        assert!(tokens.find("secret").is_none());
        assert!(tokens.find("").is_none());
        assert!(
            tokens.find(&token_sha256("secret-d")).is_none(),
            "the hash is not a token"
        );
    }

    #[test]
    fn each_mistake_in_a_tokens_file_is_named() {
        let units = units();
        let good = entry("a", "t1", "D", "reader");
        for (text, expected) in [
            ("[]".to_owned(), "not a tokens file"),
            (
                file(&good.replace("\"role\"", "\"rôle\"")),
                "not a tokens file",
            ),
            (
                file(&entry("", "t2", "D", "reader")),
                "tokens[0]: name is empty",
            ),
            (
                file(&format!(
                    r#"{good},{{"name": "b", "sha256": "abc", "scope": "D", "role": "reader"}}"#
                )),
                "tokens[1] (`b`): sha256 must be the 64 hex digits",
            ),
            (
                file(&entry("c", "t3", "Z", "reader")),
                "tokens[0] (`c`): scope `Z` is not in the units file",
            ),
            (
                file(&entry("d", "t4", "D", "admin")),
                "tokens[0] (`d`): role `admin` is not `reader` or `operator`",
            ),
            (
                file(&format!("{good},{}", entry("e", "t1", "P", "reader"))),
                "tokens[1] (`e`): the same sha256 as tokens[0]",
            ),
        ] {
            let err = Tokens::from_json(text.as_bytes(), &units)
                .err()
                .unwrap_or_else(|| panic!("{text} must be refused"));
            assert!(err.contains(expected), "{err}\n  expected: {expected}");
        }
    }

    #[test]
    fn a_scope_covers_the_units_under_it_on_the_day_asked_about() {
        let units = units();
        let id = |id: &str| units.find(id).unwrap();
        let (p, d, a, b, c) = (id("P"), id("D"), id("A"), id("B"), id("C"));
        assert!(within(&units, d, d, day("2025-03-01")), "the scope itself");
        assert!(within(&units, a, d, day("2025-06-30")));
        assert!(
            !within(&units, a, d, day("2025-07-01")),
            "A answers to P after the reform"
        );
        assert!(within(&units, a, p, day("2025-07-01")));
        assert!(within(&units, a, p, day("2025-06-30")), "and under D, to P");
        assert!(
            within(&units, b, d, day("2025-12-31")),
            "B ceased on 2025-06-30, under D: its whole 2025 is D's"
        );
        assert!(
            !within(&units, c, d, day("2025-06-30")),
            "another district's commune"
        );
        assert!(!within(&units, p, d, day("2025-06-30")), "not upwards");
    }

    #[test]
    fn the_authorization_header_is_checked() {
        let units = Arc::new(units());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.json");
        std::fs::write(&path, file(&entry("d", "secret-d", "D", "reader"))).unwrap();
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
