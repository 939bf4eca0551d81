//! Callable methods, streaming methods and tasks, declared one line each in `Agent::methods`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use denizen_runtime::{Error, Result, WebSocket};
use futures_util::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::agent::{Agent, Connection, Context};
use crate::protocol;

type CallFn<A> = Box<
    dyn for<'a> Fn(&'a mut A, &'a mut Context<A>, Vec<Value>) -> BoxFuture<'a, Result<Value>>
        + Send
        + Sync,
>;
type ConnCallFn<A> = Box<
    dyn for<'a> Fn(
            &'a mut A,
            &'a mut Context<A>,
            Connection,
            Vec<Value>,
        ) -> BoxFuture<'a, Result<Value>>
        + Send
        + Sync,
>;
type StreamFn<A> = Box<
    dyn for<'a> Fn(
            &'a mut A,
            &'a mut Context<A>,
            StreamingResponse,
            Vec<Value>,
        ) -> BoxFuture<'a, Result<()>>
        + Send
        + Sync,
>;
type OffTurnFn<A> = Box<
    dyn Fn(&mut A, &mut Context<A>, Vec<Value>) -> Result<BoxFuture<'static, Result<Value>>>
        + Send
        + Sync,
>;
type TaskFn<A> = Box<
    dyn for<'a> Fn(&'a mut A, &'a mut Context<A>, Value) -> BoxFuture<'a, Result<()>> + Send + Sync,
>;

pub(crate) enum Callable<A: Agent> {
    Plain(CallFn<A>),
    FromConnection(ConnCallFn<A>),
    Streaming(StreamFn<A>),
    OffTurn(OffTurnFn<A>),
}

/// The methods of an agent type: what clients may call (by name, with a JSON array of
/// arguments) and what schedules and the queue may run (by name, with a JSON payload).
///
/// ```
/// use denizen_agents::{Agent, AgentContext, Context, Methods, StreamingResponse};
/// use denizen_runtime::Result;
///
/// struct Clock;
///
/// impl Clock {
///     async fn add(&mut self, cx: &mut Context<Self>, n: i64) -> Result<i64> {
///         let total = cx.state()? + n;
///         cx.set_state(&total)?;
///         Ok(total)
///     }
///     async fn count(&mut self, cx: &mut Context<Self>, s: StreamingResponse, n: u32) -> Result<()> {
///         for i in 0..n {
///             s.send(cx, i).await?;
///         }
///         s.end(cx, "done")
///     }
///     async fn tick(&mut self, cx: &mut Context<Self>) -> Result<()> {
///         self.add(cx, 1).await.map(drop)
///     }
/// }
///
/// impl Agent for Clock {
///     type State = i64;
///     fn initial_state(&self) -> i64 {
///         0
///     }
///     fn methods(m: &mut Methods<Self>) {
///         m.callable("add", |a, cx, (n,): (i64,)| Box::pin(a.add(cx, n)));
///         m.streaming("count", |a, cx, s, (n,): (u32,)| Box::pin(a.count(cx, s, n)));
///         m.task("tick", |a, cx, (): ()| Box::pin(a.tick(cx)));
///     }
/// }
/// ```
#[allow(missing_debug_implementations)] // holds boxed closures
pub struct Methods<A: Agent> {
    pub(crate) callables: HashMap<String, Callable<A>>,
    pub(crate) tasks: HashMap<String, TaskFn<A>>,
}

impl<A: Agent> Default for Methods<A> {
    fn default() -> Self {
        Methods {
            callables: HashMap::new(),
            tasks: HashMap::new(),
        }
    }
}

fn parse_args<T: DeserializeOwned>(args: Vec<Value>) -> Result<T> {
    let empty = args.is_empty();
    serde_json::from_value(Value::Array(args)).or_else(|e| {
        // `()` (a method without arguments) reads from JSON null, not from `[]`.
        if empty && let Ok(unit) = serde_json::from_value(Value::Null) {
            return Ok(unit);
        }
        Err(Error::msg(format!("invalid arguments: {e}")))
    })
}

