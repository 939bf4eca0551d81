//! The chat agent (chat-protocol.md §2, §5, §10, §12.3) over in-process WebSockets, against the
//! scripted OpenAI-compatible server: a turn's exact frames for the sender and another tab,
//! persistence, RPC served while the model streams, queueing, errors, cancel, clear,
//! `setMessages`, a server tool round trip and hostile frames.

use std::time::Duration;

use crate::socket::Socket;
use denizen_agents::chat::agent::{Chat, ChatRun, ChatTurn, Tool};
use denizen_agents::chat::model::{ModelClient, ModelConfig};
use denizen_agents::{Agent, AgentBuilder, AgentContext, AgentHost, Context, Methods};
use denizen_runtime::retry::RetryPolicy;
use denizen_runtime::{Bytes, Error, Namespace, Result, Runtime, http};
use denizen_test_util::eventually;
use denizen_test_util::openai::{Reply, ScriptedModel, SseEvent};
use serde_json::{Value, json};
use std::sync::Arc;
use tokio::sync::Notify;

const RESPONSE: &str = "cf_agent_use_chat_response";

struct Assistant {
    chat: Chat<Self>,
    model: ModelClient,
    /// Opens the `gate` tool: it returns once the test says so.
    gate: Arc<Notify>,
    /// Takes the chat's table name for a table of its own, so no turn can begin.
    broken: bool,
}

fn gate(gate: Arc<Notify>) -> Tool {
    Tool::new(
        "gate",
        "Waits for the test",
        json!({"type": "object"}),
        move |_| {
            let gate = gate.clone();
            async move {
                gate.notified().await;
                Ok(json!("open"))
            }
        },
    )
}

