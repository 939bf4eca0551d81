//! One connection to one MCP server: transport selection in the order of the spec, the rmcp
//! client handler that turns server notifications into events for the manager, and progress
//! routing.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{Arc, Mutex},
    time::Duration,
};

use rmcp::{
    ClientHandler, ErrorData, RoleClient,
    model::{
        ClientCapabilities, ClientConfig, ElicitRequestParams, ElicitResult, ElicitationAction,
        ElicitationCapability, FormElicitationCapability, Implementation,
        ProgressNotificationParam, ProgressToken, ProtocolVersion,
    },
    service::{
        ClientInitializeError, ClientLifecycleMode, ClientServiceExt, NotificationContext,
        RequestContext, RunningService,
    },
    transport::{
        AuthClient, StreamableHttpClientTransport,
        common::client_side_sse::ExponentialBackoff,
        streamable_http_client::{StreamableHttpClient, StreamableHttpClientTransportConfig},
    },
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::{debug, info};

use crate::{
    Error, Result,
    auth::{OAuthCell, authorization_manager},
    http::SessionHttpClient,
    sse::{self, SseClientTransport},
};

/// Which wire transport a server speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TransportKind {
    /// Streamable HTTP (one endpoint, POST per message).
    StreamableHttp,
    /// The legacy HTTP+SSE transport of 2024-11-05.
    Sse,
}

/// Which lifecycle a server speaks on Streamable HTTP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Era {
    /// 2026-07-28 and later: stateless, `server/discover`, per-request `_meta`.
    Modern,
    /// Up to 2025-11-25: `initialize`, `Mcp-Session-Id`.
    Legacy,
}

/// What worked last time for a server; tried first on the next connect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// The transport that connected.
    pub transport: TransportKind,
    /// The protocol era it spoke.
    pub era: Era,
}

/// Which transport to use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TransportPreference {
    /// Streamable HTTP (modern, then legacy lifecycle), then legacy SSE on 400/404/405.
    #[default]
    Auto,
    /// Streamable HTTP only (either era).
    StreamableHttp,
    /// Legacy SSE only.
    Sse,
}

/// Which of a server's lists it said changed (`notifications/*/list_changed`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ServerEvent {
    Tools,
    Prompts,
    Resources,
}

/// A progress notification for a request in flight.
#[derive(Clone, Debug, PartialEq)]
pub struct Progress {
    /// How far the request got; grows with every notification.
    pub progress: f64,
    /// Where it ends, when the server knows.
    pub total: Option<f64>,
    /// What the server is doing.
    pub message: Option<String>,
}

impl From<ProgressNotificationParam> for Progress {
    fn from(p: ProgressNotificationParam) -> Self {
        Progress {
            progress: p.progress,
            total: p.total,
            message: p.message,
        }
    }
}

/// Progress listeners by token. Notifications that arrive before their listener registers (the
/// request goes out before its handle comes back) wait in `early`.
#[derive(Default)]
pub(crate) struct ProgressRoutes {
    listeners: HashMap<ProgressToken, mpsc::UnboundedSender<Progress>>,
    early: Vec<(ProgressToken, Progress)>,
}

const EARLY_PROGRESS_LIMIT: usize = 64;

impl ProgressRoutes {
    pub(crate) fn register(
        routes: &Mutex<ProgressRoutes>,
        token: ProgressToken,
        tx: mpsc::UnboundedSender<Progress>,
    ) {
        let Ok(mut r) = routes.lock() else { return };
        let early = std::mem::take(&mut r.early);
        for (t, p) in early {
            if t == token {
                let _ = tx.send(p);
            } else {
                r.early.push((t, p));
            }
        }
        r.listeners.insert(token, tx);
    }

    pub(crate) fn unregister(routes: &Mutex<ProgressRoutes>, token: &ProgressToken) {
        if let Ok(mut r) = routes.lock() {
            r.listeners.remove(token);
            r.early.retain(|(t, _)| t != token);
        }
    }

    fn deliver(routes: &Mutex<ProgressRoutes>, param: ProgressNotificationParam) {
        let Ok(mut r) = routes.lock() else { return };
        let token = param.progress_token.clone();
        match r.listeners.get(&token) {
            Some(tx) => {
                let _ = tx.send(param.into());
            }
            None => {
                if r.early.len() >= EARLY_PROGRESS_LIMIT {
                    r.early.remove(0);
                }
                r.early.push((token, param.into()));
            }
        }
    }
}

