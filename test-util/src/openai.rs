//! A scripted OpenAI-compatible server: `POST /v1/chat/completions` answered with the next
//! [`Reply`] of a script, every request recorded. For deterministic model tests (exact chunks,
//! tool calls in fragments, 429/500 before the stream, a stream cut mid-way, a hang, a stream
//! paused at a [`Gate`] until the test opens it); the real llama.cpp peer is for end-to-end runs.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use denizen_test_util::openai::{Reply, ScriptedModel, SseEvent};
//!
//! let model = ScriptedModel::start().await;
//! model.push(Reply::Status { status: 429, body: "slow down".into(), retry_after: None });
//! model.push(Reply::text(&["Hel", "lo"]));
//! model.push(Reply::Sse(vec![
//!     SseEvent::role(),
//!     SseEvent::tool_call_start(0, "call_1", "getWeather", "{\"ci"),
//!     SseEvent::tool_call_args(0, "ty\":\"Paris\"}"),
//!     SseEvent::finish("tool_calls"),
//!     SseEvent::usage(10, 5),
//!     SseEvent::Done,
//! ]));
//! // Point the client at `model.base_url()` (`http://127.0.0.1:<port>/v1`), then:
//! let client = reqwest::Client::new();
//! let url = format!("{}/chat/completions", model.base_url());
//! let first = client.post(&url).body("{\"model\":\"m\"}").send().await.unwrap();
//! assert_eq!(first.status(), 429);
//! assert_eq!(model.requests()[0].body["model"], "m");
//! # }
//! ```

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

/// What the server answers one request with.
#[derive(Clone, Debug)]
pub enum Reply {
    /// `200 text/event-stream` with these events, in order.
    Sse(Vec<SseEvent>),
    /// An error status before any stream, with a JSON body `{"error":{"message":body}}` and,
    /// when set, a `Retry-After` header in seconds.
    Status {
        status: u16,
        body: String,
        retry_after: Option<u64>,
    },
    /// Never answers (not even headers); the connection stays open.
    Hang,
}

impl Reply {
    /// A plain streamed answer: the role chunk, one content chunk per piece, `finish_reason`
    /// `stop`, usage (10 prompt, one completion token per piece) and `[DONE]`.
    pub fn text(pieces: &[&str]) -> Reply {
        let mut events = vec![SseEvent::role()];
        events.extend(pieces.iter().map(|p| SseEvent::text(p)));
        events.push(SseEvent::finish("stop"));
        events.push(SseEvent::usage(10, pieces.len() as u64));
        events.push(SseEvent::Done);
        Reply::Sse(events)
    }
}

/// One step of a streamed answer.
#[derive(Clone, Debug)]
pub enum SseEvent {
    /// `data: <json>` (build with the helpers: [`SseEvent::text`], [`SseEvent::finish`], …).
    Json(Value),
    /// `data: <text>` as is (a malformed chunk, say).
    Raw(String),
    /// `data: [DONE]`.
    Done,
    /// Breaks the connection (the chunked body is never terminated): the client sees a broken
    /// stream.
    Cut,
    /// Sends nothing more but keeps the stream open, writing an SSE comment every 20 ms so a
    /// client that went away is noticed ([`ScriptedModel::streams_dropped`]).
    Hang,
    /// Waits until the test opens `gate` (at once if it is open), writing an SSE comment every
    /// 20 ms meanwhile, then goes on with the next event: a stream paused mid-way for as long
    /// as the test needs.
    Wait(Gate),
}

/// A latch a scripted stream waits at ([`SseEvent::Wait`]) until the test opens it; clones
/// share it.
#[derive(Clone, Debug)]
pub struct Gate(Arc<tokio::sync::watch::Sender<bool>>);

impl Default for Gate {
    fn default() -> Self {
        Gate(Arc::new(tokio::sync::watch::Sender::new(false)))
    }
}

impl Gate {
    /// A closed gate.
    pub fn new() -> Gate {
        Gate::default()
    }

    /// Opens it for good: every stream waiting at it goes on.
    pub fn open(&self) {
        self.0.send_replace(true);
    }

    /// Whether it is open.
    pub fn is_open(&self) -> bool {
        *self.0.borrow()
    }
}

impl SseEvent {
    /// A `chat.completion.chunk` with one choice of this `delta` and `finish_reason`.
    pub fn choice(delta: Value, finish_reason: Option<&str>) -> SseEvent {
        SseEvent::Json(json!({
            "id": "chatcmpl-scripted",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "scripted",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }))
    }

    /// A chunk with this delta.
    pub fn delta(delta: Value) -> SseEvent {
        SseEvent::choice(delta, None)
    }

    /// The first chunk llama.cpp sends: `{"role":"assistant","content":null}`.
    pub fn role() -> SseEvent {
        SseEvent::delta(json!({"role": "assistant", "content": null}))
    }

    /// `delta.content`.
    pub fn text(text: &str) -> SseEvent {
        SseEvent::delta(json!({ "content": text }))
    }

    /// `delta.reasoning_content` (llama.cpp, vLLM, DeepSeek).
    pub fn reasoning(text: &str) -> SseEvent {
        SseEvent::delta(json!({ "reasoning_content": text }))
    }

    /// `delta.refusal`.
    pub fn refusal(text: &str) -> SseEvent {
        SseEvent::delta(json!({ "refusal": text }))
    }

    /// A tool call's first fragment: `index`, `id`, `function.name` and the first arguments.
    pub fn tool_call_start(index: u32, id: &str, name: &str, arguments: &str) -> SseEvent {
        SseEvent::delta(json!({"tool_calls": [{
            "index": index, "id": id, "type": "function",
            "function": {"name": name, "arguments": arguments},
        }]}))
    }

