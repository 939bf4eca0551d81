//! Crash safety through the real `denizen` binary: acknowledged writes survive a SIGKILL.
#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::Value;
use support::Server;

/// SIGKILL the server while clients write; after a restart every acknowledged write is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let client = reqwest::Client::new();
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..8 {
        let client = client.clone();
        let url = server.url(&format!("/objects/counter/crash-{w}/increment"));
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut acknowledged = 0;
            while !stop.load(Ordering::Relaxed) {
                match client.post(&url).send().await {
                    Ok(resp) if resp.status() == 200 => match resp.json::<Value>().await {
                        Ok(v) => acknowledged = v["count"].as_i64().unwrap(),
                        Err(_) => break,
                    },
                    _ => break,
                }
            }
            acknowledged
        }));
    }
    // Kill once every writer has had a good number of writes acknowledged.
    let probe = server.url("/objects/counter/crash-0");
    support::wait_until("writes to flow", std::time::Duration::from_secs(20), || {
        let client = client.clone();
        let probe = probe.clone();
        async move {
            let v: Value = client
                .get(&probe)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["count"].as_i64().unwrap() > 200
        }
    })
    .await;
    server.kill();
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for w in writers {
        acked.push(w.await.unwrap());
    }

    server.restart();
    for (w, acknowledged) in acked.iter().enumerate() {
        let v: Value = client
            .get(server.url(&format!("/objects/counter/crash-{w}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let count = v["count"].as_i64().unwrap();
        assert!(
            count >= *acknowledged,
            "writer {w}: {acknowledged} acknowledged but only {count} survived"
        );
        // At most the one in flight at the kill was committed without being acknowledged.
        assert!(
            count <= acknowledged + 1,
            "writer {w}: {count} > {acknowledged} + 1"
        );
    }
}
