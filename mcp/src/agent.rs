//! [`AgentMcp`]: an agent's MCP client, run by the agents layer the way the Agents SDK runs
//! `this.mcp`.
//!
//! The agent keeps one in a field and returns it from
//! [`Agent::mcp`](denizen_agents::Agent::mcp). From then on the agents layer restores its
//! servers on every activation (they reconnect in the background with their saved routes and
//! tokens), sends them to clients in `cf_agent_mcp_servers` on connect and on every change,
//! persists tokens as they are issued and refreshed, and answers the OAuth callback at
//! `/agents/<class>/<name>/callback` before the agent's `on_request` (the token exchange runs
//! off the turn: the agent serves its clients meanwhile, and the browser's answer leaves once
//! the tokens are saved).

use std::future::Future;
use std::time::Duration;

use denizen_agents::chat::agent::Tool as ChatTool;
use denizen_agents::mcp::BoxFuture;
use denizen_agents::{AgentPath, McpClient, McpNotifier};
use denizen_runtime::http::{StatusCode, header};
use denizen_runtime::{Ctx, DurableObject, Request, Response, Storage, http_util};
use serde::Serialize;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::manager::{CallOptions, ManagerOptions, McpClientManager, NamespacedTool};
use crate::manager::{ServerConfig, ServerState};
use crate::model::CallToolResult;
use crate::{Error, OAuthOptions, Result, TransportPreference, store};

/// Calls tool `name` of `server`, first waiting (up to `timeout`) for the server when it is
/// still (re)connecting.
async fn call_when_ready(
    manager: McpClientManager,
    server: String,
    name: String,
    arguments: serde_json::Value,
    timeout: Duration,
) -> Result<CallToolResult> {
    manager.wait_ready(&server, timeout).await?;
    manager
        .call_tool(&name, arguments, CallOptions::default())
        .await
}

/// An MCP tool's result as a chat tool's: the text of a text-only result (what models read
/// best), else the structured content, else the whole result as JSON; a result marked as an
/// error is the tool's error, its text going back to the model.
fn tool_output(result: CallToolResult) -> std::result::Result<serde_json::Value, String> {
    let texts: Option<Vec<&str>> = result
        .content
        .iter()
        .map(|c| c.as_text().map(|t| t.text.as_str()))
        .collect();
    let text = texts.map(|t| t.join("\n"));
    if result.is_error == Some(true) {
        return Err(text.unwrap_or_else(|| "the MCP tool failed".to_owned()));
    }
    if let Some(text) = text.filter(|_| !result.content.is_empty()) {
        return Ok(serde_json::Value::String(text));
    }
    if let Some(structured) = result.structured_content.clone() {
        return Ok(structured);
    }
    serde_json::to_value(&result).map_err(|e| format!("could not encode the MCP tool result: {e}"))
}

/// How [`AgentMcp::add_server`] reaches a server.
#[derive(Clone, Debug, Default)]
pub struct AddServerOptions {
    /// Which transport to use; automatic selection by default.
    pub transport: TransportPreference,
    /// Sent as `Authorization: Bearer` on every request (servers with static keys).
    pub bearer_token: Option<String>,
    /// OAuth settings; by default the agent's own callback route under
    /// [`AgentMcp::callback_host`] (no OAuth without one).
    pub oauth: Option<OAuthOptions>,
    /// How long to wait for the server to be ready or to ask for authorization; by default the
    /// manager's connect timeout.
    pub timeout: Option<Duration>,
}

/// What [`AgentMcp::add_server`] answers, shaped like the Agents SDK's `addMcpServer`:
/// `{id, state: "ready"}`, or `{id, state: "authenticating", authUrl}` — send the user there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AddedServer {
    /// The server's id.
    pub id: String,
    /// Where its connection stands.
    pub state: ServerState,
    /// While `authenticating`: where to send the user.
    #[serde(rename = "authUrl", skip_serializing_if = "Option::is_none")]
    pub auth_url: Option<String>,
    /// Why the server is not ready yet (it keeps reconnecting in the background).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// An agent's MCP client. Build it in the agent's constructor (`Default` has no OAuth callback
