//! The off-turn part of a chat turn: the approved calls of a continuation, the model calls and
//! the tool loop (chat-protocol.md §9, §12.3), each chunk handed to the agent as an event.

use std::panic::AssertUnwindSafe;

use denizen_runtime::Stub;
use futures_util::{FutureExt, StreamExt};
use serde_json::Value;

use super::Tool;
use super::continuation::Approved;
use super::turn::on_chunk;
use crate::agent::{Agent, Context};
use crate::chat::chunk::Chunk;
use crate::chat::model::{DEFAULT_ERROR_TEXT, FinishReason, ModelClient, StepRequest};
use crate::chat::wire::{ChatMessage, ToolSpec};
use crate::host::{AgentHost, Landed};

/// How the off-turn part of a turn ended.
pub(super) enum End {
    Completed,
    Aborted,
    Error(String),
}

pub(super) fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".to_string())
}

/// Delivers one chunk of turn `serial` to the agent; `false` if the agent is gone.
async fn emit<A: Agent>(stub: &Stub<AgentHost<A>>, serial: u64, chunk: Chunk) -> bool {
    let event = Landed::on_agent(move |a: &mut A, cx: &mut Context<A>| {
        Box::pin(on_chunk(a, cx, serial, chunk))
    });
    match stub.call(event).await {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(error = %e, "the chat agent is gone; the turn stops");
            false
        }
    }
}

/// What the off-turn part of a turn runs.
pub(super) struct Model {
    pub(super) client: ModelClient,
    pub(super) messages: Vec<ChatMessage>,
    pub(super) specs: Vec<ToolSpec>,
    pub(super) tools: Vec<Tool>,
    pub(super) max_steps: usize,
    /// Approved calls to run first (a continuation's).
    pub(super) approved: Vec<Approved>,
    /// For its metrics.
    pub(super) runtime: denizen_runtime::Runtime,
}

/// Runs a server tool, a panic included: its output chunk and the result the model gets.
async fn run_tool(tool: &Tool, tool_call_id: &str, input: Value) -> (Chunk, String) {
    let ran = AssertUnwindSafe(tool.call(input))
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| {
            let text = format!("the tool panicked: {}", panic_text(&*panic));
            tracing::error!(tool = %tool.name(), "{text}");
            Err(text)
        });
    match ran {
        Ok(output) => {
            let content = match &output {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let chunk = Chunk::ToolOutputAvailable {
                tool_call_id: tool_call_id.to_owned(),
                output,
                preliminary: None,
            };
            (chunk, content)
        }
        Err(text) => {
            let chunk = Chunk::ToolOutputError {
                tool_call_id: tool_call_id.to_owned(),
                error_text: text.clone(),
            };
            (chunk, text)
        }
    }
}

/// The off-turn part of a turn: the approved calls of a continuation, then the model calls and
/// the tool loop (chat-protocol.md §9, §12.3).
pub(super) async fn run_model<A: Agent>(
    stub: Stub<AgentHost<A>>,
    serial: u64,
    model: Model,
) -> End {
    let Model {
        client,
        mut messages,
        specs,
        tools,
        max_steps,
        approved,
        runtime,
    } = model;
    let metrics = runtime.metrics();
    if !emit(
        &stub,
        serial,
        Chunk::Start {
            message_id: None,
            message_metadata: None,
        },
    )
    .await
    {
        return End::Aborted;
    }
    for call in approved {
        let (chunk, content) = run_tool(&call.tool, &call.tool_call_id, call.input).await;
        if !emit(&stub, serial, chunk).await {
            return End::Aborted;
        }
        for message in &mut messages {
            if let ChatMessage::Tool {
                tool_call_id,
                content: slot,
            } = message
                && *tool_call_id == call.tool_call_id
            {
                *slot = content.clone();
            }
        }
    }
    let mut finish = FinishReason::Stop;
    for _ in 0..max_steps.max(1) {
        let mut step = client.step(StepRequest::new(messages.clone(), specs.clone()));
        let mut error_text = None;
        // `finish-step` waits for the step's tool results, which belong to the step.
        let mut finish_step = None;
        while let Some(chunk) = step.next().await {
            match chunk {
                Chunk::Error { error_text: text } => error_text = Some(text),
                Chunk::FinishStep => finish_step = Some(Chunk::FinishStep),
                chunk => {
                    if !emit(&stub, serial, chunk).await {
                        return End::Aborted;
                    }
                }
            }
        }
        let Some(outcome) = step.into_outcome() else {
            metrics.chat_model_errors.inc();
            return End::Error(error_text.unwrap_or_else(|| DEFAULT_ERROR_TEXT.into()));
        };
        if let Some(usage) = &outcome.usage {
            metrics.chat_prompt_tokens.inc_by(usage.prompt_tokens);
            metrics
                .chat_completion_tokens
                .inc_by(usage.completion_tokens);
        }
        if let Some(ttft) = outcome.time_to_first_token {
            metrics.chat_first_token.observe(ttft);
        }
        if let Some(e) = &outcome.error {
            metrics.chat_model_errors.inc();
            tracing::warn!(error = %e, "the model call failed");
            return End::Error(error_text.unwrap_or_else(|| DEFAULT_ERROR_TEXT.into()));
        }
        finish = outcome.finish_reason;
        if outcome.tool_calls.is_empty()
            || !matches!(finish, FinishReason::Stop | FinishReason::ToolCalls)
        {
            if let Some(chunk) = finish_step
                && !emit(&stub, serial, chunk).await
            {
                return End::Aborted;
            }
            break;
        }
        let mut results = Vec::new();
        let mut all_answered = true;
        for call in &outcome.tool_calls {
            let content = if let Some(error) = &call.error {
                error.clone()
            } else if let Some(tool) = tools.iter().find(|t| t.name() == call.name) {
                if tool.requires_approval() {
                    // A person answers first; the call runs in the continuation after.
                    all_answered = false;
                    let chunk = Chunk::ToolApprovalRequest {
                        approval_id: approval_id(),
                        tool_call_id: call.id.clone(),
                    };
                    if !emit(&stub, serial, chunk).await {
                        return End::Aborted;
                    }
                    continue;
                }
                let (chunk, content) = run_tool(tool, &call.id, call.input.clone()).await;
                if !emit(&stub, serial, chunk).await {
                    return End::Aborted;
                }
                content
            } else {
                // A client tool: the client runs it once the turn has ended.
                all_answered = false;
                continue;
            };
            results.push(ChatMessage::Tool {
                tool_call_id: call.id.clone(),
                content,
            });
        }
        if let Some(chunk) = finish_step
            && !emit(&stub, serial, chunk).await
        {
            return End::Aborted;
        }
        if !all_answered {
            break;
        }
        messages.push(outcome.assistant_message());
        messages.extend(results);
    }
    let finished = emit(
        &stub,
        serial,
        Chunk::Finish {
            finish_reason: Some(finish.as_str().to_string()),
            message_metadata: None,
        },
    )
    .await;
    if finished {
        End::Completed
    } else {
        End::Aborted
    }
}

fn approval_id() -> String {
    format!("approval_{}", crate::chat::random_id(16))
}
