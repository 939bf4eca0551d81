//! Durable workflows: ordinary async code whose steps survive crashes, restarts and deploys.
//!
//! A [`Workflow`] is a type with a `run(event, step)` method. Each call to
//! [`Step::run`] is journaled in the instance's own SQLite file: when the instance replays — after
//! a crash, a restart, a sleep or a wait — completed steps return their journaled result without
//! running again, and the run continues where it stopped. [`Step::sleep`] and
//! [`Step::wait_for_event`] persist the instance, set its alarm and let it leave memory.
//!
//! Every instance is a durable object in namespace `workflow-<name>`, addressed by its id. The
//! run itself executes in a background task of that object (`Ctx::spawn`), so a long step never
//! blocks its mailbox: status queries, events and operator commands are answered meanwhile. The
//! task records each step through a message to the object, which commits it before the step
//! returns; while a run is in progress the object keeps its alarm a short lease ahead, so after
//! a crash the alarm finds no run and replays the instance from its journal.
//!
//! **Determinism.** A replay re-executes `run` from the top, so everything that is not a step
//! must compute the same thing every time: side effects (HTTP calls, writes, emails), clocks,
//! random numbers and reads of changing data belong inside `step.run` closures, whose results are
//! journaled. Step names and their order must not depend on anything outside the params and
//! earlier step results. A replay that reaches a step whose name or kind differs from the journal
//! fails the instance with [`Error::NonDeterministic`] instead of mixing results. Steps run one
//! after another; put parallel work inside one step.
//!
//! ```
//! use std::time::Duration;
//! use denizen_agents::workflow::{Backoff, Event, Step, StepConfig, Workflow, Workflows, Result};
//! use denizen_runtime::Runtime;
//!
//! struct Greet;
//!
//! impl Workflow for Greet {
//!     type Params = String;
//!     type Output = String;
//!     async fn run(&self, event: Event<String>, step: Step) -> Result<String> {
//!         let config = StepConfig::retries(3, Duration::from_millis(10), Backoff::Exponential);
//!         let name = event.payload.clone();
//!         let greeting: String = step
//!             .run("greet", &config, || {
//!                 let name = name.clone();
//!                 async move { Ok(format!("hello, {name}")) }
//!             })
//!             .await?;
//!         step.sleep("pause", Duration::from_millis(10)).await?;
//!         Ok(greeting)
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> anyhow::Result<()> {
//! # let dir = tempfile::tempdir()?;
//! let workflows = Workflows::new().add("greet", Greet);
//! let runtime = workflows.register(Runtime::builder().data_dir(dir.path())).build()?;
//! let greet = workflows::client::<Greet>(&runtime, "greet")?;
//! let id = greet.create(Some("ada"), &"ada".to_string()).await?;
//! let status = greet.wait_final(&id).await?;
//! assert_eq!(status.output, Some(serde_json::json!("hello, ada")));
//! runtime.shutdown().await;
//! # Ok(())
//! # }
//! # use denizen_agents::workflow as workflows;
//! ```

mod client;
mod error;
mod index;
mod instance;
mod record;
mod step;

use std::future::Future;
use std::time::SystemTime;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use client::{
    Client, CreateOptions, InstanceSummary, Registry, Workflows, client, namespace_of,
};
pub use error::{Error, Result};
pub use instance::{Action, Instance, NOTIFY_PATH};
pub use record::{
    Attempt, InstanceStatus, NotifyTarget, Status, StepKind, StepState, StepView, read_status,
};
pub use step::{Backoff, Step, StepConfig, StepError};

/// What a run is started with.
#[derive(Clone, Debug)]
pub struct Event<P> {
    /// The instance's id.
    pub id: String,
    /// The params it was created with.
    pub payload: P,
    /// When the instance was created (the same on every replay).
    pub created: SystemTime,
}

/// A durable workflow: `run` is replayed from the top after every interruption, so keep
/// everything that is not deterministic inside steps (see the module documentation).
pub trait Workflow: Send + Sync + 'static {
    /// What an instance is created with (JSON over HTTP).
    type Params: Serialize + DeserializeOwned + Send + Sync + 'static;
    /// What a completed instance reports.
    type Output: Serialize + DeserializeOwned + Send + 'static;

    /// Runs (or replays) one instance: `event` holds its id and params; durable work goes
    /// through `step`. `Ok` completes the instance with that output; `Err` ends it `errored`.
    fn run(
        &self,
        event: Event<Self::Params>,
        step: Step,
    ) -> impl Future<Output = Result<Self::Output>> + Send;
}
