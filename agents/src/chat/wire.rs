//! The request side of an OpenAI-compatible `POST {base}/chat/completions`: its messages and
//! tool declarations, serialized exactly as the API takes them.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One message of a chat completions request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "lowercase")]
pub enum ChatMessage {
    /// The system prompt (leading).
    System {
        /// Its text.
        content: String,
    },
    /// What the user said.
    User {
        /// Its text, or its parts (text and images).
        content: UserContent,
    },
    /// One step of the assistant: its text, its reasoning, the tools it called.
    Assistant {
        /// Its text; `null` when it only called tools.
        content: Option<String>,
        /// Its reasoning, for servers that take it back (llama.cpp, vLLM, DeepSeek).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reasoning_content: Option<String>,
        /// The tools it called.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        tool_calls: Vec<ToolCall>,
    },
    /// A tool's result, for the call with `tool_call_id`.
    Tool {
        /// The call it answers.
        tool_call_id: String,
        /// The result: the output's JSON, an error text, or `"Tool call execution denied."`.
        content: String,
    },
}

/// A user message's content.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum UserContent {
    /// One text part.
    Text(String),
    /// Several parts.
    Parts(Vec<ContentPart>),
}

/// A part of a user message's content.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentPart {
    /// Text.
    Text {
        /// The text.
        text: String,
    },
    /// An image, by URL (a `data:` URL for an uploaded file).
    ImageUrl {
        /// Where it is.
        image_url: ImageUrl,
    },
}

/// An image's address.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImageUrl {
    /// The URL.
    pub url: String,
}

/// A tool call the assistant made.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The call's id (`call_…`, or whatever the server chose).
    pub id: String,
    /// Always `"function"`.
    #[serde(rename = "type")]
    pub kind: String,
    /// What was called, with which arguments.
    pub function: FunctionCall,
}

impl ToolCall {
    /// A call of function `name` with `arguments` (a JSON text).
    pub fn function(
        id: impl Into<String>,
        name: impl Into<String>,
        arguments: impl Into<String>,
    ) -> Self {
        ToolCall {
            id: id.into(),
            kind: "function".into(),
            function: FunctionCall {
                name: name.into(),
                arguments: arguments.into(),
            },
        }
    }
}

/// The function of a [`ToolCall`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FunctionCall {
    /// The tool's name.
    pub name: String,
    /// Its input, as a JSON text.
    pub arguments: String,
}

/// A tool offered to the model: `{"type":"function","function":{name, description, parameters}}`
/// on the wire.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolSpec {
    /// Its name, as the model calls it.
    pub name: String,
    /// What it does, for the model.
    pub description: String,
    /// The JSON Schema of its input.
    pub parameters: Value,
}

impl Serialize for ToolSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serde_json::json!({
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            }
        })
        .serialize(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn messages_serialize_as_the_api_takes_them() {
        let messages = vec![
            ChatMessage::System {
                content: "You are helpful.".into(),
            },
            ChatMessage::User {
                content: UserContent::Text("Weather in Paris?".into()),
            },
            ChatMessage::Assistant {
                content: Some("Let me check.".into()),
                reasoning_content: None,
                tool_calls: vec![ToolCall::function(
                    "call_1",
                    "getWeather",
                    r#"{"city":"Paris"}"#,
                )],
            },
            ChatMessage::Tool {
                tool_call_id: "call_1".into(),
                content: r#"{"city":"Paris","tempC":21}"#.into(),
            },
        ];
        assert_eq!(
            serde_json::to_value(&messages).unwrap(),
            json!([
                {"role":"system","content":"You are helpful."},
                {"role":"user","content":"Weather in Paris?"},
                {"role":"assistant","content":"Let me check.","tool_calls":[{"id":"call_1","type":"function","function":{"name":"getWeather","arguments":"{\"city\":\"Paris\"}"}}]},
                {"role":"tool","tool_call_id":"call_1","content":"{\"city\":\"Paris\",\"tempC\":21}"}
            ])
        );
        let only_tools = ChatMessage::Assistant {
            content: None,
            reasoning_content: None,
            tool_calls: vec![ToolCall::function("c", "f", "{}")],
        };
        assert_eq!(
            serde_json::to_value(&only_tools).unwrap()["content"],
            Value::Null
        );
        let tool = ToolSpec {
            name: "getWeather".into(),
            description: "d".into(),
            parameters: json!({"type":"object"}),
        };
        assert_eq!(
            serde_json::to_value(&tool).unwrap(),
            json!({"type":"function","function":{"name":"getWeather","description":"d","parameters":{"type":"object"}}})
        );
    }
}
