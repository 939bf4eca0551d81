//! `mcp-agent`: an agent that uses the tools of remote MCP servers, served at
//! `/agents/mcp-agent/<name>` (`new AgentClient({ agent: "McpAgent", name, host })`).
//!
//! - `addServer(id, url)` connects a server (Streamable HTTP in either era, or legacy SSE) and
//!   answers `{id, state: "ready"}`, or `{id, state: "authenticating", authUrl}` for a server
//!   that wants OAuth: the user opens `authUrl` and comes back to
//!   `/agents/mcp-agent/<name>/callback`;
//! - `removeServer(id)` disconnects it and forgets its credentials;
//! - `tools()` lists the ready servers' tools as `{name, description}`, named
//!   `<server id>__<tool>`;
//! - `callTool(name, args)` answers the tool's result as MCP has it (`content`, `isError`);
//! - `callToolIn(seconds, name, args)` calls it from a schedule instead; the result lands in
//!   the state's `lastResult`, which every client sees.
//!
//! Every client gets the servers with their state and tools in `cf_agent_mcp_servers`, on connect
//! and on every change. Servers and tokens live in the agent's SQLite: after a hibernation or a
//! restart they reconnect without asking anyone.

use std::time::Duration;

use denizen::agent::{Agent, AgentContext, Context, McpClient, Methods};
use denizen::mcp::model::CallToolResult;
use denizen::mcp::{AddServerOptions, AgentMcp, ManagerOptions};
use denizen::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The longest `callToolIn` delay.
const MAX_DELAY_SECONDS: f64 = 86_400.0;

/// An agent that connects to MCP servers and calls their tools, now or later.
#[derive(Debug)]
pub(crate) struct McpAgent {
    mcp: AgentMcp,
}

impl McpAgent {
    /// An agent whose OAuth callbacks come back to `public_url` (the scheme and authority the
    /// user's browser reaches this server at).
    pub(crate) fn new(public_url: &str) -> Self {
        McpAgent {
            mcp: AgentMcp::new(ManagerOptions {
                // The example runs on loopback beside the servers it tries, so OAuth metadata on
                // private addresses is allowed; keep the default (refused) when the servers are
                // remote.
                allow_private_oauth_metadata: true,
                ..ManagerOptions::default()
            })
            .callback_host(public_url),
        }
    }
}

/// The state every client sees.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct McpAgentState {
    /// The last result of a scheduled tool call: `{name, result}` or `{name, error}`.
    pub(crate) last_result: Option<Value>,
}

impl McpAgent {
    async fn remove_server(&mut self, cx: &mut Context<Self>, id: String) -> Result<()> {
        Ok(self.mcp.remove_server(cx, &id).await?)
    }

    fn tools(&self) -> Vec<Value> {
        self.mcp
            .tools()
            .into_iter()
            .map(|t| json!({ "name": t.name, "description": t.tool.description }))
            .collect()
    }

    fn call_tool_in(
        &mut self,
        cx: &mut Context<Self>,
        seconds: f64,
        name: String,
        args: Value,
    ) -> Result<String> {
        if !(0.0..=MAX_DELAY_SECONDS).contains(&seconds) {
            return Err(Error::msg(format!(
                "the delay must be between 0 and {MAX_DELAY_SECONDS} seconds"
            )));
        }
        let when = Duration::from_secs_f64(seconds);
        Ok(cx.schedule(when, "scheduled_call", &(name, args))?.id)
    }

    /// The schedule's task: starts the call off the turn (the agent serves its clients while
    /// the server works); the result lands in the state. A failing call is recorded rather than
    /// retried, since the model (or the user) decides what to do about a tool that failed.
    fn scheduled_call(&mut self, cx: &mut Context<Self>, (name, args): (String, Value)) {
        let call = match self.mcp.call_tool_off_turn(&name, args) {
            Ok(call) => call,
            Err(e) => {
                let failed: Result<Value> = Err(e.into());
                let record = Self::record(cx, &name, failed);
                if let Err(e) = record {
                    tracing::warn!(error = %e, "could not record a failed tool call");
                }
                return;
            }
        };
        cx.spawn_then(
            async move { encode(call.await?) },
            move |_agent, cx, result| Box::pin(async move { Self::record(cx, &name, result) }),
        );
    }

    fn record(cx: &mut Context<Self>, name: &str, result: Result<Value>) -> Result<()> {
        let last = match result {
            Ok(result) => json!({ "name": name, "result": result }),
            Err(e) => json!({ "name": name, "error": e.to_string() }),
        };
        cx.set_state(&McpAgentState {
            last_result: Some(last),
        })?;
        Ok(())
    }
}

/// A tool's result as JSON, for the client.
fn encode(result: CallToolResult) -> Result<Value> {
    serde_json::to_value(result).map_err(|e| Error::msg(format!("tool result: {e}")))
}

impl Agent for McpAgent {
    type State = McpAgentState;

    fn initial_state(&self) -> McpAgentState {
        McpAgentState::default()
    }

    fn mcp(&mut self) -> Option<&mut dyn McpClient> {
        Some(&mut self.mcp)
    }

    fn methods(m: &mut Methods<Self>) {
        // Off the turn: the agent serves its clients while the server connects.
        m.callable_off_turn("addServer", |a, cx, (id, url): (String, String)| {
            let added = a
                .mcp
                .add_server_off_turn(cx, &id, &url, AddServerOptions::default())?;
            Ok(async move { Ok(added.await?) })
        })
        .callable("removeServer", |a, cx, (id,): (String,)| {
            Box::pin(a.remove_server(cx, id))
        })
        .callable("tools", |a, _cx, (): ()| {
            let tools = a.tools();
            Box::pin(async move { Ok(tools) })
        })
        .callable_off_turn("callTool", |a, _cx, (name, args): (String, Value)| {
            let call = a.mcp.call_tool_off_turn(&name, args)?;
            Ok(async move { encode(call.await?) })
        })
        .callable(
            "callToolIn",
            |a, cx, (seconds, name, args): (f64, String, Value)| {
                let id = a.call_tool_in(cx, seconds, name, args);
                Box::pin(async move { id })
            },
        )
        .task("scheduled_call", |a, cx, call: (String, Value)| {
            a.scheduled_call(cx, call);
            Box::pin(async { Ok(()) })
        });
    }
}