fn weather() -> Tool {
    Tool::new(
        "getWeather",
        "The weather in a city",
        json!({"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}),
        |input: Value| async move {
            match input["city"].as_str() {
                Some("Nowhere") => Err("backend down".to_string()),
                Some(city) => Ok(json!({"city": city, "tempC": 21})),
                None => Err("no city".to_string()),
            }
        },
    )
}

impl Assistant {
    async fn reply(&mut self, _cx: &mut Context<Self>, turn: ChatTurn) -> Result<ChatRun> {
        if turn.body.as_ref().and_then(|b| b.get("fail")).is_some() {
            return Err(Error::msg("no model is configured for this agent"));
        }
        Ok(ChatRun::new(self.model.clone())
            .with_system("Be brief.")
            .with_tool(weather())
            .with_tool(gate(self.gate.clone()))
            .with_tool(Tool::new(
                "big",
                "A 2 MB answer",
                json!({"type": "object"}),
                |_| async { Ok(json!("x".repeat(2_000_000))) },
            ))
            .with_tool(
                Tool::new(
                    "charge",
                    "Charges the user; a person approves each charge",
                    json!({"type":"object","properties":{"amount":{"type":"number"}}}),
                    |input: Value| async move { Ok(json!(format!("charged {}", input["amount"]))) },
                )
                .needs_approval(),
            )
            .with_tool(Tool::new(
                "crash",
                "Panics",
                json!({"type": "object"}),
                |_| async { panic!("the crash tool crashed") },
            )))
    }
}

impl Agent for Assistant {
    type State = ();

    fn initial_state(&self) {}

    fn methods(m: &mut Methods<Self>) {
        m.callable("ping", |_, _, (): ()| Box::pin(async { Ok("pong") }));
    }

    fn chat(&mut self) -> Option<&mut Chat<Self>> {
        Some(&mut self.chat)
    }

    async fn on_start(&mut self, cx: &mut Context<Self>) -> Result<()> {
        if self.broken {
            cx.sql(
                "CREATE TABLE IF NOT EXISTS denizen_chat_messages(note TEXT)",
                (),
            )?;
        }
        Ok(())
    }
}

struct Harness {
    gate: Arc<Notify>,
    runtime: Runtime,
    ns: Namespace<AgentHost<Assistant>>,
    model: ScriptedModel,
    _dir: tempfile::TempDir,
}

async fn harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let model = ScriptedModel::start().await;
    let gate = Arc::new(Notify::new());
    let (runtime, ns) = serve(dir.path(), &model, gate.clone());
    Harness {
        gate,
        runtime,
        ns,
        model,
        _dir: dir,
    }
}

/// A runtime on `dir` serving the assistant, whose model is `model`.
fn serve(
    dir: &std::path::Path,
    model: &ScriptedModel,
    gate: Arc<Notify>,
) -> (Runtime, Namespace<AgentHost<Assistant>>) {
    serve_as(dir, model, gate, false)
}

fn serve_as(
    dir: &std::path::Path,
    model: &ScriptedModel,
    gate: Arc<Notify>,
    broken: bool,
) -> (Runtime, Namespace<AgentHost<Assistant>>) {
    let config = ModelConfig::new(model.base_url(), "m")
        .with_retry(RetryPolicy::constant(Duration::from_millis(10)).with_max_attempts(1));
    let client = ModelClient::new(config).unwrap();
    let runtime = Runtime::builder()
        .data_dir(dir)
        .agent_with("assistant", move || Assistant {
            chat: Chat::new(|a: &mut Assistant, cx, turn| Box::pin(a.reply(cx, turn))),
            model: client.clone(),
            gate: gate.clone(),
            broken,
        })
        .build()
        .unwrap();
    let ns = runtime
        .namespace::<AgentHost<Assistant>>("assistant")
        .unwrap();
    (runtime, ns)
}

struct Client(Socket);

impl std::ops::Deref for Client {
    type Target = Socket;
    fn deref(&self) -> &Socket {
        &self.0
    }
}

impl std::ops::DerefMut for Client {
    fn deref_mut(&mut self) -> &mut Socket {
        &mut self.0
    }
}

impl Client {
    async fn connect(h: &Harness, pk: &str) -> Client {
        Client::connect_to(&h.ns, pk).await.0
    }

    /// Connects; the frames up to the handshake's last one come with it.
    async fn connect_to(ns: &Namespace<AgentHost<Assistant>>, pk: &str) -> (Client, Vec<Value>) {
        let (socket, preface) =
            Socket::open(ns, "a", &format!("/agents/assistant/a?_pk={pk}")).await;
        (Client(socket), preface)
    }

    /// The frames up to and including the turn's terminal one (`done:true`).
    async fn turn(&mut self) -> Vec<Value> {
        let mut frames = Vec::new();
        loop {
            let frame = self.json().await;
            let end = frame["type"] == RESPONSE && frame["done"] == true;
            frames.push(frame);
            if end {
                return frames;
            }
        }
    }
}

fn user(id: &str, text: &str) -> Value {
    json!({"id": id, "role": "user", "parts": [{"type": "text", "text": text}]})
}

fn chat_request(id: &str, messages: Value, extra: Value) -> Value {
    let mut body = json!({"messages": messages, "trigger": "submit-message"});
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    json!({"id": id, "init": {"method": "POST", "body": body.to_string()}, "type": "cf_agent_use_chat_request"})
}

/// The chunk of a live frame, checking the frame's envelope.
fn chunk(frame: &Value, id: &str, seq: u64) -> Value {
    assert_eq!(frame["type"], RESPONSE, "{frame}");
    assert_eq!(frame["id"], id, "{frame}");
    assert_eq!(frame["done"], false, "{frame}");
    assert_eq!(frame["seq"], seq, "{frame}");
    serde_json::from_str(frame["body"].as_str().unwrap()).unwrap()
}

fn chunk_types(frames: &[Value]) -> Vec<String> {
    frames
        .iter()
        .filter(|f| f["type"] == RESPONSE && f["done"] == false && f.get("error").is_none())
        .map(|f| {
            let body: Value = serde_json::from_str(f["body"].as_str().unwrap()).unwrap();
            body["type"].as_str().unwrap().to_string()
        })
        .collect()
}

async fn get_messages(h: &Harness) -> Value {
    get_messages_of(&h.ns).await
}

async fn get_messages_of(ns: &Namespace<AgentHost<Assistant>>) -> Value {
    let mut req = http::Request::new(Bytes::new());
    *req.uri_mut() = "/agents/assistant/a/get-messages".parse().unwrap();
    let resp = ns.get_by_name("a").fetch(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    serde_json::from_slice(resp.body()).unwrap()
}

#[tokio::test]
async fn a_turn_streams_to_every_tab_and_is_persisted_before_done() {
    let h = harness().await;
    h.model.push(Reply::text(&["Hel", "lo"]));
    let mut a = Client::connect(&h, "a").await;
    let mut b = Client::connect(&h, "b").await;

    a.send(chat_request("r1", json!([user("u1", "hi")]), json!({})));
    let sent = a.turn().await;
    let start = chunk(&sent[0], "r1", 0);
    assert_eq!(start["type"], "start");
    let message_id = start["messageId"].as_str().unwrap().to_string();
    assert!(message_id.starts_with("assistant_"), "{start}");
    assert_eq!(
        chunk_types(&sent),
        [
            "start",
            "start-step",
            "text-start",
            "text-delta",
            "text-delta",
            "text-end",
            "finish-step",
            "finish"
        ]
    );
    for (seq, frame) in sent[..sent.len() - 1].iter().enumerate() {
        chunk(frame, "r1", seq as u64);
    }
    let finish = chunk(&sent[sent.len() - 2], "r1", 7);
    assert_eq!(
        finish,
        json!({"type": "finish", "messageMetadata": {"finishReason": "stop"}})
    );
    assert_eq!(
        sent.last().unwrap(),
        &json!({"body": "", "done": true, "id": "r1", "type": RESPONSE, "messageIds": ["u1"]})
    );
    assert!(a.is_quiet(), "the sender gets no chat_messages");

    // The other tab: the request's messages, the reconciled ones, the live chunks, the
    // transcript with the reply, then done.
    let seen = b.turn().await;
    assert_eq!(
        seen[0],
        json!({"messages": [user("u1", "hi")], "type": "cf_agent_chat_messages"})
    );
    assert_eq!(seen[1]["type"], "cf_agent_chat_messages");
    assert_eq!(seen[2..10], sent[..8]);
    assert_eq!(seen[10]["type"], "cf_agent_chat_messages");
    assert_eq!(seen[10]["messages"][1]["id"], message_id.as_str());
    assert_eq!(seen[11], *sent.last().unwrap());
    assert_eq!(seen.len(), 12);

    // Counted: one turn, the tokens the server reported, its first token's delay.
    let metrics = h.runtime.metrics();
    assert_eq!(metrics.chat_turns.get(), 1);
    assert_eq!(metrics.chat_prompt_tokens.get(), 10);
    assert_eq!(metrics.chat_completion_tokens.get(), 2);
    assert_eq!(metrics.chat_first_token.count(), 1);
    assert_eq!(metrics.chat_model_errors.get(), 0);

    // Persisted, with the id the client got in `start`.
    let stored = get_messages(&h).await;
    assert_eq!(stored[0], user("u1", "hi"));
    assert_eq!(
        stored[1],
        json!({"id": message_id, "role": "assistant", "metadata": {"finishReason": "stop"},
               "parts": [{"type": "step-start"}, {"type": "text", "text": "Hello", "state": "done"}]})
    );
    assert_eq!(stored.as_array().unwrap().len(), 2);
    // The model got the system prompt, the user's message and the tool.
    let request = &h.model.requests()[0].body;
    assert_eq!(
        request["messages"],
        json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}])
    );
    assert_eq!(request["tools"][0]["function"]["name"], "getWeather");
    h.runtime.shutdown().await;
}

#[tokio::test]
async fn the_agent_serves_rpc_while_the_model_is_held_and_a_cancel_ends_the_turn() {
    let h = harness().await;
    h.model.push(Reply::Sse(vec![
        SseEvent::role(),
        SseEvent::text("Partial"),
        SseEvent::Hang,
    ]));
    let mut a = Client::connect(&h, "a").await;
    let mut b = Client::connect(&h, "b").await;
    a.send(chat_request("r1", json!([user("u1", "hi")]), json!({})));
    // The model streamed its first text and holds the stream.
    let mut sent = Vec::new();
    while !chunk_types(&sent).contains(&"text-delta".to_string()) {
        sent.push(a.json().await);
    }
    // Both tabs' calls are answered meanwhile.
    a.send(json!({"type": "rpc", "id": "1", "method": "ping", "args": []}));
    let reply = a.json().await;
    assert_eq!(
        (reply["id"].clone(), reply["result"].clone()),
        (json!("1"), json!("pong"))
    );
    b.send(json!({"type": "rpc", "id": "2", "method": "ping", "args": []}));
    let mut seen = Vec::new();
    loop {
        // The turn's frames so far come first.
        let frame = b.json().await;
        if frame["type"] == "rpc" {
            assert_eq!(frame["result"], "pong");
            break;
        }
        seen.push(frame);
    }
    assert!(chunk_types(&seen).contains(&"text-delta".to_string()));

    // Cancel: the model request is dropped, the partial reply persisted, the turn aborted.
    a.send(json!({"id": "r1", "type": "cf_agent_chat_request_cancel"}));
    let rest = a.turn().await;
    assert_eq!(
        rest.last().unwrap(),
        &json!({"body": "", "done": true, "id": "r1", "type": RESPONSE, "messageIds": ["u1"], "outcome": "aborted"})
    );
    let others = b.turn().await;
    assert_eq!(others[others.len() - 2]["type"], "cf_agent_chat_messages");
    eventually(
        "the model stream is dropped",
        Duration::from_secs(10),
        || h.model.streams_dropped() == 1,
    )
    .await;
    let stored = get_messages(&h).await;
    assert_eq!(stored[1]["parts"][1]["text"], "Partial");
    h.runtime.shutdown().await;
}