/// host), return it from [`Agent::mcp`](denizen_agents::Agent::mcp), and use it from callables,
/// schedules and queued tasks.
///
/// ```
/// use denizen_agents::{Agent, AgentBuilder, McpClient};
/// use denizen_mcp::AgentMcp;
///
/// #[derive(Default)]
/// struct Assistant {
///     mcp: AgentMcp,
/// }
///
/// impl Agent for Assistant {
///     type State = ();
///     fn initial_state(&self) {}
///     fn mcp(&mut self) -> Option<&mut dyn McpClient> {
///         Some(&mut self.mcp)
///     }
/// }
/// # let _ = denizen_runtime::Runtime::builder().agent::<Assistant>("assistant");
/// ```
pub struct AgentMcp {
    options: ManagerOptions,
    callback_host: Option<String>,
    authorized_redirect: Option<String>,
    manager: Option<McpClientManager>,
    agent: Option<AgentPath>,
    /// Turns the manager's changes into events of the agent; stopped with the agent.
    watcher: Option<JoinHandle<()>>,
    /// What storage holds, so an unchanged list is not written again.
    persisted: Option<String>,
}

impl Default for AgentMcp {
    fn default() -> Self {
        AgentMcp::new(ManagerOptions::default())
    }
}

impl Drop for AgentMcp {
    fn drop(&mut self) {
        if let Some(w) = self.watcher.take() {
            w.abort();
        }
    }
}

impl std::fmt::Debug for AgentMcp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentMcp")
            .field("callback_host", &self.callback_host)
            .field("agent", &self.agent)
            .field("started", &self.manager.is_some())
            .finish()
    }
}

impl AgentMcp {
    /// An agent's MCP client with these manager options, started by the agents layer.
    pub fn new(options: ManagerOptions) -> Self {
        AgentMcp {
            options,
            callback_host: None,
            authorized_redirect: None,
            manager: None,
            agent: None,
            watcher: None,
            persisted: None,
        }
    }

    /// The scheme and authority the user's browser reaches this server at
    /// (`https://app.example`): OAuth sends the user back to
    /// `<host>/agents/<class>/<name>/callback`. Without it, servers that require OAuth stay
    /// `failed`.
    pub fn callback_host(mut self, host: impl Into<String>) -> Self {
        self.callback_host = Some(host.into().trim_end_matches('/').to_string());
        self
    }

    /// Where the callback sends the browser after a successful authorization (by default it
    /// answers with a short page saying the window can be closed).
    pub fn authorized_redirect(mut self, url: impl Into<String>) -> Self {
        self.authorized_redirect = Some(url.into());
        self
    }

    /// The manager: servers, tools, prompts, resources and calls. Available once the agent has
    /// started.
    pub fn manager(&self) -> Result<&McpClientManager> {
        self.manager.as_ref().ok_or(Error::NotStarted)
    }

    /// Connects a server under `id` (the prefix of its tool names, `[A-Za-z0-9-]`), saves it in
    /// the agent's SQLite, and waits until it is ready or asks for authorization. A server that
    /// is not reachable yet stays registered and keeps reconnecting in the background.
    ///
    /// The wait holds the agent's turn (up to the timeout): in a callable, prefer
    /// [`add_server_off_turn`](AgentMcp::add_server_off_turn), which answers the same once the
    /// server settles while the agent goes on serving its other clients.
    pub async fn add_server<O: DurableObject>(
        &mut self,
        cx: &mut Ctx<O>,
        id: &str,
        url: &str,
        options: AddServerOptions,
    ) -> Result<AddedServer> {
        let settled = self.add_server_off_turn(cx, id, url, options)?;
        let added = settled.await?;
        // The route it took and, when it wants authorization, the PKCE verifier the callback
        // needs: saved before the URL leaves, so a restart in between does not lose them.
        self.persist_now(cx.storage())?;
        Ok(added)
    }

