//! A client for any OpenAI-compatible `POST {base}/chat/completions` server (llama.cpp, vLLM,
//! Ollama, OpenAI, gateways), streaming one model call — a *step* — as the AI SDK's UI message
//! chunks (chat-protocol.md §12).
//!
//! [`ModelClient::step`] sends `{model, messages, tools, tool_choice:"auto", stream:true,
//! stream_options:{include_usage:true}}` and returns a [`Step`]: a [`Stream`] of [`Chunk`]s
//! (`start-step`, text, reasoning and tool-input parts, `finish-step`; or a terminal `error`),
//! then, once it has ended, a [`StepOutcome`] with what the tool loop needs (finish reason, tool
//! calls with their parsed input, text, reasoning, usage, time to first token). The turn's
//! `start`/`finish` chunks and the tool loop are the chat agent's.
//!
//! Connection errors, `429` and `5xx` answers are retried with the config's [`RetryPolicy`]
//! until the first token; after it, an error ends the stream with an `error` chunk. Dropping the
//! [`Step`] aborts the HTTP request.
//!
//! ```
//! use futures_util::StreamExt;
//! use denizen_agents::chat::chunk::Chunk;
//! use denizen_agents::chat::model::{FinishReason, ModelClient, ModelConfig, StepRequest};
//! use denizen_agents::chat::wire::{ChatMessage, UserContent};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), denizen_agents::chat::model::Error> {
//! # // A scripted stand-in for the model server (Denizen's test utilities).
//! # let server = denizen_test_util::openai::ScriptedModel::start().await;
//! # server.push(denizen_test_util::openai::Reply::text(&["Hello", "!"]));
//! # let base_url = server.base_url();
//! // base_url: an OpenAI-compatible base such as "http://127.0.0.1:8080/v1".
//! let config = ModelConfig::new(base_url, "smollm2")
//!     .with_api_key(std::env::var("DENIZEN_LLM_API_KEY").ok());
//! let client = ModelClient::new(config)?;
//! let messages = vec![ChatMessage::User { content: UserContent::Text("Hi!".into()) }];
//! let mut step = client.step(StepRequest::new(messages, Vec::new()));
//! let mut text = String::new();
//! while let Some(chunk) = step.next().await {
//!     // Relay each chunk to the UI: it is a `cf_agent_use_chat_response` frame's body.
//!     if let Chunk::TextDelta { delta, .. } = &chunk {
//!         text.push_str(delta);
//!     }
//! }
//! let outcome = step.into_outcome().expect("the step ran to its end");
//! assert_eq!(outcome.finish_reason, FinishReason::Stop);
//! assert_eq!((text.as_str(), outcome.text.as_str()), ("Hello!", "Hello!"));
//! assert!(outcome.usage.is_some() && outcome.error.is_none());
//! # Ok(()) }
//! ```

mod mapping;

use std::collections::HashSet;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use denizen_runtime::retry::RetryPolicy;
use futures_util::{Stream, StreamExt, stream};
use serde::Serialize;
use serde_json::Value;
use sse_stream::{Sse, SseStream};
use tokio::time::Instant;
use tracing::{debug, warn};

use self::mapping::{Mapper, StreamChunk, truncate};
use super::chunk::Chunk;
use super::wire::{ChatMessage, ToolCall, ToolSpec};

/// The `errorText` of the `error` chunk a failed step ends with: the AI SDK's default, which
/// tells the user nothing of the server's internals. The real error is in
/// [`StepOutcome::error`].
pub const DEFAULT_ERROR_TEXT: &str = "An error occurred.";

