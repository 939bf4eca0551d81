//! The real model server of the chat tests: llama.cpp's `llama-server` with SmolLM2-135M-Instruct,
//! as `agents/tests/peers/install-llm.sh` installs it into `<repo>/.peers/llm` (or
//! `$DENIZEN_LLM_PEER`). A test starts its own on a free loopback port and the server is killed
//! when the handle drops.
//!
//! When the peer is not installed, [`LlamaServer::start`] answers `None` (the test skips, saying
//! so) unless `DENIZEN_REQUIRE_LLM=1`, which CI sets: then it fails the test.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The model file inside the install.
const MODEL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
/// llama.cpp's ChatML template that renders `tools` and parses `<tool_call>` output; the model's
/// own template ignores tools.
const TEMPLATE: &str = "templates/Qwen-Qwen2.5-7B-Instruct.jinja";
/// Model load and warm-up take about half a second; this leaves room for a loaded machine.
const STARTUP: Duration = Duration::from_secs(60);

/// A running `llama-server` on 127.0.0.1, killed (by pid) when dropped.
pub struct LlamaServer {
    child: Child,
    /// The port it listens on.
    pub port: u16,
    log: PathBuf,
}

impl LlamaServer {
    /// Starts the installed server with the flags the peer is tested with, or `None` (with a
    /// notice on stderr) when it is not installed and `DENIZEN_REQUIRE_LLM` is not `1`.
    pub async fn start() -> Option<LlamaServer> {
        LlamaServer::start_with(&[]).await
    }

    /// [`start`](Self::start), with more `llama-server` arguments, e.g. server-side defaults for
    /// requests that set none: `["--temp", "0", "-n", "64"]` (greedy, 64 tokens at most).
    pub async fn start_with(args: &[&str]) -> Option<LlamaServer> {
        let dir = install_dir();
        let bin = dir.join("bin/llama-server");
        let missing: Vec<_> = [bin.clone(), dir.join(MODEL), dir.join(TEMPLATE)]
            .into_iter()
            .filter(|p| !p.exists())
            .collect();
        if !missing.is_empty() {
            let why = format!(
                "the llama.cpp test peer is not installed ({} missing): run \
                 agents/tests/peers/install-llm.sh (about 5 minutes)",
                missing[0].display()
            );
            assert!(
                std::env::var("DENIZEN_REQUIRE_LLM").as_deref() != Ok("1"),
                "DENIZEN_REQUIRE_LLM=1 but {why}"
            );
            eprintln!("skipped: {why}");
            return None;
        }
        // A free port can be taken between our probe and the server's bind: try another.
        for _ in 0..3 {
            let port = free_port();
            let log = std::env::temp_dir().join(format!("denizen-llama-server-{port}.log"));
            let child = Command::new(&bin)
                .arg("-m")
                .arg(dir.join(MODEL))
                .args(["--alias", "smollm2-135m-instruct", "--host", "127.0.0.1"])
                .args(["--port", &port.to_string()])
                .args(["-c", "8192", "-np", "2", "-t", "2", "--jinja"])
                .arg("--chat-template-file")
                .arg(dir.join(TEMPLATE))
                // --no-repack: the AMX repack path of a native build crashes; kept as a guard.
                .args(["--no-webui", "--no-repack"])
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
            let mut server = LlamaServer { child, port, log };
            if server.healthy().await {
                return Some(server);
            }
        }
        panic!("llama-server did not start on any of 3 ports");
    }

    /// The OpenAI-compatible base URL, `http://127.0.0.1:<port>/v1`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    /// Waits for `GET /health` to answer 200: true once it does, false if the server exited
    /// (its port was taken); fails the test after [`STARTUP`].
    async fn healthy(&mut self) -> bool {
        let url = format!("http://127.0.0.1:{}/health", self.port);
        let client = reqwest::Client::new();
        let deadline = Instant::now() + STARTUP;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                if log.contains("bind") || log.contains("address already in use") {
                    return false;
                }
                panic!("llama-server exited with {status} while starting:\n{log}");
            }
            let ok = client
                .get(&url)
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                return true;
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                panic!("llama-server not healthy after {STARTUP:?}:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Where the install script put the peer.
fn install_dir() -> PathBuf {
    std::env::var_os("DENIZEN_LLM_PEER").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.peers/llm"),
        PathBuf::from,
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
