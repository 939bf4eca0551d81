//! Registering workflows and driving their instances: typed ([`Client`]) and by name with JSON
//! ([`Registry`], for HTTP routes and CLIs).

use std::collections::{BTreeMap, HashMap};
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use denizen_runtime::{Builder, Namespace, Runtime};
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::Workflow;
use super::error::{Error, Result};
use super::index::{ListStatuses, STATUS_NAMESPACE, StatusIndex};
use super::instance::{Action, Control, Create, GetStatus, Instance, SendEvent};
use super::record::{InstanceStatus, NotifyTarget, Status};

/// The namespace holding the instances of workflow `name`.
pub fn namespace_of(name: &str) -> String {
    format!("workflow-{name}")
}

const MAX_ID_LEN: usize = 256;

fn check_id(id: &str) -> Result<()> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(Error::InvalidId(format!(
            "an id has 1 to {MAX_ID_LEN} characters"
        )));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(Error::InvalidId(format!(
            "`{id}`: use letters, digits, `-`, `_` and `.`"
        )));
    }
    Ok(())
}

/// How to create an instance.
#[derive(Clone, Debug, Default)]
pub struct CreateOptions {
    /// The instance id; a random one when `None`.
    pub id: Option<String>,
    /// An object whose `fetch` receives `POST /_workflow/event` with the instance's progress
    /// (after each completed step) and its end (complete, errored, terminated) as JSON.
    pub notify: Option<NotifyTarget>,
}

/// An instance as a list shows it: its id and status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceSummary {
    /// The instance's id.
    pub id: String,
    /// Its status, as last indexed.
    pub status: Status,
}

/// The instances of one workflow type, driven from Rust (an application, an agent, any durable
/// object through `ctx.runtime()`).
pub struct Client<W: Workflow> {
    name: String,
    ns: Namespace<Instance<W>>,
    runtime: Runtime,
    _w: PhantomData<fn() -> W>,
}

impl<W: Workflow> std::fmt::Debug for Client<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("name", &self.name).finish()
    }
}

impl<W: Workflow> Clone for Client<W> {
    fn clone(&self) -> Self {
        Client {
            name: self.name.clone(),
            ns: self.ns.clone(),
            runtime: self.runtime.clone(),
            _w: PhantomData,
        }
    }
}

/// The client of workflow `name` registered with type `W`.
pub fn client<W: Workflow>(runtime: &Runtime, name: &str) -> Result<Client<W>> {
    let ns = runtime
        .namespace::<Instance<W>>(&namespace_of(name))
        .map_err(|_| Error::UnknownWorkflow(name.to_string()))?;
    Ok(Client {
        name: name.to_string(),
        ns,
        runtime: runtime.clone(),
        _w: PhantomData,
    })
}

impl<W: Workflow> Client<W> {
    /// The workflow's registered name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Creates an instance (`id` or a random one) and starts it; answers its id.
    pub async fn create(&self, id: Option<&str>, params: &W::Params) -> Result<String> {
        self.create_with(
            CreateOptions {
                id: id.map(str::to_string),
                notify: None,
            },
            params,
        )
        .await
    }

    /// Creates an instance with options (notify target) and starts it.
    pub async fn create_with(&self, options: CreateOptions, params: &W::Params) -> Result<String> {
        let params = serde_json::to_string(params)?;
        self.create_json(options, params).await
    }

    async fn create_json(&self, options: CreateOptions, params: String) -> Result<String> {
        let id = match options.id {
            Some(id) => {
                check_id(&id)?;
                id
            }
            None => self.ns.new_unique_id().to_hex()[..32].to_string(),
        };
        self.ns
            .get_by_name(&id)
            .call(Create {
                workflow: self.name.clone(),
                params,
                notify: options.notify,
            })
            .await??;
        tracing::debug!(workflow = %self.name, %id, "workflow instance created");
        Ok(id)
    }

    /// Whether an instance with this id was ever created (reads no object, creates none).
    pub fn exists(&self, id: &str) -> bool {
        if check_id(id).is_err() {
            return false;
        }
        let hex = self.ns.id_from_name(id).to_hex();
        denizen_storage::object_path(&self.runtime.options().data_dir, self.ns.name(), &hex)
            .exists()
    }

