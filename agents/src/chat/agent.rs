//! [`Chat`]: an agent that speaks the `useAgentChat` protocol (chat-protocol.md §1–§5, §10).
//!
//! An agent holds a [`Chat`] and returns it from [`Agent::chat`]; the agents layer then hands it
//! the chat frames of its connections (before [`Agent::on_message`]) and the
//! `GET …/get-messages` request (before [`Agent::on_request`]). The application writes one
//! function, the counterpart of AIChatAgent's `onChatMessage` + `streamText`: it gets the
//! conversation of a turn ([`ChatTurn`], the request's extra body included) and returns what to
//! run ([`ChatRun`]: the model, system prompt, tools, step limit).
//!
//! A turn runs off the turn of the agent: the model streams in a task, each chunk comes back to
//! the agent as an event of its own (folded into the reply, logged, sent to every connection),
//! so the agent serves RPC, state changes and other tabs meanwhile. One turn runs at a time;
//! further requests wait in order. The reply is persisted in the agent's SQLite before the turn's
//! `done` frame leaves, so a reload right after it finds the message.
//!
//! ```
//! use denizen_agents::chat::agent::{Chat, ChatRun, ChatTurn, Tool};
//! use denizen_agents::chat::model::{ModelClient, ModelConfig};
//! use denizen_agents::{Agent, Context};
//! use denizen_runtime::Result;
//!
//! struct Assistant {
//!     chat: Chat<Self>,
//!     model: ModelClient,
//! }
//!
//! impl Assistant {
//!     async fn reply(&mut self, _cx: &mut Context<Self>, _turn: ChatTurn) -> Result<ChatRun> {
//!         let clock = Tool::new("now", "The time", serde_json::json!({"type": "object"}), |_| async {
//!             Ok(serde_json::json!("noon"))
//!         });
//!         Ok(ChatRun::new(self.model.clone())
//!             .with_system("You are helpful.")
//!             .with_tool(clock))
//!     }
//! }
//!
//! impl Agent for Assistant {
//!     type State = ();
//!     fn initial_state(&self) {}
//!     fn chat(&mut self) -> Option<&mut Chat<Self>> {
//!         Some(&mut self.chat)
//!     }
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let model = ModelClient::new(ModelConfig::new("http://127.0.0.1:8080/v1", "smollm2"))?;
//! let _agent = Assistant {
//!     chat: Chat::new(|a: &mut Assistant, cx, turn| Box::pin(a.reply(cx, turn))),
//!     model,
//! };
//! # Ok(()) }
//! ```

mod continuation;
mod frames;
mod resume;
mod run;
mod store;
mod tool;
mod turn;

use std::fmt;
use std::sync::Arc;

use denizen_runtime::http::StatusCode;
use denizen_runtime::{Frame, Request, Response, Result, http_util};
use futures_util::future::BoxFuture;
use serde_json::{Map, Value};

pub use self::tool::Tool;
use self::turn::{Queued, Turns};
use crate::agent::{Agent, Connection, Context};
use crate::chat::history::{ToolResult, apply_tool_approval, apply_tool_result};
use crate::chat::message::{MAX_ID_BYTES, UiMessage};
use crate::chat::model::ModelClient;
use crate::chat::request::{ClientTool, RequestBody};
use crate::context::AgentContext;
use crate::protocol;

/// The model calls of one turn at most, by default (the AI SDK examples' `stepCountIs(5)`).
pub const DEFAULT_MAX_STEPS: usize = 5;

/// One chat turn, as the application's function gets it.
#[derive(Clone, Debug)]
pub struct ChatTurn {
    /// The client's id for the turn (named in every frame of it).
    pub request_id: String,
    /// The whole transcript, as persisted, the new message last.
    pub messages: Vec<UiMessage>,
    /// The request body's extra keys (the hook's `body` option, `sendMessage(_, {body})`), if any.
    pub body: Option<Map<String, Value>>,
    /// The tools the client declared and runs itself.
    pub client_tools: Vec<ClientTool>,
    /// A continuation: the model goes on after client tools' results or approvals, its reply
    /// appended to the last assistant message (`messages` ends with it).
    pub continuation: bool,
}

