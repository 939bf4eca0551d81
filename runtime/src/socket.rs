//! Hibernatable WebSockets, independent of any transport.
//!
//! The registry of an object's sockets (tags, attachment, auto-response) lives outside the object
//! instance, so it survives hibernation. A transport (the gateway, or a test) plugs in with
//! [`Upgrade`]: it puts one in the request's extensions before calling the object's `fetch`; the
//! object accepts it with `ctx.accept_websocket`; the transport then reads the [`SocketHandle`] from
//! the upgrade, feeds incoming frames to it and writes what arrives on its [`Outgoing`] receiver.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::SystemTime;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::error::{Error, Result};

/// Runtime-wide unique number of a socket.
pub type SocketId = u64;

/// Attachments are limited as in Durable Objects.
pub const MAX_ATTACHMENT_SIZE: usize = 16 * 1024;
/// At most this many tags per socket.
pub const MAX_TAGS: usize = 10;
/// Each tag at most this many bytes.
pub const MAX_TAG_LENGTH: usize = 256;
/// Auto-response request and response strings at most this many bytes each.
pub const MAX_AUTO_RESPONSE_LENGTH: usize = 2048;

/// One WebSocket message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// A text message.
    Text(String),
    /// A binary message.
    Binary(Bytes),
}

impl Frame {
    /// The text of a text frame.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Frame::Text(s) => Some(s),
            Frame::Binary(_) => None,
        }
    }
    /// Its size in bytes.
    pub fn len(&self) -> usize {
        match self {
            Frame::Text(s) => s.len(),
            Frame::Binary(b) => b.len(),
        }
    }
    /// Whether it has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<String> for Frame {
    fn from(s: String) -> Self {
        Frame::Text(s)
    }
}
impl From<&str> for Frame {
    fn from(s: &str) -> Self {
        Frame::Text(s.to_string())
    }
}
impl From<Vec<u8>> for Frame {
    fn from(b: Vec<u8>) -> Self {
        Frame::Binary(b.into())
    }
}
impl From<Bytes> for Frame {
    fn from(b: Bytes) -> Self {
        Frame::Binary(b)
    }
}

/// What the transport must write to the peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outgoing {
    /// A message.
    Frame(Frame),
    /// A close frame; the transport closes the socket after it.
    Close {
        /// The close code.
        code: u16,
        /// The reason (at most 123 bytes go on the wire).
        reason: String,
    },
}

/// A handle to one of the object's sockets, as handlers see it. Cheap to copy; operations go
/// through the object's `Ctx`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WebSocket {
    pub(crate) id: SocketId,
}

impl WebSocket {
    /// The socket's runtime-wide number.
    pub fn id(&self) -> SocketId {
        self.id
    }
}

/// The bytes an object has sent on a socket that the transport has not written yet. Bounded, so
/// a peer that stops reading cannot make the server hold its messages without end: past the
/// limit further messages are dropped and [`Backlog::overflowed`] tells the transport to close
/// the socket.
#[derive(Debug)]
pub struct Backlog {
    queued: AtomicUsize,
    limit: usize,
    overflowed: AtomicBool,
    /// Wakes a transport blocked writing to the peer that is not reading.
    overflow: tokio::sync::Notify,
}

impl Backlog {
    fn new(limit: usize) -> Self {
        Backlog {
            queued: AtomicUsize::new(0),
            limit,
            overflowed: AtomicBool::new(false),
            overflow: tokio::sync::Notify::new(),
        }
    }

    /// Resolves once the backlog overflowed.
    pub async fn overflowed_wait(&self) {
        loop {
            let notified = self.overflow.notified();
            tokio::pin!(notified);
            // Registered before the check, so an overflow in between is not missed.
            notified.as_mut().enable();
            if self.overflowed() {
                return;
            }
            notified.await;
        }
    }