/// What can go wrong calling the model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration cannot make a client.
    #[error("invalid model configuration: {0}")]
    Config(String),
    /// The request could not be encoded.
    #[error("could not encode the chat completions request: {0}")]
    Encode(#[from] serde_json::Error),
    /// The server could not be reached (after the retries).
    #[error(
        "could not reach the model server at {url}: {source}; check the base URL and that the server runs"
    )]
    Connect {
        /// The URL requested.
        url: String,
        /// The HTTP client's error.
        #[source]
        source: reqwest::Error,
    },
    /// The server answered with an error status (after the retries, for `429` and `5xx`).
    #[error("the model server at {url} answered HTTP {status}: {body}")]
    Status {
        /// The URL requested.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The error message it gave (`error.message`), or the start of its body.
        body: String,
    },
    /// No token came within the first-token timeout.
    #[error(
        "the model streamed no token within {0:?}; raise ModelConfig::first_token_timeout for slow servers"
    )]
    FirstTokenTimeout(Duration),
    /// The whole call took longer than the request timeout.
    #[error(
        "the model call took longer than {0:?}; raise ModelConfig::request_timeout or lower max_tokens"
    )]
    RequestTimeout(Duration),
    /// The response stream broke.
    #[error("the model's response stream broke: {0}")]
    Stream(String),
    /// A streamed event is not a `chat.completion.chunk`.
    #[error("the model server sent a chunk that is not a chat completion chunk ({reason}): {data}")]
    BadChunk {
        /// The event's data (its start).
        data: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The server reported an error inside the stream.
    #[error("the model server reported an error mid-stream: {message}")]
    Server {
        /// Its message.
        message: String,
    },
    /// The stream ended without a `finish_reason`.
    #[error(
        "the model's stream ended without a finish_reason: the server stopped before completing the reply"
    )]
    NoFinishReason,
}

/// Where the model is and how to call it.
#[derive(Clone)]
pub struct ModelConfig {
    /// The OpenAI-compatible base URL, `/v1` included (`http://127.0.0.1:8080/v1`,
    /// `https://api.openai.com/v1`); requests go to `{base_url}/chat/completions`.
    pub base_url: String,
    /// The model's name, as the server knows it.
    pub model: String,
    /// Sent as `Authorization: Bearer <key>` when set.
    pub api_key: Option<String>,
    /// How long to wait for a TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// How long one attempt waits for the first token (the answer's headers included). A slow
    /// server's long prompt is read before the first token: give CPU servers room.
    pub first_token_timeout: Duration,
    /// How long a whole call may take, retries included.
    pub request_timeout: Duration,
    /// How connection errors, `429` and `5xx` before the first token are retried.
    pub retry: RetryPolicy,
    /// Sampling temperature, when set.
    pub temperature: Option<f32>,
    /// `max_tokens`, when set.
    pub max_tokens: Option<u32>,
}

impl fmt::Debug for ModelConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModelConfig")
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("connect_timeout", &self.connect_timeout)
            .field("first_token_timeout", &self.first_token_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("retry", &self.retry)
            .field("temperature", &self.temperature)
            .field("max_tokens", &self.max_tokens)
            .finish()
    }
}

impl ModelConfig {
    /// `model` at `base_url`, without a key; connect timeout 10 s, first token 120 s, whole call
    /// 10 min; 4 attempts 0.5 s apart doubling up to 8 s, ±20 % jitter.
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        ModelConfig {
            base_url: base_url.into(),
            model: model.into(),
            api_key: None,
            connect_timeout: Duration::from_secs(10),
            first_token_timeout: Duration::from_secs(120),
            request_timeout: Duration::from_secs(600),
            retry: RetryPolicy::exponential(Duration::from_millis(500), 2.0)
                .with_max_delay(Duration::from_secs(8))
                .with_max_attempts(4)
                .with_jitter(0.2),
            temperature: None,
            max_tokens: None,
        }
    }

    /// The same config with this API key (`None`: no `Authorization` header).
    pub fn with_api_key(mut self, key: Option<String>) -> Self {
        self.api_key = key.filter(|k| !k.is_empty());
        self
    }

    /// The same config with these timeouts.
    pub fn with_timeouts(
        mut self,
        connect: Duration,
        first_token: Duration,
        request: Duration,
    ) -> Self {
        self.connect_timeout = connect;
        self.first_token_timeout = first_token;
        self.request_timeout = request;
        self
    }

    /// The same config with this retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }
}

/// Tokens a call used, as the server reported them (`stream_options.include_usage`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Tokens of the prompt.
    pub prompt_tokens: u64,
    /// Tokens generated.
    pub completion_tokens: u64,
    /// Prompt tokens served from the server's cache, when it says.
    pub cached_prompt_tokens: Option<u64>,
}

/// Why a step ended, the AI SDK's `finishReason` (`stop`, `tool-calls`, …).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FinishReason {
    /// The model ended its reply.
    Stop,
    /// The model called tools.
    ToolCalls,
    /// `max_tokens` or the context ran out.
    Length,
    /// A filter stopped it, or the model refused.
    ContentFilter,
    /// The call failed.
    Error,
    /// Any other reason the server gave.
    Other,
}