/// What a turn runs: the model, the system prompt, the server tools and the step limit.
#[derive(Clone, Debug)]
pub struct ChatRun {
    /// The model to call.
    pub model: ModelClient,
    /// The system prompt, sent first.
    pub system: Option<String>,
    /// Tools the agent runs.
    pub tools: Vec<Tool>,
    /// At most this many model calls in the turn (the tool loop's limit; at least 1).
    pub max_steps: usize,
    /// Leave the oldest messages out of the model request past this many tokens (estimated);
    /// they stay in the history.
    pub token_budget: Option<usize>,
    /// Offer the tools of the agent's connected MCP servers too (`<server id>__<tool>`; on by
    /// default).
    pub mcp_tools: bool,
}

impl ChatRun {
    /// Runs `model` with no system prompt, no tools and [`DEFAULT_MAX_STEPS`].
    pub fn new(model: ModelClient) -> Self {
        ChatRun {
            model,
            system: None,
            tools: Vec::new(),
            max_steps: DEFAULT_MAX_STEPS,
            token_budget: None,
            mcp_tools: true,
        }
    }

    /// Without the tools of the agent's MCP servers.
    pub fn without_mcp_tools(mut self) -> Self {
        self.mcp_tools = false;
        self
    }

    /// With this system prompt.
    pub fn with_system(mut self, system: impl Into<String>) -> Self {
        self.system = Some(system.into());
        self
    }

    /// With one more tool.
    pub fn with_tool(mut self, tool: Tool) -> Self {
        self.tools.push(tool);
        self
    }

    /// With at most `steps` model calls per turn.
    pub fn with_max_steps(mut self, steps: usize) -> Self {
        self.max_steps = steps;
        self
    }

    /// With a token budget for the model request.
    pub fn with_token_budget(mut self, tokens: usize) -> Self {
        self.token_budget = Some(tokens);
        self
    }
}

type Respond<A> = Arc<
    dyn for<'a> Fn(&'a mut A, &'a mut Context<A>, ChatTurn) -> BoxFuture<'a, Result<ChatRun>>
        + Send
        + Sync,
>;

/// An agent's chat: the application's function that makes a turn's [`ChatRun`], and the turns
/// in progress. Keep it in a field and return it from [`Agent::chat`]. See the
/// [module docs](self).
pub struct Chat<A: Agent> {
    respond: Respond<A>,
    turns: Turns,
}

impl<A: Agent> fmt::Debug for Chat<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chat").finish_non_exhaustive()
    }
}

impl<A: Agent> Chat<A> {
    /// A chat whose turns run what `respond` returns:
    /// `Chat::new(|a: &mut MyAgent, cx, turn| Box::pin(a.reply(cx, turn)))`. It runs in the
    /// agent's turn (it may read its tables and state); an `Err` ends the chat turn with an
    /// error frame.
    pub fn new(
        respond: impl for<'a> Fn(
            &'a mut A,
            &'a mut Context<A>,
            ChatTurn,
        ) -> BoxFuture<'a, Result<ChatRun>>
        + Send
        + Sync
        + 'static,
    ) -> Self {
        Chat {
            respond: Arc::new(respond),
            turns: Turns::default(),
        }
    }
}

/// Handles a chat frame of a protocol connection; `false` when the frame is not a chat frame
/// (it goes on to `on_message`).
pub(crate) async fn on_frame<A: Agent>(
    agent: &mut A,
    cx: &mut Context<A>,
    conn: &Connection,
    frame: &Frame,
) -> Result<bool> {
    let Some(text) = frame.as_text() else {
        return Ok(false);
    };
    // Only JSON objects with a chat type are ours; everything else is the application's.
    let Ok(Value::Object(mut map)) = serde_json::from_str::<Value>(text) else {
        return Ok(false);
    };
    let kind = map.get("type").and_then(Value::as_str).unwrap_or_default();
    match kind {
        frames::REQUEST => request(agent, cx, conn, &mut map).await?,
        frames::CANCEL => match map.get("id").and_then(Value::as_str) {
            Some(id) => turn::cancel(agent, cx, id)?,
            None => send_error(
                cx,
                conn,
                "a chat cancel needs the string `id` of its request",
            ),
        },
        frames::MESSAGES => set_messages(cx, conn, &mut map)?,
        frames::CLEAR => turn::clear(agent, cx, conn)?,
        frames::RESUME_REQUEST => {
            let probe = map.get("probeId").and_then(Value::as_str);
            resume::resume_request(agent, cx, conn, probe)?;
        }
        frames::RESUME_ACK => match map.get("id").and_then(Value::as_str) {
            Some(id) => resume::resume_ack(agent, cx, conn, id)?,
            None => send_error(cx, conn, "a resume ack needs the string `id` of its stream"),
        },
        frames::TOOL_RESULT => tool_result(agent, cx, conn, &map).await?,
        frames::TOOL_APPROVAL => tool_approval(agent, cx, conn, &map).await?,
        _ => return Ok(false),
    }
    Ok(true)
}

