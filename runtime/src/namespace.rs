use std::collections::HashMap;
use std::sync::atomic::Ordering::{AcqRel, Acquire as LoadAcquire, Relaxed};
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use ractor::{ActorRef, ActorRuntime};
use tokio::sync::oneshot;
use tracing::Instrument;

use crate::actor::{Args, CallJob, Event, FetchJob, ObjectActor, SqlJob};
use crate::error::{Error, Result};
use crate::id::{IdMinter, ObjectId};
use crate::object::{DurableObject, Handler, Message, Request, Response};
use crate::runtime::Shared;
use crate::socket::{
    InFlight, ObjectSockets, SocketEventKind, SocketId, SocketRouter, Undelivered, lock,
};

const CLOSED: usize = 1 << (usize::BITS - 1);

/// Counts an object's queued plus running events and marks it closed once it hibernates, in one
/// atomic word: a sender either gets in before the close or sees it and activates a new instance.
pub(crate) struct Gate {
    state: AtomicUsize,
    /// Milliseconds since the runtime started, at the end of the last event (for LRU trimming).
    last_used_ms: AtomicU64,
}

pub(crate) enum Admit {
    Admitted,
    Full,
    Closed,
}

impl Gate {
    fn new() -> Self {
        Gate {
            state: AtomicUsize::new(0),
            last_used_ms: AtomicU64::new(0),
        }
    }

    fn try_admit(&self, capacity: usize, force: bool) -> Admit {
        let mut cur = self.state.load(LoadAcquire);
        loop {
            if cur & CLOSED != 0 {
                return Admit::Closed;
            }
            if !force && cur >= capacity {
                return Admit::Full;
            }
            match self
                .state
                .compare_exchange_weak(cur, cur + 1, AcqRel, LoadAcquire)
            {
                Ok(_) => return Admit::Admitted,
                Err(actual) => cur = actual,
            }
        }
    }

    pub(crate) fn release(&self) {
        self.state.fetch_sub(1, AcqRel);
    }

    /// Closes the gate if nothing is queued.
    pub(crate) fn try_close(&self) -> bool {
        self.state
            .compare_exchange(0, CLOSED, AcqRel, LoadAcquire)
            .is_ok()
    }

    pub(crate) fn touch(&self, now_ms: u64) {
        self.last_used_ms.store(now_ms, Relaxed);
    }

    pub(crate) fn force_close(&self) {
        self.state.fetch_or(CLOSED, AcqRel);
    }
}

pub(crate) struct Live<O: DurableObject> {
    actor: ActorRef<Event<O>>,
    gate: Arc<Gate>,
}

/// A live object's last use and how to ask it to hibernate.
pub(crate) type LruEntry = (u64, Box<dyn FnOnce() + Send>);

type Shard<O> = Mutex<HashMap<[u8; 32], Arc<Live<O>>>>;
const SHARDS: usize = 32;

pub(crate) struct NsInner<O: DurableObject> {
    pub(crate) name: Arc<str>,
    pub(crate) minter: IdMinter,
    pub(crate) factory: Box<dyn Fn() -> O + Send + Sync>,
    pub(crate) shared: Arc<Shared>,
    shards: Box<[Shard<O>]>,
    sockets: Mutex<HashMap<[u8; 32], Arc<ObjectSockets>>>,
}

impl<O: DurableObject> NsInner<O> {
    pub(crate) fn new(
        name: &str,
        factory: Box<dyn Fn() -> O + Send + Sync>,
        shared: Arc<Shared>,
    ) -> Self {
        NsInner {
            name: name.into(),
            minter: IdMinter::new(&shared.secret, name),
            factory,
            shared,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            sockets: Mutex::new(HashMap::new()),
        }
    }

    fn shard(&self, id: &[u8; 32]) -> &Shard<O> {
        &self.shards[usize::from(id[0]) % SHARDS]
    }

    pub(crate) fn sockets_of(&self, id: &ObjectId) -> Arc<ObjectSockets> {
        lock(&self.sockets).entry(*id.bytes()).or_default().clone()
    }

    /// Drops the socket registry of a hibernating object that has no sockets left — unless
    /// someone else holds it: a new instance of the object may already have taken it (under this
    /// same lock, in `sockets_of`), and removing it then would orphan every socket that instance
    /// accepts.
    pub(crate) fn release_sockets(&self, id: &ObjectId) {
        let mut map = lock(&self.sockets);
        if map
            .get(id.bytes())
            .is_some_and(|s| Arc::strong_count(s) == 1 && s.is_empty())
        {
            map.remove(id.bytes());
        }
    }

