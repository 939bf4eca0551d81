//! `chat-agent`: an AI chat agent for the `useAgentChat` client (`@cloudflare/ai-chat/react`),
//! served at `/agents/chat-agent/<name>`, one conversation per name.
//!
//! It talks to any OpenAI-compatible model server, configured with `--llm-url` /
//! `DENIZEN_LLM_URL` (e.g. `http://127.0.0.1:8080/v1`), `--llm-model` / `DENIZEN_LLM_MODEL` and
//! `DENIZEN_LLM_API_KEY`. It offers the model:
//! - `calculate`, a tool it runs itself;
//! - `roll_dice`, a tool that runs only once the user approves the call;
//! - the tools of every MCP server added with the `addServer(id, url)` RPC (named
//!   `<server id>__<tool>`), and any tools the client declares and runs itself.
//!
//! The history lives in the agent's SQLite; the oldest messages are left out of the model
//! request past a token budget, never deleted. Without a model the agent is not registered and
//! its route answers 503 saying how to configure one ([`unavailable`]).

use denizen::Result;
use denizen::agent::chat::agent::{Chat, ChatRun, ChatTurn, Tool};
use denizen::agent::chat::model::ModelClient;
use denizen::agent::schemars::{self, JsonSchema};
use denizen::agent::{Agent, Context, McpClient, Methods};
use denizen::axum::Router;
use denizen::axum::http::StatusCode;
use denizen::axum::routing::any;
use denizen::mcp::{AddServerOptions, AgentMcp, ManagerOptions};
use rand::Rng;
use serde::Deserialize;

/// What the model is told first.
const SYSTEM_PROMPT: &str = "You are a helpful assistant. Answer briefly. Use the `calculate` \
    tool for arithmetic and `roll_dice` when asked to roll dice.";

/// Tokens of history sent to the model at most (estimated); older messages stay in the history.
const TOKEN_BUDGET: usize = 3_000;

/// What the agent's route answers when the server was started without a model.
pub(crate) const NOT_CONFIGURED: &str = "The chat agent has no model: start the server with \
    --llm-url <OpenAI-compatible base URL, e.g. http://127.0.0.1:8080/v1> (or DENIZEN_LLM_URL), \
    and --llm-model / DENIZEN_LLM_MODEL and DENIZEN_LLM_API_KEY if the server wants them.";

/// The chat agent: its conversation, its MCP servers and the model it calls.
pub(crate) struct ChatAgent {
    chat: Chat<Self>,
    mcp: AgentMcp,
    model: ModelClient,
}

impl ChatAgent {
    /// An agent calling `model`, whose MCP OAuth callbacks come back to `public_url`.
    pub(crate) fn new(model: ModelClient, public_url: &str) -> Self {
        ChatAgent {
            chat: Chat::new(|a: &mut ChatAgent, cx, turn| Box::pin(a.reply(cx, turn))),
            mcp: AgentMcp::new(ManagerOptions::default()).callback_host(public_url),
            model,
        }
    }

    async fn reply(&mut self, _cx: &mut Context<Self>, _turn: ChatTurn) -> Result<ChatRun> {
        Ok(ChatRun::new(self.model.clone())
            .with_system(SYSTEM_PROMPT)
            .with_tool(calculate())
            .with_tool(roll_dice().needs_approval())
            .with_token_budget(TOKEN_BUDGET))
    }
}

/// Routes answering every request to `/agents/chat-agent/<name>[/...]` (HTTP, `get-messages`,
/// WebSocket upgrades) with 503 and `reason`, for a server that has no model: without them the
/// client would get the gateway's "no agent class" 400, which does not say what to do. Merged
/// routes beat the gateway's `/agents/{*path}`: a static segment outranks a catch-all.
pub(crate) fn unavailable(reason: String) -> Router {
    Router::new().route(
        "/agents/chat-agent/{*rest}",
        any(move || {
            let reason = reason.clone();
            async move { (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")) }
        }),
    )
}

/// The input of `calculate`.
#[derive(Deserialize, JsonSchema)]
#[schemars(crate = "schemars")]
struct Calculation {
    /// The left operand.
    a: f64,
    /// One of `+`, `-`, `*`, `/`.
    op: String,
    /// The right operand.
    b: f64,
}

fn calculate() -> Tool {
    Tool::typed(
        "calculate",
        "Computes `a op b` for op one of + - * /",
        |c: Calculation| async move {
            match c.op.as_str() {
                "+" => Ok(c.a + c.b),
                "-" => Ok(c.a - c.b),
                "*" => Ok(c.a * c.b),
                "/" if c.b == 0.0 => Err("division by zero".to_string()),
                "/" => Ok(c.a / c.b),
                other => Err(format!("unknown operator {other:?}: use + - * or /")),
            }
        },
    )
}

/// The input of `roll_dice`.
#[derive(Deserialize, JsonSchema)]
#[schemars(crate = "schemars")]
struct Roll {
    /// How many dice, 1 to 100.
    count: u32,
    /// Sides per die, 2 to 1000.
    sides: u32,
}

fn roll_dice() -> Tool {
    Tool::typed(
        "roll_dice",
        "Rolls `count` dice of `sides` sides and answers each value",
        |r: Roll| async move {
            if !(1..=100).contains(&r.count) || !(2..=1000).contains(&r.sides) {
                return Err("count must be 1 to 100 and sides 2 to 1000".to_string());
            }
            let mut rng = rand::rng();
            Ok((0..r.count)
                .map(|_| rng.random_range(1..=r.sides))
                .collect::<Vec<u32>>())
        },
    )
}

impl Agent for ChatAgent {
    type State = ();

    fn initial_state(&self) {}

    fn chat(&mut self) -> Option<&mut Chat<Self>> {
        Some(&mut self.chat)
    }

    fn mcp(&mut self) -> Option<&mut dyn McpClient> {
        Some(&mut self.mcp)
    }

    fn methods(m: &mut Methods<Self>) {
        // Off the turn: the agent keeps chatting while the server connects.
        m.callable_off_turn("addServer", |a, cx, (id, url): (String, String)| {
            let added = a
                .mcp
                .add_server_off_turn(cx, &id, &url, AddServerOptions::default())?;
            Ok(async move { Ok(added.await?) })
        })
        .callable("removeServer", |a, cx, (id,): (String,)| {
            Box::pin(async move { Ok(a.mcp.remove_server(cx, &id).await?) })
        });
    }
}
