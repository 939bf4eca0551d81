//! [`MessageBuilder`]: UI message stream chunks folded into the assistant message they build,
//! the server's counterpart of the AI SDK client's `processUIMessageStream` (chat-protocol.md §6).
//!
//! The server persists what the client renders, so both must fold the same chunks into the same
//! parts: a reload (`get-messages`) then shows exactly what was streamed, and a resumed client
//! that replays the log rebuilds the same message. The builder also checks the stream the way the
//! client does: a delta for a text part never started, or a result for a tool call no message
//! has, would make the client throw, so it is an [`Error`] here and the server must not send it.
//!
//! A tool result or approval request may name a call of an EARLIER message (a continuation runs
//! an approved tool whose part is in the previous turn's message), so [`MessageBuilder::apply`]
//! takes the rest of the transcript and says which message it changed. After a crash,
//! [`MessageBuilder::rebuild`] folds a stored chunk log into the partial message to persist.
//!
//! ```
//! use denizen_agents::chat::chunk::{Chunk, UiChunk};
//! use denizen_agents::chat::convert::to_chat_messages;
//! use denizen_agents::chat::fold::{Applied, MessageBuilder};
//! use denizen_agents::chat::message::UiMessage;
//!
//! let mut transcript = vec![UiMessage::user_text("u1", "Hi!")];
//! let mut reply = MessageBuilder::new("assistant_1");
//! for chunk in [
//!     Chunk::Start { message_id: None, message_metadata: None },
//!     Chunk::StartStep,
//!     Chunk::TextStart { id: "t".into() },
//!     Chunk::TextDelta { id: "t".into(), delta: "Hello.".into() },
//!     Chunk::TextEnd { id: "t".into() },
//!     Chunk::FinishStep,
//! ] {
//!     // Store and forward the chunk unless it was a replay.
//!     let applied = reply.apply(&UiChunk::Known(chunk), &mut transcript)?;
//!     assert_ne!(applied, Applied::Replayed);
//! }
//! transcript.push(reply.into_message());
//! let request = to_chat_messages(Some("You are helpful."), &transcript);
//! assert_eq!(request.len(), 3);
//! # Ok::<(), denizen_agents::chat::message::Error>(())
//! ```

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::chunk::{Chunk, UiChunk};
use super::message::{
    Approval, DataPart, Error, MAX_PARTS, Part, Result, Role, TextPart, TextState, ToolPart,
    ToolState, UiMessage, check_id,
};

/// Which message a chunk changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The message being built.
    Message,
    /// The earlier message at this index of the transcript given to
    /// [`MessageBuilder::apply`] (broadcast it as `cf_agent_message_updated`).
    Earlier(usize),
    /// None: the chunk carries no content (`finish-step`, `error`, `abort`, a transient `data-*`,
    /// a kind the client ignores too).
    Nothing,
    /// None: the chunk repeats a tool call the message has already taken further (a provider
    /// replaying earlier calls in a continuation). Do not forward it: the client would move
    /// its part back (the AI SDK's `updateToolPart` overwrites in place).
    Replayed,
}

/// An assistant message being built from a stream of chunks.
#[derive(Clone, Debug)]
pub struct MessageBuilder {
    message: UiMessage,
    /// Text and reasoning parts of the current step still taking deltas: id → part index.
    active_text: HashMap<String, usize>,
    active_reasoning: HashMap<String, usize>,
    /// The input text of tool calls still streaming: call id → text so far.
    partial_inputs: HashMap<String, String>,
}

impl MessageBuilder {
    /// Builds a new assistant message with id `id` (a `start` chunk's `messageId` replaces it).
    pub fn new(id: impl Into<String>) -> Self {
        MessageBuilder::continuing(UiMessage::new(id, Role::Assistant))
    }

    /// Appends to `message`: a continuation streams into a copy of the last assistant message
    /// (same id, parts appended; chat-protocol.md §8).
    pub fn continuing(message: UiMessage) -> Self {
        MessageBuilder {
            message,
            active_text: HashMap::new(),
            active_reasoning: HashMap::new(),
            partial_inputs: HashMap::new(),
        }
    }

    /// The message so far.
    pub fn message(&self) -> &UiMessage {
        &self.message
    }

    /// The message so far, to change outside the stream (a client tool's result).
    pub fn message_mut(&mut self) -> &mut UiMessage {
        &mut self.message
    }

    /// The message so far, to persist.
    pub fn into_message(self) -> UiMessage {
        self.message
    }

    /// Folds `chunk` into the message, or into the tool part of an `earlier` message (the
    /// transcript before this message) that has the call, as the client does.
    pub fn apply(&mut self, chunk: &UiChunk, earlier: &mut [UiMessage]) -> Result<Applied> {
        match chunk {
            UiChunk::Known(chunk) => self.apply_known(chunk, earlier),
            UiChunk::Other(value) => self.apply_other(value),
        }
    }

