//! The transcript turned into an OpenAI-compatible request's messages, as the AI SDK's
//! `convertToModelMessages` + `@ai-sdk/openai-compatible` do (chat-protocol.md §12.1), and kept
//! within a context budget.
//!
//! The model sees one `assistant` message per model call (step), each followed by the `tool`
//! messages answering its calls, which is how the tool loop sent them while the turn ran; a
//! transcript converted later must read the same, or a model that continues a conversation sees
//! a history it did not write. UI-only parts (`data-*`, `source-*`, unknown kinds) are not sent.
//!
//! Long histories would overflow the model's context: [`fit_to_budget`] leaves the oldest
//! messages out of the request (never from the stored history), whole steps at a time.

use serde_json::Value;

use super::message::{FilePart, Part, Role, ToolPart, ToolState, UiMessage};
use super::wire::{ChatMessage, ContentPart, ImageUrl, ToolCall, UserContent};

/// The tool result the model gets for a call a person denied (without a reason).
pub const DENIED: &str = "Tool call execution denied.";

/// The request messages for `messages`, after the system prompt `system` (if any).
///
/// Tool calls without a result (`input-streaming`, `input-available`, `approval-*`) are left
/// out, since a request with a call and no result is refused by the model servers: run or
/// repair them first ([`history::repair_interrupted_tool_parts`](super::history::repair_interrupted_tool_parts)).
/// User files that are not images are left out too: an OpenAI-compatible server takes images
/// only (`image_url`).
pub fn to_chat_messages(system: Option<&str>, messages: &[UiMessage]) -> Vec<ChatMessage> {
    let mut out = Vec::new();
    if let Some(system) = system.filter(|s| !s.is_empty()) {
        out.push(ChatMessage::System {
            content: system.to_owned(),
        });
    }
    for message in messages {
        match message.role {
            Role::System => {
                let content = message.text();
                if !content.is_empty() {
                    out.push(ChatMessage::System { content });
                }
            }
            Role::User => {
                if let Some(content) = user_content(message) {
                    out.push(ChatMessage::User { content });
                }
            }
            Role::Assistant => {
                for step in message.parts.split(|p| matches!(p, Part::StepStart)) {
                    assistant_step(step, &mut out);
                }
            }
        }
    }
    out
}

fn user_content(message: &UiMessage) -> Option<UserContent> {
    let mut parts: Vec<ContentPart> = message
        .parts
        .iter()
        .filter_map(|part| match part {
            Part::Text(t) => Some(ContentPart::Text {
                text: t.text.clone(),
            }),
            Part::File(FilePart {
                media_type, url, ..
            }) if media_type.starts_with("image/") => Some(ContentPart::ImageUrl {
                image_url: ImageUrl { url: url.clone() },
            }),
            _ => None,
        })
        .collect();
    match parts.len() {
        0 => None,
        1 if matches!(parts[0], ContentPart::Text { .. }) => match parts.pop() {
            Some(ContentPart::Text { text }) => Some(UserContent::Text(text)),
            _ => None,
        },
        _ => Some(UserContent::Parts(parts)),
    }
}

/// Whether a call has a result to send back.
fn has_result(tool: &ToolPart) -> bool {
    tool.state.is_settled()
}

fn assistant_step(parts: &[Part], out: &mut Vec<ChatMessage>) {
    let mut text = String::new();
    let mut reasoning = String::new();
    let mut tools: Vec<&ToolPart> = Vec::new();
    for part in parts {
        match part {
            Part::Text(t) => text.push_str(&t.text),
            Part::Reasoning(r) => reasoning.push_str(&r.text),
            Part::Tool(tool) if has_result(tool) => tools.push(tool),
            _ => {}
        }
    }
    if text.is_empty() && reasoning.is_empty() && tools.is_empty() {
        return;
    }
    let tool_calls = tools
        .iter()
        .map(|tool| {
            let input = normalize_input(tool.input.as_ref().or(tool.raw_input.as_ref()));
            ToolCall::function(&tool.tool_call_id, &tool.tool_name, input.to_string())
        })
        .collect();
    out.push(ChatMessage::Assistant {
        content: (!text.is_empty() || tools.is_empty()).then_some(text),
        reasoning_content: (!reasoning.is_empty()).then_some(reasoning),
        tool_calls,
    });
    for tool in tools {
        out.push(ChatMessage::Tool {
            tool_call_id: tool.tool_call_id.clone(),
            content: tool_result(tool),
        });
    }
}