#[tokio::test]
async fn requests_queue_in_order_behind_the_running_turn() {
    let h = harness().await;
    h.model.push(Reply::text(&["one"]));
    h.model.push(Reply::text(&["two"]));
    let mut a = Client::connect(&h, "a").await;
    a.send(chat_request("r1", json!([user("u1", "first")]), json!({})));
    a.send(chat_request(
        "r2",
        json!([user("u1", "first"), user("u2", "second")]),
        json!({}),
    ));
    let first = a.turn().await;
    assert!(first.iter().all(|f| f["id"] == "r1"), "{first:?}");
    assert_eq!(first.last().unwrap()["messageIds"], json!(["u1"]));
    let second = a.turn().await;
    assert!(second.iter().all(|f| f["id"] == "r2"), "{second:?}");
    assert_eq!(second.last().unwrap()["messageIds"], json!(["u1", "u2"]));
    assert_eq!(chunk(&second[0], "r2", 0)["type"], "start");
    let requests = h.model.requests();
    assert_eq!(requests.len(), 2);
    let asked = requests[1].body["messages"].as_array().unwrap();
    assert!(
        asked.contains(&json!({"role": "user", "content": "second"})),
        "{asked:?}"
    );
    assert!(
        asked
            .iter()
            .any(|m| m["role"] == "assistant" && m["content"] == "one")
    );
    // The second request lacked the first reply: it stays before the second message.
    let stored = get_messages(&h).await;
    let texts: Vec<String> = stored
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            m["parts"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|p| p["text"].as_str())
                .collect()
        })
        .collect();
    assert_eq!(texts, ["first", "one", "second", "two"]);
    h.runtime.shutdown().await;
}

#[tokio::test]
async fn a_client_cannot_queue_requests_without_end() {
    let h = harness().await;
    h.model.push(partial_then_hang());
    let mut a = Client::connect(&h, "a").await;
    a.send(chat_request("r0", json!([user("u0", "hold")]), json!({})));
    until_two_deltas(&mut a).await;
    for i in 1..=17 {
        a.send(chat_request(
            &format!("r{i}"),
            json!([user(&format!("u{i}"), "more")]),
            json!({}),
        ));
    }
    let refused = frames_until(&mut a, |f| f["error"] == true).await;
    let refused = refused.last().unwrap();
    assert_eq!(refused["id"], "r17", "{refused}");
    assert_eq!(refused["done"], true, "{refused}");
    assert!(
        refused["body"].as_str().unwrap().contains("waiting"),
        "{refused}"
    );
    // The agent goes on: a clear ends the running turn and the waiting ones.
    a.send(json!({"type": "cf_agent_chat_clear"}));
    let ended = frames_until(&mut a, |f| f["id"] == "r16" && f["done"] == true).await;
    assert!(
        ended
            .iter()
            .any(|f| f["id"] == "r0" && f["outcome"] == "aborted")
    );
    h.runtime.shutdown().await;
}

#[tokio::test]
async fn a_model_error_and_a_failure_before_streaming_end_the_turn_with_errors() {
    let h = harness().await;
    h.model.push(Reply::Status {
        status: 500,
        body: "boom".into(),
        retry_after: None,
    });
    let mut a = Client::connect(&h, "a").await;
    a.send(chat_request("r1", json!([user("u1", "hi")]), json!({})));
    let frames = a.turn().await;
    assert_eq!(chunk(&frames[0], "r1", 0)["type"], "start");
    let n = frames.len();
    assert_eq!(
        frames[n - 2],
        json!({"error": true, "body": "An error occurred.", "done": false, "id": "r1", "type": RESPONSE, "messageIds": ["u1"]})
    );
    assert_eq!(frames[n - 1]["outcome"], "error");
    assert_eq!(frames[n - 1]["done"], true);

    // The error is replayed to a client that probes, until the next turn.
    a.send(json!({"type": "cf_agent_stream_resume_request", "probeId": "p1"}));
    assert_eq!(
        a.json().await,
        json!({"type": "cf_agent_stream_resuming", "id": "r1", "probeId": "p1"})
    );
    a.send(json!({"type": "cf_agent_stream_resume_ack", "id": "r1"}));
    for frame in &frames[..n - 2] {
        let mut expected = frame.clone();
        expected["replay"] = json!(true);
        assert_eq!(a.json().await, expected);
    }
    assert_eq!(
        a.json().await,
        json!({"body": "An error occurred.", "done": true, "error": true, "id": "r1", "type": RESPONSE})
    );

    // The application refuses the turn: one error frame ends it; the user's message is kept.
    a.send(chat_request(
        "r2",
        json!([user("u2", "again")]),
        json!({"fail": true}),
    ));
    let frames = a.turn().await;
    assert_eq!(
        frames,
        [
            json!({"body": "no model is configured for this agent", "done": true, "error": true, "id": "r2", "type": RESPONSE})
        ]
    );
    let stored = get_messages(&h).await;
    let ids: Vec<&str> = stored
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["u1", "u2"]);
    // And the agent goes on.
    h.model.push(Reply::text(&["fine"]));
    a.send(chat_request(
        "r3",
        json!([user("u3", "and now?")]),
        json!({}),
    ));
    assert_eq!(a.turn().await.last().unwrap().get("outcome"), None);
    // The model's error was counted; the refused turn never reached the model.
    assert_eq!(h.runtime.metrics().chat_model_errors.get(), 1);
    assert_eq!(h.runtime.metrics().chat_turns.get(), 2);
    h.runtime.shutdown().await;
}

