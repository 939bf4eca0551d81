//! The chat model client against the scripted OpenAI-compatible server: every row of
//! chat-protocol.md §12.2 (the streamed chunks → UI chunks), the §12.1 request body, retries
//! before the first token, errors after it, timeouts and cancellation; and one streamed reply
//! from the real llama.cpp server when it is installed.

use std::time::Duration;

use denizen_agents::chat::model::{
    Error, FinishReason, ModelClient, ModelConfig, StepOutcome, StepRequest, Usage,
};
use denizen_agents::chat::wire::{ChatMessage, ToolCall, ToolSpec, UserContent};
use denizen_runtime::retry::RetryPolicy;
use denizen_test_util::eventually;
use denizen_test_util::llm::LlamaServer;
use denizen_test_util::openai::{Reply, ScriptedModel, SseEvent};
use futures_util::StreamExt;
use serde_json::{Value, json};

/// A client of `model` retrying 3 times in all, 10 ms apart.
fn client(model: &ScriptedModel) -> ModelClient {
    ModelClient::new(config(model)).unwrap()
}

fn config(model: &ScriptedModel) -> ModelConfig {
    ModelConfig::new(model.base_url(), "m")
        .with_retry(RetryPolicy::constant(Duration::from_millis(10)).with_max_attempts(3))
}

