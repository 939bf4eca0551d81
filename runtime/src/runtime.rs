use std::any::Any;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock, mpsc as std_mpsc};
use std::time::{Duration, Instant};

use denizen_storage::{Catalog, CatalogWrite, DataDirLock, Durability, ObjectTouch, QueryLimits};
use futures_util::future::BoxFuture;
use tokio::sync::mpsc;

use crate::alarm;
use crate::error::{Error, Result};
use crate::id::ObjectId;
use crate::metrics::Metrics;
use crate::namespace::{AnyNamespace, LruEntry, Namespace, NsInner};
use crate::object::{DurableObject, Request, Response};
use crate::retry::RetryPolicy;

/// How the runtime runs. Every field has a default; see [`Options::default`].
#[derive(Clone, Debug)]
pub struct Options {
    /// Where object databases and the catalog live. Default `./data`.
    pub data_dir: PathBuf,
    /// An object with nothing to do for this long is evicted from memory. Default 10 s.
    pub idle_timeout: Duration,
    /// `Normal` survives a process crash; `Fsync` survives power loss too. Default `Normal`.
    pub durability: Durability,
    /// Events queued (plus the running one) per object before callers get `Overloaded`.
    /// Default 1024.
    pub mailbox_capacity: usize,
    /// At most this many objects (each with its SQLite database open, about 80 KiB) in memory;
    /// past it the least recently used idle ones hibernate early. Default 16,384 (about
    /// 1.3 GiB when that many are in use at once). Not bounded by the open-files limit: open
    /// objects share a pool of file descriptors, half the limit.
    pub max_open_objects: usize,
    /// How a failing alarm handler is retried. Default [`Options::DEFAULT_ALARM_RETRY`], as in
    /// Durable Objects.
    pub alarm_retry: RetryPolicy,
    /// A handler (any event, `on_start` included) running longer is stopped: its writes are
    /// rolled back, the instance is reset and the caller gets [`Error::EventTimeout`]; a SQL
    /// statement running past it is interrupted. Default 30 s; `None` for no bound. Long work
    /// belongs in `ctx.spawn`, which is not bounded.
    pub event_timeout: Option<Duration>,
    /// Messages one WebSocket may have waiting in its object's mailbox. Past it the transport
    /// stops reading from that peer until the object catches up, so one client flooding a shared
    /// object cannot fill its mailbox and get other clients' messages refused. Default 32.
    pub socket_message_quota: usize,
    /// Bounds on an operator's query through [`Runtime::sql`] (the admin SQL route and
    /// `denizen sql`). Default [`QueryLimits::OPERATOR`]: 5 s, 10,000 rows, 16 MiB.
    pub operator_query_limits: QueryLimits,
    /// How long [`Runtime::shutdown`] lets objects finish the events they have queued. Past it,
    /// events not yet started are refused with [`Error::ShuttingDown`] and a handler still
    /// running is abandoned uncommitted (nothing acknowledged is lost: only committed writes
    /// were acknowledged), so a hung handler cannot hold the process. Default 10 s.
    pub shutdown_timeout: Duration,
}

impl Options {
    /// Alarm retries as in Durable Objects: 2 s, doubling, ±25 % jitter, 6 retries.
    pub const DEFAULT_ALARM_RETRY: RetryPolicy =
        RetryPolicy::exponential(Duration::from_secs(2), 2.0)
            .with_max_attempts(7)
            .with_jitter(0.25);

    /// See [`Options::event_timeout`].
    pub const DEFAULT_EVENT_TIMEOUT: Duration = Duration::from_secs(30);
}

impl Default for Options {
    fn default() -> Self {
        Options {
            data_dir: PathBuf::from("data"),
            idle_timeout: Duration::from_secs(10),
            durability: Durability::Normal,
            mailbox_capacity: 1024,
            max_open_objects: DEFAULT_OPEN_OBJECTS,
            alarm_retry: Options::DEFAULT_ALARM_RETRY,
            event_timeout: Some(Options::DEFAULT_EVENT_TIMEOUT),
            socket_message_quota: 32,
            operator_query_limits: QueryLimits::OPERATOR,
            shutdown_timeout: Duration::from_secs(10),
        }
    }
}

