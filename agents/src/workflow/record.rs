//! What an instance keeps in its SQLite file (KV entries), and the status it reports.

use std::time::Duration;

use denizen_storage::{ListOptions, Storage};
use serde::{Deserialize, Serialize};

use super::error::Result;

pub(crate) const INSTANCE_KEY: &str = "wf:instance";
pub(crate) const STEP_PREFIX: &str = "wf:step:";
pub(crate) const EVENT_PREFIX: &str = "wf:event:";

/// Retry delays shorter than this are waited out in memory; longer ones suspend the instance
/// and its alarm resumes it.
pub(crate) const IN_MEMORY_RETRY: Duration = Duration::from_secs(1);

pub(crate) fn step_key(index: u32) -> String {
    format!("{STEP_PREFIX}{index:010}")
}

pub(crate) fn event_key(seq: u64) -> String {
    format!("{EVENT_PREFIX}{seq:020}")
}

pub(crate) use denizen_runtime::time::{from_ms, now_ms, to_ms};

/// Where an instance is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Created; no step has started yet.
    Queued,
    /// A run is in progress (or about to resume after a crash or a retry delay).
    Running,
    /// In a durable sleep; out of memory until its alarm.
    Sleeping,
    /// Waiting for an event; out of memory until it comes or times out.
    Waiting,
    /// Paused by an operator; resumes on `resume`.
    Paused,
    /// `run` returned an error (or a step failed and the workflow propagated it).
    Errored,
    /// Stopped by an operator; final.
    Terminated,
    /// `run` returned its output; final.
    Complete,
}

impl Status {
    /// The status's name, as the API reports it.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Sleeping => "sleeping",
            Status::Waiting => "waiting",
            Status::Paused => "paused",
            Status::Errored => "errored",
            Status::Terminated => "terminated",
            Status::Complete => "complete",
        }
    }

    /// The status named `name` (as [`Status::as_str`] writes it).
    pub fn from_name(name: &str) -> Option<Status> {
        [
            Status::Queued,
            Status::Running,
            Status::Sleeping,
            Status::Waiting,
            Status::Paused,
            Status::Errored,
            Status::Terminated,
            Status::Complete,
        ]
        .into_iter()
        .find(|s| s.as_str() == name)
    }

    /// Complete, errored or terminated: nothing more happens unless restarted.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Status::Complete | Status::Errored | Status::Terminated
        )
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What kind of step a journal entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepKind {
    /// `step.run`: a closure, journaled with its result.
    Run,
    /// `step.sleep`: a durable sleep.
    Sleep,
    /// `step.wait_for_event`: an event of a type, or a deadline.
    Wait,
}

impl StepKind {
    /// The kind's name, as the API reports it.
    pub fn as_str(self) -> &'static str {
        match self {
            StepKind::Run => "run",
            StepKind::Sleep => "sleep",
            StepKind::Wait => "wait",
        }
    }
}

/// Where a step is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepState {
    /// A `run` step between failed attempts.
    Retrying,
    /// A `sleep` step before its end.
    Sleeping,
    /// A `wait_for_event` step before its event or deadline.
    Waiting,
    /// Done, its result journaled.
    Complete,
    /// Failed for good, its error journaled.
    Failed,
}

/// One failed attempt of a `run` step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// Its number, the first attempt being 1.
    pub attempt: u32,
    /// Its error.
    pub error: String,
    /// The delay chosen before the next attempt.
    pub delay_ms: i64,
    /// When it failed, epoch milliseconds.
    pub at_ms: i64,
}

/// One journal entry: a step of the workflow, in the order the code reached it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StepInfo {
    pub index: u32,
    pub name: String,
    pub kind: StepKind,
    pub state: StepState,
    /// The step's result as JSON text (`run`: the closure's value; `wait`: the event payload).
    pub result: Option<String>,
    pub error: Option<String>,
    /// Failed attempts, in order.
    pub attempts: Vec<Attempt>,
    pub next_attempt_ms: Option<i64>,
    /// Sleep: when it ends. Wait: its deadline.
    pub wake_ms: Option<i64>,
    pub event_type: Option<String>,
    pub started_ms: i64,
    pub finished_ms: Option<i64>,
}

