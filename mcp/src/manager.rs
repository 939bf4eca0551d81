//! [`McpClientManager`]: the MCP servers of one object, their connections, their tools.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use denizen_runtime::retry::RetryPolicy;
use rmcp::{
    RoleClient,
    model::{
        CallToolRequest, CallToolRequestParams, CallToolResult, CancelledNotification,
        CancelledNotificationParam, ClientRequest, ElicitResult, ElicitationAction,
        GetPromptRequest, GetPromptRequestParams, GetPromptResult, InputRequest, InputResponses,
        JsonObject, Prompt, ReadResourceRequest, ReadResourceRequestParams, ReadResourceResult,
        Resource, ResourceTemplate, ServerNotification, ServerResult, SubscriptionFilterBuilder,
        Tool,
    },
    service::{Peer, PeerRequestOptions, ServiceError},
};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::{
    Error, Result,
    auth::{self, OAuthCell, OAuthOptions, OAuthRecord},
    client::{
        self, Connected, Dial, ElicitationHandler, Era, Progress, ProgressRoutes, Route,
        ServerEvent, TransportPreference,
    },
};

/// `input_required` rounds of one request before it fails.
const MAX_INPUT_ROUNDS: usize = 8;

/// Re-authorizations for more scope in a row before a request fails for good.
const MAX_STEP_UPS: u32 = 2;

/// Separator between the server id and the tool name in namespaced tool names.
pub const TOOL_SEPARATOR: &str = "__";

/// What the manager remembers about a server (and persists with [`crate::store`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerConfig {
    /// Short id, `[A-Za-z0-9-]`, unique per manager; the prefix of the server's tool names.
    pub id: String,
    /// The MCP endpoint (`…/mcp`) or legacy SSE URL (`…/sse`).
    pub url: String,
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
    Connecting,
    Discovering,
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
    pub id: String,
    pub url: String,
    pub state: ServerState,
    /// The last connection error, kept while the server is not ready.
    pub error: Option<String>,
    pub route: Option<Route>,
    /// The negotiated protocol version.
    pub protocol_version: Option<String>,
    pub server_name: Option<String>,
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
    pub server_id: String,
    pub tool: Tool,
}

/// Tunables of a manager.
#[derive(Clone)]
pub struct ManagerOptions {
    pub client_name: String,
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
#[derive(Default)]
pub struct CallOptions {
    /// Overrides [`ManagerOptions::request_timeout`].
    pub timeout: Option<Duration>,
    /// Receives the server's progress notifications for this request.
    pub progress: Option<mpsc::UnboundedSender<Progress>>,
    /// Cancelling it sends `notifications/cancelled` and ends the call with [`Error::Cancelled`].
    pub cancel: Option<CancellationToken>,
}

#[derive(Default)]
struct Lists {
    tools: Vec<Tool>,
    prompts: Vec<Prompt>,
    resources: Vec<Resource>,
    templates: Vec<ResourceTemplate>,
}

struct Live {
    state: ServerState,
    error: Option<String>,
    peer: Option<Peer<RoleClient>>,
    progress: Option<Arc<Mutex<ProgressRoutes>>>,
    protocol_version: Option<String>,
    server_name: Option<String>,
    instructions: Option<String>,
    connections: u64,
    lists: Lists,
    auth_url: Option<String>,
    capabilities: Option<serde_json::Value>,
    /// The connection's requests carry the OAuth token (see [`Connected::oauth`]).
    oauth_attached: bool,
}

struct Server {
    config: Mutex<ServerConfig>,
    live: Mutex<Live>,
    /// Ends the supervisor for good.
    shutdown: CancellationToken,
    /// Drops the current connection and dials again now (skipping the backoff).
    redial: Notify,
    oauth: OAuthCell,
    /// The authorization in progress (between the URL handed out and the callback).
    session: Mutex<Option<rmcp::transport::AuthorizationSession>>,
    /// Completed authorizations, counted: what waiters for a callback watch. A watch, not a
    /// `Notify`, so a completion nobody waited for leaves no stale wake-up behind.
    authorized: watch::Sender<u64>,
    /// One step-up re-authorization at a time; requests refused together share it.
    step_up: tokio::sync::Mutex<()>,
    /// Step-up authorizations since the last request that succeeded.
    step_ups: std::sync::atomic::AtomicU32,
}

struct Inner {
    options: ManagerOptions,
    http: reqwest::Client,
    servers: Mutex<BTreeMap<String, Arc<Server>>>,
    /// Bumped on every state or list change, for waiters and for pushing server lists to clients.
    version: watch::Sender<u64>,
    /// Parent of every server's shutdown token: cancelled when the last handle is dropped.
    closed: CancellationToken,
}

/// Shared by the handles only (not by the background tasks): when the object that owns the
/// manager goes away (hibernation, eviction), its connections go with it.
struct Owner(CancellationToken);

impl Drop for Owner {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// The MCP servers of one object: connects them, keeps them connected and their lists current,
/// and routes calls by namespaced tool name. Cheap to clone (one shared state).
#[derive(Clone)]
pub struct McpClientManager {
    inner: Arc<Inner>,
    _owner: Arc<Owner>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these short locks leaves plain data behind; keep serving.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

impl McpClientManager {
    pub fn new(options: ManagerOptions) -> Self {
        let (version, _) = watch::channel(0);
        let closed = CancellationToken::new();
        McpClientManager {
            inner: Arc::new(Inner {
                options,
                http: reqwest::Client::new(),
                servers: Mutex::new(BTreeMap::new()),
                version,
                closed: closed.clone(),
            }),
            _owner: Arc::new(Owner(closed)),
        }
    }

    /// Registers a server and starts connecting it in the background. Returns at once; use
    /// [`McpClientManager::wait_ready`] to wait for its tools. Persist with [`crate::store`].
    pub fn add_server(&self, config: ServerConfig) -> Result<()> {
        self.add_server_with(config, OAuthRecord::default())
    }

