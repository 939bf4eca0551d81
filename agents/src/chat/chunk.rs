//! [`UiChunk`]: one chunk of the AI SDK's UI message stream, the `body` of a
//! `cf_agent_use_chat_response` frame (chat-protocol.md §6). The client folds chunks into a
//! message's `parts`; the server does the same to persist it.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A chunk of the UI message stream. Kinds the chat agent does not interpret (`data-<name>`,
/// `file`, `source-url`, `source-document`) are kept as they came, in [`UiChunk::Other`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum UiChunk {
    /// A chunk the agent interprets.
    Known(Chunk),
    /// Any other chunk, as JSON with its `type`.
    Other(Value),
}

impl From<Chunk> for UiChunk {
    fn from(chunk: Chunk) -> Self {
        UiChunk::Known(chunk)
    }
}

/// The chunks of chat-protocol.md §6, with the fields the client reads (camelCase on the wire).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "kebab-case",
    rename_all_fields = "camelCase"
)]
pub enum Chunk {
    /// The message begins; its id (absent on continuations) and metadata.
    Start {
        /// The assistant message's id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message_id: Option<String>,
        /// Its metadata.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message_metadata: Option<Value>,
    },
    /// A model call (a step) begins: a `step-start` part.
    StartStep,
    /// A text part begins.
    TextStart {
        /// The part's id, unique within the message.
        id: String,
    },
    /// More text.
    TextDelta {
        /// The part.
        id: String,
        /// The text to append.
        delta: String,
    },
    /// The text part is complete.
    TextEnd {
        /// The part.
        id: String,
    },
    /// A reasoning part begins.
    ReasoningStart {
        /// The part's id.
        id: String,
    },
    /// More reasoning.
    ReasoningDelta {
        /// The part.
        id: String,
        /// The text to append.
        delta: String,
    },
    /// The reasoning part is complete.
    ReasoningEnd {
        /// The part.
        id: String,
    },
    /// The model starts calling a tool: a `tool-<name>` part in `input-streaming`.
    ToolInputStart {
        /// The call.
        tool_call_id: String,
        /// The tool.
        tool_name: String,
    },
    /// More of the call's input, as JSON text.
    ToolInputDelta {
        /// The call.
        tool_call_id: String,
        /// The text to append.
        input_text_delta: String,
    },
    /// The call's input is complete: `input-available`.
    ToolInputAvailable {
        /// The call.
        tool_call_id: String,
        /// The tool.
        tool_name: String,
        /// Its input.
        input: Value,
    },
    /// The call cannot run (an unknown tool, input that is not JSON): `output-error`.
    ToolInputError {
        /// The call.
        tool_call_id: String,
        /// The tool.
        tool_name: String,
        /// The input as the model gave it.
        input: Value,
        /// Why.
        error_text: String,
    },
    /// The call waits for a person's approval: `approval-requested`.
    ToolApprovalRequest {
        /// The approval's id.
        approval_id: String,
        /// The call.
        tool_call_id: String,
    },
    /// The call's result: `output-available` (possibly on a part of an earlier message).
    ToolOutputAvailable {
        /// The call.
        tool_call_id: String,
        /// The result.
        output: Value,
        /// A preliminary result, to be replaced.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        preliminary: Option<bool>,
    },
    /// The call failed: `output-error`.
    ToolOutputError {
        /// The call.
        tool_call_id: String,
        /// Why.
        error_text: String,
    },
    /// The call was denied: `output-denied`.
    ToolOutputDenied {
        /// The call.
        tool_call_id: String,
    },
    /// A model call ends.
    FinishStep,
    /// The message is complete.
    Finish {
        /// Why the model stopped: `stop`, `tool-calls`, `length`, `content-filter`, `error`,
        /// `other`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        finish_reason: Option<String>,
        /// Metadata (the chat agent puts `finishReason` here for the client).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message_metadata: Option<Value>,
    },
    /// Metadata for the message.
    MessageMetadata {
        /// The metadata.
        message_metadata: Value,
    },
    /// The stream failed; nothing follows.
    Error {
        /// What to show.
        error_text: String,
    },
    /// The stream was aborted.
    Abort,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn chunks_are_the_ai_sdk_ones_on_the_wire() {
        let cases = [
            (
                Chunk::Start {
                    message_id: Some("m1".into()),
                    message_metadata: None,
                },
                json!({"type":"start","messageId":"m1"}),
            ),
            (Chunk::StartStep, json!({"type":"start-step"})),
            (
                Chunk::TextDelta {
                    id: "t".into(),
                    delta: "hi".into(),
                },
                json!({"type":"text-delta","id":"t","delta":"hi"}),
            ),
            (
                Chunk::ToolInputDelta {
                    tool_call_id: "c".into(),
                    input_text_delta: "{".into(),
                },
                json!({"type":"tool-input-delta","toolCallId":"c","inputTextDelta":"{"}),
            ),
            (
                Chunk::ToolApprovalRequest {
                    approval_id: "a".into(),
                    tool_call_id: "c".into(),
                },
                json!({"type":"tool-approval-request","approvalId":"a","toolCallId":"c"}),
            ),
            (
                Chunk::Finish {
                    finish_reason: None,
                    message_metadata: Some(json!({"finishReason":"stop"})),
                },
                json!({"type":"finish","messageMetadata":{"finishReason":"stop"}}),
            ),
            (
                Chunk::Error {
                    error_text: "An error occurred.".into(),
                },
                json!({"type":"error","errorText":"An error occurred."}),
            ),
        ];
        for (chunk, wire) in cases {
            assert_eq!(serde_json::to_value(&chunk).unwrap(), wire);
            let back: UiChunk = serde_json::from_value(wire).unwrap();
            assert_eq!(back, UiChunk::Known(chunk));
        }
        let data = json!({"type":"data-weather","id":"w","data":{"c":21}});
        let back: UiChunk = serde_json::from_value(data.clone()).unwrap();
        assert_eq!(back, UiChunk::Other(data));
    }
}
