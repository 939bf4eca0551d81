/// Result with the workflow [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong creating, driving or controlling a workflow instance.
///
/// Step methods return it too: propagate it with `?` from [`Workflow::run`](super::Workflow::run)
/// and the instance ends `errored` with its message, or match on it (a [`Error::StepFailed`] after
/// exhausted retries, an [`Error::EventTimeout`]) to handle the failure in the workflow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum Error {
    /// No workflow is registered under this name.
    #[error("no workflow named `{0}` is registered; register it with Workflows::add first")]
    UnknownWorkflow(String),
    /// The workflow has no instance with this id.
    #[error("workflow `{workflow}` has no instance `{id}`; create it first")]
    UnknownInstance {
        /// The workflow's name.
        workflow: String,
        /// The instance id asked for.
        id: String,
    },
    /// An instance with this id was created before.
    #[error("workflow `{workflow}` already has an instance `{id}`; pick another id or omit it")]
    AlreadyExists {
        /// The workflow's name.
        workflow: String,
        /// The id already taken.
        id: String,
    },
    /// An instance id with characters or a length ids may not have.
    #[error("invalid instance id: {0}")]
    InvalidId(String),
    /// Params (or an event) that do not decode as the workflow's types.
    #[error("the params do not fit this workflow: {0}")]
    InvalidParams(String),
    /// An operator action the instance's status does not allow.
    #[error("cannot {action} an instance that is {status}")]
    InvalidState {
        /// The action asked for.
        action: String,
        /// The instance's status.
        status: String,
    },
    /// A `run` step failed its last attempt, or failed with a non-retryable error.
    #[error("step `{step}` failed: {message}")]
    StepFailed {
        /// The step's name.
        step: String,
        /// Its last error.
        message: String,
    },
    /// A `wait_for_event` step reached its deadline with no event.
    #[error("step `{step}` timed out waiting for an event of type `{event_type}`")]
    EventTimeout {
        /// The step's name.
        step: String,
        /// The event type it waited for.
        event_type: String,
    },
    #[error(
        "the workflow does not match its journal at step {index}: the journal has {journaled}, \
         the code now runs {found}; keep step names and order stable while instances run, \
         or restart the instance"
    )]
    /// A replay reached a step other than the one its journal recorded at that place.
    NonDeterministic {
        /// The step's place in the journal.
        index: u32,
        /// The step the journal has there.
        journaled: String,
        /// The step the code runs there now.
        found: String,
    },
    /// A value could not be encoded or decoded as JSON.
    #[error("could not encode or decode a value: {0}")]
    Codec(String),
    /// The runtime failed (storage, a stopped object, a deadline).
    #[error("runtime: {0}")]
    Runtime(String),
    /// The workflow's own error ([`Error::msg`]).
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