/// Answers a server's `elicitation/create` (form mode): typically by asking the agent's user.
/// Without one the client does not declare elicitation and servers do not ask.
pub trait ElicitationHandler: Send + Sync + 'static {
    /// `server_id` is the manager's id of the asking server.
    fn elicit(
        &self,
        server_id: &str,
        request: ElicitRequestParams,
    ) -> Pin<Box<dyn Future<Output = ElicitResult> + Send + 'static>>;
}

/// The rmcp client handler of one connection.
pub(crate) struct Handler {
    info: ClientConfig,
    server_id: String,
    elicitation: Option<Arc<dyn ElicitationHandler>>,
    events: mpsc::UnboundedSender<ServerEvent>,
    pub(crate) progress: Arc<Mutex<ProgressRoutes>>,
}

impl ClientHandler for Handler {
    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        ProgressRoutes::deliver(&self.progress, params);
    }

    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        let _ = self.events.send(ServerEvent::Tools);
    }

    async fn on_prompt_list_changed(&self, _context: NotificationContext<RoleClient>) {
        let _ = self.events.send(ServerEvent::Prompts);
    }

    async fn on_resource_list_changed(&self, _context: NotificationContext<RoleClient>) {
        let _ = self.events.send(ServerEvent::Resources);
    }

    async fn create_elicitation(
        &self,
        request: ElicitRequestParams,
        _context: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, ErrorData> {
        match &self.elicitation {
            Some(handler) => Ok(handler.elicit(&self.server_id, request).await),
            None => Ok(ElicitResult::new(ElicitationAction::Decline)),
        }
    }

    fn get_info(&self) -> ClientConfig {
        self.info.clone()
    }
}

/// Settings for one connection attempt.
#[derive(Clone)]
pub(crate) struct Dial {
    pub url: String,
    pub preference: TransportPreference,
    pub remembered: Option<Route>,
    pub bearer_token: Option<String>,
    pub client_name: String,
    pub client_version: String,
    pub http: reqwest::Client,
    pub connect_timeout: Duration,
    /// The server's OAuth store, and whether metadata on private addresses is allowed.
    pub oauth: Option<(OAuthCell, bool)>,
    pub server_id: String,
    pub elicitation: Option<Arc<dyn ElicitationHandler>>,
}

pub(crate) struct Connected {
    pub service: RunningService<RoleClient, Handler>,
    pub route: Route,
    pub progress: Arc<Mutex<ProgressRoutes>>,
    /// Requests carry the OAuth cell's current token (read per request, so a re-authorization
    /// takes effect on this connection without dialling again).
    pub oauth: bool,
}

/// True for the statuses after which the spec says to try the legacy SSE transport.
fn is_sse_fallback_status(message: &str) -> bool {
    [
        "HTTP 400",
        "HTTP 404",
        "HTTP 405",
        "400 Bad Request",
        "404 Not Found",
        "405 Method Not Allowed",
    ]
    .iter()
    .any(|s| message.contains(s))
}

fn handler(dial: &Dial, events: mpsc::UnboundedSender<ServerEvent>) -> Handler {
    let mut capabilities = ClientCapabilities::default();
    if dial.elicitation.is_some() {
        let mut elicitation = ElicitationCapability::new();
        elicitation.form = Some(FormElicitationCapability::default());
        capabilities.elicitation = Some(elicitation);
    }
    let info = ClientConfig::new(
        capabilities,
        Implementation::new(dial.client_name.clone(), dial.client_version.clone()),
    );
    Handler {
        info,
        server_id: dial.server_id.clone(),
        elicitation: dial.elicitation.clone(),
        events,
        progress: Arc::default(),
    }
}