    /// [`add_server`](AgentMcp::add_server) without holding the agent's turn: the server is
    /// registered and saved now (an invalid id or URL fails here), and the returned future
    /// waits, off the turn, until it is ready or asks for authorization (or the timeout
    /// passes), answering what `add_server` answers. Clients see it `connecting` meanwhile in
    /// `cf_agent_mcp_servers`.
    ///
    /// Hand the future to the agents layer, which saves the servers again (the route taken, the
    /// PKCE verifier of an authorization) before the answer leaves: as the reply of a
    /// [`callable_off_turn`](denizen_agents::Methods::callable_off_turn), or to
    /// [`spawn_then`](denizen_agents::AgentContext::spawn_then).
    ///
    /// ```
    /// use denizen_agents::{Agent, McpClient, Methods};
    /// use denizen_mcp::{AddServerOptions, AgentMcp};
    ///
    /// #[derive(Default)]
    /// struct Assistant {
    ///     mcp: AgentMcp,
    /// }
    ///
    /// impl Agent for Assistant {
    ///     type State = ();
    ///     fn initial_state(&self) {}
    ///     fn mcp(&mut self) -> Option<&mut dyn McpClient> {
    ///         Some(&mut self.mcp)
    ///     }
    ///     fn methods(m: &mut Methods<Self>) {
    ///         m.callable_off_turn("addServer", |a, cx, (id, url): (String, String)| {
    ///             let added = a.mcp.add_server_off_turn(cx, &id, &url, AddServerOptions::default())?;
    ///             Ok(async move { Ok(added.await?) })
    ///         });
    ///     }
    /// }
    /// ```
    pub fn add_server_off_turn<O: DurableObject>(
        &mut self,
        cx: &mut Ctx<O>,
        id: &str,
        url: &str,
        options: AddServerOptions,
    ) -> Result<impl Future<Output = Result<AddedServer>> + Send + 'static + use<O>> {
        let oauth = match options.oauth {
            Some(oauth) => Some(oauth),
            None => self.redirect_uri().map(|redirect_uri| OAuthOptions {
                redirect_uri,
                ..OAuthOptions::default()
            }),
        };
        let config = ServerConfig {
            transport: options.transport,
            bearer_token: options.bearer_token,
            oauth,
            ..ServerConfig::new(id, url)
        };
        let manager = self.manager()?.clone();
        manager.add_server(config)?;
        self.persist_now(cx.storage())?;
        let timeout = options.timeout.unwrap_or(self.options.connect_timeout);
        let id = id.to_string();
        Ok(async move {
            // Ready, or waiting for the user; after the timeout, whatever it is (it goes on
            // reconnecting).
            let settled = manager
                .wait_for_state(&id, timeout, |s| {
                    matches!(
                        s,
                        ServerState::Ready | ServerState::Authenticating | ServerState::Closed
                    )
                })
                .await;
            let status = match settled? {
                Some(status) => status,
                None => manager.server(&id)?,
            };
            info!(server = %id, state = %status.state, "MCP server added");
            Ok(AddedServer {
                id: status.id,
                state: status.state,
                auth_url: status.auth_url,
                error: status.error,
            })
        })
    }

    /// Disconnects a server and deletes it, with its credentials, from the agent's SQLite.
    pub async fn remove_server<O: DurableObject>(
        &mut self,
        cx: &mut Ctx<O>,
        id: &str,
    ) -> Result<()> {
        let manager = self.manager()?.clone();
        manager.disconnect(id).await?;
        store::delete_server(cx.storage(), id)?;
        self.persisted = None;
        Ok(())
    }

    /// Every ready server's tools, named `<server id>__<tool>`.
    pub fn tools(&self) -> Vec<NamespacedTool> {
        self.manager.as_ref().map(|m| m.tools()).unwrap_or_default()
    }

    /// Calls a tool by its namespaced name, first waiting (up to the connect timeout) for its
    /// server when it is still reconnecting, as it is right after the agent woke. A tool that
    /// fails answers `Ok` with `is_error: Some(true)`.
    ///
    /// The call holds the agent's turn: in a callable, prefer
    /// [`call_tool_off_turn`](AgentMcp::call_tool_off_turn).
    pub async fn call_tool(
        &self,
        name: &str,
        arguments: serde_json::Value,
    ) -> Result<CallToolResult> {
        self.call_tool_off_turn(name, arguments)?.await
    }

    /// [`call_tool`](AgentMcp::call_tool) without holding the agent's turn: an unknown tool
    /// fails now, and the returned future waits for the server and calls the tool, off the
    /// turn. Return it from a
    /// [`callable_off_turn`](denizen_agents::Methods::callable_off_turn) (the result is the
    /// call's reply) or hand it to [`spawn_then`](denizen_agents::AgentContext::spawn_then).
    pub fn call_tool_off_turn(
        &self,
        name: &str,
        arguments: serde_json::Value,
    ) -> Result<impl Future<Output = Result<CallToolResult>> + Send + 'static + use<>> {
        let manager = self.manager()?.clone();
        let (server, _) = manager.resolve_tool(name)?;
        Ok(call_when_ready(
            manager,
            server,
            name.to_string(),
            arguments,
            self.options.connect_timeout,
        ))
    }

    fn redirect_uri(&self) -> Option<String> {
        let host = self.callback_host.as_ref()?;
        let agent = self.agent.as_ref()?;
        Some(format!("{host}{}/callback", agent.route()))
    }

    fn snapshot(manager: &McpClientManager) -> String {
        serde_json::json!({
            "servers": manager.configs(),
            "oauth": manager.oauth_records(),
        })
        .to_string()
    }

    fn persist_now(&mut self, storage: &mut Storage) -> Result<()> {
        let Some(manager) = &self.manager else {
            return Ok(());
        };
        let snapshot = Self::snapshot(manager);
        if self.persisted.as_ref() == Some(&snapshot) {
            return Ok(());
        }
        store::save_all(storage, manager)?;
        self.persisted = Some(snapshot);
        Ok(())
    }

    /// The server whose authorization in progress this request completes, with the full
    /// callback URL to complete it with.
    fn callback_for(&self, req: &Request) -> Option<(String, String)> {
        if req.method() != denizen_runtime::http::Method::GET {
            return None;
        }
        let manager = self.manager.as_ref()?;
        let query = req.uri().query()?;
        let id = manager.server_for_callback(&format!("http://callback.invalid/?{query}"))?;
        let config = manager.configs().into_iter().find(|c| c.id == id)?;
        let redirect = url::Url::parse(&config.oauth?.redirect_uri).ok()?;
        if redirect.path() != req.uri().path() {
            return None;
        }
        let mut full = redirect;
        full.set_query(Some(query));
        Some((id, full.to_string()))
    }
}