/// The process's soft limit on open files, first raised (once) to its hard limit: object files
/// and sockets hold file descriptors, and the soft limit is often far below what the system
/// allows.
#[allow(unsafe_code)] // getrlimit, setrlimit
fn open_files_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        static RAISED: std::sync::Once = std::sync::Once::new();
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        RAISED.call_once(|| {
            // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
            unsafe {
                if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0
                    && limit.rlim_cur < limit.rlim_max
                {
                    limit.rlim_cur = limit.rlim_max;
                    libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
                }
            }
        });
        // SAFETY: getrlimit only writes the struct we pass.
        let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
        (rc == 0).then_some(limit.rlim_cur)
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// See [`Options::max_open_objects`].
const DEFAULT_OPEN_OBJECTS: usize = 16_384;

/// One row of a namespace listing.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ObjectInfo {
    /// Its id, in hex.
    pub id: String,
    /// The name it was addressed by, if any.
    pub name: Option<String>,
    /// When it was created (its first write), epoch milliseconds.
    pub created_ms: i64,
    /// When it was last active, epoch milliseconds.
    pub last_active_ms: i64,
    /// Its database's size at its last write.
    pub size_bytes: u64,
    /// In memory now (not hibernated).
    pub live: bool,
}

/// Work for the catalog writer thread: writes, answered (when asked) once committed, and
/// flushes, answered once everything sent before is committed.
enum CatalogOp {
    Write(CatalogWrite, Option<RecordedAck>),
    Flush(RecordedAck),
}

/// The answer to a catalog write: it is committed, or why not.
pub(crate) type RecordedAck = tokio::sync::oneshot::Sender<std::result::Result<(), String>>;
pub(crate) type Recorded = tokio::sync::oneshot::Receiver<std::result::Result<(), String>>;

struct NsEntry {
    erased: Arc<dyn AnyNamespace>,
    typed: Arc<dyn Any + Send + Sync>,
}

/// State shared by every namespace and object of one runtime.
/// Minimum time between two scans for least recently used objects.
const TRIM_SPACING_MS: u64 = 50;

pub(crate) struct Shared {
    pub(crate) options: Options,
    pub(crate) secret: [u8; 32],
    pub(crate) catalog: Arc<Catalog>,
    pub(crate) metrics: Metrics,
    pub(crate) next_socket_id: AtomicU64,
    catalog_tx: std::sync::Mutex<Option<std_mpsc::Sender<CatalogOp>>>,
    /// Held from build to the end of shutdown.
    data_dir_lock: std::sync::Mutex<Option<DataDirLock>>,
    alarms_tx: mpsc::UnboundedSender<alarm::Op>,
    namespaces: RwLock<HashMap<String, NsEntry>>,
    shutting_down: AtomicBool,
    /// Turns true when shutdown starts, for work off the turn that a caller waits on.
    stopping: tokio::sync::watch::Sender<bool>,
    /// Shutdown ran out of time: objects refuse the events they still have queued.
    abandoning: AtomicBool,
    started: Instant,
    last_trim_ms: AtomicU64,
    trim_deferred: AtomicBool,
}