async fn dial_streamable(
    dial: &Dial,
    era: Option<Era>,
    events: mpsc::UnboundedSender<ServerEvent>,
) -> Result<Connected> {
    let http = SessionHttpClient::new(dial.http.clone());
    if let Some((cell, allow_private)) = &dial.oauth {
        let has_token = cell.record.lock().map(|r| r.has_token()).unwrap_or(false);
        if has_token {
            let mut manager = authorization_manager(&dial.url, cell, *allow_private)
                .await
                .map_err(|e| Error::Connect {
                    url: dial.url.clone(),
                    message: format!("authorization setup: {e}"),
                })?;
            match manager.initialize_from_store().await {
                // Tokens are attached (and refreshed when they expire) by rmcp's AuthClient.
                Ok(true) => {
                    let mut connected =
                        serve_streamable(dial, AuthClient::new(http, manager), era, events).await?;
                    connected.oauth = true;
                    return Ok(connected);
                }
                Ok(false) => debug!(url = %dial.url, "stored OAuth credentials not usable"),
                Err(e) => debug!(url = %dial.url, error = %e, "stored OAuth credentials rejected"),
            }
        }
    }
    serve_streamable(dial, http, era, events).await
}

async fn serve_streamable<C>(
    dial: &Dial,
    client: C,
    era: Option<Era>,
    events: mpsc::UnboundedSender<ServerEvent>,
) -> Result<Connected>
where
    C: StreamableHttpClient + Send + Sync,
{
    let mut config = StreamableHttpClientTransportConfig::with_uri(dial.url.clone());
    // A server that went away should surface as an error soon, not after minutes of SSE retries.
    let mut backoff = ExponentialBackoff::default();
    backoff.max_times = Some(3);
    backoff.base_duration = Duration::from_millis(200);
    backoff.max_delay = Some(Duration::from_secs(2));
    config.retry_config = Arc::new(backoff);
    if let Some(token) = &dial.bearer_token {
        config = config.auth_header(token.clone());
    }
    let transport = StreamableHttpClientTransport::with_client(client, config);
    let lifecycle = match era {
        Some(Era::Legacy) => ClientLifecycleMode::Initialize,
        Some(Era::Modern) => ClientLifecycleMode::Discover {
            preferred_versions: vec![ProtocolVersion::V_2026_07_28],
        },
        None => ClientLifecycleMode::Auto {
            preferred_versions: vec![ProtocolVersion::V_2026_07_28],
            legacy_version: Some(ProtocolVersion::V_2025_11_25),
        },
    };
    let handler = handler(dial, events);
    let progress = handler.progress.clone();
    let service = tokio::time::timeout(
        dial.connect_timeout,
        handler.serve_with_lifecycle(transport, lifecycle),
    )
    .await
    .map_err(|_| Error::Connect {
        url: dial.url.clone(),
        message: format!("no answer within {:?}", dial.connect_timeout),
    })?
    .map_err(|e| {
        if e.is_authorization_required() || e.auth_challenge().is_some() {
            Error::AuthorizationRequired {
                url: dial.url.clone(),
                challenge: e.auth_challenge().map(str::to_owned),
            }
        } else {
            Error::Connect {
                url: dial.url.clone(),
                message: init_error_text(&e),
            }
        }
    })?;
    let version = service
        .peer_info()
        .map(|i| i.protocol_version.clone())
        .unwrap_or(ProtocolVersion::V_2025_11_25);
    let era = if version >= ProtocolVersion::V_2026_07_28 {
        Era::Modern
    } else {
        Era::Legacy
    };
    Ok(Connected {
        service,
        route: Route {
            transport: TransportKind::StreamableHttp,
            era,
        },
        progress,
        oauth: false,
    })
}

async fn dial_sse(dial: &Dial, events: mpsc::UnboundedSender<ServerEvent>) -> Result<Connected> {
    let transport = tokio::time::timeout(
        dial.connect_timeout,
        SseClientTransport::connect(dial.http.clone(), &dial.url, dial.bearer_token.clone()),
    )
    .await
    .map_err(|_| Error::Connect {
        url: dial.url.clone(),
        message: format!("no SSE endpoint event within {:?}", dial.connect_timeout),
    })?
    .map_err(|e| match e {
        sse::Error::Status { status, .. } => Error::Http {
            url: dial.url.clone(),
            status: Some(status),
            message: e.to_string(),
        },
        other => Error::Connect {
            url: dial.url.clone(),
            message: other.to_string(),
        },
    })?;
    let handler = handler(dial, events);
    let progress = handler.progress.clone();
    let service = tokio::time::timeout(
        dial.connect_timeout,
        handler.serve_with_lifecycle(transport, ClientLifecycleMode::Initialize),
    )
    .await
    .map_err(|_| Error::Connect {
        url: dial.url.clone(),
        message: format!("no initialize answer within {:?}", dial.connect_timeout),
    })?
    .map_err(|e| Error::Connect {
        url: dial.url.clone(),
        message: error_chain(&e),
    })?;
    Ok(Connected {
        service,
        route: Route {
            transport: TransportKind::Sse,
            era: Era::Legacy,
        },
        progress,
        oauth: false,
    })
}

