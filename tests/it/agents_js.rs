//! The official JavaScript `agents` client (`AgentClient` from `agents@0.32.0`, installed by
//! `.ci/run` into tests/js/node_modules) against the real `denizen` server: state sync, RPC,
//! streaming, errors, a reconnect after hibernation, and state after a SIGKILL and restart.

use std::path::PathBuf;
use std::process::Command;

use crate::support::Server;

fn js_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/js")
}

/// Runs one phase of tests/js/agent_client.mjs and returns its JSON summary.
fn run_phase(server: &Server, phase: &str, name: &str, expected: Option<i64>) -> serde_json::Value {
    let dir = js_dir();
    assert!(
        dir.join("node_modules/agents/package.json").exists(),
        "the JS client is not installed: run `npm ci` in tests/js (.ci/run does it)"
    );
    let mut cmd = Command::new("node");
    cmd.current_dir(&dir)
        .arg("agent_client.mjs")
        .arg(phase)
        .arg(&server.addr)
        .arg(name);
    if let Some(n) = expected {
        cmd.arg(n.to_string());
    }
    let out = cmd
        .output()
        .expect("node must be installed (Node 20 or newer) to run the JS client tests");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "phase {phase} failed:\n{stderr}\n{stdout}"
    );
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("phase {phase} printed {line:?}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_js_client_talks_to_an_agent() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &["--idle-timeout", "300ms"]);
    let name = "js-room";

    let basic = tokio::task::block_in_place(|| run_phase(&server, "basic", name, None));
    assert_eq!(basic["count"], 15);

    let after_sleep =
        tokio::task::block_in_place(|| run_phase(&server, "hibernate", name, Some(15)));
    assert_eq!(after_sleep["count"], 17);

    // Nothing acknowledged is lost to a crash: SIGKILL, then a fresh process on the same data.
    server.kill();
    server.restart();
    let restarted = tokio::task::block_in_place(|| run_phase(&server, "restart", name, Some(17)));
    assert_eq!(restarted["count"], 17);

    // Plain HTTP reaches the same agent (the client's `agentFetch` path).
    let body: serde_json::Value =
        reqwest::get(server.url(&format!("/agents/counter-agent/{name}")))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(body["count"], 17);
    let unknown = reqwest::get(server.url("/agents/no-such-agent/x"))
        .await
        .unwrap();
    assert_eq!(unknown.status(), 400);
}
