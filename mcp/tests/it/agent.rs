//! An agent's MCP client run by the agents layer: servers added from a callable, their tools
//! called from callables and from a schedule, the `cf_agent_mcp_servers` frame kept current for
//! connected clients, a server that dies and comes back, servers and tokens restored after the
//! runtime restarted, and OAuth completed on the agent's own callback route.

use std::time::{Duration, Instant};

use crate::support::{Peer, authorize, free_port, init_tracing};
use denizen_agents::Methods;
use denizen_agents::chat::agent::{Chat, ChatRun};
use denizen_agents::chat::model::{ModelClient, ModelConfig};
use denizen_agents::{Agent, AgentBuilder, AgentContext, AgentHost, Call, Context, McpClient};
use denizen_mcp::{AddServerOptions, AddedServer, AgentMcp, ManagerOptions};
use denizen_runtime::Error;
use denizen_runtime::retry::RetryPolicy;
use denizen_runtime::{Bytes, Frame, Namespace, Outgoing, Result, Runtime, SocketHandle};
use denizen_runtime::{Upgrade, http};
use denizen_test_util::openai::{Reply, ScriptedModel, SseEvent};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;

const WAIT: Duration = Duration::from_secs(30);

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct State {
    /// The text of the last tool result a schedule produced.
    last: Option<String>,
}

struct Assistant {
    mcp: AgentMcp,
    /// A chat, in the tests of MCP tools offered to a chat model.
    chat: Option<Chat<Self>>,
    model: Option<ModelClient>,
}

fn text_of(result: &denizen_mcp::model::CallToolResult) -> String {
    result
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect()
}

impl Assistant {
    async fn add_server(
        &mut self,
        cx: &mut Context<Self>,
        id: String,
        url: String,
    ) -> Result<AddedServer> {
        Ok(self
            .mcp
            .add_server(cx, &id, &url, AddServerOptions::default())
            .await?)
    }

    async fn remove_server(&mut self, cx: &mut Context<Self>, id: String) -> Result<()> {
        Ok(self.mcp.remove_server(cx, &id).await?)
    }

    async fn tools(&mut self, _cx: &mut Context<Self>) -> Result<Vec<String>> {
        Ok(self.mcp.tools().into_iter().map(|t| t.name).collect())
    }

    async fn call_later(
        &mut self,
        cx: &mut Context<Self>,
        name: String,
        args: Value,
    ) -> Result<String> {
        let schedule = cx.schedule(Duration::from_millis(50), "scheduled_call", &(name, args))?;
        Ok(schedule.id)
    }

    async fn scheduled_call(
        &mut self,
        cx: &mut Context<Self>,
        (name, args): (String, Value),
    ) -> Result<()> {
        let text = text_of(&self.mcp.call_tool(&name, args).await?);
        Ok(cx.set_state(&State { last: Some(text) })?)
    }
}

impl Agent for Assistant {
    type State = State;

    fn initial_state(&self) -> State {
        State::default()
    }

    fn mcp(&mut self) -> Option<&mut dyn McpClient> {
        Some(&mut self.mcp)
    }

    fn chat(&mut self) -> Option<&mut Chat<Self>> {
        self.chat.as_mut()
    }

    fn methods(m: &mut Methods<Self>) {
        // Off the turn, as an agent should: the agent serves its other clients meanwhile.
        m.callable_off_turn("addServer", |a, cx, (id, url): (String, String)| {
            let added = a
                .mcp
                .add_server_off_turn(cx, &id, &url, AddServerOptions::default())?;
            Ok(async move { Ok(added.await?) })
        });
        m.callable("addServerInTurn", |a, cx, (id, url): (String, String)| {
            Box::pin(a.add_server(cx, id, url))
        });
        m.callable("removeServer", |a, cx, (id,): (String,)| {
            Box::pin(a.remove_server(cx, id))
        });
        m.callable("tools", |a, cx, (): ()| Box::pin(a.tools(cx)));
        m.callable_off_turn("callTool", |a, _cx, (name, args): (String, Value)| {
            let call = a.mcp.call_tool_off_turn(&name, args)?;
            Ok(async move {
                let result = call.await?;
                Ok(json!({ "text": text_of(&result), "isError": result.is_error == Some(true) }))
            })
        });
        m.callable("callLater", |a, cx, (name, args): (String, Value)| {
            Box::pin(a.call_later(cx, name, args))
        });
        m.task("scheduled_call", |a, cx, p: (String, Value)| {
            Box::pin(a.scheduled_call(cx, p))
        });
    }
}

