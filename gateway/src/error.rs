/// What can stop the gateway.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A [`crate::Options`] value cannot work.
    #[error("gateway option `{field}` {reason}")]
    InvalidOptions {
        /// The option's field.
        field: &'static str,
        /// What is wrong with its value.
        reason: String,
    },
    /// The admin token file cannot be used (no token was configured, so one is kept there).
    #[error("admin token file {}: {reason}", path.display())]
    AdminToken {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong, and what to do.
        reason: String,
    },
}
