use std::time::Duration;

use crate::support::*;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_clients_share_a_hibernating_room() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--idle-timeout", "300ms"]);

    let mut clients = Vec::new();
    for i in 0..100 {
        let mut ws = server
            .ws(&format!("/objects/chat/lobby?user=user{i}"))
            .await;
        let history: Value = serde_json::from_str(&next_text(&mut ws).await).unwrap();
        assert_eq!(history["type"], "history");
        clients.push(ws);
    }

    // The room hibernates while all 100 stay connected.
    wait_until("the room to hibernate", Duration::from_secs(20), || async {
        server.metric("denizen_live_objects").await == 0.0
    })
    .await;
    assert_eq!(server.metric("denizen_websockets").await, 100.0);
    let activations = server.metric("denizen_activations_total").await;

    // The auto-response is answered without waking it.
    send_text(&mut clients[7], "ping").await;
    assert_eq!(next_text(&mut clients[7]).await, "pong");
    assert_eq!(server.metric("denizen_live_objects").await, 0.0);
    assert_eq!(
        server.metric("denizen_activations_total").await,
        activations
    );

    // One message wakes it, and all 100 receive it (the sender too).
    send_text(&mut clients[42], "hello, room").await;
    for ws in clients.iter_mut() {
        let msg: Value = serde_json::from_str(&next_text(ws).await).unwrap();
        assert_eq!(msg["type"], "message");
        assert_eq!(msg["user"], "user42");
        assert_eq!(msg["text"], "hello, room");
    }
    assert_eq!(
        server.metric("denizen_activations_total").await,
        activations + 1.0
    );

    // The history is kept: over HTTP, and for a newcomer.
    let history: Value = reqwest::get(server.url("/objects/chat/lobby"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(history["messages"][0]["text"], "hello, room");
    let mut late = server.ws("/objects/chat/lobby?user=late").await;
    let first: Value = serde_json::from_str(&next_text(&mut late).await).unwrap();
    assert_eq!(first["messages"][0]["user"], "user42");

    // A client without a user name is refused before the upgrade.
    let err = tokio_tungstenite::connect_async(server.ws_url("/objects/chat/lobby"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("400"), "{err}");
}
