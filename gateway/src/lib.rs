//! The front door of Denizen: HTTP and WebSockets to durable objects, on axum.
//!
//! Why it exists: the runtime knows nothing of HTTP, and an object that hibernates cannot hold a
//! TCP connection. In Cloudflare a Worker routes requests to Durable Objects and the platform
//! keeps their WebSockets open while they sleep. This crate is that piece:
//!
//! - `/objects/<namespace>/<name>[/rest]` (any method) goes to the object's `fetch`, which sees
//!   the path `/<rest>?<query>`; the original URI stays in the request's extensions as
//!   [`axum::extract::OriginalUri`].
//! - A WebSocket upgrade on the same route is offered to the object; if it accepts
//!   (`ctx.accept_websocket` and a 101 answer) the gateway owns the socket from then on. The
//!   object may hibernate; a message wakes it; auto-responses and pings are answered without
//!   waking it.
//! - An authentication hook sees every object request and upgrade before any object does.
//! - Server heartbeats drop dead peers, oversized messages close only their socket (1009),
//!   `/metrics` (Prometheus, optionally behind a bearer token), `/healthz`, and graceful shutdown
//!   that finishes in-flight requests, closes sockets with 1001 and stops the runtime.
//!
//! Errors become plain-text answers: unknown namespace 404, invalid id 400, overloaded object 503
//! with `Retry-After`, shutting down 503, a handler past its deadline 504, anything else 500.
//!
//! ```
//! use denizen_gateway::{Options, Gateway, Rejection};
//! use denizen_runtime::{Ctx, DurableObject, Request, Response, Result, Runtime, http_util};
//!
//! #[derive(Default)]
//! struct Hello;
//!
//! impl DurableObject for Hello {
//!     async fn fetch(&mut self, ctx: &mut Ctx<Self>, _req: Request) -> Result<Response> {
//!         let name = ctx.id().name().unwrap_or("stranger");
//!         Ok(http_util::text(http::StatusCode::OK, &format!("hello, {name}\n")))
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! let runtime = Runtime::builder().data_dir(dir.path()).object::<Hello>("hello").build()?;
//! let gateway = Gateway::new(runtime, Options::default()).with_auth(|parts| {
//!     match parts.headers.get("authorization") {
//!         Some(_) => Ok(()),
//!         None => Err(Rejection::unauthorized("send an Authorization header")),
//!     }
//! });
//! // Mount your own routes beside the gateway's: GET /objects/hello/ada → "hello, ada".
//! let app = gateway.router().route("/hi", axum::routing::get(|| async { "hi\n" }));
//!
//! async fn serve(
//!     gateway: Gateway,
//!     app: axum::Router,
//! ) -> std::result::Result<(), Box<dyn std::error::Error>> {
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:8787").await?;
//!     let ctrl_c = async {
//!         let _ = tokio::signal::ctrl_c().await;
//!     };
//!     gateway.serve_router(listener, app, ctrl_c).await?;
//!     Ok(())
//! }
//! # let _ = serve; // not run here: it would wait for Ctrl-C
//! # gateway.runtime().shutdown().await;
//! # let _ = app;
//! # Ok(())
//! # }
//! ```

mod auth;
mod error;
mod forward;
mod metrics;
mod options;
mod server;
mod socket;
mod upgrade;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use bytes::Bytes;
use denizen_runtime::{Error as RuntimeError, Runtime};
use http::{StatusCode, Uri, header};
use tokio::sync::watch;
use tracing::Instrument;

pub use auth::{ADMIN_TOKEN_FILE, Rejection};
use auth::{AdminSecret, AuthHook, admin_guard, auth_guard};
pub use error::Error;
pub use forward::split_path;
use forward::{error_response, object_route, text};
pub use metrics::Metrics;
pub use options::Options;

struct Inner {
    runtime: Runtime,
    options: Options,
    auth: Option<Arc<AuthHook>>,
    /// The admin token in force.
    admin: AdminSecret,
    metrics: Arc<Metrics>,
    /// The runtime's and the gateway's metrics, encoded by `/metrics`.
    registry: Arc<prometheus_client::registry::Registry>,
    /// Flips to `true` once: every socket task closes with 1001.
    shutdown: watch::Sender<bool>,
}

