//! The Agents SDK wire protocol (`agents@0.32.0`, "cf-websocket"): JSON text frames.

use denizen_runtime::Frame;
use serde_json::{Value, json};

/// The first frame of a connection: the agent's class and name.
pub const IDENTITY: &str = "cf_agent_identity";
/// The whole state, both ways.
pub const STATE: &str = "cf_agent_state";
/// A client's state change was refused.
pub const STATE_ERROR: &str = "cf_agent_state_error";
/// The agent's MCP servers with their tools, prompts and resources.
pub const MCP_SERVERS: &str = "cf_agent_mcp_servers";
/// A method call and its result (or its chunks, when streaming).
pub const RPC: &str = "rpc";
/// Our answer to a frame the agent could not use (not JSON, unknown type, malformed protocol
/// frame). The JS client passes it to plain `message` listeners.
pub const ERROR: &str = "cf_agent_error";

/// The identity frame: `name` is the instance, `agent` its class; `state_follows` says a state
/// frame comes next.
pub fn identity(name: &str, agent: &str, state_follows: bool) -> Value {
    let mut v = json!({ "type": IDENTITY, "name": name, "agent": agent });
    if state_follows {
        v["stateFollows"] = Value::Bool(true);
    }
    v
}

/// A state frame.
pub fn state(state: &Value) -> Value {
    json!({ "type": STATE, "state": state })
}

/// A state error frame, answered to a refused client state change.
pub fn state_error(error: &str) -> Value {
    json!({ "type": STATE_ERROR, "error": error })
}

/// The agent's MCP servers with their tools, prompts and resources (see
/// [`McpClient::servers`](crate::McpClient::servers)).
pub fn mcp_servers(mcp: Value) -> Value {
    json!({ "type": MCP_SERVERS, "mcp": mcp })
}

/// A success frame; a `None` (or JSON null) result is left out, which the client reads as
/// `undefined`.
pub fn rpc_result(id: &str, result: Option<Value>, done: bool) -> Value {
    let mut v = json!({ "type": RPC, "id": id, "success": true, "done": done });
    if let Some(result) = result.filter(|r| !r.is_null()) {
        v["result"] = result;
    }
    v
}

/// An error frame. The id is echoed through [`echo`], so a huge one is not sent back whole.
pub fn rpc_error(id: &str, error: &str) -> Value {
    json!({ "type": RPC, "id": echo(id), "success": false, "error": error })
}

/// Characters of a client's own text (a frame type, an RPC id or method name) that errors
/// echo back; the rest is cut, so a huge field costs the server and the client nothing more.
pub const MAX_ECHO: usize = 64;

/// `text` as errors echo it: its first [`MAX_ECHO`] characters, and `…` when it was longer.
pub fn echo(text: &str) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(MAX_ECHO) {
        None => text.into(),
        Some((cut, _)) => format!("{}…", &text[..cut]).into(),
    }
}

/// A [`ERROR`] frame.
pub fn error(message: &str) -> Value {
    json!({ "type": ERROR, "error": message })
}

/// A parsed client frame.
#[derive(Debug, PartialEq)]
pub enum Incoming {
    /// `{"type":"cf_agent_state","state":..}`
    State(Value),
    /// `{"type":"rpc","id":"..","method":"..","args":[..]}`
    Rpc {
        /// The call's id, echoed in its result frames.
        id: String,
        /// The callable's name.
        method: String,
        /// Its arguments.
        args: Vec<Value>,
    },
    /// Anything else (binary, not JSON, another type): the agent's `on_message` gets it.
    Other,
}

/// Recognises protocol frames exactly as the JS server does: a state frame needs a `state` key,
/// an RPC frame a string `id`, a string `method` and an array `args`.
pub fn parse(frame: &Frame) -> Incoming {
    let Some(text) = frame.as_text() else {
        return Incoming::Other;
    };
    let Ok(Value::Object(mut map)) = serde_json::from_str::<Value>(text) else {
        return Incoming::Other;
    };
    match map.get("type").and_then(Value::as_str) {
        Some(STATE) => match map.remove("state") {
            Some(state) => Incoming::State(state),
            None => Incoming::Other,
        },
        Some(RPC) => match (map.remove("id"), map.remove("method"), map.remove("args")) {
            (Some(Value::String(id)), Some(Value::String(method)), Some(Value::Array(args))) => {
                Incoming::Rpc { id, method, args }
            }
            _ => Incoming::Other,
        },
        _ => Incoming::Other,
    }
}

