//! Requests to a server: tool calls, prompts, resources, with `input_required` rounds,
//! progress, cancellation, timeouts, and a refused token handed to a step-up.

use std::time::Duration;

use rmcp::{
    RoleClient,
    model::{
        CallToolRequest, CallToolRequestParams, CallToolResult, CancelledNotification,
        CancelledNotificationParam, ClientRequest, ElicitResult, ElicitationAction,
        GetPromptRequest, GetPromptRequestParams, GetPromptResult, InputRequest, InputResponses,
        JsonObject, ReadResourceRequest, ReadResourceRequestParams, ReadResourceResult,
        ServerResult,
    },
    service::{Peer, PeerRequestOptions, ServiceError},
};
use tracing::{debug, warn};

use super::{CallOptions, McpClientManager, Server, ServerState, lock};
use crate::{
    Error, Result,
    client::{self, ProgressRoutes},
};

/// `input_required` rounds of one request before it fails.
const MAX_INPUT_ROUNDS: usize = 8;

impl McpClientManager {
    /// Calls a tool by namespaced name. A tool that fails returns `Ok` with `is_error: Some(true)`
    /// — that result is for the model; `Err` means the call itself did not happen or complete.
    pub async fn call_tool(
        &self,
        namespaced: &str,
        arguments: serde_json::Value,
        options: CallOptions,
    ) -> Result<CallToolResult> {
        let (id, tool) = self.resolve_tool(namespaced)?;
        self.call_server_tool(&id, &tool, arguments, options).await
    }

    /// Calls a tool of one server by its own name.
    pub async fn call_server_tool(
        &self,
        id: &str,
        tool: &str,
        arguments: serde_json::Value,
        options: CallOptions,
    ) -> Result<CallToolResult> {
        let mut params = CallToolRequestParams::new(tool.to_owned());
        match arguments {
            serde_json::Value::Null => {}
            serde_json::Value::Object(map) => params = params.with_arguments(map as JsonObject),
            other => {
                return Err(Error::Protocol {
                    server: id.to_owned(),
                    code: -32602,
                    message: format!("tool arguments must be a JSON object, not {other}"),
                });
            }
        }
        let build = |responses: Option<InputResponses>, state: Option<String>| {
            let mut params = params.clone();
            if let Some(r) = responses {
                params = params.with_input_responses(r);
            }
            if let Some(s) = state {
                params = params.with_request_state(s);
            }
            ClientRequest::CallToolRequest(CallToolRequest::new(params))
        };
        match self.request_with_input(id, build, options).await? {
            ServerResult::CallToolResult(r) => Ok(r),
            other => Err(unexpected(id, &other)),
        }
    }

    /// `prompts/get`.
    pub async fn get_prompt(
        &self,
        id: &str,
        name: &str,
        arguments: Option<JsonObject>,
        options: CallOptions,
    ) -> Result<GetPromptResult> {
        let mut params = GetPromptRequestParams::new(name.to_owned());
        if let Some(args) = arguments {
            params = params.with_arguments(args);
        }
        let build = |responses: Option<InputResponses>, state: Option<String>| {
            let mut params = params.clone();
            if let Some(r) = responses {
                params = params.with_input_responses(r);
            }
            if let Some(s) = state {
                params = params.with_request_state(s);
            }
            ClientRequest::GetPromptRequest(GetPromptRequest::new(params))
        };
        match self.request_with_input(id, build, options).await? {
            ServerResult::GetPromptResult(r) => Ok(r),
            other => Err(unexpected(id, &other)),
        }
    }

    /// `resources/read`.
    pub async fn read_resource(
        &self,
        id: &str,
        uri: &str,
        options: CallOptions,
    ) -> Result<ReadResourceResult> {
        let build = |responses: Option<InputResponses>, state: Option<String>| {
            let mut params = ReadResourceRequestParams::new(uri.to_owned());
            if let Some(r) = responses {
                params = params.with_input_responses(r);
            }
            if let Some(s) = state {
                params = params.with_request_state(s);
            }
            ClientRequest::ReadResourceRequest(ReadResourceRequest::new(params))
        };
        match self.request_with_input(id, build, options).await? {
            ServerResult::ReadResourceResult(r) => Ok(r),
            other => Err(unexpected(id, &other)),
        }
    }