    fn stub(&self, id: &str) -> Result<denizen_runtime::Stub<Instance<W>>> {
        if !self.exists(id) {
            return Err(Error::UnknownInstance {
                workflow: self.name.clone(),
                id: id.to_string(),
            });
        }
        Ok(self.ns.get_by_name(id))
    }

    /// Status, output or error, and step history.
    pub async fn status(&self, id: &str) -> Result<InstanceStatus> {
        self.stub(id)?.call(GetStatus).await?
    }

    /// Applies an operator's action and answers the new status.
    pub async fn control(&self, id: &str, action: Action) -> Result<InstanceStatus> {
        self.stub(id)?.call(Control(action)).await?
    }

    /// Stops the instance after its current step; `resume` continues it.
    pub async fn pause(&self, id: &str) -> Result<InstanceStatus> {
        self.control(id, Action::Pause).await
    }

    /// Continues a paused instance.
    pub async fn resume(&self, id: &str) -> Result<InstanceStatus> {
        self.control(id, Action::Resume).await
    }

    /// Ends the instance for good (a step in flight finishes but is not recorded).
    pub async fn terminate(&self, id: &str) -> Result<InstanceStatus> {
        self.control(id, Action::Terminate).await
    }

    /// Clears the journal and events and runs the instance again with the same params.
    pub async fn restart(&self, id: &str) -> Result<InstanceStatus> {
        self.control(id, Action::Restart).await
    }

    /// Sends an event; a `wait_for_event` for its type takes it, now or later.
    pub async fn send_event<T: Serialize + ?Sized>(
        &self,
        id: &str,
        event_type: &str,
        payload: &T,
    ) -> Result<()> {
        let payload = serde_json::to_string(payload)?;
        self.send_event_json(id, event_type, payload).await
    }

    async fn send_event_json(&self, id: &str, event_type: &str, payload: String) -> Result<()> {
        if event_type.is_empty() || event_type.len() > 256 {
            return Err(Error::InvalidParams(
                "an event type has 1 to 256 characters".into(),
            ));
        }
        self.stub(id)?
            .call(SendEvent {
                event_type: event_type.to_string(),
                payload,
            })
            .await?
    }

    /// The ids of every instance created so far.
    pub async fn list(&self) -> Result<Vec<String>> {
        Ok(self
            .runtime
            .list_objects(self.ns.name())
            .await?
            .into_iter()
            .filter_map(|o| o.name)
            .collect())
    }

