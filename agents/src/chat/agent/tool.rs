//! [`Tool`]: a tool the agent runs itself, offered to the model with a JSON Schema.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::chat::wire::ToolSpec;

type Run = dyn Fn(Value) -> BoxFuture<'static, Result<Value, String>> + Send + Sync;

/// A server tool: its name, description and input schema (what the model sees) and the async
/// function that runs it on the model's input. An `Err` is not fatal: its text goes back to the
/// model as the call's result (and to the client as `tool-output-error`).
///
/// A tool made with [`Tool::needs_approval`] waits for the user: the turn ends with an approval
/// request, and the tool runs in the turn that continues after the user approved it (a denial
/// reaches the model as `"Tool call execution denied."`).
///
/// ```
/// use denizen_agents::chat::agent::Tool;
///
/// #[derive(serde::Deserialize, schemars::JsonSchema)]
/// struct Add {
///     /// The first number.
///     a: f64,
///     /// The second number.
///     b: f64,
/// }
///
/// let add = Tool::typed("add", "Adds two numbers", |input: Add| async move {
///     Ok::<_, String>(input.a + input.b)
/// });
/// assert_eq!(add.spec().parameters["required"], serde_json::json!(["a", "b"]));
/// assert!(!add.requires_approval());
/// ```
#[derive(Clone)]
pub struct Tool {
    spec: ToolSpec,
    run: Arc<Run>,
    approval: bool,
}

impl fmt::Debug for Tool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tool")
            .field("name", &self.spec.name)
            .field("approval", &self.approval)
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
            approval: false,
        }
    }

    /// A tool whose input is the type `I`: its JSON Schema (field docs become descriptions) is
    /// what the model sees, and input that does not fit it goes back to the model as an error
    /// instead of reaching `run`. The output is sent as JSON.
    pub fn typed<I, O, F, Fut>(
        name: impl Into<String>,
        description: impl Into<String>,
        run: F,
    ) -> Self
    where
        I: JsonSchema + DeserializeOwned + Send + 'static,
        O: Serialize,
        F: Fn(I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, String>> + Send + 'static,
    {
        let mut parameters = serde_json::to_value(schemars::schema_for!(I)).unwrap_or_default();
        // Models want a plain object schema; the meta-schema and title are noise to them.
        if let Some(map) = parameters.as_object_mut() {
            map.remove("$schema");
            map.remove("title");
        }
        let run = Arc::new(run);
        Tool::new(name, description, parameters, move |input: Value| {
            let run = run.clone();
            async move {
                // `{}` for a tool without input: the model may send nothing at all.
                let input = if input.is_null() {
                    Value::Object(Default::default())
                } else {
                    input
                };
                let input: I =
                    serde_json::from_value(input).map_err(|e| format!("Invalid input: {e}"))?;
                let output = run(input).await?;
                serde_json::to_value(output)
                    .map_err(|e| format!("could not encode the output: {e}"))
            }
        })
    }

    /// The same tool, run only once the user approves the call (human in the loop).
    pub fn needs_approval(mut self) -> Self {
        self.approval = true;
        self
    }

    /// Whether a call waits for the user's approval.
    pub fn requires_approval(&self) -> bool {
        self.approval
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
