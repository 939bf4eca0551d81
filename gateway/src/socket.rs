//! One task per WebSocket: it outlives the object's instance, so the object can hibernate while
//! the connection stays open.
//!
//! The task is a single `select!` over the peer, the object's outgoing queue, the heartbeat and
//! the shutdown signal — no second task, no per-socket buffers beyond tungstenite's own (sized
//! small in `lib.rs`), so an idle socket costs a few KiB.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use bytes::Bytes;
use denizen_runtime::{Backlog, Frame, Outgoing, Refused, SocketHandle};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::metrics::Metrics;

pub(crate) struct SocketTask {
    pub(crate) handle: SocketHandle,
    pub(crate) outgoing: mpsc::UnboundedReceiver<Outgoing>,
    /// What `outgoing` holds, in bytes; overflowed when the peer stopped reading.
    pub(crate) backlog: Arc<Backlog>,
    pub(crate) heartbeat: Option<Duration>,
    pub(crate) close_timeout: Duration,
    pub(crate) shutdown: watch::Receiver<bool>,
    pub(crate) metrics: Arc<Metrics>,
}

/// Close codes (RFC 6455 §7.4.1).
pub(crate) mod code {
    pub(crate) const NORMAL: u16 = 1000;
    pub(crate) const GOING_AWAY: u16 = 1001;
    pub(crate) const PROTOCOL_ERROR: u16 = 1002;
    pub(crate) const NO_STATUS: u16 = 1005;
    pub(crate) const ABNORMAL: u16 = 1006;
    pub(crate) const INVALID_DATA: u16 = 1007;
    pub(crate) const POLICY_VIOLATION: u16 = 1008;
    pub(crate) const TOO_BIG: u16 = 1009;
    pub(crate) const INTERNAL_ERROR: u16 = 1011;
}

/// How the connection ended, for the object's `websocket_close`.
struct End {
    code: u16,
    reason: String,
    clean: bool,
    /// The handshake still to do on the wire.
    wire: Wire,
}

enum Wire {
    /// The peer closed first: tungstenite queued the echo of its close frame; one more read
    /// flushes it.
    EchoPeerClose,
    /// We close: send this frame, then wait (bounded) for the peer's answer.
    SendClose(u16, String),
    /// The connection is already gone.
    Nothing,
}

impl End {
    /// We close the socket with `code`; the object hears the same code, not clean.
    fn ours(code: u16, reason: impl Into<String>) -> Self {
        let reason = reason.into();
        End {
            code,
            wire: Wire::SendClose(code, reason.clone()),
            reason,
            clean: false,
        }
    }

    fn lost(reason: impl Into<String>) -> Self {
        End {
            code: code::ABNORMAL,
            reason: reason.into(),
            clean: false,
            wire: Wire::Nothing,
        }
    }
}

/// Maps a read error to the close code the peer deserves.
fn read_error(e: axum::Error) -> End {
    let inner = e.into_inner();
    match inner.downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::Capacity(c)) => End::ours(code::TOO_BIG, c.to_string()),
        Some(tungstenite::Error::Protocol(p)) => match p {
            // The peer vanished: nobody to send a close frame to.
            tungstenite::error::ProtocolError::ResetWithoutClosingHandshake => {
                End::lost("the peer closed the connection without a close frame")
            }
            _ => End::ours(code::PROTOCOL_ERROR, p.to_string()),
        },
        Some(tungstenite::Error::Utf8(_)) => {
            End::ours(code::INVALID_DATA, "invalid UTF-8 in a text frame")
        }
        _ => End::lost(inner.to_string()),
    }
}

