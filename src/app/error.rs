//! [`Error`]: what stops an app from starting, or a command from running.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Why an app could not start or a command failed. Each message says what to change.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting has a value no server can run with.
    #[error("{0}")]
    Config(String),
    /// The configuration file could not be read.
    #[error("reading the configuration file {path}: {source}")]
    ConfigFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The configuration file is not valid TOML, or has an unknown key or a bad value.
    #[error("in the configuration file {path}: {message}")]
    ConfigSyntax {
        /// The file.
        path: PathBuf,
        /// What is wrong, and where.
        message: String,
    },
    /// The listening address is taken or not ours.
    #[error(
        "listening on {addr}: {source} (is another server using it? choose another with --listen)"
    )]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The async runtime could not start (out of threads or memory).
    #[error("starting the async runtime: {0}")]
    AsyncRuntime(std::io::Error),
    /// The data directory could not be opened (held by another server, unreadable, ...).
    #[error("opening the data directory {dir}: {source}")]
    DataDir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: denizen_runtime::Error,
    },
    /// From the runtime (an object's database, an unknown namespace, ...).
    #[error(transparent)]
    Runtime(#[from] denizen_runtime::Error),
    /// From an object's database (a query run on its file).
    #[error(transparent)]
    Storage(#[from] denizen_storage::Error),
    /// From the gateway (its settings, the admin token file).
    #[error(transparent)]
    Gateway(#[from] denizen_gateway::Error),
    /// From the workflows.
    #[error(transparent)]
    Workflow(#[from] denizen_agents::workflow::Error),
    /// No server answered at the address a command was sent to.
    #[error("no Denizen server answers at {url}: {message}")]
    Unreachable {
        /// The server's address.
        url: String,
        /// What the connection attempt said.
        message: String,
    },
    /// The server answered a command with an error (bad SQL, unknown object, wrong token).
    #[error("{0}")]
    Refused(String),
    /// Writing a command's output failed.
    #[error("writing the output: {0}")]
    Output(#[from] std::io::Error),
}
