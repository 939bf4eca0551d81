//! The agent's MCP servers: restored on start, persisted and sent to clients when they change.

use denizen_runtime::{Ctx, Handler, Result};
use serde_json::Value;

use super::AgentHost;
use crate::agent::{Agent, Context};
use crate::context::AgentContext;
use crate::mcp::{AgentPath, McpChanged, McpNotifier, no_servers};
use crate::protocol;

impl<A: Agent> AgentHost<A> {
    /// The `mcp` object of the `cf_agent_mcp_servers` frame.
    pub(super) fn mcp_servers(&mut self) -> Value {
        match self.agent.mcp() {
            Some(mcp) => mcp.servers(),
            None => no_servers(),
        }
    }

    /// Persists the agent's MCP servers and sends their list to every protocol connection if
    /// it changed since it was last sent.
    pub(super) fn mcp_changed(&mut self, cx: &mut Context<A>) -> Result<()> {
        let Some(mcp) = self.agent.mcp() else {
            return Ok(());
        };
        mcp.persist(cx.storage())?;
        let servers = mcp.servers();
        let text = servers.to_string();
        if self.mcp_sent.as_deref() == Some(text.as_str()) {
            return Ok(());
        }
        self.mcp_sent = Some(text);
        Ok(cx.broadcast_json(&protocol::mcp_servers(servers), &[])?)
    }

    /// Restores the agent's MCP servers and has their changes come back as events.
    pub(super) fn start_mcp(&mut self, cx: &mut Context<A>) -> Result<()> {
        if self.agent.mcp().is_none() {
            return Ok(());
        }
        let stub = cx
            .runtime()
            .namespace::<AgentHost<A>>(cx.namespace())?
            .get(cx.id().clone());
        let notifier = McpNotifier::new(move || {
            let stub = stub.clone();
            Box::pin(async move {
                if let Err(e) = stub.call(McpChanged).await {
                    tracing::debug!(error = %e, "could not deliver an MCP server change");
                }
            })
        });
        let path = AgentPath {
            class: cx.namespace().to_string(),
            name: cx.id().name().unwrap_or_default().to_string(),
        };
        if let Some(mcp) = self.agent.mcp() {
            mcp.start(cx.storage(), path, notifier)?;
        }
        Ok(())
    }
}

impl<A: Agent> Handler<McpChanged> for AgentHost<A> {
    async fn handle(&mut self, cx: &mut Ctx<Self>, _: McpChanged) -> Result<()> {
        self.mcp_changed(cx)
    }
}
