//! Client for the official MCP conformance runner (`@modelcontextprotocol/conformance`).
//!
//! Contract: the server URL is the last argument; the scenario is in `MCP_CONFORMANCE_SCENARIO`,
//! the protocol era in `MCP_CONFORMANCE_PROTOCOL_VERSION` (`2025-11-25` → `initialize`
//! lifecycle, `2026-07-28` → stateless), scenario data as JSON in `MCP_CONFORMANCE_CONTEXT`.
//! OAuth scenarios run headless: the "browser" GETs the authorization URL without following the
//! redirect and hands the `Location` to [`McpClientManager::complete_authorization`], as the
//! object's callback route would.
//!
//! It does what most client scenarios expect — connect, list the tools, call the first one with
//! `{"a": 2, "b": 3}` (or the calls the context names), disconnect — through
//! [`McpClientManager`], and exits non-zero on any failure.
//!
//! ```text
//! cargo build -p denizen-mcp --example conformance_client
//! conformance client --command target/debug/examples/conformance_client --suite all --spec-version 2025-11-25
//! ```

use std::{pin::Pin, sync::Arc, time::Duration};

use anyhow::{Context, bail};
use denizen_mcp::model::{ElicitRequestParams, ElicitResult, ElicitationAction};
use denizen_mcp::{
    CallOptions, ElicitationHandler, Era, ManagerOptions, McpClientManager, OAuthOptions, Route,
    ServerConfig, ServerState, TransportKind, TransportPreference,
};
use serde_json::{Value, json};

/// Elicitation for the runner: accept, with the defaults of the requested schema filled in.
struct AcceptDefaults;

impl ElicitationHandler for AcceptDefaults {
    fn elicit(
        &self,
        _server_id: &str,
        request: ElicitRequestParams,
    ) -> Pin<Box<dyn Future<Output = ElicitResult> + Send + 'static>> {
        let request = serde_json::to_value(&request).unwrap_or(Value::Null);
        let mut content = serde_json::Map::new();
        if let Some(properties) = request["requestedSchema"]["properties"].as_object() {
            for (name, property) in properties {
                if let Some(default) = property.get("default") {
                    content.insert(name.clone(), default.clone());
                }
            }
        }
        Box::pin(async move {
            ElicitResult::new(ElicitationAction::Accept).with_content(Value::Object(content))
        })
    }
}

/// The user's browser, headless: completes every authorization the manager hands out (at
/// connect time, and step-ups while a call waits for one).
fn browser(manager: McpClientManager) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(e) = complete_authorizations(&manager).await {
            eprintln!("browser: {e:#}");
        }
    })
}