    /// Removes a socket from an object's registry, keeping the open-sockets gauge right.
    pub(crate) fn remove_socket(&self, sockets: &ObjectSockets, socket: SocketId) {
        if sockets.lock().sockets.remove(&socket).is_some() {
            self.shared.metrics.open_sockets.dec();
        }
    }

    /// Queues an event for the object, activating it if needed. `force` skips the mailbox bound
    /// (for events the runtime owes the object: task results, alarms, socket closes).
    pub(crate) fn send(
        self: &Arc<Self>,
        id: &ObjectId,
        event: Event<O>,
        force: bool,
    ) -> Result<()> {
        self.try_send(id, event, force).map_err(|(e, _)| e)
    }

    /// [`NsInner::send`], giving the event back when the mailbox is full or the runtime stops.
    fn try_send(
        self: &Arc<Self>,
        id: &ObjectId,
        event: Event<O>,
        force: bool,
    ) -> std::result::Result<(), (Error, Option<Event<O>>)> {
        if self.shared.is_shutting_down() {
            return Err((Error::ShuttingDown, Some(event)));
        }
        let capacity = self.shared.options.mailbox_capacity;
        let mut activated = false;
        let live = {
            let mut map = lock(self.shard(id.bytes()));
            let existing = map
                .get(id.bytes())
                .map(|l| (l.gate.try_admit(capacity, force), l));
            match existing {
                Some((Admit::Admitted, live)) => live.clone(),
                Some((Admit::Full, _)) => {
                    self.shared.metrics.overloads.inc();
                    let error = Error::Overloaded {
                        namespace: self.name.to_string(),
                        id: id.to_hex(),
                        capacity,
                    };
                    return Err((error, Some(event)));
                }
                Some((Admit::Closed, _)) | None => {
                    let live = self.activate(id).map_err(|e| (e, None))?;
                    map.insert(*id.bytes(), live.clone());
                    activated = true;
                    live
                }
            }
        };
        if activated {
            self.shared.check_open_bound();
        }
        live.actor.cast(event).map_err(|_| {
            live.gate.release();
            (Error::Unavailable, None)
        })
    }

    fn activate(self: &Arc<Self>, id: &ObjectId) -> Result<Arc<Live<O>>> {
        let gate = Arc::new(Gate::new());
        // Admitted for the event that caused the activation.
        let _ = gate.try_admit(usize::MAX, true);
        let args = Args {
            ns: self.clone(),
            id: id.clone(),
            gate: gate.clone(),
        };
        let span = tracing::info_span!("object", namespace = %self.name, id = %id);
        let (actor, _handle) = {
            let _enter = span.enter();
            ActorRuntime::spawn_instant(None, ObjectActor::<O>::new(span.clone()), args).map_err(
                |e| Error::StartFailed {
                    message: e.to_string(),
                },
            )?
        };
        Ok(Arc::new(Live { actor, gate }))
    }

    /// Removes the live entry for `id` if it is still `gate`'s and the gate can be closed.
    pub(crate) fn try_evict(&self, id: &ObjectId, gate: &Arc<Gate>) -> bool {
        let mut map = lock(self.shard(id.bytes()));
        if !gate.try_close() {
            return false;
        }
        if map
            .get(id.bytes())
            .is_some_and(|l| Arc::ptr_eq(&l.gate, gate))
        {
            map.remove(id.bytes());
        }
        true
    }

    pub(crate) fn remove_live(&self, id: &ObjectId, gate: &Arc<Gate>) {
        let mut map = lock(self.shard(id.bytes()));
        if map
            .get(id.bytes())
            .is_some_and(|l| Arc::ptr_eq(&l.gate, gate))
        {
            map.remove(id.bytes());
        }
    }

    /// Adds every live object's last use and a way to ask it to hibernate now.
    pub(crate) fn collect_lru(&self, out: &mut Vec<LruEntry>) {
        for shard in self.shards.iter() {
            for live in lock(shard).values() {
                let actor = live.actor.clone();
                out.push((
                    live.gate.last_used_ms.load(Relaxed),
                    Box::new(move || {
                        let _ = actor.cast(Event::Evict);
                    }),
                ));
            }
        }
    }

    pub(crate) fn is_live(&self, id: &[u8; 32]) -> bool {
        lock(self.shard(id)).contains_key(id)
    }

