//! [`UiMessage`]: a message of the chat transcript as the AI SDK's `useAgentChat` client holds it,
//! sends it (`cf_agent_use_chat_request`, `cf_agent_chat_messages`) and loads it
//! (`GET …/get-messages`), chat-protocol.md §2 and §6.
//!
//! The transcript the agent persists is the one the client renders, so the server keeps messages
//! in the client's own shape rather than in a model-side one: a reload must show exactly what
//! was streamed. Parts the agent reads (text, reasoning, step starts, tool calls, files, data)
//! are typed; every field the agent does not read (`providerMetadata`, a tool's `title`, …) and
//! every part kind it does not know are kept verbatim, so nothing the client sent is lost when a
//! message is stored and served back.
//!
//! Messages come from the network, so [`parse_messages`] refuses what the client never sends
//! with an [`Error`] that says what is wrong, and bounds the sizes ([`MAX_MESSAGES`],
//! [`MAX_PARTS`], [`MAX_ID_BYTES`], [`MAX_MESSAGES_JSON_BYTES`]).

use serde::de::{self, Deserializer};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// At most this many messages in one transcript or request. A chat agent's history of 1,000
/// messages is a heavy one; ten times that is refused rather than loaded.
pub const MAX_MESSAGES: usize = 10_000;
/// At most this many parts in one message. A turn of 5 model calls with a few tools each has
/// a few dozen.
pub const MAX_PARTS: usize = 1_000;
/// At most this many bytes in a message id or a tool call id (the client's are 16 characters,
/// llama.cpp's call ids 32).
pub const MAX_ID_BYTES: usize = 256;
/// At most this many bytes of JSON in one list of messages given to [`parse_messages`].
pub const MAX_MESSAGES_JSON_BYTES: usize = 32 * 1024 * 1024;

/// Result with the chat message model's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can be wrong with messages, chunks, tool results and approvals.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Messages that are not the AI SDK's UIMessages.
    #[error(
        "invalid chat message: {0}; send UIMessages as the AI SDK client does: {{\"id\",\"role\":\"user\"|\"assistant\"|\"system\",\"parts\":[…]}}"
    )]
    Invalid(String),
    /// Messages over one of the size limits.
    #[error("{what} is {size}, over the limit of {max}; send a shorter history or smaller parts")]
    TooLarge {
        /// What is too large.
        what: &'static str,
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A delta or end chunk for a text or reasoning part that was never started (or whose step
    /// ended): the client would throw on it, so the stream producing it is broken.
    #[error(
        "chunk `{chunk}` names {kind} part `{id}`, which was not started in this step; send `{kind}-start` first"
    )]
    UnknownPart {
        /// The chunk's type.
        chunk: &'static str,
        /// `text` or `reasoning`.
        kind: &'static str,
        /// The part id it names.
        id: String,
    },
    /// A chunk, tool result or approval for a tool call no message has.
    #[error(
        "no tool call `{tool_call_id}` in the transcript (for `{action}`); the call must be streamed (`tool-input-start` or `tool-input-available`) first"
    )]
    UnknownToolCall {
        /// What was attempted.
        action: &'static str,
        /// The call id given.
        tool_call_id: String,
    },
    /// A chunk of a known type without the fields it must have.
    #[error("malformed `{chunk}` chunk: {reason}")]
    MalformedChunk {
        /// The chunk's type.
        chunk: String,
        /// What is missing or wrong.
        reason: String,
    },
}

/// Who a message is from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The system prompt.
    System,
    /// The person chatting.
    User,
    /// The model.
    Assistant,
}