    /// Takes `bytes` into the backlog; false (and overflowed from then on) when they would pass
    /// the limit. A message to an empty backlog always fits, whatever its size.
    fn push(&self, bytes: usize) -> bool {
        if self.overflowed.load(Ordering::Relaxed) {
            return false;
        }
        let before = self.queued.fetch_add(bytes, Ordering::Relaxed);
        if before > 0 && before.saturating_add(bytes) > self.limit {
            self.queued.fetch_sub(bytes, Ordering::Relaxed);
            self.overflowed.store(true, Ordering::Relaxed);
            self.overflow.notify_waiters();
            return false;
        }
        true
    }

    /// The transport wrote a message of `bytes` to the peer.
    pub fn written(&self, bytes: usize) {
        let _ = self
            .queued
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |q| {
                Some(q.saturating_sub(bytes))
            });
    }

    /// Bytes waiting to be written.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// The peer fell so far behind that messages were dropped: close the socket.
    pub fn overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Relaxed)
    }
}

/// The object's end of a socket: queues what the transport writes, within the backlog limit.
pub(crate) struct Sender {
    tx: mpsc::UnboundedSender<Outgoing>,
    backlog: Arc<Backlog>,
}

impl Sender {
    pub(crate) fn send(&self, out: Outgoing) {
        if let Outgoing::Frame(frame) = &out
            && !self.backlog.push(frame.len())
        {
            tracing::debug!(
                queued = self.backlog.queued(),
                "dropping a message: the peer is not reading"
            );
            return;
        }
        let _ = self.tx.send(out);
    }
}

/// Put into a request's extensions by a transport to offer a WebSocket to the object.
#[derive(Clone)]
#[allow(missing_debug_implementations)] // channels and a once-set handle
pub struct Upgrade {
    inner: Arc<UpgradeInner>,
}

struct UpgradeInner {
    tx: Mutex<Option<mpsc::UnboundedSender<Outgoing>>>,
    backlog: Arc<Backlog>,
    accepted: OnceLock<SocketHandle>,
}

impl Upgrade {
    /// A fresh offer and the receiver of everything the object will send on the socket, with no
    /// bound on what may wait to be written.
    pub fn new() -> (Upgrade, mpsc::UnboundedReceiver<Outgoing>) {
        Upgrade::with_backlog_limit(usize::MAX)
    }

    /// A fresh offer whose unwritten messages may add up to `limit` bytes (see [`Backlog`]).
    pub fn with_backlog_limit(limit: usize) -> (Upgrade, mpsc::UnboundedReceiver<Outgoing>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let upgrade = Upgrade {
            inner: Arc::new(UpgradeInner {
                tx: Mutex::new(Some(tx)),
                backlog: Arc::new(Backlog::new(limit)),
                accepted: OnceLock::new(),
            }),
        };
        (upgrade, rx)
    }

    /// The socket's handle, once the object accepted it.
    pub fn accepted(&self) -> Option<SocketHandle> {
        self.inner.accepted.get().cloned()
    }

    /// What the object has queued and the transport not yet written.
    pub fn backlog(&self) -> Arc<Backlog> {
        self.inner.backlog.clone()
    }

    pub(crate) fn take_sender(&self) -> Option<Sender> {
        let tx = lock(&self.inner.tx).take()?;
        Some(Sender {
            tx,
            backlog: self.inner.backlog.clone(),
        })
    }

    pub(crate) fn set_accepted(&self, handle: SocketHandle) {
        let _ = self.inner.accepted.set(handle);
    }
}

pub(crate) struct SocketEntry {
    pub(crate) tags: Box<[Box<str>]>,
    pub(crate) attachment: Option<Box<[u8]>>,
    pub(crate) tx: Sender,
    pub(crate) auto_response_at: Option<SystemTime>,
}

#[derive(Default)]
pub(crate) struct SocketsInner {
    pub(crate) sockets: HashMap<SocketId, SocketEntry>,
    pub(crate) auto_response: Option<(Box<str>, Box<str>)>,
}