    /// A later fragment of call `index`: more arguments.
    pub fn tool_call_args(index: u32, arguments: &str) -> SseEvent {
        SseEvent::delta(
            json!({"tool_calls": [{"index": index, "function": {"arguments": arguments}}]}),
        )
    }

    /// The chunk ending the choice: an empty delta and this `finish_reason`.
    pub fn finish(reason: &str) -> SseEvent {
        SseEvent::choice(json!({}), Some(reason))
    }

    /// The last chunk with `include_usage`: no choices, the usage.
    pub fn usage(prompt_tokens: u64, completion_tokens: u64) -> SseEvent {
        SseEvent::Json(json!({
            "id": "chatcmpl-scripted",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "scripted",
            "choices": [],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }))
    }
}

/// A request the server got.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// Its path (`/v1/chat/completions`).
    pub path: String,
    /// Its headers, names in lower case.
    pub headers: Vec<(String, String)>,
    /// Its body as JSON (`Value::Null` if it was not JSON).
    pub body: Value,
}

impl Recorded {
    /// The value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct Shared {
    script: Mutex<VecDeque<Reply>>,
    requests: Mutex<Vec<Recorded>>,
    dropped: AtomicUsize,
}

/// The server, on 127.0.0.1 and a free port; stopped when dropped. See the [module docs](self).
pub struct ScriptedModel {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl ScriptedModel {
    /// Starts it with an empty script (a request beyond the script gets a 500 saying so).
    pub async fn start() -> ScriptedModel {
        let shared = Arc::new(Shared::default());
        let app = Router::new()
            .route("/v1/chat/completions", post(answer))
            .fallback(not_found)
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        ScriptedModel { addr, shared, task }
    }

    /// `http://127.0.0.1:<port>/v1`, the base URL to configure a client with.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Appends `reply` to the script.
    pub fn push(&self, reply: Reply) -> &Self {
        self.shared.script.lock().unwrap().push_back(reply);
        self
    }

    /// The requests so far, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// Scripted replies not yet used.
    pub fn remaining(&self) -> usize {
        self.shared.script.lock().unwrap().len()
    }

    /// Streams that ended because the client went away before their last event.
    pub fn streams_dropped(&self) -> usize {
        self.shared.dropped.load(Ordering::SeqCst)
    }
}

impl Drop for ScriptedModel {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn not_found(uri: Uri) -> Response {
    let message = format!("the scripted model serves POST /v1/chat/completions, not {uri}");
    (StatusCode::NOT_FOUND, message).into_response()
}

async fn answer(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    shared.requests.lock().unwrap().push(Recorded {
        path: uri.path().to_owned(),
        headers: headers
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect(),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    });
    let reply = shared.script.lock().unwrap().pop_front();
    match reply {
        None => error_response(
            500,
            "the scripted model has no reply left in its script",
            None,
        ),
        Some(Reply::Status {
            status,
            body,
            retry_after,
        }) => error_response(status, &body, retry_after),
        Some(Reply::Hang) => std::future::pending().await,
        Some(Reply::Sse(events)) => {
            let guard = DropGuard {
                shared: shared.clone(),
                finished: false,
            };
            let stream = futures_util::stream::unfold(
                (VecDeque::from(events), guard),
                |(mut events, mut guard)| async move {
                    let event = match events.pop_front() {
                        None => {
                            guard.complete();
                            return None;
                        }
                        Some(event) => event,
                    };
                    let bytes = match event {
                        SseEvent::Json(v) => format!("data: {v}\n\n"),
                        SseEvent::Raw(text) => format!("data: {text}\n\n"),
                        SseEvent::Done => "data: [DONE]\n\n".to_owned(),
                        SseEvent::Cut => {
                            // Pending first, so hyper flushes the events written before the
                            // cut instead of dropping them with the connection.
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            guard.complete();
                            let cut = std::io::Error::other("scripted cut");
                            return Some((Err(cut), (VecDeque::new(), guard)));
                        }
                        SseEvent::Hang => {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            events.push_front(SseEvent::Hang);
                            ": keep-alive\n\n".to_owned()
                        }
                        SseEvent::Wait(gate) => {
                            let mut open = gate.0.subscribe();
                            let waited = tokio::time::timeout(
                                Duration::from_millis(20),
                                open.wait_for(|open| *open),
                            )
                            .await;
                            if waited.is_err() {
                                events.push_front(SseEvent::Wait(gate));
                            }
                            ": keep-alive\n\n".to_owned()
                        }
                    };
                    Some((Ok(Bytes::from(bytes)), (events, guard)))
                },
            );
            Response::builder()
                .header(header::CONTENT_TYPE, "text/event-stream")
                .header(header::CACHE_CONTROL, "no-cache")
                .body(Body::from_stream(stream))
                .unwrap()
        }
    }
}

fn error_response(status: u16, message: &str, retry_after: Option<u64>) -> Response {
    let body = json!({"error": {"code": status, "message": message, "type": "scripted_error"}});
    let mut response = Response::builder()
        .status(StatusCode::from_u16(status).unwrap())
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(seconds) = retry_after {
        response = response.header(header::RETRY_AFTER, seconds.to_string());
    }
    response.body(Body::from(body.to_string())).unwrap()
}

/// Counts a stream dropped before its end: the server noticed the client went away.
struct DropGuard {
    shared: Arc<Shared>,
    finished: bool,
}

impl DropGuard {
    fn complete(&mut self) {
        self.finished = true;
    }
}

impl Drop for DropGuard {
    fn drop(&mut self) {
        if !self.finished {
            self.shared.dropped.fetch_add(1, Ordering::SeqCst);
        }
    }
}