    /// The message a stored chunk log builds, from `base` (a new empty message, or the copy a
    /// continuation started from): what to persist when the stream's producer is gone (an
    /// abort, a crash; chat-protocol.md §7). Chunks that do not apply are skipped, so a log cut
    /// anywhere still gives the message as far as it went. Changes to earlier messages are
    /// made in `earlier`.
    pub fn rebuild<'a>(
        base: UiMessage,
        chunks: impl IntoIterator<Item = &'a UiChunk>,
        earlier: &mut [UiMessage],
    ) -> UiMessage {
        let mut builder = MessageBuilder::continuing(base);
        for chunk in chunks {
            if let Err(e) = builder.apply(chunk, earlier) {
                tracing::warn!(message = %builder.message.id, error = %e, "chunk skipped while rebuilding a message from its stream log");
            }
        }
        builder.into_message()
    }

    fn push(&mut self, part: Part) -> Result<usize> {
        if self.message.parts.len() >= MAX_PARTS {
            return Err(Error::TooLarge {
                what: "the number of parts of the streamed message",
                size: self.message.parts.len() + 1,
                max: MAX_PARTS,
            });
        }
        self.message.parts.push(part);
        Ok(self.message.parts.len() - 1)
    }

    fn text_part(
        &mut self,
        chunk: &'static str,
        kind: &'static str,
        id: &str,
    ) -> Result<&mut TextPart> {
        let active = if kind == "text" {
            &self.active_text
        } else {
            &self.active_reasoning
        };
        let index = active.get(id).copied().ok_or_else(|| Error::UnknownPart {
            chunk,
            kind,
            id: id.to_owned(),
        })?;
        match self.message.parts.get_mut(index) {
            Some(Part::Text(part) | Part::Reasoning(part)) => Ok(part),
            _ => Err(Error::UnknownPart {
                chunk,
                kind,
                id: id.to_owned(),
            }),
        }
    }

    /// The tool part of `tool_call_id` in this message, created (`input-streaming`) if absent,
    /// as the client's `updateToolPart` does for `tool-input-start` / `-available` / `-error`.
    fn upsert_tool(&mut self, tool_call_id: &str, tool_name: &str) -> Result<&mut ToolPart> {
        // Ids the model chose end up in the stored transcript, which must load again.
        check_id("a tool call id", tool_call_id)?;
        if tool_name.is_empty() {
            return Err(Error::Invalid(format!(
                "tool call `{tool_call_id}` has an empty tool name"
            )));
        }
        let index =
            self.message.parts.iter().position(
                |part| matches!(part, Part::Tool(tool) if tool.tool_call_id == tool_call_id),
            );
        if index.is_none() {
            self.push(Part::Tool(ToolPart::new(
                tool_call_id,
                tool_name,
                ToolState::InputStreaming,
            )))?;
        }
        self.message
            .tool_part_mut(tool_call_id)
            .ok_or_else(|| unknown_call("tool-input-start", tool_call_id))
    }

    /// The tool part of `tool_call_id`: in this message, else in the latest earlier message
    /// that has it.
    fn find_tool<'m>(
        &'m mut self,
        action: &'static str,
        tool_call_id: &str,
        earlier: &'m mut [UiMessage],
    ) -> Result<(Applied, &'m mut ToolPart)> {
        if self.message.tool_part_mut(tool_call_id).is_some() {
            let tool = self
                .message
                .tool_part_mut(tool_call_id)
                .ok_or_else(|| unknown_call(action, tool_call_id))?;
            return Ok((Applied::Message, tool));
        }
        let index = earlier
            .iter()
            .rposition(|m| m.tool_parts().any(|t| t.tool_call_id == tool_call_id))
            .ok_or_else(|| unknown_call(action, tool_call_id))?;
        let tool = earlier[index]
            .tool_part_mut(tool_call_id)
            .ok_or_else(|| unknown_call(action, tool_call_id))?;
        Ok((Applied::Earlier(index), tool))
    }

    fn apply_known(&mut self, chunk: &Chunk, earlier: &mut [UiMessage]) -> Result<Applied> {
        match chunk {
            Chunk::Start {
                message_id,
                message_metadata,
            } => {
                if let Some(id) = message_id {
                    check_id("a message id", id)?;
                    self.message.id = id.clone();
                }
                if let Some(metadata) = message_metadata {
                    merge_metadata(&mut self.message.metadata, metadata);
                }
            }
            Chunk::StartStep => {
                self.push(Part::StepStart)?;
            }
            Chunk::FinishStep => {
                // The client forgets the step's open parts: a later delta for them is an error.
                self.active_text.clear();
                self.active_reasoning.clear();
                return Ok(Applied::Nothing);
            }
            Chunk::TextStart { id } => {
                let index = self.push(Part::Text(TextPart::new("", Some(TextState::Streaming))))?;
                self.active_text.insert(id.clone(), index);
            }
            Chunk::ReasoningStart { id } => {
                let index = self.push(Part::Reasoning(TextPart::new(
                    "",
                    Some(TextState::Streaming),
                )))?;
                self.active_reasoning.insert(id.clone(), index);
            }
            Chunk::TextDelta { id, delta } => {
                self.text_part("text-delta", "text", id)?
                    .text
                    .push_str(delta);
            }
            Chunk::ReasoningDelta { id, delta } => {
                self.text_part("reasoning-delta", "reasoning", id)?
                    .text
                    .push_str(delta);
            }
            Chunk::TextEnd { id } => {
                self.text_part("text-end", "text", id)?.state = Some(TextState::Done);
                self.active_text.remove(id);
            }
            Chunk::ReasoningEnd { id } => {
                self.text_part("reasoning-end", "reasoning", id)?.state = Some(TextState::Done);
                self.active_reasoning.remove(id);
            }
            Chunk::ToolInputStart {
                tool_call_id,
                tool_name,
            } => {
                // A model starting a new call always gives a new id: a known one is a replay.
                if self.message.tool_part_mut(tool_call_id).is_some() {
                    return Ok(Applied::Replayed);
                }
                self.upsert_tool(tool_call_id, tool_name)?;
                self.partial_inputs
                    .insert(tool_call_id.clone(), String::new());
            }
            Chunk::ToolInputDelta {
                tool_call_id,
                input_text_delta,
            } => {
                let tool = self
                    .message
                    .tool_part_mut(tool_call_id)
                    .ok_or_else(|| unknown_call("tool-input-delta", tool_call_id))?;
                if tool.state != ToolState::InputStreaming {
                    return Ok(Applied::Replayed);
                }
                let text = self.partial_inputs.entry(tool_call_id.clone()).or_default();
                text.push_str(input_text_delta);
                // The client shows the input parsed as far as it goes (a partial-JSON repair);
                // the server keeps the last complete parse. Only `tool-input-available` counts.
                if let Ok(parsed) = serde_json::from_str::<Value>(text)
                    && let Some(tool) = self.message.tool_part_mut(tool_call_id)
                {
                    tool.input = Some(parsed);
                }
            }
            Chunk::ToolInputAvailable {
                tool_call_id,
                tool_name,
                input,
            } => {
                self.partial_inputs.remove(tool_call_id);
                let tool = self.upsert_tool(tool_call_id, tool_name)?;
                // Only from input-streaming: a later state already has the input (a replay).
                if tool.state != ToolState::InputStreaming {
                    return Ok(Applied::Replayed);
                }
                tool.state = ToolState::InputAvailable;
                tool.input = Some(input.clone());
            }
            Chunk::ToolInputError {
                tool_call_id,
                tool_name,
                input,
                error_text,
            } => {
                self.partial_inputs.remove(tool_call_id);
                let tool = self.upsert_tool(tool_call_id, tool_name)?;
                if tool.state.is_settled() {
                    return Ok(Applied::Replayed);
                }
                tool.state = ToolState::OutputError;
                // As the client: the invalid input is `rawInput`, `input` stays unset.
                tool.input = None;
                tool.raw_input = Some(input.clone());
                tool.error_text = Some(error_text.clone());
            }
            Chunk::ToolApprovalRequest {
                approval_id,
                tool_call_id,
            } => {
                let (applied, tool) =
                    self.find_tool("tool-approval-request", tool_call_id, earlier)?;
                // Never undo an answer or a result.
                if tool.state == ToolState::ApprovalResponded || tool.state.is_settled() {
                    return Ok(Applied::Replayed);
                }
                tool.state = ToolState::ApprovalRequested;
                tool.approval = Some(Approval::requested(approval_id.clone()));
                return Ok(applied);
            }
            Chunk::ToolOutputAvailable {
                tool_call_id,
                output,
                preliminary,
            } => {
                let (applied, tool) =
                    self.find_tool("tool-output-available", tool_call_id, earlier)?;
                tool.state = ToolState::OutputAvailable;
                tool.output = Some(output.clone());
                tool.error_text = None;
                tool.preliminary = *preliminary;
                return Ok(applied);
            }
            Chunk::ToolOutputError {
                tool_call_id,
                error_text,
            } => {
                let (applied, tool) = self.find_tool("tool-output-error", tool_call_id, earlier)?;
                tool.state = ToolState::OutputError;
                tool.error_text = Some(error_text.clone());
                return Ok(applied);
            }
            Chunk::ToolOutputDenied { tool_call_id } => {
                let (applied, tool) =
                    self.find_tool("tool-output-denied", tool_call_id, earlier)?;
                // A granted approval or a result is not turned into a denial by a replay.
                if tool.state == ToolState::ApprovalResponded || tool.state.is_settled() {
                    return Ok(Applied::Replayed);
                }
                tool.state = ToolState::OutputDenied;
                return Ok(applied);
            }
            // The chat agent rewrites `finish {finishReason}` into `messageMetadata` (§5); a
            // bare `finishReason` is not stored by the client either.
            Chunk::Finish {
                message_metadata, ..
            } => match message_metadata {
                Some(metadata) => merge_metadata(&mut self.message.metadata, metadata),
                None => return Ok(Applied::Nothing),
            },
            Chunk::MessageMetadata { message_metadata } => {
                merge_metadata(&mut self.message.metadata, message_metadata);
            }
            Chunk::Error { .. } | Chunk::Abort => return Ok(Applied::Nothing),
        }
        Ok(Applied::Message)
    }

    fn apply_other(&mut self, value: &Value) -> Result<Applied> {
        let kind = value
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if KNOWN_CHUNKS.contains(&kind) {
            // A chunk of a kind `Chunk` reads, that did not read as one: a field is missing.
            let reason = match serde_json::from_value::<Chunk>(value.clone()) {
                Err(e) => e.to_string(),
                Ok(_) => "unexpected shape".into(),
            };
            return Err(Error::MalformedChunk {
                chunk: kind.to_owned(),
                reason,
            });
        }
        let malformed = |e: Error| Error::MalformedChunk {
            chunk: kind.to_owned(),
            reason: e.to_string(),
        };
        if let Some(name) = kind.strip_prefix("data-").filter(|n| !n.is_empty()) {
            if value.get("transient").and_then(Value::as_bool) == Some(true) {
                return Ok(Applied::Nothing);
            }
            let id = value.get("id").and_then(Value::as_str).map(str::to_owned);
            let data = value.get("data").cloned().unwrap_or(Value::Null);
            // A data part with the kind and id of an earlier one replaces its data.
            if let Some(id) = &id {
                let existing = self.message.parts.iter_mut().find_map(|part| match part {
                    Part::Data(d) if d.name == name && d.id.as_deref() == Some(id) => Some(d),
                    _ => None,
                });
                if let Some(existing) = existing {
                    existing.data = data;
                    return Ok(Applied::Message);
                }
            }
            self.push(Part::Data(DataPart {
                name: name.to_owned(),
                id,
                data,
                extra: Map::new(),
            }))?;
            return Ok(Applied::Message);
        }
        match kind {
            "file" | "source-url" | "source-document" => {
                let part = Part::from_value(value.clone()).map_err(malformed)?;
                if let Part::Source(fields) = &part
                    && fields.get("sourceId").and_then(Value::as_str).is_none()
                {
                    return Err(malformed(Error::Invalid("no string `sourceId`".into())));
                }
                self.push(part)?;
                Ok(Applied::Message)
            }
            // Kinds the client ignores as well.
            _ => Ok(Applied::Nothing),
        }
    }
}

