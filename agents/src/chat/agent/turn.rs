//! A chat turn: started in the agent's turn, its model calls and tools run off the turn, each
//! chunk and the end brought back to the agent as events (chat-protocol.md §5, §10, §12.3).
//! A continuation (§8, §9) is a turn too: asked for by a client tool's result or an approval,
//! it streams into the last assistant message.

use std::collections::{HashSet, VecDeque};

use denizen_runtime::{Result, Stub};
use std::panic::AssertUnwindSafe;

use futures_util::future::{AbortHandle, Abortable, BoxFuture};
use futures_util::{FutureExt, StreamExt};
use rand::Rng;
use serde_json::{Value, json};
use tracing::Instrument;

use super::frames::{self, NoResume, Outcome};
use super::{ChatRun, ChatTurn, Tool, store};
use crate::agent::{Agent, Connection, Context};
use crate::chat::chunk::{Chunk, UiChunk};
use crate::chat::convert::{estimate_tokens, fit_to_budget, to_chat_messages};
use crate::chat::fold::{Applied, MessageBuilder, merge_metadata};
use crate::chat::history::{
    Updated, awaits_client_interaction, reconcile, repair_interrupted_tool_parts, trailing_user_ids,
};
use crate::chat::message::{Part, Role, ToolState, UiMessage};
use crate::chat::model::{DEFAULT_ERROR_TEXT, FinishReason, ModelClient, StepRequest};
use crate::chat::request::{ClientTool, RequestBody};
use crate::chat::wire::{ChatMessage, ToolSpec};
use crate::context::AgentContext;
use crate::host::{AgentHost, Landed};

/// Chunks over this many bytes of JSON are not logged for replay (AIChatAgent's row cap).
const MAX_LOGGED_CHUNK_BYTES: usize = 1_800_000;

/// How long a continuation waits after the result that asked for it, so the results of a batch
/// of parallel calls sent together start one continuation.
const CONTINUATION_DELAY: std::time::Duration = std::time::Duration::from_millis(50);

/// The turns of one agent: the running one and those waiting, in order.
#[derive(Default)]
pub(crate) struct Turns {
    /// Numbers turns, so events of a turn that was cleared away are recognised and dropped.
    serial: u64,
    active: Option<Active>,
    queue: VecDeque<Queued>,
    /// Connections (ids) offered a resume that have not ACKed it: they get no live frames.
    pending: HashSet<String>,
    /// A continuation asked for and not started yet.
    continuation: Option<Scheduled>,
}

/// A continuation waiting to start (chat-protocol.md §8).
pub(crate) struct Scheduled {
    request_id: String,
    /// The connection whose tool result or approval asked for it.
    owner: String,
    /// Connections told it is pending: they are offered its stream when it starts.
    awaiting: HashSet<String>,
    /// The client tools of the frame that asked for it (else the last request's).
    client_tools: Option<Vec<ClientTool>>,
    /// Its coalescing delay has passed.
    ready: bool,
}

/// A checked chat request, waiting for its turn.
pub(crate) struct Queued {
    pub(crate) request_id: String,
    /// The connection id (`_pk`) of the client that sent it.
    pub(crate) sender: String,
    pub(crate) body: RequestBody,
}

/// The running turn.
struct Active {
    serial: u64,
    request_id: String,
    /// The connection that sent the request (or owns the continuation).
    sender: String,
    /// The trailing user messages of the request (none for a continuation).
    message_ids: Option<Vec<String>>,
    continuation: bool,
    /// The reply being streamed.
    builder: MessageBuilder,
    /// The transcript before the reply, as the turn began (tool results may land in it).
    earlier: Vec<UiMessage>,
    /// Ids of the earlier messages the stream changed.
    touched: HashSet<String>,
    seq: u64,
    abort: AbortHandle,
}

/// How the off-turn part of a turn ended.
enum End {
    Completed,
    Aborted,
    Error(String),
}

fn turns<A: Agent>(agent: &mut A) -> Option<&mut Turns> {
    agent.chat().map(|chat| &mut chat.turns)
}

/// Runs `queued` now, or after the turns before it.
pub(crate) async fn submit<A: Agent>(
    agent: &mut A,
    cx: &mut Context<A>,
    queued: Queued,
) -> Result<()> {
    let Some(turns) = turns(agent) else {
        return Ok(());
    };
    turns.queue.push_back(queued);
    advance(agent, cx).await
}

/// What runs next.
enum Next {
    Continuation(Scheduled),
    Request(Queued),
}

/// Whether the last message is an assistant message none of whose calls waits for the client
/// (a batch of parallel calls half answered waits for the rest).
fn can_continue(messages: &[UiMessage]) -> bool {
    messages.last().is_some_and(|last| {
        last.role == Role::Assistant
            && !last.tool_parts().any(|t| {
                matches!(
                    t.state,
                    ToolState::InputStreaming
                        | ToolState::InputAvailable
                        | ToolState::ApprovalRequested
                )
            })
    })
}