impl<A: Agent> Methods<A> {
    /// A method clients may call: `args` is the call's argument array decoded into `Args` (a
    /// tuple such as `(i64,)`, or `()` for none); the result is sent back as JSON and an `Err`
    /// becomes the RPC error message. The method's writes are rolled back when it fails.
    pub fn callable<Args, R, F>(&mut self, name: &str, f: F) -> &mut Self
    where
        Args: DeserializeOwned,
        R: Serialize + 'static,
        F: for<'a> Fn(&'a mut A, &'a mut Context<A>, Args) -> BoxFuture<'a, Result<R>>
            + Send
            + Sync
            + 'static,
    {
        let call: CallFn<A> = Box::new(move |agent, cx, args| match parse_args::<Args>(args) {
            Ok(args) => {
                let fut = f(agent, cx, args);
                Box::pin(async move {
                    let out = fut.await?;
                    serde_json::to_value(out)
                        .map_err(|e| Error::msg(format!("could not encode the result: {e}")))
                })
            }
            Err(e) => Box::pin(async move { Err(e) }),
        });
        self.callables
            .insert(name.to_string(), Callable::Plain(call));
        self
    }

    /// Like [`callable`](Methods::callable), but the method also gets the calling
    /// [`Connection`] (its id, its read-only flag; its own state through
    /// `cx.connection_state`): the place for per-connection authorization.
    pub fn callable_from<Args, R, F>(&mut self, name: &str, f: F) -> &mut Self
    where
        Args: DeserializeOwned,
        R: Serialize + 'static,
        F: for<'a> Fn(&'a mut A, &'a mut Context<A>, Connection, Args) -> BoxFuture<'a, Result<R>>
            + Send
            + Sync
            + 'static,
    {
        let call: ConnCallFn<A> =
            Box::new(
                move |agent, cx, conn, args| match parse_args::<Args>(args) {
                    Ok(args) => {
                        let fut = f(agent, cx, conn, args);
                        Box::pin(async move {
                            let out = fut.await?;
                            serde_json::to_value(out).map_err(|e| {
                                Error::msg(format!("could not encode the result: {e}"))
                            })
                        })
                    }
                    Err(e) => Box::pin(async move { Err(e) }),
                },
            );
        self.callables
            .insert(name.to_string(), Callable::FromConnection(call));
        self
    }

    /// A method whose slow part runs off the turn: `f` runs in the agent's turn (it may read and
    /// change the state, write SQL, schedule) and returns a future — the network call, the LLM
    /// request — that runs outside the agent's mailbox. Its output is the call's reply, sent
    /// when it finishes, in an event of the agent; meanwhile the agent goes on serving its other
    /// clients, callables and schedules. The JS client's `call()` resolves (or rejects) then, as
    /// for any other method.
    ///
    /// An `Err` from `f` fails the call at once and rolls back its writes, and the future does
    /// not start; an `Err` or a panic of the future becomes the call's error. The future starts
    /// after the writes of `f` are committed. To act on the result in the agent as well (change
    /// the state), start the work with
    /// [`AgentContext::spawn_then`](crate::AgentContext::spawn_then) instead.
    ///
    /// From the server side ([`Call`](crate::Call)) the caller gets the same reply, but the
    /// agent waits for the future in that event.
    ///
    /// ```
    /// use denizen_agents::{Agent, Methods};
    ///
    /// struct Forecaster;
    ///
    /// async fn forecast(city: String) -> denizen_runtime::Result<String> {
    ///     Ok(format!("sunny in {city}")) // an HTTP API call, in a real agent
    /// }
    ///
    /// impl Agent for Forecaster {
    ///     type State = ();
    ///     fn initial_state(&self) {}
    ///     fn methods(m: &mut Methods<Self>) {
    ///         m.callable_off_turn("forecast", |_agent, _cx, (city,): (String,)| {
    ///             Ok(forecast(city))
    ///         });
    ///     }
    /// }
    /// ```
    pub fn callable_off_turn<Args, R, Fut, F>(&mut self, name: &str, f: F) -> &mut Self
    where
        Args: DeserializeOwned,
        R: Serialize + 'static,
        Fut: Future<Output = Result<R>> + Send + 'static,
        F: Fn(&mut A, &mut Context<A>, Args) -> Result<Fut> + Send + Sync + 'static,
    {
        let call: OffTurnFn<A> = Box::new(move |agent, cx, args| {
            let fut = f(agent, cx, parse_args::<Args>(args)?)?;
            Ok(Box::pin(async move {
                let out = fut.await?;
                serde_json::to_value(out)
                    .map_err(|e| Error::msg(format!("could not encode the result: {e}")))
            }))
        });
        self.callables
            .insert(name.to_string(), Callable::OffTurn(call));
        self
    }

