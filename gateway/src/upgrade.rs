//! WebSocket upgrades: the object accepts the socket, the gateway holds it.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::ws::WebSocketUpgrade;
use axum::response::Response;
use denizen_runtime::Upgrade;
use http::{StatusCode, header};
use tracing::Instrument;

use crate::forward::{error_response, text};
use crate::{Inner, socket};

/// Offers the socket to the object; on acceptance answers 101 and spawns the socket's task.
pub(crate) async fn upgrade_socket(
    inner: Arc<Inner>,
    ws: WebSocketUpgrade,
    mut object_req: denizen_runtime::Request,
    namespace: &str,
    name: &str,
) -> Response {
    let (offer, outgoing) = Upgrade::with_backlog_limit(inner.options.max_send_backlog);
    object_req.extensions_mut().insert(offer.clone());
    let resp = match inner.runtime.fetch(namespace, name, object_req).await {
        Ok(resp) => resp,
        Err(e) => return error_response(&e),
    };
    let accepted = offer.accepted();
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        // The object refused the socket (or accepted it and changed its mind): plain HTTP.
        if let Some(handle) = accepted {
            handle.forget();
        }
        let (p, b) = resp.into_parts();
        return Response::from_parts(p, Body::from(b));
    }
    let Some(handle) = accepted else {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the object answered 101 without accepting the socket (call ctx.accept_websocket)",
        );
    };
    tracing::debug!(socket = handle.id(), "websocket accepted");
    let (object_parts, _) = resp.into_parts();
    let mut ws = ws;
    // The object picks the subprotocol by answering with the header, as in Durable Objects.
    if let Some(p) = object_parts
        .headers
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
    {
        ws = ws.protocols([p.to_owned()]);
    }
    let task = socket::SocketTask {
        handle: handle.clone(),
        outgoing,
        backlog: offer.backlog(),
        heartbeat: inner.options.heartbeat_interval,
        close_timeout: inner.options.close_timeout,
        shutdown: inner.shutdown.subscribe(),
        metrics: inner.metrics.clone(),
    };
    let max = inner.options.max_message_size.max(1);
    let mut resp = ws
        .max_message_size(max)
        .max_frame_size(max)
        // Small, fixed buffers: an idle socket must cost a few KiB, not tungstenite's default
        // 128 KiB. Writes go straight to the socket (each send is flushed anyway).
        .read_buffer_size(inner.options.socket_read_buffer.max(1))
        .write_buffer_size(0)
        .on_failed_upgrade(move |e| {
            tracing::warn!(error = %e, "websocket upgrade failed after the object accepted it");
            if handle
                .closed(socket::code::ABNORMAL, "upgrade failed".into(), false)
                .is_err()
            {
                handle.forget();
            }
        })
        .on_upgrade(move |socket| task.run(socket).in_current_span());
    // Headers the object set on its 101 (cookies, say) go out with the handshake.
    for (k, v) in &object_parts.headers {
        if !resp.headers().contains_key(k) && !is_handshake_header(k) {
            resp.headers_mut().append(k.clone(), v.clone());
        }
    }
    resp
}

fn is_handshake_header(name: &header::HeaderName) -> bool {
    [
        header::CONNECTION,
        header::UPGRADE,
        header::SEC_WEBSOCKET_ACCEPT,
        header::SEC_WEBSOCKET_PROTOCOL,
        header::SEC_WEBSOCKET_EXTENSIONS,
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
    ]
    .contains(name)
}