impl Shared {
    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Relaxed)
    }

    /// Completes once shutdown has started (at once if it has).
    pub(crate) fn stopping(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.stopping.subscribe();
        async move {
            // An error means the runtime is gone: stopping too.
            let _ = rx.wait_for(|stopping| *stopping).await;
        }
    }

    pub(crate) fn is_abandoning(&self) -> bool {
        self.abandoning.load(Relaxed)
    }

    pub(crate) fn namespace_arc<O: DurableObject>(&self, name: &str) -> Result<Arc<NsInner<O>>> {
        let map = self.namespaces.read().unwrap_or_else(|e| e.into_inner());
        let entry = map
            .get(name)
            .ok_or_else(|| Error::UnknownNamespace(name.to_string()))?;
        entry
            .typed
            .clone()
            .downcast::<NsInner<O>>()
            .map_err(|_| Error::WrongObjectType {
                name: name.to_string(),
            })
    }

    fn erased(&self, name: &str) -> Result<Arc<dyn AnyNamespace>> {
        let map = self.namespaces.read().unwrap_or_else(|e| e.into_inner());
        map.get(name)
            .map(|e| e.erased.clone())
            .ok_or_else(|| Error::UnknownNamespace(name.to_string()))
    }

    pub(crate) fn clock_ms(&self) -> u64 {
        self.clock_ms_at(Instant::now())
    }

    pub(crate) fn clock_ms_at(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.started).as_millis()).unwrap_or(u64::MAX)
    }

    /// Past the bound on open objects, asks the least recently used ones to hibernate, down to
    /// 80% of the bound. Evictions land asynchronously, so a scan runs at most every 50 ms.
    pub(crate) fn check_open_bound(self: &Arc<Self>) {
        let bound = self.options.max_open_objects.max(1);
        // The gauge counts started instances; the one being activated is not in it yet.
        let live = usize::try_from(self.metrics.live_objects.get()).unwrap_or(0);
        if live < bound {
            return;
        }
        let now = self.clock_ms();
        let last = self.last_trim_ms.load(Relaxed);
        // A scan walks every live object, so scans are spaced out; evictions from the last one
        // are still in flight. A skipped scan is retried once the spacing has passed, so the
        // bound holds even when activations stop right after a burst.
        if now.saturating_sub(last) < TRIM_SPACING_MS {
            self.defer_trim(TRIM_SPACING_MS - now.saturating_sub(last));
            return;
        }
        if self
            .last_trim_ms
            .compare_exchange(last, now.max(1), Relaxed, Relaxed)
            .is_err()
        {
            return;
        }
        let mut all: Vec<LruEntry> = Vec::with_capacity(live);
        {
            let map = self.namespaces.read().unwrap_or_else(|e| e.into_inner());
            for entry in map.values() {
                entry.erased.collect_lru(&mut all);
            }
        }
        all.sort_unstable_by_key(|(used, _)| *used);
        let target = bound - bound / 5;
        let excess = all.len().saturating_sub(target);
        for (_, evict) in all.into_iter().take(excess) {
            evict();
        }
    }

    fn defer_trim(self: &Arc<Self>, after_ms: u64) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.trim_deferred.swap(true, Relaxed) {
            return;
        }
        let shared = self.clone();
        handle.spawn(async move {
            tokio::time::sleep(Duration::from_millis(after_ms + 1)).await;
            shared.trim_deferred.store(false, Relaxed);
            if !shared.is_shutting_down() {
                shared.check_open_bound();
            }
        });
    }

    /// Queues a catalog write for the writer thread's next batch (one commit for everything
    /// queued meanwhile). With `ack`, it is answered once committed.
    fn catalog_write(&self, write: CatalogWrite, ack: Option<RecordedAck>) {
        let tx = crate::socket::lock(&self.catalog_tx);
        let unsent = match tx.as_ref() {
            Some(tx) => match tx.send(CatalogOp::Write(write, ack)) {
                Ok(()) => None,
                Err(std_mpsc::SendError(CatalogOp::Write(write, ack))) => Some((write, ack)),
                Err(_) => None,
            },
            None => Some((write, ack)),
        };
        drop(tx);
        // The writer is gone (the runtime stopped): write it here.
        if let Some((write, ack)) = unsent {
            let written = self.catalog.write(&[write]).map_err(|e| e.to_string());
            if let Some(ack) = ack {
                let _ = ack.send(written);
            }
        }
    }

    /// Queues a catalog write and answers once it is committed.
    fn catalog_write_acked(&self, write: CatalogWrite) -> Recorded {
        let (ack, done) = tokio::sync::oneshot::channel();
        self.catalog_write(write, Some(ack));
        done
    }

    /// Records activity in the catalog in the background (batched).
    pub(crate) fn touch_later(&self, touch: ObjectTouch) {
        self.catalog_write(CatalogWrite::Touch(touch), None);
    }

    /// Records a new object in the catalog; the receiver answers once its row is committed.
    pub(crate) fn register_object(&self, touch: ObjectTouch) -> Recorded {
        self.catalog_write_acked(CatalogWrite::Touch(touch))
    }

    /// Puts an alarm the object is about to commit into the due index; the receiver answers once
    /// it is there. The index may name an alarm that never commits (harmless: the object's own
    /// file is checked when it fires), but must never miss one that did.
    pub(crate) fn record_alarm(&self, namespace: &str, id: &ObjectId, at_ms: i64) -> Recorded {
        self.catalog_write_acked(CatalogWrite::SetAlarm {
            namespace: namespace.to_string(),
            id: id.to_hex(),
            at_ms,
            retry_count: 0,
        })
    }

    /// Waits until every catalog write queued before is committed.
    async fn flush_catalog(&self) {
        let (ack, done) = tokio::sync::oneshot::channel();
        let sent = {
            let tx = crate::socket::lock(&self.catalog_tx);
            tx.as_ref()
                .is_some_and(|tx| tx.send(CatalogOp::Flush(ack)).is_ok())
        };
        if sent {
            let _ = done.await;
        }
    }

    /// After the object committed an alarm at `at_ms` (the catalog row was written before).
    pub(crate) fn schedule_alarm(
        &self,
        namespace: &str,
        id: [u8; 32],
        at_ms: i64,
        retry_count: u32,
    ) {
        let _ = self.alarms_tx.send(alarm::Op::Set {
            key: alarm::key(namespace, id),
            at_ms,
            retry_count,
        });
    }

    /// A failed alarm: durable retry record, then the timer.
    /// (The alarm's own row stays in the index until then, so a crash before the retry is
    /// recorded delivers it again: at least once.)
    pub(crate) fn retry_alarm(&self, namespace: &str, id: [u8; 32], at_ms: i64, retry_count: u32) {
        self.catalog_write(
            CatalogWrite::SetAlarm {
                namespace: namespace.to_string(),
                id: ObjectId::from_bytes(id).to_hex(),
                at_ms,
                retry_count,
            },
            None,
        );
        self.schedule_alarm(namespace, id, at_ms, retry_count);
    }

    /// After the object committed that it has no alarm. (If the index keeps the row, the alarm
    /// wakes the object once for nothing.)
    pub(crate) fn clear_alarm(&self, namespace: &str, id: &ObjectId) {
        self.catalog_write(
            CatalogWrite::DeleteAlarm {
                namespace: namespace.to_string(),
                id: id.to_hex(),
            },
            None,
        );
        let _ = self.alarms_tx.send(alarm::Op::Delete {
            key: alarm::key(namespace, *id.bytes()),
        });
    }

    /// Opens a hibernated object shortly before its alarm, if that evicts nobody.
    pub(crate) fn warm_for_alarm(&self, namespace: &str, id: [u8; 32]) {
        if self.is_shutting_down() {
            return;
        }
        let bound = self.options.max_open_objects.max(1);
        let live = usize::try_from(self.metrics.live_objects.get()).unwrap_or(usize::MAX);
        if live >= bound - bound / 5 {
            return;
        }
        if let Ok(ns) = self.erased(namespace)
            && let Err(e) = ns.warm(id)
        {
            tracing::debug!(namespace, error = %e, "object not woken ahead of its alarm");
        }
    }

    pub(crate) fn deliver_alarm(
        &self,
        namespace: &str,
        id: [u8; 32],
        at_ms: i64,
        retry_count: u32,
    ) {
        if self.is_shutting_down() {
            return;
        }
        let result = self
            .erased(namespace)
            .and_then(|ns| ns.deliver_alarm(id, at_ms, retry_count));
        match result {
            Ok(()) => {}
            Err(Error::ShuttingDown) => {}
            Err(e) => tracing::warn!(namespace, error = %e, "alarm could not be delivered"),
        }
    }
}

