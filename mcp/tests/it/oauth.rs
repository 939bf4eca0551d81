//! The full OAuth 2.1 flow against the TypeScript SDK's example server and its in-memory
//! authorization server: 401 → metadata discovery → dynamic registration → PKCE S256 URL →
//! callback → token → authorized calls; then an object restart that reuses the stored token.

use std::time::Duration;

use crate::support::{Peer, authorize, free_port, init_tracing};
use denizen_mcp::{
    CallOptions, ManagerOptions, McpClientManager, OAuthOptions, ServerConfig, ServerState, store,
};
use denizen_storage::{Database, Durability};
use serde_json::json;

const READY: Duration = Duration::from_secs(30);
const CALLBACK: &str = "http://localhost:1/agents/assistant/callback";

fn options() -> ManagerOptions {
    ManagerOptions {
        // The test's authorization server is on loopback.
        allow_private_oauth_metadata: true,
        ..ManagerOptions::default()
    }
}

async fn wait_for_auth_url(manager: &McpClientManager, id: &str) -> String {
    let mut changes = manager.subscribe();
    tokio::time::timeout(READY, async {
        loop {
            let status = manager.server(id).expect("server");
            if status.state == ServerState::Authenticating
                && let Some(url) = status.auth_url
            {
                return url;
            }
            changes.changed().await.expect("manager alive");
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no authorization URL: {:?}", manager.server(id)))
}

async fn greet(manager: &McpClientManager) -> String {
    let result = manager
        .call_tool("ts__greet", json!({"name": "Ada"}), CallOptions::default())
        .await
        .expect("greet");
    assert_ne!(result.is_error, Some(true), "{result:?}");
    result
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect()
}

#[tokio::test]
async fn full_flow_then_token_reused_after_restart() {
    init_tracing();
    let peer = Peer::ts_oauth(free_port(), free_port()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("agent.sqlite");

    {
        let mut storage = Database::open(&db, Durability::Normal).expect("open");
        let manager = McpClientManager::new(options());
        let mut config = ServerConfig::new("ts", &peer.url);
        config.oauth = Some(OAuthOptions {
            redirect_uri: CALLBACK.into(),
            ..OAuthOptions::default()
        });
        manager.add_server(config).expect("add");
        let auth_url = wait_for_auth_url(&manager, "ts").await;
        assert!(
            auth_url.contains("code_challenge_method=S256"),
            "{auth_url}"
        );
        assert!(auth_url.contains("resource="), "{auth_url}");
        // Persisting mid-flow keeps the PKCE verifier and the registration.
        store::save_all(&mut storage, &manager).expect("save");

        // A callback with a forged state is refused and the flow stays open.
        let forged = format!("{CALLBACK}?code=nope&state=forged");
        assert!(manager.complete_authorization("ts", &forged).await.is_err());

        let callback = authorize(&auth_url, CALLBACK).await;
        let state = manager.agents_state();
        assert_eq!(state["servers"]["ts"]["state"], "authenticating");
        assert_eq!(state["servers"]["ts"]["auth_url"], auth_url.as_str());
        // The object's callback route finds the server from the callback's `state`.
        assert_eq!(
            manager.server_for_callback(&callback).as_deref(),
            Some("ts")
        );
        assert_eq!(manager.server_for_callback(&forged), None);
        manager
            .complete_authorization("ts", &callback)
            .await
            .expect("complete authorization");
        manager.wait_ready("ts", READY).await.expect("ready");
        assert!(greet(&manager).await.contains("Ada"));

        let record = manager
            .oauth_records()
            .into_iter()
            .find(|(id, _)| id == "ts")
            .map(|(_, r)| r)
            .expect("record");
        assert!(record.has_token());
        store::save_all(&mut storage, &manager).expect("save");
        storage.commit().expect("commit");
        manager.close().await;
    }

    // The object restarts: the stored registration and token are used, nobody is asked.
    let mut storage = Database::open(&db, Durability::Normal).expect("reopen");
    let manager = McpClientManager::new(options());
    store::restore(&mut storage, &manager).expect("restore");
    let mut changes = manager.subscribe();
    let status = tokio::time::timeout(READY, async {
        loop {
            let s = manager.server("ts").expect("server");
            assert_ne!(
                s.state,
                ServerState::Authenticating,
                "asked to authorize again: {s:?}"
            );
            if s.state == ServerState::Ready {
                return s;
            }
            changes.changed().await.expect("alive");
        }
    })
    .await
    .expect("ready without the user");
    assert_eq!(status.auth_url, None);
    assert!(greet(&manager).await.contains("Ada"));
    manager.close().await;
}

#[tokio::test]
async fn a_protected_server_without_oauth_options_fails_clearly() {
    init_tracing();
    let peer = Peer::ts_oauth(free_port(), free_port()).await;
    let manager = McpClientManager::new(options());
    manager
        .add_server(ServerConfig::new("ts", &peer.url))
        .expect("add");
    let mut changes = manager.subscribe();
    let status = tokio::time::timeout(READY, async {
        loop {
            let s = manager.server("ts").expect("server");
            if s.state == ServerState::Failed {
                return s;
            }
            changes.changed().await.expect("alive");
        }
    })
    .await
    .expect("fails");
    let text = status.error.unwrap_or_default();
    assert!(text.contains("requires authorization"), "{text}");
    // Calls say why instead of hanging.
    let call = manager
        .call_tool("ts__greet", json!({"name": "x"}), CallOptions::default())
        .await;
    assert!(
        matches!(call, Err(denizen_mcp::Error::NotReady { .. })),
        "{call:?}"
    );
    manager.close().await;
}

#[tokio::test]
async fn callback_after_the_object_restarted_mid_flow() {
    init_tracing();
    let peer = Peer::ts_oauth(free_port(), free_port()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("agent.sqlite");
    let auth_url = {
        let mut storage = Database::open(&db, Durability::Normal).expect("open");
        let manager = McpClientManager::new(options());
        let mut config = ServerConfig::new("ts", &peer.url);
        config.oauth = Some(OAuthOptions {
            redirect_uri: CALLBACK.into(),
            ..OAuthOptions::default()
        });
        manager.add_server(config).expect("add");
        let auth_url = wait_for_auth_url(&manager, "ts").await;
        store::save_all(&mut storage, &manager).expect("save");
        storage.commit().expect("commit");
        manager.close().await;
        auth_url
    };
    // The user authorizes while the object is gone (hibernated or restarted).
    let callback = authorize(&auth_url, CALLBACK).await;

    let mut storage = Database::open(&db, Durability::Normal).expect("reopen");
    let manager = McpClientManager::new(options());
    store::restore(&mut storage, &manager).expect("restore");
    manager
        .complete_authorization("ts", &callback)
        .await
        .expect("the callback completes with the stored registration and PKCE verifier");
    manager.wait_ready("ts", READY).await.expect("ready");
    assert!(greet(&manager).await.contains("Ada"));
    manager.close().await;
}

/// An MCP server with its own authorization server, in process: every request but
/// `initialize` needs a token, `tools/list` the scope `mcp:basic`, `tools/call` also `mcp:write`
/// (a 403 `insufficient_scope` challenge says so). Tokens carry the scopes their authorization
/// request asked for. JSON answers only, no standalone SSE stream.
mod scoped {
    use std::{
        collections::HashMap,
        sync::{Arc, Mutex},
    };

    use axum::{
        Router,
        extract::{Query, State},
        http::{HeaderMap, StatusCode, header},
        response::{IntoResponse, Response},
        routing::{get, post},
    };
    use serde_json::{Value, json};

    #[derive(Default)]
    pub(super) struct Seen {
        /// The `scope` of every authorization request, in order.
        pub(super) authorizations: Vec<String>,
        /// `initialize` requests: one per connection.
        pub(super) initializes: usize,
        codes: HashMap<String, String>,
        tokens: HashMap<String, String>,
    }

    pub(super) struct Server {
        pub(super) url: String,
        pub(super) seen: Arc<Mutex<Seen>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    #[derive(Clone)]
    struct App {
        origin: String,
        seen: Arc<Mutex<Seen>>,
    }

    pub(super) async fn start() -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let origin = format!(
            "http://127.0.0.1:{}",
            listener.local_addr().expect("addr").port()
        );
        let seen = Arc::new(Mutex::new(Seen::default()));
        let app = App {
            origin: origin.clone(),
            seen: seen.clone(),
        };
        let router = Router::new()
            .route(
                "/mcp",
                post(mcp)
                    .get(|| async { StatusCode::METHOD_NOT_ALLOWED })
                    .delete(|| async { StatusCode::OK }),
            )
            .route("/.well-known/oauth-protected-resource/mcp", get(resource))
            .route("/.well-known/oauth-authorization-server", get(metadata))
            .route("/register", post(register))
            .route("/authorize", get(authorize))
            .route("/token", post(token))
            .with_state(app);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Server {
            url: format!("{origin}/mcp"),
            seen,
            task,
        }
    }

    fn json_response(status: StatusCode, body: Value) -> Response {
        (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response()
    }

    fn challenge(app: &App, status: StatusCode, scope: &str) -> Response {
        let error = if status == StatusCode::FORBIDDEN {
            "insufficient_scope"
        } else {
            "invalid_token"
        };
        let value = format!(
            r#"Bearer error="{error}", scope="{scope}", resource_metadata="{}/.well-known/oauth-protected-resource/mcp""#,
            app.origin
        );
        (
            status,
            [(header::WWW_AUTHENTICATE, value)],
            json!({ "error": error }).to_string(),
        )
            .into_response()
    }

    async fn mcp(State(app): State<App>, headers: HeaderMap, body: String) -> Response {
        let message: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let method = message["method"].as_str().unwrap_or_default().to_owned();
        let id = message["id"].clone();
        if method.starts_with("notifications/") {
            return StatusCode::ACCEPTED.into_response();
        }
        if method == "initialize" {
            app.seen.lock().expect("seen").initializes += 1;
            let result = json!({
                "protocolVersion": "2025-11-25",
                "capabilities": { "tools": {} },
                "serverInfo": { "name": "scoped", "version": "1" },
            });
            let mut response = json_response(
                StatusCode::OK,
                json!({"jsonrpc": "2.0", "id": id, "result": result}),
            );
            response
                .headers_mut()
                .insert("mcp-session-id", "session-1".parse().expect("header"));
            return response;
        }
        let granted = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .and_then(|t| app.seen.lock().expect("seen").tokens.get(t).cloned());
        let Some(granted) = granted else {
            return challenge(&app, StatusCode::UNAUTHORIZED, "mcp:basic");
        };
        let has = |scope: &str| granted.split(' ').any(|s| s == scope);
        if !has("mcp:basic") {
            return challenge(&app, StatusCode::FORBIDDEN, "mcp:basic");
        }
        let result = match method.as_str() {
            "tools/list" => json!({ "tools": [{
                "name": "add",
                "inputSchema": { "type": "object" },
            }]}),
            "tools/call" if !has("mcp:write") => {
                return challenge(&app, StatusCode::FORBIDDEN, "mcp:write");
            }
            "tools/call" => {
                let a = message["params"]["arguments"]["a"].as_i64().unwrap_or(0);
                let b = message["params"]["arguments"]["b"].as_i64().unwrap_or(0);
                json!({ "content": [{ "type": "text", "text": (a + b).to_string() }] })
            }
            _ => json!({}),
        };
        json_response(
            StatusCode::OK,
            json!({"jsonrpc": "2.0", "id": id, "result": result}),
        )
    }

    async fn resource(State(app): State<App>) -> Response {
        json_response(
            StatusCode::OK,
            json!({
                "resource": format!("{}/mcp", app.origin),
                "authorization_servers": [app.origin],
                "scopes_supported": ["mcp:basic", "mcp:write"],
            }),
        )
    }

    async fn metadata(State(app): State<App>) -> Response {
        let o = &app.origin;
        json_response(
            StatusCode::OK,
            json!({
                "issuer": o,
                "authorization_endpoint": format!("{o}/authorize"),
                "token_endpoint": format!("{o}/token"),
                "registration_endpoint": format!("{o}/register"),
                "response_types_supported": ["code"],
                "grant_types_supported": ["authorization_code", "refresh_token"],
                "code_challenge_methods_supported": ["S256"],
                "token_endpoint_auth_methods_supported": ["none"],
            }),
        )
    }

    async fn register(body: String) -> Response {
        let request: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        json_response(
            StatusCode::CREATED,
            json!({
                "client_id": "scoped-client",
                "redirect_uris": request["redirect_uris"],
                "token_endpoint_auth_method": "none",
            }),
        )
    }

    async fn authorize(
        State(app): State<App>,
        Query(query): Query<HashMap<String, String>>,
    ) -> Response {
        let scope = query.get("scope").cloned().unwrap_or_default();
        let mut seen = app.seen.lock().expect("seen");
        seen.authorizations.push(scope.clone());
        let code = format!("code-{}", seen.authorizations.len());
        seen.codes.insert(code.clone(), scope);
        let mut location = url::Url::parse(query.get("redirect_uri").map_or("", String::as_str))
            .expect("redirect_uri");
        location
            .query_pairs_mut()
            .append_pair("code", &code)
            .append_pair("state", query.get("state").map_or("", String::as_str));
        (
            StatusCode::FOUND,
            [(header::LOCATION, location.to_string())],
        )
            .into_response()
    }

    async fn token(State(app): State<App>, body: String) -> Response {
        let form: HashMap<String, String> = url::form_urlencoded::parse(body.as_bytes())
            .into_owned()
            .collect();
        let mut seen = app.seen.lock().expect("seen");
        let Some(scope) = form.get("code").and_then(|c| seen.codes.remove(c)) else {
            return json_response(StatusCode::BAD_REQUEST, json!({ "error": "invalid_grant" }));
        };
        let token = format!("token-{}", seen.tokens.len() + 1);
        seen.tokens.insert(token.clone(), scope.clone());
        json_response(
            StatusCode::OK,
            json!({
                "access_token": token,
                "token_type": "Bearer",
                "expires_in": 3600,
                "scope": scope,
            }),
        )
    }
}

/// Completes every authorization the manager hands out for server `id`, as the user's browser
/// and the object's callback route would, until the manager goes away.
fn complete_authorizations(
    manager: &McpClientManager,
    id: &'static str,
) -> tokio::task::JoinHandle<()> {
    let manager = manager.clone();
    tokio::spawn(async move {
        let mut changes = manager.subscribe();
        let mut handled = None;
        loop {
            let status = manager.server(id).expect("server");
            if status.state == ServerState::Authenticating
                && let Some(url) = status.auth_url.filter(|u| handled.as_ref() != Some(u))
            {
                handled = Some(url.clone());
                let callback = authorize(&url, CALLBACK).await;
                manager
                    .complete_authorization(id, &callback)
                    .await
                    .expect("complete authorization");
            }
            if changes.changed().await.is_err() {
                return;
            }
        }
    })
}

/// A 403 `insufficient_scope` on a tool call is an authorization event: the manager asks once
/// more, for the union of the granted and the challenged scopes, and retries the call on the
/// same connection. Repeated, since the bug it guards against (the refusal taken for a lost
/// connection, the retry racing the reconnect) showed only sometimes.
#[tokio::test]
async fn scope_step_up_reauthorizes_and_retries_the_call_once() {
    init_tracing();
    for round in 0..20 {
        let server = scoped::start().await;
        let manager = McpClientManager::new(options());
        let mut config = ServerConfig::new("s", &server.url);
        config.transport = denizen_mcp::TransportPreference::StreamableHttp;
        config.route = Some(denizen_mcp::Route {
            transport: denizen_mcp::TransportKind::StreamableHttp,
            era: denizen_mcp::Era::Legacy,
        });
        config.oauth = Some(OAuthOptions {
            redirect_uri: CALLBACK.into(),
            ..OAuthOptions::default()
        });
        manager.add_server(config).expect("add");
        let browser = complete_authorizations(&manager, "s");
        manager.wait_ready("s", READY).await.expect("ready");

        let result = manager
            .call_server_tool("s", "add", json!({"a": 2, "b": 3}), CallOptions::default())
            .await
            .unwrap_or_else(|e| panic!("round {round}: the call after a step-up: {e}"));
        let text: String = result
            .content
            .iter()
            .filter_map(|c| c.as_text().map(|t| t.text.clone()))
            .collect();
        assert_eq!(text, "5", "round {round}");

        let (authorizations, initializes) = {
            let seen = server.seen.lock().expect("seen");
            (seen.authorizations.clone(), seen.initializes)
        };
        assert_eq!(authorizations.len(), 2, "round {round}: {authorizations:?}");
        assert_eq!(authorizations[0], "mcp:basic", "round {round}");
        let mut second: Vec<&str> = authorizations[1].split(' ').collect();
        second.sort_unstable();
        assert_eq!(second, ["mcp:basic", "mcp:write"], "round {round}");
        // Never a reconnect: one unauthorized `initialize`, one with the first token.
        assert_eq!(initializes, 2, "round {round}");
        let status = manager.server("s").expect("status");
        assert_eq!(status.state, ServerState::Ready, "round {round}");
        assert_eq!(status.connections, 1, "round {round}");
        manager.close().await;
        browser.abort();
    }
}
