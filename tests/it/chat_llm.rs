//! The example `chat-agent` on a real model end to end: llama.cpp's `llama-server` with
//! SmolLM2-135M-Instruct (`agents/tests/peers/install-llm.sh`) behind `denizen serve --llm-url`,
//! driven over the agent's WebSocket with the chat protocol (chat-protocol.md §3–§5). Skipped,
//! with a notice, when the model server is not installed (unless `DENIZEN_REQUIRE_LLM=1`).
//!
//! The example sets neither temperature nor `max_tokens`, so llama-server's own defaults do:
//! greedy and at most 64 tokens a step, which keeps a reply of this small model short.

use std::time::Duration;

use crate::support::*;
use denizen_test_util::llm::LlamaServer;
use serde_json::{Value, json};

/// llama-server's defaults for requests that set none: greedy, 64 tokens at most.
const LLAMA_DEFAULTS: &[&str] = &["--temp", "0", "-n", "64"];

/// A turn takes a second or two on an idle machine, and over a minute on a loaded one (the
/// model gets two threads).
const TURN: Duration = Duration::from_secs(300);

/// Sends one user message as `cf_agent_use_chat_request` `request_id` and reads the turn: the
/// chunks of its live frames, in order, and its terminal `done` frame.
async fn turn(ws: &mut Ws, request_id: &str, text: &str) -> (Vec<Value>, Value) {
    let body = json!({
        "messages": [{"id": "user-1", "role": "user", "parts": [{"type": "text", "text": text}]}],
        "trigger": "submit-message",
    });
    let request = json!({
        "id": request_id,
        "init": {"method": "POST", "body": body.to_string()},
        "type": "cf_agent_use_chat_request",
    });
    send_text(ws, &request.to_string()).await;
    let mut chunks = Vec::new();
    let done = tokio::time::timeout(TURN, async {
        loop {
            let frame: Value = serde_json::from_str(&next_text_within(ws, TURN).await).unwrap();
            if frame["type"] != "cf_agent_use_chat_response" || frame["id"] != request_id {
                continue;
            }
            assert_ne!(frame["error"], true, "the turn failed: {frame}");
            if frame["done"] == true {
                return frame;
            }
            chunks.push(serde_json::from_str(frame["body"].as_str().unwrap()).unwrap());
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the turn did not end within {TURN:?}; chunks: {chunks:?}"));
    (chunks, done)
}

/// The next text frame, skipping pings, failing after `within` (a model step can take longer
/// than [`next_text`]'s 10 s on a loaded machine).
async fn next_text_within(ws: &mut Ws, within: Duration) -> String {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let msg = tokio::time::timeout(within, ws.next())
            .await
            .expect("timed out waiting for a frame")
            .expect("socket ended")
            .expect("socket error");
        match msg {
            Message::Text(t) => return t.to_string(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected text, got {other:?}"),
        }
    }
}

/// The chunks of `kind`.
fn of<'a>(chunks: &'a [Value], kind: &str) -> Vec<&'a Value> {
    chunks.iter().filter(|c| c["type"] == kind).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_model_streams_a_reply_through_the_chat_agent() {
    let Some(llama) = LlamaServer::start_with(LLAMA_DEFAULTS).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--llm-url", &llama.base_url()]);
    let mut ws = server.ws("/agents/chat-agent/llm-reply").await;

    let (chunks, done) = turn(&mut ws, "req-1", "Reply with exactly: hello").await;

    // The stream: `start` naming the message, text deltas, `finish`; then the held `done`.
    let start = &chunks[0];
    assert_eq!(start["type"], "start", "{chunks:?}");
    let message_id = start["messageId"].as_str().unwrap();
    assert!(!message_id.is_empty());
    let deltas = of(&chunks, "text-delta");
    assert!(!deltas.is_empty(), "no text-delta: {chunks:?}");
    let text: String = deltas
        .iter()
        .map(|d| d["delta"].as_str().unwrap())
        .collect();
    assert!(!text.trim().is_empty(), "{chunks:?}");
    assert_eq!(chunks.last().unwrap()["type"], "finish", "{chunks:?}");
    assert_eq!(done["body"], "");
    assert_eq!(done["messageIds"], json!(["user-1"]));
    assert!(done.get("outcome").is_none(), "{done}");

    // The history holds the question and the whole streamed answer.
    let messages: Value = reqwest::get(server.url("/agents/chat-agent/llm-reply/get-messages"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let messages = messages.as_array().unwrap();
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert_eq!(messages[0]["id"], "user-1");
    let answer = &messages[1];
    assert_eq!(answer["role"], "assistant");
    assert_eq!(answer["id"], message_id);
    let stored: String = answer["parts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["type"] == "text")
        .map(|p| p["text"].as_str().unwrap())
        .collect();
    assert_eq!(stored, text);
}

/// The model calls the example's `calculate` tool and the agent answers it: a 135M model seldom
/// decides to call a tool, but it echoes a `<tool_call>` block it is asked to repeat, and
/// llama-server parses that into an OpenAI tool call (shared/peers/llm/README.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_model_calls_a_server_tool_through_the_chat_agent() {
    let Some(llama) = LlamaServer::start_with(LLAMA_DEFAULTS).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--llm-url", &llama.base_url()]);
    let mut ws = server.ws("/agents/chat-agent/llm-tool").await;

    let (chunks, _done) = turn(
        &mut ws,
        "req-1",
        "Repeat after me: <tool_call>\n{\"name\": \"calculate\", \"arguments\": \
         {\"a\": 2, \"op\": \"+\", \"b\": 3}}\n</tool_call>",
    )
    .await;

    let call = of(&chunks, "tool-input-available")
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no tool call: {chunks:?}"));
    assert_eq!(call["toolName"], "calculate");
    assert_eq!(call["input"], json!({"a": 2, "op": "+", "b": 3}));
    let call_id = call["toolCallId"].as_str().unwrap();
    let output = of(&chunks, "tool-output-available")
        .into_iter()
        .find(|c| c["toolCallId"] == call_id)
        .unwrap_or_else(|| panic!("no output for {call_id}: {chunks:?}"));
    assert_eq!(output["output"].as_f64(), Some(5.0), "{output}");
}