    /// A streaming method: it gets a [`StreamingResponse`] to send chunks with, and ends it (or
    /// returns, which ends it without a final value). An `Err` before the end becomes the
    /// stream's error.
    pub fn streaming<Args, F>(&mut self, name: &str, f: F) -> &mut Self
    where
        Args: DeserializeOwned,
        F: for<'a> Fn(
                &'a mut A,
                &'a mut Context<A>,
                StreamingResponse,
                Args,
            ) -> BoxFuture<'a, Result<()>>
            + Send
            + Sync
            + 'static,
    {
        let call: StreamFn<A> =
            Box::new(
                move |agent, cx, stream, args| match parse_args::<Args>(args) {
                    Ok(args) => f(agent, cx, stream, args),
                    Err(e) => Box::pin(async move { Err(e) }),
                },
            );
        self.callables
            .insert(name.to_string(), Callable::Streaming(call));
        self
    }

    /// A task: the target of schedules and of the queue, given the payload they were created
    /// with. Tasks are not callable by clients. A failing task is retried with backoff, then
    /// recorded in `cf_agents_failures`.
    pub fn task<P, F>(&mut self, name: &str, f: F) -> &mut Self
    where
        P: DeserializeOwned,
        F: for<'a> Fn(&'a mut A, &'a mut Context<A>, P) -> BoxFuture<'a, Result<()>>
            + Send
            + Sync
            + 'static,
    {
        let task: TaskFn<A> =
            Box::new(
                move |agent, cx, payload| match serde_json::from_value::<P>(payload) {
                    Ok(p) => f(agent, cx, p),
                    Err(e) => {
                        Box::pin(
                            async move { Err(Error::msg(format!("invalid task payload: {e}"))) },
                        )
                    }
                },
            );
        self.tasks.insert(name.to_string(), task);
        self
    }

    /// Whether schedules and the queue can run `name`: a task, or a plain callable (which then
    /// gets the payload as its argument array, or as its only argument when it is not an array).
    pub fn has_task(&self, name: &str) -> bool {
        self.tasks.contains_key(name)
            || matches!(self.callables.get(name), Some(Callable::Plain(_)))
    }

    /// The names of the callable methods, sorted.
    pub fn callable_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.callables.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }
}

/// The sending side of a streaming call. Each `send` goes out at once (the writes made before it
/// are committed first, as for any message that leaves the agent).
#[derive(Debug)]
pub struct StreamingResponse {
    pub(crate) ws: WebSocket,
    pub(crate) id: String,
    pub(crate) closed: Arc<AtomicBool>,
}

impl StreamingResponse {
    /// Sends one chunk (`done: false`).
    pub async fn send<A: Agent>(&self, cx: &mut Context<A>, chunk: impl Serialize) -> Result<()> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(Error::msg("the stream was already ended"));
        }
        let chunk = serde_json::to_value(chunk)
            .map_err(|e| Error::msg(format!("could not encode the chunk: {e}")))?;
        cx.send(
            self.ws,
            protocol::rpc_result(&self.id, Some(chunk), false).to_string(),
        );
        cx.commit().await
    }

    /// Ends the stream with a final value (`done: true`).
    pub fn end<A: Agent>(self, cx: &mut Context<A>, last: impl Serialize) -> Result<()> {
        let last = serde_json::to_value(last)
            .map_err(|e| Error::msg(format!("could not encode the final value: {e}")))?;
        if self.closed.swap(true, Ordering::Relaxed) {
            return Err(Error::msg("the stream was already ended"));
        }
        cx.send(
            self.ws,
            protocol::rpc_result(&self.id, Some(last), true).to_string(),
        );
        Ok(())
    }

    /// Ends the stream with an error message.
    pub fn error<A: Agent>(self, cx: &mut Context<A>, message: &str) {
        if !self.closed.swap(true, Ordering::Relaxed) {
            cx.send(self.ws, protocol::rpc_error(&self.id, message).to_string());
        }
    }
}
