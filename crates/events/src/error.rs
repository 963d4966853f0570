//! Why an event is invalid, naming the field and the reason.

/// An invalid event. Every variant names the field it concerns (see
/// [`EventError::field`]) so that an operator knows what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("the event is {size} bytes; the limit is 65536 bytes (64 KiB)")]
    TooLarge { size: usize },
    #[error("not valid JSON: {detail}")]
    MalformedJson { detail: String },
    #[error("the event must be a JSON object, found {found}")]
    NotAnObject { found: &'static str },
    #[error("field `{field}` is required")]
    Missing { field: String },
    #[error("field `{field}` must be {expected}, found {found}")]
    WrongType {
        field: String,
        expected: &'static str,
        found: &'static str,
    },
    #[error("field `{field}`: {reason}")]
    Invalid { field: String, reason: String },
}

impl EventError {
    /// The field at fault, dotted for nested ones (`data.due_at`); `None`
    /// when the event as a whole is at fault (too large, not JSON).
    pub fn field(&self) -> Option<&str> {
        match self {
            EventError::TooLarge { .. }
            | EventError::MalformedJson { .. }
            | EventError::NotAnObject { .. } => None,
            EventError::Missing { field }
            | EventError::WrongType { field, .. }
            | EventError::Invalid { field, .. } => Some(field),
        }
    }

    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        EventError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}
