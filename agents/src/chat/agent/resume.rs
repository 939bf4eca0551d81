//! Resumable streams (chat-protocol.md §7): what a connecting or probing client is offered, the
//! replay after its ACK, and the partial reply of a stream whose producer died, persisted.

use std::collections::HashSet;

use denizen_runtime::Result;
use serde_json::Value;

use super::frames::{self, NoResume};
use super::store;
use super::turn::turns;
use crate::agent::{Agent, Connection, Context};
use crate::chat::chunk::UiChunk;
use crate::chat::fold::MessageBuilder;
use crate::chat::message::{Part, Role, UiMessage};
use crate::context::AgentContext;

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
fn offer<A: Agent>(
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
    salvage(cx, id, continues.as_deref(), &[conn.id.as_str()])?;
    cx.send_json(conn, &flag(frames::replay_done(id, true)))?;
    Ok(())
}

/// Persists the reply the logged chunks of stream `id` built, for a stream nobody produces any
/// more (its turn's process died), and drops its log; the transcript goes to every connection
/// but `except` if it changed.
fn salvage(
    cx: &mut Context<impl Agent>,
    id: &str,
    continues: Option<&str>,
    except: &[&str],
) -> Result<()> {
    let chunks: Vec<UiChunk> = store::log(cx.storage(), id)?
        .iter()
        .filter_map(|(_, body)| serde_json::from_str(body).ok())
        .collect();
    let stored = store::load(cx.storage())?;
    let mut messages = stored.clone();
    // A continuation's chunks go on from the message it continued.
    let base = continues
        .and_then(|continued| stored.iter().find(|m| m.id == continued).cloned())
        .unwrap_or_else(|| UiMessage::new("", Role::Assistant));
    let reply = MessageBuilder::rebuild(base, &chunks, &mut messages);
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
pub(super) fn salvage_orphans(cx: &mut Context<impl Agent>) -> Result<()> {
    while let Some(id) = store::logged_stream(cx.storage())? {
        let continues = store::continues(cx.storage(), &id)?;
        tracing::info!(request = %id, "persisting the partial reply of a stream cut by a restart");
        salvage(cx, &id, continues.as_deref(), &[])?;
    }
    Ok(())
}
