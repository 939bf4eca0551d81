//! The object's mailbox: a ractor actor that owns the instance and its `Ctx`, runs one event at a
//! time, commits after each, and hibernates when idle.

use std::future::Future;
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::oneshot;
use tracing::Instrument;

use crate::ctx::Ctx;
use crate::error::{Error, Result};
use crate::id::ObjectId;
use crate::later::{Answer, answer_or_defer};
use crate::namespace::{Gate, NsInner};
use crate::object::{AlarmInfo, DurableObject, Handler, Message, Request, Response};
use crate::socket::{InFlight, SocketEventKind, SocketId, WebSocket};
use crate::time::now_ms;

/// One unit of work that produces a reply, kept type-erased so RPC messages of any type share the
/// mailbox.
pub(crate) trait Job<O: DurableObject>: Send {
    fn run<'a>(&'a mut self, obj: &'a mut O, ctx: &'a mut Ctx<O>) -> BoxFuture<'a, Result<()>>;
    /// Called after the commit: deliver the reply.
    fn succeed(self: Box<Self>);
    fn fail(self: Box<Self>, error: Error);
    /// A result of `ctx.spawn` (ends one unit of background work).
    fn is_task(&self) -> bool {
        false
    }
}

pub(crate) struct FetchJob {
    req: Option<Request>,
    /// `None` once the answer is left to a later event (`ctx.respond_later`).
    resp: Option<Response>,
    answer: Answer,
}

impl FetchJob {
    pub(crate) fn new(req: Request, tx: oneshot::Sender<Result<Response>>) -> Self {
        FetchJob {
            req: Some(req),
            resp: None,
            answer: Answer::new(tx),
        }
    }
}

impl<O: DurableObject> Job<O> for FetchJob {
    fn run<'a>(&'a mut self, obj: &'a mut O, ctx: &'a mut Ctx<O>) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let req = self.req.take().ok_or(Error::Unavailable)?;
            let resp = obj.fetch(ctx, req).await?;
            self.resp = answer_or_defer(ctx, resp, &mut self.answer);
            Ok(())
        })
    }
    fn succeed(self: Box<Self>) {
        if let Some(resp) = self.resp {
            self.answer.send(Ok(resp));
        }
    }
    fn fail(self: Box<Self>, error: Error) {
        self.answer.send(Err(error));
    }
}

/// An operator's SQL query, run as an event of the object so it is serialized with the object's
/// own events and commits like them.
pub(crate) struct SqlJob {
    query: String,
    result: Option<denizen_storage::Cursor>,
    tx: oneshot::Sender<Result<denizen_storage::Cursor>>,
}

impl SqlJob {
    pub(crate) fn new(query: String, tx: oneshot::Sender<Result<denizen_storage::Cursor>>) -> Self {
        SqlJob {
            query,
            result: None,
            tx,
        }
    }
}

impl<O: DurableObject> Job<O> for SqlJob {
    fn run<'a>(&'a mut self, _obj: &'a mut O, ctx: &'a mut Ctx<O>) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let limits = ctx.ns.shared.options.operator_query_limits;
            let (query, storage) = (&self.query, ctx.storage());
            // A long query must not hold a worker thread other objects' events need.
            self.result = Some(off_worker(|| storage.exec_limited(query, (), &limits))?);
            Ok(())
        })
    }
    fn succeed(self: Box<Self>) {
        let _ = self.tx.send(self.result.ok_or(Error::Unavailable));
    }
    fn fail(self: Box<Self>, error: Error) {
        let _ = self.tx.send(Err(error));
    }
}

pub(crate) struct CallJob<M: Message> {
    msg: Option<M>,
    reply: Option<M::Reply>,
    tx: oneshot::Sender<Result<M::Reply>>,
}

impl<M: Message> CallJob<M> {
    pub(crate) fn new(msg: M, tx: oneshot::Sender<Result<M::Reply>>) -> Self {
        CallJob {
            msg: Some(msg),
            reply: None,
            tx,
        }
    }
}