/// When no turn runs, starts the next one: a ready continuation, else the oldest waiting
/// request; one that ends before streaming gives way to the next, until one streams.
/// Boxed: a turn's end advances, which spawns the work whose end is handled there.
pub(crate) fn advance<'a, A: Agent>(
    agent: &'a mut A,
    cx: &'a mut Context<A>,
) -> BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        loop {
            let continuable = match turns(agent) {
                Some(t) if t.active.is_none() => t.continuation.as_ref().is_some_and(|c| c.ready),
                _ => return Ok(()),
            };
            let continuable = continuable && {
                store::ensure(cx.storage())?;
                can_continue(&store::load(cx.storage())?)
            };
            let Some(turns) = turns(agent) else {
                return Ok(());
            };
            let next = match turns.continuation.take() {
                Some(c) if continuable => Next::Continuation(c),
                waiting => {
                    turns.continuation = waiting;
                    match turns.queue.pop_front() {
                        Some(queued) => Next::Request(queued),
                        None => return Ok(()),
                    }
                }
            };
            // What came before (the previous turn's reply) is kept if this turn fails to begin.
            cx.commit().await?;
            let (request_id, continuation, begun) = match next {
                Next::Request(queued) => {
                    let id = queued.request_id.clone();
                    (id, false, begin(agent, cx, queued).await)
                }
                Next::Continuation(scheduled) => {
                    let id = scheduled.request_id.clone();
                    (id, true, begin_continuation(agent, cx, scheduled).await)
                }
            };
            match begun {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => {
                    // Never leave the client waiting: its turn ends with the error.
                    tracing::error!(request = %request_id, error = %e, "a chat turn could not begin");
                    cx.rollback()?;
                    let failed = frames::continued(
                        frames::failed(&request_id, &e.to_string()),
                        continuation,
                    );
                    cx.broadcast_json(&failed, &[])?;
                }
            }
        }
    })
}

fn assistant_id() -> String {
    let millis = chrono::Utc::now().timestamp_millis();
    let random: String = rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(10)
        .map(char::from)
        .collect();
    format!("assistant_{millis}_{random}")
}

/// The first half of a turn, in the agent's turn: persist the request's messages, ask the
/// application what to run, start it off the turn. `false` when the turn ended already (its
/// terminal frame is sent).
async fn begin<A: Agent>(agent: &mut A, cx: &mut Context<A>, queued: Queued) -> Result<bool> {
    let Queued {
        request_id,
        sender,
        body,
    } = queued;
    let others = [sender.as_str()];
    cx.broadcast_json(&frames::messages(&body.messages), &others)?;
    store::ensure(cx.storage())?;
    store::forget_last_error(cx.storage())?;
    salvage_orphans(cx)?;
    let stored = store::load(cx.storage())?;
    let message_ids = trailing_user_ids(&body.messages);
    let client_tools = body.client_tools.unwrap_or_default();
    let mut reconciled = reconcile(&stored, body.messages, body.trigger);
    let client_names: Vec<&str> = client_tools.iter().map(|t| t.name.as_str()).collect();
    let repaired = repair_interrupted_tool_parts(&mut reconciled.messages, |tool| {
        awaits_client_interaction(tool, &client_names)
    });
    let mut changed: HashSet<&str> = reconciled.upserted.iter().map(String::as_str).collect();
    changed.extend(repaired.iter().map(|&i| reconciled.messages[i].id.as_str()));
    store::save(cx.storage(), &stored, &reconciled.messages, &changed)?;
    store::set_request_context(
        cx.storage(),
        &store::RequestContext {
            body: body.custom.clone(),
            client_tools: client_tools.clone(),
        },
    )?;
    cx.broadcast_json(&frames::messages(&reconciled.messages), &others)?;
    // A new user turn takes the place of a continuation still waiting: the results it would
    // have sent are in this turn's history.
    if let Some(turns) = turns(agent) {
        turns.continuation = None;
    }

    let turn = ChatTurn {
        request_id: request_id.clone(),
        messages: reconciled.messages.clone(),
        body: body.custom,
        client_tools: client_tools.clone(),
        continuation: false,
    };
    let Some(run) = respond(agent, cx, turn).await? else {
        return Ok(false);
    };
    let messages = request_messages(&run, &reconciled.messages);
    launch(
        agent,
        cx,
        Launch {
            request_id,
            sender,
            message_ids: Some(message_ids),
            continuation: false,
            builder: MessageBuilder::new(assistant_id()),
            earlier: reconciled.messages,
            run,
            client_tools,
            messages,
            approved: Vec::new(),
        },
    )
}

/// Asks the application what turn `turn` runs; `None` when it answered an error (the turn's
/// error frame is sent).
async fn respond<A: Agent>(
    agent: &mut A,
    cx: &mut Context<A>,
    turn: ChatTurn,
) -> Result<Option<ChatRun>> {
    let Some(respond) = agent.chat().map(|chat| chat.respond.clone()) else {
        return Ok(None);
    };
    let request_id = turn.request_id.clone();
    let continuation = turn.continuation;
    match respond(agent, cx, turn).await {
        Ok(mut run) => {
            if run.mcp_tools
                && let Some(mcp) = agent.mcp()
            {
                // The agent's own tools win a name both have.
                for tool in mcp.chat_tools() {
                    if !run.tools.iter().any(|t| t.name() == tool.name()) {
                        run.tools.push(tool);
                    }
                }
            }
            Ok(Some(run))
        }
        Err(e) => {
            tracing::warn!(request = %request_id, error = %e, "the chat agent could not start a turn");
            let failed =
                frames::continued(frames::failed(&request_id, &e.to_string()), continuation);
            cx.broadcast_json(&failed, &[])?;
            Ok(None)
        }
    }
}