#[tokio::test]
async fn server_tools_run_in_the_loop_and_their_errors_go_back_to_the_model() {
    let h = harness().await;
    h.model.push(Reply::Sse(vec![
        SseEvent::role(),
        SseEvent::tool_call_start(0, "call_1", "getWeather", "{\"city\":"),
        SseEvent::tool_call_args(0, "\"Paris\"}"),
        SseEvent::tool_call_start(1, "call_2", "getWeather", "{\"city\":\"Nowhere\"}"),
        SseEvent::finish("tool_calls"),
        SseEvent::Done,
    ]));
    h.model.push(Reply::text(&["Sunny in Paris."]));
    let mut a = Client::connect(&h, "a").await;
    a.send(chat_request(
        "r1",
        json!([user("u1", "weather?")]),
        json!({}),
    ));
    let frames = a.turn().await;
    let types = chunk_types(&frames);
    assert_eq!(
        types,
        [
            "start",
            "start-step",
            "tool-input-start",
            "tool-input-delta",
            "tool-input-delta",
            "tool-input-start",
            "tool-input-delta",
            "tool-input-available",
            "tool-input-available",
            "tool-output-available",
            "tool-output-error",
            "finish-step",
            "start-step",
            "text-start",
            "text-delta",
            "text-end",
            "finish-step",
            "finish"
        ]
    );
    let output = frames
        .iter()
        .map(|f| serde_json::from_str::<Value>(f["body"].as_str().unwrap_or("null")).unwrap())
        .find(|c| c["type"] == "tool-output-available")
        .unwrap();
    assert_eq!(output["output"], json!({"city": "Paris", "tempC": 21}));
    // The second call has the assistant step and both results.
    let second = &h.model.requests()[1].body["messages"];
    assert_eq!(
        second[2]["tool_calls"][0]["function"]["arguments"],
        "{\"city\":\"Paris\"}"
    );
    assert_eq!(
        second[3],
        json!({"role": "tool", "tool_call_id": "call_1", "content": "{\"city\":\"Paris\",\"tempC\":21}"})
    );
    assert_eq!(
        second[4],
        json!({"role": "tool", "tool_call_id": "call_2", "content": "backend down"})
    );
    let stored = get_messages(&h).await;
    let parts = &stored[1]["parts"];
    assert_eq!(parts[1]["state"], "output-available");
    assert_eq!(parts[2]["state"], "output-error");
    assert_eq!(parts[2]["errorText"], "backend down");
    assert_eq!(stored[1]["metadata"]["finishReason"], "stop");
    h.runtime.shutdown().await;
}

#[tokio::test]
async fn clear_and_set_messages_change_the_transcript_for_every_tab() {
    let h = harness().await;
    let mut a = Client::connect(&h, "a").await;
    let mut b = Client::connect(&h, "b").await;
    a.send(json!({"messages": [user("u1", "hi"), user("u2", "there")], "type": "cf_agent_chat_messages"}));
    let frame = b.json().await;
    assert_eq!(frame["type"], "cf_agent_chat_messages");
    assert_eq!(frame["messages"][1]["id"], "u2");
    assert_eq!(get_messages(&h).await.as_array().unwrap().len(), 2);
    // setMessages never deletes.
    a.send(json!({"messages": [user("u2", "there!")], "type": "cf_agent_chat_messages"}));
    b.json().await;
    let stored = get_messages(&h).await;
    assert_eq!(stored[0]["id"], "u1");
    assert_eq!(stored[1]["parts"][0]["text"], "there!");

    a.send(json!({"type": "cf_agent_chat_clear"}));
    assert_eq!(b.json().await, json!({"type": "cf_agent_chat_clear"}));
    assert_eq!(get_messages(&h).await, json!([]));
    assert!(a.is_quiet());
    h.runtime.shutdown().await;
}

#[tokio::test]
async fn hostile_chat_frames_are_answered_with_errors_and_the_agent_keeps_serving() {
    let h = harness().await;
    let mut a = Client::connect(&h, "a").await;
    a.send(json!({"type": "cf_agent_use_chat_request"}));
    assert_eq!(a.json().await["type"], "cf_agent_error");
    a.send(json!({"type": "cf_agent_use_chat_request", "id": 7}));
    assert_eq!(a.json().await["type"], "cf_agent_error");
    for (id, init) in [
        ("get", json!({"method": "GET", "body": "{}"})),
        ("nobody", json!({"method": "POST"})),
        ("notjson", json!({"method": "POST", "body": "{nope"})),
        (
            "badmessages",
            json!({"method": "POST", "body": "{\"messages\":\"x\"}"}),
        ),
    ] {
        a.send(json!({"type": "cf_agent_use_chat_request", "id": id, "init": init}));
        let frame = a.json().await;
        assert_eq!(frame["id"], id, "{frame}");
        assert_eq!(
            (frame["done"].clone(), frame["error"].clone()),
            (json!(true), json!(true)),
            "{frame}"
        );
    }
    // A request of more messages than a transcript may hold.
    let many: Vec<Value> = (0..10_001).map(|i| user(&format!("m{i}"), "x")).collect();
    a.send(chat_request("huge", Value::Array(many), json!({})));
    let frame = a.json().await;
    assert_eq!(
        (frame["id"].clone(), frame["error"].clone()),
        (json!("huge"), json!(true))
    );
    a.send(json!({"type": "cf_agent_chat_messages", "messages": "nope"}));
    assert_eq!(a.json().await["type"], "cf_agent_error");
    a.send(json!({"type": "cf_agent_chat_request_cancel"}));
    assert_eq!(a.json().await["type"], "cf_agent_error");
    a.send(json!({"type": "cf_agent_stream_resume_request", "probeId": "p1"}));
    assert_eq!(
        a.json().await,
        json!({"type": "cf_agent_stream_resume_none", "reason": "idle", "probeId": "p1"})
    );
    assert_eq!(get_messages(&h).await, json!([]));

    a.send(json!({"type": "rpc", "id": "1", "method": "ping", "args": []}));
    assert_eq!(a.json().await["result"], "pong");
    h.model.push(Reply::text(&["still here"]));
    a.send(chat_request("ok", json!([user("u1", "hi")]), json!({})));
    assert_eq!(a.turn().await.last().unwrap()["messageIds"], json!(["u1"]));
    h.runtime.shutdown().await;
}

