//! The transcript's changes that do not come from the model stream: client tool results and
//! approvals (chat-protocol.md §8, §9), the repair of tool calls left without a result before a
//! new user turn (§9), the `messageIds` of a turn's terminal frames (§4), and the
//! reconciliation of a request's (or `setMessages`') messages with the stored ones (§5, §10).
//!
//! All are pure functions over messages, so the rules are tested here once and the agent only
//! stores and broadcasts what they return. Each says what it changed: the agent broadcasts a
//! `cf_agent_message_updated` or persists only when something did.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::message::{Approval, Error, Part, Result, Role, ToolPart, ToolState, UiMessage};

/// The `errorText` of a call that was approved but had not run when the next user turn began.
pub const APPROVED_NOT_RUN: &str =
    "The tool call was approved but did not run before the next turn started.";
/// The `errorText` of a call left without a result when the next user turn began.
pub const INTERRUPTED: &str = "The tool call was interrupted before a result was recorded.";

/// A client tool's result (`cf_agent_tool_result`).
#[derive(Clone, Debug, PartialEq)]
pub enum ToolResult {
    /// `output`: the tool answered.
    Output(Value),
    /// `"state":"output-error","errorText"`: the tool failed.
    Error(String),
}

/// Which message a tool result or an approval changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Updated {
    /// The message being streamed.
    Streaming,
    /// The stored message at this index.
    Stored(usize),
    /// None: the call already had its result or answer, or is not waiting for one (the first
    /// result wins; repeats are no-ops).
    Unchanged,
}

/// The tool part of `tool_call_id`: in `streaming`, else in the latest stored message that has
/// it.
fn find_tool<'m>(
    stored: &'m mut [UiMessage],
    streaming: Option<&'m mut UiMessage>,
    action: &'static str,
    tool_call_id: &str,
) -> Result<(Updated, &'m mut ToolPart)> {
    if let Some(streaming) = streaming
        && let Some(tool) = streaming.tool_part_mut(tool_call_id)
    {
        return Ok((Updated::Streaming, tool));
    }
    let unknown = || Error::UnknownToolCall {
        action,
        tool_call_id: tool_call_id.to_owned(),
    };
    let index = stored
        .iter()
        .rposition(|m| m.tool_parts().any(|t| t.tool_call_id == tool_call_id))
        .ok_or_else(unknown)?;
    let tool = stored[index]
        .tool_part_mut(tool_call_id)
        .ok_or_else(unknown)?;
    Ok((Updated::Stored(index), tool))
}

/// Applies a client tool's result to the call's part (in `streaming` if it has the call, else
/// in `stored`): `output-available` with `output` and `preliminary: false`, or `output-error`
/// with `errorText`. Only a call in `input-available` or an `approval-*` state takes a result;
/// otherwise nothing changes ([`Updated::Unchanged`]). A call no message has is an error.
pub fn apply_tool_result(
    stored: &mut [UiMessage],
    streaming: Option<&mut UiMessage>,
    tool_call_id: &str,
    result: ToolResult,
) -> Result<Updated> {
    let (updated, tool) = find_tool(stored, streaming, "cf_agent_tool_result", tool_call_id)?;
    if !matches!(
        tool.state,
        ToolState::InputAvailable | ToolState::ApprovalRequested | ToolState::ApprovalResponded
    ) {
        return Ok(Updated::Unchanged);
    }
    match result {
        ToolResult::Output(output) => {
            tool.state = ToolState::OutputAvailable;
            tool.output = Some(output);
            tool.preliminary = Some(false);
        }
        ToolResult::Error(error_text) => {
            tool.state = ToolState::OutputError;
            tool.error_text = Some(error_text);
        }
    }
    Ok(updated)
}

/// Applies a person's answer to the call's approval request: `approval-responded` with
/// `approval: {id, approved: true}`, or `output-denied` with `approved: false`. Only a call in
/// `approval-requested` takes an answer; otherwise nothing changes (the first answer wins).
pub fn apply_tool_approval(
    stored: &mut [UiMessage],
    streaming: Option<&mut UiMessage>,
    tool_call_id: &str,
    approved: bool,
) -> Result<Updated> {
    let (updated, tool) = find_tool(stored, streaming, "cf_agent_tool_approval", tool_call_id)?;
    if tool.state != ToolState::ApprovalRequested {
        return Ok(Updated::Unchanged);
    }
    let approval = tool
        .approval
        .get_or_insert_with(|| Approval::requested(tool_call_id));
    approval.approved = Some(approved);
    tool.state = if approved {
        ToolState::ApprovalResponded
    } else {
        ToolState::OutputDenied
    };
    Ok(updated)
}