/// The error frame the default `on_message` answers with.
pub fn unhandled_frame_error(frame: &Frame) -> String {
    let message = match frame {
        Frame::Binary(_) => "binary frames are not part of the agent protocol".to_string(),
        Frame::Text(text) => match serde_json::from_str::<Value>(text) {
            Err(e) => format!("the frame is not valid JSON ({e}); send JSON objects with a `type`"),
            Ok(v) => match v.get("type").and_then(Value::as_str) {
                Some(RPC) => "malformed rpc frame: it needs a string `id`, a string `method` and an array `args`".to_string(),
                Some(STATE) => "malformed cf_agent_state frame: it needs a `state`".to_string(),
                Some(t) => format!("unknown message type `{}`: this agent handles `rpc` and `cf_agent_state`", echo(t)),
                None => "the frame has no `type`: this agent handles `rpc` and `cf_agent_state`".to_string(),
            },
        },
    };
    error(&message).to_string()
}

/// The JS client's `camelCaseToKebabCase`: `CounterAgent`, `counter-agent` and `COUNTER_AGENT`
/// all become `counter-agent`.
pub fn kebab_case(name: &str) -> String {
    if name.chars().any(|c| c.is_alphabetic()) && !name.chars().any(|c| c.is_lowercase()) {
        return name.to_lowercase().replace('_', "-");
    }
    let mut out = String::with_capacity(name.len() + 4);
    for c in name.chars() {
        if c.is_uppercase() {
            out.push('-');
            out.extend(c.to_lowercase());
        } else {
            out.push(c);
        }
    }
    let out = out.strip_prefix('-').unwrap_or(&out).replace('_', "-");
    out.strip_suffix('-').unwrap_or(&out).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kebab_case_matches_the_js_client() {
        assert_eq!(kebab_case("CounterAgent"), "counter-agent");
        assert_eq!(kebab_case("counter-agent"), "counter-agent");
        assert_eq!(kebab_case("COUNTER_AGENT"), "counter-agent");
        assert_eq!(kebab_case("myAgent"), "my-agent");
    }

    #[test]
    fn frames_are_recognised_like_the_js_server_does() {
        let rpc = Frame::Text(r#"{"type":"rpc","id":"1","method":"m","args":[5]}"#.into());
        assert_eq!(
            parse(&rpc),
            Incoming::Rpc {
                id: "1".into(),
                method: "m".into(),
                args: vec![json!(5)]
            }
        );
        let bad_args = Frame::Text(r#"{"type":"rpc","id":"1","method":"m","args":5}"#.into());
        assert_eq!(parse(&bad_args), Incoming::Other);
        let state = Frame::Text(r#"{"type":"cf_agent_state","state":{"a":1}}"#.into());
        assert_eq!(parse(&state), Incoming::State(json!({"a":1})));
        assert_eq!(parse(&Frame::Text("{nope".into())), Incoming::Other);
        assert!(unhandled_frame_error(&Frame::Text("{nope".into())).contains("not valid JSON"));
        assert!(unhandled_frame_error(&Frame::Text(r#"{"type":"x"}"#.into())).contains("`x`"));
    }

    #[test]
    fn huge_client_fields_are_not_echoed_whole() {
        let huge = "t".repeat(1 << 20);
        let frame = Frame::Text(json!({ "type": huge }).to_string());
        let reply = unhandled_frame_error(&frame);
        assert!(reply.len() < 300, "{} bytes", reply.len());
        assert!(reply.contains(&format!("`{}…`", "t".repeat(MAX_ECHO))));
        let error = rpc_error(&huge, "no");
        assert_eq!(error["id"], format!("{}…", "t".repeat(MAX_ECHO)));
        // Cut on characters, not bytes; short text is kept as it is.
        assert_eq!(echo(&"é".repeat(100)).chars().count(), MAX_ECHO + 1);
        assert_eq!(echo("short"), "short");
        assert_eq!(echo(&"x".repeat(MAX_ECHO)), "x".repeat(MAX_ECHO));
    }

    #[test]
    fn results_leave_out_null_and_keep_key_order() {
        assert_eq!(
            rpc_result("a", Some(json!(3)), true).to_string(),
            r#"{"done":true,"id":"a","result":3,"success":true,"type":"rpc"}"#
        );
        assert_eq!(
            rpc_result("a", Some(Value::Null), true).to_string(),
            r#"{"done":true,"id":"a","success":true,"type":"rpc"}"#
        );
    }
}