/// Connects in the spec's fallback order, trying the remembered route first. A remembered route
/// that fails is forgotten for this attempt and the full order is probed again.
pub(crate) async fn connect(
    dial: &Dial,
    events: mpsc::UnboundedSender<ServerEvent>,
) -> Result<Connected> {
    if let Some(route) = dial.remembered {
        let allowed = match dial.preference {
            TransportPreference::Auto => true,
            TransportPreference::StreamableHttp => route.transport == TransportKind::StreamableHttp,
            TransportPreference::Sse => route.transport == TransportKind::Sse,
        };
        if allowed {
            let attempt = match route.transport {
                TransportKind::StreamableHttp => {
                    dial_streamable(dial, Some(route.era), events.clone()).await
                }
                TransportKind::Sse => dial_sse(dial, events.clone()).await,
            };
            match attempt {
                Ok(c) => return Ok(c),
                Err(e @ Error::AuthorizationRequired { .. }) => return Err(e),
                Err(e) => {
                    debug!(url = %dial.url, error = %e, "remembered route failed; probing again")
                }
            }
        }
    }
    match dial.preference {
        TransportPreference::Sse => dial_sse(dial, events).await,
        TransportPreference::StreamableHttp => dial_streamable(dial, None, events).await,
        TransportPreference::Auto => match dial_streamable(dial, None, events.clone()).await {
            Ok(c) => Ok(c),
            Err(e) => {
                let message = e.to_string();
                // Only these statuses mean "no Streamable HTTP here"; 401/403/5xx are real errors
                // and falling back would hide them.
                let initialize_part = message.rsplit("initialize: ").next().unwrap_or(&message);
                if !is_sse_fallback_status(initialize_part) {
                    return Err(e);
                }
                info!(url = %dial.url, "Streamable HTTP refused; trying the legacy SSE transport");
                dial_sse(dial, events).await.map_err(|sse| Error::Connect {
                    url: dial.url.clone(),
                    message: format!("Streamable HTTP: {message}; legacy SSE: {sse}"),
                })
            }
        },
    }
}

/// An initialization error with both halves of a failed era fallback spelled out; the legacy
/// `initialize` half comes last, since its HTTP status decides the fallback to SSE.
fn init_error_text(e: &ClientInitializeError) -> String {
    match e {
        ClientInitializeError::LegacyFallbackFailed { discover, fallback } => format!(
            "server/discover: {}; initialize: {}",
            init_error_text(discover),
            init_error_text(fallback)
        ),
        other => error_chain(other),
    }
}

/// The error with its sources, so that the HTTP status deep in rmcp's chain is visible.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_400_404_405_fall_back_to_sse() {
        assert!(is_sse_fallback_status("HTTP 404 Not Found: <html>"));
        assert!(is_sse_fallback_status(
            "unexpected server response: HTTP 405"
        ));
        assert!(!is_sse_fallback_status("HTTP 401 Unauthorized"));
        assert!(!is_sse_fallback_status("HTTP 503"));
        assert!(!is_sse_fallback_status("connection refused"));
    }

    #[test]
    fn early_progress_reaches_a_late_listener() {
        let routes = Mutex::new(ProgressRoutes::default());
        let token = ProgressToken(rmcp::model::NumberOrString::Number(7));
        ProgressRoutes::deliver(&routes, ProgressNotificationParam::new(token.clone(), 1.0));
        let (tx, mut rx) = mpsc::unbounded_channel();
        ProgressRoutes::register(&routes, token.clone(), tx);
        assert_eq!(rx.try_recv().map(|p| p.progress), Ok(1.0));
        ProgressRoutes::unregister(&routes, &token);
        assert!(
            routes
                .lock()
                .map(|r| r.listeners.is_empty())
                .unwrap_or(false)
        );
    }
}