impl SocketTask {
    pub(crate) async fn run(mut self, mut socket: WebSocket) {
        self.metrics.socket_opened();
        tracing::debug!(socket = self.handle.id(), "websocket open");
        let end = self.pump(&mut socket).await;
        match end.wire {
            Wire::EchoPeerClose => self.drain(&mut socket).await,
            Wire::SendClose(code, ref reason) => {
                let frame = CloseFrame {
                    code: sendable(code),
                    reason: truncate(reason).into(),
                };
                // Best effort: the peer may already be gone, or not reading (then the write
                // would wait for ever).
                let sent = tokio::time::timeout(
                    self.close_timeout,
                    socket.send(Message::Close(Some(frame))),
                )
                .await;
                if matches!(sent, Ok(Ok(()))) {
                    self.drain(&mut socket).await;
                }
            }
            Wire::Nothing => {}
        }
        drop(socket);
        self.metrics.socket_closed();
        tracing::debug!(socket = self.handle.id(), code = end.code, reason = %end.reason, clean = end.clean, "websocket closed");
        if let Err(e) = self.handle.closed(end.code, end.reason, end.clean) {
            // The object cannot be told (overloaded, or the runtime is stopping): drop the socket
            // from its registry so it is never listed as open again.
            tracing::debug!(socket = self.handle.id(), error = %e, "close not delivered to the object");
            self.handle.forget();
        }
    }

    fn overflowed(&self) -> End {
        tracing::warn!(
            socket = self.handle.id(),
            "closing socket: the client is not reading its messages"
        );
        self.metrics.backlog_overflows.inc();
        End::ours(
            code::POLICY_VIOLATION,
            "messages went unread past the send backlog limit",
        )
    }

    /// Reads until the peer's side of the close handshake is done (or `close_timeout`), which
    /// also flushes the close echo tungstenite queued.
    async fn drain(&self, socket: &mut WebSocket) {
        let _ = tokio::time::timeout(self.close_timeout, async {
            while let Some(Ok(_)) = socket.recv().await {}
        })
        .await;
    }

    /// Hands a frame to the object. One it cannot take yet (this socket's quota, or the object's
    /// mailbox, is full) goes into `waiting`; any other failure ends the socket.
    fn offer(
        &self,
        frame: Frame,
        waiting: &mut Option<Frame>,
        full_mailbox_retries: &mut u32,
    ) -> Result<(), End> {
        match self.handle.message(frame) {
            Ok(_) => {
                *full_mailbox_retries = 0;
                Ok(())
            }
            Err(Refused { error, frame }) if error.is_overloaded() => {
                if matches!(error, denizen_runtime::Error::Overloaded { .. }) {
                    *full_mailbox_retries = full_mailbox_retries.saturating_add(1);
                    tracing::debug!(
                        socket = self.handle.id(),
                        "object's mailbox full; waiting before reading more from this socket"
                    );
                }
                *waiting = Some(frame);
                Ok(())
            }
            Err(Refused { error, .. }) if error.is_retryable() => {
                Err(End::ours(code::GOING_AWAY, error.to_string()))
            }
            Err(Refused { error, .. }) => {
                tracing::warn!(socket = self.handle.id(), error = %error, "closing socket: message not delivered");
                Err(End::ours(code::INTERNAL_ERROR, error.to_string()))
            }
        }
    }

