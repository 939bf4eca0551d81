use crate::support::Server;
use serde_json::Value;

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

/// The server's threads named like the idle polling threads (`denizen-idle-poll-<cpu>`, cut to
/// the kernel's 15 characters).
#[cfg(target_os = "linux")]
fn idle_poll_threads(pid: u32) -> usize {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|t| t.ok())
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .is_ok_and(|name| name.starts_with("denizen-idle-po"))
        })
        .count()
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn idle_polling_is_on_by_default_off_with_a_zero_window_and_a_bad_value_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let polling = Server::start(&dir.path().join("on"), &[]);
    let quiet = Server::start(&dir.path().join("off"), &["--idle-poll", "0s"]);
    let client = reqwest::Client::new();
    assert_eq!(post_increment(&client, &polling, "a").await, 1);
    assert_eq!(post_increment(&client, &quiet, "a").await, 1);
    assert!(idle_poll_threads(polling.pid()) >= 1);
    assert_eq!(idle_poll_threads(quiet.pid()), 0);

    let config = dir.path().join("denizen.toml");
    std::fs::write(&config, "idle_poll = \"soon\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_denizen"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("bad"))
        .env("DENIZEN_CONFIG", &config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("idle_poll") && stderr.contains("`soon` is not a duration"),
        "{stderr}"
    );
}
