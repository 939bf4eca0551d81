//! A chat turn: started in the agent's turn, its model calls and tools run off the turn, each
//! chunk and the end brought back to the agent as events (chat-protocol.md §5, §10, §12.3).

use std::collections::{HashSet, VecDeque};

use denizen_runtime::{Result, Stub};
use std::panic::AssertUnwindSafe;

use futures_util::future::{AbortHandle, Abortable, BoxFuture};
use futures_util::{FutureExt, StreamExt};
use rand::Rng;
use serde_json::{Value, json};
use tracing::Instrument;

use super::frames::{self, Outcome};
use super::{ChatRun, ChatTurn, Tool, store};
use crate::agent::{Agent, Connection, Context};
use crate::chat::chunk::{Chunk, UiChunk};
use crate::chat::convert::{estimate_tokens, fit_to_budget, to_chat_messages};
use crate::chat::fold::{Applied, MessageBuilder, merge_metadata};
use crate::chat::history::{
    awaits_client_interaction, reconcile, repair_interrupted_tool_parts, trailing_user_ids,
};
use crate::chat::message::{Part, UiMessage};
use crate::chat::model::{DEFAULT_ERROR_TEXT, FinishReason, ModelClient, StepRequest};
use crate::chat::request::RequestBody;
use crate::chat::wire::{ChatMessage, ToolSpec};
use crate::context::AgentContext;
use crate::host::{AgentHost, Landed};

/// Chunks over this many bytes of JSON are not logged for replay (AIChatAgent's row cap).
const MAX_LOGGED_CHUNK_BYTES: usize = 1_800_000;

/// The turns of one agent: the running one and those waiting, in order.
#[derive(Default)]
pub(crate) struct Turns {
    /// Numbers turns, so events of a turn that was cleared away are recognised and dropped.
    serial: u64,
    active: Option<Active>,
    queue: VecDeque<Queued>,
    /// Connections (ids) offered a resume that have not ACKed it: they get no live frames.
    pending: HashSet<String>,
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
    sender: String,
    message_ids: Vec<String>,
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
    if turns.active.is_some() || !turns.queue.is_empty() {
        turns.queue.push_back(queued);
        return Ok(());
    }
    start(agent, cx, queued).await
}

/// Starts `queued`, or, if it ends before streaming, the next waiting turn, until one streams.
/// Boxed: a turn's end starts the next one, which spawns the work whose end is handled there.
fn start<'a, A: Agent>(
    agent: &'a mut A,
    cx: &'a mut Context<A>,
    mut queued: Queued,
) -> BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        loop {
            // What came before (the previous turn's reply) is kept if this turn fails to begin.
            cx.commit().await?;
            let request_id = queued.request_id.clone();
            match begin(agent, cx, queued).await {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => {
                    // Never leave the client waiting: its turn ends with the error.
                    tracing::error!(request = %request_id, error = %e, "a chat turn could not begin");
                    cx.rollback()?;
                    cx.broadcast_json(&frames::failed(&request_id, &e.to_string()), &[])?;
                }
            }
            match turns(agent).and_then(|t| t.queue.pop_front()) {
                Some(next) => queued = next,
                None => return Ok(()),
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
    cx.broadcast_json(&frames::messages(&reconciled.messages), &others)?;

    let Some(respond) = agent.chat().map(|chat| chat.respond.clone()) else {
        return Ok(false);
    };
    let turn = ChatTurn {
        request_id: request_id.clone(),
        messages: reconciled.messages.clone(),
        body: body.custom,
        client_tools: client_tools.clone(),
    };
    let run: ChatRun = match respond(agent, cx, turn).await {
        Ok(run) => run,
        Err(e) => {
            tracing::warn!(request = %request_id, error = %e, "the chat agent could not start a turn");
            cx.broadcast_json(&frames::failed(&request_id, &e.to_string()), &[])?;
            return Ok(false);
        }
    };

    let mut messages = to_chat_messages(run.system.as_deref(), &reconciled.messages);
    if let Some(budget) = run.token_budget {
        messages = fit_to_budget(messages, budget, estimate_tokens);
    }
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
        builder: MessageBuilder::new(assistant_id()),
        earlier: reconciled.messages,
        touched: HashSet::new(),
        seq: 0,
        abort,
    });
    let work = run_model::<A>(
        stub,
        serial,
        run.model,
        messages,
        specs,
        run.tools,
        run.max_steps,
    );
    let span = tracing::info_span!("chat turn", request = %request_id);
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