const CALLBACK_HOST: &str = "http://localhost:1";

fn runtime(dir: &std::path::Path) -> (Runtime, Namespace<AgentHost<Assistant>>) {
    runtime_idle(dir, Duration::from_secs(10))
}

fn runtime_idle(
    dir: &std::path::Path,
    idle: Duration,
) -> (Runtime, Namespace<AgentHost<Assistant>>) {
    runtime_with(dir, idle, None)
}

fn runtime_with(
    dir: &std::path::Path,
    idle: Duration,
    model: Option<ModelClient>,
) -> (Runtime, Namespace<AgentHost<Assistant>>) {
    let runtime = Runtime::builder()
        .data_dir(dir)
        .idle_timeout(idle)
        .agent_with("assistant", move || Assistant {
            chat: model.as_ref().map(|_| {
                Chat::new(|a: &mut Assistant, _cx, _turn| {
                    let model = a.model.clone();
                    Box::pin(async move {
                        let model = model.ok_or_else(|| Error::msg("no model"))?;
                        Ok(ChatRun::new(model))
                    })
                })
            }),
            model: model.clone(),
            mcp: AgentMcp::new(ManagerOptions {
                // A dead server is noticed and a call to it fails fast.
                connect_timeout: Duration::from_secs(3),
                reconnect: RetryPolicy::exponential(Duration::from_millis(50), 2.0)
                    .with_max_delay(Duration::from_millis(500)),
                // The test's authorization server is on loopback.
                allow_private_oauth_metadata: true,
                ..ManagerOptions::default()
            })
            .callback_host(CALLBACK_HOST),
        })
        .build()
        .expect("runtime");
    let ns = runtime
        .namespace::<AgentHost<Assistant>>("assistant")
        .expect("namespace");
    (runtime, ns)
}

/// An in-process client socket speaking the agents protocol.
struct Client {
    handle: SocketHandle,
    rx: UnboundedReceiver<Outgoing>,
    /// The last `mcp` object received.
    mcp: Value,
    /// The last state received.
    state: Value,
}

impl Client {
    async fn connect(ns: &Namespace<AgentHost<Assistant>>, name: &str) -> Client {
        let (upgrade, rx) = Upgrade::new();
        let mut req = http::Request::new(Bytes::new());
        *req.uri_mut() = format!("/agents/assistant/{name}").parse().expect("uri");
        req.extensions_mut().insert(upgrade.clone());
        let resp = ns.get_by_name(name).fetch(req).await.expect("upgrade");
        assert_eq!(resp.status(), 101);
        let handle = upgrade.accepted().expect("accepted");
        let mut client = Client {
            handle,
            rx,
            mcp: Value::Null,
            state: Value::Null,
        };
        assert_eq!(client.frame().await["type"], "cf_agent_identity");
        assert_eq!(client.frame().await["type"], "cf_agent_state");
        assert_eq!(client.frame().await["type"], "cf_agent_mcp_servers");
        client
    }

    /// The next text frame; MCP and state frames are remembered.
    async fn frame(&mut self) -> Value {
        loop {
            let next = tokio::time::timeout(WAIT, self.rx.recv())
                .await
                .expect("timed out waiting for a frame")
                .expect("socket ended");
            if let Outgoing::Frame(Frame::Text(t)) = next {
                let v: Value = serde_json::from_str(&t).expect("JSON frame");
                match v["type"].as_str() {
                    Some("cf_agent_mcp_servers") => self.mcp = v["mcp"].clone(),
                    Some("cf_agent_state") => self.state = v["state"].clone(),
                    _ => {}
                }
                return v;
            }
        }
    }

    /// Reads frames until the last MCP server list satisfies `cond`.
    async fn until_mcp(&mut self, what: &str, cond: impl Fn(&Value) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !cond(&self.mcp) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; last: {}",
                self.mcp
            );
            self.frame().await;
        }
    }

    async fn rpc(&mut self, id: &str, method: &str, args: Value) -> Value {
        self.handle
            .message(Frame::Text(
                json!({"type":"rpc","id":id,"method":method,"args":args}).to_string(),
            ))
            .expect("send");
        loop {
            let frame = self.frame().await;
            if frame["type"] == "rpc" && frame["id"] == id {
                return frame;
            }
        }
    }
}

