//! Against @modelcontextprotocol/server-everything (the TypeScript SDK's reference server) over
//! Streamable HTTP and over the legacy SSE transport.

use std::time::Duration;

use crate::support::{Peer, free_port, init_tracing};
use denizen_mcp::{
    CallOptions, Era, ManagerOptions, McpClientManager, Route, ServerConfig, ServerState,
    TransportKind, TransportPreference,
};
use serde_json::json;
use tokio_util::sync::CancellationToken;

const READY: Duration = Duration::from_secs(30);

fn text_of(result: &denizen_mcp::model::CallToolResult) -> String {
    result
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect::<Vec<_>>()
        .join("\n")
}

async fn exercise(manager: &McpClientManager, id: &str) {
    let tools = manager.tools();
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_str()).collect();
    assert!(names.contains(&format!("{id}__echo").as_str()), "{names:?}");
    assert!(
        names.contains(&format!("{id}__get-sum").as_str()),
        "{names:?}"
    );
    let echo = manager
        .call_tool(
            &format!("{id}__echo"),
            json!({"message": "hello"}),
            CallOptions::default(),
        )
        .await
        .expect("echo");
    assert_ne!(echo.is_error, Some(true), "{echo:?}");
    assert!(text_of(&echo).contains("hello"), "{echo:?}");
    let sum = manager
        .call_tool(
            &format!("{id}__get-sum"),
            json!({"a": 2, "b": 3}),
            CallOptions::default(),
        )
        .await
        .expect("get-sum");
    assert!(text_of(&sum).contains('5'), "{sum:?}");
    // An unknown tool is a tool-level error from this server: passed through as a result.
    let missing = manager
        .call_server_tool(id, "no-such-tool", json!({}), CallOptions::default())
        .await;
    match missing {
        Ok(r) => assert_eq!(r.is_error, Some(true), "{r:?}"),
        Err(e) => panic!("unknown tool should come back as an isError result: {e}"),
    }
    assert_eq!(manager.prompts(id).expect("prompts").len(), 4);
    assert_eq!(manager.resources(id).expect("resources").len(), 7);
    assert_eq!(manager.resource_templates(id).expect("templates").len(), 2);
    let prompt = manager
        .get_prompt(id, "simple-prompt", None, CallOptions::default())
        .await
        .expect("get_prompt");
    assert!(!prompt.messages.is_empty());
    let uri = manager.resources(id).expect("resources")[0].uri.clone();
    let read = manager
        .read_resource(id, &uri, CallOptions::default())
        .await
        .expect("read_resource");
    assert!(!read.contents.is_empty());
}

#[tokio::test]
async fn streamable_http_discovery_calls_prompts_resources() {
    init_tracing();
    let peer = Peer::everything("streamableHttp", free_port()).await;
    let manager = McpClientManager::new(ManagerOptions::default());
    let status = manager
        .connect(ServerConfig::new("ev", &peer.url), READY)
        .await
        .expect("connect");
    // server-everything refuses the stateless probe, so the legacy lifecycle is what works.
    assert_eq!(
        status.route,
        Some(Route {
            transport: TransportKind::StreamableHttp,
            era: Era::Legacy
        })
    );
    assert_eq!(status.protocol_version.as_deref(), Some("2025-11-25"));
    exercise(&manager, "ev").await;
    manager.close().await;
}

#[tokio::test]
async fn legacy_sse_transport_is_found_by_fallback() {
    init_tracing();
    let peer = Peer::everything("sse", free_port()).await;
    let manager = McpClientManager::new(ManagerOptions::default());
    let status = manager
        .connect(ServerConfig::new("old", &peer.url), READY)
        .await
        .expect("connect over SSE");
    assert_eq!(status.route.map(|r| r.transport), Some(TransportKind::Sse));
    exercise(&manager, "old").await;
    manager.close().await;
}

