//! The `mcp-agent` example through the real server: MCP servers added from a WebSocket RPC, their
//! tools called from a callable and from a schedule, the `cf_agent_mcp_servers` frame kept
//! current, the servers back by themselves after a SIGKILL, and OAuth completed by a "browser"
//! that follows the authorization server's redirect to the agent's callback route.
#[path = "../../mcp/tests/support/mod.rs"]
#[allow(unreachable_pub)] // the MCP tests' own support module, shared here
pub(crate) mod mcp_peers;

use std::time::{Duration, Instant};

use crate::support::{Server, Ws, next_text, send_text};
use mcp_peers::{Peer, free_port};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

/// A protocol client that remembers the last MCP server list and state it was sent.
struct Client {
    ws: Ws,
    mcp: Value,
    state: Value,
}

impl Client {
    async fn connect(server: &Server, name: &str) -> Client {
        let ws = server.ws(&format!("/agents/mcp-agent/{name}")).await;
        let mut client = Client {
            ws,
            mcp: Value::Null,
            state: Value::Null,
        };
        for expected in [
            "cf_agent_identity",
            "cf_agent_state",
            "cf_agent_mcp_servers",
        ] {
            assert_eq!(client.frame().await["type"], expected);
        }
        client
    }

    async fn frame(&mut self) -> Value {
        let frame: Value = serde_json::from_str(&next_text(&mut self.ws).await).expect("JSON");
        match frame["type"].as_str() {
            Some("cf_agent_mcp_servers") => self.mcp = frame["mcp"].clone(),
            Some("cf_agent_state") => self.state = frame["state"].clone(),
            _ => {}
        }
        frame
    }

    async fn until(&mut self, what: &str, cond: impl Fn(&Client) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !cond(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; servers: {}, state: {}",
                self.mcp,
                self.state
            );
            self.frame().await;
        }
    }

    async fn rpc(&mut self, id: &str, method: &str, args: Value) -> Value {
        let frame = json!({"type": "rpc", "id": id, "method": method, "args": args});
        send_text(&mut self.ws, &frame.to_string()).await;
        loop {
            let reply = self.frame().await;
            if reply["type"] == "rpc" && reply["id"] == id {
                assert_eq!(reply["success"], true, "{method} failed: {reply}");
                return reply["result"].clone();
            }
        }
    }
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

    let mut ada = Client::connect(&server, "ada").await;
    assert_eq!(ada.mcp["servers"], json!({}));
    let added = ada.rpc("1", "addServer", json!(["every", peer.url])).await;
    assert_eq!(added, json!({"id": "every", "state": "ready"}));
    ada.until("the server's tools", |c| {
        ready_with(&c.mcp, "every", "echo")
    })
    .await;

    let echo = ada
        .rpc("2", "callTool", json!(["every__echo", {"message": "hi"}]))
        .await;
    assert!(text(&echo).contains("hi"), "{echo}");
    let tools = ada.rpc("3", "tools", json!([])).await;
    assert!(
        tools
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["name"] == "every__echo")),
        "{tools}"
    );

    // From a schedule: the result reaches the client as state.
    ada.rpc(
        "4",
        "callToolIn",
        json!([0.05, "every__echo", {"message": "later"}]),
    )
    .await;
    ada.until("the scheduled call's result", |c| {
        text(&c.state["lastResult"]["result"]).contains("later")
    })
    .await;
    drop(ada);

    // SIGKILL: after the restart the agent reconnects its saved server by itself.
    server.kill();
    server.restart();
    let mut ada = Client::connect(&server, "ada").await;
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
        .rpc(
            "5",
            "callTool",
            json!(["every__echo", {"message": "again"}]),
        )
        .await;
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

    let mut grace = Client::connect(&server, "grace").await;
    let added = grace.rpc("1", "addServer", json!(["ts", peer.url])).await;
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
        .rpc("2", "callTool", json!(["ts__greet", {"name": "Ada"}]))
        .await;
    assert!(text(&greeting).contains("Ada"), "{greeting}");
    drop(grace);

    // A restart reuses the stored token: nobody is sent to authorize again.
    server.kill();
    server.restart();
    let mut grace = Client::connect(&server, "grace").await;
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
