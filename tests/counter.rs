mod support;

use serde_json::Value;
use support::Server;

async fn post_increment(client: &reqwest::Client, server: &Server, name: &str) -> i64 {
    let resp = client
        .post(server.url(&format!("/objects/counter/{name}/increment")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.json::<Value>().await.unwrap()["count"]
        .as_i64()
        .unwrap()
}

async fn get_count(client: &reqwest::Client, server: &Server, name: &str) -> i64 {
    let resp = client
        .get(server.url(&format!("/objects/counter/{name}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.json::<Value>().await.unwrap()["count"]
        .as_i64()
        .unwrap()
}

#[tokio::test]
async fn counter_counts_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let client = reqwest::Client::new();
    assert_eq!(get_count(&client, &server, "alice").await, 0);
    for expected in 1..=5 {
        assert_eq!(post_increment(&client, &server, "alice").await, expected);
    }
    assert_eq!(post_increment(&client, &server, "bob").await, 1);

    // Wrong method and unknown path are answered, not dropped.
    let resp = client
        .delete(server.url("/objects/counter/alice/increment"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);

    server.restart();
    assert_eq!(get_count(&client, &server, "alice").await, 5);
    assert_eq!(get_count(&client, &server, "bob").await, 1);
    assert_eq!(post_increment(&client, &server, "alice").await, 6);

    // The CLI sees the same objects and data.
    server.stop();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_denizen"))
        .args(["objects", "counter", "--data-dir"])
        .arg(&server.data_dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    let listing = String::from_utf8(out.stdout).unwrap();
    assert!(
        listing.contains("alice") && listing.contains("bob"),
        "{listing}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_denizen"))
        .args([
            "sql",
            "counter",
            "alice",
            "SELECT count FROM counter",
            "--data-dir",
        ])
        .arg(&server.data_dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "count\n6\n");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_denizen"))
        .args(["sql", "counter", "nobody", "SELECT 1", "--data-dir"])
        .arg(&server.data_dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no object named `nobody`"));
}
