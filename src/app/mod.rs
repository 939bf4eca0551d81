//! [`App`]: your objects, agents and workflows in a server, with the command line of the
//! `denizen` binary (`serve`, `objects`, `sql`, `workflows`) for your app.
//!
//! ```no_run
//! use denizen::app::App;
//! use denizen::{Ctx, DurableObject, Request, Response, Result, http_util};
//! use denizen::http::StatusCode;
//!
//! #[derive(Default)]
//! struct Hello;
//!
//! impl DurableObject for Hello {
//!     async fn fetch(&mut self, ctx: &mut Ctx<Self>, _req: Request) -> Result<Response> {
//!         let name = ctx.id().name().unwrap_or("stranger").to_string();
//!         Ok(http_util::text(StatusCode::OK, &format!("hello, {name}\n")))
//!     }
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     // `myapp serve`, `myapp sql hello ada "SELECT 1"`, `myapp --help`
//!     App::new("myapp").object::<Hello>("hello").run()
//! }
//! ```

#[cfg(feature = "cli")]
mod cli;
mod config;
mod error;
mod serve;

use axum::Router;
use denizen_agents::workflow::{Workflow, Workflows};
use denizen_agents::{Agent, AgentBuilder};
use denizen_gateway::{Gateway, Rejection};
use denizen_runtime::{Builder, DurableObject, Runtime};

pub use config::Config;
pub use error::Error;

type Routes = Box<dyn FnOnce(&Gateway) -> Router + Send>;
type AuthHook = Box<dyn Fn(&http::request::Parts) -> Result<(), Rejection> + Send + Sync>;
type Deferred = Box<dyn FnOnce(App, &Config) -> App + Send>;

/// An application: its object types, agents and workflows, its own routes and its
/// authentication hook. [`App::run`] gives it the command line of the `denizen` binary;
/// [`App::serve`] serves it with a [`Config`] you built.
pub struct App {
    name: String,
    about: Option<String>,
    version: Option<String>,
    builder: Builder,
    agents: Vec<String>,
    workflows: Workflows,
    routes: Vec<Routes>,
    auth: Option<AuthHook>,
    deferred: Vec<Deferred>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("name", &self.name)
            .field("agents", &self.agents)
            .field("workflows", &self.workflows)
            .finish_non_exhaustive()
    }
}

impl App {
    /// An app without anything registered yet. `name` is the command's name in its help and
    /// in the line `serve` prints once it listens.
    pub fn new(name: &str) -> Self {
        App {
            name: name.to_string(),
            about: None,
            version: None,
            builder: Runtime::builder(),
            agents: Vec::new(),
            workflows: Workflows::new(),
            routes: Vec::new(),
            auth: None,
            deferred: Vec::new(),
        }
    }

    /// One line saying what the app is, shown by `--help`.
    pub fn about(mut self, about: &str) -> Self {
        self.about = Some(about.to_string());
        self
    }

    /// The version `--version` prints (e.g. `env!("CARGO_PKG_VERSION")`).
    pub fn version(mut self, version: &str) -> Self {
        self.version = Some(version.to_string());
        self
    }

    /// Registers object type `O` (built with `Default`) under `namespace`, served at
    /// `/objects/<namespace>/<name>`.
    pub fn object<O: DurableObject + Default>(self, namespace: &str) -> Self {
        self.object_with(namespace, O::default)
    }

    /// Registers object type `O`, built by `factory` on every activation.
    pub fn object_with<O: DurableObject>(
        mut self,
        namespace: &str,
        factory: impl Fn() -> O + Send + Sync + 'static,
    ) -> Self {
        self.builder = self.builder.object_with(namespace, factory);
        self
    }

    /// Registers agent type `A` (built with `Default`) under `namespace`, served at
    /// `/agents/<namespace>/<name>` to the JavaScript `agents` client: use the kebab-case it
    /// derives from its `agent` option (`CounterAgent` → `counter-agent`).
    pub fn agent<A: Agent + Default>(self, namespace: &str) -> Self {
        self.agent_with(namespace, A::default)
    }

    /// Registers agent type `A`, built by `factory` on every activation.
    pub fn agent_with<A: Agent>(
        mut self,
        namespace: &str,
        factory: impl Fn() -> A + Send + Sync + 'static,
    ) -> Self {
        self.builder = self.builder.agent_with(namespace, factory);
        self.agents.push(namespace.to_string());
        self
    }

    /// Registers workflow `workflow` under `name`, served at `/workflows/<name>` (admin routes)
    /// and listed by the `workflows` command.
    pub fn workflow<W: Workflow>(mut self, name: &str, workflow: W) -> Self {
        self.workflows = self.workflows.add(name, workflow);
        self
    }

    /// Adds routes of your own beside the gateway's (`/objects`, `/agents`, `/workflows`,
    /// `/metrics`, `/healthz`, `/admin`). `routes` gets the gateway, to reach objects through
    /// it. Routes under `/admin` are guarded by the admin token; the others are yours to guard.
    pub fn routes(mut self, routes: impl FnOnce(&Gateway) -> Router + Send + 'static) -> Self {
        self.routes.push(Box::new(routes));
        self
    }

    /// Sets the hook that sees every request to an object, agent or workflow and every
    /// WebSocket upgrade first; see [`Gateway::with_auth`].
    pub fn auth(
        mut self,
        hook: impl Fn(&http::request::Parts) -> Result<(), Rejection> + Send + Sync + 'static,
    ) -> Self {
        self.auth = Some(Box::new(hook));
        self
    }

    /// Registers what needs the server's settings, such as its public URL, once they are known:
    /// `setup` runs when the server starts, with the [`Config`] it runs with
    /// (`public_url` set to the listening address when none was given).
    pub fn with_config(mut self, setup: impl FnOnce(App, &Config) -> App + Send + 'static) -> Self {
        self.deferred.push(Box::new(setup));
        self
    }

    /// The app's name, as given to [`App::new`].
    pub fn name(&self) -> &str {
        &self.name
    }
}