fn server_state(mcp: &Value, id: &str) -> String {
    mcp["servers"][id]["state"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

fn has_tool(mcp: &Value, server: &str, tool: &str) -> bool {
    mcp["tools"].as_array().is_some_and(|tools| {
        tools
            .iter()
            .any(|t| t["serverId"] == server && t["name"] == tool)
    })
}

#[tokio::test]
async fn an_agent_uses_mcp_tools_and_keeps_its_clients_current() {
    init_tracing();
    let port = free_port();
    let peer = Peer::everything("streamableHttp", port).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (rt, ns) = runtime(dir.path());

    let mut a = Client::connect(&ns, "ada").await;
    assert_eq!(a.mcp["servers"], json!({}));

    // Added from a callable: it answers once the server is ready.
    let added = a.rpc("1", "addServer", json!(["every", peer.url])).await;
    assert_eq!(added["success"], true, "{added}");
    assert_eq!(added["result"]["state"], "ready", "{added}");
    // The connected client is told, with the server's tools tagged by server id.
    a.until_mcp("the server ready with its tools", |m| {
        server_state(m, "every") == "ready" && has_tool(m, "every", "echo")
    })
    .await;
    assert_eq!(a.mcp["servers"]["every"]["server_url"], peer.url.as_str());

    // A tool called from a callable.
    let echo = a
        .rpc("2", "callTool", json!(["every__echo", {"message": "hi"}]))
        .await;
    assert_eq!(echo["success"], true, "{echo}");
    assert!(
        echo["result"]["text"].as_str().unwrap_or("").contains("hi"),
        "{echo}"
    );
    // A tool the server does not have: its error result is passed through for the model.
    let missing = a.rpc("3", "callTool", json!(["every__nope", {}])).await;
    assert_eq!(missing["result"]["isError"], true, "{missing}");
    // A server the agent does not have: a clear RPC error, and the agent goes on.
    let unknown = a.rpc("3b", "callTool", json!(["nobody__echo", {}])).await;
    assert_eq!(unknown["success"], false, "{unknown}");
    assert!(
        unknown["error"]
            .as_str()
            .unwrap_or("")
            .contains("nobody__echo"),
        "{unknown}"
    );

    // A tool called from a schedule; its result reaches the client as state.
    let scheduled = a
        .rpc(
            "4",
            "callLater",
            json!(["every__echo", {"message": "later"}]),
        )
        .await;
    assert_eq!(scheduled["success"], true, "{scheduled}");
    let deadline = Instant::now() + WAIT;
    while !a.state["last"].as_str().unwrap_or("").contains("later") {
        assert!(Instant::now() < deadline, "the scheduled call did not land");
        a.frame().await;
    }

    // A second client gets the current list in its handshake.
    let b = Client::connect(&ns, "ada").await;
    assert_eq!(server_state(&b.mcp, "every"), "ready");
    assert!(has_tool(&b.mcp, "every", "echo"));
    drop(b);

    // The server dies: a call is a clear error, clients see the server reconnecting, and the
    // agent keeps serving.
    peer.kill().await;
    let down = a
        .rpc("5", "callTool", json!(["every__echo", {"message": "x"}]))
        .await;
    assert_eq!(down["success"], false, "{down}");
    assert!(
        down["error"].as_str().unwrap_or("").contains("every"),
        "{down}"
    );
    a.until_mcp("the dead server noticed", |m| {
        server_state(m, "every") != "ready"
    })
    .await;
    let tools = a.rpc("6", "tools", json!([])).await;
    assert_eq!(tools["success"], true, "{tools}");

    // It comes back on the same port: reconnected in the background.
    let peer = Peer::everything("streamableHttp", port).await;
    a.until_mcp("the server back", |m| server_state(m, "every") == "ready")
        .await;
    let echo = a
        .rpc(
            "7",
            "callTool",
            json!(["every__echo", {"message": "again"}]),
        )
        .await;
    assert_eq!(echo["success"], true, "{echo}");

    // The whole runtime restarts: the agent reconnects its saved server without being asked.
    drop(a);
    rt.shutdown().await;
    drop(rt);
    let (rt, ns) = runtime(dir.path());
    let mut c = Client::connect(&ns, "ada").await;
    assert!(
        c.mcp["servers"]["every"].is_object(),
        "the saved server is listed at once: {}",
        c.mcp
    );
    c.until_mcp("the restored server ready", |m| {
        server_state(m, "every") == "ready" && has_tool(m, "every", "echo")
    })
    .await;
    // A tool call from outside any connection, right after a wake, waits for the server.
    let via_stub = ns
        .get_by_name("ada")
        .call(Call::new(
            "callTool",
            json!(["every__echo", {"message": "stub"}]),
        ))
        .await
        .expect("call");
    assert!(
        via_stub["text"].as_str().unwrap_or("").contains("stub"),
        "{via_stub}"
    );

    // Removed: gone from the list, and it stays gone after a restart.
    let removed = c.rpc("8", "removeServer", json!(["every"])).await;
    assert_eq!(removed["success"], true, "{removed}");
    c.until_mcp("the server removed", |m| m["servers"] == json!({}))
        .await;
    drop(c);
    rt.shutdown().await;
    drop(rt);
    let (rt, ns) = runtime(dir.path());
    let c = Client::connect(&ns, "ada").await;
    assert_eq!(c.mcp["servers"], json!({}));
    drop(c);
    rt.shutdown().await;
    peer.kill().await;
}

async fn get(ns: &Namespace<AgentHost<Assistant>>, uri: &str) -> (u16, String) {
    let mut req = http::Request::new(Bytes::new());
    *req.uri_mut() = uri.parse().expect("uri");
    let resp = ns.get_by_name("grace").fetch(req).await.expect("fetch");
    (
        resp.status().as_u16(),
        String::from_utf8_lossy(resp.body()).into_owned(),
    )
}

#[tokio::test]
async fn oauth_completes_on_the_agent_callback_route_across_restarts() {
    init_tracing();
    let peer = Peer::ts_oauth(free_port(), free_port()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (rt, ns) = runtime(dir.path());

    let mut a = Client::connect(&ns, "grace").await;
    let added = a.rpc("1", "addServer", json!(["ts", peer.url])).await;
    assert_eq!(added["success"], true, "{added}");
    assert_eq!(added["result"]["state"], "authenticating", "{added}");
    let auth_url = added["result"]["authUrl"]
        .as_str()
        .expect("authUrl")
        .to_string();
    a.until_mcp("the server waiting for the user", |m| {
        server_state(m, "ts") == "authenticating" && m["servers"]["ts"]["auth_url"].is_string()
    })
    .await;

    // The runtime restarts before the user comes back: the callback still completes.
    drop(a);
    rt.shutdown().await;
    drop(rt);
    let (rt, ns) = runtime(dir.path());
    let expected = format!("{CALLBACK_HOST}/agents/assistant/grace/callback?");
    let callback: http::Uri = authorize(&auth_url, &expected)
        .await
        .parse()
        .expect("callback URI");
    let path_and_query = callback
        .path_and_query()
        .expect("path")
        .as_str()
        .to_string();

    // A callback with a state nobody issued is not taken for one: it reaches on_request.
    let (status, _) = get(&ns, "/agents/assistant/grace/callback?code=x&state=forged").await;
    assert_eq!(status, 404);
    let (status, body) = get(&ns, &path_and_query).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("Authorization complete"), "{body}");

    let mut b = Client::connect(&ns, "grace").await;
    b.until_mcp("the authorized server ready", |m| {
        server_state(m, "ts") == "ready" && has_tool(m, "ts", "greet")
    })
    .await;
    let greet = b
        .rpc("2", "callTool", json!(["ts__greet", {"name": "Ada"}]))
        .await;
    assert_eq!(greet["success"], true, "{greet}");
    assert!(
        greet["result"]["text"]
            .as_str()
            .unwrap_or("")
            .contains("Ada"),
        "{greet}"
    );

    // Another restart: the stored token is used, nobody is asked again.
    drop(b);
    rt.shutdown().await;
    drop(rt);
    let (rt, ns) = runtime(dir.path());
    let mut c = Client::connect(&ns, "grace").await;
    c.until_mcp("the server ready with the stored token", |m| {
        assert_ne!(server_state(m, "ts"), "authenticating", "asked again: {m}");
        server_state(m, "ts") == "ready"
    })
    .await;
    drop(c);
    rt.shutdown().await;
    peer.kill().await;
}

#[tokio::test]
async fn an_agent_with_servers_hibernates_and_reconnects_on_wake() {
    init_tracing();
    let peer = Peer::everything("streamableHttp", free_port()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (rt, ns) = runtime_idle(dir.path(), Duration::from_millis(300));
    let stub = ns.get_by_name("hal");
    let added = stub
        .call(Call::new("addServerInTurn", json!(["every", peer.url])))
        .await
        .expect("addServer");
    assert_eq!(added["state"], "ready", "{added}");

    // Connected servers do not keep the agent awake.
    let deadline = Instant::now() + WAIT;
    while ns.live_count() > 0 {
        assert!(Instant::now() < deadline, "the agent never hibernated");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A call wakes it; the server comes back from its SQLite and the tool works.
    let echo = stub
        .call(Call::new(
            "callTool",
            json!(["every__echo", {"message": "awake"}]),
        ))
        .await
        .expect("callTool after the wake");
    assert!(
        echo["text"].as_str().unwrap_or("").contains("awake"),
        "{echo}"
    );
    rt.shutdown().await;
    peer.kill().await;
}

/// A server that accepts connections and never answers: its `initialize` hangs.
async fn silent_server() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/mcp", listener.local_addr().expect("addr"));
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    (url, task)
}

#[tokio::test]
async fn adding_a_slow_server_does_not_hold_the_agent() {
    init_tracing();
    let (url, silent) = silent_server().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (rt, ns) = runtime(dir.path());
    let mut a = Client::connect(&ns, "ada").await;

    // The server is connecting (and will not answer): other calls are answered meanwhile, and
    // the clients see it listed.
    let send = |client: &Client, id: &str, method: &str, args: Value| {
        client
            .handle
            .message(Frame::Text(
                json!({"type":"rpc","id":id,"method":method,"args":args}).to_string(),
            ))
            .expect("send");
    };
    send(&a, "1", "addServer", json!(["slow", url]));
    send(&a, "2", "tools", json!([]));
    loop {
        let frame = a.frame().await;
        assert_ne!(
            frame["id"], "1",
            "addServer answered before the next call: it held the agent"
        );
        if frame["type"] == "rpc" && frame["id"] == "2" {
            assert_eq!(frame["success"], true, "{frame}");
            break;
        }
    }
    // A second client connects, and gets the server in its handshake.
    let b = Client::connect(&ns, "ada").await;
    assert!(
        !server_state(&b.mcp, "slow").is_empty(),
        "the slow server is not listed: {}",
        b.mcp
    );
    assert_ne!(server_state(&b.mcp, "slow"), "ready");

    // After the connect timeout the call answers what add_server answers: the server, not
    // ready, still registered and reconnecting.
    let added = loop {
        let frame = a.frame().await;
        if frame["type"] == "rpc" && frame["id"] == "1" {
            break frame;
        }
    };
    assert_eq!(added["success"], true, "{added}");
    assert_eq!(added["result"]["id"], "slow", "{added}");
    assert_ne!(added["result"]["state"], "ready", "{added}");
    silent.abort();
    rt.shutdown().await;
}

/// Pauses or resumes a peer process (`STOP` / `CONT`): a paused server accepts connections
/// and answers nothing, like a slow one.
async fn signal(peer: &Peer, sig: &str) {
    let pid = peer.child.id().expect("peer pid");
    let status = tokio::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .await
        .expect("kill");
    assert!(status.success(), "kill -{sig} {pid}");
}

#[tokio::test]
async fn a_slow_token_exchange_does_not_hold_the_agent() {
    init_tracing();
    let peer = Peer::ts_oauth(free_port(), free_port()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (rt, ns) = runtime(dir.path());
    let mut a = Client::connect(&ns, "grace").await;
    let added = a.rpc("1", "addServer", json!(["ts", peer.url])).await;
    assert_eq!(added["result"]["state"], "authenticating", "{added}");
    let auth_url = added["result"]["authUrl"].as_str().expect("authUrl");
    let expected = format!("{CALLBACK_HOST}/agents/assistant/grace/callback?");
    let callback: http::Uri = authorize(auth_url, &expected)
        .await
        .parse()
        .expect("callback URI");
    let mut req = http::Request::new(Bytes::new());
    *req.uri_mut() = callback
        .path_and_query()
        .expect("path")
        .as_str()
        .parse()
        .expect("uri");

    // The authorization server stops answering: the token exchange waits on it.
    signal(&peer, "STOP").await;
    // Queued in this order: the callback, then an RPC from a client.
    let browser = tokio::spawn(ns.get_by_name("grace").fetch(req));
    let tools = a.rpc("2", "tools", json!([])).await;
    assert_eq!(tools["success"], true, "{tools}");
    assert!(
        !browser.is_finished(),
        "the callback was answered without its token"
    );

    signal(&peer, "CONT").await;
    let resp = browser.await.expect("join").expect("callback");
    let body = String::from_utf8_lossy(resp.body()).into_owned();
    assert_eq!(resp.status(), 200, "{body}");
    assert!(body.contains("Authorization complete"), "{body}");
    a.until_mcp("the authorized server ready", |m| {
        server_state(m, "ts") == "ready"
    })
    .await;

    // The token was saved: after a restart nobody is asked again.
    drop(a);
    rt.shutdown().await;
    drop(rt);
    let (rt, ns) = runtime(dir.path());
    let mut b = Client::connect(&ns, "grace").await;
    b.until_mcp("the server ready with the stored token", |m| {
        assert_ne!(server_state(m, "ts"), "authenticating", "asked again: {m}");
        server_state(m, "ts") == "ready"
    })
    .await;
    drop(b);
    rt.shutdown().await;
    peer.kill().await;
}

#[tokio::test]
async fn a_chat_model_is_offered_the_mcp_servers_tools_and_they_run_in_its_turn() {
    init_tracing();
    let port = free_port();
    let peer = Peer::everything("streamableHttp", port).await;
    let model = ScriptedModel::start().await;
    let client = ModelClient::new(ModelConfig::new(model.base_url(), "m")).expect("model");
    let dir = tempfile::tempdir().expect("tempdir");
    let (rt, ns) = runtime_with(dir.path(), Duration::from_secs(10), Some(client));
    let mut a = Client::connect(&ns, "ada").await;
    let added = a.rpc("1", "addServer", json!(["every", peer.url])).await;
    assert_eq!(added["result"]["state"], "ready", "{added}");

    // The model calls the server's echo tool, then answers with what it said.
    model.push(Reply::Sse(vec![
        SseEvent::role(),
        SseEvent::tool_call_start(0, "call_1", "every__echo", "{\"message\":\"hi\"}"),
        SseEvent::finish("tool_calls"),
    ]));
    model.push(Reply::text(&["It said hi."]));
    let body = json!({"messages": [{"id": "u1", "role": "user", "parts": [{"type": "text", "text": "echo hi"}]}],
        "trigger": "submit-message"});
    a.handle
        .message(Frame::Text(
            json!({"id": "r1", "init": {"method": "POST", "body": body.to_string()},
                "type": "cf_agent_use_chat_request"})
            .to_string(),
        ))
        .expect("send");
    let mut chunks = Vec::new();
    loop {
        let frame = a.frame().await;
        if frame["type"] != "cf_agent_use_chat_response" {
            continue;
        }
        assert!(frame.get("error").is_none(), "{frame}");
        if frame["done"] == true {
            break;
        }
        chunks.push(
            serde_json::from_str::<Value>(frame["body"].as_str().unwrap_or("")).expect("chunk"),
        );
    }
    let output = chunks
        .iter()
        .find(|c| c["type"] == "tool-output-available")
        .unwrap_or_else(|| panic!("no tool output: {chunks:?}"));
    assert!(
        output["output"].as_str().unwrap_or("").contains("hi"),
        "{output}"
    );

    let requests = model.requests();
    let offered: Vec<&str> = requests[0].body["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .filter_map(|t| t["function"]["name"].as_str())
        .collect();
    assert!(offered.contains(&"every__echo"), "{offered:?}");
    let tool_message = &requests[1].body["messages"].as_array().expect("messages")[2];
    assert_eq!(tool_message["role"], "tool", "{tool_message}");
    assert!(
        tool_message["content"]
            .as_str()
            .unwrap_or("")
            .contains("hi"),
        "{tool_message}"
    );
    drop(a);
    rt.shutdown().await;
}