    async fn pump(&mut self, socket: &mut WebSocket) -> End {
        if *self.shutdown.borrow() {
            return End::ours(code::GOING_AWAY, "server shutting down");
        }
        // A zero interval would make tokio's interval panic; treat it as "no heartbeat".
        let heartbeat = self.heartbeat.filter(|d| !d.is_zero());
        let beat = heartbeat.unwrap_or(Duration::from_secs(3600));
        let mut ticker = tokio::time::interval_at(Instant::now() + beat, beat);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_seen = Instant::now();
        // A message the object could not take yet: nothing more is read from this peer until it
        // is delivered (backpressure on this connection only; everyone else goes on).
        let mut waiting: Option<Frame> = None;
        let mut full_mailbox_retries = 0u32;
        loop {
            tokio::select! {
                incoming = socket.recv(), if waiting.is_none() => {
                    last_seen = Instant::now();
                    let frame = match incoming {
                        Some(Ok(Message::Text(t))) => Frame::Text(t.as_str().to_owned()),
                        Some(Ok(Message::Binary(b))) => Frame::Binary(b),
                        // tungstenite queued the pong; the next recv() flushes it. The object
                        // is never woken for pings.
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                        Some(Ok(Message::Close(frame))) => {
                            let (code, reason) = frame
                                .map(|f| (f.code, f.reason.as_str().to_owned()))
                                .unwrap_or((code::NO_STATUS, String::new()));
                            return End { code, reason, clean: true, wire: Wire::EchoPeerClose };
                        }
                        Some(Err(e)) => return read_error(e),
                        None => return End::lost("connection lost"),
                    };
                    if let Err(end) = self.offer(frame, &mut waiting, &mut full_mailbox_retries) {
                        return end;
                    }
                }
                _ = self.handle.room(full_mailbox_retries), if waiting.is_some() => {
                    if let Some(frame) = waiting.take()
                        && let Err(end) = self.offer(frame, &mut waiting, &mut full_mailbox_retries)
                    {
                        return end;
                    }
                }
                out = self.outgoing.recv() => {
                    if self.backlog.overflowed() {
                        return self.overflowed();
                    }
                    let len = match &out {
                        Some(Outgoing::Frame(f)) => f.len(),
                        _ => 0,
                    };
                    let msg = match out {
                        Some(Outgoing::Frame(Frame::Text(t))) => Message::Text(t.into()),
                        Some(Outgoing::Frame(Frame::Binary(b))) => Message::Binary(b),
                        Some(Outgoing::Close { code, reason }) => {
                            // The object closed it: a normal, clean end from its point of view.
                            return End { code, reason: reason.clone(), clean: true, wire: Wire::SendClose(code, reason) };
                        }
                        // The registry dropped the socket (the object failed while accepting it).
                        None => return End::ours(code::INTERNAL_ERROR, "the object dropped this socket"),
                    };
                    // Most writes complete at once (biased: nothing else is even polled then); a
                    // peer that stops reading blocks one, and then the overflow, shutdown or a
                    // write timeout ends it.
                    let sent = tokio::select! {
                        biased;
                        sent = socket.send(msg) => sent,
                        _ = self.backlog.overflowed_wait() => return self.overflowed(),
                        _ = self.shutdown.changed() => {
                            return End::ours(code::GOING_AWAY, "server shutting down");
                        }
                        // As silent as a peer the heartbeat drops.
                        _ = async {
                            match heartbeat {
                                Some(beat) => tokio::time::sleep(beat * 2).await,
                                None => std::future::pending().await,
                            }
                        } => return End::lost("write timeout: the peer stopped reading"),
                    };
                    if let Err(e) = sent {
                        return End::lost(e.to_string());
                    }
                    self.backlog.written(len);
                }
                _ = ticker.tick(), if heartbeat.is_some() => {
                    if last_seen.elapsed() >= beat * 2 {
                        return End::lost("heartbeat timeout: the peer stopped answering pings");
                    }
                    if socket.send(Message::Ping(Bytes::new())).await.is_err() {
                        return End::lost("connection lost");
                    }
                }
                _ = self.shutdown.changed() => {
                    return End::ours(code::GOING_AWAY, "server shutting down");
                }
            }
        }
    }
}

/// Codes 1005, 1006 and 1015 (and unassigned ones) must never appear on the wire; an object that
/// asks for one gets 1000 instead of a protocol violation toward its client.
fn sendable(code: u16) -> u16 {
    match code {
        1000..=1003 | 1007..=1014 | 3000..=4999 => code,
        _ => {
            tracing::warn!(code, "close code cannot be sent on the wire; sending 1000");
            code::NORMAL
        }
    }
}

/// Close reasons are limited to 123 bytes by the protocol.
fn truncate(reason: &str) -> &str {
    if reason.len() <= 123 {
        return reason;
    }
    let mut end = 123;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

#[cfg(test)]
mod tests {
    use super::{sendable, truncate};

    #[test]
    fn close_codes_and_reasons_fit_the_wire() {
        assert_eq!(sendable(1000), 1000);
        assert_eq!(sendable(4000), 4000);
        assert_eq!(sendable(1006), 1000);
        assert_eq!(sendable(1005), 1000);
        assert_eq!(sendable(999), 1000);
        let long = "é".repeat(100);
        let t = truncate(&long);
        assert!(t.len() <= 123 && long.starts_with(t));
        assert_eq!(truncate("bye"), "bye");
    }
}