/// A reply that streams "Partial" and then holds the stream open.
fn partial_then_hang() -> Reply {
    Reply::Sse(vec![
        SseEvent::role(),
        SseEvent::text("Par"),
        SseEvent::text("tial"),
        SseEvent::Hang,
    ])
}

/// Reads `client`'s frames until the turn streamed two text deltas; returns them.
async fn until_two_deltas(client: &mut Client) -> Vec<Value> {
    let mut frames = Vec::new();
    while chunk_types(&frames)
        .iter()
        .filter(|t| *t == "text-delta")
        .count()
        < 2
    {
        frames.push(client.json().await);
    }
    frames
}

#[tokio::test]
async fn a_tab_that_connects_mid_stream_replays_it_from_the_start_then_follows_live() {
    let h = harness().await;
    h.model.push(partial_then_hang());
    let mut a = Client::connect(&h, "a").await;
    a.send(chat_request("r1", json!([user("u1", "hi")]), json!({})));
    let live = until_two_deltas(&mut a).await;

    // Offered before its identity; a probe gets the offer again, with its probeId.
    let (mut c, preface) = Client::connect_to(&h.ns, "c").await;
    assert_eq!(
        preface[0],
        json!({"type": "cf_agent_stream_resuming", "id": "r1"})
    );
    assert_eq!(preface[1]["type"], "cf_agent_identity");
    c.send(json!({"type": "cf_agent_stream_resume_request", "probeId": "p1"}));
    assert_eq!(
        c.json().await,
        json!({"type": "cf_agent_stream_resuming", "id": "r1", "probeId": "p1"})
    );
    c.send(json!({"type": "cf_agent_stream_resume_ack", "id": "r1"}));
    for (seq, frame) in live.iter().enumerate() {
        let mut expected = frame.clone();
        expected["replay"] = json!(true);
        assert_eq!(c.json().await, expected, "replayed chunk {seq}");
    }
    assert_eq!(
        c.json().await,
        json!({"body": "", "done": false, "id": "r1", "type": RESPONSE, "replay": true, "replayComplete": true})
    );
    // Live from here: the turn's end reaches it.
    a.send(json!({"id": "r1", "type": "cf_agent_chat_request_cancel"}));
    let rest = c.turn().await;
    assert_eq!(rest[0]["type"], "cf_agent_chat_messages");
    assert_eq!(rest[1]["outcome"], "aborted");
    // Nothing to resume any more.
    c.send(json!({"type": "cf_agent_stream_resume_request", "probeId": "p2"}));
    assert_eq!(
        c.json().await,
        json!({"type": "cf_agent_stream_resume_none", "reason": "idle", "probeId": "p2"})
    );
    c.send(json!({"type": "cf_agent_stream_resume_ack", "id": "r1"}));
    assert_eq!(
        c.json().await,
        json!({"body": "", "done": true, "id": "r1", "type": RESPONSE, "replay": true})
    );
    h.runtime.shutdown().await;
}

#[tokio::test]
async fn a_stream_cut_by_a_restart_is_replayed_ended_aborted_and_its_reply_persisted() {
    let dir = tempfile::tempdir().unwrap();
    let model = ScriptedModel::start().await;
    model.push(partial_then_hang());
    let (runtime, ns) = serve(dir.path(), &model, Arc::new(Notify::new()));
    let (mut a, _) = Client::connect_to(&ns, "a").await;
    a.send(chat_request("r1", json!([user("u1", "hi")]), json!({})));
    let live = until_two_deltas(&mut a).await;
    runtime.shutdown().await;

    let (runtime, ns) = serve(dir.path(), &model, Arc::new(Notify::new()));
    let (mut c, preface) = Client::connect_to(&ns, "c").await;
    assert_eq!(
        preface[0],
        json!({"type": "cf_agent_stream_resuming", "id": "r1"})
    );
    c.send(json!({"type": "cf_agent_stream_resume_ack", "id": "r1"}));
    for frame in &live {
        let mut expected = frame.clone();
        expected["replay"] = json!(true);
        assert_eq!(c.json().await, expected);
    }
    assert_eq!(
        c.json().await,
        json!({"body": "", "done": true, "id": "r1", "type": RESPONSE, "replay": true, "outcome": "aborted"})
    );
    let stored = get_messages_of(&ns).await;
    let start = chunk(&live[0], "r1", 0);
    assert_eq!(stored[1]["id"], start["messageId"]);
    assert_eq!(stored[1]["parts"][1]["text"], "Partial");
    c.send(json!({"type": "cf_agent_stream_resume_request", "probeId": "p"}));
    assert_eq!(c.json().await["type"], "cf_agent_stream_resume_none");
    runtime.shutdown().await;
}

#[tokio::test]
async fn a_reply_cut_by_a_restart_that_nobody_resumed_is_kept_before_the_next_turn() {
    let dir = tempfile::tempdir().unwrap();
    let model = ScriptedModel::start().await;
    model.push(partial_then_hang());
    let (runtime, ns) = serve(dir.path(), &model, Arc::new(Notify::new()));
    let (mut a, _) = Client::connect_to(&ns, "a").await;
    a.send(chat_request("r1", json!([user("u1", "hi")]), json!({})));
    let live = until_two_deltas(&mut a).await;
    let cut_id = chunk(&live[0], "r1", 0)["messageId"].clone();
    runtime.shutdown().await;

    // The next turn comes without anyone resuming the cut stream.
    model.push(Reply::text(&["Again."]));
    let (runtime, ns) = serve(dir.path(), &model, Arc::new(Notify::new()));
    let (mut b, _) = Client::connect_to(&ns, "b").await;
    b.send(chat_request(
        "r2",
        json!([user("u1", "hi"), user("u2", "more")]),
        json!({}),
    ));
    b.turn().await;
    let stored = get_messages_of(&ns).await;
    let ids: Vec<&Value> = stored
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["id"])
        .collect();
    assert_eq!(ids[..3], [&json!("u1"), &cut_id, &json!("u2")], "{stored}");
    assert_eq!(stored[1]["parts"][1]["text"], "Partial");
    assert_eq!(stored.as_array().unwrap().len(), 4);
    // The model saw the partial reply in the history.
    let requests = model.requests();
    let sent = &requests.last().unwrap().body["messages"];
    assert_eq!(
        sent[2],
        json!({"role": "assistant", "content": "Partial"}),
        "{sent}"
    );
    runtime.shutdown().await;
}