/// A message of the transcript: `{"id","role","parts":[…],"metadata"?}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UiMessage {
    /// Its id, chosen by the client (user messages) or the server (assistant messages).
    pub id: String,
    /// Who it is from.
    pub role: Role,
    /// Its content, in order.
    pub parts: Vec<Part>,
    /// App metadata (the chat agent's `finishReason`, usage, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    /// Fields this model does not read, kept as they came.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl UiMessage {
    /// An empty message.
    pub fn new(id: impl Into<String>, role: Role) -> Self {
        UiMessage {
            id: id.into(),
            role,
            parts: Vec::new(),
            metadata: None,
            extra: Map::new(),
        }
    }

    /// A user message of one text part, as the client sends it.
    pub fn user_text(id: impl Into<String>, text: impl Into<String>) -> Self {
        let mut message = UiMessage::new(id, Role::User);
        message.parts.push(Part::Text(TextPart::new(text, None)));
        message
    }

    /// The message's text parts joined, as the model is given it.
    pub fn text(&self) -> String {
        self.parts
            .iter()
            .filter_map(|part| match part {
                Part::Text(t) => Some(t.text.as_str()),
                _ => None,
            })
            .collect()
    }

    /// The tool part of call `tool_call_id`, if this message has it.
    pub fn tool_part_mut(&mut self, tool_call_id: &str) -> Option<&mut ToolPart> {
        self.parts.iter_mut().find_map(|part| match part {
            Part::Tool(tool) if tool.tool_call_id == tool_call_id => Some(tool),
            _ => None,
        })
    }

    /// The tool parts of this message.
    pub fn tool_parts(&self) -> impl Iterator<Item = &ToolPart> {
        self.parts.iter().filter_map(|part| match part {
            Part::Tool(tool) => Some(tool),
            _ => None,
        })
    }

    /// Checks the limits and the invariants the wire does not express: a non-empty id within
    /// [`MAX_ID_BYTES`], at most [`MAX_PARTS`] parts, tool call ids within bounds.
    pub fn validate(&self) -> Result<()> {
        check_id("a message id", &self.id)?;
        if self.parts.len() > MAX_PARTS {
            return Err(Error::TooLarge {
                what: "the number of parts of a message",
                size: self.parts.len(),
                max: MAX_PARTS,
            });
        }
        for tool in self.tool_parts() {
            check_id("a tool call id", &tool.tool_call_id)?;
        }
        Ok(())
    }
}

/// Refuses an empty id or one over [`MAX_ID_BYTES`].
pub(crate) fn check_id(what: &'static str, id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(Error::Invalid(format!("{what} is empty")));
    }
    if id.len() > MAX_ID_BYTES {
        return Err(Error::TooLarge {
            what,
            size: id.len(),
            max: MAX_ID_BYTES,
        });
    }
    Ok(())
}

/// Parses a JSON array of UIMessages (a request's `messages`, a `cf_agent_chat_messages` frame's,
/// a stored transcript), refusing what is not one or is over the limits.
pub fn parse_messages(json: &str) -> Result<Vec<UiMessage>> {
    if json.len() > MAX_MESSAGES_JSON_BYTES {
        return Err(Error::TooLarge {
            what: "the JSON of the messages (bytes)",
            size: json.len(),
            max: MAX_MESSAGES_JSON_BYTES,
        });
    }
    let value: Value =
        serde_json::from_str(json).map_err(|e| Error::Invalid(format!("not JSON: {e}")))?;
    messages_from_value(value)
}

/// [`parse_messages`] for JSON already parsed (the `messages` of a request body).
pub fn messages_from_value(value: Value) -> Result<Vec<UiMessage>> {
    let Value::Array(items) = value else {
        return Err(Error::Invalid("the messages are not a JSON array".into()));
    };
    if items.len() > MAX_MESSAGES {
        return Err(Error::TooLarge {
            what: "the number of messages",
            size: items.len(),
            max: MAX_MESSAGES,
        });
    }
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            // Check the part count before decoding the parts, so a huge message costs no more.
            if let Some(parts) = item.get("parts").and_then(Value::as_array)
                && parts.len() > MAX_PARTS
            {
                return Err(Error::TooLarge {
                    what: "the number of parts of a message",
                    size: parts.len(),
                    max: MAX_PARTS,
                });
            }
            let message: UiMessage = serde_json::from_value(item)
                .map_err(|e| Error::Invalid(format!("message {i}: {e}")))?;
            message.validate()?;
            Ok(message)
        })
        .collect()
}

/// One part of a message. Its JSON has a `type`: `text`, `reasoning`, `step-start`,
/// `tool-<name>` (or `dynamic-tool`), `file`, `data-<name>`, `source-url`, `source-document`;
/// any other kind is an [`Part::Other`], kept verbatim.
#[derive(Clone, Debug, PartialEq)]
pub enum Part {
    /// `{"type":"text","text","state"?}`.
    Text(TextPart),
    /// `{"type":"reasoning","text","state"?}`.
    Reasoning(TextPart),
    /// `{"type":"step-start"}`: a model call (step) begins here.
    StepStart,
    /// `{"type":"tool-<name>","toolCallId","state",…}`: a tool call and its result.
    Tool(ToolPart),
    /// `{"type":"file","mediaType","url","filename"?}`.
    File(FilePart),
    /// `{"type":"data-<name>","id"?,"data"}`: app data streamed with the message.
    Data(DataPart),
    /// `{"type":"source-url"|"source-document","sourceId",…}`: a source the model cited; all its
    /// fields, `type` included, as they came.
    Source(Map<String, Value>),
    /// A part of a kind this model does not know, `type` included, as it came.
    Other(Map<String, Value>),
}