    /// Like [`McpClientManager::add_server`], with OAuth credentials saved earlier.
    pub fn add_server_with(&self, config: ServerConfig, oauth: OAuthRecord) -> Result<()> {
        if !valid_id(&config.id) {
            return Err(Error::InvalidServerId(config.id));
        }
        match url::Url::parse(&config.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            Ok(u) => {
                return Err(Error::InvalidUrl {
                    url: config.url.clone(),
                    reason: format!("scheme {:?} is not http or https", u.scheme()),
                });
            }
            Err(e) => {
                return Err(Error::InvalidUrl {
                    url: config.url.clone(),
                    reason: e.to_string(),
                });
            }
        }
        let server = {
            let mut servers = lock(&self.inner.servers);
            if servers.contains_key(&config.id) {
                return Err(Error::DuplicateServer(config.id));
            }
            let server = Arc::new(Server {
                config: Mutex::new(config.clone()),
                live: Mutex::new(Live {
                    state: ServerState::Connecting,
                    error: None,
                    peer: None,
                    progress: None,
                    protocol_version: None,
                    server_name: None,
                    instructions: None,
                    connections: 0,
                    lists: Lists::default(),
                    auth_url: None,
                    capabilities: None,
                    oauth_attached: false,
                }),
                shutdown: self.inner.closed.child_token(),
                redial: Notify::new(),
                oauth: OAuthCell {
                    record: Arc::new(Mutex::new(oauth)),
                    changed: self.inner.version.clone(),
                },
                session: Mutex::new(None),
                authorized: watch::channel(0).0,
                step_up: tokio::sync::Mutex::new(()),
                step_ups: std::sync::atomic::AtomicU32::new(0),
            });
            servers.insert(config.id.clone(), server.clone());
            server
        };
        let inner = self.inner.clone();
        let span = info_span!("mcp_server", id = %config.id, url = %config.url);
        tokio::spawn(supervise(inner, server).instrument(span));
        self.bump();
        Ok(())
    }

    /// Registers a server and waits until it is ready (or `timeout` passes).
    pub async fn connect(&self, config: ServerConfig, timeout: Duration) -> Result<ServerStatus> {
        let id = config.id.clone();
        self.add_server(config)?;
        self.wait_ready(&id, timeout).await
    }

    /// Registers every saved server (see [`crate::store::load_servers`]); they connect in the
    /// background with their remembered routes, without asking anyone.
    pub fn restore(
        &self,
        configs: Vec<ServerConfig>,
        mut oauth: std::collections::HashMap<String, OAuthRecord>,
    ) -> Result<()> {
        for config in configs {
            let id = config.id.clone();
            let record = oauth.remove(&id).unwrap_or_default();
            match self.add_server_with(config, record) {
                Ok(()) | Err(Error::DuplicateServer(_)) => {}
                Err(e) => warn!(id = %id, error = %e, "not restoring an invalid MCP server"),
            }
        }
        Ok(())
    }

    /// Stops a server's connection and forgets it. Returns its config (to delete from storage).
    pub async fn disconnect(&self, id: &str) -> Result<ServerConfig> {
        let server = lock(&self.inner.servers)
            .remove(id)
            .ok_or_else(|| Error::UnknownServer(id.to_owned()))?;
        server.shutdown.cancel();
        let config = lock(&server.config).clone();
        {
            let mut live = lock(&server.live);
            live.state = ServerState::Closed;
            live.peer = None;
        }
        self.bump();
        Ok(config)
    }

    /// Disconnects every server (on object shutdown).
    pub async fn close(&self) {
        let ids: Vec<String> = lock(&self.inner.servers).keys().cloned().collect();
        for id in ids {
            let _ = self.disconnect(&id).await;
        }
    }

    /// The current configs, routes included (what [`crate::store::save_server`] persists).
    pub fn configs(&self) -> Vec<ServerConfig> {
        lock(&self.inner.servers)
            .values()
            .map(|s| lock(&s.config).clone())
            .collect()
    }

    /// Every server's OAuth record (registration, tokens, pending PKCE states), to persist.
    pub fn oauth_records(&self) -> Vec<(String, OAuthRecord)> {
        lock(&self.inner.servers)
            .iter()
            .map(|(id, s)| (id.clone(), lock(&s.oauth.record).clone()))
            .collect()
    }

    /// Finishes an authorization with the URL the user was redirected to (the object's callback
    /// route): checks `state` (and `iss`), exchanges the code with PKCE and the resource
    /// indicator, stores the tokens and reconnects the server.
    pub async fn complete_authorization(&self, id: &str, callback_url: &str) -> Result<()> {
        let server = self.get(id)?;
        let session = lock(&server.session).take();
        let result = match session {
            Some(session) => match session.handle_callback_url(callback_url).await {
                Ok(_) => Ok(()),
                Err(e) => {
                    // Keep the session: the user may retry with a correct callback.
                    *lock(&server.session) = Some(session);
                    Err(e.to_string())
                }
            },
            // The object restarted since the URL was handed out: rebuild from storage.
            None => {
                let url = lock(&server.config).url.clone();
                auth::resume(
                    &url,
                    callback_url,
                    &server.oauth,
                    self.inner.options.allow_private_oauth_metadata,
                )
                .await
            }
        };
        result.map_err(|message| Error::Authorization {
            server: id.to_owned(),
            message,
        })?;
        *lock(&server.session) = None;
        let redial = {
            let mut live = lock(&server.live);
            live.auth_url = None;
            // A step-up on a live connection: its requests read the new token, so it serves on.
            // Without a token attached it must be dialled again to carry one.
            let stepped_up = live.state == ServerState::Authenticating && live.peer.is_some();
            if stepped_up && live.oauth_attached {
                live.state = ServerState::Ready;
                live.error = None;
            }
            stepped_up && !live.oauth_attached
        };
        if redial {
            server.redial.notify_one();
        }
        server.authorized.send_modify(|n| *n += 1);
        self.bump();
        Ok(())
    }