/// The model request's messages for `transcript`, within the run's token budget.
fn request_messages(run: &ChatRun, transcript: &[UiMessage]) -> Vec<ChatMessage> {
    let messages = to_chat_messages(run.system.as_deref(), transcript);
    match run.token_budget {
        Some(budget) => fit_to_budget(messages, budget, estimate_tokens),
        None => messages,
    }
}

/// A continuation: the calls answered since the last turn (client tools' results, approvals)
/// go back to the model, whose reply is appended to the last assistant message. `false` when
/// it ended already.
async fn begin_continuation<A: Agent>(
    agent: &mut A,
    cx: &mut Context<A>,
    scheduled: Scheduled,
) -> Result<bool> {
    store::ensure(cx.storage())?;
    store::forget_last_error(cx.storage())?;
    salvage_orphans(cx)?;
    let stored = store::load(cx.storage())?;
    let Some(last) = stored.last().filter(|m| m.role == Role::Assistant).cloned() else {
        return Ok(false);
    };
    let context = store::request_context(cx.storage())?;
    let client_tools = scheduled.client_tools.unwrap_or(context.client_tools);
    let turn = ChatTurn {
        request_id: scheduled.request_id.clone(),
        messages: stored.clone(),
        body: context.body,
        client_tools: client_tools.clone(),
        continuation: true,
    };
    let Some(run) = respond(agent, cx, turn).await? else {
        return Ok(false);
    };
    // Approved calls of the agent's own tools run first; until they have, the request carries
    // a placeholder result in their place.
    let mut transcript = stored.clone();
    let mut approved = Vec::new();
    if let Some(message) = transcript.last_mut() {
        for part in &mut message.parts {
            let Part::Tool(tool) = part else { continue };
            let approved_call = tool.state == ToolState::ApprovalResponded
                && tool.approval.as_ref().and_then(|a| a.approved) == Some(true);
            if let (true, Some(runner)) = (
                approved_call,
                run.tools.iter().find(|t| t.name() == tool.tool_name),
            ) {
                approved.push(Approved {
                    tool_call_id: tool.tool_call_id.clone(),
                    tool: runner.clone(),
                    input: tool.input.clone().unwrap_or(Value::Null),
                });
                tool.state = ToolState::OutputAvailable;
                tool.output = Some(Value::Null);
            }
        }
    }
    let messages = request_messages(&run, &transcript);
    store::set_continues(cx.storage(), &scheduled.request_id, &last.id)?;
    let earlier = stored[..stored.len() - 1].to_vec();
    let request_id = scheduled.request_id.clone();
    let launched = launch(
        agent,
        cx,
        Launch {
            request_id: request_id.clone(),
            sender: scheduled.owner,
            message_ids: None,
            continuation: true,
            builder: MessageBuilder::continuing(last),
            earlier,
            run,
            client_tools,
            messages,
            approved,
        },
    )?;
    // Those waiting for it are offered its stream (they ACK, then get it live).
    for id in scheduled.awaiting {
        if let Some(conn) = cx.connection(&id) {
            if let Some(turns) = turns(agent) {
                turns.pending.insert(id);
            }
            cx.send_json(&conn, &frames::resuming(&request_id, None))?;
        }
    }
    Ok(launched)
}

/// An approved call to run before the continuation's model call.
struct Approved {
    tool_call_id: String,
    tool: Tool,
    input: Value,
}

/// A turn ready to run.
struct Launch {
    request_id: String,
    sender: String,
    message_ids: Option<Vec<String>>,
    continuation: bool,
    builder: MessageBuilder,
    earlier: Vec<UiMessage>,
    run: ChatRun,
    client_tools: Vec<ClientTool>,
    messages: Vec<ChatMessage>,
    approved: Vec<Approved>,
}

/// Makes `launch` the running turn and starts its model calls off the turn.
fn launch<A: Agent>(agent: &mut A, cx: &mut Context<A>, launch: Launch) -> Result<bool> {
    let Launch {
        request_id,
        sender,
        message_ids,
        continuation,
        builder,
        earlier,
        run,
        client_tools,
        messages,
        approved,
    } = launch;
    let mut specs: Vec<ToolSpec> = run.tools.iter().map(|t| t.spec().clone()).collect();
    specs.extend(client_tools.iter().map(|t| {
        ToolSpec {
            name: t.name.clone(),
            description: t.description.clone().unwrap_or_default(),
            parameters: t
                .parameters
                .clone()
                .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
        }
    }));
    let runtime = cx.runtime();
    runtime.metrics().chat_turns.inc();
    let stub = cx
        .runtime()
        .namespace::<AgentHost<A>>(cx.namespace())?
        .get(cx.id().clone());
    let Some(turns) = turns(agent) else {
        return Ok(false);
    };
    turns.serial += 1;
    let serial = turns.serial;
    let (abort, registration) = AbortHandle::new_pair();
    turns.active = Some(Active {
        serial,
        request_id: request_id.clone(),
        sender,
        message_ids,
        continuation,
        builder,
        earlier,
        touched: HashSet::new(),
        seq: 0,
        abort,
    });
    let work = run_model::<A>(
        stub,
        serial,
        Model {
            client: run.model,
            messages,
            specs,
            tools: run.tools,
            max_steps: run.max_steps,
            approved,
            runtime,
        },
    );
    let span = tracing::info_span!("chat turn", request = %request_id, continuation);
    cx.spawn(
        async move {
            // A panic in the work (a tool's, say) must still end the turn, or its client waits
            // and the turns queued behind it never run.
            let end = match AssertUnwindSafe(Abortable::new(work, registration))
                .catch_unwind()
                .await
            {
                Ok(Ok(end)) => end,
                Ok(Err(_aborted)) => End::Aborted,
                Err(panic) => {
                    tracing::error!(message = %panic_text(&*panic), "a chat turn panicked");
                    End::Error(DEFAULT_ERROR_TEXT.into())
                }
            };
            Landed::on_agent(move |a: &mut A, cx: &mut Context<A>| {
                Box::pin(finish(a, cx, serial, end))
            })
        }
        .instrument(span),
    );
    Ok(true)
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".to_string())
}