    pub(crate) fn live_count(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }

    /// Asks every live object to finish its queue, commit and stop; waits for all of them.
    /// Ends every live object at once (shutdown ran out of time): a running handler is dropped
    /// uncommitted, and the callers of queued events get an error.
    pub(crate) fn kill_all(&self) {
        for shard in self.shards.iter() {
            for live in lock(shard).values() {
                live.actor.kill();
            }
        }
    }

    pub(crate) async fn stop_all(&self) {
        let lives: Vec<Arc<Live<O>>> = self
            .shards
            .iter()
            .flat_map(|s| lock(s).values().cloned().collect::<Vec<_>>())
            .collect();
        let mut waits = Vec::with_capacity(lives.len());
        for live in lives {
            let (tx, rx) = oneshot::channel();
            if live.actor.cast(Event::Stop(tx)).is_ok() {
                waits.push(rx);
            }
        }
        for rx in waits {
            let _ = rx.await;
        }
    }
}

impl<O: DurableObject> SocketRouter for NsInner<O> {
    fn forget(&self, sockets: &ObjectSockets, socket: SocketId) {
        self.remove_socket(sockets, socket);
    }

    fn deliver(
        self: Arc<Self>,
        object: &[u8; 32],
        socket: SocketId,
        event: SocketEventKind,
        in_flight: Option<InFlight>,
    ) -> std::result::Result<(), Undelivered> {
        // Closes and errors are owed to the object; plain messages respect the mailbox bound.
        let force = !matches!(event, SocketEventKind::Message(_));
        let id = ObjectId::from_bytes(*object);
        let event = Event::Socket {
            socket,
            kind: event,
            in_flight,
        };
        self.try_send(&id, event, force)
            .map_err(|(e, event)| match event {
                Some(Event::Socket { kind, .. }) => (e, Some(kind)),
                _ => (e, None),
            })
    }
}

/// The objects of one type, registered under a name.
#[allow(missing_debug_implementations)] // the object type need not be Debug
pub struct Namespace<O: DurableObject> {
    pub(crate) inner: Arc<NsInner<O>>,
}

impl<O: DurableObject> Clone for Namespace<O> {
    fn clone(&self) -> Self {
        Namespace {
            inner: self.inner.clone(),
        }
    }
}

impl<O: DurableObject> Namespace<O> {
    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The id for `name`: the same name always gives the same object.
    pub fn id_from_name(&self, name: &str) -> ObjectId {
        self.inner.minter.id_for_name(name)
    }

    /// A fresh random id; keep `id.to_hex()` to find the object again.
    pub fn new_unique_id(&self) -> ObjectId {
        self.inner.minter.unique()
    }

    /// Parses an id made by this namespace; ids of other namespaces and forged ids are refused.
    pub fn id_from_string(&self, s: &str) -> Result<ObjectId> {
        self.inner.minter.parse(s)
    }

    /// A stub for the object. No I/O: the object activates on the first call.
    pub fn get(&self, id: ObjectId) -> Stub<O> {
        Stub {
            ns: self.inner.clone(),
            id,
        }
    }

    /// `get(id_from_name(name))`.
    pub fn get_by_name(&self, name: &str) -> Stub<O> {
        self.get(self.id_from_name(name))
    }

    /// Every object ever created in this namespace, with whether it is in memory now.
    pub async fn list(&self) -> Result<Vec<crate::ObjectInfo>> {
        crate::runtime::list_objects(&self.inner.shared, &self.inner.name, &|id| {
            self.inner.is_live(id)
        })
        .await
    }

    /// How many objects of this namespace are in memory.
    pub fn live_count(&self) -> usize {
        self.inner.live_count()
    }
}

/// A client-side handle to one object. Cheap to clone; calls through one stub arrive in order.
#[allow(missing_debug_implementations)] // the object type need not be Debug
pub struct Stub<O: DurableObject> {
    ns: Arc<NsInner<O>>,
    id: ObjectId,
}

impl<O: DurableObject> Clone for Stub<O> {
    fn clone(&self) -> Self {
        Stub {
            ns: self.ns.clone(),
            id: self.id.clone(),
        }
    }
}

impl<O: DurableObject> Stub<O> {
    /// The object's id.
    pub fn id(&self) -> &ObjectId {
        &self.id
    }