/// The chunk kinds [`Chunk`] reads.
const KNOWN_CHUNKS: &[&str] = &[
    "start",
    "start-step",
    "text-start",
    "text-delta",
    "text-end",
    "reasoning-start",
    "reasoning-delta",
    "reasoning-end",
    "tool-input-start",
    "tool-input-delta",
    "tool-input-available",
    "tool-input-error",
    "tool-approval-request",
    "tool-output-available",
    "tool-output-error",
    "tool-output-denied",
    "finish-step",
    "finish",
    "message-metadata",
    "error",
    "abort",
];

fn unknown_call(action: &'static str, tool_call_id: &str) -> Error {
    Error::UnknownToolCall {
        action,
        tool_call_id: tool_call_id.to_owned(),
    }
}

/// Merges `update` into `metadata` as the client does: objects key by key, recursively; any
/// other value replaces.
pub fn merge_metadata(metadata: &mut Option<Value>, update: &Value) {
    match metadata {
        Some(existing) => merge_values(existing, update),
        None => *metadata = Some(update.clone()),
    }
}

fn merge_values(into: &mut Value, update: &Value) {
    match (into, update) {
        (Value::Object(into), Value::Object(update)) => {
            for (key, value) in update {
                match into.get_mut(key) {
                    Some(existing) => merge_values(existing, value),
                    None => {
                        into.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (into, update) => *into = update.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn chunk(value: Value) -> UiChunk {
        serde_json::from_value(value).unwrap()
    }

    /// Folds `chunks` (as JSON) into a new message, returning its JSON.
    fn fold(chunks: &[Value]) -> Value {
        let mut builder = MessageBuilder::new("m");
        for c in chunks {
            builder.apply(&chunk(c.clone()), &mut []).unwrap();
        }
        serde_json::to_value(builder.message()).unwrap()
    }

    #[test]
    fn start_sets_id_and_metadata() {
        let m = fold(&[json!({"type":"start","messageId":"a1","messageMetadata":{"x":1}})]);
        assert_eq!(
            m,
            json!({"id":"a1","role":"assistant","parts":[],"metadata":{"x":1}})
        );
        // Without an id (continuations) the message keeps its own.
        let m = fold(&[json!({"type":"start"})]);
        assert_eq!(m["id"], "m");
    }

    #[test]
    fn start_step_pushes_a_step_start() {
        let m = fold(&[json!({"type":"start-step"}), json!({"type":"finish-step"})]);
        assert_eq!(m["parts"], json!([{"type":"step-start"}]));
    }

    #[test]
    fn text_streams_then_is_done() {
        let mut builder = MessageBuilder::new("m");
        for c in [
            json!({"type":"text-start","id":"t"}),
            json!({"type":"text-delta","id":"t","delta":"Hel"}),
            json!({"type":"text-delta","id":"t","delta":"lo"}),
        ] {
            builder.apply(&chunk(c), &mut []).unwrap();
        }
        assert_eq!(
            serde_json::to_value(&builder.message().parts).unwrap(),
            json!([{"type":"text","text":"Hello","state":"streaming"}])
        );
        builder
            .apply(&chunk(json!({"type":"text-end","id":"t"})), &mut [])
            .unwrap();
        assert_eq!(
            serde_json::to_value(&builder.message().parts).unwrap(),
            json!([{"type":"text","text":"Hello","state":"done"}])
        );
    }

    #[test]
    fn reasoning_streams_then_is_done() {
        let m = fold(&[
            json!({"type":"reasoning-start","id":"r"}),
            json!({"type":"reasoning-delta","id":"r","delta":"hmm"}),
            json!({"type":"reasoning-end","id":"r"}),
            json!({"type":"text-start","id":"t"}),
            json!({"type":"text-delta","id":"t","delta":"ok"}),
            json!({"type":"text-end","id":"t"}),
        ]);
        assert_eq!(
            m["parts"],
            json!([{"type":"reasoning","text":"hmm","state":"done"},
                   {"type":"text","text":"ok","state":"done"}])
        );
    }

    #[test]
    fn a_delta_for_a_part_never_started_is_an_error() {
        for (c, kind) in [
            (json!({"type":"text-delta","id":"x","delta":"a"}), "text"),
            (json!({"type":"text-end","id":"x"}), "text"),
            (
                json!({"type":"reasoning-delta","id":"x","delta":"a"}),
                "reasoning",
            ),
            (json!({"type":"reasoning-end","id":"x"}), "reasoning"),
        ] {
            let err = MessageBuilder::new("m")
                .apply(&chunk(c), &mut [])
                .unwrap_err();
            assert!(matches!(err, Error::UnknownPart { kind: k, .. } if k == kind));
        }
        // A text id of the previous step is closed by `finish-step`.
        let mut builder = MessageBuilder::new("m");
        builder
            .apply(&chunk(json!({"type":"text-start","id":"t"})), &mut [])
            .unwrap();
        builder
            .apply(&chunk(json!({"type":"finish-step"})), &mut [])
            .unwrap();
        let err = builder
            .apply(
                &chunk(json!({"type":"text-delta","id":"t","delta":"a"})),
                &mut [],
            )
            .unwrap_err();
        assert!(matches!(err, Error::UnknownPart { .. }));
        // A reasoning id is not a text id.
        let mut builder = MessageBuilder::new("m");
        builder
            .apply(&chunk(json!({"type":"reasoning-start","id":"r"})), &mut [])
            .unwrap();
        assert!(
            builder
                .apply(
                    &chunk(json!({"type":"text-delta","id":"r","delta":"a"})),
                    &mut []
                )
                .is_err()
        );
    }

    #[test]
    fn tool_input_streams_then_is_available() {
        let mut builder = MessageBuilder::new("m");
        builder
            .apply(
                &chunk(
                    json!({"type":"tool-input-start","toolCallId":"c1","toolName":"getWeather"}),
                ),
                &mut [],
            )
            .unwrap();
        assert_eq!(
            serde_json::to_value(&builder.message().parts).unwrap(),
            json!([{"type":"tool-getWeather","toolCallId":"c1","state":"input-streaming"}])
        );
        for delta in ["{\"city\"", ":\"Paris\"}"] {
            builder
                .apply(
                    &chunk(
                        json!({"type":"tool-input-delta","toolCallId":"c1","inputTextDelta":delta}),
                    ),
                    &mut [],
                )
                .unwrap();
        }
        assert_eq!(
            serde_json::to_value(&builder.message().parts[0]).unwrap()["input"],
            json!({"city":"Paris"})
        );
        builder
            .apply(
                &chunk(json!({"type":"tool-input-available","toolCallId":"c1","toolName":"getWeather","input":{"city":"Paris"}})),
                &mut [],
            )
            .unwrap();
        assert_eq!(
            serde_json::to_value(&builder.message().parts).unwrap(),
            json!([{"type":"tool-getWeather","toolCallId":"c1","state":"input-available","input":{"city":"Paris"}}])
        );
        // `tool-input-available` without a start creates the part, as the client does.
        let m = fold(&[
            json!({"type":"tool-input-available","toolCallId":"c2","toolName":"f","input":{}}),
        ]);
        assert_eq!(
            m["parts"],
            json!([{"type":"tool-f","toolCallId":"c2","state":"input-available","input":{}}])
        );
    }

    #[test]
    fn tool_input_delta_for_an_unknown_call_is_an_error() {
        let err = MessageBuilder::new("m")
            .apply(
                &chunk(json!({"type":"tool-input-delta","toolCallId":"nope","inputTextDelta":"{"})),
                &mut [],
            )
            .unwrap_err();
        assert!(matches!(
            err,
            Error::UnknownToolCall {
                action: "tool-input-delta",
                ..
            }
        ));
    }

    #[test]
    fn tool_input_error_is_an_output_error_with_the_raw_input() {
        let m = fold(&[
            json!({"type":"tool-input-start","toolCallId":"c","toolName":"f"}),
            json!({"type":"tool-input-error","toolCallId":"c","toolName":"f","input":"{bad","errorText":"Invalid input for tool f"}),
        ]);
        assert_eq!(
            m["parts"],
            json!([{"type":"tool-f","toolCallId":"c","state":"output-error","rawInput":"{bad","errorText":"Invalid input for tool f"}])
        );
    }

    #[test]
    fn approval_request_then_output() {
        let m = fold(&[
            json!({"type":"tool-input-available","toolCallId":"c","toolName":"deploy","input":{"env":"prod"}}),
            json!({"type":"tool-approval-request","approvalId":"ap1","toolCallId":"c"}),
        ]);
        assert_eq!(
            m["parts"],
            json!([{"type":"tool-deploy","toolCallId":"c","state":"approval-requested","input":{"env":"prod"},"approval":{"id":"ap1"}}])
        );
    }

    #[test]
    fn tool_outputs_set_their_states() {
        let start =
            json!({"type":"tool-input-available","toolCallId":"c","toolName":"f","input":{}});
        let m = fold(&[
            start.clone(),
            json!({"type":"tool-output-available","toolCallId":"c","output":{"ok":true}}),
        ]);
        assert_eq!(
            m["parts"],
            json!([{"type":"tool-f","toolCallId":"c","state":"output-available","input":{},"output":{"ok":true}}])
        );
        let m = fold(&[
            start.clone(),
            json!({"type":"tool-output-available","toolCallId":"c","output":1,"preliminary":true}),
        ]);
        assert_eq!(m["parts"][0]["preliminary"], true);
        let m = fold(&[
            start.clone(),
            json!({"type":"tool-output-error","toolCallId":"c","errorText":"backend down"}),
        ]);
        assert_eq!(
            m["parts"],
            json!([{"type":"tool-f","toolCallId":"c","state":"output-error","input":{},"errorText":"backend down"}])
        );
        let m = fold(&[start, json!({"type":"tool-output-denied","toolCallId":"c"})]);
        assert_eq!(m["parts"][0]["state"], "output-denied");
    }

    #[test]
    fn a_result_for_a_call_of_an_earlier_message_changes_that_message() {
        let mut earlier: Vec<UiMessage> = serde_json::from_value(json!([
            {"id":"u1","role":"user","parts":[{"type":"text","text":"deploy"}]},
            {"id":"a1","role":"assistant","parts":[{"type":"step-start"},
                {"type":"tool-deploy","toolCallId":"c","state":"approval-responded","input":{},
                 "approval":{"id":"ap","approved":true}}]}
        ]))
        .unwrap();
        let mut builder = MessageBuilder::new("a2");
        builder
            .apply(&chunk(json!({"type":"start"})), &mut earlier)
            .unwrap();
        let applied = builder
            .apply(
                &chunk(json!({"type":"tool-output-available","toolCallId":"c","output":"done"})),
                &mut earlier,
            )
            .unwrap();
        assert_eq!(applied, Applied::Earlier(1));
        let tool = earlier[1].tool_parts().next().unwrap();
        assert_eq!(tool.state, ToolState::OutputAvailable);
        assert_eq!(tool.approval.as_ref().unwrap().approved, Some(true));
        assert!(builder.message().parts.is_empty());

        // No message has the call: an error, nothing changed.
        for c in [
            json!({"type":"tool-output-available","toolCallId":"zz","output":1}),
            json!({"type":"tool-output-error","toolCallId":"zz","errorText":"x"}),
            json!({"type":"tool-output-denied","toolCallId":"zz"}),
            json!({"type":"tool-approval-request","approvalId":"a","toolCallId":"zz"}),
        ] {
            let err = builder.apply(&chunk(c), &mut earlier).unwrap_err();
            assert!(matches!(err, Error::UnknownToolCall { .. }), "{err}");
        }
    }

    #[test]
    fn replayed_tool_chunks_never_move_a_call_back() {
        let mut builder = MessageBuilder::new("m");
        for c in [
            json!({"type":"tool-input-start","toolCallId":"c","toolName":"f"}),
            json!({"type":"tool-input-available","toolCallId":"c","toolName":"f","input":{"a":1}}),
            json!({"type":"tool-output-available","toolCallId":"c","output":"r"}),
            json!({"type":"tool-input-start","toolCallId":"d","toolName":"g"}),
            json!({"type":"tool-input-available","toolCallId":"d","toolName":"g","input":{}}),
            json!({"type":"tool-approval-request","approvalId":"p","toolCallId":"d"}),
        ] {
            builder.apply(&chunk(c), &mut []).unwrap();
        }
        let before = builder.message().clone();
        for c in [
            json!({"type":"tool-input-start","toolCallId":"c","toolName":"f"}),
            json!({"type":"tool-input-delta","toolCallId":"c","inputTextDelta":"{"}),
            json!({"type":"tool-input-available","toolCallId":"c","toolName":"f","input":{"a":2}}),
            json!({"type":"tool-input-error","toolCallId":"c","toolName":"f","input":"x","errorText":"e"}),
            json!({"type":"tool-approval-request","approvalId":"q","toolCallId":"c"}),
            json!({"type":"tool-output-denied","toolCallId":"c"}),
            json!({"type":"tool-input-available","toolCallId":"d","toolName":"g","input":{"b":1}}),
        ] {
            let applied = builder.apply(&chunk(c.clone()), &mut []).unwrap();
            assert_eq!(applied, Applied::Replayed, "{c}");
        }
        assert_eq!(builder.message(), &before);
        // An approved call is not denied by a replay, nor asked again.
        builder.message.tool_part_mut("d").unwrap().state = ToolState::ApprovalResponded;
        for c in [
            json!({"type":"tool-output-denied","toolCallId":"d"}),
            json!({"type":"tool-approval-request","approvalId":"p","toolCallId":"d"}),
        ] {
            assert_eq!(
                builder.apply(&chunk(c), &mut []).unwrap(),
                Applied::Replayed
            );
        }
        assert_eq!(
            builder.message.tool_part_mut("d").unwrap().state,
            ToolState::ApprovalResponded
        );
    }

    #[test]
    fn finish_and_message_metadata_merge_into_metadata() {
        let m = fold(&[
            json!({"type":"start","messageMetadata":{"model":"m","usage":{"in":1}}}),
            json!({"type":"message-metadata","messageMetadata":{"usage":{"out":2}}}),
            json!({"type":"finish","messageMetadata":{"finishReason":"stop"}}),
        ]);
        assert_eq!(
            m["metadata"],
            json!({"model":"m","usage":{"in":1,"out":2},"finishReason":"stop"})
        );
        // A bare finishReason, an error, an abort: no content.
        let mut builder = MessageBuilder::new("m");
        for c in [
            json!({"type":"finish","finishReason":"stop"}),
            json!({"type":"error","errorText":"An error occurred."}),
            json!({"type":"abort"}),
            json!({"type":"finish-step"}),
        ] {
            assert_eq!(builder.apply(&chunk(c), &mut []).unwrap(), Applied::Nothing);
        }
        assert_eq!(builder.message().metadata, None);
    }

    #[test]
    fn data_parts_are_stored_replaced_by_id_unless_transient() {
        let m = fold(&[
            json!({"type":"data-weather","id":"w","data":{"status":"loading"}}),
            json!({"type":"data-weather","id":"w","data":{"status":"done"}}),
            json!({"type":"data-note","data":"a"}),
            json!({"type":"data-note","data":"b"}),
            json!({"type":"data-progress","data":50,"transient":true}),
        ]);
        assert_eq!(
            m["parts"],
            json!([{"type":"data-weather","id":"w","data":{"status":"done"}},
                   {"type":"data-note","data":"a"},{"type":"data-note","data":"b"}])
        );
    }

    #[test]
    fn files_and_sources_are_pushed() {
        let m = fold(&[
            json!({"type":"file","url":"https://x/a.png","mediaType":"image/png"}),
            json!({"type":"source-url","sourceId":"s","url":"https://x","title":"X"}),
            json!({"type":"source-document","sourceId":"d","mediaType":"text/plain","title":"D"}),
        ]);
        assert_eq!(
            m["parts"],
            json!([{"type":"file","url":"https://x/a.png","mediaType":"image/png"},
                   {"type":"source-url","sourceId":"s","url":"https://x","title":"X"},
                   {"type":"source-document","sourceId":"d","mediaType":"text/plain","title":"D"}])
        );
        let err = MessageBuilder::new("m")
            .apply(&chunk(json!({"type":"file","url":"x"})), &mut [])
            .unwrap_err();
        assert!(matches!(err, Error::MalformedChunk { .. }));
        let err = MessageBuilder::new("m")
            .apply(&chunk(json!({"type":"source-url","url":"x"})), &mut [])
            .unwrap_err();
        assert!(matches!(err, Error::MalformedChunk { .. }));
    }

    #[test]
    fn malformed_known_chunks_are_errors_unknown_ones_are_ignored() {
        let err = MessageBuilder::new("m")
            .apply(&chunk(json!({"type":"text-delta","id":"t"})), &mut [])
            .unwrap_err();
        assert!(
            matches!(&err, Error::MalformedChunk { chunk, reason }
            if chunk == "text-delta" && reason.contains("delta")),
            "{err}"
        );
        let mut builder = MessageBuilder::new("m");
        for c in [
            json!({"type":"tool-approval-response","approvalId":"a"}),
            json!({"no":"type"}),
            json!(42),
        ] {
            assert_eq!(builder.apply(&chunk(c), &mut []).unwrap(), Applied::Nothing);
        }
    }

    #[test]
    fn ids_the_model_chose_are_bounded() {
        let long = "x".repeat(crate::chat::message::MAX_ID_BYTES + 1);
        for c in [
            json!({"type":"start","messageId":long}),
            json!({"type":"start","messageId":""}),
            json!({"type":"tool-input-start","toolCallId":long,"toolName":"f"}),
            json!({"type":"tool-input-available","toolCallId":"","toolName":"f","input":{}}),
            json!({"type":"tool-input-error","toolCallId":long,"toolName":"f","input":{},"errorText":"e"}),
            json!({"type":"tool-input-start","toolCallId":"c","toolName":""}),
        ] {
            let mut builder = MessageBuilder::new("m");
            assert!(builder.apply(&chunk(c.clone()), &mut []).is_err(), "{c}");
            assert_eq!(builder.message(), &UiMessage::new("m", Role::Assistant));
        }
    }

    #[test]
    fn parts_are_bounded() {
        let mut builder = MessageBuilder::new("m");
        for _ in 0..MAX_PARTS {
            builder
                .apply(&chunk(json!({"type":"start-step"})), &mut [])
                .unwrap();
        }
        let err = builder
            .apply(&chunk(json!({"type":"start-step"})), &mut [])
            .unwrap_err();
        assert!(matches!(err, Error::TooLarge { .. }));
    }

    #[test]
    fn a_stored_log_rebuilds_the_partial_message() {
        let log: Vec<UiChunk> = [
            json!({"type":"start","messageId":"a1"}),
            json!({"type":"start-step"}),
            json!({"type":"text-start","id":"t"}),
            json!({"type":"text-delta","id":"t","delta":"Hello"}),
            json!({"type":"text-delta","id":"bogus","delta":"!"}),
            json!({"type":"text-delta","id":"t","delta":" wor"}),
        ]
        .into_iter()
        .map(chunk)
        .collect();
        let message =
            MessageBuilder::rebuild(UiMessage::new("tmp", Role::Assistant), &log, &mut []);
        assert_eq!(
            serde_json::to_value(&message).unwrap(),
            json!({"id":"a1","role":"assistant","parts":[{"type":"step-start"},
                {"type":"text","text":"Hello wor","state":"streaming"}]})
        );
        // A continuation's log appends to the copy of the message it continued.
        let base = message.clone();
        let more: Vec<UiChunk> = [json!({"type":"start"}), json!({"type":"start-step"})]
            .into_iter()
            .map(chunk)
            .collect();
        let continued = MessageBuilder::rebuild(base, &more, &mut []);
        assert_eq!(continued.id, "a1");
        assert_eq!(continued.parts.len(), 3);
    }
}