/// Settles the tool calls left without a result, before a new user turn is sent to the model
/// (which refuses a call without a result, `MissingToolResultsError`):
/// - an approved call that did not run gets `output-error` [`APPROVED_NOT_RUN`], and a call
///   answered "no" but not marked denied (a client's local state) becomes `output-denied`;
///   except in the LAST message, whose turn (a continuation) may still run it;
/// - a call still streaming, waiting for its result or for an approval gets `output-error`
///   [`INTERRUPTED`], unless `awaits_client` says a person or the client can still answer it
///   (pass [`awaits_client_interaction`] to keep those, as AIChatAgent does, or `|_| false` to
///   settle everything).
///
/// Settled calls are left as they are. Returns the indexes of the messages it changed (to
/// persist and broadcast).
pub fn repair_interrupted_tool_parts(
    messages: &mut [UiMessage],
    awaits_client: impl Fn(&ToolPart) -> bool,
) -> Vec<usize> {
    let mut changed = Vec::new();
    let last = messages.len().saturating_sub(1);
    for (index, message) in messages.iter_mut().enumerate() {
        let mut touched = false;
        for part in &mut message.parts {
            let Part::Tool(tool) = part else { continue };
            match tool.state {
                ToolState::ApprovalResponded if index == last => continue,
                ToolState::ApprovalResponded
                    if tool.approval.as_ref().and_then(|a| a.approved) == Some(false) =>
                {
                    tool.state = ToolState::OutputDenied;
                }
                ToolState::ApprovalResponded => {
                    tool.state = ToolState::OutputError;
                    tool.error_text = Some(APPROVED_NOT_RUN.into());
                }
                ToolState::InputStreaming
                | ToolState::InputAvailable
                | ToolState::ApprovalRequested => {
                    if awaits_client(tool) {
                        continue;
                    }
                    tool.state = ToolState::OutputError;
                    tool.error_text = Some(INTERRUPTED.into());
                }
                ToolState::OutputAvailable | ToolState::OutputError | ToolState::OutputDenied => {
                    continue;
                }
            }
            touched = true;
        }
        if touched {
            changed.push(index);
        }
    }
    changed
}

/// Whether a call waits for the client: an approval request (a person answers it), or a call
/// of one of `client_tools` (the tools the client declared, which it runs) with its input
/// complete.
pub fn awaits_client_interaction(tool: &ToolPart, client_tools: &[&str]) -> bool {
    match tool.state {
        ToolState::ApprovalRequested => true,
        ToolState::InputAvailable => client_tools.contains(&tool.tool_name.as_str()),
        _ => false,
    }
}

/// The `messageIds` of a user turn's terminal frames: the ids of the trailing run of user
/// messages of the request.
pub fn trailing_user_ids(messages: &[UiMessage]) -> Vec<String> {
    let run = messages
        .iter()
        .rev()
        .take_while(|m| m.role == Role::User)
        .count();
    messages[messages.len() - run..]
        .iter()
        .map(|m| m.id.clone())
        .collect()
}

/// Where incoming messages come from, which decides whether stored ones may be deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Trigger {
    /// A chat request for a new message (`"trigger":"submit-message"`): upsert.
    SubmitMessage,
    /// A chat request to regenerate (`"trigger":"regenerate-message"`): the request is the
    /// transcript; stored messages missing from it are deleted.
    RegenerateMessage,
    /// A `cf_agent_chat_messages` frame from a client (`setMessages`): upsert, never delete.
    #[serde(skip)]
    SetMessages,
}

/// A transcript reconciled with incoming messages, and what changed.
#[derive(Clone, Debug, PartialEq)]
pub struct Reconciled {
    /// The new transcript, in order.
    pub messages: Vec<UiMessage>,
    /// Ids of the messages added or changed (to write).
    pub upserted: Vec<String>,
    /// Ids of the stored messages removed (only with [`Trigger::RegenerateMessage`]).
    pub deleted: Vec<String>,
}