    /// Every instance created so far with its status, read from the catalog and the workflow's
    /// status index without waking the instances. The index may lag an instance by a moment
    /// ([`status`](Client::status) asks the instance itself); an instance the index does not
    /// know yet is asked (and indexed by that).
    pub async fn list_statuses(&self) -> Result<Vec<InstanceSummary>> {
        let ids = self.list().await?;
        let indexed: HashMap<String, Status> =
            match self.runtime.namespace::<StatusIndex>(STATUS_NAMESPACE) {
                Ok(index) => index
                    .get_by_name(&self.name)
                    .call(ListStatuses)
                    .await?
                    .into_iter()
                    .collect(),
                Err(_) => HashMap::new(),
            };
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let status = match indexed.get(&id) {
                Some(status) => *status,
                None => match self.status(&id).await {
                    Ok(s) => s.status,
                    Err(e) => {
                        tracing::warn!(workflow = %self.name, %id, error = %e, "instance left out of the list: its status could not be read");
                        continue;
                    }
                },
            };
            out.push(InstanceSummary { id, status });
        }
        Ok(out)
    }

    /// Polls the status until the instance is complete, errored or terminated.
    pub async fn wait_final(&self, id: &str) -> Result<InstanceStatus> {
        loop {
            let status = self.status(id).await?;
            if status.status.is_final() {
                return Ok(status);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// One registered workflow, with its type erased.
trait Entry: Send + Sync {
    fn register(&self, builder: Builder) -> Builder;
    fn bind(&self, runtime: &Runtime) -> Result<Arc<dyn Erased>>;
}

struct Typed<W: Workflow> {
    name: String,
    workflow: Arc<W>,
}

impl<W: Workflow> Entry for Typed<W> {
    fn register(&self, builder: Builder) -> Builder {
        let workflow = self.workflow.clone();
        builder.object_with(&namespace_of(&self.name), move || {
            Instance::new(workflow.clone())
        })
    }

    fn bind(&self, runtime: &Runtime) -> Result<Arc<dyn Erased>> {
        Ok(Arc::new(client::<W>(runtime, &self.name)?))
    }
}

/// A workflow's instance API with JSON in and out.
trait Erased: Send + Sync {
    fn create(
        &self,
        options: CreateOptions,
        params: serde_json::Value,
    ) -> BoxFuture<'static, Result<String>>;
    fn status(&self, id: &str) -> BoxFuture<'static, Result<InstanceStatus>>;
    fn control(&self, id: &str, action: Action) -> BoxFuture<'static, Result<InstanceStatus>>;
    fn send_event(
        &self,
        id: &str,
        event_type: &str,
        payload: serde_json::Value,
    ) -> BoxFuture<'static, Result<()>>;
    fn list(&self) -> BoxFuture<'static, Result<Vec<String>>>;
    fn list_statuses(&self) -> BoxFuture<'static, Result<Vec<InstanceSummary>>>;
}

impl<W: Workflow> Erased for Client<W> {
    fn create(
        &self,
        options: CreateOptions,
        params: serde_json::Value,
    ) -> BoxFuture<'static, Result<String>> {
        let this = self.clone();
        Box::pin(async move {
            // Checked here so bad params are refused before an instance exists.
            let typed: W::Params =
                serde_json::from_value(params).map_err(|e| Error::InvalidParams(e.to_string()))?;
            this.create_with(options, &typed).await
        })
    }

    fn status(&self, id: &str) -> BoxFuture<'static, Result<InstanceStatus>> {
        let (this, id) = (self.clone(), id.to_string());
        Box::pin(async move { Client::status(&this, &id).await })
    }

    fn control(&self, id: &str, action: Action) -> BoxFuture<'static, Result<InstanceStatus>> {
        let (this, id) = (self.clone(), id.to_string());
        Box::pin(async move { Client::control(&this, &id, action).await })
    }

    fn send_event(
        &self,
        id: &str,
        event_type: &str,
        payload: serde_json::Value,
    ) -> BoxFuture<'static, Result<()>> {
        let (this, id, event_type) = (self.clone(), id.to_string(), event_type.to_string());
        Box::pin(async move {
            let payload = serde_json::to_string(&payload)?;
            this.send_event_json(&id, &event_type, payload).await
        })
    }

    fn list(&self) -> BoxFuture<'static, Result<Vec<String>>> {
        let this = self.clone();
        Box::pin(async move { Client::list(&this).await })
    }

    fn list_statuses(&self) -> BoxFuture<'static, Result<Vec<InstanceSummary>>> {
        let this = self.clone();
        Box::pin(async move { Client::list_statuses(&this).await })
    }
}

/// The workflows an application registers, by name.
///
/// ```
/// # use denizen_agents::workflow::{Event, Result, Step, Workflow, Workflows};
/// # use denizen_runtime::Runtime;
/// # struct Approval;
/// # impl Workflow for Approval {
/// #     type Params = ();
/// #     type Output = ();
/// #     async fn run(&self, _: Event<()>, _: Step) -> Result<()> { Ok(()) }
/// # }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> anyhow::Result<()> {
/// # let dir = tempfile::tempdir()?;
/// let workflows = Workflows::new().add("approval", Approval);
/// let runtime = workflows.register(Runtime::builder().data_dir(dir.path())).build()?;
/// let registry = workflows.bind(&runtime)?; // the JSON API by name, for HTTP routes
/// let id = registry.create("approval", Default::default(), serde_json::Value::Null).await?;
/// assert!(registry.list("approval").await?.contains(&id));
/// # runtime.shutdown().await;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Default)]
pub struct Workflows {
    entries: BTreeMap<String, Arc<dyn Entry>>,
}

