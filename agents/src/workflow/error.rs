/// Result with the workflow [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong creating, driving or controlling a workflow instance.
///
/// Step methods return it too: propagate it with `?` from [`Workflow::run`](super::Workflow::run)
/// and the instance ends `errored` with its message, or match on it (a [`Error::StepFailed`] after
/// exhausted retries, an [`Error::EventTimeout`]) to handle the failure in the workflow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum Error {
    #[error("no workflow named `{0}` is registered; register it with Workflows::add first")]
    UnknownWorkflow(String),
    #[error("workflow `{workflow}` has no instance `{id}`; create it first")]
    UnknownInstance { workflow: String, id: String },
    #[error("workflow `{workflow}` already has an instance `{id}`; pick another id or omit it")]
    AlreadyExists { workflow: String, id: String },
    #[error("invalid instance id: {0}")]
    InvalidId(String),
    #[error("the params do not fit this workflow: {0}")]
    InvalidParams(String),
    #[error("cannot {action} an instance that is {status}")]
    InvalidState { action: String, status: String },
    #[error("step `{step}` failed: {message}")]
    StepFailed { step: String, message: String },
    #[error("step `{step}` timed out waiting for an event of type `{event_type}`")]
    EventTimeout { step: String, event_type: String },
    #[error(
        "the workflow does not match its journal at step {index}: the journal has {journaled}, \
         the code now runs {found}; keep step names and order stable while instances run, \
         or restart the instance"
    )]
    NonDeterministic {
        index: u32,
        journaled: String,
        found: String,
    },
    #[error("could not encode or decode a value: {0}")]
    Codec(String),
    #[error("runtime: {0}")]
    Runtime(String),
    #[error("{0}")]
    Workflow(String),
}

impl Error {
    /// An application error raised by a workflow's own code.
    pub fn msg(message: impl std::fmt::Display) -> Self {
        Error::Workflow(message.to_string())
    }
}

impl From<denizen_runtime::Error> for Error {
    fn from(e: denizen_runtime::Error) -> Self {
        Error::Runtime(e.to_string())
    }
}

impl From<denizen_storage::Error> for Error {
    fn from(e: denizen_storage::Error) -> Self {
        Error::Runtime(e.to_string())
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::Codec(e.to_string())
    }
}