impl FinishReason {
    /// The AI SDK's mapping of an OpenAI `finish_reason` (`refused`: a refusal was streamed).
    pub fn from_openai(reason: &str, refused: bool) -> Self {
        match reason {
            "stop" if refused => FinishReason::ContentFilter,
            "stop" => FinishReason::Stop,
            "tool_calls" | "function_call" => FinishReason::ToolCalls,
            "length" => FinishReason::Length,
            "content_filter" => FinishReason::ContentFilter,
            _ => FinishReason::Other,
        }
    }

    /// As the UI message stream spells it (`tool-calls`).
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::ToolCalls => "tool-calls",
            FinishReason::Length => "length",
            FinishReason::ContentFilter => "content-filter",
            FinishReason::Error => "error",
            FinishReason::Other => "other",
        }
    }
}

/// A tool call the model made in a step.
#[derive(Clone, Debug, PartialEq)]
pub struct StepToolCall {
    /// The call's id (the server's, or one made up when it sent none).
    pub id: String,
    /// The tool's name.
    pub name: String,
    /// The arguments as streamed (a JSON text).
    pub arguments: String,
    /// The parsed arguments (`{}` for none); the raw text as a string when it is not JSON.
    pub input: Value,
    /// Why the call cannot run (an unknown tool, arguments that are not JSON), as sent in the
    /// `tool-input-error` chunk; it goes back to the model as the call's result.
    pub error: Option<String>,
}

/// What a step left, once its stream has ended.
#[derive(Debug)]
pub struct StepOutcome {
    /// Why it ended ([`FinishReason::Error`] when it failed).
    pub finish_reason: FinishReason,
    /// The tool calls, in stream order (none when the step failed).
    pub tool_calls: Vec<StepToolCall>,
    /// The text streamed (refusals included).
    pub text: String,
    /// The reasoning streamed.
    pub reasoning: String,
    /// Tokens used, if the server said.
    pub usage: Option<Usage>,
    /// From the step's start to its first token (retries included), if one came.
    pub time_to_first_token: Option<Duration>,
    /// HTTP attempts made.
    pub attempts: u32,
    /// Why it failed, when it did (the stream then ended with an `error` chunk).
    pub error: Option<Error>,
}

impl StepOutcome {
    /// The step as an assistant message for the next request (chat-protocol.md §12.1): its text
    /// (`null` if it only called tools), its reasoning, its tool calls.
    pub fn assistant_message(&self) -> ChatMessage {
        let content = if self.text.is_empty() && !self.tool_calls.is_empty() {
            None
        } else {
            Some(self.text.clone())
        };
        let tool_calls = self
            .tool_calls
            .iter()
            .map(|call| {
                let arguments = match call.input {
                    Value::String(_) if call.error.is_some() => call.arguments.clone(),
                    ref input => input.to_string(),
                };
                ToolCall::function(call.id.clone(), call.name.clone(), arguments)
            })
            .collect();
        ChatMessage::Assistant {
            content,
            reasoning_content: (!self.reasoning.is_empty()).then(|| self.reasoning.clone()),
            tool_calls,
        }
    }
}

/// One model call's input.
#[derive(Clone, Debug)]
pub struct StepRequest {
    /// The conversation (system prompt first).
    pub messages: Vec<ChatMessage>,
    /// The tools offered (client tools included); a call of any other is a `tool-input-error`.
    pub tools: Vec<ToolSpec>,
    /// Text and reasoning part ids are `{prefix}-{n}`; by default a random prefix, so ids stay
    /// unique across the steps of a message.
    pub part_id_prefix: Option<String>,
}

impl StepRequest {
    /// A call with `messages` and `tools`.
    pub fn new(messages: Vec<ChatMessage>, tools: Vec<ToolSpec>) -> Self {
        StepRequest {
            messages,
            tools,
            part_id_prefix: None,
        }
    }

    /// The same request with part ids `{prefix}-{n}`.
    pub fn with_part_id_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.part_id_prefix = Some(prefix.into());
        self
    }
}

/// The request body, as `@ai-sdk/openai-compatible` sends it.
#[derive(Serialize)]
struct RequestBody<'a> {
    model: &'a str,
    messages: &'a [ChatMessage],
    // Servers such as OpenAI refuse `"tools":[]`: both keys go only with tools, as the AI SDK does.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    tools: &'a [ToolSpec],
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<&'static str>,
    stream: bool,
    stream_options: StreamOptions,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