/// The HTTP and WebSocket front door for a [`Runtime`]. Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Gateway {
    // The hook is a closure and the token a secret: neither is printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("options", &self.inner.options)
            .field("auth_hook", &self.inner.auth.is_some())
            .field("admin", &self.inner.admin)
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// A gateway in front of `runtime`. Nothing listens until [`Gateway::serve`] (or you serve
    /// [`Gateway::router`] yourself).
    pub fn new(runtime: Runtime, options: Options) -> Self {
        let metrics = Arc::new(Metrics::default());
        let mut registry = prometheus_client::registry::Registry::with_prefix("denizen");
        runtime.metrics().register(&mut registry);
        metrics.register(registry.sub_registry_with_prefix("gateway"));
        let admin =
            AdminSecret::resolve(options.admin_token.as_deref(), &runtime.options().data_dir);
        Gateway {
            inner: Arc::new(Inner {
                runtime,
                options,
                auth: None,
                admin,
                metrics,
                registry: Arc::new(registry),
                shutdown: watch::Sender::new(false),
            }),
        }
    }

    /// Sets the hook that sees every object request and WebSocket upgrade first (headers,
    /// method, URI; not the body). An `Err` is answered with its status and message, and for a
    /// socket before the upgrade happens.
    pub fn with_auth(
        self,
        hook: impl Fn(&http::request::Parts) -> Result<(), Rejection> + Send + Sync + 'static,
    ) -> Self {
        let inner = Inner {
            runtime: self.inner.runtime.clone(),
            options: self.inner.options.clone(),
            auth: Some(Arc::new(hook)),
            admin: self.inner.admin.clone(),
            metrics: self.inner.metrics.clone(),
            registry: self.inner.registry.clone(),
            shutdown: self.inner.shutdown.clone(),
        };
        Gateway {
            inner: Arc::new(inner),
        }
    }

    /// The runtime behind the gateway.
    pub fn runtime(&self) -> &Runtime {
        &self.inner.runtime
    }

    /// The options the gateway was made with.
    pub fn options(&self) -> &Options {
        &self.inner.options
    }

    /// The token admin routes need: the configured one, or the one generated into
    /// `<data-dir>/admin.token`. `None` when that file could not be used (then admin routes
    /// answer 503 and [`Gateway::serve_router`] refuses to start).
    pub fn admin_token(&self) -> Option<&str> {
        self.inner.admin.token()
    }

    /// The gateway's own counters.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The gateway's routes: `/objects/<namespace>/<name>[/rest]`, `/metrics`, `/healthz`, and
    /// `POST /admin/sql/<namespace>/<name>` (an operator's query, run as an event of the object).
    /// Add or merge your own; [`Gateway::serve_router`] serves the result (and guards `/admin`
    /// routes you add with the admin token — see [`Gateway::guard_admin`] if you serve it
    /// yourself).
    pub fn router(&self) -> Router {
        let router = Router::new()
            .route("/objects/{*path}", any(object_route))
            .route("/metrics", get(metrics_route))
            .route(
                "/admin/sql/{namespace}/{object}",
                axum::routing::post(sql_route),
            )
            .route("/healthz", get(|| async { "ok\n" }))
            .with_state(self.inner.clone());
        self.guard_admin(router)
    }

    /// Requires the admin token on `/admin`, `/workflows`, `/inspector` and everything under
    /// them in `router`, including routes an application added, and refuses cross-site requests
    /// there (an `Origin` of another site: 403; a body-carrying method without
    /// `Content-Type: application/json`: 415). `/metrics` needs the token only when one was
    /// configured. [`Gateway::serve_router`] does this for you; call it when you serve the router
    /// with your own `axum::serve`.
    pub fn guard_admin(&self, router: Router) -> Router {
        router.layer(middleware::from_fn_with_state(
            self.inner.clone(),
            admin_guard,
        ))
    }

    /// Runs the authentication hook (see [`Gateway::with_auth`]) on every request of `router`
    /// before its handlers: for routes of your own that do not go through
    /// [`Gateway::forward`] (the workflow routes, say). Call it on the gateway that has the hook.
    pub fn guard_auth(&self, router: Router) -> Router {
        router.layer(middleware::from_fn_with_state(
            self.inner.clone(),
            auth_guard,
        ))
    }

    /// Sends one request to an object, from a route of your own (for example
    /// `/rooms/{name}` → namespace `chat`). Same behaviour as the `/objects` routes — auth hook,
    /// error mapping, WebSocket upgrades — except that the object sees the request's URI
    /// unchanged.
    pub async fn forward(
        &self,
        namespace: &str,
        name: &str,
        req: axum::extract::Request,
    ) -> Response {
        let span = tracing::info_span!("object", namespace = %namespace, object = %name, method = %req.method());
        let resp = forward::forward(self.inner.clone(), req, namespace, name, None)
            .instrument(span)
            .await;
        self.inner.metrics.count_status(resp.status());
        resp
    }

    /// Whether the gateway can serve: its options are valid and it has an admin token (a
    /// generated one's file may be unusable). [`Gateway::serve_router`] starts with this check.
    pub fn check(&self) -> Result<(), Error> {
        self.inner.options.validate()?;
        match self.inner.admin.problem() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Serves [`Gateway::router`] until `shutdown` resolves, then shuts down gracefully (see
    /// [`Gateway::serve_router`]).
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        self.serve_router(listener, self.router(), shutdown).await
    }

    /// Serves an application's router (built from [`Gateway::router`]) until `shutdown`
    /// resolves. Then: no new connections, in-flight HTTP requests finish (for up to
    /// `shutdown_timeout`, then their connections are closed), every WebSocket is closed with
    /// 1001 "going away" (waiting up to `shutdown_grace` for the handshakes), and the runtime
    /// finishes its queued events, commits and stops.
    ///
    /// While serving, a connection that does not send a request's headers within
    /// `header_read_timeout` (idle keep-alive connections included) is closed, and at most
    /// `max_connections` are open at once.
    pub async fn serve_router(
        &self,
        listener: tokio::net::TcpListener,
        router: Router,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        self.check()?;
        let addr = listener.local_addr().ok();
        tracing::info!(?addr, "gateway serving");
        let signal = self.inner.shutdown.clone();
        let options = &self.inner.options;
        let limits = server::Limits {
            header_read_timeout: options.header_read_timeout,
            max_connections: options.max_connections,
            shutdown_timeout: options.shutdown_timeout,
            linger: options.close_timeout,
        };
        server::serve(listener, self.guard_admin(router), limits, async move {
            shutdown.await;
            tracing::info!("shutting down: finishing requests, closing sockets with 1001");
            // Sockets start their close handshakes while HTTP requests finish.
            signal.send_replace(true);
        })
        .await;
        self.inner.shutdown.send_replace(true);
        let grace = self.inner.options.shutdown_grace;
        if tokio::time::timeout(grace, self.inner.metrics.sockets_closed())
            .await
            .is_err()
        {
            tracing::warn!(
                open = self.inner.metrics.websocket_connections.get(),
                "sockets still closing after the shutdown grace period; stopping anyway"
            );
        }
        self.inner.runtime.shutdown().await;
        tracing::info!("gateway stopped");
        Ok(())
    }
}

