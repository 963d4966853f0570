//! Who may do what (CONTRACT §8, §8.1): bearer tokens, each scoped to a
//! unit and everything under it, with a role.
//!
//! A server keeps only each token's SHA-256 (the tokens file) and compares
//! hashes in constant time. A token reads, or sends events for, its scope
//! unit and the units under it, placed in the tree of the day concerned: a
//! period's last day for a read, an event's own day for a send — or the
//! unit's own last (first) day when it ceased (began) before (after) that
//! day. The gRPC API (`kpi-api`) and the ingest services (`kpi-ingest`)
//! read the same file; each decides what a role may call.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use kpi_domain::{Day, UnitIdx, UnitRegistry};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Reads the rates of its scope (the gRPC API).
    Reader,
    /// A reader that may also call the audit calls, and send events.
    Operator,
    /// Sends events for its scope to the ingest services (CONTRACT §8.1).
    Sender,
}

impl Role {
    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "reader" => Some(Role::Reader),
            "operator" => Some(Role::Operator),
            "sender" => Some(Role::Sender),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Operator => "operator",
            Role::Sender => "sender",
        }
    }

    /// Whether the role may send events (a sender's, or an operator's).
    pub fn sends(self) -> bool {
        matches!(self, Role::Sender | Role::Operator)
    }
}

/// The units a token covers.
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

impl Caller {
    /// Whether the caller covers `unit` on `day` ([`within`]).
    pub fn covers(&self, units: &UnitRegistry, unit: UnitIdx, day: Day) -> bool {
        match self.scope {
            Scope::Everything => true,
            Scope::Unit(scope) => within(units, unit, scope, day),
        }
    }
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
/// the network without one, or would take tokens in clear.
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
         or anyone who reaches the port {what}"
    )]
    OpenOnNetwork { listen: String, what: &'static str },
    #[error(
        "--listen {listen} is not a loopback address and --tokens is given without --tls-cert and \
         --tls-key: bearer tokens would cross the network in clear (CONTRACT §8); serve TLS, or \
         listen on 127.0.0.1 behind a TLS proxy"
    )]
    InClear { listen: String },
}