/// A protocol connection is being set up: before its identity frame, it is offered the stream
/// running (or left by a crash), if any (chat-protocol.md §1, §7).
pub(crate) fn on_connect<A: Agent>(
    agent: &mut A,
    cx: &mut Context<A>,
    conn: &Connection,
) -> Result<()> {
    if agent.chat().is_none() {
        return Ok(());
    }
    // The connection serves more than the chat: a chat table that cannot be read costs it the
    // offer, not the connection.
    if let Err(e) = resume::on_connect(agent, cx, conn) {
        tracing::warn!(error = %e, "could not look for a chat stream to offer");
    }
    Ok(())
}

pub(super) fn send_error(cx: &mut Context<impl Agent>, conn: &Connection, message: &str) {
    cx.send(conn.ws, protocol::error(message).to_string());
}

/// `cf_agent_use_chat_request`: checked, then run now or queued behind the running turn.
async fn request<A: Agent>(
    agent: &mut A,
    cx: &mut Context<A>,
    conn: &Connection,
    map: &mut Map<String, Value>,
) -> Result<()> {
    let id = match map.get("id") {
        Some(Value::String(id)) if !id.is_empty() && id.len() <= MAX_ID_BYTES => id.clone(),
        _ => {
            send_error(
                cx,
                conn,
                &format!("a chat request needs a string `id` of 1 to {MAX_ID_BYTES} bytes"),
            );
            return Ok(());
        }
    };
    let init = map.remove("init").unwrap_or(Value::Null);
    let method = init.get("method").and_then(Value::as_str).unwrap_or("");
    if method != "POST" {
        let text = format!(
            "a chat request needs `init.method` \"POST\", got {:?}",
            init.get("method").unwrap_or(&Value::Null)
        );
        cx.send_json(conn, &frames::failed(&id, &text))?;
        return Ok(());
    }
    let Some(body) = init.get("body").and_then(Value::as_str) else {
        let text = "a chat request needs `init.body`, the JSON text of {messages, trigger, …}";
        cx.send_json(conn, &frames::failed(&id, text))?;
        return Ok(());
    };
    let body = match RequestBody::parse(body) {
        Ok(body) => body,
        Err(e) => {
            tracing::debug!(request = %id, error = %e, "chat request refused");
            cx.send_json(conn, &frames::failed(&id, &e.to_string()))?;
            return Ok(());
        }
    };
    turn::submit(
        agent,
        cx,
        Queued {
            request_id: id,
            sender: conn.id.clone(),
            body,
        },
    )
    .await
}

/// The `toolCallId` of a tool frame, or why it has none.
fn tool_call_id<'m>(map: &'m Map<String, Value>, frame: &str) -> Result<&'m str, String> {
    match map.get("toolCallId") {
        Some(Value::String(id)) if !id.is_empty() && id.len() <= MAX_ID_BYTES => Ok(id),
        _ => Err(format!(
            "{frame} needs a string `toolCallId` of 1 to {MAX_ID_BYTES} bytes"
        )),
    }
}

