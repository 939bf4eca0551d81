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
        /// The object's namespace.
        namespace: String,
        /// The object's id, in hex.
        id: String,
        /// The mailbox's bound (`Options::mailbox_capacity`).
        capacity: usize,
    },
    /// A socket already has as many messages waiting for its object as it may
    /// (`Options::socket_message_quota`); the transport waits for [`crate::SocketHandle::room`]
    /// before it reads more from that peer.
    #[error(
        "this socket already has {limit} messages waiting for its object; stop reading from the peer until the object catches up"
    )]
    SocketQuota {
        /// The quota.
        limit: usize,
    },
    /// No object type is registered under this namespace.
    #[error("no namespace `{0}` is registered; register the object type under that name first")]
    UnknownNamespace(String),
    /// Two object types were registered under one namespace.
    #[error("namespace `{name}` is registered twice; each namespace name must be unique")]
    DuplicateNamespace {
        /// The namespace.
        name: String,
    },
    /// A namespace name with characters or a length namespaces may not have.
    #[error(
        "`{name}` is not a valid namespace name: use 1 to 64 characters from A-Z, a-z, 0-9, `-` and `_`"
    )]
    InvalidNamespace {
        /// The name given.
        name: String,
    },
    /// `Runtime::namespace::<O>` with another type than the one registered.
    #[error("namespace `{name}` holds another object type than the one asked for")]
    WrongObjectType {
        /// The namespace.
        name: String,
    },
    /// An operator's tool asked for an object that was never created.
    #[error("no object {object} exists in namespace `{namespace}`")]
    NoSuchObject {
        /// The namespace.
        namespace: String,
        /// How it was named (`named …` or `with id …`).
        object: String,
    },
    /// An operator's tool was pointed at a directory without a catalog.
    #[error("`{path}` is not a Denizen data directory (no catalog.sqlite); pass --data-dir")]
    NoDataDir {
        /// The directory.
        path: String,
    },
    /// An id not minted for this namespace, or not an id at all.
    #[error("invalid object id for namespace `{namespace}`: {reason}")]
    InvalidId {
        /// The namespace.
        namespace: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The handler panicked; its writes were rolled back and the instance reset.
    #[error(
        "the object's handler panicked: {message}; its writes were rolled back and the object reset"
    )]
    Panicked {
        /// The panic's message.
        message: String,
    },
    /// The handler ran past the per-event deadline (`Options::event_timeout`); its writes were
    /// rolled back and the instance reset.
    #[error(
        "the object's handler ran past its deadline of {after:?} and was stopped; its writes were rolled back and the object reset — move slow work into ctx.spawn"
    )]
    EventTimeout {
        /// The deadline it had.
        after: std::time::Duration,
    },
    /// The object could not be activated (its database could not be opened, or `on_start` failed).
    #[error("the object could not start: {message}")]
    StartFailed {
        /// What went wrong.
        message: String,
    },
    /// The object stopped before answering (runtime shutdown, or an internal failure). Safe to retry.
    #[error("the object stopped before answering; the event may not have run — retry it")]
    Unavailable,
    /// The runtime is stopping and takes no new events. Safe to retry elsewhere or later.
    #[error("the runtime is shutting down; retry against the next process")]
    ShuttingDown,
    /// The event's writes could not be committed; nothing it revealed was sent.
    #[error("committing the object's writes failed: {message}; nothing from this event was sent")]
    CommitFailed {
        /// What went wrong.
        message: String,
    },
    /// A storage operation failed (bad SQL, a value too large, …).
    #[error("storage: {0}")]
    Storage(#[from] denizen_storage::Error),
    /// A socket attachment over [`crate::MAX_ATTACHMENT_SIZE`].
    #[error("websocket attachment is {size} bytes; attachments are limited to {max} bytes")]
    AttachmentTooLarge {
        /// The encoded attachment's size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Too many socket tags, or one empty or too long.
    #[error("websocket tag rejected: {reason}")]
    InvalidTag {
        /// What is wrong.
        reason: String,
    },
    /// `accept_websocket` on a request that offers no socket.
    #[error("the request is not a WebSocket upgrade, or it was already accepted")]
    NotUpgrade,
    /// A socket the object does not have (closed, or another object's).
    #[error("websocket {0} is not open on this object")]
    UnknownSocket(u64),
    /// An auto-response string over [`crate::MAX_AUTO_RESPONSE_LENGTH`].
    #[error("auto-response strings are limited to {max} characters")]
    AutoResponseTooLong {
        /// The limit.
        max: usize,
    },
    /// A value could not be encoded or decoded (an attachment, a message).
    #[error("could not encode or decode a value: {0}")]
    Codec(String),
    /// A system call failed.
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
