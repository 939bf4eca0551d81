//! The streamed `chat.completion.chunk`s of one model call mapped to UI message chunks, as
//! chat-protocol.md §12.2 lays out. Pure: no I/O, so every row of the table is tested here and
//! against the scripted server.

use std::collections::{BTreeMap, HashSet};

use serde::Deserialize;
use serde_json::{Map, Value};

use super::{Error, FinishReason, StepToolCall, Usage};
use crate::chat::chunk::Chunk;

/// One `data:` event of the stream, with the fields the mapping reads; servers add many more
/// (`timings`, `system_fingerprint`, logprobs), which are ignored.
#[derive(Debug, Default, Deserialize)]
pub(super) struct StreamChunk {
    #[serde(default)]
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<WireUsage>,
    /// vLLM, llama.cpp and gateways report an error met mid-stream as `data: {"error":…}`.
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct Choice {
    #[serde(default)]
    index: u32,
    #[serde(default)]
    delta: Option<Delta>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Delta {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    reasoning_content: Option<String>,
    #[serde(default)]
    reasoning: Option<String>,
    #[serde(default)]
    refusal: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<ToolCallDelta>>,
}

#[derive(Debug, Deserialize)]
struct ToolCallDelta {
    #[serde(default)]
    index: Option<u32>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<FunctionDelta>,
}

#[derive(Debug, Deserialize)]
struct FunctionDelta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

#[derive(Debug, Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    prompt_tokens_details: Option<PromptTokensDetails>,
}

#[derive(Debug, Deserialize)]
struct PromptTokensDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

impl StreamChunk {
    /// Parses one `data:` payload.
    pub(super) fn parse(data: &str) -> Result<Self, Error> {
        serde_json::from_str(data).map_err(|e| Error::BadChunk {
            data: truncate(data, 200),
            reason: e.to_string(),
        })
    }
}

/// A tool call being streamed.
#[derive(Debug)]
struct PendingCall {
    /// Set by the first fragment that has one (or made up when the name comes without it).
    id: Option<String>,
    /// `None` until a fragment names the function; no chunk is sent before.
    name: Option<String>,
    arguments: String,
}

/// The parts of one step so far, and what the step yields at its end.
#[derive(Debug)]
pub(super) struct Mapper {
    prefix: String,
    next_id: u32,
    known_tools: HashSet<String>,
    /// The open text part, if any (it stays open across tool calls, as in the AI SDK).
    text_id: Option<String>,
    /// The open reasoning part, if any.
    reasoning_id: Option<String>,
    text: String,
    reasoning: String,
    refused: bool,
    /// By stream `index`: servers tie later fragments to a call by it, not by id.
    calls: BTreeMap<u32, PendingCall>,
    finish_reason: Option<String>,
    usage: Option<Usage>,
    saw_token: bool,
}

/// What a finished step leaves for its caller.
#[derive(Debug)]
pub(super) struct Finished {
    pub(super) finish_reason: FinishReason,
    pub(super) tool_calls: Vec<StepToolCall>,
    pub(super) text: String,
    pub(super) reasoning: String,
    pub(super) usage: Option<Usage>,
    /// Why the step failed, when it did.
    pub(super) error: Option<Error>,
}

impl Mapper {
    /// A step whose part ids are `{prefix}-{n}` and whose model knows `known_tools`.
    pub(super) fn new(prefix: String, known_tools: HashSet<String>) -> Self {
        Mapper {
            prefix,
            next_id: 0,
            known_tools,
            text_id: None,
            reasoning_id: None,
            text: String::new(),
            reasoning: String::new(),
            refused: false,
            calls: BTreeMap::new(),
            finish_reason: None,
            usage: None,
            saw_token: false,
        }
    }

    /// Whether a token (text, reasoning, refusal or tool call) has been streamed: from then on
    /// the step can no longer be retried.
    pub(super) fn saw_token(&self) -> bool {
        self.saw_token
    }

    /// Forgets a failed attempt that streamed no token (role chunks, a finish reason, usage), to
    /// retry it. Ids handed out stay used.
    pub(super) fn reset_attempt(&mut self) {
        self.finish_reason = None;
        self.usage = None;
    }

    fn new_id(&mut self) -> String {
        let id = format!("{}-{}", self.prefix, self.next_id);
        self.next_id += 1;
        id
    }

