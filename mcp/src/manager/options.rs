//! What the application gives a manager and its servers, and the snapshots it gets back.

use std::{sync::Arc, time::Duration};

use denizen_runtime::retry::RetryPolicy;
use rmcp::model::Tool;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    auth::OAuthOptions,
    client::{ElicitationHandler, Progress, Route, TransportPreference},
};

/// What the manager remembers about a server (and persists with [`crate::store`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerConfig {
    /// Short id, `[A-Za-z0-9-]`, unique per manager; the prefix of the server's tool names.
    pub id: String,
    /// The MCP endpoint (`…/mcp`) or legacy SSE URL (`…/sse`).
    pub url: String,
    /// Which transport to use.
    pub transport: TransportPreference,
    /// The transport and era that worked last time, tried first on the next connect.
    pub route: Option<Route>,
    /// Sent as `Authorization: Bearer` on every request, the SSE GET included.
    pub bearer_token: Option<String>,
    /// OAuth 2.1 settings; without them a server that answers 401 stays failed.
    #[serde(default)]
    pub oauth: Option<OAuthOptions>,
}

impl ServerConfig {
    /// A server reached by URL with automatic transport selection.
    pub fn new(id: impl Into<String>, url: impl Into<String>) -> Self {
        ServerConfig {
            id: id.into(),
            url: url.into(),
            transport: TransportPreference::Auto,
            route: None,
            bearer_token: None,
            oauth: None,
        }
    }
}

/// Where a server's connection stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServerState {
    /// Waiting for the user to authorize at [`ServerStatus::auth_url`].
    Authenticating,
    /// Dialling (a transport, an era, the lifecycle handshake).
    Connecting,
    /// Connected; fetching the tool, prompt and resource lists.
    Discovering,
    /// Connected with its lists: calls go through.
    Ready,
    /// The last attempt failed; another follows after a backoff.
    Failed,
    /// Disconnected by the application; no more attempts.
    Closed,
}

impl std::fmt::Display for ServerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ServerState::Authenticating => "authenticating",
            ServerState::Connecting => "connecting",
            ServerState::Discovering => "discovering",
            ServerState::Ready => "ready",
            ServerState::Failed => "failed",
            ServerState::Closed => "closed",
        })
    }
}

/// A snapshot of one server for listing.
#[derive(Clone, Debug, Serialize)]
pub struct ServerStatus {
    /// The server's id.
    pub id: String,
    /// Its URL.
    pub url: String,
    /// Where its connection stands.
    pub state: ServerState,
    /// The last connection error, kept while the server is not ready.
    pub error: Option<String>,
    /// The transport and era of the last connection.
    pub route: Option<Route>,
    /// The negotiated protocol version.
    pub protocol_version: Option<String>,
    /// The name the server gave.
    pub server_name: Option<String>,
    /// The server's instructions for the model, if it gave any.
    pub instructions: Option<String>,
    /// How many times the server has been (re)connected.
    pub connections: u64,
    /// While `authenticating`: where to send the user.
    pub auth_url: Option<String>,
}

/// A tool of a server, under a name unique across the manager's servers.
#[derive(Clone, Debug, Serialize)]
pub struct NamespacedTool {
    /// `<server id>__<tool name>`.
    pub name: String,
    /// The id of the server that has it.
    pub server_id: String,
    /// The tool as the server describes it, under its own name.
    pub tool: Tool,
}

/// Tunables of a manager.
#[derive(Clone)]
pub struct ManagerOptions {
    /// The client name sent in `initialize` and dynamic registration.
    pub client_name: String,
    /// The client version sent in `initialize`.
    pub client_version: String,
    /// Bound on one connection attempt (all fallbacks included).
    pub connect_timeout: Duration,
    /// Default bound on one request.
    pub request_timeout: Duration,
    /// How a lost server is re-dialled: by default 100 ms doubling up to 30 s, ±25 %, forever.
    pub reconnect: RetryPolicy,
    /// Let OAuth metadata discovery reach loopback and private addresses (rmcp refuses them by
    /// default against SSRF). For servers on a private network, and tests.
    pub allow_private_oauth_metadata: bool,
    /// Answers servers' form elicitations; `None` declares no elicitation support.
    pub elicitation: Option<Arc<dyn ElicitationHandler>>,
}

impl std::fmt::Debug for ManagerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagerOptions")
            .field("client_name", &self.client_name)
            .field("client_version", &self.client_version)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("reconnect", &self.reconnect)
            .field(
                "allow_private_oauth_metadata",
                &self.allow_private_oauth_metadata,
            )
            .field("elicitation", &self.elicitation.is_some())
            .finish()
    }
}

impl Default for ManagerOptions {
    fn default() -> Self {
        ManagerOptions {
            client_name: "denizen".into(),
            client_version: env!("CARGO_PKG_VERSION").into(),
            connect_timeout: Duration::from_secs(15),
            request_timeout: Duration::from_secs(60),
            reconnect: RetryPolicy::exponential(Duration::from_millis(100), 2.0)
                .with_max_delay(Duration::from_secs(30))
                .with_jitter(0.25),
            allow_private_oauth_metadata: false,
            elicitation: None,
        }
    }
}

/// Per-request options.
#[derive(Debug, Default)]
pub struct CallOptions {
    /// Overrides [`ManagerOptions::request_timeout`].
    pub timeout: Option<Duration>,
    /// Receives the server's progress notifications for this request.
    pub progress: Option<mpsc::UnboundedSender<Progress>>,
    /// Cancelling it sends `notifications/cancelled` and ends the call with
    /// [`crate::Error::Cancelled`].
    pub cancel: Option<CancellationToken>,
}