/// The sockets of one object, kept across hibernation.
#[derive(Default)]
pub(crate) struct ObjectSockets {
    inner: Mutex<SocketsInner>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these short locks cannot leave the data half-updated in a way
    // that matters more than refusing service would, so poisoning is ignored.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ObjectSockets {
    pub(crate) fn lock(&self) -> MutexGuard<'_, SocketsInner> {
        lock(&self.inner)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.lock().sockets.is_empty()
    }
}

pub(crate) fn validate_tags(tags: &[&str]) -> Result<Box<[Box<str>]>> {
    if tags.len() > MAX_TAGS {
        return Err(Error::InvalidTag {
            reason: format!("{} tags given; at most {MAX_TAGS} per socket", tags.len()),
        });
    }
    tags.iter()
        .map(|t| {
            if t.is_empty() || t.len() > MAX_TAG_LENGTH {
                Err(Error::InvalidTag {
                    reason: format!("tags must be 1 to {MAX_TAG_LENGTH} bytes, got {}", t.len()),
                })
            } else {
                Ok(Box::<str>::from(*t))
            }
        })
        .collect()
}

/// What happened on a socket, as delivered to the object.
pub(crate) enum SocketEventKind {
    Message(Frame),
    Close {
        code: u16,
        reason: String,
        was_clean: bool,
    },
    Error(String),
}

/// An event the object's mailbox did not take, given back with why.
pub(crate) type Undelivered = (Error, Option<SocketEventKind>);

/// Routes a socket's incoming events to its object, whichever namespace type it has.
pub(crate) trait SocketRouter: Send + Sync {
    /// Drops a socket from its object's registry without telling the object.
    fn forget(&self, sockets: &ObjectSockets, socket: SocketId);

    /// Queues the event for the object; `in_flight` is held until the object has handled it.
    fn deliver(
        self: Arc<Self>,
        object: &[u8; 32],
        socket: SocketId,
        event: SocketEventKind,
        in_flight: Option<InFlight>,
    ) -> std::result::Result<(), Undelivered>;
}

/// How many of one socket's messages wait in its object's mailbox (or are being handled).
#[derive(Default)]
pub(crate) struct Flow {
    queued: AtomicUsize,
    /// Wakes the transport waiting for room under the quota.
    room: tokio::sync::Notify,
}

/// One of a socket's messages in its object's mailbox: counted in the socket's [`Flow`] until
/// dropped (handled, or dropped unhandled).
pub(crate) struct InFlight(Arc<Flow>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.queued.fetch_sub(1, Ordering::AcqRel);
        self.0.room.notify_one();
    }
}

/// The transport's side of one accepted socket.
#[derive(Clone)]
#[allow(missing_debug_implementations)] // routes into the runtime
pub struct SocketHandle {
    pub(crate) id: SocketId,
    pub(crate) object: [u8; 32],
    pub(crate) sockets: Arc<ObjectSockets>,
    pub(crate) router: Arc<dyn SocketRouter>,
    pub(crate) flow: Arc<Flow>,
    /// At most this many of the socket's messages in the mailbox at once.
    pub(crate) quota: usize,
}

/// A frame [`SocketHandle::message`] could not hand to the object, given back with the reason.
/// When [`Error::is_overloaded`], wait for [`SocketHandle::room`] and offer it again.
#[derive(Debug)]
pub struct Refused {
    /// Why.
    pub error: Error,
    /// The frame, to offer again.
    pub frame: Frame,
}

/// The longest a transport waits before offering a message to a full mailbox again.
const MAX_ROOM_WAIT: std::time::Duration = std::time::Duration::from_millis(50);

/// What [`SocketHandle::message`] did with a frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Queued for the object (activating it if it was hibernating).
    Delivered,
    /// Answered by the auto-response pair; the object was not woken.
    AutoResponded,
}

impl SocketHandle {
    /// The socket's runtime-wide number.
    pub fn id(&self) -> SocketId {
        self.id
    }