/// Lists a namespace from the catalog (after flushing pending activity records), reading it on
/// the blocking pool.
pub(crate) async fn list_objects(
    shared: &Shared,
    namespace: &str,
    live: &(dyn Fn(&[u8; 32]) -> bool + Sync),
) -> Result<Vec<ObjectInfo>> {
    shared.flush_catalog().await;
    let catalog = shared.catalog.clone();
    let ns = namespace.to_string();
    let records = tokio::task::spawn_blocking(move || catalog.list_objects(&ns))
        .await
        .map_err(|e| Error::StartFailed {
            message: format!("listing the catalog panicked: {e}"),
        })??;
    Ok(records
        .into_iter()
        .map(|r| {
            let is_live = parse_hex32(&r.id).is_some_and(|b| live(&b));
            ObjectInfo {
                id: r.id,
                name: r.name,
                created_ms: r.created_ms,
                last_active_ms: r.last_active_ms,
                size_bytes: r.size_bytes,
                live: is_live,
            }
        })
        .collect())
}

fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
        let text = std::str::from_utf8(chunk).ok()?;
        out[i] = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
}

type Registration = Box<dyn FnOnce(&Arc<Shared>) -> Result<(String, NsEntry)>>;

/// Builds a [`Runtime`]: options plus the object types, each under a namespace name.
#[allow(missing_debug_implementations)] // holds registration closures
pub struct Builder {
    options: Options,
    registrations: Vec<Registration>,
}