/// Delivers one chunk of turn `serial` to the agent; `false` if the agent is gone.
async fn emit<A: Agent>(stub: &Stub<AgentHost<A>>, serial: u64, chunk: Chunk) -> bool {
    let event = Landed::on_agent(move |a: &mut A, cx: &mut Context<A>| {
        Box::pin(on_chunk(a, cx, serial, chunk))
    });
    match stub.call(event).await {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(error = %e, "the chat agent is gone; the turn stops");
            false
        }
    }
}

/// What the off-turn part of a turn runs.
struct Model {
    client: ModelClient,
    messages: Vec<ChatMessage>,
    specs: Vec<ToolSpec>,
    tools: Vec<Tool>,
    max_steps: usize,
    /// Approved calls to run first (a continuation's).
    approved: Vec<Approved>,
    /// For its metrics.
    runtime: denizen_runtime::Runtime,
}

/// Runs a server tool, a panic included: its output chunk and the result the model gets.
async fn run_tool(tool: &Tool, tool_call_id: &str, input: Value) -> (Chunk, String) {
    let ran = AssertUnwindSafe(tool.call(input))
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| {
            let text = format!("the tool panicked: {}", panic_text(&*panic));
            tracing::error!(tool = %tool.name(), "{text}");
            Err(text)
        });
    match ran {
        Ok(output) => {
            let content = match &output {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let chunk = Chunk::ToolOutputAvailable {
                tool_call_id: tool_call_id.to_owned(),
                output,
                preliminary: None,
            };
            (chunk, content)
        }
        Err(text) => {
            let chunk = Chunk::ToolOutputError {
                tool_call_id: tool_call_id.to_owned(),
                error_text: text.clone(),
            };
            (chunk, text)
        }
    }
}

/// The off-turn part of a turn: the approved calls of a continuation, then the model calls and
/// the tool loop (chat-protocol.md §9, §12.3).
async fn run_model<A: Agent>(stub: Stub<AgentHost<A>>, serial: u64, model: Model) -> End {
    let Model {
        client,
        mut messages,
        specs,
        tools,
        max_steps,
        approved,
        runtime,
    } = model;
    let metrics = runtime.metrics();
    if !emit(
        &stub,
        serial,
        Chunk::Start {
            message_id: None,
            message_metadata: None,
        },
    )
    .await
    {
        return End::Aborted;
    }
    for call in approved {
        let (chunk, content) = run_tool(&call.tool, &call.tool_call_id, call.input).await;
        if !emit(&stub, serial, chunk).await {
            return End::Aborted;
        }
        for message in &mut messages {
            if let ChatMessage::Tool {
                tool_call_id,
                content: slot,
            } = message
                && *tool_call_id == call.tool_call_id
            {
                *slot = content.clone();
            }
        }
    }
    let mut finish = FinishReason::Stop;
    for _ in 0..max_steps.max(1) {
        let mut step = client.step(StepRequest::new(messages.clone(), specs.clone()));
        let mut error_text = None;
        // `finish-step` waits for the step's tool results, which belong to the step.
        let mut finish_step = None;
        while let Some(chunk) = step.next().await {
            match chunk {
                Chunk::Error { error_text: text } => error_text = Some(text),
                Chunk::FinishStep => finish_step = Some(Chunk::FinishStep),
                chunk => {
                    if !emit(&stub, serial, chunk).await {
                        return End::Aborted;
                    }
                }
            }
        }
        let Some(outcome) = step.into_outcome() else {
            metrics.chat_model_errors.inc();
            return End::Error(error_text.unwrap_or_else(|| DEFAULT_ERROR_TEXT.into()));
        };
        if let Some(usage) = &outcome.usage {
            metrics.chat_prompt_tokens.inc_by(usage.prompt_tokens);
            metrics
                .chat_completion_tokens
                .inc_by(usage.completion_tokens);
        }
        if let Some(ttft) = outcome.time_to_first_token {
            metrics.chat_first_token.observe(ttft);
        }
        if let Some(e) = &outcome.error {
            metrics.chat_model_errors.inc();
            tracing::warn!(error = %e, "the model call failed");
            return End::Error(error_text.unwrap_or_else(|| DEFAULT_ERROR_TEXT.into()));
        }
        finish = outcome.finish_reason;
        if outcome.tool_calls.is_empty()
            || !matches!(finish, FinishReason::Stop | FinishReason::ToolCalls)
        {
            if let Some(chunk) = finish_step
                && !emit(&stub, serial, chunk).await
            {
                return End::Aborted;
            }
            break;
        }
        let mut results = Vec::new();
        let mut all_answered = true;
        for call in &outcome.tool_calls {
            let content = if let Some(error) = &call.error {
                error.clone()
            } else if let Some(tool) = tools.iter().find(|t| t.name() == call.name) {
                if tool.requires_approval() {
                    // A person answers first; the call runs in the continuation after.
                    all_answered = false;
                    let chunk = Chunk::ToolApprovalRequest {
                        approval_id: approval_id(),
                        tool_call_id: call.id.clone(),
                    };
                    if !emit(&stub, serial, chunk).await {
                        return End::Aborted;
                    }
                    continue;
                }
                let (chunk, content) = run_tool(tool, &call.id, call.input.clone()).await;
                if !emit(&stub, serial, chunk).await {
                    return End::Aborted;
                }
                content
            } else {
                // A client tool: the client runs it once the turn has ended.
                all_answered = false;
                continue;
            };
            results.push(ChatMessage::Tool {
                tool_call_id: call.id.clone(),
                content,
            });
        }
        if let Some(chunk) = finish_step
            && !emit(&stub, serial, chunk).await
        {
            return End::Aborted;
        }
        if !all_answered {
            break;
        }
        messages.push(outcome.assistant_message());
        messages.extend(results);
    }
    let finished = emit(
        &stub,
        serial,
        Chunk::Finish {
            finish_reason: Some(finish.as_str().to_string()),
            message_metadata: None,
        },
    )
    .await;
    if finished {
        End::Completed
    } else {
        End::Aborted
    }
}