fn weather_tool() -> ToolSpec {
    ToolSpec {
        name: "getWeather".into(),
        description: "The weather in a city".into(),
        parameters: json!({"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}),
    }
}

fn ask(text: &str) -> StepRequest {
    let messages = vec![ChatMessage::User {
        content: UserContent::Text(text.into()),
    }];
    StepRequest::new(messages, vec![weather_tool()]).with_part_id_prefix("p")
}

/// Runs a step to its end: its chunks as JSON, and its outcome.
async fn run(client: &ModelClient, request: StepRequest) -> (Value, StepOutcome) {
    let (chunks, outcome) = client.step(request).drain().await;
    (serde_json::to_value(chunks).unwrap(), outcome)
}

fn error_chunk() -> Value {
    json!({"type":"error","errorText":"An error occurred."})
}

#[tokio::test]
async fn the_request_is_the_ai_sdk_one_with_the_bearer_key() {
    let model = ScriptedModel::start().await;
    model.push(Reply::text(&["ok"]));
    model.push(Reply::text(&["ok"]));
    let keyed = ModelClient::new(config(&model).with_api_key(Some("sk-test".into()))).unwrap();
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
    let tool = ToolSpec {
        description: "…".into(),
        ..weather_tool()
    };
    let (_, outcome) = run(&keyed, StepRequest::new(messages, vec![tool])).await;
    assert!(outcome.error.is_none(), "{:?}", outcome.error);

    let sent = &model.requests()[0];
    assert_eq!(sent.path, "/v1/chat/completions");
    assert_eq!(sent.header("authorization"), Some("Bearer sk-test"));
    assert_eq!(sent.header("content-type"), Some("application/json"));
    assert_eq!(
        sent.body,
        json!({"model":"m",
         "messages":[{"role":"system","content":"You are helpful."},
                     {"role":"user","content":"Weather in Paris?"},
                     {"role":"assistant","content":"Let me check.","tool_calls":[{"id":"call_1","type":"function","function":{"name":"getWeather","arguments":"{\"city\":\"Paris\"}"}}]},
                     {"role":"tool","tool_call_id":"call_1","content":"{\"city\":\"Paris\",\"tempC\":21}"}],
         "tools":[{"type":"function","function":{"name":"getWeather","description":"…","parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}}],
         "tool_choice":"auto","stream":true,"stream_options":{"include_usage":true}})
    );

    // No key, no header; no tools, neither `tools` nor `tool_choice` (OpenAI refuses `[]`).
    let mut plain = config(&model);
    plain.temperature = Some(0.0);
    plain.max_tokens = Some(16);
    let plain = ModelClient::new(plain).unwrap();
    let request = StepRequest::new(ask("hi").messages, Vec::new());
    run(&plain, request).await;
    let sent = &model.requests()[1];
    assert_eq!(sent.header("authorization"), None);
    assert_eq!(
        sent.body,
        json!({"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,
               "stream_options":{"include_usage":true},"temperature":0.0,"max_tokens":16})
    );
}

#[tokio::test]
async fn content_streams_as_one_text_part_with_usage() {
    let model = ScriptedModel::start().await;
    model.push(Reply::text(&["Hel", "lo"]));
    let (chunks, outcome) = run(&client(&model), ask("hi")).await;
    assert_eq!(
        chunks,
        json!([
            {"type":"start-step"},
            {"type":"text-start","id":"p-0"},
            {"type":"text-delta","id":"p-0","delta":"Hel"},
            {"type":"text-delta","id":"p-0","delta":"lo"},
            {"type":"text-end","id":"p-0"},
            {"type":"finish-step"}
        ])
    );
    assert_eq!(outcome.finish_reason, FinishReason::Stop);
    assert_eq!(outcome.text, "Hello");
    assert_eq!(
        outcome.usage,
        Some(Usage {
            prompt_tokens: 10,
            completion_tokens: 2,
            cached_prompt_tokens: None
        })
    );
    assert!(outcome.time_to_first_token.is_some());
    assert_eq!(outcome.attempts, 1);
    assert!(outcome.error.is_none());
    assert_eq!(
        outcome.assistant_message(),
        ChatMessage::Assistant {
            content: Some("Hello".into()),
            reasoning_content: None,
            tool_calls: Vec::new()
        }
    );
}

#[tokio::test]
async fn reasoning_ends_when_text_starts_and_text_ends_when_reasoning_resumes() {
    let model = ScriptedModel::start().await;
    model.push(Reply::Sse(vec![
        SseEvent::role(),
        SseEvent::reasoning("Let me "),
        SseEvent::delta(json!({"reasoning":"think."})),
        SseEvent::text("Paris"),
        SseEvent::reasoning("Sure?"),
        SseEvent::text("!"),
        SseEvent::finish("stop"),
        SseEvent::Done,
    ]));
    let (chunks, outcome) = run(&client(&model), ask("capital?")).await;
    assert_eq!(
        chunks,
        json!([
            {"type":"start-step"},
            {"type":"reasoning-start","id":"p-0"},
            {"type":"reasoning-delta","id":"p-0","delta":"Let me "},
            {"type":"reasoning-delta","id":"p-0","delta":"think."},
            {"type":"reasoning-end","id":"p-0"},
            {"type":"text-start","id":"p-1"},
            {"type":"text-delta","id":"p-1","delta":"Paris"},
            {"type":"text-end","id":"p-1"},
            {"type":"reasoning-start","id":"p-2"},
            {"type":"reasoning-delta","id":"p-2","delta":"Sure?"},
            {"type":"reasoning-end","id":"p-2"},
            {"type":"text-start","id":"p-3"},
            {"type":"text-delta","id":"p-3","delta":"!"},
            {"type":"text-end","id":"p-3"},
            {"type":"finish-step"}
        ])
    );
    assert_eq!(outcome.reasoning, "Let me think.Sure?");
    assert_eq!(outcome.text, "Paris!");
    // No usage chunk came: none recorded.
    assert_eq!(outcome.usage, None);
}

#[tokio::test]
async fn tool_calls_stream_in_fragments_tied_by_index_and_complete_at_the_end() {
    let model = ScriptedModel::start().await;
    model.push(Reply::Sse(vec![
        SseEvent::role(),
        SseEvent::reasoning("Need weather."),
        SseEvent::text("Checking."),
        // llama.cpp-style random id; later fragments carry only the index.
        SseEvent::tool_call_start(0, "Xy7kQ2", "getWeather", "{\"ci"),
        SseEvent::tool_call_start(1, "call_b", "getWeather", ""),
        SseEvent::tool_call_args(0, "ty\":\"Paris\"}"),
        SseEvent::tool_call_start(2, "call_c", "getWeather", "{\"city\":"),
        SseEvent::tool_call_start(3, "call_d", "launchRocket", "{}"),
        SseEvent::finish("tool_calls"),
        SseEvent::usage(30, 12),
        SseEvent::Done,
    ]));
    let (chunks, outcome) = run(&client(&model), ask("weather?")).await;
    assert_eq!(
        chunks,
        json!([
            {"type":"start-step"},
            {"type":"reasoning-start","id":"p-0"},
            {"type":"reasoning-delta","id":"p-0","delta":"Need weather."},
            {"type":"reasoning-end","id":"p-0"},
            {"type":"text-start","id":"p-1"},
            {"type":"text-delta","id":"p-1","delta":"Checking."},
            {"type":"tool-input-start","toolCallId":"Xy7kQ2","toolName":"getWeather"},
            {"type":"tool-input-delta","toolCallId":"Xy7kQ2","inputTextDelta":"{\"ci"},
            {"type":"tool-input-start","toolCallId":"call_b","toolName":"getWeather"},
            {"type":"tool-input-delta","toolCallId":"Xy7kQ2","inputTextDelta":"ty\":\"Paris\"}"},
            {"type":"tool-input-start","toolCallId":"call_c","toolName":"getWeather"},
            {"type":"tool-input-delta","toolCallId":"call_c","inputTextDelta":"{\"city\":"},
            {"type":"tool-input-start","toolCallId":"call_d","toolName":"launchRocket"},
            {"type":"tool-input-delta","toolCallId":"call_d","inputTextDelta":"{}"},
            {"type":"text-end","id":"p-1"},
            {"type":"tool-input-available","toolCallId":"Xy7kQ2","toolName":"getWeather","input":{"city":"Paris"}},
            {"type":"tool-input-available","toolCallId":"call_b","toolName":"getWeather","input":{}},
            {"type":"tool-input-error","toolCallId":"call_c","toolName":"getWeather","input":"{\"city\":",
             "errorText": outcome.tool_calls[2].error.clone().unwrap()},
            {"type":"tool-input-error","toolCallId":"call_d","toolName":"launchRocket","input":{},
             "errorText":"Model tried to call unavailable tool 'launchRocket'. Available tools: getWeather."},
            {"type":"finish-step"}
        ])
    );
    assert!(
        outcome.tool_calls[2]
            .error
            .as_deref()
            .unwrap()
            .starts_with("Invalid input for tool getWeather: JSON parsing failed")
    );
    assert_eq!(outcome.finish_reason, FinishReason::ToolCalls);
    let ids: Vec<_> = outcome.tool_calls.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["Xy7kQ2", "call_b", "call_c", "call_d"]);
    assert_eq!(outcome.usage.unwrap().prompt_tokens, 30);
    // The step as the next request's assistant message (§12.1): arguments are the input's JSON.
    let ChatMessage::Assistant {
        content,
        reasoning_content,
        tool_calls,
    } = outcome.assistant_message()
    else {
        panic!("an assistant message")
    };
    assert_eq!(content.as_deref(), Some("Checking."));
    assert_eq!(reasoning_content.as_deref(), Some("Need weather."));
    assert_eq!(tool_calls[0].function.arguments, r#"{"city":"Paris"}"#);
    assert_eq!(tool_calls[1].function.arguments, "{}");
    assert_eq!(tool_calls[2].function.arguments, r#"{"city":"#);
}

#[tokio::test]
async fn a_call_without_text_has_null_content_and_a_made_up_id_when_the_server_sends_none() {
    let model = ScriptedModel::start().await;
    model.push(Reply::Sse(vec![
        SseEvent::delta(json!({"content":"","tool_calls":[{"index":0,"function":{"name":"getWeather","arguments":"{\"city\":\"Oslo\"}"}}]})),
        SseEvent::finish("function_call"),
        SseEvent::Done,
    ]));
    let (chunks, outcome) = run(&client(&model), ask("weather?")).await;
    let id = outcome.tool_calls[0].id.clone();
    assert!(id.starts_with("call_p-"), "{id}");
    assert_eq!(chunks[1]["type"], "tool-input-start");
    assert_eq!(chunks[1]["toolCallId"], id.as_str());
    assert_eq!(outcome.finish_reason, FinishReason::ToolCalls);
    let ChatMessage::Assistant { content, .. } = outcome.assistant_message() else {
        panic!("an assistant message")
    };
    assert_eq!(content, None);
}

#[tokio::test]
async fn a_refusal_is_text_and_makes_stop_a_content_filter() {
    let model = ScriptedModel::start().await;
    model.push(Reply::Sse(vec![
        SseEvent::role(),
        SseEvent::refusal("I can't help"),
        SseEvent::refusal(" with that."),
        SseEvent::finish("stop"),
        SseEvent::Done,
    ]));
    let (chunks, outcome) = run(&client(&model), ask("bad?")).await;
    assert_eq!(
        chunks,
        json!([
            {"type":"start-step"},
            {"type":"text-start","id":"p-0"},
            {"type":"text-delta","id":"p-0","delta":"I can't help"},
            {"type":"text-delta","id":"p-0","delta":" with that."},
            {"type":"text-end","id":"p-0"},
            {"type":"finish-step"}
        ])
    );
    assert_eq!(outcome.finish_reason, FinishReason::ContentFilter);
}

#[tokio::test]
async fn finish_reasons_map_and_a_stream_without_one_is_an_error() {
    let model = ScriptedModel::start().await;
    let client = client(&model);
    for (wire, mapped) in [
        ("length", FinishReason::Length),
        ("content_filter", FinishReason::ContentFilter),
        ("eos_token", FinishReason::Other),
    ] {
        model.push(Reply::Sse(vec![
            SseEvent::text("x"),
            SseEvent::finish(wire),
            SseEvent::Done,
        ]));
        let (_, outcome) = run(&client, ask("q")).await;
        assert_eq!(outcome.finish_reason, mapped, "{wire}");
        assert_eq!(
            FinishReason::from_openai(wire, false).as_str(),
            serde_json::to_value(mapped).unwrap()
        );
    }

    // The stream ends (even with [DONE]) and no finish_reason came.
    model.push(Reply::Sse(vec![SseEvent::text("x"), SseEvent::Done]));
    let (chunks, outcome) = run(&client, ask("q")).await;
    assert_eq!(
        chunks,
        json!([
            {"type":"start-step"},
            {"type":"text-start","id":"p-0"},
            {"type":"text-delta","id":"p-0","delta":"x"},
            error_chunk()
        ])
    );
    assert_eq!(outcome.finish_reason, FinishReason::Error);
    assert!(matches!(outcome.error, Some(Error::NoFinishReason)));
    assert_eq!(outcome.text, "x");
}

#[tokio::test]
async fn a_bad_chunk_or_an_error_in_the_stream_ends_it_with_an_error() {
    let model = ScriptedModel::start().await;
    let client = client(&model);
    model.push(Reply::Sse(vec![
        SseEvent::text("x"),
        SseEvent::Raw("{not json".into()),
        SseEvent::finish("stop"),
        SseEvent::Done,
    ]));
    let (chunks, outcome) = run(&client, ask("q")).await;
    assert_eq!(chunks.as_array().unwrap().last().unwrap(), &error_chunk());
    assert!(
        matches!(outcome.error, Some(Error::BadChunk { .. })),
        "{:?}",
        outcome.error
    );

    model.push(Reply::Sse(vec![
        SseEvent::text("x"),
        SseEvent::Json(json!({"error":{"message":"the slot was evicted"}})),
    ]));
    let (chunks, outcome) = run(&client, ask("q")).await;
    assert_eq!(chunks.as_array().unwrap().last().unwrap(), &error_chunk());
    assert!(
        matches!(&outcome.error, Some(Error::Server { message }) if message == "the slot was evicted"),
        "{:?}",
        outcome.error
    );
}

#[tokio::test]
async fn throttled_and_failing_answers_are_retried_before_the_first_token() {
    let model = ScriptedModel::start().await;
    model.push(Reply::Status {
        status: 429,
        body: "rate limited".into(),
        retry_after: Some(0),
    });
    model.push(Reply::Status {
        status: 503,
        body: "loading model".into(),
        retry_after: None,
    });
    model.push(Reply::text(&["hi"]));
    let (chunks, outcome) = run(&client(&model), ask("q")).await;
    assert_eq!(
        chunks,
        json!([
            {"type":"start-step"},
            {"type":"text-start","id":"p-0"},
            {"type":"text-delta","id":"p-0","delta":"hi"},
            {"type":"text-end","id":"p-0"},
            {"type":"finish-step"}
        ])
    );
    assert_eq!(outcome.attempts, 3);
    let requests = model.requests();
    assert_eq!(requests.len(), 3);
    assert!(requests.iter().all(|r| r.body == requests[0].body));
}

#[tokio::test]
async fn retries_stop_at_the_policy_and_a_client_error_is_not_retried() {
    let model = ScriptedModel::start().await;
    let client = client(&model);
    for _ in 0..3 {
        model.push(Reply::Status {
            status: 500,
            body: "boom".into(),
            retry_after: None,
        });
    }
    model.push(Reply::text(&["never"]));
    let (chunks, outcome) = run(&client, ask("q")).await;
    assert_eq!(chunks, json!([{"type":"start-step"}, error_chunk()]));
    assert!(
        matches!(&outcome.error, Some(Error::Status { status: 500, body, .. }) if body == "boom"),
        "{:?}",
        outcome.error
    );
    assert_eq!((outcome.attempts, model.requests().len()), (3, 3));

    let model = ScriptedModel::start().await;
    model.push(Reply::Status {
        status: 400,
        body: "the request exceeds the available context size".into(),
        retry_after: None,
    });
    let (_, outcome) = run(&self::client(&model), ask("q")).await;
    let error = outcome.error.unwrap();
    assert!(matches!(error, Error::Status { status: 400, .. }));
    assert!(
        error
            .to_string()
            .contains("exceeds the available context size"),
        "{error}"
    );
    assert_eq!(model.requests().len(), 1);
}

#[tokio::test]
async fn a_stream_cut_before_the_first_token_is_retried_after_it_is_an_error() {
    let model = ScriptedModel::start().await;
    let client = client(&model);
    model.push(Reply::Sse(vec![SseEvent::role(), SseEvent::Cut]));
    model.push(Reply::text(&["fine"]));
    let (chunks, outcome) = run(&client, ask("q")).await;
    assert_eq!(chunks[2]["delta"], "fine");
    assert!(outcome.error.is_none(), "{:?}", outcome.error);
    assert_eq!(model.requests().len(), 2);

    model.push(Reply::Sse(vec![
        SseEvent::role(),
        SseEvent::text("Hal"),
        SseEvent::Cut,
    ]));
    model.push(Reply::text(&["not asked for"]));
    let (chunks, outcome) = run(&client, ask("q")).await;
    assert_eq!(
        chunks,
        json!([
            {"type":"start-step"},
            {"type":"text-start","id":"p-0"},
            {"type":"text-delta","id":"p-0","delta":"Hal"},
            error_chunk()
        ])
    );
    assert!(
        matches!(outcome.error, Some(Error::Stream(_))),
        "{:?}",
        outcome.error
    );
    assert_eq!(outcome.text, "Hal");
    assert_eq!(model.requests().len(), 3, "no retry after the first token");
    assert_eq!(model.remaining(), 1);
}

#[tokio::test]
async fn an_unreachable_server_is_retried_then_a_connect_error() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let config = ModelConfig::new(format!("http://127.0.0.1:{port}/v1/"), "m")
        .with_retry(RetryPolicy::constant(Duration::from_millis(5)).with_max_attempts(2));
    let client = ModelClient::new(config).unwrap();
    assert_eq!(
        client.url(),
        format!("http://127.0.0.1:{port}/v1/chat/completions")
    );
    let (chunks, outcome) = run(&client, ask("q")).await;
    assert_eq!(chunks, json!([{"type":"start-step"}, error_chunk()]));
    assert!(
        matches!(outcome.error, Some(Error::Connect { .. })),
        "{:?}",
        outcome.error
    );
    assert_eq!(outcome.attempts, 2);

    let bad = ModelClient::new(ModelConfig::new("ftp://example.com/v1", "m")).unwrap_err();
    assert!(matches!(bad, Error::Config(_)));
}

#[tokio::test]
async fn no_first_token_in_time_is_a_timeout_not_retried() {
    let model = ScriptedModel::start().await;
    let short = |model: &ScriptedModel| {
        ModelClient::new(config(model).with_timeouts(
            Duration::from_secs(5),
            Duration::from_millis(200),
            Duration::from_secs(30),
        ))
        .unwrap()
    };
    // No headers at all.
    model.push(Reply::Hang);
    let (chunks, outcome) = run(&short(&model), ask("q")).await;
    assert_eq!(chunks, json!([{"type":"start-step"}, error_chunk()]));
    assert!(
        matches!(outcome.error, Some(Error::FirstTokenTimeout(_))),
        "{:?}",
        outcome.error
    );
    // Headers and a role chunk, then nothing (keep-alive comments only).
    model.push(Reply::Sse(vec![SseEvent::role(), SseEvent::Hang]));
    let (chunks, outcome) = run(&short(&model), ask("q")).await;
    assert_eq!(chunks, json!([{"type":"start-step"}, error_chunk()]));
    assert!(
        matches!(outcome.error, Some(Error::FirstTokenTimeout(_))),
        "{:?}",
        outcome.error
    );
    assert_eq!(model.requests().len(), 2, "a timeout is not retried");
}

#[tokio::test]
async fn a_call_longer_than_the_request_timeout_ends_with_an_error() {
    let model = ScriptedModel::start().await;
    let client = ModelClient::new(config(&model).with_timeouts(
        Duration::from_secs(5),
        Duration::from_secs(5),
        Duration::from_millis(1500),
    ))
    .unwrap();
    model.push(Reply::Sse(vec![SseEvent::text("slow"), SseEvent::Hang]));
    let (chunks, outcome) = run(&client, ask("q")).await;
    assert_eq!(chunks.as_array().unwrap().last().unwrap(), &error_chunk());
    assert_eq!(chunks[2]["delta"], "slow");
    assert!(
        matches!(outcome.error, Some(Error::RequestTimeout(_))),
        "{:?}",
        outcome.error
    );
}

#[tokio::test]
async fn dropping_the_step_closes_the_connection() {
    let model = ScriptedModel::start().await;
    model.push(Reply::Sse(vec![SseEvent::text("endless"), SseEvent::Hang]));
    let step = client(&model).step(ask("q"));
    // A chat agent runs steps in tasks of their own.
    fn send<T: Send + 'static>(t: T) -> T {
        t
    }
    let mut step = send(step);
    assert_eq!(
        step.next().await.unwrap(),
        denizen_agents::chat::chunk::Chunk::StartStep
    );
    let mut seen = Vec::new();
    while let Some(chunk) = step.next().await {
        let delta = matches!(chunk, denizen_agents::chat::chunk::Chunk::TextDelta { .. });
        seen.push(chunk);
        if delta {
            break;
        }
    }
    assert_eq!(seen.len(), 2);
    assert_eq!(model.streams_dropped(), 0);
    drop(step);
    eventually(
        "the server to see the client go",
        Duration::from_secs(10),
        || model.streams_dropped() == 1,
    )
    .await;
}

#[tokio::test]
async fn part_ids_differ_between_steps_by_default() {
    let model = ScriptedModel::start().await;
    let client = client(&model);
    let mut ids = Vec::new();
    for _ in 0..2 {
        model.push(Reply::text(&["a"]));
        let mut request = ask("q");
        request.part_id_prefix = None;
        let (chunks, _) = run(&client, request).await;
        ids.push(chunks[1]["id"].as_str().unwrap().to_owned());
    }
    assert_ne!(ids[0], ids[1]);
}

/// The real llama.cpp server (`agents/tests/peers/install-llm.sh`), when installed: a streamed
/// reply maps to a well-formed step with usage. Skipped, with a notice, when it is not installed
/// (unless `DENIZEN_REQUIRE_LLM=1`).
#[tokio::test]
async fn a_real_llama_cpp_server_streams_a_step() {
    let Some(llama) = LlamaServer::start().await else {
        return;
    };
    let mut config = ModelConfig::new(llama.base_url(), "smollm2");
    config.temperature = Some(0.0);
    config.max_tokens = Some(24);
    let client = ModelClient::new(config).unwrap();
    let request = StepRequest::new(
        vec![ChatMessage::User {
            content: UserContent::Text("What is the capital of France?".into()),
        }],
        Vec::new(),
    );
    let (chunks, outcome) = run(&client, request).await;
    let chunks = chunks.as_array().unwrap();
    assert!(outcome.error.is_none(), "{:?}", outcome.error);
    assert_eq!(chunks.first().unwrap()["type"], "start-step");
    assert_eq!(chunks[1]["type"], "text-start");
    assert_eq!(chunks[chunks.len() - 2]["type"], "text-end");
    assert_eq!(chunks.last().unwrap()["type"], "finish-step");
    assert!(matches!(
        outcome.finish_reason,
        FinishReason::Stop | FinishReason::Length
    ));
    assert!(!outcome.text.is_empty());
    let usage = outcome.usage.unwrap();
    assert!(usage.prompt_tokens > 0 && usage.completion_tokens > 0);
    assert!(outcome.time_to_first_token.is_some());
}
