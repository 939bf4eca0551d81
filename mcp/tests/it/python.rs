//! Against the Python `mcp` SDK server: Streamable HTTP in the 2026-07-28 stateless era and in
//! the 2025-11-25 `initialize` era, and its legacy SSE transport.

use std::time::Duration;

use crate::support::{Peer, free_port, init_tracing};
use denizen_mcp::{
    CallOptions, Era, ManagerOptions, McpClientManager, Route, ServerConfig, TransportKind,
};
use serde_json::json;

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
    let sum = manager
        .call_tool(
            &format!("{id}__add"),
            json!({"a": 2, "b": 3}),
            CallOptions::default(),
        )
        .await
        .expect("add");
    assert_ne!(sum.is_error, Some(true), "{sum:?}");
    assert!(text_of(&sum).contains('5'), "{sum:?}");
    // A tool that raises: the failure is a result for the model, not a call error.
    let failed = manager
        .call_tool(
            &format!("{id}__fail"),
            json!({"reason": "boom"}),
            CallOptions::default(),
        )
        .await
        .expect("fail returns a result");
    assert_eq!(failed.is_error, Some(true), "{failed:?}");
    assert!(text_of(&failed).contains("fail"), "{failed:?}");
    let prompts = manager.prompts(id).expect("prompts");
    assert_eq!(
        prompts.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        ["review"]
    );
    let mut args = serde_json::Map::new();
    args.insert("code".into(), json!("fn main() {}"));
    let prompt = manager
        .get_prompt(id, "review", Some(args), CallOptions::default())
        .await
        .expect("get_prompt");
    assert_eq!(prompt.messages.len(), 1);
    assert_eq!(manager.resources(id).expect("resources").len(), 1);
    assert_eq!(manager.resource_templates(id).expect("templates").len(), 1);
    let read = manager
        .read_resource(id, "peer://greeting/ada", CallOptions::default())
        .await
        .expect("read templated resource");
    let body = serde_json::to_string(&read).expect("json");
    assert!(body.contains("Hello, ada!"), "{body}");
    // Protocol errors stay errors.
    let missing = manager
        .read_resource(id, "peer://nope", CallOptions::default())
        .await;
    assert!(
        matches!(missing, Err(denizen_mcp::Error::Protocol { .. })),
        "{missing:?}"
    );
}

#[tokio::test]
async fn modern_stateless_era() {
    init_tracing();
    let peer = Peer::python("streamable-http", free_port()).await;
    let manager = McpClientManager::new(ManagerOptions::default());
    let status = manager
        .connect(ServerConfig::new("py", &peer.url), READY)
        .await
        .expect("connect");
    assert_eq!(
        status.route,
        Some(Route {
            transport: TransportKind::StreamableHttp,
            era: Era::Modern
        })
    );
    assert_eq!(status.protocol_version.as_deref(), Some("2026-07-28"));
    exercise(&manager, "py").await;
    // What an agent pushes to its clients as the `cf_agent_mcp_servers` frame.
    let state = manager.agents_state();
    assert_eq!(state["servers"]["py"]["state"], "ready");
    assert_eq!(state["servers"]["py"]["server_url"], peer.url.as_str());
    assert_eq!(state["servers"]["py"]["name"], "denizen-test-peer");
    assert!(
        state["servers"]["py"]["capabilities"]["tools"].is_object(),
        "{state}"
    );
    let tools = state["tools"].as_array().expect("tools");
    assert!(
        tools
            .iter()
            .any(|t| t["name"] == "add" && t["serverId"] == "py"),
        "{state}"
    );
    assert_eq!(state["prompts"][0]["serverId"], "py");
    assert_eq!(state["resources"][0]["serverId"], "py");
    manager.close().await;
}

#[tokio::test]
async fn legacy_initialize_era_when_remembered() {
    init_tracing();
    let peer = Peer::python("streamable-http", free_port()).await;
    let manager = McpClientManager::new(ManagerOptions::default());
    let mut config = ServerConfig::new("py", &peer.url);
    // A server remembered as legacy is dialled with `initialize` straight away.
    config.route = Some(Route {
        transport: TransportKind::StreamableHttp,
        era: Era::Legacy,
    });
    let status = manager.connect(config, READY).await.expect("connect");
    assert_eq!(status.route.map(|r| r.era), Some(Era::Legacy));
    assert_eq!(status.protocol_version.as_deref(), Some("2025-11-25"));
    exercise(&manager, "py").await;
    manager.close().await;
}

#[tokio::test]
async fn legacy_sse_transport() {
    init_tracing();
    let peer = Peer::python("sse", free_port()).await;
    let manager = McpClientManager::new(ManagerOptions::default());
    let status = manager
        .connect(ServerConfig::new("pysse", &peer.url), READY)
        .await
        .expect("connect");
    assert_eq!(status.route.map(|r| r.transport), Some(TransportKind::Sse));
    exercise(&manager, "pysse").await;
    manager.close().await;
}

async fn list_changed_refreshes_the_tools(era: Era) {
    init_tracing();
    let peer = Peer::python("streamable-http", free_port()).await;
    let manager = McpClientManager::new(ManagerOptions::default());
    let mut config = ServerConfig::new("py", &peer.url);
    config.route = Some(Route {
        transport: TransportKind::StreamableHttp,
        era,
    });
    let status = manager.connect(config, READY).await.expect("connect");
    assert_eq!(status.route.map(|r| r.era), Some(era));
    let has_extra = |m: &McpClientManager| m.tools().iter().any(|t| t.name == "py__extra");
    assert!(!has_extra(&manager));
    let mut changes = manager.subscribe();
    let grown = manager
        .call_tool("py__grow", json!({}), CallOptions::default())
        .await
        .expect("grow");
    assert!(text_of(&grown).contains("grown"), "{grown:?}");
    // The server's notifications/tools/list_changed makes the manager fetch the list again.
    tokio::time::timeout(READY, async {
        while !has_extra(&manager) {
            changes.changed().await.expect("manager alive");
        }
    })
    .await
    .expect("py__extra appears");
    let doubled = manager
        .call_tool("py__extra", json!({"x": 21}), CallOptions::default())
        .await
        .expect("extra");
    assert!(text_of(&doubled).contains("42"), "{doubled:?}");
    manager.close().await;
}

#[tokio::test]
async fn list_changed_on_the_session_stream() {
    list_changed_refreshes_the_tools(Era::Legacy).await;
}

#[tokio::test]
async fn list_changed_on_a_listen_subscription() {
    list_changed_refreshes_the_tools(Era::Modern).await;
}
