//! Who may send (CONTRACT §8.1): the sender of a post, from its bearer
//! token, and what it may send.
//!
//! A service given `--tokens` answers a post only with a token of role
//! `sender` or `operator` (401 without one or with one the file does not
//! hold, 403 for a reader's), and stores only the lines of units in the
//! token's scope, by the tree of each event's day; the others are rejected
//! naming the scope. Every event published carries its sender's name
//! (`Kpi-Sender`), `local` on a service without tokens, so that an audit
//! of a disputed figure ends at a named sender.

use std::path::Path;
use std::sync::Arc;

use kpi_access::{Caller, TokensError, TokensFile, TokensInForce};
use kpi_domain::{Day, Moment, UnitRegistry};
use kpi_events::Event;

use crate::batch::LineError;

/// The name events of a service without tokens are sent under.
pub const LOCAL_SENDER: &str = "local";

/// Who sent a post, and so its events.
#[derive(Debug, Clone)]
pub struct Sender {
    name: Arc<str>,
    /// The token's caller; `None` on a service without tokens (and for
    /// `kpictl import`, whose NATS user is its credential).
    caller: Option<Caller>,
}

impl Sender {
    /// A service without tokens: every unit, under the name `local`.
    pub fn local() -> Sender {
        Sender::named(LOCAL_SENDER)
    }

    /// A sender of every unit under `name` (`kpictl import` as its user).
    pub fn named(name: &str) -> Sender {
        Sender {
            name: Arc::from(name),
            caller: None,
        }
    }

    /// The sender a token stands for.
    pub fn of(caller: Caller) -> Sender {
        Sender {
            name: Arc::from(caller.name.as_str()),
            caller: Some(caller),
        }
    }

    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// Refuses an event of a unit outside the sender's scope on the
    /// event's day.
    pub fn check(&self, units: &UnitRegistry, event: &Event) -> Result<(), LineError> {
        let day = Moment::from(event.occurred_at).local_day();
        self.check_unit(units, &event.unit_id, day, "unit_id")
    }

    /// Refuses `unit_id` on `day` when outside the sender's scope; the
    /// rejection names `field`.
    pub fn check_unit(
        &self,
        units: &UnitRegistry,
        unit_id: &str,
        day: Day,
        field: &str,
    ) -> Result<(), LineError> {
        let Some(caller) = &self.caller else {
            return Ok(());
        };
        let covered = units
            .find(unit_id)
            .is_some_and(|unit| caller.covers(units, unit, day));
        if covered {
            return Ok(());
        }
        Err(LineError {
            field: Some(field.to_owned()),
            reason: format!(
                "unit {unit_id} is outside the scope of sender '{}'",
                caller.name
            ),
        })
    }
}

/// Why a post is refused before it is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// 401: no token, or one the file does not hold.
    Unauthenticated(String),
    /// 403: a token that may not send.
    Forbidden(String),
}

/// A service's sender tokens: none (every post answered as `local`), or a
/// tokens file read again on SIGHUP.
#[derive(Clone, Default)]
pub struct Senders {
    tokens: TokensInForce,
}

impl Senders {
    pub fn open() -> Senders {
        Senders::default()
    }

    pub fn from_file(path: &Path, units: Arc<UnitRegistry>) -> Result<Senders, TokensError> {
        Ok(Senders {
            tokens: TokensInForce::from_file(path, units)?,
        })
    }

    pub fn needs_tokens(&self) -> bool {
        self.tokens.needs_tokens()
    }

    /// Reads the tokens file again; how many tokens are in force.
    pub fn reload(&self) -> Result<usize, TokensError> {
        self.tokens.reload()
    }

    /// The sender of a post whose `Authorization` header is `header`.
    pub fn authenticate(&self, header: Option<&str>) -> Result<Sender, Refused> {
        let Some(file) = self.tokens.file() else {
            return Ok(Sender::local());
        };
        let header = header.ok_or_else(|| {
            Refused::Unauthenticated(
                "this service needs a sender token: send the header `Authorization: Bearer <token>` \
                 (`kpictl token new --role sender` makes one)"
                    .to_owned(),
            )
        })?;
        let token = kpi_access::bearer_token(header).ok_or_else(|| {
            Refused::Unauthenticated("the Authorization header must be `Bearer <token>`".to_owned())
        })?;
        self.sender_of(file, token)
    }

