use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Instant, SystemTime};

use denizen_storage::{Database, ObjectTouch, Storage, Value};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::actor::{Event, TaskJob};
use crate::error::{Error, Result};
use crate::id::ObjectId;
use crate::namespace::{NsInner, Stub};
use crate::object::{DurableObject, Handler, Message, Request, Response};
use crate::runtime::Runtime;
use crate::socket::{
    Frame, MAX_ATTACHMENT_SIZE, MAX_AUTO_RESPONSE_LENGTH, ObjectSockets, Outgoing, SocketEntry,
    SocketHandle, SocketId, Upgrade, WebSocket, validate_tags,
};
use crate::time::{from_ms, now_ms, to_ms};

pub(crate) const ALARM_KEY: &str = "alarm";
const NAME_KEY: &str = "name";

/// An object's view of the runtime: its id, its storage, its alarm, its sockets, background
/// work, and stubs to other objects.
///
/// Everything that reveals state — socket sends, broadcasts, closes, spawned tasks — is held in
/// the object until the event's writes are committed, and dropped if the event fails.
#[allow(missing_debug_implementations)] // holds futures and the object's registry
pub struct Ctx<O: DurableObject> {
    pub(crate) id: ObjectId,
    pub(crate) ns: Arc<NsInner<O>>,
    pub(crate) storage: Database,
    /// The object has a row in the catalog (it existed when opened, or its row was written when
    /// its first write created its file).
    registered: bool,
    pub(crate) sockets: Arc<ObjectSockets>,
    outbox: Vec<(SocketId, Outgoing)>,
    pending: Vec<BoxFuture<'static, Event<O>>>,
    accepted: Vec<SocketId>,
    pub(crate) alarm_dirty: bool,
    pub(crate) background: usize,
}

impl<O: DurableObject> Ctx<O> {
    /// Opens the object's database. An object that does not exist yet reads as an empty one and
    /// is created (file and catalog row) only by its first write, so reading it leaves nothing
    /// behind.
    pub(crate) fn open(
        ns: &Arc<NsInner<O>>,
        id: &ObjectId,
        path: &std::path::Path,
    ) -> Result<Self> {
        let shared = &ns.shared;
        let mut storage = Database::open_deferred(path, shared.options.durability, O::SCHEMA)?;
        let is_new = storage.is_deferred();
        let mut id = id.clone();
        if id.name().is_none() {
            let stored = match storage.meta_get(NAME_KEY)? {
                Some(Value::Text(name)) => Some(name),
                _ if is_new => None,
                _ => shared
                    .catalog
                    .object(&ns.name, &id.to_hex())?
                    .and_then(|r| r.name),
            };
            id = id.with_name(stored.map(Into::into));
        } else if is_new && let Some(name) = id.name() {
            // Written with the first write, in its transaction.
            storage.meta_set_with_first_write(NAME_KEY, Value::Text(name.to_string()))?;
        }
        if !is_new {
            shared.touch_later(ObjectTouch {
                namespace: ns.name.to_string(),
                id: id.to_hex(),
                name: id.name().map(str::to_string),
                at_ms: now_ms(),
                size_bytes: None,
            });
        }
        Ok(Ctx {
            sockets: ns.sockets_of(&id),
            id,
            ns: ns.clone(),
            storage,
            registered: !is_new,
            outbox: Vec::new(),
            pending: Vec::new(),
            accepted: Vec::new(),
            alarm_dirty: false,
            background: 0,
        })
    }

    /// Whether the object exists on disk (something was ever written).
    pub(crate) fn exists(&self) -> bool {
        !self.storage.is_deferred()
    }

    /// This object's id; `id().name()` is the name it was addressed by.
    pub fn id(&self) -> &ObjectId {
        &self.id
    }

    /// The namespace this object lives in.
    pub fn namespace(&self) -> &str {
        &self.ns.name
    }

    /// The object's own SQLite database (SQL and KV). Writes are committed when the handler
    /// returns `Ok`.
    pub fn storage(&mut self) -> &mut Storage {
        &mut self.storage
    }

