use std::path::PathBuf;

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong with an object's storage. Each message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("key is {size} bytes; keys are limited to {max} bytes — use a shorter key or hash it")]
    KeyTooLarge { size: usize, max: usize },
    #[error(
        "value is {size} bytes encoded; values are limited to {max} bytes — split it over several keys or rows"
    )]
    ValueTooLarge { size: usize, max: usize },
    #[error("{size} keys in one batch; batches are limited to {max} keys — split the batch")]
    BatchTooLarge { size: usize, max: usize },
    #[error(
        "`{statement}` is not allowed in exec: the runtime wraps every event in a transaction; use storage.transaction(|tx| ..) for a nested one"
    )]
    TransactionStatement { statement: String },
    #[error("table `{name}` is reserved for Denizen's own use; choose another name")]
    ReservedTable { name: String },
    #[error("SQL error: {message}")]
    Sql { message: String },
    #[error("the object type's SCHEMA failed: {message} — fix the SQL in SCHEMA")]
    Schema { message: String },
    #[error("expected exactly one row, got {rows}; use first() or all() for other shapes")]
    NotOneRow { rows: usize },
    #[error("could not decode the stored data into the requested type: {message}")]
    Decode { message: String },
    #[error("could not encode the value: {message}")]
    Encode { message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is held by another process (a running server): ask that server, or stop it first"
    )]
    Held { path: PathBuf },
    #[error(
        "the query ran past its time budget of {budget:?} and was stopped — narrow it (WHERE, LIMIT, an index), or do the work in smaller events"
    )]
    TimeBudget { budget: std::time::Duration },
    #[error("the result has more than {limit} rows — add a LIMIT or narrow the query")]
    TooManyRows { limit: usize },
    #[error(
        "the result is larger than {limit} bytes — select fewer columns or rows (LIMIT), or page through it"
    )]
    ResultTooLarge { limit: usize },
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