/// A call's input as the model servers take `arguments`: a JSON object. A string holding an
/// object is parsed; anything else (`null`, an array, the unparseable text of a
/// `tool-input-error`) becomes `{}`, since chat templates (llama.cpp's) and providers refuse
/// arguments that are not an object.
fn normalize_input(input: Option<&Value>) -> Value {
    match input {
        Some(Value::Object(_)) => input.cloned().unwrap_or_default(),
        Some(Value::String(text)) => match serde_json::from_str::<Value>(text) {
            Ok(parsed @ Value::Object(_)) => parsed,
            _ => Value::Object(Default::default()),
        },
        _ => Value::Object(Default::default()),
    }
}

/// A settled call's result as the model gets it: a string output as it is, any other output
/// as JSON, the error text, or the denial (its reason if the person gave one).
fn tool_result(tool: &ToolPart) -> String {
    match tool.state {
        ToolState::OutputAvailable => match &tool.output {
            Some(Value::String(s)) => s.clone(),
            Some(output) => output.to_string(),
            None => "null".into(),
        },
        ToolState::OutputError => tool.error_text.clone().unwrap_or_default(),
        _ => tool
            .approval
            .as_ref()
            .and_then(|a| a.extra.get("reason"))
            .and_then(Value::as_str)
            .map_or_else(|| DENIED.to_owned(), str::to_owned),
    }
}

/// What an image counts for in [`estimate_tokens`]: models bill images by their pixels, not by
/// the length of their `data:` URL (a 1024×1024 image is about 765 OpenAI tokens).
pub const IMAGE_TOKENS: usize = 1_000;

/// A message's size in tokens, estimated as its JSON's length in bytes divided by 4 (about 4
/// characters a token for English text; less for other scripts and for code, so keep the
/// budget a margin below the model's context), each image counting [`IMAGE_TOKENS`] instead of
/// its URL.
pub fn estimate_tokens(message: &ChatMessage) -> usize {
    let json_tokens = |m: &ChatMessage| serde_json::to_string(m).map_or(0, |j| j.len().div_ceil(4));
    match message {
        ChatMessage::User {
            content: UserContent::Parts(parts),
        } => {
            let images = parts
                .iter()
                .filter(|p| matches!(p, ContentPart::ImageUrl { .. }))
                .count();
            let text_only = ChatMessage::User {
                content: UserContent::Parts(
                    parts
                        .iter()
                        .filter(|p| matches!(p, ContentPart::Text { .. }))
                        .cloned()
                        .collect(),
                ),
            };
            json_tokens(&text_only) + images * IMAGE_TOKENS
        }
        _ => json_tokens(message),
    }
}

