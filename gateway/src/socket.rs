//! One task per WebSocket: it outlives the object's instance, so the object can hibernate while
//! the connection stays open.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use denizen_runtime::{Frame, Outgoing, SocketHandle};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::metrics::Metrics;

pub(crate) struct SocketTask {
    pub(crate) handle: SocketHandle,
    pub(crate) outgoing: mpsc::UnboundedReceiver<Outgoing>,
    pub(crate) heartbeat: Option<Duration>,
    pub(crate) shutdown: watch::Receiver<bool>,
    pub(crate) metrics: Arc<Metrics>,
}

/// Close codes (RFC 6455 §7.4.1).
mod code {
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const NO_STATUS: u16 = 1005;
    pub const ABNORMAL: u16 = 1006;
    pub const INVALID_DATA: u16 = 1007;
    pub const TOO_BIG: u16 = 1009;
    pub const INTERNAL_ERROR: u16 = 1011;
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// How the connection ended, for the object's `websocket_close`.
struct End {
    code: u16,
    reason: String,
    clean: bool,
    /// A close frame we still owe the peer.
    send: Option<(u16, String)>,
}

impl End {
    fn ours(code: u16, reason: impl Into<String>) -> Self {
        let reason = reason.into();
        End {
            code,
            reason: reason.clone(),
            clean: false,
            send: Some((code, reason)),
        }
    }
}

/// Maps a read error to the close code the peer deserves.
fn read_error(e: axum::Error) -> End {
    let inner = e.into_inner();
    match inner.downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::Capacity(c)) => End::ours(code::TOO_BIG, c.to_string()),
        Some(tungstenite::Error::Protocol(p)) => End::ours(code::PROTOCOL_ERROR, p.to_string()),
        Some(tungstenite::Error::Utf8(_)) => {
            End::ours(code::INVALID_DATA, "invalid UTF-8 in a text frame")
        }
        _ => End {
            code: code::ABNORMAL,
            reason: inner.to_string(),
            clean: false,
            send: None,
        },
    }
}

impl SocketTask {
    pub(crate) async fn run(mut self, mut socket: WebSocket) {
        self.metrics.websocket_connections.fetch_add(1, Relaxed);
        let end = self.pump(&mut socket).await;
        if let Some((code, reason)) = end.send {
            // Best effort: the peer may already be gone.
            let frame = CloseFrame {
                code,
                reason: truncate(&reason).into(),
            };
            let _ = socket.send(Message::Close(Some(frame))).await;
        }
        self.metrics.websocket_connections.fetch_sub(1, Relaxed);
        if let Err(e) = self.handle.closed(end.code, end.reason, end.clean) {
            // The object cannot be told (the runtime is stopping): drop the socket from its list.
            tracing::debug!(socket = self.handle.id(), error = %e, "close not delivered");
            self.handle.forget();
        }
    }

    async fn pump(&mut self, socket: &mut WebSocket) -> End {
        let beat = self.heartbeat.unwrap_or(Duration::from_secs(3600));
        let mut ticker = tokio::time::interval_at(Instant::now() + beat, beat);
        let mut last_seen = Instant::now();
        if *self.shutdown.borrow() {
            return End::ours(code::GOING_AWAY, "server shutting down");
        }
        loop {
            tokio::select! {
                incoming = socket.recv() => {
                    last_seen = Instant::now();
                    let frame = match incoming {
                        Some(Ok(Message::Text(t))) => Frame::Text(t.as_str().to_string()),
                        Some(Ok(Message::Binary(b))) => Frame::Binary(b),
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                        Some(Ok(Message::Close(frame))) => {
                            let (code, reason) = frame
                                .map(|f| (f.code, f.reason.as_str().to_string()))
                                .unwrap_or((code::NO_STATUS, String::new()));
                            return End { code, reason, clean: true, send: None };
                        }
                        Some(Err(e)) => return read_error(e),
                        None => {
                            return End {
                                code: code::ABNORMAL,
                                reason: "connection lost".into(),
                                clean: false,
                                send: None,
                            };
                        }
                    };
                    match self.handle.message(frame) {
                        Ok(_) => {}
                        Err(e) if e.is_overloaded() => {
                            return End::ours(code::TRY_AGAIN_LATER, "the object is overloaded; reconnect later");
                        }
                        Err(e) if e.is_retryable() => {
                            return End::ours(code::GOING_AWAY, e.to_string());
                        }
                        Err(e) => return End::ours(code::INTERNAL_ERROR, e.to_string()),
                    }
                }
                out = self.outgoing.recv() => {
                    let msg = match out {
                        Some(Outgoing::Frame(Frame::Text(t))) => Message::Text(t.into()),
                        Some(Outgoing::Frame(Frame::Binary(b))) => Message::Binary(b),
                        Some(Outgoing::Close { code, reason }) => {
                            let mut end = End::ours(code, reason);
                            end.clean = true;
                            return end;
                        }
                        // The object forgot the socket (it failed while accepting it).
                        None => return End::ours(code::INTERNAL_ERROR, "the object dropped this socket"),
                    };
                    if let Err(e) = socket.send(msg).await {
                        return End { code: code::ABNORMAL, reason: e.to_string(), clean: false, send: None };
                    }
                }
                _ = ticker.tick(), if self.heartbeat.is_some() => {
                    if last_seen.elapsed() > beat * 2 {
                        return End {
                            code: code::ABNORMAL,
                            reason: "heartbeat timeout: the peer stopped answering pings".into(),
                            clean: false,
                            send: None,
                        };
                    }
                    if socket.send(Message::Ping(bytes::Bytes::from_static(b"denizen"))).await.is_err() {
                        return End { code: code::ABNORMAL, reason: "connection lost".into(), clean: false, send: None };
                    }
                }
                _ = self.shutdown.changed() => {
                    return End::ours(code::GOING_AWAY, "server shutting down");
                }
            }
        }
    }
}

/// Close reasons are limited to 123 bytes by the protocol.
fn truncate(reason: &str) -> String {
    if reason.len() <= 123 {
        return reason.to_string();
    }
    let mut end = 123;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_string()
}