/// `POST /admin/sql/<namespace>/<name>` (`?id` when `<name>` is an object id) with
/// `{"query": "<sql>"}` as a JSON body: runs it as an event of the object (see [`Runtime::sql`]) and answers
/// `{"columns", "rows", "rows_read", "rows_written"}`; blobs are `{"blob": "<hex>"}`.
async fn sql_route(
    State(inner): State<Arc<Inner>>,
    axum::extract::Path((namespace, object)): axum::extract::Path<(String, String)>,
    uri: Uri,
    body: Bytes,
) -> Response {
    let query = match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(v) => match v.get("query").and_then(|q| q.as_str()) {
            Some(q) => q.to_string(),
            None => {
                return text(
                    StatusCode::BAD_REQUEST,
                    r#"send the query as {"query": "<sql>"}"#,
                );
            }
        },
        Err(e) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!(r#"the body is not JSON ({e}); send {{"query": "<sql>"}}"#),
            );
        }
    };
    let by_id = uri
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "id" || kv.starts_with("id=")));
    let address = if by_id {
        denizen_runtime::admin::Address::Id(&object)
    } else {
        denizen_runtime::admin::Address::Name(&object)
    };
    match inner.runtime.sql(&namespace, address, &query).await {
        Ok(cursor) => {
            use denizen_runtime::Value;
            let cell = |v: &Value| match v {
                Value::Null => serde_json::Value::Null,
                Value::Integer(i) => serde_json::json!(i),
                Value::Real(r) => serde_json::json!(r),
                Value::Text(t) => serde_json::json!(t),
                Value::Blob(b) => serde_json::json!({
                    "blob": b.iter().map(|x| format!("{x:02x}")).collect::<String>()
                }),
            };
            let rows: Vec<Vec<serde_json::Value>> = cursor
                .rows()
                .iter()
                .map(|row| row.iter().map(cell).collect())
                .collect();
            let answer = serde_json::json!({
                "columns": cursor.columns(),
                "rows": rows,
                "rows_read": cursor.rows_read(),
                "rows_written": cursor.rows_written(),
            });
            (
                [(header::CONTENT_TYPE, "application/json")],
                answer.to_string(),
            )
                .into_response()
        }
        // Bad SQL, a refused statement, a constraint, a query past its time budget or its row
        // or byte cap (TimeBudget, TooManyRows, ResultTooLarge): the operator's to fix.
        Err(e @ RuntimeError::Storage(_)) => text(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e) => error_response(&e),
    }
}

async fn metrics_route(State(inner): State<Arc<Inner>>) -> Response {
    let mut body = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut body, &inner.registry) {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding the metrics failed: {e}"),
        );
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}
