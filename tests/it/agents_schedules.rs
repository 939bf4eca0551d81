//! Agent schedules through the real server: a schedule set before a SIGKILL fires after the
//! restart, by itself (the runtime's alarm index wakes the agent), exactly once.

use std::time::Duration;

use crate::support::{Server, Ws, next_text, send_text, wait_until};
use serde_json::{Value, json};

async fn connect(server: &Server, name: &str) -> Ws {
    let mut ws = server
        .ws(&format!("/agents/counter-agent/{name}?_pk=rust-test"))
        .await;
    for expected in [
        "cf_agent_identity",
        "cf_agent_state",
        "cf_agent_mcp_servers",
    ] {
        let frame: Value = serde_json::from_str(&next_text(&mut ws).await).unwrap();
        assert_eq!(frame["type"], expected);
    }
    ws
}

async fn rpc(ws: &mut Ws, id: &str, method: &str, args: Value) -> Value {
    let frame = json!({"type": "rpc", "id": id, "method": method, "args": args});
    send_text(ws, &frame.to_string()).await;
    loop {
        let reply: Value = serde_json::from_str(&next_text(ws).await).unwrap();
        if reply["type"] == "rpc" && reply["id"] == id {
            assert_eq!(reply["success"], true, "{method} failed: {reply}");
            return reply["result"].clone();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_survive_sigkill_and_fire_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let mut ws = connect(&server, "crashy").await;
    let schedule = rpc(&mut ws, "1", "remind", json!([1.5, "after the crash"])).await;
    assert_eq!(schedule["callback"], "remind");
    let listed = rpc(&mut ws, "2", "schedules", json!([])).await;
    // The reminder and the agent's own tick.
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");
    drop(ws);

    server.kill();
    server.restart();
    // Nobody touches the agent: its alarm brings it back.
    wait_until("the reminder's alarm", Duration::from_secs(20), || async {
        server.metric("denizen_alarms_fired_total").await >= 1.0
    })
    .await;
    let mut ws = connect(&server, "crashy").await;
    // The alarm fired; the reminder is committed by the time a later event runs.
    let reminders = rpc(&mut ws, "3", "reminders", json!([])).await;
    let notes: Vec<&str> = reminders
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["note"].as_str().unwrap())
        .collect();
    assert_eq!(notes, ["after the crash"]);
    let listed = rpc(&mut ws, "4", "schedules", json!([])).await;
    let callbacks: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["callback"].as_str().unwrap())
        .collect();
    assert_eq!(
        callbacks,
        ["tick"],
        "the one-shot is gone, the tick is not duplicated"
    );
    assert_eq!(rpc(&mut ws, "5", "failures", json!([])).await, json!([]));
}