/// `messages` within `budget` tokens by `estimate` (e.g. [`estimate_tokens`]): the oldest
/// messages are left out, whole at a time: a user message, or an assistant step with the tool
/// messages that answer it. Never left out: system messages, and the last user message with
/// everything after it (the turn being answered). What remains starts with a user message
/// after the system ones, as chat templates expect. If the kept messages alone are over the
/// budget they are returned anyway: the model server then says the context is too long.
pub fn fit_to_budget(
    messages: Vec<ChatMessage>,
    budget: usize,
    estimate: impl Fn(&ChatMessage) -> usize,
) -> Vec<ChatMessage> {
    let total: usize = messages.iter().map(&estimate).sum();
    if total <= budget {
        return messages;
    }
    let last_user = messages
        .iter()
        .rposition(|m| matches!(m, ChatMessage::User { .. }))
        .unwrap_or(messages.len());
    // Groups of droppable messages before the last user message: [start, end) ranges.
    let mut groups: Vec<(usize, usize)> = Vec::new();
    for (i, message) in messages[..last_user].iter().enumerate() {
        match message {
            ChatMessage::System { .. } => {}
            ChatMessage::Tool { .. } if groups.last().is_some_and(|g| g.1 == i) => {
                if let Some(group) = groups.last_mut() {
                    group.1 = i + 1;
                }
            }
            _ => groups.push((i, i + 1)),
        }
    }
    let mut drop = vec![false; messages.len()];
    let mut remaining = total;
    let mut dropped_groups = 0;
    for &(start, end) in &groups {
        if remaining <= budget {
            break;
        }
        for (i, message) in messages[start..end].iter().enumerate() {
            drop[start + i] = true;
            remaining = remaining.saturating_sub(estimate(message));
        }
        dropped_groups += 1;
    }
    // Start the kept history at a user message.
    for &(start, end) in &groups[dropped_groups..] {
        if matches!(messages[start], ChatMessage::User { .. }) {
            break;
        }
        drop[start..end].iter_mut().for_each(|d| *d = true);
    }
    messages
        .into_iter()
        .zip(drop)
        .filter_map(|(message, dropped)| (!dropped).then_some(message))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::message::messages_from_value;
    use serde_json::json;

    fn convert(system: Option<&str>, messages: Value) -> Value {
        let messages = messages_from_value(messages).unwrap();
        serde_json::to_value(to_chat_messages(system, &messages)).unwrap()
    }

    #[test]
    fn the_spec_example_converts_exactly() {
        let out = convert(
            Some("You are helpful."),
            json!([
                {"id":"u1","role":"user","parts":[{"type":"text","text":"Weather in Paris?"}]},
                {"id":"a1","role":"assistant","parts":[
                    {"type":"step-start"},
                    {"type":"text","text":"Let me check.","state":"done"},
                    {"type":"tool-getWeather","toolCallId":"call_1","state":"output-available",
                     "input":{"city":"Paris"},"output":{"city":"Paris","tempC":21}}]}
            ]),
        );
        assert_eq!(
            out,
            json!([
                {"role":"system","content":"You are helpful."},
                {"role":"user","content":"Weather in Paris?"},
                {"role":"assistant","content":"Let me check.","tool_calls":[{"id":"call_1","type":"function","function":{"name":"getWeather","arguments":"{\"city\":\"Paris\"}"}}]},
                {"role":"tool","tool_call_id":"call_1","content":"{\"city\":\"Paris\",\"tempC\":21}"}
            ])
        );
    }

    #[test]
    fn user_parts_become_a_content_array() {
        let out = convert(
            None,
            json!([{"id":"u","role":"user","parts":[
                {"type":"text","text":"What is this?"},
                {"type":"file","mediaType":"image/png","url":"data:image/png;base64,AA==","filename":"a.png"},
                {"type":"file","mediaType":"application/pdf","url":"data:application/pdf;base64,AA=="},
                {"type":"data-x","data":1}]}]),
        );
        assert_eq!(
            out,
            json!([{"role":"user","content":[
                {"type":"text","text":"What is this?"},
                {"type":"image_url","image_url":{"url":"data:image/png;base64,AA=="}}]}])
        );
        // Two text parts stay two parts; one text part (after dropping the rest) is a string.
        let out = convert(
            None,
            json!([{"id":"u","role":"user","parts":[{"type":"text","text":"a"},{"type":"text","text":"b"}]},
                   {"id":"v","role":"user","parts":[{"type":"text","text":"c"},{"type":"data-x","data":1}]}]),
        );
        assert_eq!(
            out,
            json!([{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]},
                   {"role":"user","content":"c"}])
        );
    }

    #[test]
    fn system_messages_come_in_order_after_the_prompt() {
        let out = convert(
            Some("P"),
            json!([{"id":"s","role":"system","parts":[{"type":"text","text":"Be brief."}]},
                   {"id":"u","role":"user","parts":[{"type":"text","text":"hi"}]}]),
        );
        assert_eq!(
            out,
            json!([{"role":"system","content":"P"},{"role":"system","content":"Be brief."},
                   {"role":"user","content":"hi"}])
        );
        assert_eq!(convert(Some(""), json!([])), json!([]));
    }

    #[test]
    fn an_assistant_message_splits_at_each_step() {
        let out = convert(
            None,
            json!([{"id":"a","role":"assistant","parts":[
                {"type":"step-start"},
                {"type":"reasoning","text":"need weather","state":"done"},
                {"type":"tool-getWeather","toolCallId":"c1","state":"output-available","input":{"city":"Paris"},"output":"sunny"},
                {"type":"tool-deploy","toolCallId":"c2","state":"output-denied","input":{},"approval":{"id":"p","approved":false}},
                {"type":"tool-bad","toolCallId":"c3","state":"output-error","rawInput":"{oops","errorText":"Invalid input"},
                {"type":"tool-list","toolCallId":"c4","state":"output-available","input":[1],"output":[]},
                {"type":"tool-str","toolCallId":"c5","state":"output-available","rawInput":"{\"a\":1}","output":{}},
                {"type":"data-progress","data":1},
                {"type":"source-url","sourceId":"s","url":"https://x"},
                {"type":"step-start"},
                {"type":"text","text":"It is ","state":"done"},
                {"type":"text","text":"sunny.","state":"done"}]}]),
        );
        assert_eq!(
            out,
            json!([
                {"role":"assistant","content":null,"reasoning_content":"need weather","tool_calls":[
                    {"id":"c1","type":"function","function":{"name":"getWeather","arguments":"{\"city\":\"Paris\"}"}},
                    {"id":"c2","type":"function","function":{"name":"deploy","arguments":"{}"}},
                    {"id":"c3","type":"function","function":{"name":"bad","arguments":"{}"}},
                    {"id":"c4","type":"function","function":{"name":"list","arguments":"{}"}},
                    {"id":"c5","type":"function","function":{"name":"str","arguments":"{\"a\":1}"}}]},
                {"role":"tool","tool_call_id":"c1","content":"sunny"},
                {"role":"tool","tool_call_id":"c2","content":"Tool call execution denied."},
                {"role":"tool","tool_call_id":"c3","content":"Invalid input"},
                {"role":"tool","tool_call_id":"c4","content":"[]"},
                {"role":"tool","tool_call_id":"c5","content":"{}"},
                {"role":"assistant","content":"It is sunny."}
            ])
        );
    }

    #[test]
    fn calls_without_a_result_are_not_sent() {
        let out = convert(
            None,
            json!([{"id":"a","role":"assistant","parts":[
                {"type":"step-start"},
                {"type":"text","text":"Checking.","state":"done"},
                {"type":"tool-getLocation","toolCallId":"c","state":"input-available","input":{}},
                {"type":"step-start"},
                {"type":"tool-x","toolCallId":"d","state":"approval-requested","input":{},"approval":{"id":"p"}}]}]),
        );
        assert_eq!(out, json!([{"role":"assistant","content":"Checking."}]));
    }

    #[test]
    fn a_denial_with_a_reason_sends_the_reason() {
        let out = convert(
            None,
            json!([{"id":"a","role":"assistant","parts":[
                {"type":"tool-x","toolCallId":"c","state":"output-denied","input":{},
                 "approval":{"id":"p","approved":false,"reason":"not today"}}]}]),
        );
        assert_eq!(
            out[1],
            json!({"role":"tool","tool_call_id":"c","content":"not today"})
        );
    }

    fn user(text: &str) -> ChatMessage {
        ChatMessage::User {
            content: UserContent::Text(text.into()),
        }
    }
    fn assistant(text: &str, calls: &[&str]) -> ChatMessage {
        ChatMessage::Assistant {
            content: Some(text.into()),
            reasoning_content: None,
            tool_calls: calls
                .iter()
                .map(|c| ToolCall::function(*c, "f", "{}"))
                .collect(),
        }
    }
    fn tool(call: &str) -> ChatMessage {
        ChatMessage::Tool {
            tool_call_id: call.into(),
            content: "r".into(),
        }
    }

    #[test]
    fn the_budget_leaves_out_the_oldest_whole_steps() {
        let system = ChatMessage::System {
            content: "S".into(),
        };
        let messages = vec![
            system.clone(),
            user("u1"),
            assistant("a1", &["c1", "c2"]),
            tool("c1"),
            tool("c2"),
            user("u2"),
            assistant("a2", &[]),
            user("u3"),
            assistant("a3", &["c3"]),
            tool("c3"),
        ];
        // Every message costs 1: all 10 fit in 10.
        assert_eq!(fit_to_budget(messages.clone(), 10, |_| 1).len(), 10);
        // In 7: u1 goes, then a1 with both its results (never split), leaving 5.
        let kept = fit_to_budget(messages.clone(), 7, |_| 1);
        assert_eq!(
            kept,
            vec![
                system.clone(),
                user("u2"),
                assistant("a2", &[]),
                user("u3"),
                assistant("a3", &["c3"]),
                tool("c3")
            ]
        );
        // In 5: u2 goes, and a2 with it (the kept history starts at a user message).
        let kept = fit_to_budget(messages.clone(), 5, |_| 1);
        assert_eq!(
            kept,
            vec![
                system.clone(),
                user("u3"),
                assistant("a3", &["c3"]),
                tool("c3")
            ]
        );
        // In 0: the system prompt and the turn being answered stay.
        assert_eq!(fit_to_budget(messages, 0, |_| 1), kept);
    }

    #[test]
    fn tokens_are_estimated_from_the_json_length() {
        let m = user("abcd");
        let json_len = serde_json::to_string(&m).unwrap().len();
        assert_eq!(estimate_tokens(&m), json_len.div_ceil(4));
        let long = user(&"x".repeat(4000));
        assert!(estimate_tokens(&long) >= 1000);
        // An image counts IMAGE_TOKENS, however long its data URL.
        let image = |len: usize| ChatMessage::User {
            content: UserContent::Parts(vec![
                ContentPart::Text {
                    text: "abcd".into(),
                },
                ContentPart::ImageUrl {
                    image_url: ImageUrl {
                        url: "x".repeat(len),
                    },
                },
            ]),
        };
        assert_eq!(
            estimate_tokens(&image(10)),
            estimate_tokens(&image(4_000_000))
        );
        assert!(estimate_tokens(&image(10)) > IMAGE_TOKENS);
        assert!(estimate_tokens(&image(10)) < IMAGE_TOKENS + 20);
    }
}
