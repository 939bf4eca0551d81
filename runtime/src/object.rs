use std::future::Future;

use bytes::Bytes;

use crate::ctx::Ctx;
use crate::error::Result;
use crate::socket::{Frame, WebSocket};

/// An HTTP request delivered to an object's `fetch`.
pub type Request = http::Request<Bytes>;
/// What `fetch` answers.
pub type Response = http::Response<Bytes>;

/// What an alarm handler is told about the delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AlarmInfo {
    /// How many times this alarm already failed (0 on the first delivery).
    pub retry_count: u32,
    /// `retry_count > 0`.
    pub is_retry: bool,
}

/// A durable object: one instance per id, fed one event at a time.
///
/// Every handler gets `&mut self` and the object's [`Ctx`]. Writes made through `ctx.storage()`
/// during a handler are committed when it returns `Ok`, before its reply (or any WebSocket send it
/// made) leaves the object; an `Err` or a panic rolls them back and resets the instance.
///
/// The instance is rebuilt (by the factory given at registration, then [`on_start`]) on the first
/// event after every activation: after hibernation, after a reset, after a restart. Keep durable
/// state in storage and treat fields as a cache.
///
/// [`on_start`]: DurableObject::on_start
pub trait DurableObject: Send + Sized + 'static {
    /// The tables and indexes every object of this type has, as SQL statements that can run
    /// again (`CREATE TABLE IF NOT EXISTS …`). A new object's database is created with them in
    /// place, so its first event runs no schema statement; an object last started with another
    /// `SCHEMA` runs this one when it next starts, in a transaction of its own. Statements that
    /// need more than that (moving data) belong in [`on_start`]. Empty (the default): no tables.
    ///
    /// [`on_start`]: DurableObject::on_start
    const SCHEMA: &'static str = "";

    /// Runs before the first event of every activation, with no other event delivered until it
    /// finishes. Data migrations go here. Failing resets the object and fails the waiting event.
    fn on_start(&mut self, ctx: &mut Ctx<Self>) -> impl Future<Output = Result<()>> + Send {
        let _ = ctx;
        async { Ok(()) }
    }

    /// An HTTP request (also the place to accept a WebSocket with `ctx.accept_websocket`).
    fn fetch(
        &mut self,
        ctx: &mut Ctx<Self>,
        req: Request,
    ) -> impl Future<Output = Result<Response>> + Send {
        let _ = (ctx, req);
        async {
            Ok(http::Response::builder()
                .status(http::StatusCode::NOT_IMPLEMENTED)
                .body(Bytes::from_static(
                    b"this object does not handle HTTP requests\n",
                ))
                .unwrap_or_default())
        }
    }

    /// A message on one of the object's hibernatable WebSockets.
    fn websocket_message(
        &mut self,
        ctx: &mut Ctx<Self>,
        ws: WebSocket,
        frame: Frame,
    ) -> impl Future<Output = Result<()>> + Send {
        let _ = (ctx, ws, frame);
        async { Ok(()) }
    }

    /// The peer closed the socket (or the gateway found it dead: code 1006).
    fn websocket_close(
        &mut self,
        ctx: &mut Ctx<Self>,
        ws: WebSocket,
        code: u16,
        reason: String,
        was_clean: bool,
    ) -> impl Future<Output = Result<()>> + Send {
        let _ = (ctx, ws, code, reason, was_clean);
        async { Ok(()) }
    }

    /// A transport error on the socket (it is closed afterwards).
    fn websocket_error(
        &mut self,
        ctx: &mut Ctx<Self>,
        ws: WebSocket,
        error: String,
    ) -> impl Future<Output = Result<()>> + Send {
        let _ = (ctx, ws, error);
        async { Ok(()) }
    }

    /// The object's alarm is due. An `Err` (or panic) retries it with exponential backoff.
    fn alarm(
        &mut self,
        ctx: &mut Ctx<Self>,
        info: AlarmInfo,
    ) -> impl Future<Output = Result<()>> + Send {
        let _ = (ctx, info);
        async { Ok(()) }
    }
}

/// A typed RPC message: sent with [`Stub::call`](crate::Stub::call), handled by
/// [`Handler<M>`] on the object, answered with `Reply`.
pub trait Message: Send + 'static {
    /// What the handler answers.
    type Reply: Send + 'static;
}

/// Handles one RPC message type. An object implements it once per message it accepts; results of
/// [`Ctx::spawn`] come back through it too.
pub trait Handler<M: Message>: DurableObject {
    /// Handles one message, as one event of the object: its writes commit when it returns `Ok`
    /// (the reply leaves after that); an `Err` or a panic rolls them back, resets the instance
    /// and reaches the caller.
    fn handle(
        &mut self,
        ctx: &mut Ctx<Self>,
        msg: M,
    ) -> impl Future<Output = Result<M::Reply>> + Send;
}
