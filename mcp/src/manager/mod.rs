//! [`McpClientManager`]: the MCP servers of one object, their connections, their tools.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use rmcp::{
    RoleClient,
    model::{Prompt, Resource, ResourceTemplate, Tool},
    service::Peer,
};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span, warn};

use crate::{
    Error, Result,
    auth::{OAuthCell, OAuthRecord},
    client::ProgressRoutes,
};

mod authorize;
mod catalog;
mod options;
mod request;
mod supervise;

pub use options::{
    CallOptions, ManagerOptions, NamespacedTool, ServerConfig, ServerState, ServerStatus,
};

/// Separator between the server id and the tool name in namespaced tool names.
pub const TOOL_SEPARATOR: &str = "__";

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
    /// A manager without servers; add them with [`McpClientManager::add_server`].
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
        tokio::spawn(supervise::supervise(inner, server).instrument(span));
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
}