    /// A handle on the runtime, to reach other namespaces.
    pub fn runtime(&self) -> Runtime {
        Runtime::from_shared(self.ns.shared.clone())
    }

    // ---- alarm ----

    /// Sets (or replaces) the object's one alarm. Part of the event's transaction.
    pub fn set_alarm(&mut self, at: SystemTime) -> Result<()> {
        self.storage
            .meta_set(ALARM_KEY, Some(Value::Integer(to_ms(at))))?;
        self.alarm_dirty = true;
        Ok(())
    }

    /// The pending alarm, if any. Inside the alarm handler this is `None` unless the handler set a
    /// new one.
    pub fn get_alarm(&mut self) -> Result<Option<SystemTime>> {
        Ok(self.stored_alarm()?.map(from_ms))
    }

    /// Cancels the alarm (and any pending retry of it).
    pub fn delete_alarm(&mut self) -> Result<()> {
        self.storage.meta_set(ALARM_KEY, None)?;
        self.alarm_dirty = true;
        Ok(())
    }

    pub(crate) fn stored_alarm(&mut self) -> Result<Option<i64>> {
        Ok(match self.storage.meta_get(ALARM_KEY)? {
            Some(Value::Integer(ms)) => Some(ms),
            _ => None,
        })
    }

    // ---- background work ----

    /// Runs `fut` outside the mailbox (network calls, LLM requests, timers); its output comes
    /// back to this object as an event handled by `Handler<M>`. It starts only after this
    /// event's writes are committed, and is dropped if the event fails. The object does not
    /// hibernate while it runs. It is not an event: `Options::event_timeout` does not bound it.
    /// For a `fetch` whose caller waits for the work's result, see [`Ctx::respond_later`].
    pub fn spawn<M, F>(&mut self, fut: F)
    where
        M: Message,
        O: Handler<M>,
        F: Future<Output = M> + Send + 'static,
    {
        self.pending.push(Box::pin(async move {
            match std::panic::AssertUnwindSafe(fut).catch_unwind().await {
                Ok(msg) => Event::Job(Box::new(TaskJob::new(msg))),
                Err(_) => {
                    tracing::error!("a task started with ctx.spawn panicked; its result is lost");
                    Event::BackgroundDone
                }
            }
        }));
    }

    /// Answers the HTTP request of this `fetch` later, after slow work off the turn, while the
    /// object goes on handling other events: the Rust form of awaiting a network call inside a
    /// Durable Object's `fetch`. Return what it gives from `fetch` (`Ok(ctx.respond_later(fut))`):
    /// the caller keeps waiting while `fut` runs outside the mailbox, and its output `M` comes
    /// back as an event handled by `Handler<M>`, whose `Response` is the answer. That event is an
    /// event like any other: its writes commit before the answer leaves, and if it fails its
    /// writes are rolled back and the caller gets its error. It may itself answer later again.
    ///
    /// Like [`Ctx::spawn`], `fut` starts only after this event's writes are committed (and is
    /// dropped, the caller getting the event's error, if the event fails), and the object does
    /// not hibernate while it runs. It is not an event, so `Options::event_timeout` does not
    /// bound it: bound it yourself (`tokio::time::timeout`) if the work can hang. When the
    /// runtime shuts down before `fut` finishes, the caller gets [`Error::ShuttingDown`]
    /// (retryable; HTTP 503); a panic in `fut` reaches the caller as [`Error::Panicked`].
    ///
    /// The response returned here is a placeholder the runtime recognizes; from anywhere but
    /// `fetch` (or the handler of `M`) it is sent as is: a 500 saying so.
    ///
    /// ```
    /// use denizen_runtime::{Ctx, DurableObject, Handler, Message, Request, Response, Result};
    /// use denizen_runtime::{http, http_util};
    ///
    /// struct Quote;
    /// struct Fetched(String);
    /// impl Message for Fetched {
    ///     type Reply = Response;
    /// }
    ///
    /// impl DurableObject for Quote {
    ///     async fn fetch(&mut self, ctx: &mut Ctx<Self>, _req: Request) -> Result<Response> {
    ///         // Other requests to this object are answered while this one waits.
    ///         Ok(ctx.respond_later(async {
    ///             // e.g. an HTTP API call
    ///             Fetched("a quote".into())
    ///         }))
    ///     }
    /// }
    ///
    /// impl Handler<Fetched> for Quote {
    ///     async fn handle(&mut self, ctx: &mut Ctx<Self>, Fetched(quote): Fetched) -> Result<Response> {
    ///         ctx.storage().put("last", &quote)?; // committed before the answer leaves
    ///         Ok(http_util::text(http::StatusCode::OK, &quote))
    ///     }
    /// }
    /// ```
    pub fn respond_later<M, F>(&mut self, fut: F) -> Response
    where
        M: Message<Reply = Response>,
        O: Handler<M>,
        F: Future<Output = M> + Send + 'static,
    {
        crate::later::placeholder::<O, M, F>(self.ns.shared.clone(), fut)
    }