    /// Maps one stream chunk, appending UI chunks to `out`.
    pub(super) fn push(&mut self, chunk: StreamChunk, out: &mut Vec<Chunk>) -> Result<(), Error> {
        if let Some(error) = chunk.error {
            let message = error
                .get("message")
                .and_then(Value::as_str)
                .map_or_else(|| error.to_string(), str::to_owned);
            return Err(Error::Server { message });
        }
        if let Some(usage) = chunk.usage {
            self.usage = Some(Usage {
                prompt_tokens: usage.prompt_tokens,
                completion_tokens: usage.completion_tokens,
                cached_prompt_tokens: usage.prompt_tokens_details.and_then(|d| d.cached_tokens),
            });
        }
        // One choice is asked for (no `n`); any other is ignored.
        for choice in chunk.choices.into_iter().filter(|c| c.index == 0) {
            if let Some(delta) = choice.delta {
                self.delta(delta, out)?;
            }
            if let Some(reason) = choice.finish_reason {
                self.finish_reason = Some(reason);
            }
        }
        Ok(())
    }

    fn delta(&mut self, delta: Delta, out: &mut Vec<Chunk>) -> Result<(), Error> {
        let reasoning = delta
            .reasoning_content
            .filter(|r| !r.is_empty())
            .or(delta.reasoning.filter(|r| !r.is_empty()));
        if let Some(reasoning) = reasoning {
            self.saw_token = true;
            if let Some(id) = self.text_id.take() {
                out.push(Chunk::TextEnd { id });
            }
            let id = match &self.reasoning_id {
                Some(id) => id.clone(),
                None => {
                    let id = self.new_id();
                    out.push(Chunk::ReasoningStart { id: id.clone() });
                    self.reasoning_id = Some(id.clone());
                    id
                }
            };
            self.reasoning.push_str(&reasoning);
            out.push(Chunk::ReasoningDelta {
                id,
                delta: reasoning,
            });
        }
        if let Some(content) = delta.content.filter(|c| !c.is_empty()) {
            self.text_delta(content, out);
        }
        if let Some(refusal) = delta.refusal.filter(|r| !r.is_empty()) {
            self.refused = true;
            self.text_delta(refusal, out);
        }
        let calls = delta.tool_calls.unwrap_or_default();
        if !calls.is_empty()
            && let Some(id) = self.reasoning_id.take()
        {
            out.push(Chunk::ReasoningEnd { id });
        }
        for (position, call) in calls.into_iter().enumerate() {
            self.saw_token = true;
            let index = call
                .index
                .unwrap_or_else(|| u32::try_from(position).unwrap_or(u32::MAX));
            let (name, arguments) = match call.function {
                Some(f) => (f.name, f.arguments),
                None => (None, None),
            };
            let id = call.id.filter(|id| !id.is_empty());
            let pending = self.calls.entry(index).or_insert_with(|| PendingCall {
                id: id.clone(),
                name: None,
                arguments: String::new(),
            });
            if pending.id.is_none() {
                pending.id = id;
            }
            let arguments = arguments.unwrap_or_default();
            pending.arguments.push_str(&arguments);
            if pending.name.is_none() {
                // Some servers send a call's id before its name: its fragments wait for the name.
                let Some(name) = name.filter(|n| !n.is_empty()) else {
                    continue;
                };
                pending.name = Some(name.clone());
                // llama.cpp sends random ids, some servers none: make one when missing.
                let tool_call_id = match &pending.id {
                    Some(id) => id.clone(),
                    None => {
                        let id = format!("call_{}-{}", self.prefix, self.next_id);
                        self.next_id += 1;
                        pending.id = Some(id.clone());
                        id
                    }
                };
                out.push(Chunk::ToolInputStart {
                    tool_call_id: tool_call_id.clone(),
                    tool_name: name,
                });
                // All arguments so far (buffered ones included) as the first delta.
                if !pending.arguments.is_empty() {
                    out.push(Chunk::ToolInputDelta {
                        tool_call_id,
                        input_text_delta: pending.arguments.clone(),
                    });
                }
            } else if !arguments.is_empty() {
                out.push(Chunk::ToolInputDelta {
                    tool_call_id: pending.id.clone().unwrap_or_default(),
                    input_text_delta: arguments,
                });
            }
        }
        Ok(())
    }

    fn text_delta(&mut self, delta: String, out: &mut Vec<Chunk>) {
        self.saw_token = true;
        if let Some(id) = self.reasoning_id.take() {
            out.push(Chunk::ReasoningEnd { id });
        }
        let id = match &self.text_id {
            Some(id) => id.clone(),
            None => {
                let id = self.new_id();
                out.push(Chunk::TextStart { id: id.clone() });
                self.text_id = Some(id.clone());
                id
            }
        };
        self.text.push_str(&delta);
        out.push(Chunk::TextDelta { id, delta });
    }