/// Whether a text or reasoning part is still streaming.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TextState {
    /// Deltas may follow.
    Streaming,
    /// Complete.
    Done,
}

/// A text or reasoning part.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TextPart {
    /// The text so far.
    pub text: String,
    /// Absent on the user's own parts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<TextState>,
    /// Other fields (`providerMetadata`), as they came.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl TextPart {
    /// A part with `text`.
    pub fn new(text: impl Into<String>, state: Option<TextState>) -> Self {
        TextPart {
            text: text.into(),
            state,
            extra: Map::new(),
        }
    }
}

/// Where a tool call is in its life (`state` of a tool part).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ToolState {
    /// The model is still writing the input.
    InputStreaming,
    /// The input is complete; the tool has not answered.
    InputAvailable,
    /// The call waits for a person's approval.
    ApprovalRequested,
    /// A person answered; the tool has not run yet.
    ApprovalResponded,
    /// The tool answered.
    OutputAvailable,
    /// The tool (or its input) failed.
    OutputError,
    /// A person denied the call.
    OutputDenied,
}

impl ToolState {
    /// Whether the call has its result (output, error or denial).
    pub fn is_settled(self) -> bool {
        matches!(
            self,
            ToolState::OutputAvailable | ToolState::OutputError | ToolState::OutputDenied
        )
    }
}

/// An approval asked for a tool call: `{"id","approved"?,"reason"?}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Approval {
    /// The approval's id (the client answers with it; the wire carries the call id).
    pub id: String,
    /// The answer, once given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved: Option<bool>,
    /// Other fields (`reason`), as they came.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Approval {
    /// An approval not answered yet.
    pub fn requested(id: impl Into<String>) -> Self {
        Approval {
            id: id.into(),
            approved: None,
            extra: Map::new(),
        }
    }
}

/// A tool call and its result. `type` is `tool-<tool_name>` on the wire (`dynamic-tool` with a
/// `toolName` field for a [`ToolPart::dynamic`] one).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ToolPart {
    /// The tool's name (from the part's `type`).
    #[serde(skip)]
    pub tool_name: String,
    /// A `dynamic-tool` part (tools not known when the app was written, such as MCP ones).
    #[serde(skip)]
    pub dynamic: bool,
    /// The call's id.
    pub tool_call_id: String,
    /// Where the call is.
    pub state: ToolState,
    /// The input (partial while streaming). `null` is a value, absent is `None`.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub input: Option<Value>,
    /// The input as the model gave it, when it was not valid (`tool-input-error`).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub raw_input: Option<Value>,
    /// The tool's result.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub output: Option<Value>,
    /// Why the call failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_text: Option<String>,
    /// The approval asked for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Approval>,
    /// Whether `output` is a preliminary result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preliminary: Option<bool>,
    /// Other fields (`providerExecuted`, `callProviderMetadata`, `title`, …), as they came.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ToolPart {
    /// A call of `tool_name` in `state`, nothing else known yet.
    pub fn new(
        tool_call_id: impl Into<String>,
        tool_name: impl Into<String>,
        state: ToolState,
    ) -> Self {
        ToolPart {
            tool_name: tool_name.into(),
            dynamic: false,
            tool_call_id: tool_call_id.into(),
            state,
            input: None,
            raw_input: None,
            output: None,
            error_text: None,
            approval: None,
            preliminary: None,
            extra: Map::new(),
        }
    }
}