/// A client for one model. Cheap to clone (one connection pool).
#[derive(Clone, Debug)]
pub struct ModelClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    http: reqwest::Client,
    url: String,
    config: ModelConfig,
}

impl ModelClient {
    /// A client for `config`; fails on a base URL that is not `http(s)://…`.
    pub fn new(config: ModelConfig) -> Result<Self, Error> {
        let base = config.base_url.trim_end_matches('/');
        let parsed = reqwest::Url::parse(base)
            .map_err(|e| Error::Config(format!("base URL {base:?} does not parse: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(Error::Config(format!(
                "base URL {base:?} is not http(s); give the OpenAI-compatible base such as http://127.0.0.1:8080/v1"
            )));
        }
        let url = format!("{base}/chat/completions");
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .build()
            .map_err(|e| Error::Config(format!("could not build the HTTP client: {e}")))?;
        Ok(ModelClient {
            inner: Arc::new(Inner { http, url, config }),
        })
    }

    /// The config it was made with.
    pub fn config(&self) -> &ModelConfig {
        &self.inner.config
    }

    /// The URL it posts to: `{base_url}/chat/completions`.
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// The JSON body a step with `request` sends.
    pub fn request_body(&self, request: &StepRequest) -> Result<Value, Error> {
        Ok(serde_json::to_value(self.body(request))?)
    }

    fn body<'a>(&'a self, request: &'a StepRequest) -> RequestBody<'a> {
        let config = &self.inner.config;
        RequestBody {
            model: &config.model,
            messages: &request.messages,
            tools: &request.tools,
            tool_choice: (!request.tools.is_empty()).then_some("auto"),
            stream: true,
            stream_options: StreamOptions {
                include_usage: true,
            },
            temperature: config.temperature,
            max_tokens: config.max_tokens,
        }
    }

    /// Starts one model call. Nothing is sent until the [`Step`] is polled; dropping it aborts
    /// the request.
    pub fn step(&self, request: StepRequest) -> Step {
        let started = Instant::now();
        let known_tools: HashSet<String> = request.tools.iter().map(|t| t.name.clone()).collect();
        let prefix = request
            .part_id_prefix
            .clone()
            .unwrap_or_else(|| super::random_id(8));
        let body = serde_json::to_vec(&self.body(&request)).map(Bytes::from);
        let driver = Driver {
            inner: self.inner.clone(),
            phase: match body {
                Ok(body) => Phase::Begin(body),
                Err(e) => Phase::Failed(Error::Encode(e)),
            },
            mapper: Some(Mapper::new(prefix, known_tools)),
            started,
            deadline: started + self.inner.config.request_timeout,
            attempts: 0,
            attempt_started: started,
            first_token: None,
        };
        let events = stream::unfold(driver, |mut driver| async move {
            let batch = driver.next_batch().await?;
            Some((stream::iter(batch), driver))
        })
        .flatten();
        Step {
            events: Box::pin(events),
            outcome: None,
        }
    }
}

/// One model call in progress: a [`Stream`] of UI [`Chunk`]s, then its [`StepOutcome`]. See
/// the [module docs](self).
pub struct Step {
    events: Pin<Box<dyn Stream<Item = Event> + Send>>,
    outcome: Option<StepOutcome>,
}

impl fmt::Debug for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Step")
            .field("outcome", &self.outcome)
            .finish_non_exhaustive()
    }
}

impl Step {
    /// The outcome, once the stream has ended.
    pub fn outcome(&self) -> Option<&StepOutcome> {
        self.outcome.as_ref()
    }

    /// The outcome, once the stream has ended.
    pub fn into_outcome(self) -> Option<StepOutcome> {
        self.outcome
    }

    /// Runs the step to its end: every chunk, then the outcome.
    pub async fn drain(mut self) -> (Vec<Chunk>, StepOutcome) {
        let mut chunks = Vec::new();
        while let Some(chunk) = self.next().await {
            chunks.push(chunk);
        }
        let outcome = self.outcome.unwrap_or_else(|| StepOutcome {
            finish_reason: FinishReason::Error,
            tool_calls: Vec::new(),
            text: String::new(),
            reasoning: String::new(),
            usage: None,
            time_to_first_token: None,
            attempts: 0,
            error: Some(Error::Stream("the step ended without an outcome".into())),
        });
        (chunks, outcome)
    }
}