#[tokio::test]
async fn progress_and_cancellation() {
    init_tracing();
    let peer = Peer::everything("streamableHttp", free_port()).await;
    let manager = McpClientManager::new(ManagerOptions::default());
    manager
        .connect(ServerConfig::new("ev", &peer.url), READY)
        .await
        .expect("connect");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let result = manager
        .call_tool(
            "ev__trigger-long-running-operation",
            json!({"duration": 1, "steps": 4}),
            CallOptions {
                progress: Some(tx),
                ..Default::default()
            },
        )
        .await
        .expect("long-running operation");
    assert_ne!(result.is_error, Some(true), "{result:?}");
    let mut seen = Vec::new();
    while let Ok(p) = rx.try_recv() {
        seen.push(p.progress);
    }
    assert_eq!(seen.len(), 4, "progress notifications: {seen:?}");
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");

    // Cancel a long call after its first progress notification.
    let cancel = CancellationToken::new();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let call = {
        let manager = manager.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            manager
                .call_tool(
                    "ev__trigger-long-running-operation",
                    json!({"duration": 600, "steps": 600}),
                    CallOptions {
                        progress: Some(tx),
                        cancel: Some(cancel),
                        ..Default::default()
                    },
                )
                .await
        })
    };
    rx.recv().await.expect("first progress notification");
    cancel.cancel();
    let outcome = call.await.expect("join");
    assert!(
        matches!(outcome, Err(denizen_mcp::Error::Cancelled { .. })),
        "{outcome:?}"
    );
    // The connection is still good after a cancellation.
    let echo = manager
        .call_tool(
            "ev__echo",
            json!({"message": "still here"}),
            CallOptions::default(),
        )
        .await
        .expect("echo after cancel");
    assert!(text_of(&echo).contains("still here"));
    manager.close().await;
}

#[tokio::test]
async fn two_servers_with_the_same_tool_are_both_callable() {
    init_tracing();
    let a = Peer::everything("streamableHttp", free_port()).await;
    let b = Peer::everything("sse", free_port()).await;
    let manager = McpClientManager::new(ManagerOptions::default());
    manager
        .connect(ServerConfig::new("a", &a.url), READY)
        .await
        .expect("a");
    let mut config = ServerConfig::new("b", &b.url);
    config.transport = TransportPreference::Sse;
    manager.connect(config, READY).await.expect("b");
    for id in ["a", "b"] {
        let r = manager
            .call_tool(
                &format!("{id}__echo"),
                json!({"message": id}),
                CallOptions::default(),
            )
            .await
            .expect("echo");
        assert!(text_of(&r).contains(id));
    }
    assert!(matches!(
        manager
            .call_tool("c__echo", json!({}), CallOptions::default())
            .await,
        Err(denizen_mcp::Error::UnknownTool(_))
    ));
    let states: Vec<ServerState> = manager.servers().iter().map(|s| s.state).collect();
    assert_eq!(states, vec![ServerState::Ready, ServerState::Ready]);
    manager.close().await;
}

/// Stands in for the agent's user: answers every form with a name.
struct UserSaysAda(std::sync::Mutex<Vec<String>>);

impl denizen_mcp::ElicitationHandler for UserSaysAda {
    fn elicit(
        &self,
        server_id: &str,
        request: denizen_mcp::model::ElicitRequestParams,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = denizen_mcp::model::ElicitResult> + Send + 'static>,
    > {
        let message = serde_json::to_value(&request).unwrap_or_default()["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(format!("{server_id}: {message}"));
        Box::pin(async {
            denizen_mcp::model::ElicitResult::new(denizen_mcp::model::ElicitationAction::Accept)
                .with_content(json!({"name": "Ada"}))
        })
    }
}

#[tokio::test]
async fn elicitation_requests_reach_the_application() {
    init_tracing();
    let peer = Peer::everything("streamableHttp", free_port()).await;
    let user = std::sync::Arc::new(UserSaysAda(Default::default()));
    let manager = McpClientManager::new(ManagerOptions {
        elicitation: Some(user.clone()),
        ..ManagerOptions::default()
    });
    manager
        .connect(ServerConfig::new("ev", &peer.url), READY)
        .await
        .expect("connect");
    // Declaring elicitation makes the server offer its elicitation tool.
    assert!(
        manager
            .tools()
            .iter()
            .any(|t| t.name == "ev__trigger-elicitation-request")
    );
    let result = manager
        .call_tool(
            "ev__trigger-elicitation-request",
            json!({}),
            CallOptions::default(),
        )
        .await
        .expect("elicitation tool");
    let text = text_of(&result);
    assert!(text.contains("Name: Ada"), "{text}");
    let asked = user.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert!(asked[0].starts_with("ev: "), "{asked:?}");
    manager.close().await;
}
