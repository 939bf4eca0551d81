//! What the servers offer and where they stand: states, tools, prompts, resources; the lists
//! fetched at connect time and refreshed on `list_changed`.

use std::{sync::Arc, time::Duration};

use rmcp::{
    RoleClient,
    model::{Prompt, Resource, ResourceTemplate, ServerNotification, SubscriptionFilterBuilder},
    service::{Peer, ServiceError},
};
use tokio::sync::{mpsc, watch};
use tracing::debug;

use super::{
    Lists, McpClientManager, NamespacedTool, Server, ServerState, ServerStatus, TOOL_SEPARATOR,
    lock, status,
};
use crate::{Error, Result, client::ServerEvent};

impl McpClientManager {
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
}

/// Fetches the lists the server declares, every page of each.
pub(super) async fn discover(
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

/// Forwards the list-changed notifications of a 2026-07-28 server's `subscriptions/listen`.
pub(super) async fn listen(peer: Peer<RoleClient>, events: mpsc::UnboundedSender<ServerEvent>) {
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