    /// A request that the server may answer with `input_required` (2026-07-28 multi-round-trip
    /// requests): the inputs are gathered (elicitations through the application's handler) and
    /// the request is sent again, with a new id, the responses and the server's state.
    async fn request_with_input(
        &self,
        id: &str,
        build: impl Fn(Option<InputResponses>, Option<String>) -> ClientRequest,
        options: CallOptions,
    ) -> Result<ServerResult> {
        let (mut responses, mut state) = (None, None);
        for _ in 0..MAX_INPUT_ROUNDS {
            let round = CallOptions {
                timeout: options.timeout,
                progress: options.progress.clone(),
                cancel: options.cancel.clone(),
            };
            match self
                .request(id, build(responses.take(), state.take()), round)
                .await?
            {
                ServerResult::InputRequiredResult(needed) => {
                    let asked = needed.input_requests.unwrap_or_default();
                    if asked.is_empty() && needed.request_state.is_none() {
                        return Err(Error::Protocol {
                            server: id.to_owned(),
                            code: -32603,
                            message: "input_required result with neither requests nor state".into(),
                        });
                    }
                    let mut answers = InputResponses::new();
                    for (key, request) in asked {
                        answers.insert(key, self.answer(id, request).await?);
                    }
                    responses = (!answers.is_empty()).then_some(answers);
                    state = needed.request_state;
                }
                done => return Ok(done),
            }
        }
        Err(Error::Protocol {
            server: id.to_owned(),
            code: -32603,
            message: format!("the server still wanted input after {MAX_INPUT_ROUNDS} rounds"),
        })
    }

    /// One input the server asked for in an `input_required` result.
    async fn answer(&self, id: &str, request: InputRequest) -> Result<serde_json::Value> {
        let result = match request {
            InputRequest::Elicitation(elicit) => {
                let answer = match &self.inner.options.elicitation {
                    Some(handler) => handler.elicit(id, elicit.params).await,
                    None => ElicitResult::new(ElicitationAction::Decline),
                };
                serde_json::to_value(answer)
            }
            // The client declares no roots.
            InputRequest::ListRoots(_) => Ok(serde_json::json!({ "roots": [] })),
            // Sampling, and kinds newer than this client.
            other => {
                return Err(Error::Protocol {
                    server: id.to_owned(),
                    code: -32601,
                    message: format!(
                        "the server asked for input this client does not offer: {other:?}"
                    ),
                });
            }
        };
        result.map_err(|e| Error::Protocol {
            server: id.to_owned(),
            code: -32603,
            message: format!("could not encode an input response: {e}"),
        })
    }

    /// Sends a request. A refusal of the token (403 `insufficient_scope`, or a 401 the token
    /// refresh did not cure) is an authorization event, not a lost connection: the manager
    /// re-authorizes with the union of the granted and the challenged scopes, waits (within the
    /// request's timeout) for the callback, and sends the request once more.
    async fn request(
        &self,
        id: &str,
        request: ClientRequest,
        options: CallOptions,
    ) -> Result<ServerResult> {
        let server = self.get(id)?;
        let timeout = options
            .timeout
            .unwrap_or(self.inner.options.request_timeout);
        let deadline = tokio::time::Instant::now() + timeout;
        let challenge = match self
            .send(&server, id, request.clone(), &options, timeout)
            .await
        {
            Sent::Answer(answer) => return *answer,
            Sent::Refused(challenge) => challenge,
        };
        self.step_up(&server, id, &challenge, deadline).await?;
        match self.send(&server, id, request, &options, timeout).await {
            Sent::Answer(answer) => *answer,
            Sent::Refused(challenge) => Err(Error::Authorization {
                server: id.to_owned(),
                message: format!(
                    "the server still refuses the token after re-authorization ({challenge})"
                ),
            }),
        }
    }