fn approval_id() -> String {
    let random: String = rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(16)
        .map(char::from)
        .collect();
    format!("approval_{random}")
}

/// A chunk of turn `serial`, in the agent: rewritten (`start` gets the message id, `finish`
/// carries its reason in the metadata), folded into the reply, logged and sent to every
/// connection.
async fn on_chunk<A: Agent>(
    agent: &mut A,
    cx: &mut Context<A>,
    serial: u64,
    chunk: Chunk,
) -> Result<()> {
    let Some(turns) = turns(agent) else {
        return Ok(());
    };
    let Some(active) = turns.active.as_mut().filter(|a| a.serial == serial) else {
        return Ok(());
    };
    let chunk = match chunk {
        // A continuation appends to a message the client has: no id, or it would start anew.
        Chunk::Start {
            message_metadata, ..
        } => Chunk::Start {
            message_id: (!active.continuation).then(|| active.builder.message().id.clone()),
            message_metadata,
        },
        Chunk::Finish {
            finish_reason,
            mut message_metadata,
        } => {
            if let Some(reason) = finish_reason {
                merge_metadata(&mut message_metadata, &json!({ "finishReason": reason }));
            }
            Chunk::Finish {
                finish_reason: None,
                message_metadata,
            }
        }
        other => other,
    };
    let chunk = UiChunk::Known(chunk);
    match active.builder.apply(&chunk, &mut active.earlier) {
        Err(e) => {
            tracing::warn!(error = %e, "a chunk the client could not fold is not sent");
            return Ok(());
        }
        Ok(Applied::Replayed) => return Ok(()),
        Ok(Applied::Earlier(i)) => {
            active.touched.insert(active.earlier[i].id.clone());
        }
        Ok(Applied::Message | Applied::Nothing) => {}
    }
    let body = serde_json::to_string(&chunk)
        .map_err(|e| denizen_runtime::Error::msg(format!("could not encode a chunk: {e}")))?;
    let request_id = active.request_id.clone();
    // A chunk too large for a row is sent but not logged (a replay skips it), as AIChatAgent does.
    let seq = (body.len() <= MAX_LOGGED_CHUNK_BYTES).then(|| {
        active.seq += 1;
        active.seq - 1
    });
    if let Some(seq) = seq {
        store::log_chunk(cx.storage(), &request_id, seq, &body)?;
    }
    let pending: Vec<&str> = turns.pending.iter().map(String::as_str).collect();
    let frame = frames::continued(frames::chunk(&request_id, body, seq), active.continuation);
    cx.broadcast_json(&frame, &pending)?;
    Ok(())
}

/// Persists what turn `active` built: its reply (if it has any content) and the earlier
/// messages the stream changed. `true` if anything was written.
fn persist(
    cx: &mut Context<impl Agent>,
    active: &Active,
    reply: &UiMessage,
    error: Option<&str>,
) -> Result<bool> {
    let has_content = reply.parts.iter().any(|p| !matches!(p, Part::StepStart));
    let stored = store::load(cx.storage())?;
    let mut messages = stored.clone();
    let mut changed: HashSet<&str> = HashSet::new();
    for earlier in active
        .earlier
        .iter()
        .filter(|m| active.touched.contains(&m.id))
    {
        if let Some(slot) = messages.iter_mut().find(|m| m.id == earlier.id) {
            *slot = earlier.clone();
            changed.insert(earlier.id.as_str());
        }
    }
    if has_content {
        match messages.iter_mut().find(|m| m.id == reply.id) {
            Some(slot) => *slot = reply.clone(),
            None => messages.push(reply.clone()),
        }
        changed.insert(reply.id.as_str());
    }
    store::save(cx.storage(), &stored, &messages, &changed)?;
    match error {
        // Its log stays, to replay with the error to clients that probe.
        Some(text) => store::set_last_error(cx.storage(), &active.request_id, text)?,
        None => store::drop_log(cx.storage(), &active.request_id)?,
    }
    // A continuation's client streamed into a new local message that only this frame folds
    // back into the one continued, so its owner gets it too (chat-protocol.md §14.6).
    let except: &[&str] = match active.continuation {
        true => &[],
        false => &[active.sender.as_str()],
    };
    if !changed.is_empty() || active.continuation {
        cx.broadcast_json(&frames::messages(&messages), except)?;
    }
    Ok(!changed.is_empty())
}