#[tokio::test]
async fn a_tab_offered_a_resume_gets_no_live_frames_until_it_acks() {
    let h = harness().await;
    h.model.push(Reply::Sse(vec![
        SseEvent::role(),
        SseEvent::tool_call_start(0, "call_g", "gate", "{}"),
        SseEvent::finish("tool_calls"),
        SseEvent::Done,
    ]));
    h.model.push(Reply::text(&["Done."]));
    let mut a = Client::connect(&h, "a").await;
    a.send(chat_request("r1", json!([user("u1", "wait")]), json!({})));
    let mut before = Vec::new();
    while !chunk_types(&before).contains(&"tool-input-available".to_string()) {
        before.push(a.json().await);
    }
    // The tool waits; a new tab is offered the stream and does not ACK yet.
    let (mut c, preface) = Client::connect_to(&h.ns, "c").await;
    assert_eq!(preface[0]["type"], "cf_agent_stream_resuming");
    h.gate.notify_one();
    let rest = a.turn().await;
    assert!(chunk_types(&rest).contains(&"tool-output-available".to_string()));
    // c got the end of the turn but none of the live chunks.
    let seen = c.turn().await;
    assert!(chunk_types(&seen).is_empty(), "{seen:?}");
    assert_eq!(seen.last().unwrap()["done"], true);
    h.runtime.shutdown().await;
}

#[tokio::test]
async fn regenerate_deletes_the_stored_messages_missing_from_the_request() {
    let h = harness().await;
    h.model.push(Reply::text(&["first answer"]));
    h.model.push(Reply::text(&["second answer"]));
    let mut a = Client::connect(&h, "a").await;
    a.send(chat_request("r1", json!([user("u1", "hi")]), json!({})));
    a.turn().await;
    let stored = get_messages(&h).await;
    assert_eq!(stored.as_array().unwrap().len(), 2);
    let mut request = chat_request("r2", json!([user("u1", "hi")]), json!({}));
    let body = request["init"]["body"]
        .as_str()
        .unwrap()
        .replace("submit-message", "regenerate-message");
    request["init"]["body"] = json!(body);
    a.send(request);
    a.turn().await;
    let stored = get_messages(&h).await;
    let stored = stored.as_array().unwrap();
    assert_eq!(stored.len(), 2, "{stored:?}");
    assert_eq!(stored[1]["parts"][1]["text"], "second answer");
    h.runtime.shutdown().await;
}

#[tokio::test]
async fn a_tool_that_panics_fails_its_call_and_the_turn_goes_on() {
    let h = harness().await;
    h.model.push(Reply::Sse(vec![
        SseEvent::role(),
        SseEvent::tool_call_start(0, "call_x", "crash", "{}"),
        SseEvent::finish("tool_calls"),
        SseEvent::Done,
    ]));
    h.model.push(Reply::text(&["Sorry."]));
    let mut a = Client::connect(&h, "a").await;
    a.send(chat_request("r1", json!([user("u1", "crash")]), json!({})));
    let frames = a.turn().await;
    assert_eq!(frames.last().unwrap().get("outcome"), None);
    let second = &h.model.requests()[1].body["messages"];
    assert_eq!(
        second[3],
        json!({"role": "tool", "tool_call_id": "call_x", "content": "the tool panicked: the crash tool crashed"})
    );
    h.runtime.shutdown().await;
}

#[tokio::test]
async fn a_chunk_too_large_to_log_is_sent_without_seq_and_not_replayed() {
    let h = harness().await;
    h.model.push(Reply::Sse(vec![
        SseEvent::role(),
        SseEvent::tool_call_start(0, "call_b", "big", "{}"),
        SseEvent::finish("tool_calls"),
        SseEvent::Done,
    ]));
    h.model.push(Reply::Sse(vec![
        SseEvent::role(),
        SseEvent::text("That was big."),
        SseEvent::Hang,
    ]));
    let mut a = Client::connect(&h, "a").await;
    a.send(chat_request("r1", json!([user("u1", "big")]), json!({})));
    let mut frames = Vec::new();
    while !chunk_types(&frames).contains(&"text-delta".to_string()) {
        frames.push(a.json().await);
    }
    let big = frames
        .iter()
        .position(|f| f["body"].as_str().unwrap().len() > 1_800_000)
        .unwrap();
    assert_eq!(big, 5, "{:?}", chunk_types(&frames));
    assert_eq!(frames[big].get("seq"), None);
    assert_eq!(frames[big - 1]["seq"], 4);
    assert_eq!(frames[big + 1]["seq"], 5);
    // A replay has every logged chunk, not the big one.
    let (mut c, _) = Client::connect_to(&h.ns, "c").await;
    c.send(json!({"type": "cf_agent_stream_resume_ack", "id": "r1"}));
    let mut replayed = 0;
    loop {
        let frame = c.json().await;
        if frame.get("replayComplete").is_some() {
            break;
        }
        assert_eq!(frame["seq"], replayed);
        replayed += 1;
    }
    assert_eq!(replayed, frames.len() as u64 - 1);
    a.send(json!({"id": "r1", "type": "cf_agent_chat_request_cancel"}));
    a.turn().await;
    h.runtime.shutdown().await;
}

#[tokio::test]
async fn a_turn_that_cannot_begin_ends_with_an_error_frame() {
    let dir = tempfile::tempdir().unwrap();
    let model = ScriptedModel::start().await;
    let (runtime, ns) = serve_as(dir.path(), &model, Arc::new(Notify::new()), true);
    let (mut a, _) = Client::connect_to(&ns, "a").await;
    a.send(chat_request("r1", json!([user("u1", "hi")]), json!({})));
    let frames = a.turn().await;
    let last = frames.last().unwrap();
    assert_eq!(
        (last["id"].clone(), last["error"].clone()),
        (json!("r1"), json!(true)),
        "{last}"
    );
    assert!(last["body"].as_str().unwrap().contains("pos"), "{last}");
    a.send(json!({"type": "rpc", "id": "1", "method": "ping", "args": []}));
    assert_eq!(a.json().await["result"], "pong");
    runtime.shutdown().await;
}

/// A model call that asks for one tool call and stops for it.
fn tool_call_reply(call: &str, tool: &str, arguments: &str) -> Reply {
    Reply::Sse(vec![
        SseEvent::role(),
        SseEvent::tool_call_start(0, call, tool, arguments),
        SseEvent::finish("tool_calls"),
    ])
}

