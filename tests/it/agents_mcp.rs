//! The `mcp-agent` example through the real server: MCP servers added from a WebSocket RPC, their
//! tools called from a callable and from a schedule, the `cf_agent_mcp_servers` frame kept
//! current, the servers back by themselves after a SIGKILL, and OAuth completed by a "browser"
//! that follows the authorization server's redirect to the agent's callback route.
#[path = "../../mcp/tests/support/mod.rs"]
#[allow(unreachable_pub)] // the MCP tests' own support module, shared here
pub(crate) mod mcp_peers;

use crate::support::{AgentClient, Server};
use mcp_peers::{Peer, free_port};
use serde_json::{Value, json};

async fn connect(server: &Server, name: &str) -> AgentClient {
    AgentClient::connect(&server.ws_url(&format!("/agents/mcp-agent/{name}"))).await
}

fn ready_with(mcp: &Value, server: &str, tool: &str) -> bool {
    mcp["servers"][server]["state"] == "ready"
        && mcp["tools"].as_array().is_some_and(|tools| {
            tools
                .iter()
                .any(|t| t["serverId"] == server && t["name"] == tool)
        })
}

fn text(result: &Value) -> String {
    result["content"]
        .as_array()
        .map(|c| c.iter().filter_map(|p| p["text"].as_str()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_agent_uses_tools_and_reconnects_after_sigkill() {
    let peer = Peer::everything("streamableHttp", free_port()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start(dir.path(), &[]);

    let mut ada = connect(&server, "ada").await;
    assert_eq!(ada.mcp["servers"], json!({}));
    let added = ada
        .call("addServer", json!(["every", peer.url]))
        .await
        .unwrap();
    assert_eq!(added, json!({"id": "every", "state": "ready"}));
    ada.until("the server's tools", |c| {
        ready_with(&c.mcp, "every", "echo")
    })
    .await;

    let echo = ada
        .call("callTool", json!(["every__echo", {"message": "hi"}]))
        .await
        .unwrap();
    assert!(text(&echo).contains("hi"), "{echo}");
    let tools = ada.call("tools", json!([])).await.unwrap();
    assert!(
        tools
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["name"] == "every__echo")),
        "{tools}"
    );

    // From a schedule: the result reaches the client as state.
    ada.call(
        "callToolIn",
        json!([0.05, "every__echo", {"message": "later"}]),
    )
    .await
    .unwrap();
    ada.until("the scheduled call's result", |c| {
        text(&c.state["lastResult"]["result"]).contains("later")
    })
    .await;
    drop(ada);

    // SIGKILL: after the restart the agent reconnects its saved server by itself.
    server.kill();
    server.restart();
    let mut ada = connect(&server, "ada").await;
    assert!(
        ada.mcp["servers"]["every"].is_object(),
        "listed on connect: {}",
        ada.mcp
    );
    ada.until("the server back after the restart", |c| {
        ready_with(&c.mcp, "every", "echo")
    })
    .await;
    let echo = ada
        .call("callTool", json!(["every__echo", {"message": "again"}]))
        .await
        .unwrap();
    assert!(text(&echo).contains("again"), "{echo}");
    drop(ada);
    server.stop();
    peer.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_agent_completes_oauth_on_its_callback_route() {
    let peer = Peer::ts_oauth(free_port(), free_port()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start(dir.path(), &[]);

    let mut grace = connect(&server, "grace").await;
    let added = grace
        .call("addServer", json!(["ts", peer.url]))
        .await
        .unwrap();
    assert_eq!(added["state"], "authenticating", "{added}");
    let auth_url = added["authUrl"].as_str().expect("authUrl").to_string();

    // The browser: the demo authorization server approves at once and redirects to
    // /agents/mcp-agent/grace/callback on this server, which completes the flow.
    let page = reqwest::get(&auth_url).await.expect("authorize");
    assert!(
        page.url()
            .as_str()
            .starts_with(&server.url("/agents/mcp-agent/grace/callback?")),
        "{}",
        page.url()
    );
    assert_eq!(page.status(), 200);
    assert!(
        page.text()
            .await
            .expect("body")
            .contains("Authorization complete")
    );

    grace
        .until("the authorized server ready", |c| {
            ready_with(&c.mcp, "ts", "greet")
        })
        .await;
    let greeting = grace
        .call("callTool", json!(["ts__greet", {"name": "Ada"}]))
        .await
        .unwrap();
    assert!(text(&greeting).contains("Ada"), "{greeting}");
    drop(grace);

    // A restart reuses the stored token: nobody is sent to authorize again.
    server.kill();
    server.restart();
    let mut grace = connect(&server, "grace").await;
    grace
        .until("the server ready with the stored token", |c| {
            assert_ne!(
                c.mcp["servers"]["ts"]["state"], "authenticating",
                "{}",
                c.mcp
            );
            ready_with(&c.mcp, "ts", "greet")
        })
        .await;
    drop(grace);
    server.stop();
    peer.kill().await;
}