    /// Queues background work to start when the event's writes are committed.
    pub(crate) fn start_after_commit(&mut self, fut: BoxFuture<'static, Event<O>>) {
        self.pending.push(fut);
    }

    /// Keeps the object in memory until `fut` finishes (its output is ignored). Starts after the
    /// event commits, like [`Ctx::spawn`].
    pub fn wait_until<F>(&mut self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.pending.push(Box::pin(async move {
            if std::panic::AssertUnwindSafe(fut)
                .catch_unwind()
                .await
                .is_err()
            {
                tracing::error!("a future given to ctx.wait_until panicked");
            }
            Event::BackgroundDone
        }));
    }

    // ---- other objects ----

    /// Calls another object. The writes made so far are committed first (and held messages
    /// released), because the call may carry state out of this object. Avoid cycles of
    /// awaited calls (A awaits B awaits A): each object handles one event at a time, so such a
    /// cycle waits forever — use `spawn` for calls whose answer can come back as an event.
    pub async fn call<P, M>(&mut self, stub: &Stub<P>, msg: M) -> Result<M::Reply>
    where
        P: Handler<M>,
        M: Message,
    {
        self.commit().await?;
        stub.call(msg).await
    }

    /// `fetch` on another object, committing first like [`Ctx::call`].
    pub async fn fetch_object<P: DurableObject>(
        &mut self,
        stub: &Stub<P>,
        req: Request,
    ) -> Result<Response> {
        self.commit().await?;
        stub.fetch(req).await
    }

    // ---- websockets ----

    /// Accepts the WebSocket offered with this request (the transport put an [`Upgrade`] in
    /// its extensions). Answer the request with [`crate::http_util::switching_protocols`]. The
    /// socket outlives this instance: it stays open while the object hibernates.
    pub fn accept_websocket(&mut self, req: &Request, tags: &[&str]) -> Result<WebSocket> {
        let upgrade = req.extensions().get::<Upgrade>().ok_or(Error::NotUpgrade)?;
        let tags = validate_tags(tags)?;
        let tx = upgrade.take_sender().ok_or(Error::NotUpgrade)?;
        let id = self.ns.shared.next_socket_id.fetch_add(1, Relaxed);
        self.sockets.lock().sockets.insert(
            id,
            SocketEntry {
                tags,
                attachment: None,
                tx,
                auto_response_at: None,
            },
        );
        self.ns.shared.metrics.open_sockets.inc();
        self.accepted.push(id);
        upgrade.set_accepted(SocketHandle {
            id,
            object: *self.id.bytes(),
            sockets: self.sockets.clone(),
            router: self.ns.clone(),
            flow: Arc::default(),
            quota: self.ns.shared.options.socket_message_quota.max(1),
        });
        Ok(WebSocket { id })
    }

    /// The object's open sockets, all or those with `tag`.
    pub fn get_websockets(&self, tag: Option<&str>) -> Vec<WebSocket> {
        let inner = self.sockets.lock();
        let mut out: Vec<WebSocket> = inner
            .sockets
            .iter()
            .filter(|(_, e)| tag.is_none_or(|t| e.tags.iter().any(|x| &**x == t)))
            .map(|(id, _)| WebSocket { id: *id })
            .collect();
        out.sort();
        out
    }