    /// The stream ended well: closes the open parts, completes the tool calls and ends the step
    /// (`finish-step`). A stream without any `finish_reason` is an error: nothing is added to
    /// `out` and the result carries [`Error::NoFinishReason`].
    pub(super) fn finish(mut self, out: &mut Vec<Chunk>) -> Finished {
        let Some(reason) = self.finish_reason.take() else {
            return self.partial(Error::NoFinishReason);
        };
        if let Some(id) = self.reasoning_id.take() {
            out.push(Chunk::ReasoningEnd { id });
        }
        if let Some(id) = self.text_id.take() {
            out.push(Chunk::TextEnd { id });
        }
        if let Some((index, _)) = self.calls.iter().find(|(_, c)| c.name.is_none()) {
            let error = Error::BadChunk {
                data: format!("tool call {index}"),
                reason: "no fragment of it names the function".into(),
            };
            return self.partial(error);
        }
        let mut tool_calls = Vec::with_capacity(self.calls.len());
        for call in std::mem::take(&mut self.calls).into_values() {
            let call = self.complete(call);
            out.push(match &call.error {
                None => Chunk::ToolInputAvailable {
                    tool_call_id: call.id.clone(),
                    tool_name: call.name.clone(),
                    input: call.input.clone(),
                },
                Some(error) => Chunk::ToolInputError {
                    tool_call_id: call.id.clone(),
                    tool_name: call.name.clone(),
                    input: call.input.clone(),
                    error_text: error.clone(),
                },
            });
            tool_calls.push(call);
        }
        out.push(Chunk::FinishStep);
        let finish_reason = FinishReason::from_openai(&reason, self.refused);
        Finished {
            finish_reason,
            tool_calls,
            text: self.text,
            reasoning: self.reasoning,
            usage: self.usage,
            error: None,
        }
    }

    /// The step failed with `error`: what it streamed before, its text and reasoning, no tool
    /// call.
    pub(super) fn partial(self, error: Error) -> Finished {
        Finished {
            finish_reason: FinishReason::Error,
            tool_calls: Vec::new(),
            text: self.text,
            reasoning: self.reasoning,
            usage: self.usage,
            error: Some(error),
        }
    }

    fn complete(&self, call: PendingCall) -> StepToolCall {
        let name = call.name.unwrap_or_default();
        let parsed = if call.arguments.trim().is_empty() {
            Ok(Value::Object(Map::new()))
        } else {
            serde_json::from_str::<Value>(&call.arguments)
        };
        let (input, error) = match parsed {
            Err(e) => (
                Value::String(call.arguments.clone()),
                Some(format!(
                    "Invalid input for tool {}: JSON parsing failed: Text: {}. Error message: {e}",
                    name, call.arguments
                )),
            ),
            Ok(input) if !self.known_tools.contains(&name) => {
                let mut available: Vec<_> = self.known_tools.iter().map(String::as_str).collect();
                available.sort_unstable();
                let error = format!(
                    "Model tried to call unavailable tool '{}'. Available tools: {}.",
                    name,
                    available.join(", ")
                );
                (input, Some(error))
            }
            Ok(input) => (input, None),
        };
        StepToolCall {
            id: call.id.unwrap_or_default(),
            name,
            arguments: call.arguments,
            input,
            error,
        }
    }
}

/// At most `max` bytes of `s`, cut on a character boundary.
pub(super) fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mapper() -> Mapper {
        Mapper::new("p".into(), HashSet::from(["getWeather".to_owned()]))
    }

    fn feed(m: &mut Mapper, deltas: &[Value]) -> Vec<Chunk> {
        let mut out = Vec::new();
        for d in deltas {
            let chunk: StreamChunk = serde_json::from_value(d.clone()).unwrap();
            m.push(chunk, &mut out).unwrap();
        }
        out
    }

    fn delta(d: Value) -> Value {
        json!({"choices":[{"index":0,"delta":d}]})
    }

    fn finish(reason: &str) -> Value {
        json!({"choices":[{"index":0,"delta":{},"finish_reason":reason}]})
    }

