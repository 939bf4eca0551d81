//! The front door of Denizen: HTTP and WebSockets to durable objects, on axum.
//!
//! Why it exists: a Durable Object is reached through a Worker that routes requests and holds
//! WebSockets while the object sleeps. This crate is that piece: it routes
//! `/objects/<namespace>/<name>[/rest]` to the object's `fetch`, hands WebSocket upgrades to the
//! object to accept, and then owns each socket — the object can hibernate while its sockets stay
//! open; a message wakes it; auto-responses and pings are answered without waking it.
//!
//! Also: an authentication hook that sees every request and upgrade before any object does,
//! server heartbeats that detect dead peers, a message size limit (close 1009), `/metrics` in
//! Prometheus format (optionally behind a bearer token), `/healthz`, and graceful shutdown that
//! finishes in-flight requests, closes sockets with 1001 and stops the runtime.
//!
//! ```no_run
//! use denizen_gateway::{Config, Gateway, Rejection};
//! use denizen_runtime::{DurableObject, Runtime};
//!
//! #[derive(Default)]
//! struct Room;
//! impl DurableObject for Room {}
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let runtime = Runtime::builder().data_dir("./data").object::<Room>("room").build()?;
//! let gateway = Gateway::new(runtime, Config::default()).with_auth(|parts| {
//!     match parts.headers.get("authorization") {
//!         Some(_) => Ok(()),
//!         None => Err(Rejection::unauthorized("send a bearer token")),
//!     }
//! });
//! // Mount your own routes beside the gateway's:
//! let app = gateway.router().route("/hello", axum::routing::get(|| async { "hi" }));
//! # let _ = app;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8787").await?;
//! gateway.serve(listener, async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(())
//! # }
//! ```

mod error;
mod metrics;
mod socket;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{FromRequestParts, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use bytes::Bytes;
use denizen_runtime::{Error as RuntimeError, Runtime, Upgrade};
use http::{HeaderValue, StatusCode, header};
use percent_encoding::percent_decode_str;
use tokio::sync::watch;
use tracing::Instrument;

pub use error::Error;
pub use metrics::Metrics;

/// Gateway settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// Largest WebSocket message; a bigger one closes that socket with 1009. Default 32 MiB.
    pub max_message_size: usize,
    /// Largest HTTP request body forwarded to an object (413 beyond). Default 32 MiB.
    pub max_body_size: usize,
    /// Ping interval; a peer silent for two intervals is considered dead. Default 30 s.
    pub heartbeat_interval: Option<Duration>,
    /// When set, `/metrics` and `/admin/*` need `Authorization: Bearer <token>`.
    pub admin_token: Option<String>,
    /// How long shutdown waits for sockets to finish their close handshake. Default 5 s.
    pub shutdown_grace: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_message_size: 32 << 20,
            max_body_size: 32 << 20,
            heartbeat_interval: Some(Duration::from_secs(30)),
            admin_token: None,
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// An authentication hook's refusal.
#[derive(Clone, Debug)]
pub struct Rejection {
    pub status: StatusCode,
    pub message: String,
}

impl Rejection {
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Rejection {
            status: StatusCode::UNAUTHORIZED,
            message: message.into(),
        }
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Rejection {
            status: StatusCode::FORBIDDEN,
            message: message.into(),
        }
    }
}

type AuthHook = dyn Fn(&http::request::Parts) -> Result<(), Rejection> + Send + Sync;

struct Inner {
    runtime: Runtime,
    config: Config,
    auth: Option<Arc<AuthHook>>,
    metrics: Arc<Metrics>,
    shutdown: watch::Sender<bool>,
}

/// The HTTP and WebSocket front door for a [`Runtime`].
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

impl Gateway {
    pub fn new(runtime: Runtime, config: Config) -> Self {
        Gateway {
            inner: Arc::new(Inner {
                runtime,
                config,
                auth: None,
                metrics: Arc::new(Metrics::default()),
                shutdown: watch::channel(false).0,
            }),
        }
    }

    /// Sets the hook that sees every object request and WebSocket upgrade first; an `Err`
    /// answers with its status (a socket is refused before the upgrade).
    pub fn with_auth(
        self,
        hook: impl Fn(&http::request::Parts) -> Result<(), Rejection> + Send + Sync + 'static,
    ) -> Self {
        let inner = Inner {
            runtime: self.inner.runtime.clone(),
            config: self.inner.config.clone(),
            auth: Some(Arc::new(hook)),
            metrics: self.inner.metrics.clone(),
            shutdown: self.inner.shutdown.clone(),
        };
        Gateway {
            inner: Arc::new(inner),
        }
    }

    pub fn runtime(&self) -> &Runtime {
        &self.inner.runtime
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The gateway's routes: `/objects/...`, `/metrics`, `/healthz`. Merge your own into it.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/objects/{*path}", any(object_route))
            .route("/metrics", get(metrics_route))
            .route("/healthz", get(|| async { "ok\n" }))
            .with_state(self.inner.clone())
    }

