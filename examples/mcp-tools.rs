//! An agent that uses the tools of a remote MCP server: each agent (one per name) keeps its own
//! list of servers in its SQLite database, reconnects to them by itself after a hibernation or
//! a restart, and calls their tools for its clients.
//!
//! Agents speak the protocol of Cloudflare's `agents` JavaScript client over a WebSocket at
//! `/agents/mcp-tools/<name>` (`new AgentClient({ agent: "McpTools", name, host })`). Callables:
//!
//! - `addServer(id, url)`: connects a Streamable HTTP (or legacy SSE) server under `id` and
//!   answers `{id, state}`; watch `cf_agent_mcp_servers` (below) for the moment it is `ready`;
//! - `removeServer(id)`: disconnects it and forgets it;
//! - `listTools()`: the ready servers' tools, named `<id>__<tool>`;
//! - `callTool(name, args)`: calls one and answers its result as MCP has it (`content`,
//!   `isError`); the state's `calls` counts the calls, and every client sees it.
//!
//! Every client also gets the servers, their state (`connecting`, `ready`, ...) and their tools
//! in `cf_agent_mcp_servers` frames, on connect and whenever they change. A server that wants
//! OAuth answers `{state: "authenticating", authUrl}`: the user opens `authUrl` and is sent back
//! to `/agents/mcp-tools/<name>/callback` on this server's public URL.
//!
//! Run it:
//!
//! ```text
//! cargo run --example mcp-tools -- serve
//! ```
//!
//! Then, with any MCP server (here the reference one, `npx @modelcontextprotocol/server-everything
//! streamableHttp`, on port 3001):
//!
//! ```text
//! $ websocat ws://127.0.0.1:8787/agents/mcp-tools/ada
//! {"agent":"mcp-tools","name":"ada","stateFollows":true,"type":"cf_agent_identity"}
//! {"state":{"calls":0},"type":"cf_agent_state"}
//! {"mcp":{"prompts":[],"resources":[],"servers":{},"tools":[]},"type":"cf_agent_mcp_servers"}
//! {"type":"rpc","id":"1","method":"addServer","args":["every","http://127.0.0.1:3001/mcp"]}
//! {"done":true,"id":"1","result":{"id":"every","state":"ready"},"success":true,"type":"rpc"}
//! {"mcp":{..,"servers":{"every":{..,"state":"ready"}},"tools":[..]},"type":"cf_agent_mcp_servers"}
//! {"type":"rpc","id":"2","method":"callTool","args":["every__echo",{"message":"hi"}]}
//! {"state":{"calls":1},"type":"cf_agent_state"}
//! {"done":true,"id":"2","result":{"content":[{"text":"Echo: hi","type":"text"}]},"success":true,"type":"rpc"}
//! ```

use denizen::agent::{Agent, AgentContext, Context, McpClient, Methods};
use denizen::app::App;
use denizen::mcp::{AddServerOptions, AgentMcp, ManagerOptions};
use denizen::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// An agent with an MCP client.
#[derive(Debug)]
struct McpTools {
    mcp: AgentMcp,
}

impl McpTools {
    /// OAuth sends the user's browser back to `public_url` (where they reach this server).
    fn new(public_url: &str) -> Self {
        McpTools {
            mcp: AgentMcp::new(ManagerOptions::default()).callback_host(public_url),
        }
    }
}

/// What every client of an agent sees.
#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    /// Tool calls made so far.
    calls: u64,
}

impl McpTools {
    fn list_tools(&self) -> Vec<Value> {
        self.mcp
            .tools()
            .into_iter()
            .map(|t| json!({ "name": t.name, "description": t.tool.description }))
            .collect()
    }

    /// Counts the call (every client sees it) and starts it: the agent keeps serving its
    /// clients while the server works, and the caller gets the result when it answers.
    fn call_tool(
        &mut self,
        cx: &mut Context<Self>,
        name: &str,
        args: Value,
    ) -> Result<impl Future<Output = Result<Value>> + use<>> {
        let call = self.mcp.call_tool_off_turn(name, args)?;
        let mut state = cx.state()?;
        state.calls += 1;
        cx.set_state(&state)?;
        Ok(async move {
            let result = call.await?;
            serde_json::to_value(result).map_err(|e| Error::msg(format!("the tool's result: {e}")))
        })
    }
}

impl Agent for McpTools {
    type State = State;

    fn initial_state(&self) -> State {
        State::default()
    }

    // Handing the client to the agents layer is what restores, announces and persists servers.
    fn mcp(&mut self) -> Option<&mut dyn McpClient> {
        Some(&mut self.mcp)
    }

    fn methods(m: &mut Methods<Self>) {
        // Off the turn: the server is saved in the agent's SQLite at once (the agents layer
        // reconnects it on every activation from then on), and the reply waits for it to be
        // ready (or to ask for OAuth) while the agent goes on serving.
        m.callable_off_turn("addServer", |a, cx, (id, url): (String, String)| {
            let added = a
                .mcp
                .add_server_off_turn(cx, &id, &url, AddServerOptions::default())?;
            Ok(async move { Ok(added.await?) })
        })
        .callable("removeServer", |a, cx, (id,): (String,)| {
            Box::pin(async move { Ok(a.mcp.remove_server(cx, &id).await?) })
        })
        .callable("listTools", |a, _cx, (): ()| {
            let tools = a.list_tools();
            Box::pin(async move { Ok(tools) })
        })
        .callable_off_turn("callTool", |a, cx, (name, args): (String, Value)| {
            a.call_tool(cx, &name, args)
        });
    }
}

fn main() -> std::process::ExitCode {
    App::new("mcp-tools")
        // The agent needs the server's public URL for OAuth callbacks: known once it starts
        // (`--public-url`, or the address it listens on).
        .with_config(|app, config| {
            let public_url = config.public_url.clone().unwrap_or_default();
            app.agent_with("mcp-tools", move || McpTools::new(&public_url))
        })
        .run()
}
