//! One workflow instance as a durable object: its journal, its status, and the run task.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32};
use std::time::Duration;

use denizen_runtime::{AlarmInfo, Ctx, DurableObject, Handler, Message, Result as RtResult, Stub};
use futures_util::FutureExt;
use serde::Serialize;
use tokio::sync::Notify;

use super::Workflow;
use super::error::{Error, Result};
use super::index::{self, Indexed};
use super::record::{
    Attempt, EventRecord, IN_MEMORY_RETRY, INSTANCE_KEY, InstanceRecord, InstanceStatus,
    NotifyTarget, Status, StepInfo, StepState, event_key, from_ms, load_events, load_steps, now_ms,
    status_of, step_key,
};
use super::step::{Inner, Sink, Step, StepCall, StepOp, StepReply};

/// While a run is in progress the alarm is kept this far ahead: if the process dies, the alarm
/// (delivered after the restart) finds no run task and replays the instance.
pub(crate) const LEASE: Duration = Duration::from_secs(2);

/// The durable object behind every instance of workflow `W`.
#[allow(missing_debug_implementations)] // holds the application's workflow, which need not be Debug
pub struct Instance<W: Workflow> {
    workflow: Arc<W>,
    /// The generation of the run task alive in this process, if any.
    task: Option<u64>,
}

impl<W: Workflow> Instance<W> {
    pub(crate) fn new(workflow: Arc<W>) -> Self {
        Instance {
            workflow,
            task: None,
        }
    }
}

// ---- messages ----

/// Creates the instance with JSON params (already checked against `W::Params`).
#[derive(Debug)]
pub struct Create {
    pub workflow: String,
    pub params: String,
    pub notify: Option<NotifyTarget>,
}
impl Message for Create {
    type Reply = Result<()>;
}

/// The instance's status, output or error, and step history.
#[derive(Debug)]
pub struct GetStatus;
impl Message for GetStatus {
    type Reply = Result<InstanceStatus>;
}

/// An operator's command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Stop after the current step.
    Pause,
    /// Continue a paused instance.
    Resume,
    /// End the instance for good.
    Terminate,
    /// Clear the journal and events and run again with the same params.
    Restart,
}

impl Action {
    /// The action's name, as the HTTP routes spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Terminate => "terminate",
            Action::Restart => "restart",
        }
    }
}

/// An operator's action on the instance.
#[derive(Debug)]
pub struct Control(pub Action);
impl Message for Control {
    type Reply = Result<InstanceStatus>;
}

/// Sends an event (JSON payload) to the instance.
#[derive(Debug)]
pub struct SendEvent {
    pub event_type: String,
    pub payload: String,
}
impl Message for SendEvent {
    type Reply = Result<()>;
}

/// Internal: a step of the running task.
#[derive(Debug)]
pub struct StepMessage(pub(crate) StepCall);
impl Message for StepMessage {
    type Reply = Result<StepReply>;
}

/// Internal: the run task ended.
#[derive(Debug)]
pub struct RunEnded {
    generation: u64,
    outcome: Outcome,
}
#[derive(Debug)]
enum Outcome {
    Complete(String),
    Failed(String),
    Suspended,
}
impl Message for RunEnded {
    type Reply = ();
}

// ---- helpers ----

fn load(ctx: &mut Ctx<Instance<impl Workflow>>) -> Result<Option<InstanceRecord>> {
    Ok(ctx.storage().get::<InstanceRecord>(INSTANCE_KEY)?)
}

fn save<W: Workflow>(ctx: &mut Ctx<Instance<W>>, rec: &mut InstanceRecord) -> Result<()> {
    rec.updated_ms = now_ms();
    if rec.indexed != Some(rec.status) {
        rec.indexed = Some(rec.status);
        rec.index_seq += 1;
        index_status(ctx, rec);
    }
    ctx.storage().put(INSTANCE_KEY, rec)?;
    Ok(())
}

/// Sends the instance's status to its workflow's status index once this event commits.
fn index_status<W: Workflow>(ctx: &mut Ctx<Instance<W>>, rec: &InstanceRecord) {
    let msg = Indexed {
        id: rec.id.clone(),
        status: rec.status,
        seq: rec.index_seq,
    };
    let runtime = ctx.runtime();
    ctx.wait_until(index::report(runtime, rec.workflow.clone(), msg));
}

