//! `denizen sql` while the server runs (the query goes through it, as an event of the object)
//! and after it stopped (the file is opened directly), with bad input in both.

use std::path::Path;
use std::process::{Command, Output};

use crate::support::Server;

fn sql(data_dir: &Path, extra: &[&str], args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_denizen"))
        .arg("sql")
        .arg("--data-dir")
        .arg(data_dir)
        .args(extra)
        .args(args)
        .env("DENIZEN_CONFIG", "/nonexistent/denizen.toml")
        .env_remove("DENIZEN_SERVER")
        .env_remove("DENIZEN_ADMIN_TOKEN")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run denizen sql")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

async fn count(client: &reqwest::Client, server: &Server, name: &str) -> String {
    client
        .get(server.url(&format!("/objects/counter/{name}")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_goes_through_a_running_server_and_opens_the_file_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start(dir.path(), &["--admin-token", "s3cret-s3cret-s3cret"]);
    let client = reqwest::Client::new();
    for _ in 0..3 {
        client
            .post(server.url("/objects/counter/alice/increment"))
            .send()
            .await
            .unwrap();
    }
    let token = ["--admin-token", "s3cret-s3cret-s3cret"];

    // The live object holds its file; the query runs inside it.
    let read = sql(
        &data,
        &token,
        &["counter", "alice", "SELECT count FROM counter"],
    );
    assert!(read.status.success(), "{}", stderr(&read));
    assert_eq!(stdout(&read), "count\n3\n");
    assert!(
        stderr(&read).contains("through the server"),
        "{}",
        stderr(&read)
    );

    // A write is an event of the object: the object sees it at once.
    let write = sql(
        &data,
        &token,
        &["counter", "alice", "UPDATE counter SET count = 41"],
    );
    assert!(write.status.success(), "{}", stderr(&write));
    assert_eq!(count(&client, &server, "alice").await, "{\"count\":41}");

    // Bad input gets clear errors, and the object keeps working.
    let bad = sql(&data, &token, &["counter", "alice", "SELEC nonsense"]);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("400"), "{}", stderr(&bad));
    let refused = sql(&data, &token, &["counter", "alice", "BEGIN"]);
    assert!(!refused.status.success());
    let unknown = sql(&data, &token, &["counter", "nobody", "SELECT 1"]);
    assert!(!unknown.status.success());
    assert!(stderr(&unknown).contains("nobody"), "{}", stderr(&unknown));
    let unknown_ns = sql(&data, &token, &["nope", "alice", "SELECT 1"]);
    assert!(!unknown_ns.status.success());
    assert!(
        stderr(&unknown_ns).contains("nope"),
        "{}",
        stderr(&unknown_ns)
    );
    let no_token = sql(&data, &[], &["counter", "alice", "SELECT 1"]);
    assert!(!no_token.status.success());
    assert!(stderr(&no_token).contains("401"), "{}", stderr(&no_token));
    // Asking a server that is not there is an error, not a silent switch to the file.
    let nowhere = sql(
        &data,
        &["--server", "http://127.0.0.1:9"],
        &["counter", "alice", "SELECT 1"],
    );
    assert!(!nowhere.status.success());
    assert!(
        stderr(&nowhere).contains("no Denizen server"),
        "{}",
        stderr(&nowhere)
    );
    assert_eq!(count(&client, &server, "alice").await, "{\"count\":41}");

    // Stopped (and, separately, killed: the address file stays behind): the file is opened.
    server.stop();
    let offline = sql(
        &data,
        &[],
        &["counter", "alice", "SELECT count FROM counter"],
    );
    assert!(offline.status.success(), "{}", stderr(&offline));
    assert_eq!(stdout(&offline), "count\n41\n");
    server.restart();
    server.kill();
    let after_kill = sql(
        &data,
        &[],
        &["counter", "alice", "SELECT count FROM counter"],
    );
    assert!(after_kill.status.success(), "{}", stderr(&after_kill));
    assert_eq!(stdout(&after_kill), "count\n41\n");
}

fn workflows(data_dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_denizen"))
        .args(["workflows", "approval", "--data-dir"])
        .arg(data_dir)
        .env("DENIZEN_CONFIG", "/nonexistent/denizen.toml")
        .env_remove("DENIZEN_SERVER")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run denizen workflows")
}

fn row_status(table: &str, id: &str) -> Option<String> {
    table
        .lines()
        .find(|l| l.starts_with(&format!("{id} ")))
        .and_then(|l| l.split_whitespace().nth(1))
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflows_lists_live_instances_through_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Instances stay live (their files held by the server) for the whole test.
    let mut server = Server::start(dir.path(), &["--idle-timeout", "1h"]);
    let client = server.admin_client();
    let created = client
        .post(server.url("/workflows/approval?id=w1"))
        .body(r#"{"request": "ship it", "sleep_secs": 0}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    crate::support::wait_until(
        "w1 to wait for approval",
        std::time::Duration::from_secs(30),
        || {
            let (client, server) = (&client, &server);
            async move {
                let v: serde_json::Value = client
                    .get(server.url("/workflows/approval/w1"))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                v["status"] == "waiting"
            }
        },
    )
    .await;

    let live = workflows(&data);
    let table = stdout(&live);
    assert!(live.status.success(), "{}", stderr(&live));
    assert_eq!(
        row_status(&table, "w1").as_deref(),
        Some("waiting"),
        "{table}"
    );

    // Killed: the address file stays behind, nobody answers, the files are read.
    server.kill();
    let offline = workflows(&data);
    let table = stdout(&offline);
    assert!(offline.status.success(), "{}", stderr(&offline));
    assert_eq!(
        row_status(&table, "w1").as_deref(),
        Some("waiting"),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_uses_the_admin_token_the_server_generated() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(dir.path(), &[]);
    reqwest::Client::new()
        .post(server.url("/objects/counter/bob/increment"))
        .send()
        .await
        .unwrap();
    // No token given anywhere: read from <data-dir>/admin.token.
    let read = sql(&data, &[], &["counter", "bob", "SELECT count FROM counter"]);
    assert!(read.status.success(), "{}", stderr(&read));
    assert_eq!(stdout(&read), "count\n1\n");
    assert!(
        stderr(&read).contains("through the server"),
        "{}",
        stderr(&read)
    );
    // Anyone else is refused.
    let answer = reqwest::Client::new()
        .post(server.url("/admin/sql/counter/bob"))
        .header("content-type", "application/json")
        .body(r#"{"query": "SELECT 1"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 401);
}