fn valid_namespace(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Builder {
    /// Replaces every option at once.
    pub fn options(mut self, options: Options) -> Self {
        self.options = options;
        self
    }
    /// See [`Options::data_dir`].
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.options.data_dir = dir.into();
        self
    }
    /// See [`Options::idle_timeout`].
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.options.idle_timeout = timeout;
        self
    }
    /// See [`Options::durability`].
    pub fn durability(mut self, durability: Durability) -> Self {
        self.options.durability = durability;
        self
    }
    /// See [`Options::mailbox_capacity`] (at least 1).
    pub fn mailbox_capacity(mut self, capacity: usize) -> Self {
        self.options.mailbox_capacity = capacity.max(1);
        self
    }
    /// See [`Options::event_timeout`].
    pub fn event_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.options.event_timeout = timeout;
        self
    }
    /// See [`Options::max_open_objects`] (at least 1).
    pub fn max_open_objects(mut self, bound: usize) -> Self {
        self.options.max_open_objects = bound.max(1);
        self
    }

    /// Registers an object type built with `Default`.
    pub fn object<O: DurableObject + Default>(self, namespace: &str) -> Self {
        self.object_with(namespace, O::default)
    }

    /// Registers an object type built by `factory` on every activation.
    pub fn object_with<O: DurableObject>(
        mut self,
        namespace: &str,
        factory: impl Fn() -> O + Send + Sync + 'static,
    ) -> Self {
        let name = namespace.to_string();
        self.registrations.push(Box::new(move |shared| {
            if !valid_namespace(&name) {
                return Err(Error::InvalidNamespace { name });
            }
            let inner = Arc::new(NsInner::new(&name, Box::new(factory), shared.clone()));
            let entry = NsEntry {
                erased: inner.clone(),
                typed: inner,
            };
            Ok((name, entry))
        }));
        self
    }

    /// Opens the data directory and starts the alarm timer. Call inside a tokio runtime.
    pub fn build(self) -> Result<Runtime> {
        let mut options = self.options;
        // Object databases and WALs share half the descriptors; the rest is left to sockets.
        if let Some(limit) = open_files_limit() {
            denizen_storage::set_max_open_files(usize::try_from(limit / 2).unwrap_or(usize::MAX));
        }
        // Object paths are built from it, and the object VFS takes absolute paths as they are.
        options.data_dir = std::path::absolute(&options.data_dir).map_err(|source| {
            Error::Storage(denizen_storage::Error::Io {
                path: options.data_dir.clone(),
                source,
            })
        })?;
        // One process per data directory: object databases are opened without SQLite's locks.
        let data_dir_lock = DataDirLock::acquire(&options.data_dir)?;
        let catalog = Arc::new(Catalog::open(&options.data_dir, options.durability)?);
        let secret = catalog.secret_key()?;
        let (alarms_tx, alarms_rx) = mpsc::unbounded_channel();
        let (catalog_tx, catalog_rx) = std_mpsc::channel();
        let shared = Arc::new(Shared {
            options,
            secret,
            catalog: catalog.clone(),
            metrics: Metrics::default(),
            next_socket_id: AtomicU64::new(1),
            catalog_tx: std::sync::Mutex::new(Some(catalog_tx)),
            data_dir_lock: std::sync::Mutex::new(Some(data_dir_lock)),
            alarms_tx,
            namespaces: RwLock::new(HashMap::new()),
            shutting_down: AtomicBool::new(false),
            stopping: tokio::sync::watch::Sender::new(false),
            abandoning: AtomicBool::new(false),
            started: Instant::now(),
            last_trim_ms: AtomicU64::new(0),
            trim_deferred: AtomicBool::new(false),
        });
        {
            let mut map = shared.namespaces.write().unwrap_or_else(|e| e.into_inner());
            for register in self.registrations {
                let (name, entry) = register(&shared)?;
                if map.insert(name.clone(), entry).is_some() {
                    return Err(Error::DuplicateNamespace { name });
                }
            }
        }
        std::thread::Builder::new()
            .name("denizen-catalog".into())
            .spawn(move || catalog_writer(catalog, catalog_rx))?;
        for record in shared.catalog.alarms()? {
            match parse_hex32(&record.id) {
                Some(id) => {
                    shared.schedule_alarm(&record.namespace, id, record.at_ms, record.retry_count)
                }
                None => {
                    tracing::warn!(id = %record.id, "ignoring a malformed alarm row in the catalog")
                }
            }
        }
        tokio::spawn(alarm::run(Arc::downgrade(&shared), alarms_rx));
        Ok(Runtime { shared })
    }
}