fn unknown<W: Workflow>(ctx: &Ctx<Instance<W>>) -> Error {
    Error::UnknownInstance {
        workflow: ctx.namespace().to_string(),
        id: ctx.id().name().unwrap_or_default().to_string(),
    }
}

#[derive(Serialize)]
struct Notification<'a> {
    seq: u64,
    workflow: &'a str,
    id: &'a str,
    status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    step: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

/// Path of the request an instance sends to its notify target.
pub const NOTIFY_PATH: &str = "/_workflow/event";

/// Tells the notify target (if any) about progress or completion, after this event commits.
/// Call it before saving `rec` (it numbers the notification).
fn notify<W: Workflow>(ctx: &mut Ctx<Instance<W>>, rec: &mut InstanceRecord, step: Option<&str>) {
    let Some(target) = rec.notify.clone() else {
        return;
    };
    rec.notify_seq += 1;
    let body = Notification {
        seq: rec.notify_seq,
        workflow: &rec.workflow,
        id: &rec.id,
        status: rec.status,
        step,
        output: rec
            .output
            .as_deref()
            .and_then(|o| serde_json::from_str(o).ok()),
        error: rec.error.as_deref(),
    };
    let Ok(body) = serde_json::to_vec(&body) else {
        return;
    };
    let req = http::Request::builder()
        .method(http::Method::POST)
        .uri(NOTIFY_PATH)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(bytes::Bytes::from(body));
    let Ok(req) = req else { return };
    let runtime = ctx.runtime();
    ctx.wait_until(async move {
        if let Err(e) = runtime.fetch(&target.namespace, &target.name, req).await {
            tracing::warn!(namespace = %target.namespace, name = %target.name, error = %e, "workflow notification not delivered");
        }
    });
}