/// Some(value) for a field that is present, `null` included.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// A file: `{"type":"file","mediaType","url","filename"?}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FilePart {
    /// Its IANA media type (`image/png`).
    pub media_type: String,
    /// Where it is (a `data:` URL for an upload).
    pub url: String,
    /// Its name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
    /// Other fields, as they came.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// App data: `{"type":"data-<name>","id"?,"data"}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataPart {
    /// The data's kind (after `data-`).
    #[serde(skip)]
    pub name: String,
    /// Its id: a later chunk with the same kind and id replaces it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The data.
    #[serde(default)]
    pub data: Value,
    /// Other fields, as they came.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Part {
    /// The part's `type` on the wire.
    pub fn kind(&self) -> String {
        match self {
            Part::Text(_) => "text".into(),
            Part::Reasoning(_) => "reasoning".into(),
            Part::StepStart => "step-start".into(),
            Part::Tool(t) if t.dynamic => "dynamic-tool".into(),
            Part::Tool(t) => format!("tool-{}", t.tool_name),
            Part::File(_) => "file".into(),
            Part::Data(d) => format!("data-{}", d.name),
            Part::Source(m) | Part::Other(m) => m
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
        }
    }

    /// Reads a part from its JSON.
    pub fn from_value(value: Value) -> Result<Part> {
        let Value::Object(mut map) = value else {
            return Err(Error::Invalid("a part is not a JSON object".into()));
        };
        let kind = match map.get("type") {
            Some(Value::String(kind)) => kind.clone(),
            _ => return Err(Error::Invalid("a part has no string `type`".into())),
        };
        fn typed<T: serde::de::DeserializeOwned>(
            kind: &str,
            mut map: Map<String, Value>,
        ) -> Result<T> {
            map.remove("type");
            serde_json::from_value(Value::Object(map))
                .map_err(|e| Error::Invalid(format!("`{kind}` part: {e}")))
        }
        Ok(match kind.as_str() {
            "text" => Part::Text(typed(&kind, map)?),
            "reasoning" => Part::Reasoning(typed(&kind, map)?),
            "step-start" => Part::StepStart,
            "file" => Part::File(typed(&kind, map)?),
            "source-url" | "source-document" => Part::Source(map),
            "dynamic-tool" => {
                let name = match map.remove("toolName") {
                    Some(Value::String(name)) => name,
                    _ => {
                        return Err(Error::Invalid(
                            "`dynamic-tool` part: no string `toolName`".into(),
                        ));
                    }
                };
                let mut tool: ToolPart = typed(&kind, map)?;
                tool.tool_name = name;
                tool.dynamic = true;
                Part::Tool(tool)
            }
            _ if kind.starts_with("tool-") && kind.len() > "tool-".len() => {
                let mut tool: ToolPart = typed(&kind, map)?;
                tool.tool_name = kind["tool-".len()..].to_owned();
                Part::Tool(tool)
            }
            _ if kind.starts_with("data-") && kind.len() > "data-".len() => {
                let mut data: DataPart = typed(&kind, map)?;
                data.name = kind["data-".len()..].to_owned();
                Part::Data(data)
            }
            _ => Part::Other(map),
        })
    }

    /// The part's JSON.
    pub fn to_value(&self) -> Value {
        fn tagged<T: Serialize>(kind: String, part: &T) -> Value {
            let mut map = Map::new();
            map.insert("type".into(), Value::String(kind));
            // Typed parts are maps of strings and JSON values: serializing cannot fail.
            if let Ok(Value::Object(fields)) = serde_json::to_value(part) {
                map.extend(fields);
            }
            Value::Object(map)
        }
        match self {
            Part::Text(t) | Part::Reasoning(t) => tagged(self.kind(), t),
            Part::StepStart => serde_json::json!({"type": "step-start"}),
            Part::Tool(t) => {
                let mut value = tagged(self.kind(), t);
                if t.dynamic
                    && let Value::Object(map) = &mut value
                {
                    map.insert("toolName".into(), Value::String(t.tool_name.clone()));
                }
                value
            }
            Part::File(f) => tagged(self.kind(), f),
            Part::Data(d) => tagged(self.kind(), d),
            Part::Source(m) | Part::Other(m) => Value::Object(m.clone()),
        }
    }
}

impl Serialize for Part {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_value().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Part {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Part::from_value(Value::deserialize(d)?).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_user_message_from_the_client_round_trips() {
        let wire =
            json!({"parts":[{"type":"text","text":"hi"}],"id":"aBcDeFgHiJkLmNoP","role":"user"});
        let messages = messages_from_value(json!([wire.clone()])).unwrap();
        assert_eq!(messages[0], UiMessage::user_text("aBcDeFgHiJkLmNoP", "hi"));
        assert_eq!(serde_json::to_value(&messages[0]).unwrap(), wire);
    }

