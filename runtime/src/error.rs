use std::fmt;

/// Result with the runtime's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong between a caller and an object.
///
/// Handlers return this type too: `?` on a storage error works, and [`Error::msg`] or
/// [`Error::custom`] wrap an application error. [`Error::is_retryable`] tells a caller whether
/// sending the same event again is safe.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object's mailbox is full. Back off; retrying at once makes it worse.
    #[error(
        "object {id} in namespace `{namespace}` is overloaded: too many events queued (limit {capacity}); slow down or spread the load over more objects"
    )]
    Overloaded {
        namespace: String,
        id: String,
        capacity: usize,
    },
    /// A socket already has as many messages waiting for its object as it may
    /// (`Options::socket_message_quota`); the transport waits for [`crate::SocketHandle::room`]
    /// before it reads more from that peer.
    #[error(
        "this socket already has {limit} messages waiting for its object; stop reading from the peer until the object catches up"
    )]
    SocketQuota { limit: usize },
    #[error("no namespace `{0}` is registered; register the object type under that name first")]
    UnknownNamespace(String),
    #[error("namespace `{name}` is registered twice; each namespace name must be unique")]
    DuplicateNamespace { name: String },
    #[error(
        "`{name}` is not a valid namespace name: use 1 to 64 characters from A-Z, a-z, 0-9, `-` and `_`"
    )]
    InvalidNamespace { name: String },
    #[error("namespace `{name}` holds another object type than the one asked for")]
    WrongObjectType { name: String },
    #[error("no object {object} exists in namespace `{namespace}`")]
    NoSuchObject { namespace: String, object: String },
    #[error("`{path}` is not a Denizen data directory (no catalog.sqlite); pass --data-dir")]
    NoDataDir { path: String },
    #[error("invalid object id for namespace `{namespace}`: {reason}")]
    InvalidId { namespace: String, reason: String },
    /// The handler panicked; its writes were rolled back and the instance reset.
    #[error(
        "the object's handler panicked: {message}; its writes were rolled back and the object reset"
    )]
    Panicked { message: String },
    /// The handler ran past the per-event deadline (`Options::event_timeout`); its writes were
    /// rolled back and the instance reset.
    #[error(
        "the object's handler ran past its deadline of {after:?} and was stopped; its writes were rolled back and the object reset — move slow work into ctx.spawn"
    )]
    EventTimeout { after: std::time::Duration },
    /// The object could not be activated (its database could not be opened, or `on_start` failed).
    #[error("the object could not start: {message}")]
    StartFailed { message: String },
    /// The object stopped before answering (runtime shutdown, or an internal failure). Safe to retry.
    #[error("the object stopped before answering; the event may not have run — retry it")]
    Unavailable,
    #[error("the runtime is shutting down; retry against the next process")]
    ShuttingDown,
    #[error("committing the object's writes failed: {message}; nothing from this event was sent")]
    CommitFailed { message: String },
    #[error("storage: {0}")]
    Storage(#[from] denizen_storage::Error),
    #[error("websocket attachment is {size} bytes; attachments are limited to {max} bytes")]
    AttachmentTooLarge { size: usize, max: usize },
    #[error("websocket tag rejected: {reason}")]
    InvalidTag { reason: String },
    #[error("the request is not a WebSocket upgrade, or it was already accepted")]
    NotUpgrade,
    #[error("websocket {0} is not open on this object")]
    UnknownSocket(u64),
    #[error("auto-response strings are limited to {max} characters")]
    AutoResponseTooLong { max: usize },
    #[error("could not encode or decode a value: {0}")]
    Codec(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// An application error returned by a handler.
    #[error("{0}")]
    Custom(Box<dyn std::error::Error + Send + Sync + 'static>),
}

impl Error {
    /// An application error with a message.
    pub fn msg(message: impl fmt::Display) -> Self {
        Error::Custom(message.to_string().into())
    }

    /// Wraps any application error.
    pub fn custom(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error::Custom(Box::new(error))
    }

    /// Whether sending the same event again is safe: the event did not run (or the object could
    /// not tell). Overload is deliberately *not* retryable, as in Durable Objects: retrying an
    /// overloaded object adds load.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Unavailable | Error::ShuttingDown)
    }

    /// Whether this is the mailbox-full error (HTTP 503), or a socket's own quota being full.
    pub fn is_overloaded(&self) -> bool {
        matches!(self, Error::Overloaded { .. } | Error::SocketQuota { .. })
    }
}