    /// The sender a token stands for (a DVCQG `session`, or a password
    /// at `/v1/dvcqg/auth`).
    pub fn token(&self, token: &str) -> Result<Sender, Refused> {
        match self.tokens.file() {
            None => Ok(Sender::local()),
            Some(file) => self.sender_of(file, token),
        }
    }

    fn sender_of(&self, file: &TokensFile, token: &str) -> Result<Sender, Refused> {
        let caller = file.current().find(token).cloned().ok_or_else(|| {
            Refused::Unauthenticated(
                "the token is not in this service's tokens file (revoked, or for another service)"
                    .to_owned(),
            )
        })?;
        if !caller.role.sends() {
            return Err(Refused::Forbidden(format!(
                "token '{}' is a {}'s: it may not send events (a token of role sender or operator may)",
                caller.name,
                caller.role.as_str()
            )));
        }
        Ok(Sender::of(caller))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kpi_access::token_sha256;

    /// Commune A moves from district D to the province on 2025-07-01.
    const REFORM: &str = r#"{"units": [
      {"id": "P", "name": "Tỉnh P", "level": "province"},
      {"id": "D", "name": "Huyện D", "level": "district", "parent": "P", "valid_to": "2025-06-30"},
      {"id": "A", "name": "Xã A", "level": "commune",
       "parents": [{"id": "D", "to": "2025-06-30"}, {"id": "P", "from": "2025-07-01"}]},
      {"id": "B", "name": "Xã B", "level": "commune", "parent": "P"}]}"#;

    fn day(text: &str) -> Day {
        Day::from_date(text.parse().unwrap())
    }

    /// The sender of "the-token" in a tokens file of one entry.
    fn sender(units: &Arc<UnitRegistry>, scope: &str, role: &str) -> Result<Sender, Refused> {
        let file = tempfile::NamedTempFile::new().unwrap();
        let text = format!(
            r#"{{"tokens": [{{"name": "Phần mềm một cửa", "sha256": "{}", "scope": "{scope}", "role": "{role}"}}]}}"#,
            token_sha256("the-token")
        );
        std::fs::write(file.path(), text).unwrap();
        let senders = Senders::from_file(file.path(), units.clone()).unwrap();
        assert!(matches!(
            senders.authenticate(None),
            Err(Refused::Unauthenticated(_))
        ));
        assert!(matches!(
            senders.token("another-token"),
            Err(Refused::Unauthenticated(_))
        ));
        senders.authenticate(Some("Bearer the-token"))
    }

    #[test]
    fn a_senders_scope_follows_the_tree_of_each_events_day() {
        let units = Arc::new(UnitRegistry::from_json(REFORM.as_bytes()).unwrap());
        let district = sender(&units, "D", "sender").unwrap();
        let check = |sender: &Sender, unit: &str, on: &str| {
            sender
                .check_unit(&units, unit, day(on), "unit_id")
                .map_err(|refused| refused.reason)
        };
        assert_eq!(check(&district, "A", "2025-06-30"), Ok(()));
        assert_eq!(
            check(&district, "A", "2025-07-01"),
            Err("unit A is outside the scope of sender 'Phần mềm một cửa'".to_owned())
        );
        assert!(check(&district, "B", "2025-06-30").is_err());
        assert!(
            check(&district, "Z", "2025-06-30").is_err(),
            "an unknown unit"
        );
        let operator = sender(&units, "*", "operator").unwrap();
        assert_eq!(check(&operator, "B", "2025-07-01"), Ok(()));
        assert!(
            matches!(sender(&units, "P", "reader"), Err(Refused::Forbidden(_))),
            "a reader may not send"
        );
        assert_eq!(check(&Sender::local(), "Z", "2025-07-01"), Ok(()));
        assert_eq!(Sender::local().name().as_ref(), "local");
    }
}