impl McpClient for AgentMcp {
    fn start(
        &mut self,
        storage: &mut Storage,
        agent: AgentPath,
        changed: McpNotifier,
    ) -> denizen_runtime::Result<()> {
        let manager = McpClientManager::new(self.options.clone());
        store::restore(storage, &manager)?;
        self.persisted = Some(Self::snapshot(&manager));
        let mut changes = manager.subscribe();
        if let Some(old) = self.watcher.replace(tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                changed.notify().await;
            }
        })) {
            old.abort();
        }
        self.manager = Some(manager);
        self.agent = Some(agent);
        Ok(())
    }

    fn servers(&self) -> serde_json::Value {
        match &self.manager {
            Some(manager) => manager.agents_state(),
            None => denizen_agents::mcp::no_servers(),
        }
    }

    fn persist(&mut self, storage: &mut Storage) -> denizen_runtime::Result<()> {
        Ok(self.persist_now(storage)?)
    }

    fn callback(
        &mut self,
        req: &Request,
    ) -> Option<BoxFuture<'static, denizen_runtime::Result<Response>>> {
        let (id, url) = self.callback_for(req)?;
        // `callback_for` found the manager.
        let manager = self.manager.clone()?;
        let authorized_redirect = self.authorized_redirect.clone();
        Some(Box::pin(async move {
            match manager.complete_authorization(&id, &url).await {
                Ok(()) => {
                    info!(server = %id, "MCP server authorized");
                    Ok(match &authorized_redirect {
                        Some(to) => http_util::redirect(StatusCode::FOUND, to),
                        None => http_util::html(
                            StatusCode::OK,
                            "<!doctype html><title>Authorized</title>\
                             <p>Authorization complete. You can close this window.</p>",
                        ),
                    })
                }
                Err(e) => {
                    warn!(server = %id, error = %e, "MCP authorization callback failed");
                    let mut resp = http_util::text(StatusCode::BAD_REQUEST, &format!("{e}\n"));
                    resp.headers_mut().insert(
                        header::CACHE_CONTROL,
                        header::HeaderValue::from_static("no-store"),
                    );
                    Ok(resp)
                }
            }
        }))
    }

    fn chat_tools(&self) -> Vec<ChatTool> {
        let Some(manager) = &self.manager else {
            return Vec::new();
        };
        let timeout = self.options.connect_timeout;
        self.tools()
            .into_iter()
            .filter(|t| {
                // What OpenAI-compatible servers take as a function name; a server id with
                // other characters would make every model request fail.
                let callable = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'-';
                let valid = !t.name.is_empty() && t.name.len() <= 64 && t.name.bytes().all(callable);
                if !valid {
                    warn!(tool = %t.name, "an MCP tool whose name a model cannot call is not offered");
                }
                valid
            })
            .map(|t| {
                let description = t.tool.description.as_deref().unwrap_or_default().to_owned();
                let schema = serde_json::Value::Object((*t.tool.input_schema).clone());
                let manager = manager.clone();
                let name = t.name.clone();
                ChatTool::new(t.name, description, schema, move |arguments| {
                    // Resolved at each call: the server may have been removed since.
                    let call = manager.resolve_tool(&name).map(|(server, _)| {
                        call_when_ready(manager.clone(), server, name.clone(), arguments, timeout)
                    });
                    async move {
                        let result = call.map_err(|e| e.to_string())?.await;
                        tool_output(result.map_err(|e| e.to_string())?)
                    }
                })
            })
            .collect()
    }
}
