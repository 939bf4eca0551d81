//! [`Tool`]: a tool the agent runs itself, offered to the model with a JSON Schema.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde_json::Value;

use crate::chat::wire::ToolSpec;

type Run = dyn Fn(Value) -> BoxFuture<'static, Result<Value, String>> + Send + Sync;

/// A server tool: its name, description and input schema (what the model sees) and the async
/// function that runs it on the model's input. An `Err` is not fatal: its text goes back to the
/// model as the call's result (and to the client as `tool-output-error`).
#[derive(Clone)]
pub struct Tool {
    spec: ToolSpec,
    run: Arc<Run>,
}

impl fmt::Debug for Tool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tool")
            .field("name", &self.spec.name)
            .finish_non_exhaustive()
    }
}

impl Tool {
    /// A tool named `name` (as the model calls it) taking input of JSON Schema `parameters`.
    pub fn new<F, Fut>(
        name: impl Into<String>,
        description: impl Into<String>,
        parameters: Value,
        run: F,
    ) -> Self
    where
        F: Fn(Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, String>> + Send + 'static,
    {
        Tool {
            spec: ToolSpec {
                name: name.into(),
                description: description.into(),
                parameters,
            },
            run: Arc::new(move |input| Box::pin(run(input))),
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// What the model is told of it.
    pub fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    /// Runs it on `input`.
    pub fn call(&self, input: Value) -> BoxFuture<'static, Result<Value, String>> {
        (self.run)(input)
    }
}
