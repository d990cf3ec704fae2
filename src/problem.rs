//! A problem the user has to fix, shown as `Degraded=True` with its reason and message.

use crate::reason::Reason;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub reason: Reason,
    /// Names the field or object and what to do; never carries a secret value.
    pub message: String,
    /// The problem concerns storage: the database cannot start.
    pub blocks_database: bool,
}

impl Problem {
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
            blocks_database: false,
        }
    }

    /// A problem that keeps the database from being created.
    pub fn blocking_database(reason: Reason, message: impl Into<String>) -> Self {
        Self {
            blocks_database: true,
            ..Self::new(reason, message)
        }
    }
}
