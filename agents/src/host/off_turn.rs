//! Work off the turn: futures started by a handler that run outside the agent's mailbox, whose
//! results come back as events of the agent ([`AgentContext::spawn_then`], and the late replies
//! of [`Methods::callable_off_turn`](crate::Methods::callable_off_turn)), and HTTP answers
//! given after such work ([`AgentContext::answer_later`](crate::AgentContext::answer_later) and
//! the MCP OAuth callback, through the runtime's `respond_later`).

use std::future::Future;
use std::panic::AssertUnwindSafe;

use denizen_runtime::http::StatusCode;
use denizen_runtime::{Ctx, Error, Handler, Message, Response, Result, WebSocket, http_util};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use serde_json::Value;
use tracing::Instrument;

use super::{AgentHost, panic_message};
use crate::agent::{Agent, Context};
use crate::context::{take_server_change, tracking_state};
use crate::protocol;

/// What runs on the agent when off-turn work finished: the work's output is captured in it.
type Then<A> = Box<
    dyn for<'a> FnOnce(&'a mut AgentHost<A>, &'a mut Context<A>) -> BoxFuture<'a, Result<()>>
        + Send,
>;

/// The event that brings the result of off-turn work back to the agent.
pub(crate) struct Landed<A: Agent> {
    then: Then<A>,
}

impl<A: Agent> Message for Landed<A> {
    type Reply = ();
}

impl<A: Agent> Landed<A> {
    /// An event that runs `f` on the agent, handled as the result of off-turn work is (its
    /// failure rolled back and logged). The chat agent's model task sends one per chunk.
    pub(crate) fn on_agent<F>(f: F) -> Self
    where
        F: for<'a> FnOnce(&'a mut A, &'a mut Context<A>) -> BoxFuture<'a, Result<()>>
            + Send
            + 'static,
    {
        Landed {
            then: then_box(move |host: &mut AgentHost<A>, cx: &mut Context<A>| {
                f(&mut host.agent, cx)
            }),
        }
    }
}

fn then_box<A: Agent, F>(f: F) -> Then<A>
where
    F: for<'a> FnOnce(&'a mut AgentHost<A>, &'a mut Context<A>) -> BoxFuture<'a, Result<()>>
        + Send
        + 'static,
{
    Box::new(f)
}

/// Runs `fut` to its end, a panic becoming an error, in the span that started it.
async fn settled<T>(fut: impl Future<Output = Result<T>>) -> Result<T> {
    match AssertUnwindSafe(fut).catch_unwind().await {
        Ok(out) => out,
        Err(panic) => {
            let message = panic_message(panic);
            tracing::error!(%message, "work started off the turn panicked");
            Err(Error::msg(format!(
                "work started off the turn panicked: {message}"
            )))
        }
    }
}

/// `then` on the agent once the MCP servers the off-turn work changed are saved (and listed to
/// the clients): the agent acts on the work's result with its servers as the work left them.
fn after_mcp_saved<'a, A: Agent, R: Send + 'a>(
    host: &'a mut AgentHost<A>,
    cx: &'a mut Context<A>,
    then: impl FnOnce(&'a mut A, &'a mut Context<A>) -> BoxFuture<'a, Result<R>>,
) -> BoxFuture<'a, Result<R>> {
    if let Err(e) = host.mcp_changed(cx) {
        return Box::pin(std::future::ready(Err(e)));
    }
    then(&mut host.agent, cx)
}

/// Starts `fut` off the turn (after the current event commits); `then` gets its output (a panic
/// as an error) in an event of the agent.
pub(crate) fn spawn_then<A, T, F, H>(cx: &mut Context<A>, fut: F, then: H)
where
    A: Agent,
    T: Send + 'static,
    F: Future<Output = Result<T>> + Send + 'static,
    H: for<'a> FnOnce(&'a mut A, &'a mut Context<A>, Result<T>) -> BoxFuture<'a, Result<()>>
        + Send
        + 'static,
{
    let span = tracing::Span::current();
    cx.spawn(
        async move {
            let out = settled(fut).await;
            Landed {
                then: then_box(move |host: &mut AgentHost<A>, cx: &mut Context<A>| {
                    after_mcp_saved(host, cx, move |agent, cx| then(agent, cx, out))
                }),
            }
        }
        .instrument(span),
    );
}

/// Starts the off-turn part of an RPC call; its result is sent to the caller as the call's reply
/// when it lands.
pub(crate) fn reply_later<A: Agent>(
    cx: &mut Context<A>,
    ws: WebSocket,
    id: String,
    fut: BoxFuture<'static, Result<Value>>,
) {
    let span = tracing::Span::current();
    cx.spawn(
        async move {
            let out = settled(fut).await;
            Landed {
                then: then_box(move |host: &mut AgentHost<A>, cx: &mut Context<A>| {
                    Box::pin(async move {
                        // The servers the call changed (an MCP server added, and the PKCE
                        // verifier of its authorization) are saved before the reply leaves.
                        let out = match host.mcp_changed(cx) {
                            Ok(()) => out,
                            Err(e) => {
                                cx.rollback()?;
                                Err(e)
                            }
                        };
                        let frame = match out {
                            Ok(result) => protocol::rpc_result(&id, Some(result), true),
                            Err(e) => {
                                tracing::debug!(error = %e, "callable failed off the turn");
                                protocol::rpc_error(&id, &e.to_string())
                            }
                        };
                        cx.send(ws, frame.to_string());
                        Ok(())
                    })
                }),
            }
        }
        .instrument(span),
    );
}

