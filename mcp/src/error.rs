//! The crate's error type.

/// What can go wrong talking to MCP servers or persisting their configuration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The URL given for a server does not parse or is not http(s).
    #[error("invalid MCP server URL {url:?}: {reason}; give an absolute http:// or https:// URL")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// Why it was refused.
        reason: String,
    },
    /// A server id that cannot prefix tool names.
    #[error("invalid MCP server id {0:?}: use 1-64 characters of A-Z, a-z, 0-9 and '-'")]
    InvalidServerId(String),
    /// No server with this id is registered with the manager.
    #[error("no MCP server with id {0:?}; list the servers to see the registered ids")]
    UnknownServer(String),
    /// A server id is already taken.
    #[error(
        "an MCP server with id {0:?} is already registered; disconnect it first or pick another id"
    )]
    DuplicateServer(String),
    /// A namespaced tool name does not name a server and a tool.
    #[error("no tool {0:?}; tool names are `<server id>__<tool name>` as returned by `tools()`")]
    UnknownTool(String),
    /// The server is registered but not connected (yet or any more).
    #[error(
        "MCP server {id:?} is not ready ({state}); wait for it to reconnect or check its error"
    )]
    NotReady {
        /// The server's id.
        id: String,
        /// Its state, with its last error when it has one.
        state: String,
    },
    /// An HTTP-level failure while connecting, with the status when there was one.
    #[error("HTTP error talking to {url}: {message}")]
    Http {
        /// The server's URL.
        url: String,
        /// The HTTP status, when a response came.
        status: Option<u16>,
        /// What failed.
        message: String,
    },
    /// No transport (Streamable HTTP in either era, legacy SSE) could reach the server.
    #[error("could not connect to MCP server {url}: {message}")]
    Connect {
        /// The server's URL.
        url: String,
        /// What each transport tried answered.
        message: String,
    },
    /// The server wants OAuth and there is no usable token (yet).
    #[error(
        "MCP server {url} requires authorization; give the server OAuth options (a redirect URI) and send the user to the authorization URL in its status"
    )]
    AuthorizationRequired {
        /// The server's URL.
        url: String,
        /// The `WWW-Authenticate` challenge, when the server sent one.
        challenge: Option<String>,
    },
    /// The OAuth flow failed.
    #[error("OAuth for MCP server {server:?} failed: {message}")]
    Authorization {
        /// The server's id.
        server: String,
        /// What failed.
        message: String,
    },
    /// The server answered a request with a JSON-RPC error.
    #[error("MCP server {server:?} answered with error {code}: {message}")]
    Protocol {
        /// The server's id.
        server: String,
        /// The JSON-RPC error code.
        code: i32,
        /// The server's error message.
        message: String,
    },
    /// The connection broke while a request was in flight; the manager reconnects in the background.
    #[error(
        "connection to MCP server {server:?} was lost during the request ({message}); it is being reconnected, retry the call"
    )]
    ConnectionLost {
        /// The server's id.
        server: String,
        /// The transport's error.
        message: String,
    },
    /// The request did not complete in time (a cancellation was sent to the server).
    #[error("request to MCP server {server:?} timed out after {seconds:.1}s")]
    Timeout {
        /// The server's id.
        server: String,
        /// The timeout that passed.
        seconds: f64,
    },
    /// The caller cancelled the request (a cancellation was sent to the server).
    #[error("request to MCP server {server:?} was cancelled")]
    Cancelled {
        /// The server's id.
        server: String,
    },
    /// The agent's MCP client is used before the agents layer started it.
    #[error(
        "the agent's MCP client has not started: return it from `Agent::mcp` so the agents layer starts it before `on_start`"
    )]
    NotStarted,
    /// Reading or writing the object's SQLite failed.
    #[error("MCP persistence failed: {0}")]
    Storage(#[from] denizen_storage::Error),
}

/// So handlers of objects and agents can use `?` on MCP calls.
impl From<Error> for denizen_runtime::Error {
    fn from(e: Error) -> Self {
        denizen_runtime::Error::custom(e)
    }
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
