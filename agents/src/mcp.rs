//! The agents layer's side of an agent's MCP client.
//!
//! The MCP client itself lives in `denizen-mcp` (`AgentMcp`), which builds on this crate; this
//! module is the contract between the two. The agents layer runs the client the way the Agents
//! SDK runs `this.mcp`: it restores the saved servers on every activation before
//! [`Agent::on_start`](crate::Agent::on_start), sends the server list in the
//! `cf_agent_mcp_servers` frame on connect and whenever it changes, persists what changed, and
//! answers the OAuth callback before [`Agent::on_request`](crate::Agent::on_request).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use denizen_runtime::{Message, Request, Response, Result, Storage};
use serde_json::Value;

/// A boxed future, as [`McpClient::callback`] returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where the agent is reached, for the MCP client's OAuth callback URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentPath {
    /// The agent's class (its namespace), as in `/agents/<class>/<name>`.
    pub class: String,
    /// The agent's name.
    pub name: String,
}

impl AgentPath {
    /// `/agents/<class>/<name>`, the name percent-encoded where a path segment needs it.
    pub fn route(&self) -> String {
        format!(
            "/agents/{}/{}",
            encode_segment(&self.class),
            encode_segment(&self.name)
        )
    }
}

fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

type Notify = dyn Fn() -> BoxFuture<'static, ()> + Send + Sync;

/// Tells the agent that its MCP servers changed (a state, a list, a token): the agent then
/// persists them and sends the new list to its clients, in an event of its own. Called from
/// the MCP client's background tasks; cheap to clone.
#[derive(Clone)]
pub struct McpNotifier(Arc<Notify>);

impl McpNotifier {
    pub(crate) fn new(f: impl Fn() -> BoxFuture<'static, ()> + Send + Sync + 'static) -> Self {
        McpNotifier(Arc::new(f))
    }

    /// Delivers the change; completes once the agent has handled it (or could not be reached,
    /// which is logged).
    pub async fn notify(&self) {
        (self.0)().await
    }
}

impl std::fmt::Debug for McpNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("McpNotifier")
    }
}

/// The event [`McpNotifier::notify`] delivers to the agent.
pub(crate) struct McpChanged;

impl Message for McpChanged {
    type Reply = ();
}

/// What the agents layer needs from an agent's MCP client. Implemented by `denizen-mcp`'s
/// `AgentMcp`; an agent returns its client from [`Agent::mcp`](crate::Agent::mcp).
pub trait McpClient: Send + 'static {
    /// Runs on every activation, before the agent's `on_start`: restore the saved servers
    /// (reconnecting in the background) and call `changed` whenever they change.
    fn start(
        &mut self,
        storage: &mut Storage,
        agent: AgentPath,
        changed: McpNotifier,
    ) -> Result<()>;

    /// The `mcp` object of the `cf_agent_mcp_servers` frame: `{prompts, resources, servers,
    /// tools}`.
    fn servers(&self) -> Value;

    /// Persists the servers and their credentials as they are now.
    fn persist(&mut self, storage: &mut Storage) -> Result<()>;

    /// An HTTP request to the agent: the OAuth callback of an authorization in progress is
    /// answered here (`Some`); anything else goes on to `on_request` (`None`). The future is the
    /// slow part (the token exchange with the authorization server) and its answer to the
    /// browser: the agents layer runs it off the turn, so the agent serves its clients
    /// meanwhile, then persists the servers (with their new tokens) in an event of the agent
    /// before that answer leaves.
    fn callback(&mut self, req: &Request) -> Option<BoxFuture<'static, Result<Response>>>;

    /// The tools of the connected servers as chat tools (named `<server id>__<tool>`), offered
    /// to the model of the agent's chat turns next to its own. None by default.
    fn chat_tools(&self) -> Vec<crate::chat::agent::Tool> {
        Vec::new()
    }
}

/// The `mcp` object of an agent without MCP servers.
pub fn no_servers() -> Value {
    serde_json::json!({ "prompts": [], "resources": [], "servers": {}, "tools": [] })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_encodes_what_a_path_segment_cannot_hold() {
        let path = AgentPath {
            class: "assistant".into(),
            name: "ada lovelace/1".into(),
        };
        assert_eq!(path.route(), "/agents/assistant/ada%20lovelace%2F1");
    }
}