/// Where an instance reports its progress and completion (any object's `fetch`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotifyTarget {
    /// The object's namespace.
    pub namespace: String,
    /// The object's name.
    pub name: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct InstanceRecord {
    pub id: String,
    pub workflow: String,
    pub params: String,
    pub status: Status,
    pub output: Option<String>,
    pub error: Option<String>,
    pub generation: u64,
    pub next_event: u64,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub notify: Option<NotifyTarget>,
    /// Notifications sent so far (each carries its number: they may arrive out of order).
    #[serde(default)]
    pub notify_seq: u64,
    /// The status last sent to the workflow's status index, and how many were sent.
    #[serde(default)]
    pub indexed: Option<Status>,
    #[serde(default)]
    pub index_seq: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct EventRecord {
    pub seq: u64,
    pub event_type: String,
    pub payload: String,
    pub received_ms: i64,
    pub consumed_by: Option<u32>,
}

/// An instance's status as the API reports it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InstanceStatus {
    /// The instance's id.
    pub id: String,
    /// Its workflow's name.
    pub workflow: String,
    /// Where it is.
    pub status: Status,
    /// The params it was created with.
    pub params: serde_json::Value,
    /// What `run` returned, once complete.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<serde_json::Value>,
    /// Why it errored, once errored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The journal, in the order the code reached its steps.
    pub steps: Vec<StepView>,
    /// Events received and not yet taken by a `wait_for_event`.
    pub pending_events: usize,
    /// When it was created, epoch milliseconds.
    pub created_ms: i64,
    /// When its record last changed, epoch milliseconds.
    pub updated_ms: i64,
}

/// A journal entry with its result decoded, for the status report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepView {
    /// The step's name.
    pub name: String,
    /// What kind of step it is.
    pub kind: StepKind,
    /// Where it is.
    pub state: StepState,
    /// Its result (`run`: the closure's value; `wait`: the event payload).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// Its error, once failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Failed attempts, in order.
    pub attempts: Vec<Attempt>,
    /// Sleep: when it ends. Wait: its deadline.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wake_ms: Option<i64>,
    /// When it started, epoch milliseconds.
    pub started_ms: i64,
    /// When it finished, epoch milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<i64>,
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or(serde_json::Value::String(text.to_string()))
}

pub(crate) fn load_steps(storage: &mut Storage) -> Result<Vec<StepInfo>> {
    let rows = storage.list::<StepInfo>(&ListOptions {
        prefix: Some(STEP_PREFIX.into()),
        ..ListOptions::default()
    })?;
    Ok(rows.into_iter().map(|(_, s)| s).collect())
}

pub(crate) fn load_events(storage: &mut Storage) -> Result<Vec<EventRecord>> {
    let rows = storage.list::<EventRecord>(&ListOptions {
        prefix: Some(EVENT_PREFIX.into()),
        ..ListOptions::default()
    })?;
    Ok(rows.into_iter().map(|(_, e)| e).collect())
}

/// Reads an instance's status straight from its database (the CLI does this offline).
/// `None` when the database holds no workflow instance.
pub fn read_status(storage: &mut Storage) -> Result<Option<InstanceStatus>> {
    let Some(rec) = storage.get::<InstanceRecord>(INSTANCE_KEY)? else {
        return Ok(None);
    };
    let steps = load_steps(storage)?;
    let pending_events = load_events(storage)?
        .iter()
        .filter(|e| e.consumed_by.is_none())
        .count();
    Ok(Some(status_of(&rec, steps, pending_events)))
}

pub(crate) fn status_of(
    rec: &InstanceRecord,
    steps: Vec<StepInfo>,
    pending_events: usize,
) -> InstanceStatus {
    InstanceStatus {
        id: rec.id.clone(),
        workflow: rec.workflow.clone(),
        status: rec.status,
        params: json(&rec.params),
        output: rec.output.as_deref().map(json),
        error: rec.error.clone(),
        steps: steps
            .into_iter()
            .map(|s| StepView {
                name: s.name,
                kind: s.kind,
                state: s.state,
                result: s.result.as_deref().map(json),
                error: s.error,
                attempts: s.attempts,
                wake_ms: s.wake_ms,
                started_ms: s.started_ms,
                finished_ms: s.finished_ms,
            })
            .collect(),
        pending_events,
        created_ms: rec.created_ms,
        updated_ms: rec.updated_ms,
    }
}
