//! Real MCP servers started by the tests on 127.0.0.1, from the peers that
//! `mcp/tests/peers/install.sh` installs (into `.peers/mcp`, or `$DENIZEN_MCP_PEERS`).
#![allow(dead_code)]

use std::{path::PathBuf, process::Stdio, time::Duration};

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    sync::mpsc,
};

/// The repository's root: this module is also compiled into the `denizen` crate's own tests.
fn repo_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .find(|p| p.join("mcp/tests/peers").is_dir())
        .map(PathBuf::from)
        .unwrap_or(manifest)
}

pub(crate) fn peers_dir() -> PathBuf {
    let dir = match std::env::var_os("DENIZEN_MCP_PEERS") {
        Some(d) => PathBuf::from(d),
        None => repo_root().join(".peers/mcp"),
    };
    assert!(
        dir.join("node_modules/@modelcontextprotocol/server-everything/package.json")
            .is_file()
            && dir
                .join("node_modules/@modelcontextprotocol/sdk/package.json")
                .is_file()
            && dir.join("venv/bin/python").is_file(),
        "MCP test peers are missing in {}: run `bash mcp/tests/peers/install.sh` (or .ci/run) first",
        dir.display()
    );
    dir
}

fn here() -> PathBuf {
    repo_root().join("mcp/tests/peers")
}

/// A port that was free a moment ago (the servers take their port from the command line or env).
pub(crate) fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// A running peer; SIGKILLed on drop.
pub(crate) struct Peer {
    pub(crate) child: Child,
    pub(crate) port: u16,
    pub(crate) url: String,
}

impl Peer {
    /// server-everything; `mode` is `streamableHttp` (URL `/mcp`) or `sse` (URL `/sse`).
    pub(crate) async fn everything(mode: &str, port: u16) -> Peer {
        let peers = peers_dir();
        let mut cmd = Command::new("node");
        cmd.arg("-r")
            .arg(here().join("loopback.cjs"))
            .arg(peers.join("node_modules/@modelcontextprotocol/server-everything/dist/index.js"))
            .arg(mode)
            // Its `get-env` tool returns the whole environment: give it nothing of ours.
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", std::env::temp_dir())
            .env("PORT", port.to_string());
        let path = if mode == "sse" { "sse" } else { "mcp" };
        Peer::start(
            cmd,
            port,
            format!("http://127.0.0.1:{port}/{path}"),
            &[&port.to_string()],
        )
        .await
    }

    /// The TypeScript SDK's example server with its in-memory OAuth authorization server
    /// (URLs on `localhost`): MCP on `port`, authorization server on `auth_port`.
    pub(crate) async fn ts_oauth(port: u16, auth_port: u16) -> Peer {
        let peers = peers_dir();
        let mut cmd = Command::new("node");
        cmd.arg("-r")
            .arg(here().join("loopback.cjs"))
            .arg(peers.join(
                "node_modules/@modelcontextprotocol/sdk/dist/esm/examples/server/simpleStreamableHttp.js",
            ))
            .arg("--oauth")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", std::env::temp_dir())
            .env("MCP_PORT", port.to_string())
            .env("MCP_AUTH_PORT", auth_port.to_string());
        let mcp = format!("Server listening on port {port}");
        let auth = format!("Authorization Server listening on port {auth_port}");
        Peer::start(
            cmd,
            port,
            format!("http://localhost:{port}/mcp"),
            &[&mcp, &auth],
        )
        .await
    }

    /// The Python SDK server; `transport` is `streamable-http` (URL `/mcp`) or `sse` (`/sse`).
    pub(crate) async fn python(transport: &str, port: u16) -> Peer {
        let peers = peers_dir();
        let mut cmd = Command::new(peers.join("venv/bin/python"));
        cmd.arg(here().join("py_server.py"))
            .arg(port.to_string())
            .arg(transport);
        let path = if transport == "sse" { "sse" } else { "mcp" };
        // uvicorn logs "Uvicorn running on http://127.0.0.1:PORT".
        let ready = format!("127.0.0.1:{port}");
        Peer::start(
            cmd,
            port,
            format!("http://127.0.0.1:{port}/{path}"),
            &[&ready],
        )
        .await
    }

    /// Starts `cmd` and waits until its output has shown every `ready` string.
    async fn start(mut cmd: Command, port: u16, url: String, ready: &[&str]) -> Peer {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn MCP peer");
        let (tx, mut rx) = mpsc::unbounded_channel::<String>();
        for out in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(out).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let _ = tx.send(line);
                }
            });
        }
        drop(tx);
        // Ready when the server has logged that it listens.
        let mut missing: Vec<&str> = ready.to_vec();
        let mut log = Vec::new();
        let ready = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = rx.recv().await {
                missing
                    .retain(|needle| !line.contains(needle) || line.contains("starting on port"));
                log.push(line);
                if missing.is_empty() {
                    return true;
                }
            }
            false
        })
        .await;
        assert!(
            matches!(ready, Ok(true)),
            "MCP peer did not start listening on {port}; output:\n{}",
            log.join("\n")
        );
        // Keep draining so the peer never blocks on a full pipe.
        tokio::spawn(async move { while rx.recv().await.is_some() {} });
        Peer { child, port, url }
    }

    /// SIGKILL, and wait for the process to be gone.
    pub(crate) async fn kill(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// The user's browser at the demo authorization server, which approves at once and redirects
/// to the callback: answers that redirect's `Location` (what the object's callback route would
/// receive), checking it starts with `callback_prefix`.
pub(crate) async fn authorize(auth_url: &str, callback_prefix: &str) -> String {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let response = client.get(auth_url).send().await.expect("authorize");
    assert!(response.status().is_redirection(), "{}", response.status());
    let location = response
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|l| l.to_str().ok())
        .expect("Location")
        .to_owned();
    assert!(location.starts_with(callback_prefix), "{location}");
    location
}

pub(crate) fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}