    /// One request on the current connection.
    async fn send(
        &self,
        server: &Server,
        id: &str,
        request: ClientRequest,
        options: &CallOptions,
        timeout: Duration,
    ) -> Sent {
        let (peer, routes) = {
            let live = lock(&server.live);
            match (&live.peer, live.state) {
                (Some(peer), ServerState::Ready) => (peer.clone(), live.progress.clone()),
                _ => {
                    return Sent::Answer(Box::new(Err(Error::NotReady {
                        id: id.to_owned(),
                        state: match &live.error {
                            Some(e) => format!("{}: {e}", live.state),
                            None => live.state.to_string(),
                        },
                    })));
                }
            }
        };
        let handle = match peer
            .send_cancellable_request(request, PeerRequestOptions::no_options())
            .await
        {
            Ok(handle) => handle,
            Err(e) => return self.failed(server, id, &e),
        };
        let request_id = handle.id.clone();
        let token = handle.progress_token.clone();
        if let (Some(tx), Some(routes)) = (options.progress.clone(), &routes) {
            ProgressRoutes::register(routes, token.clone(), tx);
        }
        let cancel = options.cancel.clone().unwrap_or_default();
        let outcome = tokio::select! {
            r = tokio::time::timeout(timeout, handle.await_response()) => r.ok(),
            _ = cancel.cancelled() => {
                send_cancel(&peer, request_id.clone(), "cancelled by the caller").await;
                if let Some(routes) = &routes {
                    ProgressRoutes::unregister(routes, &token);
                }
                return Sent::Answer(Box::new(Err(Error::Cancelled { server: id.to_owned() })));
            }
        };
        if let Some(routes) = &routes {
            ProgressRoutes::unregister(routes, &token);
        }
        Sent::Answer(Box::new(match outcome {
            None => {
                send_cancel(&peer, request_id, "timed out").await;
                Err(Error::Timeout {
                    server: id.to_owned(),
                    seconds: timeout.as_secs_f64(),
                })
            }
            Some(Ok(r)) => {
                server
                    .step_ups
                    .store(0, std::sync::atomic::Ordering::SeqCst);
                Ok(r)
            }
            Some(Err(ServiceError::McpError(e))) => Err(Error::Protocol {
                server: id.to_owned(),
                code: e.code.0,
                message: e.message.to_string(),
            }),
            Some(Err(ServiceError::Timeout { timeout })) => Err(Error::Timeout {
                server: id.to_owned(),
                seconds: timeout.as_secs_f64(),
            }),
            Some(Err(e)) => return self.failed(server, id, &e),
        }))
    }

    /// A request failed below JSON-RPC. A refused token is for [`Self::step_up`]; anything else
    /// makes the connection suspect, so it is dialled again.
    fn failed(&self, server: &Server, id: &str, e: &ServiceError) -> Sent {
        if let Some(challenge) = e.auth_challenge() {
            return Sent::Refused(challenge.to_owned());
        }
        warn!(server = %id, error = %client::error_chain(e), "MCP request lost its connection; reconnecting");
        server.redial.notify_one();
        Sent::Answer(Box::new(Err(Error::ConnectionLost {
            server: id.to_owned(),
            message: client::error_chain(e),
        })))
    }
}

/// How one attempt at a request ended.
enum Sent {
    /// An answer, or an error that is final for this request (boxed: results are large).
    Answer(Box<Result<ServerResult>>),
    /// The server refused the token with this `WWW-Authenticate` challenge.
    Refused(String),
}

fn unexpected(id: &str, result: &ServerResult) -> Error {
    Error::Protocol {
        server: id.to_owned(),
        code: -32603,
        message: format!("unexpected result type {result:?}"),
    }
}

async fn send_cancel(peer: &Peer<RoleClient>, id: rmcp::model::RequestId, reason: &str) {
    let note = CancelledNotification::new(CancelledNotificationParam::new(
        Some(id),
        Some(reason.to_owned()),
    ));
    if let Err(e) = peer.send_notification(note.into()).await {
        debug!(error = %e, "could not send notifications/cancelled");
    }
}
