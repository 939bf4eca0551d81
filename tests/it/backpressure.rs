//! One client flooding a shared object must not get anyone closed: the gateway stops reading
//! from the flooding socket until the object catches up, and every message is delivered.

use std::time::Duration;

use crate::support::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

/// Reads `ws` until each user has been heard as many times as `expected` says; panics on a close
/// or after 60 s.
async fn hear(ws: &mut Ws, expected: &[(&str, usize)]) {
    let mut heard = vec![0; expected.len()];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while heard.iter().zip(expected).any(|(h, (_, n))| h < n) {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .unwrap_or_else(|_| panic!("heard {heard:?} of {expected:?}"))
            .expect("socket ended")
            .expect("socket error");
        match msg {
            Message::Text(t) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if let Some(i) = expected.iter().position(|(user, _)| v["user"] == *user) {
                    heard[i] += 1;
                }
            }
            Message::Close(frame) => panic!("closed after {heard:?} of {expected:?}: {frame:?}"),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_client_is_slowed_down_and_nobody_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    // A tiny mailbox: without backpressure the flood fills it at once.
    let server = Server::start(dir.path(), &["--mailbox-capacity", "4"]);
    let mut flooder = server.ws("/objects/chat/shared?user=flood").await;
    let mut innocent = server.ws("/objects/chat/shared?user=ada").await;
    assert_eq!(
        serde_json::from_str::<Value>(&next_text(&mut flooder).await).unwrap()["type"],
        "history"
    );
    assert_eq!(
        serde_json::from_str::<Value>(&next_text(&mut innocent).await).unwrap()["type"],
        "history"
    );
    const FLOOD: usize = 2_000;
    const CALM: usize = 20;
    let (mut flood_tx, mut flood_rx) = flooder.split();
    let flood = tokio::spawn(async move {
        let batch = futures_util::stream::iter(
            (0..FLOOD).map(|i| Ok(Message::Text(format!("spam {i}").into()))),
        );
        flood_tx.send_all(&mut batch.boxed()).await.expect("flood");
        flood_tx
    });
    // The flooder keeps reading (it hears its own messages back).
    let flooder_hears = tokio::spawn(async move {
        let mut heard = 0;
        while heard < FLOOD + CALM {
            match flood_rx.next().await {
                Some(Ok(Message::Text(_))) => heard += 1,
                Some(Ok(Message::Close(frame))) => return Err(format!("closed: {frame:?}")),
                Some(Ok(_)) => {}
                other => return Err(format!("ended: {other:?}")),
            }
        }
        Ok(flood_rx)
    });
    for i in 0..CALM {
        send_text(&mut innocent, &format!("hello {i}")).await;
    }
    hear(&mut innocent, &[("ada", CALM), ("flood", FLOOD)]).await;
    let _sink = flood.await.unwrap();
    let _stream = flooder_hears
        .await
        .unwrap()
        .expect("the flooder was closed");
    // Everything was kept: the history holds its latest 100.
    let history: Value = reqwest::get(server.url("/objects/chat/shared"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(history["messages"].as_array().map_or(0, Vec::len), 100);
}
