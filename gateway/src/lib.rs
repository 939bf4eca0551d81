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
mod metrics;
mod server;
mod socket;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{FromRequestParts, OriginalUri, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use bytes::Bytes;
use denizen_runtime::{Error as RuntimeError, Runtime, Upgrade};
use http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use percent_encoding::percent_decode_str;
use tokio::sync::watch;
use tracing::Instrument;

pub use auth::ADMIN_TOKEN_FILE;
use auth::AdminSecret;
pub use error::Error;
pub use metrics::Metrics;

/// Gateway options.
#[derive(Clone, Debug)]
pub struct Options {
    /// Largest incoming WebSocket message (and frame); a bigger one closes that socket with 1009.
    /// Default 32 MiB, as in Durable Objects.
    pub max_message_size: usize,
    /// Largest HTTP request body forwarded to an object (413 beyond). Default 32 MiB.
    pub max_body_size: usize,
    /// Ping interval; a peer silent for two intervals is dropped (1006 to the object).
    /// Default 30 s; `None` disables heartbeats.
    pub heartbeat_interval: Option<Duration>,
    /// The token admin routes (`/admin/*`, `/workflows/*`, `/inspector`) need as
    /// `Authorization: Bearer <token>`. They always need one: when this is `None` the gateway
    /// generates one and keeps it in `<data-dir>/admin.token` (mode 0600), where the CLI finds
    /// it. When set here it also guards `/metrics`, which is otherwise open.
    pub admin_token: Option<String>,
    /// How long shutdown waits for sockets to finish their close handshakes. Default 5 s.
    pub shutdown_grace: Duration,
    /// How long a closing socket waits for the peer's close frame. Default 5 s.
    pub close_timeout: Duration,
    /// Bytes an object's messages to one WebSocket may add up to while the client has not read
    /// them; past it they are dropped and the socket is closed with 1008 (a single message to an
    /// empty queue always goes). Default 16 MiB.
    pub max_send_backlog: usize,
    /// How long a client may take to send a request's headers, counted from the moment the
    /// connection waits for a request: it bounds a slow header and an idle keep-alive connection
    /// alike (that long without a new request, the connection is closed). Default 30 s.
    pub header_read_timeout: Duration,
    /// Open connections (WebSockets included) at most; past it new connections wait in the
    /// listen backlog until one closes. Default 16384.
    pub max_connections: usize,
    /// How long shutdown lets HTTP requests in flight finish; connections still open then are
    /// closed (a slow client or a handler that never returns cannot hold the process). Default
    /// 10 s.
    pub shutdown_timeout: Duration,
    /// Bytes tungstenite reads per syscall and keeps allocated per socket. Small keeps idle
    /// sockets cheap (this buffer is most of what the gateway keeps per idle socket); big messages
    /// still arrive, in more reads. Default 1 KiB.
    pub socket_read_buffer: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_message_size: 32 << 20,
            max_body_size: 32 << 20,
            heartbeat_interval: Some(Duration::from_secs(30)),
            admin_token: None,
            shutdown_grace: Duration::from_secs(5),
            close_timeout: Duration::from_secs(5),
            socket_read_buffer: 1024,
            max_send_backlog: 16 << 20,
            header_read_timeout: Duration::from_secs(30),
            max_connections: 16384,
            shutdown_timeout: Duration::from_secs(10),
        }
    }
}

impl Options {
    fn validate(&self) -> Result<(), Error> {
        let bad = |field: &'static str, why: &str| {
            Err(Error::InvalidOptions {
                field,
                reason: why.to_string(),
            })
        };
        if self.max_message_size == 0 {
            return bad("max_message_size", "must be at least 1 byte");
        }
        if self.heartbeat_interval.is_some_and(|d| d.is_zero()) {
            return bad(
                "heartbeat_interval",
                "must be above zero; use None to disable heartbeats",
            );
        }
        if self.socket_read_buffer == 0 {
            return bad("socket_read_buffer", "must be at least 1 byte");
        }
        if self.header_read_timeout.is_zero() {
            return bad("header_read_timeout", "must be above zero");
        }
        if self.max_connections == 0 {
            return bad("max_connections", "must be at least 1");
        }
        Ok(())
    }
}

/// An authentication hook's refusal: answered as `status` with `message` as a text body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// Usually 401 (who are you?) or 403 (not allowed).
    pub status: StatusCode,
    pub message: String,
}

impl Rejection {
    /// A refusal with any status (use a 4xx).
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Rejection {
            status,
            message: message.into(),
        }
    }

    /// 401: the caller did not prove who it is.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Rejection::new(StatusCode::UNAUTHORIZED, message)
    }

    /// 403: the caller is known but not allowed.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Rejection::new(StatusCode::FORBIDDEN, message)
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.status, self.message)
    }
}