    /// The server whose authorization in progress issued the `state` of this callback URL, for
    /// routing a callback request to [`McpClientManager::complete_authorization`].
    pub fn server_for_callback(&self, callback_url: &str) -> Option<String> {
        let state = url::Url::parse(callback_url)
            .ok()?
            .query_pairs()
            .find(|(k, _)| k == "state")
            .map(|(_, v)| v.into_owned())?;
        lock(&self.inner.servers)
            .iter()
            .find(|(_, s)| lock(&s.oauth.record).pending.contains_key(&state))
            .map(|(id, _)| id.clone())
    }

    /// The `mcp` object of the Agents SDK's `cf_agent_mcp_servers` frame: every server with its
    /// state, and the tools, prompts and resources of ready servers tagged with `serverId`.
    pub fn agents_state(&self) -> serde_json::Value {
        use serde_json::{Map, Value, json};
        let servers: Vec<(String, Arc<Server>)> = lock(&self.inner.servers)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let tag = |value: Value, id: &str| match value {
            Value::Object(mut map) => {
                map.insert("serverId".into(), Value::String(id.to_owned()));
                Value::Object(map)
            }
            other => other,
        };
        let (mut by_id, mut tools, mut prompts, mut resources) =
            (Map::new(), Vec::new(), Vec::new(), Vec::new());
        for (id, server) in servers {
            let url = lock(&server.config).url.clone();
            let live = lock(&server.live);
            let state = match live.state {
                ServerState::Authenticating => "authenticating",
                ServerState::Connecting => "connecting",
                ServerState::Discovering => "discovering",
                ServerState::Ready => "ready",
                ServerState::Failed => "failed",
                ServerState::Closed => "not-connected",
            };
            // The Agents SDK truncates error strings to 500 characters.
            let error = live
                .error
                .as_ref()
                .map(|e| e.chars().take(500).collect::<String>());
            by_id.insert(
                id.clone(),
                json!({
                    "auth_url": live.auth_url,
                    "capabilities": live.capabilities,
                    "error": error,
                    "instructions": live.instructions,
                    "name": live.server_name.clone().unwrap_or_else(|| id.clone()),
                    "server_url": url,
                    "state": state,
                }),
            );
            if live.state != ServerState::Ready {
                continue;
            }
            for t in &live.lists.tools {
                tools.push(tag(serde_json::to_value(t).unwrap_or(Value::Null), &id));
            }
            for p in &live.lists.prompts {
                prompts.push(tag(serde_json::to_value(p).unwrap_or(Value::Null), &id));
            }
            for r in &live.lists.resources {
                resources.push(tag(serde_json::to_value(r).unwrap_or(Value::Null), &id));
            }
        }
        json!({ "prompts": prompts, "resources": resources, "servers": by_id, "tools": tools })
    }

    /// Every server with its state.
    pub fn servers(&self) -> Vec<ServerStatus> {
        lock(&self.inner.servers)
            .values()
            .map(|s| status(s))
            .collect()
    }

    /// One server's state.
    pub fn server(&self, id: &str) -> Result<ServerStatus> {
        self.get(id).map(|s| status(&s))
    }

    /// A receiver that changes whenever a server's state or lists change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.version.subscribe()
    }

    /// Waits until the server is ready; fails with its last error after `timeout`.
    pub async fn wait_ready(&self, id: &str, timeout: Duration) -> Result<ServerStatus> {
        let settled = self
            .wait_for_state(id, timeout, |s| {
                matches!(s, ServerState::Ready | ServerState::Closed)
            })
            .await?;
        match settled {
            Some(s) if s.state == ServerState::Ready => Ok(s),
            Some(s) => Err(Error::NotReady {
                id: id.to_owned(),
                state: s.state.to_string(),
            }),
            None => {
                let s = self.server(id)?;
                Err(Error::NotReady {
                    id: id.to_owned(),
                    state: match s.error {
                        Some(e) => format!("{}: {e}", s.state),
                        None => s.state.to_string(),
                    },
                })
            }
        }
    }