/// Writes the catalog in batches, on a thread of its own: one transaction for everything queued.
fn catalog_writer(catalog: Arc<Catalog>, rx: std_mpsc::Receiver<CatalogOp>) {
    let mut batch = Vec::new();
    let mut acks = Vec::new();
    while let Ok(op) = rx.recv() {
        let mut next = Some(op);
        while let Some(op) = next.take() {
            match op {
                CatalogOp::Write(write, ack) => {
                    batch.push(write);
                    acks.extend(ack);
                }
                CatalogOp::Flush(ack) => acks.push(ack),
            }
            if batch.len() < 4096 {
                next = rx.try_recv().ok();
            }
        }
        let written = if batch.is_empty() {
            Ok(())
        } else {
            catalog.write(&batch).map_err(|e| e.to_string())
        };
        if let Err(e) = &written {
            tracing::warn!(error = %e, writes = batch.len(), "could not write the catalog");
        }
        batch.clear();
        for ack in acks.drain(..) {
            let _ = ack.send(written.clone());
        }
    }
}

/// The object host. Cheap to clone.
#[derive(Clone)]
#[allow(missing_debug_implementations)] // everything it holds is shared state
pub struct Runtime {
    shared: Arc<Shared>,
}

impl Runtime {
    /// A builder with the default [`Options`] and no object types yet.
    pub fn builder() -> Builder {
        Builder {
            options: Options::default(),
            registrations: Vec::new(),
        }
    }

    pub(crate) fn from_shared(shared: Arc<Shared>) -> Self {
        Runtime { shared }
    }

    /// The typed namespace registered under `name`.
    pub fn namespace<O: DurableObject>(&self, name: &str) -> Result<Namespace<O>> {
        Ok(Namespace {
            inner: self.shared.namespace_arc(name)?,
        })
    }

    /// Whether a namespace of that name is registered.
    pub fn has_namespace(&self, name: &str) -> bool {
        self.shared.erased(name).is_ok()
    }

