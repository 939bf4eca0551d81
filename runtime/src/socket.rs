//! Hibernatable WebSockets, independent of any transport.
//!
//! The registry of an object's sockets (tags, attachment, auto-response) lives outside the object
//! instance, so it survives hibernation. A transport (the gateway, or a test) plugs in with
//! [`Upgrade`]: it puts one in the request's extensions before calling the object's `fetch`; the
//! object accepts it with `ctx.accept_websocket`; the transport then reads the [`SocketHandle`] from
//! the upgrade, feeds incoming frames to it and writes what arrives on its [`Outgoing`] receiver.

use std::collections::HashMap;
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
    Text(String),
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
    pub fn len(&self) -> usize {
        match self {
            Frame::Text(s) => s.len(),
            Frame::Binary(b) => b.len(),
        }
    }
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
    Frame(Frame),
    Close { code: u16, reason: String },
}

/// A handle to one of the object's sockets, as handlers see it. Cheap to copy; operations go
/// through the object's `Ctx`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WebSocket {
    pub(crate) id: SocketId,
}

impl WebSocket {
    pub fn id(&self) -> SocketId {
        self.id
    }
}

/// Put into a request's extensions by a transport to offer a WebSocket to the object.
#[derive(Clone)]
pub struct Upgrade {
    inner: Arc<UpgradeInner>,
}

struct UpgradeInner {
    tx: Mutex<Option<mpsc::UnboundedSender<Outgoing>>>,
    accepted: OnceLock<SocketHandle>,
}

impl Upgrade {
    /// A fresh offer and the receiver of everything the object will send on the socket.
    pub fn new() -> (Upgrade, mpsc::UnboundedReceiver<Outgoing>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let upgrade = Upgrade {
            inner: Arc::new(UpgradeInner {
                tx: Mutex::new(Some(tx)),
                accepted: OnceLock::new(),
            }),
        };
        (upgrade, rx)
    }

    /// The socket's handle, once the object accepted it.
    pub fn accepted(&self) -> Option<SocketHandle> {
        self.inner.accepted.get().cloned()
    }

    pub(crate) fn take_sender(&self) -> Option<mpsc::UnboundedSender<Outgoing>> {
        lock(&self.inner.tx).take()
    }

    pub(crate) fn set_accepted(&self, handle: SocketHandle) {
        let _ = self.inner.accepted.set(handle);
    }
}

pub(crate) struct SocketEntry {
    pub(crate) tags: Box<[Box<str>]>,
    pub(crate) attachment: Option<Box<[u8]>>,
    pub(crate) tx: mpsc::UnboundedSender<Outgoing>,
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

/// Routes a socket's incoming events to its object, whichever namespace type it has.
pub(crate) trait SocketRouter: Send + Sync {
    fn deliver(
        self: Arc<Self>,
        object: &[u8; 32],
        socket: SocketId,
        event: SocketEventKind,
    ) -> Result<()>;
}

/// The transport's side of one accepted socket.
#[derive(Clone)]
pub struct SocketHandle {
    pub(crate) id: SocketId,
    pub(crate) object: [u8; 32],
    pub(crate) sockets: Arc<ObjectSockets>,
    pub(crate) router: Arc<dyn SocketRouter>,
}

/// What [`SocketHandle::message`] did with a frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Queued for the object (activating it if it was hibernating).
    Delivered,
    /// Answered by the auto-response pair; the object was not woken.
    AutoResponded,
}

impl SocketHandle {
    pub fn id(&self) -> SocketId {
        self.id
    }

    /// An incoming frame. Exact matches of the auto-response request are answered here without
    /// waking the object.
    pub fn message(&self, frame: Frame) -> Result<Delivery> {
        if let Frame::Text(text) = &frame {
            let mut inner = self.sockets.lock();
            let reply = match &inner.auto_response {
                Some((req, resp)) if **req == **text => Some(resp.to_string()),
                _ => None,
            };
            if let Some(reply) = reply {
                if let Some(entry) = inner.sockets.get_mut(&self.id) {
                    entry.auto_response_at = Some(SystemTime::now());
                    let _ = entry.tx.send(Outgoing::Frame(Frame::Text(reply)));
                }
                return Ok(Delivery::AutoResponded);
            }
        }
        self.router
            .clone()
            .deliver(&self.object, self.id, SocketEventKind::Message(frame))?;
        Ok(Delivery::Delivered)
    }

    /// The peer closed the socket or it died (code 1006, not clean). The object's
    /// `websocket_close` runs; the socket leaves the registry afterwards.
    pub fn closed(&self, code: u16, reason: String, was_clean: bool) -> Result<()> {
        self.router.clone().deliver(
            &self.object,
            self.id,
            SocketEventKind::Close {
                code,
                reason,
                was_clean,
            },
        )
    }

    /// A transport error; the object's `websocket_error` runs and the socket leaves the registry.
    pub fn errored(&self, error: String) -> Result<()> {
        self.router
            .clone()
            .deliver(&self.object, self.id, SocketEventKind::Error(error))
    }

    /// Drops the socket from the registry without telling the object (used when delivering the
    /// close event itself failed, so a dead socket is never listed forever).
    pub fn forget(&self) {
        self.sockets.lock().sockets.remove(&self.id);
    }
}