    /// Waits until the server's state satisfies `done`; `None` when `timeout` passes first.
    pub(crate) async fn wait_for_state(
        &self,
        id: &str,
        timeout: Duration,
        done: impl Fn(ServerState) -> bool,
    ) -> Result<Option<ServerStatus>> {
        let mut changes = self.subscribe();
        let wait = async {
            loop {
                let s = self.server(id)?;
                if done(s.state) {
                    return Ok(s);
                }
                if changes.changed().await.is_err() {
                    return Err(Error::UnknownServer(id.to_owned()));
                }
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(r) => r.map(Some),
            Err(_) => Ok(None),
        }
    }

    /// Drops the server's connection and dials again at once.
    pub fn reconnect(&self, id: &str) -> Result<()> {
        self.get(id)?.redial.notify_one();
        Ok(())
    }

    /// Every ready server's tools, namespaced `<server id>__<tool>`.
    pub fn tools(&self) -> Vec<NamespacedTool> {
        let servers: Vec<(String, Arc<Server>)> = lock(&self.inner.servers)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut out = Vec::new();
        for (id, server) in servers {
            let live = lock(&server.live);
            if live.state != ServerState::Ready {
                continue;
            }
            for tool in &live.lists.tools {
                out.push(NamespacedTool {
                    name: format!("{id}{TOOL_SEPARATOR}{}", tool.name),
                    server_id: id.clone(),
                    tool: tool.clone(),
                });
            }
        }
        out
    }

    /// One server's prompts.
    pub fn prompts(&self, id: &str) -> Result<Vec<Prompt>> {
        Ok(lock(&self.get(id)?.live).lists.prompts.clone())
    }

    /// One server's resources.
    pub fn resources(&self, id: &str) -> Result<Vec<Resource>> {
        Ok(lock(&self.get(id)?.live).lists.resources.clone())
    }

    /// One server's resource templates.
    pub fn resource_templates(&self, id: &str) -> Result<Vec<ResourceTemplate>> {
        Ok(lock(&self.get(id)?.live).lists.templates.clone())
    }

    /// Splits `<server id>__<tool>` into its parts.
    pub fn resolve_tool(&self, namespaced: &str) -> Result<(String, String)> {
        let (id, tool) = namespaced
            .split_once(TOOL_SEPARATOR)
            .ok_or_else(|| Error::UnknownTool(namespaced.to_owned()))?;
        if !lock(&self.inner.servers).contains_key(id) {
            return Err(Error::UnknownTool(namespaced.to_owned()));
        }
        Ok((id.to_owned(), tool.to_owned()))
    }

    /// Calls a tool by namespaced name. A tool that fails returns `Ok` with `is_error: Some(true)`
    /// — that result is for the model; `Err` means the call itself did not happen or complete.
    pub async fn call_tool(
        &self,
        namespaced: &str,
        arguments: serde_json::Value,
        options: CallOptions,
    ) -> Result<CallToolResult> {
        let (id, tool) = self.resolve_tool(namespaced)?;
        self.call_server_tool(&id, &tool, arguments, options).await
    }

    /// Calls a tool of one server by its own name.
    pub async fn call_server_tool(
        &self,
        id: &str,
        tool: &str,
        arguments: serde_json::Value,
        options: CallOptions,
    ) -> Result<CallToolResult> {
        let mut params = CallToolRequestParams::new(tool.to_owned());
        match arguments {
            serde_json::Value::Null => {}
            serde_json::Value::Object(map) => params = params.with_arguments(map as JsonObject),
            other => {
                return Err(Error::Protocol {
                    server: id.to_owned(),
                    code: -32602,
                    message: format!("tool arguments must be a JSON object, not {other}"),
                });
            }
        }
        let build = |responses: Option<InputResponses>, state: Option<String>| {
            let mut params = params.clone();
            if let Some(r) = responses {
                params = params.with_input_responses(r);
            }
            if let Some(s) = state {
                params = params.with_request_state(s);
            }
            ClientRequest::CallToolRequest(CallToolRequest::new(params))
        };
        match self.request_with_input(id, build, options).await? {
            ServerResult::CallToolResult(r) => Ok(r),
            other => Err(unexpected(id, &other)),
        }
    }

    /// `prompts/get`.
    pub async fn get_prompt(
        &self,
        id: &str,
        name: &str,
        arguments: Option<JsonObject>,
        options: CallOptions,
    ) -> Result<GetPromptResult> {
        let mut params = GetPromptRequestParams::new(name.to_owned());
        if let Some(args) = arguments {
            params = params.with_arguments(args);
        }
        let build = |responses: Option<InputResponses>, state: Option<String>| {
            let mut params = params.clone();
            if let Some(r) = responses {
                params = params.with_input_responses(r);
            }
            if let Some(s) = state {
                params = params.with_request_state(s);
            }
            ClientRequest::GetPromptRequest(GetPromptRequest::new(params))
        };
        match self.request_with_input(id, build, options).await? {
            ServerResult::GetPromptResult(r) => Ok(r),
            other => Err(unexpected(id, &other)),
        }
    }

    /// `resources/read`.
    pub async fn read_resource(
        &self,
        id: &str,
        uri: &str,
        options: CallOptions,
    ) -> Result<ReadResourceResult> {
        let build = |responses: Option<InputResponses>, state: Option<String>| {
            let mut params = ReadResourceRequestParams::new(uri.to_owned());
            if let Some(r) = responses {
                params = params.with_input_responses(r);
            }
            if let Some(s) = state {
                params = params.with_request_state(s);
            }
            ClientRequest::ReadResourceRequest(ReadResourceRequest::new(params))
        };
        match self.request_with_input(id, build, options).await? {
            ServerResult::ReadResourceResult(r) => Ok(r),
            other => Err(unexpected(id, &other)),
        }
    }

    /// A request that the server may answer with `input_required` (2026-07-28 multi-round-trip
    /// requests): the inputs are gathered (elicitations through the application's handler) and
    /// the request is sent again, with a new id, the responses and the server's state.
    async fn request_with_input(
        &self,
        id: &str,
        build: impl Fn(Option<InputResponses>, Option<String>) -> ClientRequest,
        options: CallOptions,
    ) -> Result<ServerResult> {
        let (mut responses, mut state) = (None, None);
        for _ in 0..MAX_INPUT_ROUNDS {
            let round = CallOptions {
                timeout: options.timeout,
                progress: options.progress.clone(),
                cancel: options.cancel.clone(),
            };
            match self
                .request(id, build(responses.take(), state.take()), round)
                .await?
            {
                ServerResult::InputRequiredResult(needed) => {
                    let asked = needed.input_requests.unwrap_or_default();
                    if asked.is_empty() && needed.request_state.is_none() {
                        return Err(Error::Protocol {
                            server: id.to_owned(),
                            code: -32603,
                            message: "input_required result with neither requests nor state".into(),
                        });
                    }
                    let mut answers = InputResponses::new();
                    for (key, request) in asked {
                        answers.insert(key, self.answer(id, request).await?);
                    }
                    responses = (!answers.is_empty()).then_some(answers);
                    state = needed.request_state;
                }
                done => return Ok(done),
            }
        }
        Err(Error::Protocol {
            server: id.to_owned(),
            code: -32603,
            message: format!("the server still wanted input after {MAX_INPUT_ROUNDS} rounds"),
        })
    }

    /// One input the server asked for in an `input_required` result.
    async fn answer(&self, id: &str, request: InputRequest) -> Result<serde_json::Value> {
        let result = match request {
            InputRequest::Elicitation(elicit) => {
                let answer = match &self.inner.options.elicitation {
                    Some(handler) => handler.elicit(id, elicit.params).await,
                    None => ElicitResult::new(ElicitationAction::Decline),
                };
                serde_json::to_value(answer)
            }
            // The client declares no roots.
            InputRequest::ListRoots(_) => Ok(serde_json::json!({ "roots": [] })),
            // Sampling, and kinds newer than this client.
            other => {
                return Err(Error::Protocol {
                    server: id.to_owned(),
                    code: -32601,
                    message: format!(
                        "the server asked for input this client does not offer: {other:?}"
                    ),
                });
            }
        };
        result.map_err(|e| Error::Protocol {
            server: id.to_owned(),
            code: -32603,
            message: format!("could not encode an input response: {e}"),
        })
    }

    /// Sends a request. A refusal of the token (403 `insufficient_scope`, or a 401 the token
    /// refresh did not cure) is an authorization event, not a lost connection: the manager
    /// re-authorizes with the union of the granted and the challenged scopes, waits (within the
    /// request's timeout) for the callback, and sends the request once more.
    async fn request(
        &self,
        id: &str,
        request: ClientRequest,
        options: CallOptions,
    ) -> Result<ServerResult> {
        let server = self.get(id)?;
        let timeout = options
            .timeout
            .unwrap_or(self.inner.options.request_timeout);
        let deadline = tokio::time::Instant::now() + timeout;
        let challenge = match self
            .send(&server, id, request.clone(), &options, timeout)
            .await
        {
            Sent::Answer(answer) => return *answer,
            Sent::Refused(challenge) => challenge,
        };
        self.step_up(&server, id, &challenge, deadline).await?;
        match self.send(&server, id, request, &options, timeout).await {
            Sent::Answer(answer) => *answer,
            Sent::Refused(challenge) => Err(Error::Authorization {
                server: id.to_owned(),
                message: format!(
                    "the server still refuses the token after re-authorization ({challenge})"
                ),
            }),
        }
    }

    /// One request on the current connection.
    async fn send(
        &self,
        server: &Server,
        id: &str,
        request: ClientRequest,
        options: &CallOptions,
        timeout: Duration,
    ) -> Sent {
        let (peer, routes) = {
            let live = lock(&server.live);
            match (&live.peer, live.state) {
                (Some(peer), ServerState::Ready) => (peer.clone(), live.progress.clone()),
                _ => {
                    return Sent::Answer(Box::new(Err(Error::NotReady {
                        id: id.to_owned(),
                        state: match &live.error {
                            Some(e) => format!("{}: {e}", live.state),
                            None => live.state.to_string(),
                        },
                    })));
                }
            }
        };
        let handle = match peer
            .send_cancellable_request(request, PeerRequestOptions::no_options())
            .await
        {
            Ok(handle) => handle,
            Err(e) => return self.failed(server, id, &e),
        };
        let request_id = handle.id.clone();
        let token = handle.progress_token.clone();
        if let (Some(tx), Some(routes)) = (options.progress.clone(), &routes) {
            ProgressRoutes::register(routes, token.clone(), tx);
        }
        let cancel = options.cancel.clone().unwrap_or_default();
        let outcome = tokio::select! {
            r = tokio::time::timeout(timeout, handle.await_response()) => r.ok(),
            _ = cancel.cancelled() => {
                send_cancel(&peer, request_id.clone(), "cancelled by the caller").await;
                if let Some(routes) = &routes {
                    ProgressRoutes::unregister(routes, &token);
                }
                return Sent::Answer(Box::new(Err(Error::Cancelled { server: id.to_owned() })));
            }
        };
        if let Some(routes) = &routes {
            ProgressRoutes::unregister(routes, &token);
        }
        Sent::Answer(Box::new(match outcome {
            None => {
                send_cancel(&peer, request_id, "timed out").await;
                Err(Error::Timeout {
                    server: id.to_owned(),
                    seconds: timeout.as_secs_f64(),
                })
            }
            Some(Ok(r)) => {
                server
                    .step_ups
                    .store(0, std::sync::atomic::Ordering::SeqCst);
                Ok(r)
            }
            Some(Err(ServiceError::McpError(e))) => Err(Error::Protocol {
                server: id.to_owned(),
                code: e.code.0,
                message: e.message.to_string(),
            }),
            Some(Err(ServiceError::Timeout { timeout })) => Err(Error::Timeout {
                server: id.to_owned(),
                seconds: timeout.as_secs_f64(),
            }),
            Some(Err(e)) => return self.failed(server, id, &e),
        }))
    }

    /// A request failed below JSON-RPC. A refused token is for [`Self::step_up`]; anything else
    /// makes the connection suspect, so it is dialled again.
    fn failed(&self, server: &Server, id: &str, e: &ServiceError) -> Sent {
        if let Some(challenge) = e.auth_challenge() {
            return Sent::Refused(challenge.to_owned());
        }
        warn!(server = %id, error = %client::error_chain(e), "MCP request lost its connection; reconnecting");
        server.redial.notify_one();
        Sent::Answer(Box::new(Err(Error::ConnectionLost {
            server: id.to_owned(),
            message: client::error_chain(e),
        })))
    }

    /// Re-authorizes after a request's token was refused with `challenge`, and waits until the
    /// server serves again (the callback came) or `deadline` passes. The connection is kept:
    /// its requests read the token from the OAuth cell, so the new one applies at once.
    async fn step_up(
        &self,
        server: &Server,
        id: &str,
        challenge: &str,
        deadline: tokio::time::Instant,
    ) -> Result<()> {
        use std::sync::atomic::Ordering;
        let refused = |message: String| Error::Authorization {
            server: id.to_owned(),
            message,
        };
        if lock(&server.config).oauth.is_none() {
            return Err(refused(format!(
                "the server refused the token ({challenge}); give the server OAuth options so \
                 the manager can authorize again"
            )));
        }
        let url = lock(&server.config).url.clone();
        let timed_out = || Error::AuthorizationRequired {
            url: url.clone(),
            challenge: Some(challenge.to_owned()),
        };
        let mut authorized = server.authorized.subscribe();
        let _one = tokio::time::timeout_at(deadline, server.step_up.lock())
            .await
            .map_err(|_| timed_out())?;
        if authorized.has_changed().unwrap_or(false) {
            // Refused together with a request whose step-up completed meanwhile: retry as is.
            return self.until_ready(id, deadline).await;
        }
        // Bounded, or a server that never accepts any scope would loop forever.
        let n = server.step_ups.fetch_add(1, Ordering::SeqCst) + 1;
        if n > MAX_STEP_UPS {
            return Err(refused(format!(
                "the server still refuses the token ({challenge}) after {MAX_STEP_UPS} \
                 re-authorizations"
            )));
        }
        info!(server = %id, challenge, "MCP server wants more authorization; re-authorizing");
        let options = scoped_options(server, Some(challenge));
        let session = auth::start(
            &url,
            Some(challenge),
            &options,
            &self.inner.options.client_name,
            &server.oauth,
            self.inner.options.allow_private_oauth_metadata,
        )
        .await
        .map_err(refused)?;
        let auth_url = session.get_authorization_url().to_owned();
        *lock(&server.session) = Some(session);
        {
            let mut live = lock(&server.live);
            if live.state == ServerState::Closed {
                return Err(Error::NotReady {
                    id: id.to_owned(),
                    state: live.state.to_string(),
                });
            }
            live.auth_url = Some(auth_url);
            // The peer stays: the callback puts this connection back to `ready`.
            live.state = ServerState::Authenticating;
        }
        self.bump();
        tokio::select! {
            changed = authorized.changed() => {
                if changed.is_err() {
                    return Err(Error::UnknownServer(id.to_owned()));
                }
            }
            _ = server.shutdown.cancelled() => {
                return Err(Error::NotReady { id: id.to_owned(), state: ServerState::Closed.to_string() });
            }
            _ = tokio::time::sleep_until(deadline) => return Err(timed_out()),
        }
        self.until_ready(id, deadline).await
    }

    /// Waits until the server is ready again, at most until `deadline`.
    async fn until_ready(&self, id: &str, deadline: tokio::time::Instant) -> Result<()> {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        self.wait_ready(id, left).await.map(|_| ())
    }

    fn get(&self, id: &str) -> Result<Arc<Server>> {
        lock(&self.inner.servers)
            .get(id)
            .cloned()
            .ok_or_else(|| Error::UnknownServer(id.to_owned()))
    }

    fn bump(&self) {
        self.inner.version.send_modify(|v| *v += 1);
    }
}

/// How one attempt at a request ended.
enum Sent {
    /// An answer, or an error that is final for this request (boxed: results are large).
    Answer(Box<Result<ServerResult>>),
    /// The server refused the token with this `WWW-Authenticate` challenge.
    Refused(String),
}

fn unexpected(id: &str, result: &ServerResult) -> Error {
    Error::Protocol {
        server: id.to_owned(),
        code: -32603,
        message: format!("unexpected result type {result:?}"),
    }
}

async fn send_cancel(peer: &Peer<RoleClient>, id: rmcp::model::RequestId, reason: &str) {
    let note = CancelledNotification::new(CancelledNotificationParam::new(
        Some(id),
        Some(reason.to_owned()),
    ));
    if let Err(e) = peer.send_notification(note.into()).await {
        debug!(error = %e, "could not send notifications/cancelled");
    }
}

fn status(server: &Server) -> ServerStatus {
    let config = lock(&server.config).clone();
    let live = lock(&server.live);
    ServerStatus {
        id: config.id,
        url: config.url,
        state: live.state,
        error: live.error.clone(),
        route: config.route,
        protocol_version: live.protocol_version.clone(),
        server_name: live.server_name.clone(),
        instructions: live.instructions.clone(),
        connections: live.connections,
        auth_url: live.auth_url.clone(),
    }
}

fn set_state(inner: &Inner, server: &Server, state: ServerState, error: Option<String>) {
    {
        let mut live = lock(&server.live);
        if live.state == ServerState::Closed {
            return;
        }
        live.state = state;
        if error.is_some() || state == ServerState::Ready {
            live.error = error;
        }
        if state != ServerState::Ready {
            live.peer = None;
        }
    }
    inner.version.send_modify(|v| *v += 1);
}

/// Fetches the lists the server declares, every page of each.
async fn discover(
    peer: &Peer<RoleClient>,
    which: Option<ServerEvent>,
) -> Result<Lists, ServiceError> {
    let caps = peer
        .peer_info()
        .map(|i| i.capabilities.clone())
        .unwrap_or_default();
    let mut lists = Lists::default();
    let all = which.is_none();
    if caps.tools.is_some() && (all || which == Some(ServerEvent::Tools)) {
        lists.tools = peer.list_all_tools().await?;
    }
    if caps.prompts.is_some() && (all || which == Some(ServerEvent::Prompts)) {
        lists.prompts = peer.list_all_prompts().await?;
    }
    if caps.resources.is_some() && (all || which == Some(ServerEvent::Resources)) {
        lists.resources = peer.list_all_resources().await?;
        lists.templates = peer.list_all_resource_templates().await?;
    }
    Ok(lists)
}

/// Aborts a background task when the connection it belongs to ends.
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

/// Forwards the list-changed notifications of a 2026-07-28 server's `subscriptions/listen`.
async fn listen(peer: Peer<RoleClient>, events: mpsc::UnboundedSender<ServerEvent>) {
    let filter = SubscriptionFilterBuilder::default()
        .tools_list_changed()
        .prompts_list_changed()
        .resources_list_changed()
        .build();
    let mut subscription = match peer.listen(filter).await {
        Ok(s) => s,
        Err(e) => {
            debug!(error = %e, "subscriptions/listen refused; lists refresh on reconnect only");
            return;
        }
    };
    loop {
        let event = match subscription.next().await {
            Ok(Some(ServerNotification::ToolListChangedNotification(_))) => ServerEvent::Tools,
            Ok(Some(ServerNotification::PromptListChangedNotification(_))) => ServerEvent::Prompts,
            Ok(Some(ServerNotification::ResourceListChangedNotification(_))) => {
                ServerEvent::Resources
            }
            Ok(Some(_)) => continue,
            Ok(None) => return,
            Err(e) => {
                debug!(error = %e, "subscriptions/listen stream ended");
                return;
            }
        };
        if events.send(event).is_err() {
            return;
        }
    }
}

enum Authorize {
    /// The callback came: dial again.
    Redial,
    Shutdown,
    Failed,
}

/// Starts an authorization and waits (without retrying) for the callback to complete it.
async fn authorize(inner: &Inner, server: &Server, challenge: Option<&str>) -> Authorize {
    let url = lock(&server.config).url.clone();
    // A challenge while holding a token is a step-up; bounded, or a server that never accepts
    // any scope would loop forever.
    if lock(&server.oauth.record).has_token() {
        let n = server
            .step_ups
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        if n > MAX_STEP_UPS {
            let message = format!(
                "the server still refuses the token after {MAX_STEP_UPS} re-authorizations"
            );
            set_state(inner, server, ServerState::Failed, Some(message));
            return Authorize::Failed;
        }
    }
    let options = scoped_options(server, challenge);
    // Subscribed before the URL is handed out: a callback cannot complete unseen.
    let mut authorized = server.authorized.subscribe();
    let started = auth::start(
        &url,
        challenge,
        &options,
        &inner.options.client_name,
        &server.oauth,
        inner.options.allow_private_oauth_metadata,
    )
    .await;
    match started {
        Ok(session) => {
            let auth_url = session.get_authorization_url().to_owned();
            *lock(&server.session) = Some(session);
            lock(&server.live).auth_url = Some(auth_url);
            set_state(inner, server, ServerState::Authenticating, None);
            info!("MCP server needs authorization; waiting for the callback");
            // No retries while the user is away: the callback redials.
            tokio::select! {
                changed = authorized.changed() => match changed {
                    Ok(()) => Authorize::Redial,
                    Err(_) => Authorize::Shutdown,
                },
                _ = server.shutdown.cancelled() => Authorize::Shutdown,
            }
        }
        Err(message) => {
            warn!(error = %message, "MCP authorization could not start");
            set_state(inner, server, ServerState::Failed, Some(message));
            Authorize::Failed
        }
    }
}

/// The server's OAuth options for an authorization answering `challenge`: a challenge with a
/// scope asks for the configured scopes, those granted and those challenged (MCP scope
/// challenge handling: the union, never fewer scopes than before).
fn scoped_options(server: &Server, challenge: Option<&str>) -> OAuthOptions {
    let mut options = lock(&server.config).oauth.clone().unwrap_or_default();
    if let Some(wanted) = challenge.and_then(challenge_scope) {
        let granted = lock(&server.oauth.record)
            .credentials
            .as_ref()
            .map(|c| c.granted_scopes.clone())
            .unwrap_or_default();
        for scope in granted.iter().map(String::as_str).chain(wanted.split(' ')) {
            if !scope.is_empty() && !options.scopes.iter().any(|s| s == scope) {
                options.scopes.push(scope.to_owned());
            }
        }
    }
    options
}

/// The `scope` parameter of a `WWW-Authenticate: Bearer` challenge.
fn challenge_scope(header: &str) -> Option<String> {
    let start = header.find("scope=\"")? + "scope=\"".len();
    let rest = &header[start..];
    Some(rest[..rest.find('"')?].to_owned())
}

/// The life of one server: dial, discover, serve until the connection ends, back off, again.
async fn supervise(inner: Arc<Inner>, server: Arc<Server>) {
    let mut attempt: u32 = 0;
    loop {
        if server.shutdown.is_cancelled() {
            return;
        }
        set_state(&inner, &server, ServerState::Connecting, None);
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let listen_tx = events_tx.clone();
        let dial = {
            let config = lock(&server.config);
            Dial {
                url: config.url.clone(),
                preference: config.transport,
                remembered: config.route,
                bearer_token: config.bearer_token.clone(),
                client_name: inner.options.client_name.clone(),
                client_version: inner.options.client_version.clone(),
                http: inner.http.clone(),
                connect_timeout: inner.options.connect_timeout,
                server_id: config.id.clone(),
                elicitation: inner.options.elicitation.clone(),
                oauth: config.oauth.as_ref().map(|_| {
                    (
                        server.oauth.clone(),
                        inner.options.allow_private_oauth_metadata,
                    )
                }),
            }
        };
        let connected = tokio::select! {
            r = client::connect(&dial, events_tx) => r,
            _ = server.shutdown.cancelled() => return,
        };
        match connected {
            Ok(Connected {
                service,
                route,
                progress,
                oauth,
            }) => {
                let peer = service.peer().clone();
                let stop = service.cancellation_token();
                lock(&server.config).route = Some(route);
                set_state(&inner, &server, ServerState::Discovering, None);
                match discover(&peer, None).await {
                    Ok(lists) => {
                        attempt = 0;
                        {
                            let mut live = lock(&server.live);
                            let info = peer.peer_info();
                            live.protocol_version =
                                info.as_ref().map(|i| i.protocol_version.to_string());
                            live.server_name = info
                                .as_ref()
                                .and_then(|i| i.server_info.as_ref().map(|s| s.name.clone()));
                            live.instructions = info.as_ref().and_then(|i| i.instructions.clone());
                            live.capabilities = info
                                .as_ref()
                                .and_then(|i| serde_json::to_value(&i.capabilities).ok());
                            live.lists = lists;
                            live.connections += 1;
                            live.progress = Some(progress);
                            live.oauth_attached = oauth;
                            if live.state != ServerState::Closed {
                                live.state = ServerState::Ready;
                                live.error = None;
                                live.peer = Some(peer.clone());
                            }
                        }
                        inner.version.send_modify(|v| *v += 1);
                        info!(route = ?route, "MCP server ready");
                        // The stateless era has no session stream: list changes come on a
                        // `subscriptions/listen` stream the client opens.
                        let listener = (route.era == Era::Modern)
                            .then(|| tokio::spawn(listen(peer.clone(), listen_tx)));
                        let _listener = AbortOnDrop(listener);
                        let mut ended = std::pin::pin!(service.waiting());
                        loop {
                            tokio::select! {
                                quit = &mut ended => {
                                    warn!(reason = ?quit.ok(), "MCP connection ended");
                                    set_state(&inner, &server, ServerState::Failed, Some("the connection ended".into()));
                                    break;
                                }
                                Some(event) = events.recv() => {
                                    match discover(&peer, Some(event)).await {
                                        Ok(fresh) => {
                                            let mut live = lock(&server.live);
                                            match event {
                                                ServerEvent::Tools => live.lists.tools = fresh.tools,
                                                ServerEvent::Prompts => live.lists.prompts = fresh.prompts,
                                                ServerEvent::Resources => {
                                                    live.lists.resources = fresh.resources;
                                                    live.lists.templates = fresh.templates;
                                                }
                                            }
                                            drop(live);
                                            debug!(?event, "MCP list refreshed");
                                            inner.version.send_modify(|v| *v += 1);
                                        }
                                        Err(e) => warn!(?event, error = %e, "MCP list refresh failed"),
                                    }
                                }
                                _ = server.redial.notified() => {
                                    stop.cancel();
                                    let _ = (&mut ended).await;
                                    set_state(&inner, &server, ServerState::Failed, Some("reconnecting after a lost request".into()));
                                    break;
                                }
                                _ = server.shutdown.cancelled() => {
                                    stop.cancel();
                                    let _ = (&mut ended).await;
                                    return;
                                }
                            }
                        }
                    }
                    Err(e) => {
                        stop.cancel();
                        let challenge = e.auth_challenge().map(str::to_owned);
                        if challenge.is_some() && lock(&server.config).oauth.is_some() {
                            // Some servers let `initialize` through and protect the lists.
                            match authorize(&inner, &server, challenge.as_deref()).await {
                                Authorize::Redial => {
                                    attempt = 0;
                                    continue;
                                }
                                Authorize::Shutdown => return,
                                Authorize::Failed => {}
                            }
                        } else {
                            set_state(
                                &inner,
                                &server,
                                ServerState::Failed,
                                Some(format!("discovery failed: {}", client::error_chain(&e))),
                            );
                        }
                    }
                }
            }
            Err(Error::AuthorizationRequired { challenge, .. })
                if lock(&server.config).oauth.is_some() =>
            {
                match authorize(&inner, &server, challenge.as_deref()).await {
                    Authorize::Redial => {
                        attempt = 0;
                        continue;
                    }
                    Authorize::Shutdown => return,
                    Authorize::Failed => {}
                }
            }
            Err(e) => {
                warn!(error = %e, "MCP connect failed");
                set_state(&inner, &server, ServerState::Failed, Some(e.to_string()));
            }
        }
        // The reconnect policy's delay; a redial request skips the wait.
        attempt = attempt.saturating_add(1);
        let Some(delay) = inner.options.reconnect.next_delay(attempt) else {
            warn!(
                attempts = attempt,
                "MCP server unreachable; giving up as the reconnect policy says"
            );
            return;
        };
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = server.redial.notified() => {}
            _ = server.shutdown.cancelled() => return,
        }
    }
}

impl std::fmt::Debug for McpClientManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<String> = lock(&self.inner.servers).keys().cloned().collect();
        f.debug_struct("McpClientManager")
            .field("servers", &ids)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bad_ids_urls_and_tool_names_are_refused_clearly() {
        let m = McpClientManager::new(ManagerOptions::default());
        assert!(matches!(
            m.add_server(ServerConfig::new(
                "has__underscores",
                "http://127.0.0.1:1/mcp"
            )),
            Err(Error::InvalidServerId(_))
        ));
        assert!(matches!(
            m.add_server(ServerConfig::new("a", "ftp://example.com/mcp")),
            Err(Error::InvalidUrl { .. })
        ));
        assert!(matches!(
            m.add_server(ServerConfig::new("a", "not a url")),
            Err(Error::InvalidUrl { .. })
        ));
        m.add_server(ServerConfig::new("a", "http://127.0.0.1:1/mcp"))
            .expect("valid");
        assert!(matches!(
            m.add_server(ServerConfig::new("a", "http://127.0.0.1:2/mcp")),
            Err(Error::DuplicateServer(_))
        ));
        assert_eq!(
            m.resolve_tool("a__x__y").expect("resolves"),
            ("a".to_owned(), "x__y".to_owned())
        );
        assert!(matches!(m.resolve_tool("b__x"), Err(Error::UnknownTool(_))));
        assert!(matches!(
            m.resolve_tool("plain"),
            Err(Error::UnknownTool(_))
        ));
        // Nothing listens on port 1: the server is not ready and calls say so at once.
        let call = m
            .call_tool("a__x", serde_json::json!({}), CallOptions::default())
            .await;
        assert!(matches!(call, Err(Error::NotReady { .. })), "{call:?}");
        assert!(matches!(
            m.call_tool("a__x", serde_json::json!([1]), CallOptions::default())
                .await,
            Err(Error::NotReady { .. }) | Err(Error::Protocol { .. })
        ));
        m.disconnect("a").await.expect("disconnect");
        assert!(m.servers().is_empty());
    }

    #[test]
    fn challenge_scopes_are_read() {
        assert_eq!(
            challenge_scope(
                r#"Bearer error="insufficient_scope", scope="a b", resource_metadata="x""#
            )
            .as_deref(),
            Some("a b")
        );
        assert_eq!(challenge_scope("Bearer realm=\"x\""), None);
    }
}
