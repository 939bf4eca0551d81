//! Servers that die and come back, and an object that restarts: the manager reports clear
//! errors, reconnects by itself and keeps working; the server list survives in SQLite.

use std::time::Duration;

use crate::support::{Peer, free_port, init_tracing};
use denizen_mcp::{
    CallOptions, Era, Error, ManagerOptions, McpClientManager, ServerConfig, ServerState,
    TransportKind, store,
};
use denizen_storage::{Database, Durability};
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

async fn echo(manager: &McpClientManager, id: &str, message: &str) -> Result<String, Error> {
    manager
        .call_tool(
            &format!("{id}__echo"),
            json!({ "message": message }),
            CallOptions::default(),
        )
        .await
        .map(|r| text_of(&r))
}

#[tokio::test]
async fn server_killed_mid_call_gives_a_clear_error_then_reconnects() {
    init_tracing();
    let port = free_port();
    let peer = Peer::everything("streamableHttp", port).await;
    let manager = McpClientManager::new(ManagerOptions::default());
    manager
        .connect(ServerConfig::new("ev", &peer.url), READY)
        .await
        .expect("connect");

    let (tx, mut progress) = tokio::sync::mpsc::unbounded_channel();
    let call = {
        let manager = manager.clone();
        tokio::spawn(async move {
            manager
                .call_tool(
                    "ev__trigger-long-running-operation",
                    json!({"duration": 300, "steps": 300}),
                    CallOptions {
                        progress: Some(tx),
                        timeout: Some(Duration::from_secs(60)),
                        ..Default::default()
                    },
                )
                .await
        })
    };
    progress.recv().await.expect("the call is running");
    peer.kill().await;
    let outcome = call.await.expect("join");
    match &outcome {
        Err(Error::ConnectionLost { server, message }) => {
            assert_eq!(server, "ev");
            assert!(!message.is_empty());
        }
        other => panic!("expected ConnectionLost, got {other:?}"),
    }
    // While the server is down, calls fail fast with the state, not with a hang.
    let down = echo(&manager, "ev", "x").await;
    assert!(
        matches!(
            down,
            Err(Error::NotReady { .. }) | Err(Error::ConnectionLost { .. })
        ),
        "{down:?}"
    );

    // Same port, new process: the manager finds it again on its own.
    let peer = Peer::everything("streamableHttp", port).await;
    let status = manager.wait_ready("ev", READY).await.expect("reconnected");
    assert!(status.connections >= 2, "{status:?}");
    assert!(
        echo(&manager, "ev", "back")
            .await
            .expect("echo")
            .contains("back")
    );
    manager.close().await;
    drop(peer);
}

#[tokio::test]
async fn forgotten_session_is_reinitialized_transparently() {
    init_tracing();
    let port = free_port();
    let everything = Peer::everything("streamableHttp", port).await;
    let manager = McpClientManager::new(ManagerOptions::default());
    manager
        .connect(ServerConfig::new("ev", &everything.url), READY)
        .await
        .expect("connect");
    assert!(
        echo(&manager, "ev", "one")
            .await
            .expect("echo")
            .contains("one")
    );
    // A restart forgets every session; the TS server then answers 400, not 404.
    everything.kill().await;
    let everything = Peer::everything("streamableHttp", port).await;
    // Either the request re-initializes the session, or the manager has already reconnected:
    // both leave the server usable without the application doing anything.
    let status = manager.wait_ready("ev", READY).await.expect("ready");
    assert_eq!(status.state, ServerState::Ready);
    let mut answer = echo(&manager, "ev", "two").await;
    if matches!(
        answer,
        Err(Error::ConnectionLost { .. }) | Err(Error::NotReady { .. })
    ) {
        manager.wait_ready("ev", READY).await.expect("ready again");
        answer = echo(&manager, "ev", "two").await;
    }
    assert!(answer.expect("echo after restart").contains("two"));
    manager.close().await;
    drop(everything);
}

#[tokio::test]
async fn servers_and_routes_survive_an_object_restart() {
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("object.sqlite");
    let py = Peer::python("streamable-http", free_port()).await;
    let ev = Peer::everything("sse", free_port()).await;

    {
        let mut storage = Database::open(&db, Durability::Normal).expect("open");
        let manager = McpClientManager::new(ManagerOptions::default());
        store::restore(&mut storage, &manager).expect("restore");
        assert!(manager.servers().is_empty());
        manager
            .connect(ServerConfig::new("py", &py.url), READY)
            .await
            .expect("py");
        let mut token = ServerConfig::new("ev", &ev.url);
        token.bearer_token = Some("opaque-token".into());
        manager.connect(token, READY).await.expect("ev");
        store::save_all(&mut storage, &manager).expect("save");
        storage.commit().expect("commit");
        manager.close().await;
    }

    // A new activation: nothing in memory, everything from SQLite.
    let mut storage = Database::open(&db, Durability::Normal).expect("reopen");
    let saved = store::load_servers(&mut storage).expect("load");
    assert_eq!(saved.len(), 2);
    let ev_saved = saved.iter().find(|c| c.id == "ev").expect("ev saved");
    assert_eq!(ev_saved.bearer_token.as_deref(), Some("opaque-token"));
    assert_eq!(
        ev_saved.route.map(|r| r.transport),
        Some(TransportKind::Sse)
    );
    let py_saved = saved.iter().find(|c| c.id == "py").expect("py saved");
    assert_eq!(py_saved.route.map(|r| r.era), Some(Era::Modern));

    let manager = McpClientManager::new(ManagerOptions::default());
    store::restore(&mut storage, &manager).expect("restore");
    manager.wait_ready("py", READY).await.expect("py back");
    manager.wait_ready("ev", READY).await.expect("ev back");
    let sum = manager
        .call_tool("py__add", json!({"a": 20, "b": 22}), CallOptions::default())
        .await
        .expect("add");
    assert!(text_of(&sum).contains("42"));
    assert!(
        echo(&manager, "ev", "again")
            .await
            .expect("echo")
            .contains("again")
    );

    // Disconnect and delete: gone after the next activation too.
    let removed = manager.disconnect("py").await.expect("disconnect");
    assert!(store::delete_server(&mut storage, &removed.id).expect("delete"));
    storage.commit().expect("commit");
    assert_eq!(
        store::load_servers(&mut storage)
            .expect("load")
            .iter()
            .map(|c| c.id.as_str())
            .collect::<Vec<_>>(),
        ["ev"]
    );
    manager.close().await;
}