/// Reads frames until `pred` holds for one; answers them all.
async fn frames_until(client: &mut Client, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut frames = Vec::new();
    loop {
        let frame = client.json().await;
        let end = pred(&frame);
        frames.push(frame);
        if end {
            return frames;
        }
    }
}

/// The chunks a client saw of stream `id`, replayed and live, by seq (each once).
fn stream_chunks(frames: &[Value], id: &str) -> Vec<Value> {
    let mut by_seq = std::collections::BTreeMap::new();
    for f in frames {
        if f["type"] == RESPONSE && f["id"] == id && f["done"] == false && f["seq"].is_u64() {
            let body: Value = serde_json::from_str(f["body"].as_str().unwrap()).unwrap();
            by_seq.insert(f["seq"].as_u64().unwrap(), body);
        }
    }
    by_seq.into_values().collect()
}

fn tool_part(message: &Value) -> &Value {
    message["parts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["type"].as_str().unwrap().starts_with("tool-"))
        .unwrap()
}

/// The owner of a continuation probes, is told it is pending, is offered its stream when it
/// starts, ACKs, and gets it all (replayed, then live); answers the frames and the
/// continuation's request id.
async fn follow_continuation(a: &mut Client) -> (Vec<Value>, String) {
    a.send(json!({"type": "cf_agent_stream_resume_request", "probeId": "p1"}));
    let pending = frames_until(a, |f| f["type"] == "cf_agent_stream_pending").await;
    let pending = pending.last().unwrap().clone();
    assert_eq!(pending["probeId"], "p1", "{pending}");
    let id = pending["id"].as_str().unwrap().to_string();
    let offer = frames_until(a, |f| f["type"] == "cf_agent_stream_resuming").await;
    assert_eq!(
        offer.last().unwrap(),
        &json!({"type": "cf_agent_stream_resuming", "id": id})
    );
    a.send(json!({"type": "cf_agent_stream_resume_ack", "id": id}));
    let frames = a.turn().await;
    for f in frames.iter().filter(|f| f["type"] == RESPONSE) {
        assert_eq!(f["continuation"], true, "{f}");
        assert_eq!(f["id"], id.as_str(), "{f}");
    }
    assert!(
        frames.iter().any(|f| f["replayComplete"] == true),
        "the replay caught up before the live frames: {frames:?}"
    );
    (frames, id)
}

#[tokio::test]
async fn a_client_tool_result_continues_the_turn_into_the_same_message() {
    let h = harness().await;
    let mut a = Client::connect(&h, "a").await;
    let mut b = Client::connect(&h, "b").await;
    let client_tools = json!({"clientTools": [{"name": "getLocation", "description": "Where the user is",
        "parameters": {"type": "object", "properties": {}}}]});

    // Turn 1 ends at the client tool's call.
    h.model.push(tool_call_reply("call_1", "getLocation", "{}"));
    a.send(chat_request(
        "r1",
        json!([user("u1", "where am I")]),
        client_tools,
    ));
    let first = a.turn().await;
    let types = chunk_types(&first);
    assert!(
        types.contains(&"tool-input-available".to_string()),
        "{types:?}"
    );
    assert!(
        !types.contains(&"tool-output-available".to_string()),
        "{types:?}"
    );
    let tools = h.model.requests()[0].body["tools"].clone();
    let declared = tools
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["function"]["name"] == "getLocation");
    assert!(
        declared,
        "the client tool is declared to the model: {tools}"
    );
    b.turn().await;
    let stored = get_messages(&h).await;
    let reply_id = stored[1]["id"].as_str().unwrap().to_string();
    assert_eq!(tool_part(&stored[1])["state"], "input-available");

    // The client runs it and sends the result: every tab sees the call answered.
    h.model.push(Reply::text(&["You are ", "in Paris."]));
    a.send(
        json!({"type": "cf_agent_tool_result", "toolCallId": "call_1", "toolName": "getLocation",
        "output": {"city": "Paris"}, "autoContinue": true}),
    );
    for client in [&mut a, &mut b] {
        let updated = frames_until(client, |f| f["type"] == "cf_agent_message_updated").await;
        let message = &updated.last().unwrap()["message"];
        assert_eq!(message["id"], reply_id.as_str());
        assert_eq!(tool_part(message)["state"], "output-available");
        assert_eq!(tool_part(message)["output"], json!({"city": "Paris"}));
    }
    // A repeat changes nothing and starts nothing.
    a.send(
        json!({"type": "cf_agent_tool_result", "toolCallId": "call_1", "toolName": "getLocation",
        "output": {"city": "Lyon"}, "autoContinue": true}),
    );

    let (frames, id) = follow_continuation(&mut a).await;
    let chunks = stream_chunks(&frames, &id);
    assert_eq!(
        chunks[0],
        json!({"type": "start"}),
        "no messageId on a continuation"
    );
    let kinds: Vec<&str> = chunks.iter().map(|c| c["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "start",
            "start-step",
            "text-start",
            "text-delta",
            "text-delta",
            "text-end",
            "finish-step",
            "finish"
        ]
    );
    // The owner gets the final transcript too, before done (without messageIds).
    let transcript = frames
        .iter()
        .rev()
        .find(|f| f["type"] == "cf_agent_chat_messages")
        .unwrap();
    assert_eq!(transcript["messages"].as_array().unwrap().len(), 2);
    let done = frames.last().unwrap();
    assert_eq!(done["done"], true);
    assert!(done.get("messageIds").is_none(), "{done}");

    // The other tab follows it live.
    let seen = b.turn().await;
    assert_eq!(stream_chunks(&seen, &id), chunks);

    // One message: the call with its result, then the model's answer after it.
    let stored = get_messages(&h).await;
    assert_eq!(stored.as_array().unwrap().len(), 2);
    assert_eq!(stored[1]["id"], reply_id.as_str());
    assert_eq!(tool_part(&stored[1])["output"], json!({"city": "Paris"}));
    let text: Vec<&str> = stored[1]["parts"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["text"].as_str())
        .collect();
    assert_eq!(text, ["You are in Paris."]);
    // The model got the call and its result.
    let requests = h.model.requests();
    assert_eq!(
        requests.len(),
        2,
        "one continuation for the result and its repeat"
    );
    let messages = requests[1].body["messages"].as_array().unwrap().clone();
    assert_eq!(messages[2]["tool_calls"][0]["id"], "call_1");
    assert_eq!(
        messages[3],
        json!({"role": "tool", "tool_call_id": "call_1", "content": "{\"city\":\"Paris\"}"})
    );
    h.runtime.shutdown().await;
}

