//! The `Agent` trait: what an application implements.

use std::future::Future;

use denizen_runtime::http::{HeaderMap, StatusCode, Uri};
use denizen_runtime::{Ctx, Frame, Request, Response, Result, WebSocket, http_util};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::host::AgentHost;
use crate::mcp::McpClient;
use crate::methods::Methods;
use crate::protocol;

/// What an agent's handlers work with: the runtime's [`Ctx`] of the object hosting the agent.
/// The agent operations (state, connections, schedules, queue, work off the turn) come from
/// [`AgentContext`](crate::AgentContext); storage and sockets from `Ctx` itself.
pub type Context<A> = Ctx<AgentHost<A>>;

/// One client connection, as handlers see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connection {
    /// The runtime's handle of the socket.
    pub ws: WebSocket,
    /// The client's connection id: `?_pk=` of the upgrade request, stable across the
    /// reconnects of one JS client object.
    pub id: String,
    /// State changes from this connection are refused.
    pub readonly: bool,
    /// The connection gets the agent protocol frames (identity, state, broadcasts).
    pub protocol: bool,
}

/// The upgrade request, as `on_connect` sees it.
#[derive(Clone, Debug)]
pub struct ConnectInfo {
    /// The request's URI, as the client sent it.
    pub uri: Uri,
    /// The request's headers.
    pub headers: HeaderMap,
    /// Query parameters other than `_pk`, in order (the JS client's `query` option).
    pub query: Vec<(String, String)>,
}

impl ConnectInfo {
    /// The first value of a query parameter.
    pub fn param(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// `on_connect`'s decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Connect {
    /// A normal connection.
    Accept,
    /// The connection gets state and may call methods, but its state changes are refused
    /// (`cf_agent_state_error` "Connection is readonly"), and so are callables that change the
    /// state when called from it.
    ReadOnly,
    /// A raw client: no protocol frames at all (no identity, state, broadcasts); every frame goes
    /// to `on_message`.
    Raw,
    /// Refused: the socket is closed with code 4001 and this reason, which the JS client treats as
    /// final (it stops reconnecting).
    Reject(String),
}

/// Where a state change came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// The agent's own code (`set_state`).
    Server,
    /// A client's `cf_agent_state` frame on this connection.
    Client(Connection),
}