/// The off-turn part of a turn: the model calls and the tool loop (chat-protocol.md §12.3).
async fn run_model<A: Agent>(
    stub: Stub<AgentHost<A>>,
    serial: u64,
    model: ModelClient,
    mut messages: Vec<ChatMessage>,
    specs: Vec<ToolSpec>,
    tools: Vec<Tool>,
    max_steps: usize,
) -> End {
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
    let mut finish = FinishReason::Stop;
    for _ in 0..max_steps.max(1) {
        let mut step = model.step(StepRequest::new(messages.clone(), specs.clone()));
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
            return End::Error(error_text.unwrap_or_else(|| DEFAULT_ERROR_TEXT.into()));
        };
        if let Some(e) = &outcome.error {
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
                let ran = AssertUnwindSafe(tool.call(call.input.clone()))
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|panic| {
                        let text = format!("the tool panicked: {}", panic_text(&*panic));
                        tracing::error!(tool = %call.name, "{text}");
                        Err(text)
                    });
                let (chunk, content) = match ran {
                    Ok(output) => {
                        let content = match &output {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        let chunk = Chunk::ToolOutputAvailable {
                            tool_call_id: call.id.clone(),
                            output,
                            preliminary: None,
                        };
                        (chunk, content)
                    }
                    Err(text) => {
                        let chunk = Chunk::ToolOutputError {
                            tool_call_id: call.id.clone(),
                            error_text: text.clone(),
                        };
                        (chunk, text)
                    }
                };
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
        Chunk::Start {
            message_metadata, ..
        } => Chunk::Start {
            message_id: Some(active.builder.message().id.clone()),
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
    cx.broadcast_json(&frames::chunk(&request_id, body, seq), &pending)?;
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
    if !changed.is_empty() {
        cx.broadcast_json(&frames::messages(&messages), &[active.sender.as_str()])?;
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
    let error = match &end {
        End::Error(text) => Some(text.as_str()),
        _ => None,
    };
    match persist(cx, &active, &reply, error) {
        Ok(_) => match end {
            End::Completed => {
                cx.broadcast_json(&frames::done(&id, &ids, Outcome::Completed), &[])?
            }
            End::Aborted => cx.broadcast_json(&frames::done(&id, &ids, Outcome::Aborted), &[])?,
            End::Error(text) => {
                cx.broadcast_json(&frames::stream_error(&id, &text, &ids), &[])?;
                cx.broadcast_json(&frames::done(&id, &ids, Outcome::Error), &[])?;
            }
        },
        Err(e) => {
            tracing::error!(request = %id, error = %e, "could not persist the chat reply");
            cx.rollback()?;
            cx.broadcast_json(&frames::failed(&id, "Failed to save the response."), &[])?;
        }
    }
    if let Some(next) = turns(agent).and_then(|t| t.queue.pop_front()) {
        start(agent, cx, next).await?;
    }
    Ok(())
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
            cx.send_json(&conn, &frames::done(id, &ids, Outcome::Aborted))?;
        }
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
        ended.push((active.request_id, active.message_ids));
    }
    turns.pending.clear();
    for queued in turns.queue.drain(..) {
        let ids = trailing_user_ids(&queued.body.messages);
        ended.push((queued.request_id, ids));
    }
    for (id, ids) in ended {
        cx.broadcast_json(&frames::done(&id, &ids, Outcome::Aborted), &[])?;
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
    if !offer(agent, cx, conn, probe_id)? {
        cx.send_json(conn, &frames::resume_none(probe_id))?;
    }
    Ok(())
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
        cx.send_json(conn, &frames::replay_done(id, false))?;
        return Ok(());
    }
    let chunks: Vec<UiChunk> = log
        .iter()
        .filter_map(|(_, body)| serde_json::from_str(body).ok())
        .collect();
    for (seq, body) in log {
        cx.send_json(conn, &frames::replayed(id, body, seq))?;
    }
    if running {
        cx.send_json(conn, &frames::replay_complete(id))?;
        return Ok(());
    }
    if let Some((_, text)) = error {
        cx.send_json(conn, &frames::failed(id, &text))?;
        return Ok(());
    }
    // Nobody produces this stream any more: persist what it built, and end it.
    let stored = store::load(cx.storage())?;
    let mut messages = stored.clone();
    let reply = MessageBuilder::rebuild(
        UiMessage::new("", crate::chat::message::Role::Assistant),
        &chunks,
        &mut messages,
    );
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
        cx.broadcast_json(&frames::messages(&messages), &[conn.id.as_str()])?;
    }
    cx.send_json(conn, &frames::replay_done(id, true))?;
    Ok(())
}