type AuthHook = dyn Fn(&http::request::Parts) -> Result<(), Rejection> + Send + Sync;

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

    pub fn runtime(&self) -> &Runtime {
        &self.inner.runtime
    }

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
        let resp = forward(self.inner.clone(), req, namespace, name, None)
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

/// A plain-text answer ending in a newline.
fn text(status: StatusCode, body: impl Into<String>) -> Response {
    let mut body = body.into();
    if !body.ends_with('\n') {
        body.push('\n');
    }
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

fn error_response(e: &RuntimeError) -> Response {
    let status = match e {
        RuntimeError::UnknownNamespace(_) | RuntimeError::NoSuchObject { .. } => {
            StatusCode::NOT_FOUND
        }
        RuntimeError::InvalidId { .. } => StatusCode::BAD_REQUEST,
        RuntimeError::Overloaded { .. }
        | RuntimeError::ShuttingDown
        | RuntimeError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        // The object was reset; the caller may try again, the handler's author should look.
        RuntimeError::EventTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    if status.is_server_error() {
        tracing::warn!(error = %e, "object request failed");
    }
    let mut resp = text(status, e.to_string());
    if status == StatusCode::SERVICE_UNAVAILABLE {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}

/// Splits `<namespace>/<name>[/rest]` (a path after its route's prefix): namespace and name
/// percent-decoded as UTF-8, `rest` (at least `/`) keeps its encoding. `None` when the namespace
/// or the name is missing or does not decode. Routes of your own that name objects should use it,
/// so that `caf%C3%A9` and `café` are one object everywhere.
pub fn split_path(path: &str) -> Option<(String, String, String)> {
    let mut parts = path.splitn(3, '/');
    let ns = parts.next().filter(|s| !s.is_empty())?;
    let name = parts.next().filter(|s| !s.is_empty())?;
    let rest = parts.next().unwrap_or("");
    let decode = |s: &str| {
        percent_decode_str(s)
            .decode_utf8()
            .ok()
            .map(|c| c.into_owned())
    };
    Some((decode(ns)?, decode(name)?, format!("/{rest}")))
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

async fn object_route(State(inner): State<Arc<Inner>>, req: axum::extract::Request) -> Response {
    let path = req.uri().path().strip_prefix("/objects/").unwrap_or("");
    let Some((namespace, name, rest)) = split_path(path) else {
        let resp = text(
            StatusCode::NOT_FOUND,
            "address an object as /objects/<namespace>/<name>[/path]",
        );
        inner.metrics.count_status(resp.status());
        return resp;
    };
    // The object sees its own path: /rest?query.
    let object_uri = match req.uri().query() {
        Some(q) => format!("{rest}?{q}"),
        None => rest,
    };
    let span = tracing::info_span!("object", namespace = %namespace, object = %name, method = %req.method());
    let resp = match object_uri.parse::<Uri>() {
        Ok(uri) => {
            forward(inner.clone(), req, &namespace, &name, Some(uri))
                .instrument(span)
                .await
        }
        Err(_) => text(
            StatusCode::BAD_REQUEST,
            "the request path is not a valid URI",
        ),
    };
    inner.metrics.count_status(resp.status());
    resp
}

/// One request to one object: auth hook, upgrade offer, error mapping. `object_uri` replaces the
/// request's URI for the object (the original goes into the extensions either way).
async fn forward(
    inner: Arc<Inner>,
    req: axum::extract::Request,
    namespace: &str,
    name: &str,
    object_uri: Option<Uri>,
) -> Response {
    let (mut parts, body) = req.into_parts();
    if let Some(auth) = &inner.auth
        && let Err(r) = auth(&parts)
    {
        tracing::debug!(status = %r.status, "refused by the auth hook");
        return text(r.status, r.message);
    }
    if !inner.runtime.has_namespace(namespace) {
        return error_response(&RuntimeError::UnknownNamespace(namespace.to_string()));
    }
    let upgrade = if is_upgrade(&parts.headers) {
        match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
            Ok(ws) => Some(ws),
            Err(rejection) => return text(rejection.status(), rejection.body_text()),
        }
    } else {
        None
    };
    let body = if upgrade.is_some() {
        Bytes::new()
    } else {
        match read_body(&parts.headers, body, inner.options.max_body_size).await {
            Ok(b) => b,
            Err(resp) => return resp,
        }
    };
    let original = parts.uri.clone();
    let mut object_req = http::Request::new(body);
    *object_req.method_mut() = parts.method;
    *object_req.uri_mut() = object_uri.unwrap_or(parts.uri);
    *object_req.version_mut() = parts.version;
    *object_req.headers_mut() = parts.headers;
    // Whatever the application's middleware attached (a user id, say) travels on to the object.
    *object_req.extensions_mut() = parts.extensions;
    object_req.extensions_mut().insert(OriginalUri(original));

    let Some(ws) = upgrade else {
        return match inner.runtime.fetch(namespace, name, object_req).await {
            Ok(resp) if resp.status() == StatusCode::SWITCHING_PROTOCOLS => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the object answered 101 to a request that is not a WebSocket upgrade",
            ),
            Ok(resp) => {
                let (p, b) = resp.into_parts();
                Response::from_parts(p, Body::from(b))
            }
            Err(e) => error_response(&e),
        };
    };
    upgrade_socket(inner, ws, object_req, namespace, name).await
}

/// Offers the socket to the object; on acceptance answers 101 and spawns the socket's task.
async fn upgrade_socket(
    inner: Arc<Inner>,
    ws: WebSocketUpgrade,
    mut object_req: denizen_runtime::Request,
    namespace: &str,
    name: &str,
) -> Response {
    let (offer, outgoing) = Upgrade::with_backlog_limit(inner.options.max_send_backlog);
    object_req.extensions_mut().insert(offer.clone());
    let resp = match inner.runtime.fetch(namespace, name, object_req).await {
        Ok(resp) => resp,
        Err(e) => return error_response(&e),
    };
    let accepted = offer.accepted();
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        // The object refused the socket (or accepted it and changed its mind): plain HTTP.
        if let Some(handle) = accepted {
            handle.forget();
        }
        let (p, b) = resp.into_parts();
        return Response::from_parts(p, Body::from(b));
    }
    let Some(handle) = accepted else {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the object answered 101 without accepting the socket (call ctx.accept_websocket)",
        );
    };
    tracing::debug!(socket = handle.id(), "websocket accepted");
    let (object_parts, _) = resp.into_parts();
    let mut ws = ws;
    // The object picks the subprotocol by answering with the header, as in Durable Objects.
    if let Some(p) = object_parts
        .headers
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
    {
        ws = ws.protocols([p.to_owned()]);
    }
    let task = socket::SocketTask {
        handle: handle.clone(),
        outgoing,
        backlog: offer.backlog(),
        heartbeat: inner.options.heartbeat_interval,
        close_timeout: inner.options.close_timeout,
        shutdown: inner.shutdown.subscribe(),
        metrics: inner.metrics.clone(),
    };
    let max = inner.options.max_message_size.max(1);
    let mut resp = ws
        .max_message_size(max)
        .max_frame_size(max)
        // Small, fixed buffers: an idle socket must cost a few KiB, not tungstenite's default
        // 128 KiB. Writes go straight to the socket (each send is flushed anyway).
        .read_buffer_size(inner.options.socket_read_buffer.max(1))
        .write_buffer_size(0)
        .on_failed_upgrade(move |e| {
            tracing::warn!(error = %e, "websocket upgrade failed after the object accepted it");
            if handle
                .closed(socket::code::ABNORMAL, "upgrade failed".into(), false)
                .is_err()
            {
                handle.forget();
            }
        })
        .on_upgrade(move |socket| task.run(socket).in_current_span());
    // Headers the object set on its 101 (cookies, say) go out with the handshake.
    for (k, v) in &object_parts.headers {
        if !resp.headers().contains_key(k) && !is_handshake_header(k) {
            resp.headers_mut().append(k.clone(), v.clone());
        }
    }
    resp
}