    /// The registered namespace names, sorted.
    pub fn namespaces(&self) -> Vec<String> {
        let map = self
            .shared
            .namespaces
            .read()
            .unwrap_or_else(|e| e.into_inner());
        let mut names: Vec<String> = map.keys().cloned().collect();
        names.sort();
        names
    }

    /// `fetch` on the object `name` of namespace `namespace`, whatever its type (for routers).
    pub fn fetch(
        &self,
        namespace: &str,
        name: &str,
        req: Request,
    ) -> BoxFuture<'static, Result<Response>> {
        match self.shared.erased(namespace) {
            Ok(ns) => ns.fetch_by_name(name, req),
            Err(e) => Box::pin(async move { Err(e) }),
        }
    }

    /// `fetch` on an object addressed by its hex id.
    pub fn fetch_by_id(
        &self,
        namespace: &str,
        id: &str,
        req: Request,
    ) -> BoxFuture<'static, Result<Response>> {
        match self.shared.erased(namespace) {
            Ok(ns) => ns.fetch_by_id(id, req),
            Err(e) => Box::pin(async move { Err(e) }),
        }
    }

    /// Runs an operator's SQL query on an existing object of a running runtime, as one of the
    /// object's events: serialized with its other events, committed like them, under the same
    /// rules as `ctx.storage().exec` (no `BEGIN`/`COMMIT`). Unknown objects are an error, never
    /// created. The object's in-memory state does not see what the query changed until it
    /// reads storage again.
    pub async fn sql(
        &self,
        namespace: &str,
        address: crate::admin::Address<'_>,
        query: &str,
    ) -> Result<denizen_storage::Cursor> {
        let ns = self.shared.erased(namespace)?;
        ns.sql(address, query.to_string()).await
    }

    /// Every object ever created in a namespace (registered or not: the catalog remembers).
    pub async fn list_objects(&self, namespace: &str) -> Result<Vec<ObjectInfo>> {
        let erased = self.shared.erased(namespace).ok();
        list_objects(&self.shared, namespace, &|id| {
            erased.as_ref().is_some_and(|ns| ns.live(id))
        })
        .await
    }

    /// Objects in memory now, across namespaces.
    pub fn live_objects(&self) -> usize {
        let map = self
            .shared
            .namespaces
            .read()
            .unwrap_or_else(|e| e.into_inner());
        map.values().map(|e| e.erased.live_count()).sum()
    }

    /// The runtime's metrics (see [`Metrics::register`] to expose them).
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// The options it was built with.
    pub fn options(&self) -> &Options {
        &self.shared.options
    }

    /// Stops accepting events, lets every object finish what it has queued (for up to
    /// [`Options::shutdown_timeout`]), commits, closes the databases and flushes the catalog.
    /// Sockets stay registered until the transport closes them.
    pub async fn shutdown(&self) {
        self.shared.shutting_down.store(true, Relaxed);
        self.shared.stopping.send_replace(true);
        let namespaces: Vec<Arc<dyn AnyNamespace>> = {
            let map = self
                .shared
                .namespaces
                .read()
                .unwrap_or_else(|e| e.into_inner());
            map.values().map(|e| e.erased.clone()).collect()
        };
        let deadline = self.shared.options.shutdown_timeout;
        let stopped = tokio::time::timeout(
            deadline,
            futures_util::future::join_all(namespaces.iter().map(|ns| ns.stop_all())),
        )
        .await
        .is_ok();
        if !stopped {
            self.shared.abandoning.store(true, Relaxed);
            tracing::warn!(
                ?deadline,
                "objects still busy at the shutdown deadline: their queued events are refused and running handlers abandoned uncommitted"
            );
            for ns in &namespaces {
                ns.kill_all();
            }
        }
        self.shared.flush_catalog().await;
        self.shared
            .namespaces
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        crate::socket::lock(&self.shared.catalog_tx).take();
        // Every object database is closed: another process may use the directory now. Not so
        // when objects were abandoned: they may still hold their files until the process exits.
        if stopped {
            crate::socket::lock(&self.shared.data_dir_lock).take();
        }
    }
}