async fn complete_authorizations(manager: &McpClientManager) -> anyhow::Result<()> {
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let mut changes = manager.subscribe();
    let mut handled = None;
    loop {
        let status = manager.server("s")?;
        match status.state {
            ServerState::Authenticating => {
                if let Some(url) = status.auth_url.filter(|u| handled.as_ref() != Some(u)) {
                    handled = Some(url.clone());
                    let response = browser.get(&url).send().await?;
                    let location = response
                        .headers()
                        .get(reqwest::header::LOCATION)
                        .and_then(|l| l.to_str().ok())
                        .context("the authorization endpoint did not redirect")?
                        .to_owned();
                    manager.complete_authorization("s", &location).await?;
                }
            }
            ServerState::Failed => eprintln!("not ready: {:?}", status.error),
            _ => {}
        }
        if changes.changed().await.is_err() {
            return Ok(());
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let url = std::env::args()
        .next_back()
        .filter(|a| a.starts_with("http"))
        .context("usage: conformance_client <server url>")?;
    let scenario = std::env::var("MCP_CONFORMANCE_SCENARIO").unwrap_or_default();
    let version = std::env::var("MCP_CONFORMANCE_PROTOCOL_VERSION").unwrap_or_default();
    let context: Value = std::env::var("MCP_CONFORMANCE_CONTEXT")
        .ok()
        .and_then(|c| serde_json::from_str(&c).ok())
        .unwrap_or(Value::Null);
    eprintln!("scenario {scenario:?}, protocol {version:?}, url {url}");

    let manager = McpClientManager::new(ManagerOptions {
        client_name: "denizen-conformance-client".into(),
        connect_timeout: Duration::from_secs(10),
        request_timeout: Duration::from_secs(20),
        // The runner's mock authorization servers are on localhost.
        allow_private_oauth_metadata: true,
        elicitation: Some(Arc::new(AcceptDefaults)),
        ..ManagerOptions::default()
    });
    let mut config = ServerConfig::new("s", &url);
    config.transport = TransportPreference::StreamableHttp;
    config.route = match version.as_str() {
        "2026-07-28" => Some(Route {
            transport: TransportKind::StreamableHttp,
            era: Era::Modern,
        }),
        "" => None,
        _ => Some(Route {
            transport: TransportKind::StreamableHttp,
            era: Era::Legacy,
        }),
    };
    config.oauth = Some(OAuthOptions {
        redirect_uri: "http://localhost:3000/callback".into(),
        client_id: context
            .get("client_id")
            .and_then(Value::as_str)
            .map(str::to_owned),
        client_secret: context
            .get("client_secret")
            .and_then(Value::as_str)
            .map(str::to_owned),
        // The client ID metadata document the runner's authorization servers know this client by
        // (used only where the server advertises client_id_metadata_document_supported).
        client_metadata_url: Some("https://conformance-test.local/client-metadata.json".into()),
        ..OAuthOptions::default()
    });
    manager.add_server(config)?;
    let _browser = browser(manager.clone());
    let status = manager
        .wait_ready("s", Duration::from_secs(25))
        .await
        .context("the server did not become ready")?;
    eprintln!("connected: {status:?}");

    // Scenarios that script their calls name them in the context.
    let scripted: Vec<(String, Value)> = context
        .get("toolCalls")
        .and_then(Value::as_array)
        .map(|calls| {
            calls
                .iter()
                .filter_map(|c| {
                    let name = c.get("name")?.as_str()?.to_owned();
                    Some((name, c.get("arguments").cloned().unwrap_or(json!({}))))
                })
                .collect()
        })
        .unwrap_or_default();
    let calls = if scenario.starts_with("json-schema") {
        // Schema scenarios check that a tool's inputSchema survives our types unchanged: pass
        // the observed schema back through the server's echo tool.
        let tools = manager.tools();
        let echo = tools.iter().find(|t| t.tool.name.ends_with("echo"));
        let observed = tools.iter().find(|t| !t.tool.name.ends_with("echo"));
        match (echo, observed) {
            (Some(echo), Some(observed)) => {
                let schema = Value::Object((*observed.tool.input_schema).clone());
                vec![(echo.tool.name.to_string(), json!({ "schema": schema }))]
            }
            _ => Vec::new(),
        }
    } else if scripted.is_empty() {
        manager
            .tools()
            .first()
            .map(|t| vec![(t.tool.name.to_string(), json!({"a": 2, "b": 3}))])
            .unwrap_or_default()
    } else {
        scripted
    };
    let mut failed = false;
    if scenario.starts_with("sep-2322") {
        // Multi-round-trip scenarios: every tool, all at once (their states must not mix).
        let calls = manager.tools().into_iter().map(|t| {
            let manager = manager.clone();
            async move {
                let r = manager
                    .call_server_tool("s", &t.tool.name, json!({}), CallOptions::default())
                    .await;
                (t.tool.name.to_string(), r)
            }
        });
        for (tool, result) in futures_util::future::join_all(calls).await {
            match result {
                Ok(r) => eprintln!("{tool}: is_error={:?}", r.is_error),
                Err(e) => {
                    eprintln!("{tool}: {e}");
                    failed = true;
                }
            }
        }
        manager.close().await;
        if failed {
            bail!("a tool call failed");
        }
        return Ok(());
    }
    for (tool, arguments) in calls {
        // A scope challenge is handled inside the call (re-authorization, one retry).
        match manager
            .call_server_tool("s", &tool, arguments, CallOptions::default())
            .await
        {
            Ok(result) => eprintln!("{tool}: is_error={:?}", result.is_error),
            Err(e) => {
                eprintln!("{tool}: {e}");
                failed = true;
            }
        }
    }
    manager.close().await;
    if failed {
        bail!("a tool call failed");
    }
    Ok(())
}