    /// The tags a socket was accepted with.
    pub fn tags(&self, ws: WebSocket) -> Vec<String> {
        self.sockets
            .lock()
            .sockets
            .get(&ws.id)
            .map(|e| e.tags.iter().map(|t| t.to_string()).collect())
            .unwrap_or_default()
    }

    /// Stores a value with the socket (≤ 16 KiB encoded); it survives hibernation.
    pub fn set_attachment<T: Serialize + ?Sized>(
        &mut self,
        ws: WebSocket,
        value: &T,
    ) -> Result<()> {
        let bytes = rmp_serde::to_vec_named(value).map_err(|e| Error::Codec(e.to_string()))?;
        if bytes.len() > MAX_ATTACHMENT_SIZE {
            return Err(Error::AttachmentTooLarge {
                size: bytes.len(),
                max: MAX_ATTACHMENT_SIZE,
            });
        }
        let mut inner = self.sockets.lock();
        let entry = inner
            .sockets
            .get_mut(&ws.id)
            .ok_or(Error::UnknownSocket(ws.id))?;
        entry.attachment = Some(bytes.into_boxed_slice());
        Ok(())
    }

    /// The socket's attachment, if one was set.
    pub fn attachment<T: DeserializeOwned>(&self, ws: WebSocket) -> Result<Option<T>> {
        let inner = self.sockets.lock();
        let entry = inner
            .sockets
            .get(&ws.id)
            .ok_or(Error::UnknownSocket(ws.id))?;
        entry
            .attachment
            .as_deref()
            .map(|b| rmp_serde::from_slice(b).map_err(|e| Error::Codec(e.to_string())))
            .transpose()
    }

    /// Sends a frame once the event's writes are committed.
    pub fn send(&mut self, ws: WebSocket, frame: impl Into<Frame>) {
        self.outbox.push((ws.id, Outgoing::Frame(frame.into())));
    }

    /// Sends a frame to every socket (or those with `tag`), except `except`, once committed.
    pub fn broadcast(
        &mut self,
        tag: Option<&str>,
        frame: impl Into<Frame>,
        except: Option<WebSocket>,
    ) {
        let frame = frame.into();
        for ws in self.get_websockets(tag) {
            if Some(ws) != except {
                self.outbox.push((ws.id, Outgoing::Frame(frame.clone())));
            }
        }
    }

    /// Closes a socket with a code and reason once committed.
    pub fn close(&mut self, ws: WebSocket, code: u16, reason: &str) {
        self.outbox.push((
            ws.id,
            Outgoing::Close {
                code,
                reason: reason.to_string(),
            },
        ));
    }

    /// Sets (or clears) the request → response pair the transport answers without waking the
    /// object (each string ≤ 2048 bytes). Kept across hibernation.
    pub fn set_auto_response(&mut self, pair: Option<(&str, &str)>) -> Result<()> {
        if let Some((req, resp)) = pair
            && (req.len() > MAX_AUTO_RESPONSE_LENGTH || resp.len() > MAX_AUTO_RESPONSE_LENGTH)
        {
            return Err(Error::AutoResponseTooLong {
                max: MAX_AUTO_RESPONSE_LENGTH,
            });
        }
        self.sockets.lock().auto_response = pair.map(|(a, b)| (a.into(), b.into()));
        Ok(())
    }

    /// When the transport last answered this socket with the auto-response.
    pub fn auto_response_timestamp(&self, ws: WebSocket) -> Option<SystemTime> {
        self.sockets
            .lock()
            .sockets
            .get(&ws.id)
            .and_then(|e| e.auto_response_at)
    }

    // ---- the output gate ----

    /// Commits the writes made so far and releases the messages held behind them. Handlers
    /// rarely need this: the runtime commits when they return. After it, a failing handler
    /// rolls back only what came later.
    pub async fn commit(&mut self) -> Result<()> {
        self.commit_writes().await?;
        self.release_outputs();
        Ok(())
    }

    /// Discards the writes made since the last commit and the messages and tasks held behind
    /// them, without failing the event: the handler goes on from the last committed state. Layers
    /// that report a failure to a caller (an RPC error frame) use it after [`Ctx::commit`] so the
    /// failed part leaves nothing behind while the report is still sent.
    pub fn rollback(&mut self) -> Result<()> {
        self.abort()
    }

