//! A chat turn: started in the agent's turn, its model calls and tools run off the turn, each
//! chunk and the end brought back to the agent as events (chat-protocol.md §5, §10, §12.3).
//! A continuation (§8, §9) is a turn too: asked for by a client tool's result or an approval,
//! it streams into the last assistant message.

use std::collections::{HashSet, VecDeque};

use denizen_runtime::Result;
use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;
use futures_util::future::{AbortHandle, Abortable, BoxFuture};
use serde_json::json;
use tracing::Instrument;

use super::continuation::{Approved, Scheduled, begin_continuation, can_continue};
use super::frames::{self, Outcome};
use super::resume::salvage_orphans;
use super::run::{End, Model, panic_text, run_model};
use super::{ChatRun, ChatTurn, store};
use crate::agent::{Agent, Connection, Context};
use crate::chat::chunk::{Chunk, UiChunk};
use crate::chat::convert::{estimate_tokens, fit_to_budget, to_chat_messages};
use crate::chat::fold::{Applied, MessageBuilder, merge_metadata};
use crate::chat::history::{
    awaits_client_interaction, reconcile, repair_interrupted_tool_parts, trailing_user_ids,
};
use crate::chat::message::{Part, UiMessage};
use crate::chat::model::DEFAULT_ERROR_TEXT;
use crate::chat::random_id;
use crate::chat::request::{ClientTool, RequestBody};
use crate::chat::wire::{ChatMessage, ToolSpec};
use crate::context::AgentContext;
use crate::host::{AgentHost, Landed};

/// Chunks over this many bytes of JSON are not logged for replay (AIChatAgent's row cap).
const MAX_LOGGED_CHUNK_BYTES: usize = 1_800_000;

/// Chat requests that may wait behind the running turn.
pub(crate) const MAX_WAITING_TURNS: usize = 16;

/// The turns of one agent: the running one and those waiting, in order.
#[derive(Default)]
pub(crate) struct Turns {
    /// Numbers turns, so events of a turn that was cleared away are recognised and dropped.
    pub(super) serial: u64,
    pub(super) active: Option<Active>,
    pub(super) queue: VecDeque<Queued>,
    /// Connections (ids) offered a resume that have not ACKed it: they get no live frames.
    pub(super) pending: HashSet<String>,
    /// A continuation asked for and not started yet.
    pub(super) continuation: Option<Scheduled>,
}

/// A checked chat request, waiting for its turn.
pub(crate) struct Queued {
    pub(crate) request_id: String,
    /// The connection id (`_pk`) of the client that sent it.
    pub(crate) sender: String,
    pub(crate) body: RequestBody,
}

/// The running turn.
pub(super) struct Active {
    pub(super) serial: u64,
    pub(super) request_id: String,
    /// The connection that sent the request (or owns the continuation).
    pub(super) sender: String,
    /// The trailing user messages of the request (none for a continuation).
    pub(super) message_ids: Option<Vec<String>>,
    pub(super) continuation: bool,
    /// The reply being streamed.
    pub(super) builder: MessageBuilder,
    /// The transcript before the reply, as the turn began (tool results may land in it).
    pub(super) earlier: Vec<UiMessage>,
    /// Ids of the earlier messages the stream changed.
    pub(super) touched: HashSet<String>,
    pub(super) seq: u64,
    pub(super) abort: AbortHandle,
}

pub(super) fn turns<A: Agent>(agent: &mut A) -> Option<&mut Turns> {
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
    if turns.queue.len() >= MAX_WAITING_TURNS {
        // Each waiting request holds its messages: a client may not queue without end.
        let text = format!(
            "{MAX_WAITING_TURNS} chat requests are waiting already; send this one after a turn ends"
        );
        if let Some(conn) = cx.connection(&queued.sender) {
            cx.send_json(&conn, &frames::failed(&queued.request_id, &text))?;
        }
        return Ok(());
    }
    turns.queue.push_back(queued);
    advance(agent, cx).await
}

/// What runs next.
enum Next {
    Continuation(Scheduled),
    Request(Queued),
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
    format!("assistant_{millis}_{}", random_id(10))
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
pub(super) async fn respond<A: Agent>(
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
pub(super) fn request_messages(run: &ChatRun, transcript: &[UiMessage]) -> Vec<ChatMessage> {
    let messages = to_chat_messages(run.system.as_deref(), transcript);
    match run.token_budget {
        Some(budget) => fit_to_budget(messages, budget, estimate_tokens),
        None => messages,
    }
}

/// A turn ready to run.
pub(super) struct Launch {
    pub(super) request_id: String,
    pub(super) sender: String,
    pub(super) message_ids: Option<Vec<String>>,
    pub(super) continuation: bool,
    pub(super) builder: MessageBuilder,
    pub(super) earlier: Vec<UiMessage>,
    pub(super) run: ChatRun,
    pub(super) client_tools: Vec<ClientTool>,
    pub(super) messages: Vec<ChatMessage>,
    pub(super) approved: Vec<Approved>,
}

/// Makes `launch` the running turn and starts its model calls off the turn.
pub(super) fn launch<A: Agent>(agent: &mut A, cx: &mut Context<A>, launch: Launch) -> Result<bool> {
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

/// A chunk of turn `serial`, in the agent: rewritten (`start` gets the message id, `finish`
/// carries its reason in the metadata), folded into the reply, logged and sent to every
/// connection.
pub(super) async fn on_chunk<A: Agent>(
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
pub(super) async fn finish<A: Agent>(
    agent: &mut A,
    cx: &mut Context<A>,
    serial: u64,
    end: End,
) -> Result<()> {
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