/// Refuses to serve on `listen` what the contract forbids: a network
/// address without tokens (where anyone who reaches it `what`, e.g.
/// "reads every unit"), or tokens over a network address without TLS.
pub fn check_listen(
    listen: SocketAddr,
    tokens: bool,
    tls: bool,
    what: &'static str,
) -> Result<(), TokensError> {
    if listen.ip().is_loopback() {
        return Ok(());
    }
    if !tokens {
        return Err(TokensError::OpenOnNetwork {
            listen: listen.to_string(),
            what,
        });
    }
    if !tls {
        return Err(TokensError::InClear {
            listen: listen.to_string(),
        });
    }
    Ok(())
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
            // The name travels in a header (`Kpi-Sender`) and in logs: one
            // line of text.
            if entry.name.chars().any(char::is_control) {
                return Err(format!(
                    "tokens[{index}]: name {:?} holds a control character (a line break, a tab); \
                     a name is one line of text",
                    entry.name
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
                format!(
                    "{at}: role `{}` is not `reader`, `operator` or `sender`",
                    entry.role
                )
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

    /// Whether `caller`'s token is here with the same scope and role.
    pub fn holds(&self, caller: &Caller) -> bool {
        self.entries.iter().any(|entry| {
            bool::from(entry.sha256.ct_eq(&caller.sha256))
                && entry.caller.scope == caller.scope
                && entry.caller.role == caller.role
        })
    }
}

/// A tokens file in force, read again on demand (SIGHUP): a file that does
/// not load leaves the tokens in force as they were.
pub struct TokensFile {
    path: PathBuf,
    units: Arc<UnitRegistry>,
    tokens: RwLock<Arc<Tokens>>,
    /// Bumped each time the file is read again.
    reloaded: tokio::sync::watch::Sender<u64>,
}

impl TokensFile {
    pub fn load(path: &Path, units: Arc<UnitRegistry>) -> Result<TokensFile, TokensError> {
        let tokens = Tokens::load(path, &units)?;
        Ok(TokensFile {
            path: path.to_path_buf(),
            units,
            tokens: RwLock::new(Arc::new(tokens)),
            reloaded: tokio::sync::watch::channel(0).0,
        })
    }

    /// Reads the file again; how many tokens are in force.
    pub fn reload(&self) -> Result<usize, TokensError> {
        let tokens = Tokens::load(&self.path, &self.units)?;
        let count = tokens.len();
        *self
            .tokens
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(tokens);
        self.reloaded.send_modify(|generation| *generation += 1);
        Ok(count)
    }

    /// The tokens in force now.
    pub fn current(&self) -> Arc<Tokens> {
        self.tokens
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// News of the file being read again.
    pub fn reloads(&self) -> tokio::sync::watch::Receiver<u64> {
        self.reloaded.subscribe()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A server's tokens: none (every caller answered without one), or a tokens
/// file in force, read again on demand. The API's access and the ingest
/// services' senders are both one of these.
#[derive(Clone, Default)]
pub struct TokensInForce(Option<Arc<TokensFile>>);

impl TokensInForce {
    /// Callers need a token of the file at `path`.
    pub fn from_file(path: &Path, units: Arc<UnitRegistry>) -> Result<Self, TokensError> {
        Ok(TokensInForce(Some(Arc::new(TokensFile::load(
            path, units,
        )?))))
    }

    pub fn needs_tokens(&self) -> bool {
        self.0.is_some()
    }

    /// Reads the tokens file again (SIGHUP). A file that does not load
    /// leaves the tokens in force as they were. Returns how many tokens
    /// are in force (0 without a file).
    pub fn reload(&self) -> Result<usize, TokensError> {
        self.file().map_or(Ok(0), TokensFile::reload)
    }

    /// The tokens file, if callers need tokens.
    pub fn file(&self) -> Option<&TokensFile> {
        self.0.as_deref()
    }
}

/// Refuses to send a bearer token to `url` in clear: over `http://` only
/// to a loopback host (CONTRACT §8). The error says what to do.
pub fn token_may_travel(url: &str, flag: &str) -> Result<(), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|err| format!("{url} is not a URL ({err})"))?;
    if uri.scheme_str() != Some("http") {
        return Ok(());
    }
    let host = uri.host().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|address| address.is_loopback());
    if loopback {
        Ok(())
    } else {
        Err(format!(
            "{flag} would cross the network in clear to {host} (CONTRACT §8): use https://{host}… \
             (the server's --tls-cert), with --ca when its certificate is the province's own"
        ))
    }
}

/// The token in an `Authorization: Bearer <token>` header value.
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Whether `unit` is `scope` or under it, in the tree of `day` — or of
/// the unit's own last (first) day when it ceased before (began after).
pub fn within(units: &UnitRegistry, unit: UnitIdx, scope: UnitIdx, day: Day) -> bool {
    let days = units.unit(unit).days;
    let day = days.to.map_or(day, |to| day.min(to));
    let day = days.from.map_or(day, |from| day.max(from));
    units.lineage(unit, day).contains(&scope)
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
                file(&entry("Xã A\\r\\nKpi-Sender: x", "t2", "D", "sender")),
                "tokens[0]: name \"Xã A\\r\\nKpi-Sender: x\" holds a control character",
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
                "tokens[0] (`d`): role `admin` is not `reader`, `operator` or `sender`",
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
    fn a_token_goes_in_clear_only_to_loopback() {
        for url in [
            "http://127.0.0.1:50051",
            "http://127.8.0.1:8081",
            "http://localhost:8081/v1/events",
            "http://[::1]:50051",
            "https://10.0.0.5:50051",
            "https://kpi.quangngai.gov.vn",
        ] {
            assert_eq!(token_may_travel(url, "--token"), Ok(()), "{url}");
        }
        for url in ["http://10.0.0.5:50051", "http://kpi.quangngai.gov.vn:8081"] {
            let refused = token_may_travel(url, "--token").unwrap_err();
            assert!(
                refused.contains("--token would cross the network in clear"),
                "{refused}"
            );
        }
        assert!(token_may_travel("not a url", "--token").is_err());
    }

    #[test]
    fn a_network_address_needs_tokens_and_tokens_need_tls() {
        let listen = |text: &str| text.parse::<SocketAddr>().unwrap();
        assert!(check_listen(listen("127.0.0.1:8081"), false, false, "sends").is_ok());
        assert!(matches!(
            check_listen(listen("0.0.0.0:8081"), false, false, "sends"),
            Err(TokensError::OpenOnNetwork { .. })
        ));
        assert!(matches!(
            check_listen(listen("0.0.0.0:8081"), true, false, "sends"),
            Err(TokensError::InClear { .. })
        ));
        assert!(check_listen(listen("0.0.0.0:8081"), true, true, "sends").is_ok());
        assert_eq!(bearer_token("Bearer abc "), Some("abc"));
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
    }
}