    /// Serves [`Gateway::router`] until `shutdown` resolves, then shuts down gracefully.
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        self.serve_router(listener, self.router(), shutdown).await
    }

    /// Like [`Gateway::serve`] with an application's router (built from [`Gateway::router`]).
    pub async fn serve_router(
        &self,
        listener: tokio::net::TcpListener,
        router: Router,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        let signal = self.inner.shutdown.clone();
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                shutdown.await;
                tracing::info!("shutting down: finishing requests, closing sockets with 1001");
                // Sockets start their close handshakes while HTTP requests finish.
                let _ = signal.send(true);
            })
            .await
            .map_err(Error::Serve)?;
        let _ = self.inner.shutdown.send(true);
        let deadline = tokio::time::Instant::now() + self.inner.config.shutdown_grace;
        while self
            .inner
            .metrics
            .websocket_connections
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.inner.runtime.shutdown().await;
        Ok(())
    }
}

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
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let mut resp = text(status, e.to_string());
    if status == StatusCode::SERVICE_UNAVAILABLE {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}

/// `<namespace>/<name>[/rest]`, percent-decoded; `rest` keeps its encoding.
fn split_path(path: &str) -> Option<(String, String, String)> {
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

fn is_upgrade(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

async fn object_route(State(inner): State<Arc<Inner>>, req: axum::extract::Request) -> Response {
    let path = req
        .uri()
        .path()
        .strip_prefix("/objects/")
        .unwrap_or_default()
        .to_string();
    let Some((namespace, name, rest)) = split_path(&path) else {
        return text(
            StatusCode::NOT_FOUND,
            "address an object as /objects/<namespace>/<name>[/path]",
        );
    };
    let span = tracing::info_span!("request", namespace = %namespace, object = %name, method = %req.method());
    let resp = handle_object(inner.clone(), req, namespace, name, rest)
        .instrument(span)
        .await;
    inner.metrics.count_status(resp.status());
    resp
}

async fn handle_object(
    inner: Arc<Inner>,
    req: axum::extract::Request,
    namespace: String,
    name: String,
    rest: String,
) -> Response {
    let (mut parts, body) = req.into_parts();
    if let Some(auth) = &inner.auth
        && let Err(r) = auth(&parts)
    {
        return text(r.status, r.message);
    }
    if !inner.runtime.has_namespace(&namespace) {
        return error_response(&RuntimeError::UnknownNamespace(namespace));
    }
    let upgrade = if is_upgrade(&parts.headers) {
        match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
            Ok(ws) => Some(ws),
            Err(rejection) => return rejection.into_response(),
        }
    } else {
        None
    };
    let body = if upgrade.is_some() {
        Bytes::new()
    } else {
        match axum::body::to_bytes(body, inner.config.max_body_size).await {
            Ok(b) => b,
            Err(_) => {
                return text(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!(
                        "request bodies are limited to {} bytes",
                        inner.config.max_body_size
                    ),
                );
            }
        }
    };
    // The object sees its own path: /rest?query. The original URI stays in the extensions.
    let uri = match parts.uri.query() {
        Some(q) => format!("{rest}?{q}"),
        None => rest,
    };
    let mut object_req = http::Request::new(body);
    *object_req.method_mut() = parts.method.clone();
    *object_req.headers_mut() = parts.headers.clone();
    *object_req.version_mut() = parts.version;
    match uri.parse() {
        Ok(u) => *object_req.uri_mut() = u,
        Err(_) => {
            return text(
                StatusCode::BAD_REQUEST,
                "the request path is not a valid URI",
            );
        }
    }
    object_req
        .extensions_mut()
        .insert(axum::extract::OriginalUri(parts.uri.clone()));

    let Some(ws) = upgrade else {
        return match inner.runtime.fetch(&namespace, &name, object_req).await {
            Ok(resp) => {
                let (p, b) = resp.into_parts();
                Response::from_parts(p, Body::from(b))
            }
            Err(e) => error_response(&e),
        };
    };

    let (offer, outgoing) = Upgrade::new();
    object_req.extensions_mut().insert(offer.clone());
    let resp = match inner.runtime.fetch(&namespace, &name, object_req).await {
        Ok(resp) => resp,
        Err(e) => return error_response(&e),
    };
    let accepted = offer.accepted();
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
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
    let task = socket::SocketTask {
        handle: handle.clone(),
        outgoing,
        heartbeat: inner.config.heartbeat_interval,
        shutdown: inner.shutdown.subscribe(),
        metrics: inner.metrics.clone(),
    };
    let max = inner.config.max_message_size;
    ws.max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .on_failed_upgrade(move |e| {
            tracing::warn!(error = %e, "websocket upgrade failed");
            if handle.closed(1006, "upgrade failed".into(), false).is_err() {
                handle.forget();
            }
        })
        .on_upgrade(move |socket| task.run(socket).in_current_span())
}

async fn metrics_route(State(inner): State<Arc<Inner>>, req: axum::extract::Request) -> Response {
    if let Some(token) = &inner.config.admin_token {
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if presented != Some(token.as_str()) {
            let mut resp = text(
                StatusCode::UNAUTHORIZED,
                "this route needs Authorization: Bearer <admin token>",
            );
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return resp;
        }
    }
    let mut body = inner.runtime.metrics().render_prometheus();
    inner.metrics.render(&mut body);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

#[cfg(test)]
mod tests {
    use super::split_path;

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
        assert_eq!(split_path("counter"), None);
        assert_eq!(split_path("counter/"), None);
        assert_eq!(split_path("/x"), None);
    }
}