/// The end of turn `serial`, in the agent: the reply persisted and `chat_messages` sent before
/// the held terminal frames; then the next waiting turn starts.
async fn finish<A: Agent>(agent: &mut A, cx: &mut Context<A>, serial: u64, end: End) -> Result<()> {
    let Some(state) = turns(agent) else {
        return Ok(());
    };
    if state.active.as_ref().map(|a| a.serial) != Some(serial) {
        // Cleared away: its frames were sent then.
        return Ok(());
    }
    let Some(mut active) = state.active.take() else {
        return Ok(());
    };
    // The offers were for this stream.
    state.pending.clear();
    let builder = std::mem::replace(&mut active.builder, MessageBuilder::new(""));
    let reply = builder.into_message();
    let id = active.request_id.clone();
    let ids = active.message_ids.clone();
    let ids = ids.as_deref();
    let continuation = active.continuation;
    let error = match &end {
        End::Error(text) => Some(text.as_str()),
        _ => None,
    };
    let frames = match persist(cx, &active, &reply, error) {
        Ok(_) => match end {
            End::Completed => vec![frames::done(&id, ids, Outcome::Completed)],
            End::Aborted => vec![frames::done(&id, ids, Outcome::Aborted)],
            End::Error(text) => vec![
                frames::stream_error(&id, &text, ids),
                frames::done(&id, ids, Outcome::Error),
            ],
        },
        Err(e) => {
            tracing::error!(request = %id, error = %e, "could not persist the chat reply");
            cx.rollback()?;
            vec![frames::failed(&id, "Failed to save the response.")]
        }
    };
    for frame in frames {
        cx.broadcast_json(&frames::continued(frame, continuation), &[])?;
    }
    advance(agent, cx).await
}

/// `cf_agent_chat_request_cancel`: the running turn is aborted (it ends with `outcome:"aborted"`
/// once its task has stopped); a waiting one is dropped and ended at once.
pub(crate) fn cancel<A: Agent>(agent: &mut A, cx: &mut Context<A>, id: &str) -> Result<()> {
    let Some(turns) = turns(agent) else {
        return Ok(());
    };
    if let Some(active) = turns.active.as_ref().filter(|a| a.request_id == id) {
        active.abort.abort();
        return Ok(());
    }
    if let Some(pos) = turns.queue.iter().position(|q| q.request_id == id)
        && let Some(queued) = turns.queue.remove(pos)
    {
        let ids = trailing_user_ids(&queued.body.messages);
        if let Some(conn) = cx.connection(&queued.sender) {
            cx.send_json(&conn, &frames::done(id, Some(&ids), Outcome::Aborted))?;
        }
        return Ok(());
    }
    if turns
        .continuation
        .as_ref()
        .is_some_and(|c| c.request_id == id)
    {
        turns.continuation = None;
        let done = frames::continued(frames::done(id, None, Outcome::Aborted), true);
        cx.broadcast_json(&done, &[])?;
    }
    Ok(())
}

/// `cf_agent_chat_clear`: every turn aborted and ended, the transcript and stream logs deleted,
/// the other connections told.
pub(crate) fn clear<A: Agent>(agent: &mut A, cx: &mut Context<A>, conn: &Connection) -> Result<()> {
    let Some(turns) = turns(agent) else {
        return Ok(());
    };
    let mut ended = Vec::new();
    if let Some(active) = turns.active.take() {
        active.abort.abort();
        let done = frames::done(
            &active.request_id,
            active.message_ids.as_deref(),
            Outcome::Aborted,
        );
        ended.push(frames::continued(done, active.continuation));
    }
    turns.pending.clear();
    for queued in turns.queue.drain(..) {
        let ids = trailing_user_ids(&queued.body.messages);
        ended.push(frames::done(
            &queued.request_id,
            Some(&ids),
            Outcome::Aborted,
        ));
    }
    if let Some(scheduled) = turns.continuation.take() {
        let done = frames::done(&scheduled.request_id, None, Outcome::Aborted);
        ended.push(frames::continued(done, true));
    }
    for frame in ended {
        cx.broadcast_json(&frame, &[])?;
    }
    store::ensure(cx.storage())?;
    store::clear(cx.storage())?;
    cx.broadcast_json(&frames::clear(), &[conn.id.as_str()])?;
    Ok(())
}