impl std::fmt::Debug for Workflows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workflows")
            .field("names", &self.names())
            .finish()
    }
}

impl Workflows {
    /// No workflows yet; [`add`](Workflows::add) them.
    pub fn new() -> Self {
        Workflows::default()
    }

    /// Adds workflow `workflow` under `name` (letters, digits, `-`, `_`; at most 55 characters).
    /// Its instances live in namespace `workflow-<name>`.
    pub fn add<W: Workflow>(mut self, name: &str, workflow: W) -> Self {
        self.entries.insert(
            name.to_string(),
            Arc::new(Typed {
                name: name.to_string(),
                workflow: Arc::new(workflow),
            }),
        );
        self
    }

    /// The registered names.
    pub fn names(&self) -> Vec<String> {
        self.entries.keys().cloned().collect()
    }

    /// Registers every workflow's instance namespace with the runtime builder, and the status
    /// index (namespace `workflow_status`) their lists read.
    pub fn register(&self, mut builder: Builder) -> Builder {
        if self.entries.is_empty() {
            return builder;
        }
        for entry in self.entries.values() {
            builder = entry.register(builder);
        }
        builder.object::<StatusIndex>(STATUS_NAMESPACE)
    }

    /// The JSON instance API of every workflow, on a runtime built with [`Workflows::register`].
    pub fn bind(&self, runtime: &Runtime) -> Result<Registry> {
        let mut map = BTreeMap::new();
        for (name, entry) in &self.entries {
            map.insert(name.clone(), entry.bind(runtime)?);
        }
        Ok(Registry {
            entries: Arc::new(map),
        })
    }
}

/// The instance API of every registered workflow, by name, with JSON params, payloads and
/// status. Cheap to clone.
#[derive(Clone)]
pub struct Registry {
    entries: Arc<BTreeMap<String, Arc<dyn Erased>>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("names", &self.names())
            .finish()
    }
}

impl Registry {
    fn get(&self, name: &str) -> Result<&Arc<dyn Erased>> {
        self.entries
            .get(name)
            .ok_or_else(|| Error::UnknownWorkflow(name.to_string()))
    }

    /// The registered names.
    pub fn names(&self) -> Vec<String> {
        self.entries.keys().cloned().collect()
    }

    /// Creates an instance of workflow `name` with JSON params and starts it; answers its id.
    pub async fn create(
        &self,
        name: &str,
        options: CreateOptions,
        params: serde_json::Value,
    ) -> Result<String> {
        self.get(name)?.create(options, params).await
    }

    /// An instance's status, output or error, and step history ([`Client::status`]).
    pub async fn status(&self, name: &str, id: &str) -> Result<InstanceStatus> {
        self.get(name)?.status(id).await
    }

    /// Applies an operator's action and answers the new status ([`Client::control`]).
    pub async fn control(&self, name: &str, id: &str, action: Action) -> Result<InstanceStatus> {
        self.get(name)?.control(id, action).await
    }

    /// Sends an event with a JSON payload ([`Client::send_event`]).
    pub async fn send_event(
        &self,
        name: &str,
        id: &str,
        event_type: &str,
        payload: serde_json::Value,
    ) -> Result<()> {
        self.get(name)?.send_event(id, event_type, payload).await
    }

    /// The ids of a workflow's instances.
    pub async fn list(&self, name: &str) -> Result<Vec<String>> {
        self.get(name)?.list().await
    }

    /// A workflow's instances with their statuses, without waking them (see
    /// [`Client::list_statuses`]).
    pub async fn list_statuses(&self, name: &str) -> Result<Vec<InstanceSummary>> {
        self.get(name)?.list_statuses().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        assert!(check_id("order-7_a.b").is_ok());
        assert!(matches!(check_id(""), Err(Error::InvalidId(_))));
        assert!(matches!(check_id("a b"), Err(Error::InvalidId(_))));
        assert!(matches!(check_id("a/b"), Err(Error::InvalidId(_))));
        assert!(matches!(
            check_id(&"x".repeat(MAX_ID_LEN + 1)),
            Err(Error::InvalidId(_))
        ));
    }
}