    #[test]
    fn every_part_kind_round_trips_verbatim() {
        let message = json!({
            "id": "a1", "role": "assistant", "metadata": {"finishReason": "stop"},
            "createdAt": "2026-01-01T00:00:00Z",
            "parts": [
                {"type":"step-start"},
                {"type":"reasoning","text":"hm","state":"done","providerMetadata":{"x":{"y":1}}},
                {"type":"text","text":"Let me check.","state":"done"},
                {"type":"tool-getWeather","toolCallId":"call_1","state":"output-available",
                 "input":{"city":"Paris"},"output":null,"preliminary":false,"title":"Weather"},
                {"type":"tool-deploy","toolCallId":"call_2","state":"approval-responded",
                 "input":{},"approval":{"id":"ap1","approved":true,"reason":"ok"}},
                {"type":"tool-bad","toolCallId":"call_3","state":"output-error",
                 "rawInput":"{oops","errorText":"Invalid input"},
                {"type":"dynamic-tool","toolName":"mcp_search","toolCallId":"call_4",
                 "state":"input-available","input":{"q":"x"}},
                {"type":"file","mediaType":"image/png","url":"data:image/png;base64,AA==","filename":"a.png"},
                {"type":"data-weather","id":"w1","data":{"tempC":21}},
                {"type":"source-url","sourceId":"s1","url":"https://example.com","title":"Ex"},
                {"type":"source-document","sourceId":"s2","mediaType":"application/pdf","title":"Doc"},
                {"type":"some-future-part","anything":[1,2,3]}
            ]
        });
        let parsed = messages_from_value(json!([message.clone()])).unwrap();
        let parts = &parsed[0].parts;
        assert!(matches!(parts[0], Part::StepStart));
        assert!(
            matches!(&parts[3], Part::Tool(t) if t.tool_name == "getWeather"
            && t.output == Some(Value::Null) && t.state == ToolState::OutputAvailable)
        );
        assert!(matches!(&parts[4], Part::Tool(t)
            if t.approval.as_ref().and_then(|a| a.approved) == Some(true)));
        assert!(matches!(&parts[6], Part::Tool(t) if t.dynamic && t.tool_name == "mcp_search"));
        assert!(matches!(&parts[8], Part::Data(d) if d.name == "weather"));
        assert!(matches!(&parts[9], Part::Source(_)));
        assert!(matches!(&parts[11], Part::Other(_)));
        assert_eq!(parts[11].kind(), "some-future-part");
        assert_eq!(serde_json::to_value(&parsed[0]).unwrap(), message);
    }

    #[test]
    fn garbage_is_refused_with_what_is_wrong() {
        let cases = [
            ("{}", "not a JSON array"),
            ("[1]", "message 0"),
            (r#"[{"id":"a","role":"robot","parts":[]}]"#, "message 0"),
            (r#"[{"id":"a","role":"user"}]"#, "parts"),
            (
                r#"[{"id":"","role":"user","parts":[]}]"#,
                "message id is empty",
            ),
            (
                r#"[{"id":"a","role":"user","parts":[{"text":"no type"}]}]"#,
                "no string `type`",
            ),
            (
                r#"[{"id":"a","role":"user","parts":[{"type":"text"}]}]"#,
                "`text` part",
            ),
            (
                r#"[{"id":"a","role":"assistant","parts":[{"type":"tool-x","toolCallId":"c","state":"exploded"}]}]"#,
                "`tool-x` part",
            ),
            (
                r#"[{"id":"a","role":"assistant","parts":[{"type":"tool-x","state":"input-available"}]}]"#,
                "toolCallId",
            ),
            ("[{", "not JSON"),
        ];
        for (json, needle) in cases {
            let err = parse_messages(json).unwrap_err().to_string();
            assert!(err.contains(needle), "{json}: {err}");
        }
    }

    #[test]
    fn sizes_are_bounded() {
        let long_id = "x".repeat(MAX_ID_BYTES + 1);
        let err = messages_from_value(json!([{"id": long_id, "role": "user", "parts": []}]));
        assert!(matches!(err, Err(Error::TooLarge { .. })));

        let parts: Vec<Value> = (0..=MAX_PARTS)
            .map(|_| json!({"type":"text","text":""}))
            .collect();
        let err = messages_from_value(json!([{"id": "a", "role": "user", "parts": parts}]));
        assert!(matches!(err, Err(Error::TooLarge { max: MAX_PARTS, .. })));

        let many: Vec<Value> = (0..=MAX_MESSAGES)
            .map(|i| json!({"id": format!("m{i}"), "role": "user", "parts": []}))
            .collect();
        let err = messages_from_value(Value::Array(many));
        assert!(matches!(
            err,
            Err(Error::TooLarge {
                max: MAX_MESSAGES,
                ..
            })
        ));

        let huge = format!("[\"{}\"]", "x".repeat(MAX_MESSAGES_JSON_BYTES));
        assert!(matches!(parse_messages(&huge), Err(Error::TooLarge { .. })));

        // Deep nesting is refused by the JSON parser's depth limit, not a stack overflow.
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(matches!(parse_messages(&deep), Err(Error::Invalid(_))));

        let long_call = "c".repeat(MAX_ID_BYTES + 1);
        let err = messages_from_value(json!([{"id": "a", "role": "assistant", "parts": [
            {"type":"tool-x","toolCallId": long_call,"state":"input-available"}]}]));
        assert!(matches!(err, Err(Error::TooLarge { .. })));
    }
}
