//! The agents layer's errors.

/// Result with the agents layer's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong in the agents layer itself. Handlers return the runtime's error type
/// (`denizen_runtime::Error`); these convert into it with `?`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "no task or plain callable `{0}` is registered on this agent; register it in `Agent::methods` (`methods.task(..)`) before scheduling or queueing it"
    )]
    /// No task or plain callable of this name is declared in `Agent::methods`.
    UnknownTask(String),
    #[error(
        "`{expression}` is not a cron expression: {reason}; use Unix cron's five fields `min hour dom mon dow` (`*/5 * * * *`, `0 9 * * MON-FRI`; Sunday is 0 or 7) or six with seconds first"
    )]
    /// A cron expression that does not parse.
    InvalidCron {
        /// The expression given.
        expression: String,
        /// What the parser found wrong.
        reason: String,
    },
    #[error("cron expression `{0}` has no future occurrence")]
    /// A cron expression that never matches a future time (`0 0 30 2 *`).
    CronExhausted(String),
    #[error("a schedule interval must be between 1 ms and 30 days, got {0:?}")]
    /// A `schedule_every` interval of zero or over [`MAX_INTERVAL`](crate::MAX_INTERVAL).
    InvalidInterval(std::time::Duration),
    #[error("could not encode or decode agent data as JSON: {0}")]
    /// A state, payload or stored value that does not encode or decode as JSON.
    Json(#[from] serde_json::Error),
    #[error(
        "the agent's state row is missing; it is created by the agent's on_start, do not delete it"
    )]
    /// The agent's state row was deleted.
    StateMissing,
    #[error(
        "the agent's state is {size} bytes of JSON, over the {max}-byte limit (MAX_STATE_BYTES); keep large data in the agent's tables (`cx.sql`) and a summary in the state"
    )]
    /// A state over [`MAX_STATE_BYTES`](crate::MAX_STATE_BYTES) of JSON.
    StateTooLarge {
        /// Its size, in bytes of JSON.
        size: usize,
        /// The limit.
        max: usize,
    },
    #[error(transparent)]
    /// The runtime failed (storage, sockets, another object).
    Runtime(#[from] denizen_runtime::Error),
}

impl From<denizen_runtime::storage::Error> for Error {
    fn from(e: denizen_runtime::storage::Error) -> Self {
        Error::Runtime(e.into())
    }
}

impl From<Error> for denizen_runtime::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Runtime(e) => e,
            other => denizen_runtime::Error::custom(other),
        }
    }
}
