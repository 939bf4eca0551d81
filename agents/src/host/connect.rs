//! The WebSocket handshake and clients' state changes.

use denizen_runtime::{Error, Request, Response, Result, http_util};
use serde_json::Value;

use super::{AgentHost, state_text};
use crate::agent::{Agent, Connect, ConnectInfo, Connection, Context, Source};
use crate::context::{ConnMeta, broadcast_state, meta, store_state};
use crate::protocol;
use crate::schedule::new_id;

/// Longest accepted connection id (`?_pk=`), in bytes.
pub const MAX_CONNECTION_ID: usize = 256;

impl<A: Agent> AgentHost<A> {
    pub(super) async fn connect(&mut self, cx: &mut Context<A>, req: Request) -> Result<Response> {
        let mut pk = None;
        let mut query = Vec::new();
        for (k, v) in form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
            if k == "_pk" && pk.is_none() {
                pk = Some(v.into_owned());
            } else {
                query.push((k.into_owned(), v.into_owned()));
            }
        }
        let id = pk.filter(|p| !p.is_empty()).unwrap_or_else(new_id);
        if id.len() > MAX_CONNECTION_ID {
            let ws = cx.accept_websocket(&req, &[])?;
            cx.close(
                ws,
                1008,
                &format!("the connection id (_pk) is limited to {MAX_CONNECTION_ID} bytes"),
            );
            return Ok(http_util::switching_protocols());
        }
        let info = ConnectInfo {
            uri: req.uri().clone(),
            headers: req.headers().clone(),
            query,
        };
        let ws = cx.accept_websocket(&req, &[])?;
        // Set first, so on_connect may already give the connection a state of its own; without
        // the protocol flag until the handshake, so broadcasts made in on_connect skip it (it
        // gets the current state in its handshake instead).
        let conn_meta = ConnMeta {
            id,
            readonly: false,
            protocol: false,
            state: None,
            refused: false,
        };
        cx.set_attachment(ws, &conn_meta)?;
        let conn = Connection {
            protocol: true,
            ..conn_meta.connection(ws)
        };
        let decision = self.agent.on_connect(cx, &conn, &info).await?;
        let mut conn_meta = meta(cx, ws).unwrap_or(conn_meta);
        conn_meta.protocol = true;
        match decision {
            Connect::Reject(reason) => {
                tracing::debug!(connection = %conn.id, %reason, "connection rejected");
                conn_meta.refused = true;
                cx.set_attachment(ws, &conn_meta)?;
                cx.close(ws, 4001, &reason);
                return Ok(http_util::switching_protocols());
            }
            Connect::ReadOnly => conn_meta.readonly = true,
            Connect::Raw => conn_meta.protocol = false,
            Connect::Accept => {}
        }
        cx.set_attachment(ws, &conn_meta)?;
        if conn_meta.protocol {
            let name = cx.id().name().unwrap_or_default().to_string();
            let agent = cx.namespace().to_string();
            let state: Value = match state_text(cx)? {
                Some(text) => serde_json::from_str(&text).map_err(|e| Error::msg(e.to_string()))?,
                None => Value::Null,
            };
            crate::chat::agent::on_connect(&mut self.agent, cx, &conn_meta.connection(ws))?;
            cx.send(ws, protocol::identity(&name, &agent, true).to_string());
            cx.send(ws, protocol::state(&state).to_string());
            let servers = self.mcp_servers();
            cx.send(ws, protocol::mcp_servers(servers).to_string());
        }
        Ok(http_util::switching_protocols())
    }

    pub(super) async fn client_state(
        &mut self,
        cx: &mut Context<A>,
        conn: Connection,
        state: Value,
    ) -> Result<()> {
        if conn.readonly {
            cx.send(
                conn.ws,
                protocol::state_error("Connection is readonly").to_string(),
            );
            return Ok(());
        }
        let typed: A::State = match serde_json::from_value(state.clone()) {
            Ok(s) => s,
            Err(e) => {
                tracing::info!(connection = %conn.id, error = %e, "state update rejected: does not match the agent's state type");
                cx.send(
                    conn.ws,
                    protocol::state_error("State update rejected").to_string(),
                );
                return Ok(());
            }
        };
        let source = Source::Client(conn.clone());
        if let Err(e) = self.agent.validate_state_change(&typed, &source) {
            tracing::info!(connection = %conn.id, error = %e, "state update rejected by validate_state_change");
            cx.send(
                conn.ws,
                protocol::state_error("State update rejected").to_string(),
            );
            return Ok(());
        }
        // What the typed state holds, not what the client sent: fields it does not know are
        // neither kept nor broadcast.
        let stored = serde_json::to_value(&typed).map_err(crate::Error::from)?;
        match store_state(cx, &stored) {
            Ok(()) => {}
            Err(crate::Error::StateTooLarge { size, max }) => {
                tracing::info!(connection = %conn.id, size, "state update rejected: over MAX_STATE_BYTES");
                cx.send(
                    conn.ws,
                    protocol::state_error(&format!(
                        "State update rejected: {size} bytes of state, the limit is {max}"
                    ))
                    .to_string(),
                );
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        }
        // The sender already holds what it sent, unless the typed state dropped some of it.
        let except = (stored == state).then_some(conn.ws);
        broadcast_state(cx, &stored, except);
        self.agent.on_state_changed(cx, &typed, &source).await
    }
}