fn is_handshake_header(name: &header::HeaderName) -> bool {
    [
        header::CONNECTION,
        header::UPGRADE,
        header::SEC_WEBSOCKET_ACCEPT,
        header::SEC_WEBSOCKET_PROTOCOL,
        header::SEC_WEBSOCKET_EXTENSIONS,
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
    ]
    .contains(name)
}

/// The whole body, bounded: 413 past `max`, 400 if the client broke off.
async fn read_body(headers: &HeaderMap, body: Body, max: usize) -> Result<Bytes, Response> {
    let too_large = || {
        text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request bodies are limited to {max} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    axum::body::to_bytes(body, max).await.map_err(|e| {
        let e = e.into_inner();
        if e.is::<http_body_util::LengthLimitError>() {
            too_large()
        } else {
            text(
                StatusCode::BAD_REQUEST,
                format!("could not read the request body: {e}"),
            )
        }
    })
}

async fn auth_guard(
    State(inner): State<Arc<Inner>>,
    req: axum::extract::Request,
    next: Next,
) -> Response {
    let Some(auth) = &inner.auth else {
        return next.run(req).await;
    };
    let (parts, body) = req.into_parts();
    if let Err(r) = auth(&parts) {
        tracing::debug!(status = %r.status, "refused by the auth hook");
        return text(r.status, r.message);
    }
    next.run(axum::extract::Request::from_parts(parts, body))
        .await
}

/// Whether `path` is an operator's door: always behind the admin token.
fn is_admin_door(path: &str) -> bool {
    ["/admin", "/workflows", "/inspector"].iter().any(|door| {
        path.strip_prefix(door)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    })
}

async fn admin_guard(
    State(inner): State<Arc<Inner>>,
    req: axum::extract::Request,
    next: Next,
) -> Response {
    let path = req.uri().path();
    let admin_door = is_admin_door(path);
    let metrics_door = path == "/metrics" && matches!(inner.admin, AdminSecret::Configured(_));
    if !admin_door && !metrics_door {
        return next.run(req).await;
    }
    let Some(token) = inner.admin.token() else {
        let why = inner
            .admin
            .problem()
            .map(|e| e.to_string())
            .unwrap_or_default();
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("admin routes are closed: {why}"),
        );
    };
    let headers = req.headers();
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if !presented.is_some_and(|p| auth::same_secret(p.as_bytes(), token.as_bytes())) {
        let mut resp = text(
            StatusCode::UNAUTHORIZED,
            "this route needs Authorization: Bearer <admin token> (the server's admin_token, or the token in <data-dir>/admin.token)",
        );
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return resp;
    }
    if admin_door {
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
        if let Some(origin) = headers.get(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or("");
            if !auth::same_origin(origin, host) {
                return text(
                    StatusCode::FORBIDDEN,
                    "admin routes refuse cross-site requests: the Origin header names another site than this server",
                );
            }
        }
        let json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(auth::is_json);
        if !req.method().is_safe() && !json {
            return text(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "admin routes take JSON: send Content-Type: application/json (other types are refused so that web pages cannot forge these requests)",
            );
        }
    }
    next.run(req).await
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_and_decode() {
        assert_eq!(
            split_path("counter/alice/increment"),
            Some(("counter".into(), "alice".into(), "/increment".into()))
        );
        assert_eq!(
            split_path("chat/the%20lobby"),
            Some(("chat".into(), "the lobby".into(), "/".into()))
        );
        assert_eq!(
            split_path("a/b/c/d%2F"),
            Some(("a".into(), "b".into(), "/c/d%2F".into()))
        );
        assert_eq!(
            split_path("a/b/"),
            Some(("a".into(), "b".into(), "/".into()))
        );
        assert_eq!(split_path("counter"), None);
        assert_eq!(split_path("counter/"), None);
        assert_eq!(split_path("/x"), None);
        assert_eq!(split_path("a/%FF"), None);
    }

    #[test]
    fn runtime_errors_map_to_statuses() {
        let overloaded = error_response(&RuntimeError::Overloaded {
            namespace: "chat".into(),
            id: "abc".into(),
            capacity: 4,
        });
        assert_eq!(overloaded.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(overloaded.headers()[header::RETRY_AFTER], "1");
        let cases = [
            (RuntimeError::UnknownNamespace("x".into()), 404),
            (
                RuntimeError::InvalidId {
                    namespace: "x".into(),
                    reason: "bad".into(),
                },
                400,
            ),
            (RuntimeError::ShuttingDown, 503),
            (
                RuntimeError::EventTimeout {
                    after: Duration::from_secs(1),
                },
                504,
            ),
            (RuntimeError::Unavailable, 503),
            (
                RuntimeError::Panicked {
                    message: "boom".into(),
                },
                500,
            ),
            (RuntimeError::msg("app error"), 500),
        ];
        for (e, status) in cases {
            assert_eq!(error_response(&e).status().as_u16(), status, "{e}");
        }
    }

    #[test]
    fn admin_doors() {
        for p in [
            "/admin",
            "/admin/sql/a/b",
            "/workflows",
            "/workflows/x/y",
            "/inspector",
        ] {
            assert!(is_admin_door(p), "{p}");
        }
        for p in [
            "/administrator",
            "/workflowsx",
            "/objects/admin/x",
            "/metrics",
            "/",
        ] {
            assert!(!is_admin_door(p), "{p}");
        }
    }

    #[test]
    fn options_are_validated() {
        assert!(Options::default().validate().is_ok());
        let zero_beat = Options {
            heartbeat_interval: Some(Duration::ZERO),
            ..Options::default()
        };
        let err = zero_beat.validate().unwrap_err().to_string();
        assert!(err.contains("heartbeat_interval"), "{err}");
    }
}
