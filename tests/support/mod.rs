//! Starts the real `denizen` binary on 127.0.0.1 (port 0) with a temporary data directory.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use denizen_test_util::child::ChildServer;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Where the suite's build put the `denizen` binary (`<target>/debug`, or `release`): builds
/// the tests start themselves (examples, the README's app) go to the same target directory.
pub(crate) fn profile_dir() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_denizen"))
        .parent()
        .expect("the binary's directory")
}

/// `denizen serve` in a child process; derefs to its [`ChildServer`] (`addr`, `url`, `kill`,
/// `stop`, ...).
pub(crate) struct Server {
    child: ChildServer,
    pub(crate) data_dir: PathBuf,
    args: Vec<String>,
}

impl Server {
    /// Starts `denizen serve` with `args` on a fresh data directory inside `dir`.
    pub(crate) fn start(dir: &Path, args: &[&str]) -> Server {
        let data_dir = dir.join("data");
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        Server {
            child: spawn(&data_dir, &args),
            data_dir,
            args,
        }
    }

    /// The admin token the server generated into its data directory.
    pub(crate) fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("admin.token"))
            .expect("the server keeps its admin token in <data-dir>/admin.token")
            .trim()
            .to_string()
    }

    /// A client that sends the admin token and JSON, as admin routes (`/admin`, `/workflows`)
    /// require.
    pub(crate) fn admin_client(&self) -> reqwest::Client {
        admin_client(&self.data_dir)
    }

    /// Starts again on the same data directory (new port), after a SIGTERM if it still runs.
    pub(crate) fn restart(&mut self) {
        if self.child.pid() != 0 {
            self.child.stop();
        }
        self.child = spawn(&self.data_dir, &self.args);
    }

    /// One unlabelled value from `/metrics`; fails the test when it is not there.
    pub(crate) async fn metric(&self, name: &str) -> f64 {
        self.child
            .metric(name)
            .await
            .unwrap_or_else(|| panic!("metric {name} missing"))
    }

    pub(crate) async fn ws(&self, path: &str) -> Ws {
        let (ws, _) = tokio_tungstenite::connect_async(self.ws_url(path))
            .await
            .expect("websocket connect");
        ws
    }
}

impl std::ops::Deref for Server {
    type Target = ChildServer;
    fn deref(&self) -> &ChildServer {
        &self.child
    }
}

impl std::ops::DerefMut for Server {
    fn deref_mut(&mut self) -> &mut ChildServer {
        &mut self.child
    }
}

fn spawn(data_dir: &Path, args: &[String]) -> ChildServer {
    let mut command = Command::new(env!("CARGO_BIN_EXE_denizen"));
    command
        .arg("serve")
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(args)
        .env("RUST_LOG", "warn")
        .env("DENIZEN_CONFIG", "/nonexistent/denizen.toml")
        // A model only when a test passes `--llm-url`, whatever the environment has.
        .env_remove("DENIZEN_LLM_URL")
        .env_remove("DENIZEN_LLM_MODEL")
        .env_remove("DENIZEN_LLM_API_KEY");
    ChildServer::spawn(command)
}

/// Polls until `cond` returns true (async), failing after `within`.
pub(crate) async fn wait_until<F, Fut>(what: &str, within: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The next text frame (skipping pings/pongs), failing after 10 s.
pub(crate) async fn next_text(ws: &mut Ws) -> String {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("timed out waiting for a frame")
            .expect("socket ended")
            .expect("socket error");
        match msg {
            Message::Text(t) => return t.to_string(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected text, got {other:?}"),
        }
    }
}

/// Reads until the close frame and returns its code.
pub(crate) async fn close_code(ws: &mut Ws) -> Option<u16> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => return frame.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(_))) | Ok(None) => return None,
            Err(_) => panic!("timed out waiting for close"),
        }
    }
}

pub(crate) async fn send_text(ws: &mut Ws, text: &str) {
    ws.send(Message::Text(text.into())).await.expect("send");
}

/// A client that sends the admin token the server generated into `data_dir`, and JSON, as
/// admin routes (`/admin`, `/workflows`) require.
pub(crate) fn admin_client(data_dir: &Path) -> reqwest::Client {
    let token = std::fs::read_to_string(data_dir.join("admin.token"))
        .expect("the server keeps its admin token in <data-dir>/admin.token");
    let mut headers = reqwest::header::HeaderMap::new();
    let bearer = format!("Bearer {}", token.trim());
    headers.insert(reqwest::header::AUTHORIZATION, bearer.parse().unwrap());
    headers.insert(
        reqwest::header::CONTENT_TYPE,
        "application/json".parse().unwrap(),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

/// A client of the agents protocol, as the JS client speaks it, that remembers the last state
/// and MCP server list it was sent.
pub(crate) struct AgentClient {
    pub(crate) ws: Ws,
    pub(crate) mcp: serde_json::Value,
    pub(crate) state: serde_json::Value,
    next_id: u64,
}

impl AgentClient {
    /// Connects at `url` (`ws://.../agents/<class>/<name>`) and reads the connect handshake.
    pub(crate) async fn connect(url: &str) -> AgentClient {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("websocket connect");
        let mut client = AgentClient {
            ws,
            mcp: serde_json::Value::Null,
            state: serde_json::Value::Null,
            next_id: 0,
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

    /// The next frame, noting state and server lists.
    pub(crate) async fn frame(&mut self) -> serde_json::Value {
        let frame: serde_json::Value =
            serde_json::from_str(&next_text(&mut self.ws).await).expect("a JSON frame");
        match frame["type"].as_str() {
            Some("cf_agent_mcp_servers") => self.mcp = frame["mcp"].clone(),
            Some("cf_agent_state") => self.state = frame["state"].clone(),
            _ => {}
        }
        frame
    }

    /// Reads frames until `cond` holds (30 s at most).
    pub(crate) async fn until(&mut self, what: &str, cond: impl Fn(&AgentClient) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
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

    /// Calls `method`: `Ok(result)` or `Err(error message)`.
    pub(crate) async fn call(
        &mut self,
        method: &str,
        args: serde_json::Value,
    ) -> Result<serde_json::Value, String> {
        self.next_id += 1;
        let id = self.next_id.to_string();
        let frame = serde_json::json!({"type": "rpc", "id": id, "method": method, "args": args});
        send_text(&mut self.ws, &frame.to_string()).await;
        loop {
            let reply = self.frame().await;
            if reply["type"] == "rpc" && reply["id"] == id {
                return match reply["success"].as_bool() {
                    Some(true) => Ok(reply["result"].clone()),
                    _ => Err(reply["error"].as_str().unwrap_or_default().to_string()),
                };
            }
        }
    }
}
