use std::path::PathBuf;

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong with an object's storage. Each message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A KV key longer than [`crate::MAX_KEY_SIZE`] bytes.
    #[error("key is {size} bytes; keys are limited to {max} bytes — use a shorter key or hash it")]
    KeyTooLarge {
        /// The key's length.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A KV value larger than [`crate::MAX_VALUE_SIZE`] bytes once encoded.
    #[error(
        "value is {size} bytes encoded; values are limited to {max} bytes — split it over several keys or rows"
    )]
    ValueTooLarge {
        /// The encoded value's length.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// More keys in one batch than [`crate::MAX_BATCH_KEYS`].
    #[error("{size} keys in one batch; batches are limited to {max} keys — split the batch")]
    BatchTooLarge {
        /// The batch's size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A transaction statement in user SQL: transactions belong to the runtime.
    #[error(
        "`{statement}` is not allowed in exec: the runtime wraps every event in a transaction; use storage.transaction(|tx| ..) for a nested one"
    )]
    TransactionStatement {
        /// The statement refused (`BEGIN`, `COMMIT`, `SAVEPOINT` …).
        statement: String,
    },
    /// User SQL touched one of Denizen's own `_denizen*` tables.
    #[error("table `{name}` is reserved for Denizen's own use; choose another name")]
    ReservedTable {
        /// The table.
        name: String,
    },
    /// SQLite refused or failed a statement.
    #[error("SQL error: {message}")]
    Sql {
        /// SQLite's message.
        message: String,
    },
    /// The object type's schema could not be applied.
    #[error("the object type's SCHEMA failed: {message} — fix the SQL in SCHEMA")]
    Schema {
        /// What went wrong.
        message: String,
    },
    /// `Cursor::one` on a result without exactly one row.
    #[error("expected exactly one row, got {rows}; use first() or all() for other shapes")]
    NotOneRow {
        /// How many rows there were.
        rows: usize,
    },
    /// Stored data does not fit the type asked for.
    #[error("could not decode the stored data into the requested type: {message}")]
    Decode {
        /// The decoder's message.
        message: String,
    },
    /// A value could not be encoded.
    #[error("could not encode the value: {message}")]
    Encode {
        /// The encoder's message.
        message: String,
    },
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The data directory is held by another process ([`crate::DataDirLock`]).
    #[error(
        "{path} is held by another process (a running server): ask that server, or stop it first"
    )]
    Held {
        /// The data directory.
        path: PathBuf,
    },
    /// A statement ran past its time budget (or the event's deadline) and was interrupted.
    #[error(
        "the query ran past its time budget of {budget:?} and was stopped — narrow it (WHERE, LIMIT, an index), or do the work in smaller events"
    )]
    TimeBudget {
        /// The budget it had.
        budget: std::time::Duration,
    },
    /// A limited query's result passed its row cap.
    #[error("the result has more than {limit} rows — add a LIMIT or narrow the query")]
    TooManyRows {
        /// The cap.
        limit: usize,
    },
    /// A limited query's result passed its byte cap.
    #[error(
        "the result is larger than {limit} bytes — select fewer columns or rows (LIMIT), or page through it"
    )]
    ResultTooLarge {
        /// The cap.
        limit: usize,
    },
    /// Any other failure inside SQLite.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

impl serde::de::Error for Error {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        Error::Decode {
            message: msg.to_string(),
        }
    }
}
