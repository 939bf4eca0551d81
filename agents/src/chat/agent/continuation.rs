//! Continuations (chat-protocol.md §8, §9): a client tool's result or a person's approval
//! recorded in its call, and the turn that goes on after it, streaming into the last assistant
//! message.

use std::collections::HashSet;

use denizen_runtime::Result;
use serde_json::Value;

use super::resume::salvage_orphans;
use super::turn::{Launch, advance, launch, request_messages, respond, turns};
use super::{ChatTurn, Tool, frames, store};
use crate::agent::{Agent, Connection, Context};
use crate::chat::fold::MessageBuilder;
use crate::chat::history::Updated;
use crate::chat::message::{Part, Role, ToolState, UiMessage};
use crate::chat::request::ClientTool;
use crate::context::AgentContext;
use crate::host::Landed;

/// How long a continuation waits after the result that asked for it, so the results of a batch
/// of parallel calls sent together start one continuation.
const CONTINUATION_DELAY: std::time::Duration = std::time::Duration::from_millis(50);

/// A continuation waiting to start (chat-protocol.md §8).
pub(crate) struct Scheduled {
    pub(super) request_id: String,
    /// The connection whose tool result or approval asked for it.
    pub(super) owner: String,
    /// Connections told it is pending: they are offered its stream when it starts.
    pub(super) awaiting: HashSet<String>,
    /// The client tools of the frame that asked for it (else the last request's).
    pub(super) client_tools: Option<Vec<ClientTool>>,
    /// Its coalescing delay has passed.
    pub(super) ready: bool,
}

/// Whether the last message is an assistant message none of whose calls waits for the client
/// (a batch of parallel calls half answered waits for the rest).
pub(super) fn can_continue(messages: &[UiMessage]) -> bool {
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

/// A continuation: the calls answered since the last turn (client tools' results, approvals)
/// go back to the model, whose reply is appended to the last assistant message. `false` when
/// it ended already.
pub(super) async fn begin_continuation<A: Agent>(
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
pub(super) struct Approved {
    pub(super) tool_call_id: String,
    pub(super) tool: Tool,
    pub(super) input: Value,
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
            super::send_error(cx, conn, &e.to_string());
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
    format!("continuation_{}", crate::chat::random_id(12))
}