impl<O: Handler<M>, M: Message> Job<O> for CallJob<M> {
    fn run<'a>(&'a mut self, obj: &'a mut O, ctx: &'a mut Ctx<O>) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let msg = self.msg.take().ok_or(Error::Unavailable)?;
            self.reply = Some(obj.handle(ctx, msg).await?);
            Ok(())
        })
    }
    fn succeed(self: Box<Self>) {
        let _ = self.tx.send(self.reply.ok_or(Error::Unavailable));
    }
    fn fail(self: Box<Self>, error: Error) {
        let _ = self.tx.send(Err(error));
    }
}

/// The output of a `ctx.spawn` future, handled as a message with nobody waiting for the reply.
pub(crate) struct TaskJob<M: Message> {
    msg: Option<M>,
}

impl<M: Message> TaskJob<M> {
    pub(crate) fn new(msg: M) -> Self {
        TaskJob { msg: Some(msg) }
    }
}

impl<O: Handler<M>, M: Message> Job<O> for TaskJob<M> {
    fn run<'a>(&'a mut self, obj: &'a mut O, ctx: &'a mut Ctx<O>) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let msg = self.msg.take().ok_or(Error::Unavailable)?;
            obj.handle(ctx, msg).await?;
            Ok(())
        })
    }
    fn succeed(self: Box<Self>) {}
    fn fail(self: Box<Self>, error: Error) {
        tracing::warn!(error = %error, "handling the result of a spawned task failed");
    }
    fn is_task(&self) -> bool {
        true
    }
}

pub(crate) enum Event<O: DurableObject> {
    Job(Box<dyn Job<O>>),
    Socket {
        socket: SocketId,
        kind: SocketEventKind,
        /// Counts the message against its socket's quota until it is handled.
        in_flight: Option<InFlight>,
    },
    Alarm {
        at_ms: i64,
        retry_count: u32,
    },
    /// A `wait_until` future (or a panicked task) finished.
    BackgroundDone,
    /// Only opens the object: its alarm is due soon.
    Warm,
    /// Not counted by the gate: sent by the actor's own idle timer.
    IdleCheck,
    /// Not counted by the gate: too many databases are open; hibernate now if idle.
    Evict,
    /// Not counted by the gate: finish what is queued before it, commit, and stop.
    Stop(oneshot::Sender<()>),
}

pub(crate) struct Args<O: DurableObject> {
    pub(crate) ns: Arc<NsInner<O>>,
    pub(crate) id: ObjectId,
    pub(crate) gate: Arc<Gate>,
}

pub(crate) struct ObjectActor<O> {
    span: tracing::Span,
    _object: PhantomData<fn() -> O>,
}

impl<O> ObjectActor<O> {
    pub(crate) fn new(span: tracing::Span) -> Self {
        ObjectActor {
            span,
            _object: PhantomData,
        }
    }
}

pub(crate) struct State<O: DurableObject> {
    ns: Arc<NsInner<O>>,
    id: ObjectId,
    gate: Arc<Gate>,
    instance: Option<O>,
    ctx: Option<Ctx<O>>,
    last_event: Instant,
    timer_armed: bool,
}

type Caught = std::result::Result<Result<()>, Box<dyn std::any::Any + Send>>;

pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_string()
    }
}

