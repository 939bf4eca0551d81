//! [`RequestBody`]: the body of a `cf_agent_use_chat_request` (its `init.body`, a JSON string),
//! chat-protocol.md §3: `{"messages":[…],"trigger":…,"clientTools"?:[…], …custom}`.
//!
//! The server reads it as AIChatAgent does, `const {messages, clientTools, trigger, ...custom}
//! = JSON.parse(init.body)`: whatever else the client put in (the hook's `body` option,
//! `sendMessage(_, {body})`) is the app's, passed on untouched.

use serde_json::{Map, Value};

use super::history::Trigger;
use super::message::{Error, MAX_MESSAGES_JSON_BYTES, Result, UiMessage, messages_from_value};

/// A tool the client declared and runs itself: `{"name","description"?,"parameters"?}`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClientTool {
    /// Its name, as the model calls it.
    pub name: String,
    /// What it does, for the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The JSON Schema of its input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
}

impl ClientTool {
    /// The `clientTools` of a request body or a `cf_agent_tool_result` frame: `None` when
    /// absent or `null`.
    pub fn list(value: Option<Value>) -> Result<Option<Vec<ClientTool>>> {
        match value {
            None | Some(Value::Null) => Ok(None),
            Some(tools) => serde_json::from_value(tools)
                .map(Some)
                .map_err(|e| Error::Invalid(format!("`clientTools`: {e}"))),
        }
    }
}

/// A chat request's body.
#[derive(Clone, Debug, PartialEq)]
pub struct RequestBody {
    /// The conversation as the client has it, its new message last.
    pub messages: Vec<UiMessage>,
    /// Submit or regenerate (`submit-message` when absent).
    pub trigger: Trigger,
    /// The tools the client runs (absent: none declared).
    pub client_tools: Option<Vec<ClientTool>>,
    /// Everything else in the body, for the app (`None` when there is nothing else).
    pub custom: Option<Map<String, Value>>,
}

impl RequestBody {
    /// Reads `init.body`.
    pub fn parse(body: &str) -> Result<RequestBody> {
        if body.len() > MAX_MESSAGES_JSON_BYTES {
            return Err(Error::TooLarge {
                what: "the chat request body (bytes)",
                size: body.len(),
                max: MAX_MESSAGES_JSON_BYTES,
            });
        }
        let value: Value = serde_json::from_str(body)
            .map_err(|e| Error::Invalid(format!("the request body is not JSON: {e}")))?;
        let Value::Object(mut map) = value else {
            return Err(Error::Invalid(
                "the request body is not a JSON object".into(),
            ));
        };
        let messages = messages_from_value(map.remove("messages").unwrap_or(Value::Null))?;
        let trigger = match map.remove("trigger") {
            None | Some(Value::Null) => Trigger::SubmitMessage,
            Some(trigger) => serde_json::from_value(trigger.clone()).map_err(|_| {
                Error::Invalid(format!(
                    "unknown trigger {trigger}; use \"submit-message\" or \"regenerate-message\""
                ))
            })?,
        };
        let client_tools = ClientTool::list(map.remove("clientTools"))?;
        Ok(RequestBody {
            messages,
            trigger,
            client_tools,
            custom: (!map.is_empty()).then_some(map),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_clients_body_reads_with_the_apps_extra_fields() {
        let body = json!({
            "messages":[{"parts":[{"type":"text","text":"hi"}],"id":"aBcDeFgHiJkLmNoP","role":"user"}],
            "trigger":"submit-message",
            "clientTools":[{"name":"getLocation","description":"Where the user is","parameters":{"type":"object"}}],
            "timezone":"Europe/Paris"
        })
        .to_string();
        let parsed = RequestBody::parse(&body).unwrap();
        assert_eq!(
            parsed.messages,
            [UiMessage::user_text("aBcDeFgHiJkLmNoP", "hi")]
        );
        assert_eq!(parsed.trigger, Trigger::SubmitMessage);
        assert_eq!(parsed.client_tools.unwrap()[0].name, "getLocation");
        assert_eq!(
            Value::Object(parsed.custom.unwrap()),
            json!({"timezone":"Europe/Paris"})
        );

        let parsed =
            RequestBody::parse(&json!({"messages":[],"trigger":"regenerate-message"}).to_string())
                .unwrap();
        assert_eq!(parsed.trigger, Trigger::RegenerateMessage);
        assert_eq!(parsed.client_tools, None);
        assert_eq!(parsed.custom, None);
    }

    #[test]
    fn a_bad_body_says_what_is_wrong() {
        for (body, needle) in [
            ("nope", "not JSON"),
            ("[]", "not a JSON object"),
            (r#"{"trigger":"submit-message"}"#, "not a JSON array"),
            (
                r#"{"messages":[],"trigger":"delete-all"}"#,
                "unknown trigger",
            ),
            (
                r#"{"messages":[],"clientTools":[{"description":"x"}]}"#,
                "clientTools",
            ),
        ] {
            let err = RequestBody::parse(body).unwrap_err().to_string();
            assert!(err.contains(needle), "{body}: {err}");
        }
    }
}