    /// An incoming frame. Exact matches of the auto-response request are answered here without
    /// waking the object. A frame the object cannot take now (this socket's quota of waiting
    /// messages is used up, or the object's mailbox is full) comes back in [`Refused`]: stop
    /// reading from the peer, wait for [`SocketHandle::room`], and offer it again.
    pub fn message(&self, frame: Frame) -> std::result::Result<Delivery, Refused> {
        if let Frame::Text(text) = &frame {
            let mut inner = self.sockets.lock();
            let reply = match &inner.auto_response {
                Some((req, resp)) if **req == **text => Some(resp.to_string()),
                _ => None,
            };
            if let Some(reply) = reply {
                if let Some(entry) = inner.sockets.get_mut(&self.id) {
                    entry.auto_response_at = Some(SystemTime::now());
                    entry.tx.send(Outgoing::Frame(Frame::Text(reply)));
                }
                return Ok(Delivery::AutoResponded);
            }
        }
        if self.flow.queued.fetch_add(1, Ordering::AcqRel) >= self.quota {
            self.flow.queued.fetch_sub(1, Ordering::AcqRel);
            let error = Error::SocketQuota { limit: self.quota };
            return Err(Refused { error, frame });
        }
        let in_flight = InFlight(self.flow.clone());
        match self.router.clone().deliver(
            &self.object,
            self.id,
            SocketEventKind::Message(frame),
            Some(in_flight),
        ) {
            Ok(()) => Ok(Delivery::Delivered),
            Err((error, Some(SocketEventKind::Message(frame)))) => Err(Refused { error, frame }),
            Err((error, _)) => Err(Refused {
                error,
                frame: Frame::Binary(Bytes::new()),
            }),
        }
    }

    /// Resolves when a message refused as overloaded may be offered again: at once when the
    /// socket is under its quota again, or after a pause (`attempt` makes it longer, up to
    /// 50 ms) when it was the object's mailbox that was full.
    pub async fn room(&self, attempt: u32) {
        loop {
            let notified = self.flow.room.notified();
            if self.flow.queued.load(Ordering::Acquire) < self.quota {
                break;
            }
            notified.await;
        }
        if attempt > 0 {
            let pause = std::time::Duration::from_millis(1 << attempt.min(6)).min(MAX_ROOM_WAIT);
            tokio::time::sleep(pause).await;
        }
    }

    /// The peer closed the socket or it died (code 1006, not clean). The object's
    /// `websocket_close` runs; the socket leaves the registry afterwards.
    pub fn closed(&self, code: u16, reason: String, was_clean: bool) -> Result<()> {
        let event = SocketEventKind::Close {
            code,
            reason,
            was_clean,
        };
        self.router
            .clone()
            .deliver(&self.object, self.id, event, None)
            .map_err(|(e, _)| e)
    }

    /// A transport error; the object's `websocket_error` runs and the socket leaves the registry.
    pub fn errored(&self, error: String) -> Result<()> {
        self.router
            .clone()
            .deliver(&self.object, self.id, SocketEventKind::Error(error), None)
            .map_err(|(e, _)| e)
    }

    /// Drops the socket from the registry without telling the object (used when delivering the
    /// close event itself failed, so a dead socket is never listed forever).
    pub fn forget(&self) {
        self.router.forget(&self.sockets, self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::Backlog;

    #[test]
    fn backlog_takes_one_message_of_any_size_then_bounds_the_total() {
        let b = Backlog::new(100);
        assert!(b.push(500), "a message to an empty backlog always fits");
        assert!(!b.push(1), "anything more is refused while it waits");
        assert!(b.overflowed());
        b.written(500);
        assert_eq!(b.queued(), 0);
        assert!(!b.push(1), "an overflowed socket takes nothing more");

        let b = Backlog::new(100);
        assert!(b.push(60));
        assert!(b.push(40));
        b.written(60);
        assert!(b.push(60));
        assert!(!b.overflowed());
        assert!(!b.push(1));
        assert!(b.overflowed());
    }
}