/// An agent: a durable object with synced state, callable methods, schedules and a queue, spoken
/// to with the Agents SDK wire protocol. Register it with
/// [`AgentBuilder::agent`](crate::AgentBuilder::agent); the object hosting it is an
/// [`AgentHost`].
///
/// Handlers run one at a time, like every durable object's; their writes (state included)
/// commit together when they return, before anything they sent leaves. A handler that awaits
/// the network holds the agent meanwhile: start slow work with
/// [`spawn_then`](crate::AgentContext::spawn_then) or declare the method with
/// [`callable_off_turn`](crate::Methods::callable_off_turn) instead.
///
/// The agents layer owns the object's alarm (schedules and the queue share it): use
/// `cx.schedule(..)` rather than `cx.set_alarm(..)`.
pub trait Agent: Send + Sized + 'static {
    /// The synced state: any JSON value, replaced as a whole by `set_state`.
    type State: Serialize + DeserializeOwned + Send + 'static;

    /// The state of a new agent (persisted the first time the agent starts).
    fn initial_state(&self) -> Self::State;

    /// Declares the callable methods, streaming methods and tasks (schedule and queue targets),
    /// one line each.
    fn methods(methods: &mut Methods<Self>) {
        let _ = methods;
    }

    /// The agent's MCP client (`denizen_mcp::AgentMcp`, kept in a field), if it uses MCP servers.
    /// The agents layer then restores its servers on every activation before `on_start`, sends
    /// them in `cf_agent_mcp_servers` on connect and whenever they change, persists their
    /// credentials, and answers the OAuth callback before `on_request`:
    /// `fn mcp(&mut self) -> Option<&mut dyn McpClient> { Some(&mut self.mcp) }`.
    fn mcp(&mut self) -> Option<&mut dyn McpClient> {
        None
    }

    /// The agent's chat ([`Chat`](crate::chat::agent::Chat), kept in a field), if it speaks the
    /// `useAgentChat` protocol. The agents layer then hands it the chat frames of its protocol
    /// connections before `on_message`, and `GET …/get-messages` before `on_request`:
    /// `fn chat(&mut self) -> Option<&mut Chat<Self>> { Some(&mut self.chat) }`.
    fn chat(&mut self) -> Option<&mut crate::chat::agent::Chat<Self>> {
        None
    }

    /// Runs on every activation after the agent's tables are ready, before any other event.
    /// Idempotent schedules (`schedule_every`, cron) are safe to (re)declare here.
    fn on_start(&mut self, cx: &mut Context<Self>) -> impl Future<Output = Result<()>> + Send {
        let _ = cx;
        async { Ok(()) }
    }

    /// A plain HTTP request to `/agents/<class>/<name>[/...]` (the URI as the client sent it).
    fn on_request(
        &mut self,
        cx: &mut Context<Self>,
        req: Request,
    ) -> impl Future<Output = Result<Response>> + Send {
        let _ = (cx, req);
        async {
            Ok(http_util::text(
                StatusCode::NOT_FOUND,
                "this agent does not handle HTTP requests; connect a WebSocket to call its methods\n",
            ))
        }
    }

    /// A client is connecting: decide whether (and how) to accept it. Runs before the protocol
    /// frames are sent, so a rejected client sees only the close (code 4001).
    fn on_connect(
        &mut self,
        cx: &mut Context<Self>,
        conn: &Connection,
        info: &ConnectInfo,
    ) -> impl Future<Output = Result<Connect>> + Send {
        let _ = (cx, conn, info);
        async { Ok(Connect::Accept) }
    }

    /// A frame that is not part of the protocol (not `rpc`, not `cf_agent_state`), or any frame
    /// of a raw connection. By default it is answered with a `cf_agent_error` frame saying what
    /// was wrong with it; the connection stays open.
    fn on_message(
        &mut self,
        cx: &mut Context<Self>,
        conn: &Connection,
        frame: Frame,
    ) -> impl Future<Output = Result<()>> + Send {
        let reply = protocol::unhandled_frame_error(&frame);
        cx.send(conn.ws, reply);
        async { Ok(()) }
    }

    /// The connection closed (by the client, or found dead: code 1006).
    fn on_close(
        &mut self,
        cx: &mut Context<Self>,
        conn: &Connection,
        code: u16,
        reason: &str,
        was_clean: bool,
    ) -> impl Future<Output = Result<()>> + Send {
        let _ = (cx, conn, code, reason, was_clean);
        async { Ok(()) }
    }

    /// The state is about to become `next`. From a client: an `Err` refuses it, and the client
    /// gets `cf_agent_state_error` "State update rejected" (the reason is logged on the server
    /// only). From the server (`set_state`, source [`Source::Server`]): it runs when the handler
    /// that called `set_state` returns, with the last state it set, and an `Err` fails that
    /// handler (its writes and frames are discarded; an RPC caller gets the error).
    fn validate_state_change(&mut self, next: &Self::State, source: &Source) -> Result<()> {
        let _ = (next, source);
        Ok(())
    }

    /// The state changed: a client's change was persisted and broadcast to the other
    /// connections, or a handler that called `set_state` returned and its change was validated
    /// (source [`Source::Server`]). An `Err` fails the event, the change included. A
    /// `set_state` made here is validated but does not call this hook again.
    fn on_state_changed(
        &mut self,
        cx: &mut Context<Self>,
        state: &Self::State,
        source: &Source,
    ) -> impl Future<Output = Result<()>> + Send {
        let _ = (cx, state, source);
        async { Ok(()) }
    }
}