impl<O: DurableObject> Actor for ObjectActor<O> {
    type Msg = Event<O>;
    type State = State<O>;
    type Arguments = Args<O>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: Args<O>,
    ) -> std::result::Result<State<O>, ActorProcessingErr> {
        args.ns.shared.metrics.live_objects.inc();
        args.ns.shared.metrics.activations.inc();
        Ok(State {
            ns: args.ns,
            id: args.id,
            gate: args.gate,
            instance: None,
            ctx: None,
            last_event: Instant::now(),
            timer_armed: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        event: Event<O>,
        state: &mut State<O>,
    ) -> std::result::Result<(), ActorProcessingErr> {
        match event {
            Event::IdleCheck => {
                state.timer_armed = false;
                if state.idle_check(&myself, false) {
                    myself.stop(None);
                }
            }
            Event::Evict => {
                if state.idle_check(&myself, true) {
                    myself.stop(None);
                }
            }
            Event::Stop(done) => {
                state.gate.force_close();
                state.ns.remove_live(&state.id, &state.gate);
                state.hibernate();
                let _ = done.send(());
                myself.stop(None);
            }
            event => {
                state.process(event).instrument(self.span.clone()).await;
                state.gate.release();
                let now = Instant::now();
                state.last_event = now;
                state.gate.touch(state.ns.shared.clock_ms_at(now));
                if !state.timer_armed {
                    state.arm_timer(&myself, state.ns.shared.options.idle_timeout);
                }
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut State<O>,
    ) -> std::result::Result<(), ActorProcessingErr> {
        state.ns.shared.metrics.live_objects.dec();
        Ok(())
    }
}

impl<O: DurableObject> State<O> {
    fn arm_timer(&mut self, myself: &ActorRef<Event<O>>, after: Duration) {
        self.timer_armed = true;
        // The timer task ends by itself; nothing waits on it.
        drop(myself.send_after(after, || Event::IdleCheck));
    }

    /// Hibernates if nothing happened for the idle timeout (or at once when `now`) and nothing
    /// runs in the background. Returns true when the actor should stop.
    fn idle_check(&mut self, myself: &ActorRef<Event<O>>, now: bool) -> bool {
        let timeout = self.ns.shared.options.idle_timeout;
        let idle = self.last_event.elapsed();
        let busy = self.ctx.as_ref().is_some_and(|c| c.background > 0);
        if busy {
            if !self.timer_armed {
                self.arm_timer(myself, timeout);
            }
            return false;
        }
        if idle < timeout && !now {
            self.arm_timer(myself, timeout - idle);
            return false;
        }
        if !self.ns.try_evict(&self.id, &self.gate) {
            // An event is queued; it re-arms the timer when it finishes.
            return false;
        }
        self.hibernate();
        self.ns.shared.metrics.hibernations.inc();
        tracing::debug!("hibernated");
        true
    }

    /// Drops the instance and closes the database, recording size and activity in the catalog
    /// (an object never written to has neither).
    fn hibernate(&mut self) {
        self.instance = None;
        if let Some(mut ctx) = self.ctx.take().filter(|ctx| ctx.exists()) {
            // Only reads can be left open here: every event ends committed or rolled back.
            if let Err(e) = ctx.storage.commit() {
                tracing::error!(error = %e, "commit at hibernation failed");
            }
            // Only writes change the size; the catalog keeps the last one otherwise.
            let size = if ctx.storage.written_since_open() {
                ctx.storage.database_size().ok()
            } else {
                None
            };
            self.ns.shared.touch_later(denizen_storage::ObjectTouch {
                namespace: self.ns.name.to_string(),
                id: ctx.id.to_hex(),
                name: ctx.id.name().map(str::to_string),
                at_ms: now_ms(),
                size_bytes: size,
            });
        }
        self.ns.release_sockets(&self.id);
    }

    /// Opens the database and builds the instance (running `on_start`) if needed.
    async fn ensure_started(&mut self) -> Result<()> {
        if self.ctx.is_none() {
            let path = denizen_storage::object_path(
                &self.ns.shared.options.data_dir,
                &self.ns.name,
                &self.id.to_hex(),
            );
            // A new object opens in memory (its file is written at its first write); an existing
            // one is reopened: both quick enough to stay inline.
            let ctx = Ctx::open(&self.ns, &self.id, &path).map_err(|e| Error::StartFailed {
                message: e.to_string(),
            })?;
            self.ctx = Some(ctx);
        }
        if self.instance.is_none() {
            let timeout = self.ns.shared.options.event_timeout;
            let Some(ctx) = self.ctx.as_mut() else {
                return Err(Error::Unavailable);
            };
            let mut instance = (self.ns.factory)();
            ctx.storage.set_time_budget(timeout);
            let caught: Caught = AssertUnwindSafe(bounded(timeout, instance.on_start(ctx)))
                .catch_unwind()
                .await;
            // Writes alone join the transaction of the event that follows (one commit for both,
            // as storage writes coalesce in Durable Objects); if that event fails, they are
            // rolled back with it and the next instance runs on_start again. Anything on_start
            // reveals is committed and released now.
            let writes_only = matches!(caught, Ok(Ok(()))) && !ctx.holds_outputs();
            if !writes_only {
                self.finish(caught).await.map_err(|e| Error::StartFailed {
                    message: format!("on_start failed: {e}"),
                })?;
            }
            self.instance = Some(instance);
        }
        Ok(())
    }

    /// Commits a successful event and releases its outputs; rolls back and resets a failed one.
    async fn finish(&mut self, caught: Caught) -> Result<()> {
        let Some(ctx) = self.ctx.as_mut() else {
            return Err(Error::Unavailable);
        };
        let result = match caught {
            Ok(r) => r,
            Err(panic) => {
                let message = panic_message(&*panic);
                tracing::error!(panic = %message, "handler panicked");
                Err(Error::Panicked { message })
            }
        };
        let result = match result {
            Ok(()) => ctx.commit_writes().await,
            Err(e) => Err(e),
        };
        ctx.storage.set_time_budget(None);
        match result {
            Ok(()) => {
                ctx.release_outputs();
                Ok(())
            }
            Err(error) => {
                self.ns.shared.metrics.handler_errors.inc();
                self.instance = None;
                if let Err(e) = ctx.abort() {
                    // The connection is in an unknown state: reopen it on the next event.
                    tracing::error!(error = %e, "rollback failed; reopening the database");
                    let background = ctx.background;
                    self.ctx = None;
                    if background > 0 {
                        tracing::warn!(
                            "background work of a reset object will report to a new instance"
                        );
                    }
                }
                Err(error)
            }
        }
    }

    async fn process(&mut self, event: Event<O>) {
        if let Event::Warm = event {
            if let Err(error) = self.ensure_started().await {
                tracing::warn!(error = %error, "object failed to start ahead of its alarm");
            }
            return;
        }
        self.ns.shared.metrics.events.inc();
        if self.ns.shared.is_abandoning() && !matches!(event, Event::BackgroundDone) {
            self.fail_undelivered(event, Error::ShuttingDown);
            return;
        }
        if let Event::BackgroundDone = event {
            if let Some(ctx) = self.ctx.as_mut() {
                ctx.background = ctx.background.saturating_sub(1);
            }
            return;
        }
        if let Err(error) = self.ensure_started().await {
            tracing::warn!(error = %error, "object failed to start");
            self.fail_undelivered(event, error);
            return;
        }
        let timeout = self.ns.shared.options.event_timeout;
        let (Some(instance), Some(ctx)) = (self.instance.as_mut(), self.ctx.as_mut()) else {
            return;
        };
        ctx.storage.set_time_budget(timeout);
        match event {
            Event::Job(mut job) => {
                let is_task = job.is_task();
                let caught: Caught = AssertUnwindSafe(bounded(timeout, job.run(instance, ctx)))
                    .catch_unwind()
                    .await;
                if is_task {
                    ctx.background = ctx.background.saturating_sub(1);
                }
                match self.finish(caught).await {
                    Ok(()) => job.succeed(),
                    Err(e) => job.fail(e),
                }
            }
            Event::Socket {
                socket,
                kind,
                in_flight: _in_flight,
            } => {
                let ws = WebSocket { id: socket };
                let known = ctx.sockets.lock().sockets.contains_key(&socket);
                if !known {
                    return;
                }
                let closing = !matches!(kind, SocketEventKind::Message(_));
                let caught: Caught = match kind {
                    SocketEventKind::Message(frame) => {
                        AssertUnwindSafe(bounded(
                            timeout,
                            instance.websocket_message(ctx, ws, frame),
                        ))
                        .catch_unwind()
                        .await
                    }
                    SocketEventKind::Close {
                        code,
                        reason,
                        was_clean,
                    } => {
                        AssertUnwindSafe(bounded(
                            timeout,
                            instance.websocket_close(ctx, ws, code, reason, was_clean),
                        ))
                        .catch_unwind()
                        .await
                    }
                    SocketEventKind::Error(error) => {
                        AssertUnwindSafe(bounded(timeout, instance.websocket_error(ctx, ws, error)))
                            .catch_unwind()
                            .await
                    }
                };
                if let Err(e) = self.finish(caught).await {
                    tracing::warn!(error = %e, socket, "websocket handler failed");
                }
                if closing && let Some(ctx) = self.ctx.as_mut() {
                    ctx.forget_socket(socket);
                }
            }
            Event::Alarm { at_ms, retry_count } => self.run_alarm(at_ms, retry_count).await,
            Event::BackgroundDone
            | Event::Warm
            | Event::IdleCheck
            | Event::Evict
            | Event::Stop(_) => {}
        }
    }

    fn fail_undelivered(&mut self, event: Event<O>, error: Error) {
        match event {
            Event::Job(job) => {
                if job.is_task()
                    && let Some(ctx) = self.ctx.as_mut()
                {
                    ctx.background = ctx.background.saturating_sub(1);
                }
                job.fail(error)
            }
            Event::Alarm { retry_count, .. } => {
                // Not the handler's fault: retry without counting it.
                let delay = self.ns.shared.options.alarm_retry.jittered_delay(1);
                let next = now_ms().saturating_add(millis(delay));
                self.ns
                    .shared
                    .retry_alarm(&self.ns.name, *self.id.bytes(), next, retry_count);
            }
            Event::Socket { socket, kind, .. } if !matches!(kind, SocketEventKind::Message(_)) => {
                let sockets = self.ns.sockets_of(&self.id);
                self.ns.remove_socket(&sockets, socket);
            }
            _ => {}
        }
    }

    async fn run_alarm(&mut self, at_ms: i64, retry_count: u32) {
        let shared = self.ns.shared.clone();
        let timeout = shared.options.event_timeout;
        let (Some(instance), Some(ctx)) = (self.instance.as_mut(), self.ctx.as_mut()) else {
            return;
        };
        let stored = match ctx.stored_alarm() {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "could not read the stored alarm");
                return;
            }
        };
        let now = now_ms();
        match stored {
            None => {
                // Deleted (or already handled) since the index was written.
                let _ = ctx.storage.commit();
                shared.clear_alarm(&self.ns.name, &self.id);
            }
            Some(at) if at > now => {
                // Moved later since the index was written.
                let _ = ctx.storage.commit();
                shared.schedule_alarm(&self.ns.name, *self.id.bytes(), at, 0);
            }
            Some(_) => {
                shared.metrics.alarms_fired.inc();
                shared.metrics.alarm_lateness.observe(Duration::from_millis(
                    u64::try_from(now - at_ms).unwrap_or(0),
                ));
                // Inside the handler the alarm reads as unset unless the handler sets a new one.
                let caught: Caught = match ctx.delete_alarm() {
                    Ok(()) => {
                        let info = AlarmInfo {
                            retry_count,
                            is_retry: retry_count > 0,
                        };
                        AssertUnwindSafe(bounded(timeout, instance.alarm(ctx, info)))
                            .catch_unwind()
                            .await
                    }
                    Err(e) => Ok(Err(e)),
                };
                if let Err(error) = self.finish(caught).await {
                    let attempts = retry_count.saturating_add(1);
                    if let Some(delay) = shared.options.alarm_retry.next_delay(attempts) {
                        let next = now_ms().saturating_add(millis(delay));
                        tracing::warn!(error = %error, retry_count, "alarm handler failed; retrying");
                        shared.retry_alarm(&self.ns.name, *self.id.bytes(), next, attempts);
                    } else {
                        tracing::error!(error = %error, "alarm handler failed {} times; giving up", retry_count + 1);
                        self.give_up_alarm().await;
                    }
                }
            }
        }
    }

    async fn give_up_alarm(&mut self) {
        if self.ensure_started().await.is_err() {
            return;
        }
        if let Some(ctx) = self.ctx.as_mut() {
            let result = match ctx.delete_alarm() {
                Ok(()) => ctx.commit_writes().await,
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                tracing::error!(error = %e, "could not drop the failed alarm");
            }
        }
    }
}

/// Runs blocking `f` where it does not hold up the other tasks of a worker thread: on a
/// multi-threaded runtime the worker hands its other tasks to a new one meanwhile.
fn off_worker<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// `fut`, failing with [`Error::EventTimeout`] if it runs past `timeout`. A handler that completes
/// at once never arms the timer.
async fn bounded<F: Future<Output = Result<()>>>(timeout: Option<Duration>, fut: F) -> Result<()> {
    match timeout {
        Some(after) => tokio::time::timeout(after, fut)
            .await
            .unwrap_or(Err(Error::EventTimeout { after })),
        None => fut.await,
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