    /// Commits the event's writes. First, off the worker thread, the catalog gets what must be
    /// there before the commit: the object's row when this event created its file, and its
    /// alarm in the due index.
    pub(crate) async fn commit_writes(&mut self) -> Result<()> {
        let shared = self.ns.shared.clone();
        let recorded = |r: std::result::Result<std::result::Result<(), String>, _>| {
            r.unwrap_or_else(|_| Err("the catalog writer stopped".into()))
                .map_err(|message| Error::CommitFailed {
                    message: format!("writing the catalog failed: {message}"),
                })
        };
        // Both writes are queued before either is awaited: they share the writer's next batch,
        // so a new object that sets an alarm waits for one catalog commit, not two.
        let registration = (!self.registered && self.storage.created()).then(|| {
            shared.register_object(ObjectTouch {
                namespace: self.ns.name.to_string(),
                id: self.id.to_hex(),
                name: self.id.name().map(str::to_string),
                at_ms: now_ms(),
                size_bytes: None,
            })
        });
        let alarm = if self.alarm_dirty {
            Some(self.stored_alarm()?)
        } else {
            None
        };
        let alarm_recorded = match alarm {
            Some(Some(at)) => Some(shared.record_alarm(&self.ns.name, &self.id, at)),
            _ => None,
        };
        if let Some(registration) = registration {
            recorded(registration.await)?;
            self.registered = true;
        }
        if let Some(alarm_recorded) = alarm_recorded {
            recorded(alarm_recorded.await)?;
        }
        // An event that touched no storage has nothing to commit (and no latency to record).
        if self.storage.in_transaction() {
            let started = Instant::now();
            if let Err(e) = self.storage.commit() {
                return Err(Error::CommitFailed {
                    message: e.to_string(),
                });
            }
            shared.metrics.commit_latency.observe(started.elapsed());
        }
        self.alarm_dirty = false;
        self.accepted.clear();
        match alarm {
            Some(Some(at)) => shared.schedule_alarm(&self.ns.name, *self.id.bytes(), at, 0),
            Some(None) => shared.clear_alarm(&self.ns.name, &self.id),
            None => {}
        }
        Ok(())
    }

    /// Whether the current event has anything to reveal or hand over at its commit.
    pub(crate) fn holds_outputs(&self) -> bool {
        !self.outbox.is_empty()
            || !self.pending.is_empty()
            || !self.accepted.is_empty()
            || self.alarm_dirty
    }

    pub(crate) fn release_outputs(&mut self) {
        if !self.outbox.is_empty() {
            let inner = self.sockets.lock();
            for (id, out) in self.outbox.drain(..) {
                if let Some(entry) = inner.sockets.get(&id) {
                    entry.tx.send(out);
                }
            }
        }
        for fut in self.pending.drain(..) {
            self.background += 1;
            let ns = self.ns.clone();
            let id = self.id.clone();
            tokio::spawn(async move {
                let event = fut.await;
                if let Err(e) = ns.send(&id, event, true) {
                    tracing::warn!(namespace = %ns.name, id = %id, error = %e, "background result not delivered");
                }
            });
        }
    }

    /// Drops everything the failed event did: writes, held messages, tasks, sockets it accepted.
    pub(crate) fn abort(&mut self) -> Result<()> {
        self.outbox.clear();
        self.pending.clear();
        self.alarm_dirty = false;
        if !self.accepted.is_empty() {
            let mut inner = self.sockets.lock();
            for id in self.accepted.drain(..) {
                if let Some(entry) = inner.sockets.remove(&id) {
                    entry.tx.send(Outgoing::Close {
                        code: 1011,
                        reason: "the object failed while accepting this socket".into(),
                    });
                    self.ns.shared.metrics.open_sockets.dec();
                }
            }
        }
        self.storage.rollback().map_err(Error::from)
    }

    pub(crate) fn forget_socket(&mut self, id: SocketId) {
        self.ns.remove_socket(&self.sockets, id);
    }
}