impl<A: Agent> Handler<Landed<A>> for AgentHost<A> {
    /// A failing handler has its writes rolled back and is logged; the agent goes on (the
    /// instance is not reset, so other off-turn work it started still lands).
    async fn handle(&mut self, cx: &mut Ctx<Self>, landed: Landed<A>) -> Result<()> {
        tracking_state(async {
            let outcome = match super::guarded((landed.then)(self, cx)).await {
                Ok(()) => self.settle_state(cx).await,
                Err(e) => Err(e),
            };
            if let Err(e) = outcome {
                tracing::warn!(error = %e, "handling the result of off-turn work failed; its writes are rolled back");
                cx.rollback()?;
                take_server_change();
            }
            Ok(())
        })
        .await
    }
}

/// What makes the answer to a waiting HTTP request once off-turn work finished: the work's
/// output is captured in it.
type MakeAnswer<A> = Box<
    dyn for<'a> FnOnce(&'a mut AgentHost<A>, &'a mut Context<A>) -> BoxFuture<'a, Result<Response>>
        + Send,
>;

/// The event that turns the result of off-turn work into the answer to a waiting HTTP request.
pub(crate) struct Answered<A: Agent> {
    make: MakeAnswer<A>,
}

impl<A: Agent> Message for Answered<A> {
    type Reply = Response;
}

fn make_box<A: Agent, F>(f: F) -> MakeAnswer<A>
where
    F: for<'a> FnOnce(&'a mut AgentHost<A>, &'a mut Context<A>) -> BoxFuture<'a, Result<Response>>
        + Send
        + 'static,
{
    Box::new(f)
}

/// Answers the HTTP request of the current `fetch` with what `fut` gives, once it finished off
/// the turn and the MCP servers it changed are saved. Return the placeholder it gives from
/// `fetch`.
pub(crate) fn respond_later<A: Agent>(
    cx: &mut Context<A>,
    fut: BoxFuture<'static, Result<Response>>,
) -> Response {
    let span = tracing::Span::current();
    cx.respond_later(
        async move {
            let out = settled(fut).await;
            Answered {
                make: make_box(move |_: &mut AgentHost<A>, _: &mut Context<A>| {
                    Box::pin(std::future::ready(out))
                }),
            }
        }
        .instrument(span),
    )
}

/// Starts `fut` off the turn (after the current event commits); `then` gets its output (a panic
/// as an error) in an event of the agent, and the response it makes answers the HTTP request of
/// the current `fetch`. Return the placeholder it gives from `on_request`.
pub(crate) fn answer_later<A, T, F, H>(cx: &mut Context<A>, fut: F, then: H) -> Response
where
    A: Agent,
    T: Send + 'static,
    F: Future<Output = Result<T>> + Send + 'static,
    H: for<'a> FnOnce(&'a mut A, &'a mut Context<A>, Result<T>) -> BoxFuture<'a, Result<Response>>
        + Send
        + 'static,
{
    let span = tracing::Span::current();
    cx.respond_later(
        async move {
            let out = settled(fut).await;
            Answered {
                make: make_box(move |host: &mut AgentHost<A>, cx: &mut Context<A>| {
                    after_mcp_saved(host, cx, move |agent, cx| then(agent, cx, out))
                }),
            }
        }
        .instrument(span),
    )
}

impl<A: Agent> Handler<Answered<A>> for AgentHost<A> {
    /// The answer is made like any event of the agent: state changes validated and broadcast,
    /// MCP servers saved, writes committed before it leaves. A failure (of the work, of making
    /// the answer, or of saving what they changed) is rolled back and answered with a 500; the
    /// agent goes on, not reset, like a failing [`Landed`].
    async fn handle(&mut self, cx: &mut Ctx<Self>, answered: Answered<A>) -> Result<Response> {
        tracking_state(async {
            let outcome = match super::guarded((answered.make)(self, cx)).await {
                Ok(resp) => match self.mcp_changed(cx) {
                    Ok(()) => self.settle_state(cx).await.map(|()| resp),
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            match outcome {
                Ok(resp) => Ok(resp),
                Err(e) => {
                    tracing::warn!(error = %e, "answering a request after off-turn work failed; its writes are rolled back");
                    cx.rollback()?;
                    take_server_change();
                    Ok(http_util::text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        &format!("{e}\n"),
                    ))
                }
            }
        })
        .await
    }
}