/// `cf_agent_tool_result`: a client tool's output (or `"state":"output-error"`) recorded in its
/// call, then, with `autoContinue`, a continuation (chat-protocol.md §8).
async fn tool_result<A: Agent>(
    agent: &mut A,
    cx: &mut Context<A>,
    conn: &Connection,
    map: &Map<String, Value>,
) -> Result<()> {
    let call = match tool_call_id(map, frames::TOOL_RESULT) {
        Ok(call) => call.to_owned(),
        Err(e) => {
            send_error(cx, conn, &e);
            return Ok(());
        }
    };
    let result = match map.get("state").and_then(Value::as_str) {
        Some("output-error") => ToolResult::Error(
            map.get("errorText")
                .and_then(Value::as_str)
                .unwrap_or("The tool failed.")
                .to_owned(),
        ),
        _ => ToolResult::Output(map.get("output").cloned().unwrap_or(Value::Null)),
    };
    let client_tools = match ClientTool::list(map.get("clientTools").cloned()) {
        Ok(tools) => tools,
        Err(e) => {
            send_error(cx, conn, &format!("{}: {e}", frames::TOOL_RESULT));
            return Ok(());
        }
    };
    let recorded = continuation::answer_tool(agent, cx, conn, |stored, streaming| {
        apply_tool_result(stored, streaming, &call, result)
    })?;
    if recorded && auto_continue(map) {
        continuation::continue_after(agent, cx, conn, client_tools).await?;
    }
    Ok(())
}

/// `cf_agent_tool_approval`: a person's answer recorded in the call (approved, or denied), then,
/// with `autoContinue`, a continuation that runs an approved call (chat-protocol.md §9).
async fn tool_approval<A: Agent>(
    agent: &mut A,
    cx: &mut Context<A>,
    conn: &Connection,
    map: &Map<String, Value>,
) -> Result<()> {
    let call = match tool_call_id(map, frames::TOOL_APPROVAL) {
        Ok(call) => call.to_owned(),
        Err(e) => {
            send_error(cx, conn, &e);
            return Ok(());
        }
    };
    let Some(approved) = map.get("approved").and_then(Value::as_bool) else {
        send_error(
            cx,
            conn,
            "cf_agent_tool_approval needs a boolean `approved`",
        );
        return Ok(());
    };
    let recorded = continuation::answer_tool(agent, cx, conn, |stored, streaming| {
        apply_tool_approval(stored, streaming, &call, approved)
    })?;
    if recorded && auto_continue(map) {
        continuation::continue_after(agent, cx, conn, None).await?;
    }
    Ok(())
}

fn auto_continue(map: &Map<String, Value>) -> bool {
    map.get("autoContinue")
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// `cf_agent_chat_messages` from a client (`setMessages`): reconciled and upserted (never
/// deleting), then sent to the other connections.
fn set_messages<A: Agent>(
    cx: &mut Context<A>,
    conn: &Connection,
    map: &mut Map<String, Value>,
) -> Result<()> {
    let messages = match crate::chat::message::messages_from_value(
        map.remove("messages").unwrap_or(Value::Null),
    ) {
        Ok(messages) => messages,
        Err(e) => {
            send_error(cx, conn, &format!("cf_agent_chat_messages refused: {e}"));
            return Ok(());
        }
    };
    store::ensure(cx.storage())?;
    let stored = store::load(cx.storage())?;
    let reconciled = crate::chat::history::reconcile(
        &stored,
        messages,
        crate::chat::history::Trigger::SetMessages,
    );
    let changed = reconciled.upserted.iter().map(String::as_str).collect();
    store::save(cx.storage(), &stored, &reconciled.messages, &changed)?;
    cx.broadcast_json(&frames::messages(&reconciled.messages), &[conn.id.as_str()])?;
    Ok(())
}

/// `…/get-messages` (the last path segment, any method): the transcript as a JSON array.
/// `None` for any other request, or an agent without a chat.
pub(crate) fn get_messages<A: Agent>(
    agent: &mut A,
    cx: &mut Context<A>,
    req: &Request,
) -> Option<Response> {
    agent.chat()?;
    if req.uri().path().rsplit('/').next() != Some("get-messages") {
        return None;
    }
    let loaded = store::ensure(cx.storage()).and_then(|()| store::load(cx.storage()));
    Some(match loaded {
        Ok(messages) => http_util::json(StatusCode::OK, &messages),
        Err(e) => {
            tracing::warn!(error = %e, "could not load the chat transcript");
            // The client reads anything but a 200 as no messages; the body stays an array.
            http_util::json(StatusCode::INTERNAL_SERVER_ERROR, &Vec::<Value>::new())
        }
    })
}