    #[test]
    fn reasoning_then_text_then_reasoning_get_fresh_parts() {
        let mut m = mapper();
        let mut out = feed(
            &mut m,
            &[
                delta(json!({"role":"assistant","content":null})),
                delta(json!({"reasoning_content":"think"})),
                delta(json!({"content":"Hi"})),
                delta(json!({"reasoning":"more"})),
                delta(json!({"content":""})),
                finish("stop"),
            ],
        );
        let done = m.finish(&mut out);
        assert!(done.error.is_none());
        assert_eq!(
            serde_json::to_value(&out).unwrap(),
            json!([
                {"type":"reasoning-start","id":"p-0"},
                {"type":"reasoning-delta","id":"p-0","delta":"think"},
                {"type":"reasoning-end","id":"p-0"},
                {"type":"text-start","id":"p-1"},
                {"type":"text-delta","id":"p-1","delta":"Hi"},
                {"type":"text-end","id":"p-1"},
                {"type":"reasoning-start","id":"p-2"},
                {"type":"reasoning-delta","id":"p-2","delta":"more"},
                {"type":"reasoning-end","id":"p-2"},
                {"type":"finish-step"}
            ])
        );
        assert_eq!(done.finish_reason, FinishReason::Stop);
        assert_eq!(
            (done.text.as_str(), done.reasoning.as_str()),
            ("Hi", "thinkmore")
        );
    }

    #[test]
    fn finish_reasons_map_as_the_ai_sdk_does() {
        for (wire, refused, mapped) in [
            ("stop", false, FinishReason::Stop),
            ("stop", true, FinishReason::ContentFilter),
            ("tool_calls", false, FinishReason::ToolCalls),
            ("function_call", false, FinishReason::ToolCalls),
            ("length", false, FinishReason::Length),
            ("content_filter", false, FinishReason::ContentFilter),
            ("eos", false, FinishReason::Other),
        ] {
            assert_eq!(FinishReason::from_openai(wire, refused), mapped, "{wire}");
        }
    }

    #[test]
    fn no_finish_reason_is_an_error() {
        let mut m = mapper();
        let mut out = feed(&mut m, &[delta(json!({"content":"Hi"}))]);
        let partial = m.finish(&mut out);
        assert!(matches!(partial.error, Some(Error::NoFinishReason)));
        assert_eq!(out.len(), 2, "nothing after the text's start and delta");
        assert_eq!(partial.text, "Hi");
        assert_eq!(partial.finish_reason, FinishReason::Error);
    }

    #[test]
    fn fragments_before_the_name_wait_for_it_and_a_call_never_named_is_an_error() {
        let mut m = mapper();
        let call = |v: Value| delta(json!({ "tool_calls": [v] }));
        let mut out = feed(
            &mut m,
            &[
                delta(json!({"reasoning_content":"hm"})),
                call(json!({"index":0,"id":"c1","function":{"arguments":"{\"city\""}})),
                call(json!({"index":0,"function":{"name":"getWeather","arguments":":"}})),
                call(json!({"index":0,"function":{"arguments":"\"Oslo\"}"}})),
                finish("tool_calls"),
            ],
        );
        let done = m.finish(&mut out);
        assert_eq!(
            serde_json::to_value(&out).unwrap(),
            json!([
                {"type":"reasoning-start","id":"p-0"},
                {"type":"reasoning-delta","id":"p-0","delta":"hm"},
                {"type":"reasoning-end","id":"p-0"},
                {"type":"tool-input-start","toolCallId":"c1","toolName":"getWeather"},
                {"type":"tool-input-delta","toolCallId":"c1","inputTextDelta":"{\"city\":"},
                {"type":"tool-input-delta","toolCallId":"c1","inputTextDelta":"\"Oslo\"}"},
                {"type":"tool-input-available","toolCallId":"c1","toolName":"getWeather","input":{"city":"Oslo"}},
                {"type":"finish-step"}
            ])
        );
        assert_eq!(done.finish_reason, FinishReason::ToolCalls);

        let mut m = mapper();
        let mut out = feed(
            &mut m,
            &[
                call(json!({"index":0,"id":"c1","function":{"arguments":"{}"}})),
                finish("tool_calls"),
            ],
        );
        assert!(out.is_empty());
        let done = m.finish(&mut out);
        assert!(
            matches!(done.error, Some(Error::BadChunk { .. })),
            "{:?}",
            done.error
        );
        assert!(out.is_empty());
    }

    #[test]
    fn an_error_object_in_the_stream_is_a_server_error() {
        let mut m = mapper();
        let chunk = StreamChunk::parse(r#"{"error":{"message":"slot gone","code":500}}"#).unwrap();
        let error = m.push(chunk, &mut Vec::new()).unwrap_err();
        assert!(matches!(error, Error::Server { ref message } if message == "slot gone"));
        assert!(StreamChunk::parse("not json").is_err());
    }
}