impl<W: Workflow> Instance<W> {
    /// Starts (or replays) the workflow in a background task: the mailbox stays free for status
    /// queries, events and the task's own step records.
    fn start_run(&mut self, ctx: &mut Ctx<Self>, rec: &mut InstanceRecord) -> Result<()> {
        rec.generation += 1;
        if rec.status != Status::Queued {
            rec.status = Status::Running;
        }
        save(ctx, rec)?;
        ctx.set_alarm(from_ms(now_ms()) + LEASE)?;
        let journal = load_steps(ctx.storage())?;
        let stub: Stub<Self> = ctx
            .runtime()
            .namespace::<Self>(ctx.namespace())?
            .get(ctx.id().clone());
        let sink: Sink = Arc::new(move |call| {
            let reply = stub.call(StepMessage(call));
            Box::pin(async move { reply.await? })
        });
        let generation = rec.generation;
        let step = Step {
            inner: Arc::new(Inner {
                generation,
                journal,
                next: AtomicU32::new(0),
                sink,
                suspend: Notify::new(),
                suspended: AtomicBool::new(false),
                runtime: ctx.runtime(),
            }),
        };
        let params = serde_json::from_str::<W::Params>(&rec.params);
        let event = params.map(|payload| super::Event {
            id: rec.id.clone(),
            payload,
            created: from_ms(rec.created_ms),
        });
        let workflow = self.workflow.clone();
        self.task = Some(generation);
        tracing::debug!(namespace = %ctx.namespace(), id = %rec.id, generation, "workflow run starts");
        ctx.spawn(async move {
            let event = match event {
                Ok(event) => event,
                Err(e) => {
                    return RunEnded {
                        generation,
                        outcome: Outcome::Failed(Error::InvalidParams(e.to_string()).to_string()),
                    };
                }
            };
            let inner = step.inner.clone();
            // A panicking workflow ends errored instead of leaving a run that never reports.
            let run = std::panic::AssertUnwindSafe(workflow.run(event, step)).catch_unwind();
            let outcome = tokio::select! {
                biased;
                _ = inner.suspend.notified() => Outcome::Suspended,
                result = run => match result {
                    Ok(Ok(output)) => match serde_json::to_string(&output) {
                        Ok(json) => Outcome::Complete(json),
                        Err(e) => Outcome::Failed(Error::Codec(e.to_string()).to_string()),
                    },
                    Ok(Err(e)) => Outcome::Failed(e.to_string()),
                    Err(panic) => {
                        let message = panic
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| panic.downcast_ref::<String>().cloned())
                            .unwrap_or_default();
                        Outcome::Failed(format!("the workflow panicked: {message}"))
                    }
                },
            };
            RunEnded {
                generation,
                outcome,
            }
        });
        Ok(())
    }

    fn resumable(status: Status) -> bool {
        matches!(
            status,
            Status::Queued | Status::Running | Status::Sleeping | Status::Waiting
        )
    }

    fn step(&mut self, ctx: &mut Ctx<Self>, call: StepCall) -> Result<StepReply> {
        let Some(mut rec) = load(ctx)? else {
            return Err(unknown(ctx));
        };
        if call.generation != rec.generation || rec.status.is_final() {
            // A run this instance no longer wants (paused and resumed, restarted, terminated).
            return Ok(StepReply::Suspend);
        }
        let key = step_key(call.index);
        let existing = ctx.storage().get::<StepInfo>(&key)?;
        if let Some(s) = &existing
            && (s.name != call.name || s.kind != call.kind)
        {
            return Ok(StepReply::Mismatch(Error::NonDeterministic {
                index: call.index,
                journaled: format!("{} `{}`", s.kind.as_str(), s.name),
                found: format!("{} `{}`", call.kind.as_str(), call.name),
            }));
        }
        let now = now_ms();
        let mut info = existing.unwrap_or_else(|| StepInfo {
            index: call.index,
            name: call.name.clone(),
            kind: call.kind,
            state: StepState::Retrying,
            result: None,
            error: None,
            attempts: Vec::new(),
            next_attempt_ms: None,
            wake_ms: None,
            event_type: None,
            started_ms: now,
            finished_ms: None,
        });
        let paused = rec.status == Status::Paused;
        if !paused {
            rec.status = Status::Running;
        }
        let reply = match call.op {
            StepOp::Complete(result) => {
                match result {
                    Ok(json) => {
                        info.state = StepState::Complete;
                        info.result = Some(json);
                    }
                    Err(e) => {
                        info.state = StepState::Failed;
                        info.error = Some(e);
                    }
                }
                info.next_attempt_ms = None;
                info.finished_ms = Some(now);
                notify(ctx, &mut rec, Some(&call.name));
                if paused {
                    StepReply::Suspend
                } else {
                    StepReply::Proceed
                }
            }
            StepOp::Attempt {
                attempt,
                error,
                delay_ms,
                retry_at_ms,
            } => {
                info.state = StepState::Retrying;
                info.attempts.push(Attempt {
                    attempt,
                    error,
                    delay_ms,
                    at_ms: now,
                });
                info.next_attempt_ms = Some(retry_at_ms);
                if paused {
                    StepReply::Suspend
                } else if retry_at_ms - now < IN_MEMORY_RETRY.as_millis() as i64 {
                    StepReply::Proceed
                } else {
                    // A long delay: leave memory; the alarm replays the run at retry time.
                    ctx.set_alarm(from_ms(retry_at_ms))?;
                    StepReply::Suspend
                }
            }
            StepOp::Sleep { until_ms } => {
                info.wake_ms = Some(until_ms);
                if paused {
                    info.state = StepState::Sleeping;
                    StepReply::Suspend
                } else if now >= until_ms {
                    info.state = StepState::Complete;
                    info.finished_ms = Some(now);
                    StepReply::Proceed
                } else {
                    info.state = StepState::Sleeping;
                    rec.status = Status::Sleeping;
                    ctx.set_alarm(from_ms(until_ms))?;
                    StepReply::Suspend
                }
            }
            StepOp::Wait {
                event_type,
                deadline_ms,
            } => {
                info.wake_ms = Some(deadline_ms);
                info.event_type = Some(event_type.clone());
                let event = load_events(ctx.storage())?
                    .into_iter()
                    .find(|e| e.consumed_by.is_none() && e.event_type == event_type);
                if let Some(mut event) = event {
                    event.consumed_by = Some(call.index);
                    ctx.storage().put(&event_key(event.seq), &event)?;
                    info.state = StepState::Complete;
                    info.result = Some(event.payload.clone());
                    info.finished_ms = Some(now);
                    if paused {
                        StepReply::Suspend
                    } else {
                        StepReply::Event(event.payload)
                    }
                } else if paused {
                    info.state = StepState::Waiting;
                    StepReply::Suspend
                } else if now >= deadline_ms {
                    info.state = StepState::Failed;
                    info.error = Some(format!(
                        "timed out waiting for an event of type `{event_type}`"
                    ));
                    info.finished_ms = Some(now);
                    StepReply::Timeout
                } else {
                    info.state = StepState::Waiting;
                    rec.status = Status::Waiting;
                    ctx.set_alarm(from_ms(deadline_ms))?;
                    StepReply::Suspend
                }
            }
        };
        ctx.storage().put(&key, &info)?;
        save(ctx, &mut rec)?;
        if matches!(reply, StepReply::Suspend) && self.task == Some(call.generation) {
            // The task ends at this step; whatever wakes the instance starts a fresh one.
            self.task = None;
        }
        Ok(reply)
    }

    fn run_ended(&mut self, ctx: &mut Ctx<Self>, ended: RunEnded) -> Result<()> {
        if self.task == Some(ended.generation) {
            self.task = None;
        }
        let Some(mut rec) = load(ctx)? else {
            return Ok(());
        };
        if rec.generation != ended.generation || rec.status.is_final() {
            return Ok(());
        }
        match ended.outcome {
            Outcome::Complete(json) => {
                rec.status = Status::Complete;
                rec.output = Some(json);
                ctx.delete_alarm()?;
            }
            Outcome::Failed(error) => {
                tracing::info!(namespace = %ctx.namespace(), id = %rec.id, %error, "workflow errored");
                rec.status = Status::Errored;
                rec.error = Some(error);
                ctx.delete_alarm()?;
            }
            // The step that suspended set the status and the alarm.
            Outcome::Suspended => return Ok(()),
        }
        notify(ctx, &mut rec, None);
        save(ctx, &mut rec)?;
        Ok(())
    }

    fn control(&mut self, ctx: &mut Ctx<Self>, action: Action) -> Result<InstanceStatus> {
        let Some(mut rec) = load(ctx)? else {
            return Err(unknown(ctx));
        };
        let refuse = |status: Status| Error::InvalidState {
            action: action.as_str().into(),
            status: status.as_str().into(),
        };
        match action {
            Action::Pause => {
                if !Self::resumable(rec.status) {
                    return Err(refuse(rec.status));
                }
                rec.status = Status::Paused;
                ctx.delete_alarm()?;
                save(ctx, &mut rec)?;
            }
            Action::Resume => {
                if rec.status != Status::Paused {
                    return Err(refuse(rec.status));
                }
                rec.status = Status::Running;
                if self.task == Some(rec.generation) {
                    // The run paused in the middle of a step is still here: let it go on
                    // rather than start the step a second time.
                    save(ctx, &mut rec)?;
                    ctx.set_alarm(from_ms(now_ms()) + LEASE)?;
                } else {
                    self.start_run(ctx, &mut rec)?;
                }
            }
            Action::Terminate => {
                if rec.status.is_final() {
                    return Err(refuse(rec.status));
                }
                rec.status = Status::Terminated;
                rec.generation += 1;
                ctx.delete_alarm()?;
                notify(ctx, &mut rec, None);
                save(ctx, &mut rec)?;
            }
            Action::Restart => {
                for s in load_steps(ctx.storage())? {
                    ctx.storage().delete(&step_key(s.index))?;
                }
                for e in load_events(ctx.storage())? {
                    ctx.storage().delete(&event_key(e.seq))?;
                }
                rec.status = Status::Queued;
                rec.output = None;
                rec.error = None;
                self.start_run(ctx, &mut rec)?;
            }
        }
        self.status(ctx)
    }

    fn status(&mut self, ctx: &mut Ctx<Self>) -> Result<InstanceStatus> {
        let Some(rec) = load(ctx)? else {
            return Err(unknown(ctx));
        };
        let steps = load_steps(ctx.storage())?;
        let pending = load_events(ctx.storage())?
            .iter()
            .filter(|e| e.consumed_by.is_none())
            .count();
        Ok(status_of(&rec, steps, pending))
    }
}

