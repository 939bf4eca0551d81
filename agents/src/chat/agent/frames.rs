//! The server's chat frames (chat-protocol.md §4), built in one place so every path sends the
//! same shapes.

use serde_json::{Value, json};

use crate::chat::message::UiMessage;

/// The type of every turn frame.
pub(crate) const RESPONSE: &str = "cf_agent_use_chat_response";
/// A client's chat request.
pub(crate) const REQUEST: &str = "cf_agent_use_chat_request";
/// A client's cancel.
pub(crate) const CANCEL: &str = "cf_agent_chat_request_cancel";
/// The transcript, both ways.
pub(crate) const MESSAGES: &str = "cf_agent_chat_messages";
/// A clear, both ways.
pub(crate) const CLEAR: &str = "cf_agent_chat_clear";
/// A client's resume probe.
pub(crate) const RESUME_REQUEST: &str = "cf_agent_stream_resume_request";
/// A client's answer to an offer to resume.
pub(crate) const RESUME_ACK: &str = "cf_agent_stream_resume_ack";
/// A client tool's result.
pub(crate) const TOOL_RESULT: &str = "cf_agent_tool_result";
/// A person's answer to a tool's approval request.
pub(crate) const TOOL_APPROVAL: &str = "cf_agent_tool_approval";

/// How a turn ended, as its terminal frame says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Ran to its end (no `outcome` key).
    Completed,
    /// Cancelled.
    Aborted,
    /// The model reported an error (after an `error:true` frame).
    Error,
}

/// A live chunk: `body` is the chunk's JSON; `seq` its place in the stream log (none for a
/// chunk too large to log).
pub(crate) fn chunk(request_id: &str, body: String, seq: Option<u64>) -> Value {
    let mut frame = json!({"body": body, "done": false, "id": request_id, "type": RESPONSE});
    if let (Some(seq), Some(map)) = (seq, frame.as_object_mut()) {
        map.insert("seq".into(), seq.into());
    }
    frame
}

/// Marks a frame of a continuation turn (chat-protocol.md §8).
pub(crate) fn continued(mut frame: Value, continuation: bool) -> Value {
    if let (true, Some(map)) = (continuation, frame.as_object_mut()) {
        map.insert("continuation".into(), true.into());
    }
    frame
}

/// The end of a turn; `message_ids` is `None` for a continuation (which has no user
/// messages).
pub(crate) fn done(request_id: &str, message_ids: Option<&[String]>, outcome: Outcome) -> Value {
    let mut frame = json!({"body": "", "done": true, "id": request_id, "type": RESPONSE});
    if let (Some(ids), Some(map)) = (message_ids, frame.as_object_mut()) {
        map.insert("messageIds".into(), json!(ids));
    }
    let outcome = match outcome {
        Outcome::Completed => None,
        Outcome::Aborted => Some("aborted"),
        Outcome::Error => Some("error"),
    };
    if let (Some(outcome), Some(map)) = (outcome, frame.as_object_mut()) {
        map.insert("outcome".into(), outcome.into());
    }
    frame
}

/// The model's stream reported an error: the client fails the turn with `text`.
pub(crate) fn stream_error(request_id: &str, text: &str, message_ids: Option<&[String]>) -> Value {
    let mut frame =
        json!({"error": true, "body": text, "done": false, "id": request_id, "type": RESPONSE});
    if let (Some(ids), Some(map)) = (message_ids, frame.as_object_mut()) {
        map.insert("messageIds".into(), json!(ids));
    }
    frame
}

/// The turn failed before or outside its stream: one frame that ends it with `text`.
pub(crate) fn failed(request_id: &str, text: &str) -> Value {
    json!({"body": text, "done": true, "error": true, "id": request_id, "type": RESPONSE})
}

/// The authoritative transcript.
pub(crate) fn messages(messages: &[UiMessage]) -> Value {
    json!({"messages": messages, "type": MESSAGES})
}

/// A clear, to the other connections.
pub(crate) fn clear() -> Value {
    json!({"type": CLEAR})
}

/// Why there is nothing to resume.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NoResume {
    /// No stream runs.
    Idle,
    /// The stream is a continuation another open connection started.
    ContinuationOwned,
}

/// Nothing to resume.
pub(crate) fn resume_none(probe_id: Option<&str>, reason: NoResume) -> Value {
    let reason = match reason {
        NoResume::Idle => "idle",
        NoResume::ContinuationOwned => "continuation-owned",
    };
    let mut frame = json!({"type": "cf_agent_stream_resume_none", "reason": reason});
    if let (Some(probe), Some(map)) = (probe_id, frame.as_object_mut()) {
        map.insert("probeId".into(), probe.into());
    }
    frame
}

/// An offer to resume the stream of `request_id` (in answer to probe `probe_id`, if any).
pub(crate) fn resuming(request_id: &str, probe_id: Option<&str>) -> Value {
    let mut frame = json!({"type": "cf_agent_stream_resuming", "id": request_id});
    if let (Some(probe), Some(map)) = (probe_id, frame.as_object_mut()) {
        map.insert("probeId".into(), probe.into());
    }
    frame
}

/// A turn is accepted but not streaming yet (a continuation waiting to start): keep waiting.
pub(crate) fn stream_pending(request_id: &str, probe_id: Option<&str>) -> Value {
    let mut frame = json!({"type": "cf_agent_stream_pending", "id": request_id});
    if let (Some(probe), Some(map)) = (probe_id, frame.as_object_mut()) {
        map.insert("probeId".into(), probe.into());
    }
    frame
}

/// A tool result or an approval changed `message`.
pub(crate) fn message_updated(message: &UiMessage) -> Value {
    json!({"type": "cf_agent_message_updated", "message": message})
}

/// A logged chunk, replayed.
pub(crate) fn replayed(request_id: &str, body: String, seq: u64) -> Value {
    json!({"body": body, "done": false, "id": request_id, "type": RESPONSE, "replay": true, "seq": seq})
}

/// The replay caught up: live frames follow.
pub(crate) fn replay_complete(request_id: &str) -> Value {
    json!({"body": "", "done": false, "id": request_id, "type": RESPONSE, "replay": true, "replayComplete": true})
}

/// The end of a replay: nothing (more) to resume, or (`aborted`) a stream nobody produces
/// any more.
pub(crate) fn replay_done(request_id: &str, aborted: bool) -> Value {
    let mut frame =
        json!({"body": "", "done": true, "id": request_id, "type": RESPONSE, "replay": true});
    if let (true, Some(map)) = (aborted, frame.as_object_mut()) {
        map.insert("outcome".into(), "aborted".into());
    }
    frame
}