/// How far a tool call has come, to keep a stored result a client's stale copy lacks.
fn progress(state: ToolState) -> u8 {
    match state {
        ToolState::InputStreaming => 0,
        ToolState::InputAvailable => 1,
        ToolState::ApprovalRequested => 2,
        ToolState::ApprovalResponded => 3,
        ToolState::OutputAvailable | ToolState::OutputError | ToolState::OutputDenied => 4,
    }
}

/// `incoming` with each tool part that is behind the stored one's (a client that missed a
/// `cf_agent_message_updated`) replaced by the stored part: a recorded result or answer is
/// never undone by a stale copy.
fn keep_recorded_tool_results(stored: &UiMessage, mut incoming: UiMessage) -> UiMessage {
    let recorded: HashMap<&str, &ToolPart> = stored
        .tool_parts()
        .map(|t| (t.tool_call_id.as_str(), t))
        .collect();
    for part in &mut incoming.parts {
        if let Part::Tool(tool) = part
            && let Some(recorded) = recorded.get(tool.tool_call_id.as_str())
            && progress(recorded.state) > progress(tool.state)
        {
            *tool = (*recorded).clone();
        }
    }
    incoming
}

/// Reconciles `stored` with `incoming` (a request's messages, or a client's `setMessages`):
/// each incoming message replaces the stored one with its id (keeping recorded tool results
/// the client's copy lacks) or is added after the incoming message before it. Stored messages
/// missing from `incoming` stay, except with [`Trigger::RegenerateMessage`] when every incoming
/// message is a stored one: the result is then exactly `incoming` and the others are deleted.
pub fn reconcile(stored: &[UiMessage], incoming: Vec<UiMessage>, trigger: Trigger) -> Reconciled {
    let by_id: HashMap<&str, &UiMessage> = stored.iter().map(|m| (m.id.as_str(), m)).collect();
    let mut upserted = Vec::new();
    // The same id twice in `incoming`: the later copy wins, in the earlier place.
    let mut seen = HashSet::new();
    let incoming: Vec<UiMessage> = {
        let mut last: HashMap<String, UiMessage> = HashMap::new();
        let mut order = Vec::new();
        for message in incoming {
            if !last.contains_key(&message.id) {
                order.push(message.id.clone());
            }
            last.insert(message.id.clone(), message);
        }
        order
            .into_iter()
            .filter_map(|id| last.remove(&id))
            .collect()
    };
    let merged: Vec<UiMessage> = incoming
        .into_iter()
        .map(|message| {
            seen.insert(message.id.clone());
            match by_id.get(message.id.as_str()) {
                Some(old) => {
                    // The server's copy of a reply it produced is the whole one; a request's copy
                    // may be what the client had mid-stream. Only a tool result the client
                    // recorded first is taken from it.
                    let message =
                        if trigger == Trigger::SubmitMessage && old.role == Role::Assistant {
                            keep_recorded_tool_results(&message, (*old).clone())
                        } else {
                            keep_recorded_tool_results(old, message)
                        };
                    if **old != message {
                        upserted.push(message.id.clone());
                    }
                    message
                }
                None => {
                    upserted.push(message.id.clone());
                    message
                }
            }
        })
        .collect();

    // A regenerate sends a part of the stored transcript; one with a message the server does
    // not have is not that (a client out of step), so nothing is deleted for it.
    let subset = seen.iter().all(|id| by_id.contains_key(id.as_str()));
    if trigger == Trigger::RegenerateMessage && subset {
        let deleted = stored
            .iter()
            .filter(|m| !seen.contains(&m.id))
            .map(|m| m.id.clone())
            .collect();
        return Reconciled {
            messages: merged,
            upserted,
            deleted,
        };
    }

    // Upsert: the stored order with changed messages in place. A new message goes before the
    // first stored message that follows it in `incoming`, or, with none, at the end: a request
    // sent while the previous turn streamed lacks that turn's reply, which stays before it.
    let mut messages: Vec<UiMessage> = stored.to_vec();
    for (i, message) in merged.iter().enumerate() {
        if let Some(at) = messages.iter().position(|m| m.id == message.id) {
            messages[at] = message.clone();
            continue;
        }
        let at = merged[i + 1..]
            .iter()
            .find_map(|later| messages.iter().position(|m| m.id == later.id))
            .unwrap_or(messages.len());
        messages.insert(at, message.clone());
    }
    Reconciled {
        messages,
        upserted,
        deleted: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn messages(value: Value) -> Vec<UiMessage> {
        serde_json::from_value(value).unwrap()
    }

    fn tool_message(id: &str, call: &str, state: &str) -> Value {
        json!({"id": id, "role": "assistant", "parts": [
            {"type":"step-start"},
            {"type":"tool-getLocation","toolCallId": call,"state": state,"input":{}}]})
    }

    fn state_of(messages: &[UiMessage], call: &str) -> ToolState {
        messages
            .iter()
            .flat_map(|m| m.tool_parts())
            .find(|t| t.tool_call_id == call)
            .unwrap()
            .state
    }

    #[test]
    fn a_tool_result_settles_an_input_available_call_once() {
        let mut stored = messages(json!([
            {"id":"u1","role":"user","parts":[{"type":"text","text":"where am I"}]},
            tool_message("a1", "call_1", "input-available"),
        ]));
        let updated = apply_tool_result(
            &mut stored,
            None,
            "call_1",
            ToolResult::Output(json!({"city":"Paris"})),
        )
        .unwrap();
        assert_eq!(updated, Updated::Stored(1));
        assert_eq!(
            serde_json::to_value(&stored[1].parts[1]).unwrap(),
            json!({"type":"tool-getLocation","toolCallId":"call_1","state":"output-available",
                   "input":{},"output":{"city":"Paris"},"preliminary":false})
        );
        // A repeat, or an error after the result: no-ops.
        let before = stored.clone();
        for result in [
            ToolResult::Output(json!("again")),
            ToolResult::Error("late".into()),
        ] {
            assert_eq!(
                apply_tool_result(&mut stored, None, "call_1", result).unwrap(),
                Updated::Unchanged
            );
        }
        assert_eq!(stored, before);
    }

    #[test]
    fn a_tool_error_result_is_an_output_error() {
        let mut stored = messages(json!([tool_message("a1", "c", "input-available")]));
        apply_tool_result(&mut stored, None, "c", ToolResult::Error("no GPS".into())).unwrap();
        let tool = stored[0].tool_parts().next().unwrap();
        assert_eq!(tool.state, ToolState::OutputError);
        assert_eq!(tool.error_text.as_deref(), Some("no GPS"));
    }

    #[test]
    fn a_tool_result_goes_to_the_streaming_message_first() {
        let mut stored = messages(json!([tool_message("a1", "c", "input-available")]));
        let mut streaming: UiMessage =
            serde_json::from_value(tool_message("a1", "c", "input-available")).unwrap();
        let updated = apply_tool_result(
            &mut stored,
            Some(&mut streaming),
            "c",
            ToolResult::Output(json!(1)),
        )
        .unwrap();
        assert_eq!(updated, Updated::Streaming);
        assert_eq!(state_of(&[streaming], "c"), ToolState::OutputAvailable);
        assert_eq!(state_of(&stored, "c"), ToolState::InputAvailable);
    }

    #[test]
    fn results_only_from_input_available_or_approval_states() {
        for (state, takes) in [
            ("input-streaming", false),
            ("input-available", true),
            ("approval-requested", true),
            ("approval-responded", true),
            ("output-available", false),
            ("output-error", false),
            ("output-denied", false),
        ] {
            let mut stored = messages(json!([tool_message("a", "c", state)]));
            let updated =
                apply_tool_result(&mut stored, None, "c", ToolResult::Output(json!(1))).unwrap();
            assert_eq!(updated != Updated::Unchanged, takes, "{state}");
        }
    }

    #[test]
    fn a_result_or_approval_for_an_unknown_call_is_an_error() {
        let mut stored = messages(json!([tool_message("a", "c", "input-available")]));
        let err =
            apply_tool_result(&mut stored, None, "nope", ToolResult::Output(json!(1))).unwrap_err();
        assert!(matches!(err, Error::UnknownToolCall { .. }));
        let err = apply_tool_approval(&mut stored, None, "nope", true).unwrap_err();
        assert!(matches!(err, Error::UnknownToolCall { .. }));
    }

    #[test]
    fn an_approval_is_responded_or_denied_once() {
        let requested = json!([{"id":"a","role":"assistant","parts":[
            {"type":"tool-deploy","toolCallId":"c","state":"approval-requested","input":{},
             "approval":{"id":"ap1"}}]}]);
        let mut stored = messages(requested.clone());
        assert_eq!(
            apply_tool_approval(&mut stored, None, "c", true).unwrap(),
            Updated::Stored(0)
        );
        assert_eq!(
            serde_json::to_value(&stored[0].parts[0]).unwrap(),
            json!({"type":"tool-deploy","toolCallId":"c","state":"approval-responded","input":{},
                   "approval":{"id":"ap1","approved":true}})
        );
        // The first answer wins.
        assert_eq!(
            apply_tool_approval(&mut stored, None, "c", false).unwrap(),
            Updated::Unchanged
        );

        let mut stored = messages(requested);
        apply_tool_approval(&mut stored, None, "c", false).unwrap();
        assert_eq!(
            serde_json::to_value(&stored[0].parts[0]).unwrap(),
            json!({"type":"tool-deploy","toolCallId":"c","state":"output-denied","input":{},
                   "approval":{"id":"ap1","approved":false}})
        );
        // Not waiting for an approval: nothing changes.
        let mut stored = messages(json!([tool_message("a", "c", "input-available")]));
        assert_eq!(
            apply_tool_approval(&mut stored, None, "c", true).unwrap(),
            Updated::Unchanged
        );
    }

    #[test]
    fn unsettled_calls_are_repaired_before_a_new_turn() {
        let mut stored = messages(json!([
            {"id":"u","role":"user","parts":[{"type":"text","text":"hi"}]},
            {"id":"a","role":"assistant","parts":[
                {"type":"tool-a","toolCallId":"1","state":"approval-responded","input":{},"approval":{"id":"p1","approved":true}},
                {"type":"tool-b","toolCallId":"2","state":"input-available","input":{}},
                {"type":"tool-c","toolCallId":"3","state":"input-streaming"},
                {"type":"tool-d","toolCallId":"4","state":"approval-requested","input":{},"approval":{"id":"p4"}},
                {"type":"tool-e","toolCallId":"5","state":"approval-responded","input":{},"approval":{"id":"p5","approved":false}},
                {"type":"tool-f","toolCallId":"6","state":"output-available","input":{},"output":1},
                {"type":"tool-g","toolCallId":"7","state":"output-error","input":{},"errorText":"x"},
                {"type":"tool-h","toolCallId":"8","state":"output-denied","input":{}}
            ]},
            {"id":"u2","role":"user","parts":[{"type":"text","text":"never mind"}]}
        ]));
        let settled = stored[1].parts[5..].to_vec();
        assert_eq!(
            repair_interrupted_tool_parts(&mut stored, |_| false),
            vec![1]
        );
        let tools: Vec<&ToolPart> = stored[1].tool_parts().collect();
        assert_eq!(tools[0].state, ToolState::OutputError);
        assert_eq!(tools[0].error_text.as_deref(), Some(APPROVED_NOT_RUN));
        assert_eq!(
            APPROVED_NOT_RUN,
            "The tool call was approved but did not run before the next turn started."
        );
        for tool in &tools[1..4] {
            assert_eq!(tool.state, ToolState::OutputError);
            assert_eq!(tool.error_text.as_deref(), Some(INTERRUPTED));
        }
        assert_eq!(
            INTERRUPTED,
            "The tool call was interrupted before a result was recorded."
        );
        assert_eq!(tools[4].state, ToolState::OutputDenied);
        assert_eq!(stored[1].parts[5..], settled[..]);
        // Nothing left to repair.
        assert!(repair_interrupted_tool_parts(&mut stored, |_| false).is_empty());
    }

    #[test]
    fn an_approved_call_in_the_last_message_may_still_run() {
        let mut stored = messages(json!([
            {"id":"u","role":"user","parts":[{"type":"text","text":"deploy"}]},
            {"id":"a","role":"assistant","parts":[
                {"type":"tool-a","toolCallId":"1","state":"approval-responded","input":{},"approval":{"id":"p1","approved":true}}]}
        ]));
        let before = stored.clone();
        assert!(repair_interrupted_tool_parts(&mut stored, |_| false).is_empty());
        assert_eq!(stored, before);
    }

    #[test]
    fn calls_the_client_can_still_answer_are_kept_if_asked() {
        let mut stored = messages(json!([
            {"id":"a","role":"assistant","parts":[
                {"type":"tool-getLocation","toolCallId":"1","state":"input-available","input":{}},
                {"type":"tool-deploy","toolCallId":"2","state":"approval-requested","input":{},"approval":{"id":"p"}},
                {"type":"tool-search","toolCallId":"3","state":"input-available","input":{}}]},
            {"id":"u","role":"user","parts":[{"type":"text","text":"next"}]}
        ]));
        let changed = repair_interrupted_tool_parts(&mut stored, |t| {
            awaits_client_interaction(t, &["getLocation"])
        });
        assert_eq!(changed, vec![0]);
        assert_eq!(state_of(&stored, "1"), ToolState::InputAvailable);
        assert_eq!(state_of(&stored, "2"), ToolState::ApprovalRequested);
        // A server tool that never answered is settled.
        assert_eq!(state_of(&stored, "3"), ToolState::OutputError);
    }

    #[test]
    fn message_ids_are_the_trailing_user_run() {
        let m = messages(json!([
            {"id":"u1","role":"user","parts":[]},
            {"id":"a1","role":"assistant","parts":[]},
            {"id":"u2","role":"user","parts":[]},
            {"id":"u3","role":"user","parts":[]}
        ]));
        assert_eq!(trailing_user_ids(&m), ["u2", "u3"]);
        assert_eq!(trailing_user_ids(&m[..2]), Vec::<String>::new());
        assert_eq!(trailing_user_ids(&[]), Vec::<String>::new());
    }

    fn ids(messages: &[UiMessage]) -> Vec<&str> {
        messages.iter().map(|m| m.id.as_str()).collect()
    }

    #[test]
    fn a_submit_upserts_and_appends() {
        let stored = messages(json!([
            {"id":"u1","role":"user","parts":[{"type":"text","text":"hi"}]},
            {"id":"a1","role":"assistant","parts":[{"type":"text","text":"hello","state":"done"}]}
        ]));
        let mut incoming = stored.clone();
        incoming.push(UiMessage::user_text("u2", "more"));
        let r = reconcile(&stored, incoming, Trigger::SubmitMessage);
        assert_eq!(ids(&r.messages), ["u1", "a1", "u2"]);
        assert_eq!(r.upserted, ["u2"]);
        assert!(r.deleted.is_empty());
    }

    #[test]
    fn set_messages_never_deletes() {
        let stored = messages(json!([
            {"id":"u1","role":"user","parts":[{"type":"text","text":"hi"}]},
            {"id":"a1","role":"assistant","parts":[]},
            {"id":"u2","role":"user","parts":[{"type":"text","text":"b"}]}
        ]));
        let incoming = vec![
            UiMessage::user_text("u1", "edited"),
            UiMessage::user_text("x", "new"),
        ];
        let r = reconcile(&stored, incoming, Trigger::SetMessages);
        // A new message after the last stored one the client sent goes at the end.
        assert_eq!(ids(&r.messages), ["u1", "a1", "u2", "x"]);
        assert_eq!(r.messages[0].text(), "edited");
        assert_eq!(r.upserted, ["u1", "x"]);
        assert!(r.deleted.is_empty());
        // A new message before stored ones goes before them.
        let r = reconcile(
            &stored,
            vec![UiMessage::user_text("y", "first"), stored[1].clone()],
            Trigger::SetMessages,
        );
        assert_eq!(ids(&r.messages), ["u1", "y", "a1", "u2"]);
        assert_eq!(r.upserted, ["y"]);
        // Nothing new: nothing upserted.
        let r = reconcile(&stored, stored.clone(), Trigger::SetMessages);
        assert_eq!(r.messages, stored);
        assert!(r.upserted.is_empty());
    }

    #[test]
    fn a_regenerate_deletes_what_the_request_lacks() {
        let stored = messages(json!([
            {"id":"u1","role":"user","parts":[{"type":"text","text":"hi"}]},
            {"id":"a1","role":"assistant","parts":[]},
            {"id":"u2","role":"user","parts":[{"type":"text","text":"b"}]},
            {"id":"a2","role":"assistant","parts":[]}
        ]));
        let r = reconcile(&stored, stored[..3].to_vec(), Trigger::RegenerateMessage);
        assert_eq!(ids(&r.messages), ["u1", "a1", "u2"]);
        assert_eq!(r.deleted, ["a2"]);
        assert!(r.upserted.is_empty());
        // A request with a message the server lacks deletes nothing.
        let mut incoming = stored[..1].to_vec();
        incoming.push(UiMessage::user_text("new", "x"));
        let r = reconcile(&stored, incoming, Trigger::RegenerateMessage);
        assert!(r.deleted.is_empty());
        assert_eq!(ids(&r.messages), ["u1", "a1", "u2", "a2", "new"]);
    }

    #[test]
    fn a_request_sent_mid_stream_keeps_the_full_reply_before_the_new_message() {
        // The second request was sent while the first reply streamed: the client's copy of the
        // reply is partial, and the request lacks nothing else the server has.
        let stored = messages(json!([
            {"id":"u1","role":"user","parts":[{"type":"text","text":"hi"}]},
            {"id":"a1","role":"assistant","parts":[{"type":"text","text":"Hello there","state":"done"}]}
        ]));
        let incoming = messages(json!([
            {"id":"u1","role":"user","parts":[{"type":"text","text":"hi"}]},
            {"id":"a1","role":"assistant","parts":[{"type":"text","text":"Hel","state":"streaming"}]},
            {"id":"u2","role":"user","parts":[{"type":"text","text":"more"}]}
        ]));
        let r = reconcile(&stored, incoming, Trigger::SubmitMessage);
        assert_eq!(ids(&r.messages), ["u1", "a1", "u2"]);
        assert_eq!(r.messages[1].text(), "Hello there");
        assert_eq!(r.upserted, ["u2"]);
        // Without the reply at all (sent before it began), the new message still follows it.
        let r = reconcile(
            &stored,
            stored[..1]
                .iter()
                .cloned()
                .chain([UiMessage::user_text("u2", "more")])
                .collect(),
            Trigger::SubmitMessage,
        );
        assert_eq!(ids(&r.messages), ["u1", "a1", "u2"]);
    }

    #[test]
    fn a_stale_copy_does_not_undo_a_recorded_result() {
        let stored = messages(json!([tool_message("a1", "c", "output-available")]));
        let stale = messages(json!([tool_message("a1", "c", "input-available")]));
        let r = reconcile(&stored, stale, Trigger::SetMessages);
        assert_eq!(state_of(&r.messages, "c"), ToolState::OutputAvailable);
        assert!(r.upserted.is_empty());
        // A copy further along is taken.
        let stored = messages(json!([tool_message("a1", "c", "input-available")]));
        let newer = messages(json!([tool_message("a1", "c", "output-error")]));
        let r = reconcile(&stored, newer, Trigger::SubmitMessage);
        assert_eq!(state_of(&r.messages, "c"), ToolState::OutputError);
        assert_eq!(r.upserted, ["a1"]);
    }

    #[test]
    fn a_duplicate_id_in_the_request_is_taken_once() {
        let r = reconcile(
            &[],
            vec![
                UiMessage::user_text("u", "a"),
                UiMessage::user_text("u", "b"),
            ],
            Trigger::SubmitMessage,
        );
        assert_eq!(ids(&r.messages), ["u"]);
        assert_eq!(r.messages[0].text(), "b");
    }

    #[test]
    fn the_trigger_reads_from_the_request_body() {
        let t: Trigger = serde_json::from_value(json!("regenerate-message")).unwrap();
        assert_eq!(t, Trigger::RegenerateMessage);
        let t: Trigger = serde_json::from_value(json!("submit-message")).unwrap();
        assert_eq!(t, Trigger::SubmitMessage);
        assert!(serde_json::from_value::<Trigger>(json!("set-messages")).is_err());
    }
}