    /// Sends an HTTP request to the object's `fetch`.
    pub fn fetch(
        &self,
        req: Request,
    ) -> impl std::future::Future<Output = Result<Response>> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        let sent = self.ns.send(
            &self.id,
            Event::Job(Box::new(FetchJob::new(req, tx))),
            false,
        );
        async move {
            sent?;
            rx.await.unwrap_or(Err(Error::Unavailable))
        }
    }

    /// Sends a typed RPC message to the object's `Handler<M>`.
    pub fn call<M: Message>(
        &self,
        msg: M,
    ) -> impl std::future::Future<Output = Result<M::Reply>> + Send + 'static
    where
        O: Handler<M>,
    {
        let (tx, rx) = oneshot::channel();
        let sent = self
            .ns
            .send(&self.id, Event::Job(Box::new(CallJob::new(msg, tx))), false);
        async move {
            sent?;
            rx.await.unwrap_or(Err(Error::Unavailable))
        }
    }
}

/// A namespace with its object type erased, for routing by name (gateway, alarms, CLI).
pub(crate) trait AnyNamespace: Send + Sync {
    fn fetch_by_name(
        self: Arc<Self>,
        name: &str,
        req: Request,
    ) -> BoxFuture<'static, Result<Response>>;
    fn fetch_by_id(self: Arc<Self>, id: &str, req: Request)
    -> BoxFuture<'static, Result<Response>>;
    fn deliver_alarm(self: Arc<Self>, id: [u8; 32], at_ms: i64, retry_count: u32) -> Result<()>;
    /// Runs an operator's query on an existing object, as one of its events.
    fn sql(
        self: Arc<Self>,
        address: crate::admin::Address<'_>,
        query: String,
    ) -> BoxFuture<'static, Result<denizen_storage::Cursor>>;
    /// Opens the object if it is hibernated; nothing else.
    fn warm(self: Arc<Self>, id: [u8; 32]) -> Result<()>;
    fn live(&self, id: &[u8; 32]) -> bool;
    fn live_count(&self) -> usize;
    fn collect_lru(&self, out: &mut Vec<LruEntry>);
    fn stop_all(&self) -> BoxFuture<'_, ()>;
    fn kill_all(&self);
}

impl<O: DurableObject> AnyNamespace for NsInner<O> {
    fn fetch_by_name(
        self: Arc<Self>,
        name: &str,
        req: Request,
    ) -> BoxFuture<'static, Result<Response>> {
        let id = self.minter.id_for_name(name);
        Box::pin(Stub { ns: self, id }.fetch(req))
    }

    fn fetch_by_id(
        self: Arc<Self>,
        id: &str,
        req: Request,
    ) -> BoxFuture<'static, Result<Response>> {
        match self.minter.parse(id) {
            Ok(id) => Box::pin(Stub { ns: self, id }.fetch(req)),
            Err(e) => Box::pin(async move { Err(e) }),
        }
    }

    fn deliver_alarm(self: Arc<Self>, id: [u8; 32], at_ms: i64, retry_count: u32) -> Result<()> {
        self.send(
            &ObjectId::from_bytes(id),
            Event::Alarm { at_ms, retry_count },
            true,
        )
    }

    fn sql(
        self: Arc<Self>,
        address: crate::admin::Address<'_>,
        query: String,
    ) -> BoxFuture<'static, Result<denizen_storage::Cursor>> {
        let existing = crate::admin::existing_object(
            &self.minter,
            &self.shared.options.data_dir,
            &self.name,
            address,
        );
        let id = match existing {
            Ok((id, _)) => id,
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        let (tx, rx) = oneshot::channel();
        let sent = self.send(&id, Event::Job(Box::new(SqlJob::new(query, tx))), false);
        Box::pin(async move {
            sent?;
            rx.await.unwrap_or(Err(Error::Unavailable))
        })
    }

    fn warm(self: Arc<Self>, id: [u8; 32]) -> Result<()> {
        if self.is_live(&id) {
            return Ok(());
        }
        self.send(&ObjectId::from_bytes(id), Event::Warm, false)
    }

    fn live(&self, id: &[u8; 32]) -> bool {
        self.is_live(id)
    }

    fn live_count(&self) -> usize {
        NsInner::live_count(self)
    }

    fn collect_lru(&self, out: &mut Vec<LruEntry>) {
        NsInner::collect_lru(self, out)
    }

    fn stop_all(&self) -> BoxFuture<'_, ()> {
        Box::pin(NsInner::stop_all(self).in_current_span())
    }

    fn kill_all(&self) {
        NsInner::kill_all(self)
    }
}