/// The stream a client may resume: the running turn's, or one whose producer is gone (its
/// log outlived a crash).
fn resumable<A: Agent>(agent: &mut A, cx: &mut Context<A>) -> Result<Option<String>> {
    if let Some(active) = turns(agent).and_then(|t| t.active.as_ref()) {
        return Ok(Some(active.request_id.clone()));
    }
    store::ensure(cx.storage())?;
    if let Some((request_id, _)) = store::last_error(cx.storage())? {
        return Ok(Some(request_id));
    }
    store::logged_stream(cx.storage())
}

/// Offers `conn` the resumable stream, if any (it then gets no live frames until it ACKs);
/// `false` if there is none.
pub(crate) fn offer<A: Agent>(
    agent: &mut A,
    cx: &mut Context<A>,
    conn: &Connection,
    probe_id: Option<&str>,
) -> Result<bool> {
    let Some(id) = resumable(agent, cx)? else {
        return Ok(false);
    };
    if let Some(turns) = turns(agent) {
        turns.pending.insert(conn.id.clone());
    }
    cx.send_json(conn, &frames::resuming(&id, probe_id))?;
    Ok(true)
}

/// `cf_agent_stream_resume_request`: the stream offered, or `resume_none` (idle).
pub(crate) fn resume_request<A: Agent>(
    agent: &mut A,
    cx: &mut Context<A>,
    conn: &Connection,
    probe_id: Option<&str>,
) -> Result<()> {
    let Some(turns) = turns(agent) else {
        return Ok(());
    };
    match (&turns.active, &mut turns.continuation) {
        // A continuation streams into its owner's new local message; another open
        // connection owns it.
        (Some(active), _)
            if active.continuation
                && active.sender != conn.id
                && cx.connection(&active.sender).is_some() =>
        {
            let none = frames::resume_none(probe_id, NoResume::ContinuationOwned);
            cx.send_json(conn, &none)?;
            return Ok(());
        }
        (None, Some(scheduled)) => {
            scheduled.awaiting.insert(conn.id.clone());
            let pending = frames::stream_pending(&scheduled.request_id, probe_id);
            cx.send_json(conn, &pending)?;
            return Ok(());
        }
        _ => {}
    }
    if !offer(agent, cx, conn, probe_id)? {
        cx.send_json(conn, &frames::resume_none(probe_id, NoResume::Idle))?;
    }
    Ok(())
}

/// A connection is set up: offered the running (or crashed) stream, or told that a
/// continuation is about to start.
pub(crate) fn on_connect<A: Agent>(
    agent: &mut A,
    cx: &mut Context<A>,
    conn: &Connection,
) -> Result<()> {
    if let Some(turns) = turns(agent)
        && turns.active.is_none()
        && let Some(scheduled) = &mut turns.continuation
    {
        scheduled.awaiting.insert(conn.id.clone());
        let pending = frames::stream_pending(&scheduled.request_id, None);
        cx.send_json(conn, &pending)?;
        return Ok(());
    }
    offer(agent, cx, conn, None)?;
    Ok(())
}

/// Applies a client's answer to a tool call (a result, an approval) with `apply`: to the
/// streaming reply if it has the call, else to the stored message, which is saved. Every
/// connection gets the message as it is now (`cf_agent_message_updated`). `false` when nothing
/// changed (the call was answered already) or the call is unknown (the sender is told).
pub(crate) fn answer_tool<A: Agent>(
    agent: &mut A,
    cx: &mut Context<A>,
    conn: &Connection,
    apply: impl FnOnce(
        &mut [UiMessage],
        Option<&mut UiMessage>,
    ) -> crate::chat::message::Result<Updated>,
) -> Result<bool> {
    store::ensure(cx.storage())?;
    let mut stored = store::load(cx.storage())?;
    let Some(turns) = turns(agent) else {
        return Ok(false);
    };
    let streaming = turns.active.as_mut().map(|a| a.builder.message_mut());
    let updated = match apply(&mut stored, streaming) {
        Ok(updated) => updated,
        Err(e) => {
            cx.send(conn.ws, crate::protocol::error(&e.to_string()).to_string());
            return Ok(false);
        }
    };
    let message = match updated {
        Updated::Unchanged => return Ok(false),
        Updated::Streaming => match &turns.active {
            Some(active) => active.builder.message().clone(),
            None => return Ok(false),
        },
        Updated::Stored(i) => {
            let message = stored[i].clone();
            let changed = HashSet::from([message.id.as_str()]);
            store::save(cx.storage(), &stored, &stored, &changed)?;
            // The running turn's copy of the transcript must not write the old one back.
            if let Some(active) = &mut turns.active
                && let Some(copy) = active.earlier.iter_mut().find(|m| m.id == message.id)
            {
                *copy = message.clone();
            }
            message
        }
    };
    cx.broadcast_json(&frames::message_updated(&message), &[])?;
    Ok(true)
}

