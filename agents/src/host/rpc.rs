//! Callable methods: `rpc` frames from clients, and [`Call`] from the server side.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use denizen_runtime::{Ctx, Error, Handler, Message, Result};
use futures_util::future::BoxFuture;
use serde_json::Value;
use tracing::Instrument;

use super::{AgentHost, guarded, off_turn, state_text};
use crate::agent::{Agent, Connection, Context};
use crate::context::{take_server_change, tracking_state};
use crate::methods::{Callable, StreamingResponse};
use crate::protocol;

/// How a callable answers.
enum Reply {
    /// Its result, sent now.
    Now(Value),
    /// Already sent (a stream's last frame).
    Sent,
    /// Its off-turn part, whose output is sent when it finishes.
    Later(BoxFuture<'static, Result<Value>>),
}

impl<A: Agent> AgentHost<A> {
    pub(super) async fn rpc(
        &mut self,
        cx: &mut Context<A>,
        conn: Connection,
        id: String,
        method: String,
        args: Vec<Value>,
    ) -> Result<()> {
        let methods = self.methods.clone();
        let Some(callable) = methods.callables.get(&method) else {
            let message = if methods.tasks.contains_key(&method) {
                format!("Method {} is not callable", protocol::echo(&method))
            } else {
                format!("Method {} does not exist", protocol::echo(&method))
            };
            cx.send(conn.ws, protocol::rpc_error(&id, &message).to_string());
            return Ok(());
        };
        // Everything before the call is committed, so a failing call rolls back only itself.
        cx.commit().await?;
        let before = if conn.readonly { state_text(cx)? } else { None };
        let span =
            tracing::debug_span!("rpc", method = %protocol::echo(&method), connection = %conn.id);
        let outcome: Result<Reply> = async {
            match callable {
                Callable::Plain(f) => guarded(f(&mut self.agent, cx, args)).await.map(Reply::Now),
                Callable::FromConnection(f) => guarded(f(&mut self.agent, cx, conn.clone(), args))
                    .await
                    .map(Reply::Now),
                Callable::OffTurn(f) => guarded(async { f(&mut self.agent, cx, args) })
                    .await
                    .map(Reply::Later),
                Callable::Streaming(f) => {
                    let closed = Arc::new(AtomicBool::new(false));
                    let stream = StreamingResponse {
                        ws: conn.ws,
                        id: id.clone(),
                        closed: closed.clone(),
                    };
                    let r = guarded(f(&mut self.agent, cx, stream, args)).await;
                    match r {
                        // Ended by the method (its last frame is in the outbox), or ended now.
                        Ok(()) if closed.load(Ordering::Relaxed) => Ok(Reply::Sent),
                        Ok(()) => {
                            cx.send(conn.ws, protocol::rpc_result(&id, None, true).to_string());
                            Ok(Reply::Sent)
                        }
                        Err(e) => Err(e),
                    }
                }
            }
        }
        .instrument(span.clone())
        .await;
        // A read-only connection may call methods, but not ones that change the state.
        let outcome = match outcome {
            Ok(_) if conn.readonly && state_text(cx)? != before => {
                Err(Error::msg("Connection is readonly"))
            }
            Ok(result) => self.settle_state(cx).await.map(|()| result),
            other => other,
        };
        match outcome {
            Ok(Reply::Now(result)) => {
                cx.send(
                    conn.ws,
                    protocol::rpc_result(&id, Some(result), true).to_string(),
                );
            }
            Ok(Reply::Sent) => {}
            Ok(Reply::Later(fut)) => {
                span.in_scope(|| off_turn::reply_later(cx, conn.ws, id, fut));
            }
            Err(e) => {
                tracing::debug!(error = %e, "callable failed; its writes are rolled back");
                cx.rollback()?;
                take_server_change();
                cx.send(
                    conn.ws,
                    protocol::rpc_error(&id, &e.to_string()).to_string(),
                );
            }
        }
        Ok(())
    }
}

/// Calls a plain callable method from the server side (another object, a route, a test):
/// `stub.call(Call::new("increment", json!([5])))`. The method's result, or its error, comes
/// back as the call's result; state changes it makes are broadcast as usual.
#[derive(Debug)]
pub struct Call {
    /// The callable's name.
    pub method: String,
    /// Its arguments, in order.
    pub args: Vec<Value>,
}

impl Call {
    /// `args` must be a JSON array (anything else is passed as the only argument).
    pub fn new(method: &str, args: Value) -> Self {
        let args = match args {
            Value::Array(a) => a,
            other => vec![other],
        };
        Call {
            method: method.to_string(),
            args,
        }
    }
}

impl Message for Call {
    type Reply = Value;
}

impl<A: Agent> Handler<Call> for AgentHost<A> {
    async fn handle(&mut self, cx: &mut Ctx<Self>, call: Call) -> Result<Value> {
        let methods = self.methods.clone();
        match methods.callables.get(&call.method) {
            Some(Callable::Plain(f)) => {
                tracking_state(async {
                    let result = f(&mut self.agent, cx, call.args).await?;
                    self.settle_state(cx).await?;
                    Ok(result)
                })
                .await
            }
            Some(Callable::OffTurn(f)) => {
                let fut = tracking_state(async {
                    let fut = f(&mut self.agent, cx, call.args)?;
                    self.settle_state(cx).await?;
                    Ok::<_, Error>(fut)
                })
                .await?;
                // A server-side caller waits for the reply in this event; what the call wrote
                // before is committed first, as it would be before the work starts.
                cx.commit().await?;
                let reply = guarded(fut).await?;
                // Saved before the reply leaves, as for a client's call.
                self.mcp_changed(cx)?;
                Ok(reply)
            }
            Some(Callable::FromConnection(_)) => Err(Error::msg(format!(
                "Method {} needs the calling connection; call it over a WebSocket",
                call.method
            ))),
            Some(Callable::Streaming(_)) => Err(Error::msg(format!(
                "Method {} streams its result; call it over a WebSocket",
                call.method
            ))),
            None => Err(Error::msg(format!("Method {} does not exist", call.method))),
        }
    }
}