impl Stream for Step {
    type Item = Chunk;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Chunk>> {
        loop {
            match self.events.as_mut().poll_next(cx) {
                Poll::Ready(Some(Event::Chunk(chunk))) => return Poll::Ready(Some(chunk)),
                Poll::Ready(Some(Event::Done(outcome))) => self.outcome = Some(*outcome),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

enum Event {
    Chunk(Chunk),
    Done(Box<StepOutcome>),
}

type Events = Pin<Box<dyn Stream<Item = Result<Sse, sse_stream::Error>> + Send>>;

enum Phase {
    /// Not started: `start-step` comes first.
    Begin(Bytes),
    /// To (re)send the request.
    Connect(Bytes),
    /// Reading the answer's events.
    Streaming(Bytes, Events),
    /// Failed before it began.
    Failed(Error),
    /// Over.
    Done,
}

/// The state of one step, advanced each time its stream wants chunks.
struct Driver {
    inner: Arc<Inner>,
    phase: Phase,
    mapper: Option<Mapper>,
    started: Instant,
    deadline: Instant,
    attempts: u32,
    attempt_started: Instant,
    first_token: Option<Duration>,
}

impl Driver {
    /// The next chunks to yield, `None` once the step is over.
    async fn next_batch(&mut self) -> Option<Vec<Event>> {
        loop {
            match std::mem::replace(&mut self.phase, Phase::Done) {
                Phase::Done => return None,
                Phase::Failed(error) => return Some(self.fail(error)),
                Phase::Begin(body) => {
                    self.phase = Phase::Connect(body);
                    return Some(vec![Event::Chunk(Chunk::StartStep)]);
                }
                Phase::Connect(body) => match self.connect(&body).await {
                    Ok(events) => self.phase = Phase::Streaming(body, events),
                    Err(error) => return Some(self.fail(error)),
                },
                Phase::Streaming(body, mut events) => {
                    let saw_token = self.first_token.is_some();
                    let first_token_limit =
                        self.attempt_started + self.config().first_token_timeout;
                    let limit = if saw_token {
                        self.deadline
                    } else {
                        first_token_limit.min(self.deadline)
                    };
                    let event = match tokio::time::timeout_at(limit, events.next()).await {
                        Ok(event) => event,
                        Err(_) => return Some(self.fail(self.timeout_error(limit))),
                    };
                    let sse = match event {
                        None => return Some(self.finish()),
                        Some(Ok(sse)) => sse,
                        Some(Err(e)) => {
                            let error = Error::Stream(e.to_string());
                            if saw_token {
                                return Some(self.fail(error));
                            }
                            // Broken before any token: nothing reached the UI, send again.
                            drop(events);
                            match self.backoff(error, None).await {
                                Ok(()) => {
                                    if let Some(mapper) = &mut self.mapper {
                                        mapper.reset_attempt();
                                    }
                                    self.phase = Phase::Connect(body);
                                    continue;
                                }
                                Err(error) => return Some(self.fail(error)),
                            }
                        }
                    };
                    // Comments (keep-alives) and events without data carry nothing.
                    let Some(data) = sse.data else {
                        self.phase = Phase::Streaming(body, events);
                        continue;
                    };
                    if data.trim() == "[DONE]" {
                        return Some(self.finish());
                    }
                    let mut out = Vec::new();
                    let pushed =
                        StreamChunk::parse(&data).and_then(|chunk| match &mut self.mapper {
                            Some(mapper) => mapper.push(chunk, &mut out),
                            None => Ok(()),
                        });
                    if let Err(error) = pushed {
                        return Some(self.fail(error));
                    }
                    if self.first_token.is_none()
                        && self.mapper.as_ref().is_some_and(Mapper::saw_token)
                    {
                        self.first_token = Some(self.started.elapsed());
                    }
                    self.phase = Phase::Streaming(body, events);
                    if !out.is_empty() {
                        return Some(out.into_iter().map(Event::Chunk).collect());
                    }
                }
            }
        }
    }

    fn config(&self) -> &ModelConfig {
        &self.inner.config
    }

    fn timeout_error(&self, limit: Instant) -> Error {
        if limit >= self.deadline {
            Error::RequestTimeout(self.config().request_timeout)
        } else {
            Error::FirstTokenTimeout(self.config().first_token_timeout)
        }
    }

    /// Sends the request until the server answers with a stream, retrying what can be.
    async fn connect(&mut self, body: &Bytes) -> Result<Events, Error> {
        loop {
            self.attempts += 1;
            self.attempt_started = Instant::now();
            let limit =
                (self.attempt_started + self.config().first_token_timeout).min(self.deadline);
            let mut request = self
                .inner
                .http
                .post(&self.inner.url)
                .header(http::header::CONTENT_TYPE, "application/json")
                .header(http::header::ACCEPT, "text/event-stream")
                .body(body.clone());
            if let Some(key) = &self.config().api_key {
                request = request.bearer_auth(key);
            }
            let response = match tokio::time::timeout_at(limit, request.send()).await {
                Err(_) => return Err(self.timeout_error(limit)),
                Ok(Err(source)) => {
                    let builder = source.is_builder();
                    let error = Error::Connect {
                        url: self.inner.url.clone(),
                        source,
                    };
                    if builder {
                        return Err(error);
                    }
                    self.backoff(error, None).await?;
                    continue;
                }
                Ok(Ok(response)) => response,
            };
            let status = response.status();
            if status.is_success() {
                debug!(url = %self.inner.url, attempt = self.attempts, "model stream opened");
                return Ok(Box::pin(SseStream::from_bytes_stream(
                    response.bytes_stream(),
                )));
            }
            let retry_after = response
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let text = match tokio::time::timeout_at(limit, response.text()).await {
                Ok(Ok(text)) => text,
                _ => String::new(),
            };
            let error = Error::Status {
                url: self.inner.url.clone(),
                status: status.as_u16(),
                body: error_message(&text),
            };
            if status == http::StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
                self.backoff(error, retry_after).await?;
                continue;
            }
            return Err(error);
        }
    }

    /// Waits before the next attempt, or gives `error` back when the policy or the request
    /// timeout allows none.
    async fn backoff(&mut self, error: Error, retry_after: Option<Duration>) -> Result<(), Error> {
        let Some(delay) = self.config().retry.next_delay(self.attempts) else {
            return Err(error);
        };
        let delay = retry_after.map_or(delay, |after| after.max(delay));
        if Instant::now() + delay >= self.deadline {
            return Err(error);
        }
        debug!(url = %self.inner.url, attempt = self.attempts, ?delay, %error, "model call failed, retrying");
        tokio::time::sleep(delay).await;
        Ok(())
    }

    /// The stream ended: the step's last chunks and its outcome (an error without a
    /// `finish_reason`).
    fn finish(&mut self) -> Vec<Event> {
        self.phase = Phase::Done;
        let Some(mapper) = self.mapper.take() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let done = mapper.finish(&mut out);
        if done.error.is_some() {
            return self.failed(done);
        }
        debug!(url = %self.inner.url, finish_reason = done.finish_reason.as_str(), usage = ?done.usage, "model step done");
        let outcome = self.outcome(done);
        out.into_iter()
            .map(Event::Chunk)
            .chain([Event::Done(Box::new(outcome))])
            .collect()
    }

    /// The step failed with `error`.
    fn fail(&mut self, error: Error) -> Vec<Event> {
        self.phase = Phase::Done;
        match self.mapper.take() {
            Some(mapper) => self.failed(mapper.partial(error)),
            None => Vec::new(),
        }
    }

    /// A failed step's end: an `error` chunk, nothing after it.
    fn failed(&mut self, partial: mapping::Finished) -> Vec<Event> {
        if let Some(error) = &partial.error {
            warn!(url = %self.inner.url, attempts = self.attempts, %error, "model call failed");
        }
        vec![
            Event::Chunk(Chunk::Error {
                error_text: DEFAULT_ERROR_TEXT.into(),
            }),
            Event::Done(Box::new(self.outcome(partial))),
        ]
    }

    fn outcome(&self, done: mapping::Finished) -> StepOutcome {
        StepOutcome {
            finish_reason: done.finish_reason,
            tool_calls: done.tool_calls,
            text: done.text,
            reasoning: done.reasoning,
            usage: done.usage,
            time_to_first_token: self.first_token,
            attempts: self.attempts,
            error: done.error,
        }
    }
}

/// The message of an error answer (`{"error":{"message"}}` or `{"message"}`), or its start.
fn error_message(body: &str) -> String {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let message = parsed.as_ref().and_then(|v| {
        v.pointer("/error/message")
            .or_else(|| v.get("message"))
            .or_else(|| v.get("error").filter(|e| e.is_string()))
            .and_then(Value::as_str)
    });
    match message {
        Some(m) => truncate(m, 500),
        None if body.trim().is_empty() => "(no body)".into(),
        None => truncate(body.trim(), 500),
    }
}