impl<W: Workflow> DurableObject for Instance<W> {
    async fn on_start(&mut self, ctx: &mut Ctx<Self>) -> RtResult<()> {
        // Again on every activation: repairs a status whose send a crash cut off.
        if let Some(rec) = load(ctx).map_err(denizen_runtime::Error::msg)? {
            index_status(ctx, &rec);
        }
        Ok(())
    }

    async fn alarm(&mut self, ctx: &mut Ctx<Self>, _info: AlarmInfo) -> RtResult<()> {
        let Some(mut rec) = load(ctx).map_err(denizen_runtime::Error::msg)? else {
            return Ok(());
        };
        if !Self::resumable(rec.status) {
            return Ok(());
        }
        if self.task == Some(rec.generation) {
            // The run is alive in this process: keep the lease.
            ctx.set_alarm(from_ms(now_ms()) + LEASE)?;
            return Ok(());
        }
        // No run here: after a crash, a long retry delay, a sleep, or a wait's deadline.
        self.start_run(ctx, &mut rec)
            .map_err(denizen_runtime::Error::msg)
    }
}

impl<W: Workflow> Handler<Create> for Instance<W> {
    async fn handle(&mut self, ctx: &mut Ctx<Self>, msg: Create) -> RtResult<Result<()>> {
        if load(ctx).map_err(denizen_runtime::Error::msg)?.is_some() {
            return Ok(Err(Error::AlreadyExists {
                workflow: msg.workflow,
                id: ctx.id().name().unwrap_or_default().to_string(),
            }));
        }
        let now = now_ms();
        let mut rec = InstanceRecord {
            id: ctx.id().name().unwrap_or_default().to_string(),
            workflow: msg.workflow,
            params: msg.params,
            status: Status::Queued,
            output: None,
            error: None,
            generation: 0,
            next_event: 0,
            created_ms: now,
            updated_ms: now,
            notify: msg.notify,
            notify_seq: 0,
            indexed: None,
            index_seq: 0,
        };
        self.start_run(ctx, &mut rec)
            .map_err(denizen_runtime::Error::msg)?;
        Ok(Ok(()))
    }
}