#[tokio::test]
async fn an_approved_call_runs_in_the_continuation_and_a_denied_one_tells_the_model() {
    let h = harness().await;
    let mut a = Client::connect(&h, "a").await;

    // The call waits for a person: an approval request ends the turn.
    h.model
        .push(tool_call_reply("call_c", "charge", "{\"amount\":5}"));
    a.send(chat_request(
        "r1",
        json!([user("u1", "charge me 5")]),
        json!({}),
    ));
    let first = a.turn().await;
    let chunks = stream_chunks(&first, "r1");
    let request = chunks
        .iter()
        .find(|c| c["type"] == "tool-approval-request")
        .unwrap();
    assert_eq!(request["toolCallId"], "call_c");
    let approval_id = request["approvalId"].as_str().unwrap().to_string();
    assert_eq!(
        chunks.last().unwrap()["messageMetadata"]["finishReason"],
        "tool-calls"
    );
    let stored = get_messages(&h).await;
    assert_eq!(tool_part(&stored[1])["state"], "approval-requested");
    assert_eq!(
        tool_part(&stored[1])["approval"]["id"],
        approval_id.as_str()
    );

    // Approved: recorded, then run first thing in the continuation.
    h.model.push(Reply::text(&["Done."]));
    a.send(json!({"type": "cf_agent_tool_approval", "toolCallId": "call_c", "approved": true, "autoContinue": true}));
    let updated = frames_until(&mut a, |f| f["type"] == "cf_agent_message_updated").await;
    let part = tool_part(&updated.last().unwrap()["message"]).clone();
    assert_eq!(part["state"], "approval-responded");
    assert_eq!(
        part["approval"],
        json!({"id": approval_id, "approved": true})
    );
    let (frames, id) = follow_continuation(&mut a).await;
    let kinds: Vec<String> = stream_chunks(&frames, &id)
        .iter()
        .map(|c| c["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds[..3], ["start", "tool-output-available", "start-step"]);
    let stored = get_messages(&h).await;
    assert_eq!(tool_part(&stored[1])["state"], "output-available");
    assert_eq!(tool_part(&stored[1])["output"], "charged 5");
    let sent = &h.model.requests()[1].body["messages"];
    assert_eq!(
        sent[3],
        json!({"role": "tool", "tool_call_id": "call_c", "content": "charged 5"})
    );

    // Denied: the tool does not run; the model is told.
    h.model
        .push(tool_call_reply("call_d", "charge", "{\"amount\":500}"));
    let history = get_messages(&h).await;
    let mut messages = history.as_array().unwrap().clone();
    messages.push(user("u2", "charge me 500"));
    a.send(chat_request("r2", Value::Array(messages), json!({})));
    a.turn().await;
    h.model.push(Reply::text(&["Not charged."]));
    a.send(json!({"type": "cf_agent_tool_approval", "toolCallId": "call_d", "approved": false, "autoContinue": true}));
    let updated = frames_until(&mut a, |f| f["type"] == "cf_agent_message_updated").await;
    assert_eq!(
        tool_part(&updated.last().unwrap()["message"])["state"],
        "output-denied"
    );
    let (frames, id) = follow_continuation(&mut a).await;
    assert!(
        !stream_chunks(&frames, &id)
            .iter()
            .any(|c| c["type"] == "tool-output-available"),
        "a denied call does not run"
    );
    let requests = h.model.requests();
    let sent = requests.last().unwrap().body["messages"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(
        sent.last().unwrap(),
        &json!({"role": "tool", "tool_call_id": "call_d", "content": "Tool call execution denied."})
    );
    let stored = get_messages(&h).await;
    assert_eq!(stored.as_array().unwrap().len(), 4);
    assert_eq!(
        stored[3]["parts"].as_array().unwrap().last().unwrap()["text"],
        "Not charged."
    );
    h.runtime.shutdown().await;
}

#[tokio::test]
async fn tool_answers_without_auto_continue_or_for_unknown_calls_start_nothing() {
    let h = harness().await;
    let mut a = Client::connect(&h, "a").await;
    // An unknown call: an error to the sender.
    a.send(json!({"type": "cf_agent_tool_result", "toolCallId": "nope", "toolName": "x", "output": 1, "autoContinue": true}));
    let error = a.json().await;
    assert_eq!(error["type"], "cf_agent_error", "{error}");
    assert!(
        error["error"].as_str().unwrap_or_default().contains("nope")
            || error.to_string().contains("nope"),
        "{error}"
    );
    // Malformed answers: errors, the agent keeps serving.
    for frame in [
        json!({"type": "cf_agent_tool_result", "toolCallId": 7}),
        json!({"type": "cf_agent_tool_approval", "toolCallId": "c"}),
        json!({"type": "cf_agent_tool_result", "toolCallId": "c", "clientTools": "x"}),
    ] {
        a.send(frame);
        assert_eq!(a.json().await["type"], "cf_agent_error");
    }
    // A result with autoContinue false is recorded; nothing runs.
    h.model.push(tool_call_reply("call_1", "getLocation", "{}"));
    let client_tools = json!({"clientTools": [{"name": "getLocation"}]});
    a.send(chat_request(
        "r1",
        json!([user("u1", "where")]),
        client_tools,
    ));
    a.turn().await;
    a.send(
        json!({"type": "cf_agent_tool_result", "toolCallId": "call_1", "toolName": "getLocation",
        "state": "output-error", "errorText": "no GPS", "autoContinue": false}),
    );
    let updated = frames_until(&mut a, |f| f["type"] == "cf_agent_message_updated").await;
    let part = tool_part(&updated.last().unwrap()["message"]).clone();
    assert_eq!(part["state"], "output-error");
    assert_eq!(part["errorText"], "no GPS");
    a.send(json!({"type": "cf_agent_stream_resume_request", "probeId": "p"}));
    assert_eq!(
        a.json().await,
        json!({"type": "cf_agent_stream_resume_none", "reason": "idle", "probeId": "p"})
    );
    assert_eq!(h.model.requests().len(), 1);
    h.runtime.shutdown().await;
}