/// Asks for a continuation owned by `conn` (or adds `conn` to those awaiting the one asked for
/// already); it starts after a short delay, once no turn runs and no call of the last message
/// waits for the client.
pub(crate) async fn continue_after<A: Agent>(
    agent: &mut A,
    cx: &mut Context<A>,
    conn: &Connection,
    client_tools: Option<Vec<ClientTool>>,
) -> Result<()> {
    let Some(state) = turns(agent) else {
        return Ok(());
    };
    if let Some(scheduled) = &mut state.continuation {
        scheduled.awaiting.insert(conn.id.clone());
        if client_tools.is_some() {
            scheduled.client_tools = client_tools;
        }
        // A result completing a batch lets a ready continuation start.
        return advance(agent, cx).await;
    }
    let request_id = continuation_id();
    state.continuation = Some(Scheduled {
        request_id: request_id.clone(),
        owner: conn.id.clone(),
        awaiting: HashSet::from([conn.id.clone()]),
        client_tools,
        ready: false,
    });
    cx.spawn(async move {
        tokio::time::sleep(CONTINUATION_DELAY).await;
        Landed::on_agent(move |a: &mut A, cx: &mut Context<A>| {
            Box::pin(async move {
                match turns(a).and_then(|t| t.continuation.as_mut()) {
                    Some(scheduled) if scheduled.request_id == request_id => {
                        scheduled.ready = true;
                        advance(a, cx).await
                    }
                    _ => Ok(()),
                }
            })
        })
    });
    Ok(())
}

fn continuation_id() -> String {
    let random: String = rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(12)
        .map(char::from)
        .collect();
    format!("continuation_{random}")
}

/// `cf_agent_stream_resume_ack`: the stream's chunks replayed from seq 0, then live frames
/// (the running turn), or the end of a stream nobody produces any more (its partial reply
/// persisted), or a plain end when there is nothing to replay.
pub(crate) fn resume_ack<A: Agent>(
    agent: &mut A,
    cx: &mut Context<A>,
    conn: &Connection,
    id: &str,
) -> Result<()> {
    let Some(turns) = turns(agent) else {
        return Ok(());
    };
    turns.pending.remove(&conn.id);
    let running = turns.active.as_ref().is_some_and(|a| a.request_id == id);
    let running_other = turns.active.is_some() && !running;
    store::ensure(cx.storage())?;
    let continues = store::continues(cx.storage(), id)?;
    let flag = |frame: Value| frames::continued(frame, continues.is_some());
    let log = if running_other {
        Vec::new()
    } else {
        store::log(cx.storage(), id)?
    };
    let error = match running {
        true => None,
        false => store::last_error(cx.storage())?.filter(|(r, _)| r == id),
    };
    if !running && error.is_none() && log.is_empty() {
        cx.send_json(conn, &flag(frames::replay_done(id, false)))?;
        return Ok(());
    }
    let chunks: Vec<UiChunk> = log
        .iter()
        .filter_map(|(_, body)| serde_json::from_str(body).ok())
        .collect();
    for (seq, body) in log {
        cx.send_json(conn, &flag(frames::replayed(id, body, seq)))?;
    }
    if running {
        cx.send_json(conn, &flag(frames::replay_complete(id)))?;
        return Ok(());
    }
    if let Some((_, text)) = error {
        cx.send_json(conn, &flag(frames::failed(id, &text)))?;
        return Ok(());
    }
    // Nobody produces this stream any more: persist what it built, and end it.
    salvage(cx, id, continues.as_deref(), &chunks, &[conn.id.as_str()])?;
    cx.send_json(conn, &flag(frames::replay_done(id, true)))?;
    Ok(())
}

/// Persists the reply a stream's logged `chunks` built, for a stream nobody produces any more
/// (its turn's process died), and drops its log; the transcript goes to every connection but
/// `except` if it changed.
fn salvage(
    cx: &mut Context<impl Agent>,
    id: &str,
    continues: Option<&str>,
    chunks: &[UiChunk],
    except: &[&str],
) -> Result<()> {
    let stored = store::load(cx.storage())?;
    let mut messages = stored.clone();
    // A continuation's chunks go on from the message it continued.
    let base = continues
        .and_then(|continued| stored.iter().find(|m| m.id == continued).cloned())
        .unwrap_or_else(|| UiMessage::new("", Role::Assistant));
    let reply = MessageBuilder::rebuild(base, chunks, &mut messages);
    let mut changed: HashSet<String> = messages
        .iter()
        .zip(&stored)
        .filter(|(now, before)| now != before)
        .map(|(now, _)| now.id.clone())
        .collect();
    let has_content = reply.parts.iter().any(|p| !matches!(p, Part::StepStart));
    if has_content && !reply.id.is_empty() {
        match messages.iter().position(|m| m.id == reply.id) {
            Some(i) => messages[i] = reply.clone(),
            None => messages.push(reply.clone()),
        }
        changed.insert(reply.id.clone());
    }
    let changed: HashSet<&str> = changed.iter().map(String::as_str).collect();
    store::save(cx.storage(), &stored, &messages, &changed)?;
    store::drop_log(cx.storage(), id)?;
    if !changed.is_empty() {
        cx.broadcast_json(&frames::messages(&messages), except)?;
    }
    Ok(())
}

/// Before a new turn: the partial replies of streams cut by a crash that no client came back
/// to resume are persisted, so the new turn's history has them.
fn salvage_orphans(cx: &mut Context<impl Agent>) -> Result<()> {
    while let Some(id) = store::logged_stream(cx.storage())? {
        let continues = store::continues(cx.storage(), &id)?;
        let chunks: Vec<UiChunk> = store::log(cx.storage(), &id)?
            .iter()
            .filter_map(|(_, body)| serde_json::from_str(body).ok())
            .collect();
        tracing::info!(request = %id, "persisting the partial reply of a stream cut by a restart");
        salvage(cx, &id, continues.as_deref(), &chunks, &[])?;
    }
    Ok(())
}