impl<W: Workflow> Handler<GetStatus> for Instance<W> {
    async fn handle(
        &mut self,
        ctx: &mut Ctx<Self>,
        _: GetStatus,
    ) -> RtResult<Result<InstanceStatus>> {
        Ok(self.status(ctx))
    }
}

impl<W: Workflow> Handler<Control> for Instance<W> {
    async fn handle(
        &mut self,
        ctx: &mut Ctx<Self>,
        msg: Control,
    ) -> RtResult<Result<InstanceStatus>> {
        // A failure after a write must roll it back: turn it into an event error.
        match self.control(ctx, msg.0) {
            Err(Error::Runtime(m)) => Err(denizen_runtime::Error::msg(m)),
            other => Ok(other),
        }
    }
}

impl<W: Workflow> Handler<SendEvent> for Instance<W> {
    async fn handle(&mut self, ctx: &mut Ctx<Self>, msg: SendEvent) -> RtResult<Result<()>> {
        let Some(mut rec) = load(ctx).map_err(denizen_runtime::Error::msg)? else {
            return Ok(Err(unknown(ctx)));
        };
        if rec.status.is_final() {
            return Ok(Err(Error::InvalidState {
                action: "send an event to".into(),
                status: rec.status.as_str().into(),
            }));
        }
        let seq = rec.next_event;
        rec.next_event += 1;
        let event = EventRecord {
            seq,
            event_type: msg.event_type.clone(),
            payload: msg.payload,
            received_ms: now_ms(),
            consumed_by: None,
        };
        ctx.storage().put(&event_key(seq), &event)?;
        let wakes = rec.status == Status::Waiting
            && load_steps(ctx.storage())
                .map_err(denizen_runtime::Error::msg)?
                .last()
                .is_some_and(|s| {
                    s.state == StepState::Waiting
                        && s.event_type.as_deref() == Some(msg.event_type.as_str())
                });
        if wakes {
            self.start_run(ctx, &mut rec)
                .map_err(denizen_runtime::Error::msg)?;
        } else {
            save(ctx, &mut rec).map_err(denizen_runtime::Error::msg)?;
        }
        Ok(Ok(()))
    }
}

impl<W: Workflow> Handler<StepMessage> for Instance<W> {
    async fn handle(
        &mut self,
        ctx: &mut Ctx<Self>,
        msg: StepMessage,
    ) -> RtResult<Result<StepReply>> {
        match self.step(ctx, msg.0) {
            Err(Error::Runtime(m)) => Err(denizen_runtime::Error::msg(m)),
            other => Ok(other),
        }
    }
}

impl<W: Workflow> Handler<RunEnded> for Instance<W> {
    async fn handle(&mut self, ctx: &mut Ctx<Self>, msg: RunEnded) -> RtResult<()> {
        self.run_ended(ctx, msg)
            .map_err(denizen_runtime::Error::msg)
    }
}
