//! The standalone examples (`examples/*.rs`), each started as its own binary with `serve`,
//! exercised over HTTP and WebSocket, and stopped: `chat-room`, `approval`, `mcp-tools`.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::agents_mcp::mcp_peers;
use crate::support::{AgentClient, Ws, admin_client, close_code, next_text, send_text};
use denizen_test_util::child::ChildServer;
use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const WAIT: Duration = Duration::from_secs(30);

/// The example `name`'s binary, next to the `denizen` binary: `target/<profile>/examples/<name>`.
/// `cargo test` builds the examples before it runs the tests, but `cargo test --test it` does
/// not, and would run a stale or missing one: so it is built here every time, with the same
/// profile and target directory (a no-op when it is up to date).
fn example_binary(name: &str) -> PathBuf {
    let profile_dir = crate::support::profile_dir();
    let target_dir = profile_dir.parent().expect("the target directory");
    let mut build = Command::new(env!("CARGO"));
    build
        .args(["build", "--quiet", "--example", name, "--manifest-path"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir);
    if profile_dir.ends_with("release") {
        build.arg("--release");
    }
    let status = build.status().expect("run cargo build");
    assert!(status.success(), "cargo build --example {name} failed");
    profile_dir.join("examples").join(name)
}

/// `<example> serve` on 127.0.0.1 port 0 with `data_dir`, no config file, and `args`.
fn serve(example: &str, data_dir: &Path, args: &[&str]) -> ChildServer {
    let mut command = Command::new(example_binary(example));
    command
        .arg("serve")
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(args)
        .env("RUST_LOG", "warn")
        .env("DENIZEN_CONFIG", "/nonexistent/denizen.toml");
    ChildServer::spawn(command)
}

async fn ws(server: &ChildServer, path: &str) -> Ws {
    tokio_tungstenite::connect_async(server.ws_url(path))
        .await
        .expect("websocket connect")
        .0
}

async fn json_frame(ws: &mut Ws) -> Value {
    serde_json::from_str(&next_text(ws).await).expect("a JSON frame")
}

async fn metric(server: &ChildServer, name: &str) -> f64 {
    server
        .metric(name)
        .await
        .unwrap_or_else(|| panic!("metric {name} missing"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_room_broadcasts_keeps_history_and_hibernates_with_members_connected() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = serve("chat-room", dir.path(), &["--idle-timeout", "200ms"]);

    let mut ada = ws(&server, "/objects/room/lobby?user=ada").await;
    assert_eq!(
        json_frame(&mut ada).await,
        json!({"type": "history", "messages": []})
    );
    let mut bob = ws(&server, "/objects/room/lobby?user=bob").await;
    assert_eq!(json_frame(&mut bob).await["type"], "history");

    // Everyone gets a message, the sender too.
    send_text(&mut ada, "hello").await;
    for client in [&mut ada, &mut bob] {
        let msg = json_frame(client).await;
        assert_eq!(
            (msg["type"].as_str(), msg["user"].as_str()),
            (Some("message"), Some("ada"))
        );
        assert_eq!(msg["text"], "hello");
    }

    // The room leaves memory while both stay connected...
    server.wait_metric("denizen_live_objects", 0.0, WAIT).await;
    assert_eq!(metric(&server, "denizen_websockets").await, 2.0);
    let activations = metric(&server, "denizen_activations_total").await;
    // ...and the next message wakes it.
    send_text(&mut bob, "hi ada").await;
    for client in [&mut ada, &mut bob] {
        let msg = json_frame(client).await;
        assert_eq!(
            (msg["user"].as_str(), msg["text"].as_str()),
            (Some("bob"), Some("hi ada"))
        );
    }
    assert_eq!(
        metric(&server, "denizen_activations_total").await,
        activations + 1.0
    );

    // A newcomer and a plain GET get the history, oldest first.
    let mut carol = ws(&server, "/objects/room/lobby?user=carol").await;
    let history = json_frame(&mut carol).await;
    let texts = |v: &Value| -> Vec<String> {
        v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["text"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(texts(&history), ["hello", "hi ada"]);
    let got: Value = reqwest::get(server.url("/objects/room/lobby"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(texts(&got), ["hello", "hi ada"]);
    // Another room is another object, with its own history.
    let other: Value = reqwest::get(server.url("/objects/room/attic"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(other, json!({"messages": []}));

    // Hostile input: an oversized message gets an error frame (to its sender only) and is not
    // kept; a binary frame closes that socket with 1003; a bad user name is refused before the
    // upgrade. The room keeps serving the others.
    send_text(&mut ada, &"x".repeat(5000)).await;
    let error = json_frame(&mut ada).await;
    assert_eq!(error["type"], "error");
    assert!(error["error"].as_str().unwrap().contains("4096"), "{error}");
    let mut mallory = ws(&server, "/objects/room/lobby?user=mallory").await;
    json_frame(&mut mallory).await;
    mallory
        .send(Message::Binary(vec![0u8; 8].into()))
        .await
        .unwrap();
    assert_eq!(close_code(&mut mallory).await, Some(1003));
    for bad in ["", "?user=", "?user=a%20b", "?user=../x"] {
        let err =
            tokio_tungstenite::connect_async(server.ws_url(&format!("/objects/room/lobby{bad}")))
                .await
                .unwrap_err();
        assert!(err.to_string().contains("400"), "{bad}: {err}");
    }
    // The app's authentication hook: a page of another site may not open a socket; one of
    // this site may.
    let mut request = server
        .ws_url("/objects/room/lobby?user=eve")
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("origin", "https://evil.example".parse().unwrap());
    let err = tokio_tungstenite::connect_async(request).await.unwrap_err();
    assert!(err.to_string().contains("403"), "{err}");
    let mut request = server
        .ws_url("/objects/room/lobby?user=fay")
        .into_client_request()
        .unwrap();
    let origin = format!("http://{}", server.addr);
    request
        .headers_mut()
        .insert("origin", origin.parse().unwrap());
    let (mut fay, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(json_frame(&mut fay).await["type"], "history");
    fay.close(None).await.unwrap();
    close_code(&mut fay).await;

    send_text(&mut carol, "still here").await;
    for client in [&mut ada, &mut bob, &mut carol] {
        assert_eq!(json_frame(client).await["text"], "still here");
    }

    // The app's own route lists the rooms that were written to, without waking them.
    server.wait_metric("denizen_live_objects", 0.0, WAIT).await;
    let rooms: Value = reqwest::get(server.url("/rooms"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rooms = rooms["rooms"].as_array().unwrap();
    assert_eq!(rooms.len(), 1, "{rooms:?}");
    assert_eq!(rooms[0]["name"], "lobby");
    assert_eq!(rooms[0]["awake"], false);
    assert!(rooms[0]["bytes"].as_u64().unwrap() > 0);
    assert_eq!(metric(&server, "denizen_live_objects").await, 0.0);

    // Stopped, then started again on the same data: the history was kept.
    for client in [&mut ada, &mut bob, &mut carol] {
        client.close(None).await.unwrap();
        close_code(client).await;
    }
    assert!(server.stop().success());
    let server = serve("chat-room", dir.path(), &[]);
    let mut dave = ws(&server, "/objects/room/lobby?user=dave").await;
    assert_eq!(
        texts(&json_frame(&mut dave).await),
        ["hello", "hi ada", "still here"]
    );
}

async fn post(client: &reqwest::Client, url: String, body: Value) -> (u16, Value) {
    let resp = client
        .post(url)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn get(client: &reqwest::Client, url: String) -> Value {
    let resp = client.get(url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

/// Polls the instance until its status is `want`.
async fn wait_for_status(
    server: &ChildServer,
    client: &reqwest::Client,
    id: &str,
    want: &str,
) -> Value {
    let url = server.url(&format!("/workflows/expense/{id}"));
    let deadline = Instant::now() + WAIT;
    loop {
        let status = get(client, url.clone()).await;
        if status["status"] == want {
            return status;
        }
        assert!(Instant::now() < deadline, "{id} never got {want}: {status}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_waits_for_a_decision_then_pays_or_not() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let mut server = serve("approval", &data_dir, &[]);
    let client = admin_client(&data_dir);
    let create = |id: &str, claim: Value| {
        let url = server.url(&format!("/workflows/expense?id={id}"));
        let client = client.clone();
        async move { post(&client, url, claim).await }
    };
    let decide = |id: &str, decision: Value| {
        let url = server.url(&format!("/workflows/expense/{id}/events/decision"));
        let client = client.clone();
        async move { post(&client, url, decision).await }
    };

    // Approved: prepared, waiting, then paid into the ledger.
    let claim = json!({"employee": "ada", "amount_cents": 12000, "what": "train to Lyon"});
    let (code, v) = create("trip-1", claim.clone()).await;
    assert_eq!((code, v["id"].as_str()), (201, Some("trip-1")), "{v}");
    let waiting = wait_for_status(&server, &client, "trip-1", "waiting").await;
    assert_eq!(waiting["steps"][0]["name"], "prepare");
    assert_eq!(waiting["steps"][1]["name"], "review");
    let (code, _) = decide("trip-1", json!({"approved": true, "by": "grace"})).await;
    assert_eq!(code, 202);
    let done = wait_for_status(&server, &client, "trip-1", "complete").await;
    assert_eq!(
        done["output"],
        json!({"outcome": "paid", "approved_by": "grace", "amount_cents": 12000,
               "paid_before_cents": 0, "total_cents": 12000})
    );
    let ledger = get(&client, server.url("/objects/ledger/ada")).await;
    assert_eq!(ledger["total_cents"], 12000);
    assert_eq!(ledger["payments"][0]["claim"], "trip-1");

    // Rejected, and a decision that is not `{"approved": true}` rejects too: nothing is paid.
    create("trip-2", claim.clone()).await;
    create("trip-3", claim.clone()).await;
    wait_for_status(&server, &client, "trip-2", "waiting").await;
    wait_for_status(&server, &client, "trip-3", "waiting").await;
    decide(
        "trip-2",
        json!({"approved": false, "by": "grace", "note": "no receipt"}),
    )
    .await;
    decide("trip-3", json!("yes")).await;
    let rejected = wait_for_status(&server, &client, "trip-2", "complete").await;
    assert_eq!(
        rejected["output"],
        json!({"outcome": "rejected", "by": "grace", "note": "no receipt"})
    );
    let odd = wait_for_status(&server, &client, "trip-3", "complete").await;
    assert_eq!(odd["output"]["outcome"], "rejected");
    // Nobody decided in time.
    let late = json!({"employee": "ada", "amount_cents": 1, "what": "gum", "review_secs": 0});
    assert_eq!(create("trip-4", late).await.0, 201);
    let expired = wait_for_status(&server, &client, "trip-4", "complete").await;
    assert_eq!(expired["output"]["outcome"], "expired");
    let ledger = get(&client, server.url("/objects/ledger/ada")).await;
    assert_eq!(ledger["total_cents"], 12000);

    // Hostile input: claims that do not fit are answered 400 and create nothing; the ledger
    // takes no payments over HTTP; the workflow routes want the admin token.
    for bad in [
        json!({"employee": "ada", "amount_cents": 0, "what": "nothing"}),
        json!({"employee": "ada", "amount_cents": 10_000_001, "what": "a car"}),
        json!({"employee": "../ada", "amount_cents": 5, "what": "x"}),
        json!({"employee": "ada", "amount_cents": "5", "what": "x"}),
        json!({"employee": "ada", "amount_cents": 5, "what": "x", "approved": true}),
        json!({"employee": "ada"}),
        json!([1, 2]),
    ] {
        let (code, v) = create("bad", bad.clone()).await;
        assert_eq!(code, 400, "{bad}: {v}");
        assert!(v["error"].as_str().unwrap().contains("params"), "{v}");
    }
    let list = get(&client, server.url("/workflows/expense")).await;
    assert_eq!(list["total"], 4, "{list}");
    let (code, _) = post(
        &client,
        server.url("/objects/ledger/ada"),
        json!({"claim": "x"}),
    )
    .await;
    assert_eq!(code, 405);
    let stranger = reqwest::get(server.url("/workflows/expense"))
        .await
        .unwrap();
    assert_eq!(stranger.status(), 401);

    // The example's own `workflows` command lists the instances from the data directory.
    assert!(server.stop().success());
    let out = Command::new(example_binary("approval"))
        .args(["workflows", "expense", "--data-dir"])
        .arg(&data_dir)
        .env("DENIZEN_CONFIG", "/nonexistent/denizen.toml")
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    for id in ["trip-1", "trip-2", "trip-3", "trip-4"] {
        assert!(
            table
                .lines()
                .any(|l| l.starts_with(&format!("{id} ")) && l.contains("complete")),
            "{id}: {table}"
        );
    }
}

fn text_of(result: &Value) -> String {
    result["content"]
        .as_array()
        .map(|c| c.iter().filter_map(|p| p["text"].as_str()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_tools_agent_connects_a_server_and_calls_its_tools() {
    let peer = mcp_peers::Peer::everything("streamableHttp", mcp_peers::free_port()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut server = serve("mcp-tools", dir.path(), &[]);

    let mut ada = AgentClient::connect(&server.ws_url("/agents/mcp-tools/ada")).await;
    assert_eq!(ada.state, json!({"calls": 0}));
    assert_eq!(ada.mcp["servers"], json!({}));
    // The reply may come before the server is ready: its state arrives in the server frames.
    ada.call("addServer", json!(["every", peer.url]))
        .await
        .unwrap();
    ada.until("the server ready with its tools", |c| {
        c.mcp["servers"]["every"]["state"] == "ready"
            && c.mcp["tools"].as_array().is_some_and(|t| {
                t.iter()
                    .any(|t| t["serverId"] == "every" && t["name"] == "echo")
            })
    })
    .await;

    let tools = ada.call("listTools", json!([])).await.unwrap();
    assert!(
        tools
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "every__echo"),
        "{tools}"
    );
    let echo = ada
        .call("callTool", json!(["every__echo", {"message": "hi"}]))
        .await
        .unwrap();
    assert!(text_of(&echo).contains("hi"), "{echo}");
    ada.until("the call counted in the state", |c| c.state["calls"] == 1)
        .await;

    // Another client of the same agent sees its servers and state on connect.
    let bob = AgentClient::connect(&server.ws_url("/agents/mcp-tools/ada")).await;
    assert!(bob.mcp["servers"]["every"].is_object(), "{}", bob.mcp);
    assert_eq!(bob.state["calls"], 1);
    drop(bob);
    // Another agent has none.
    let other = AgentClient::connect(&server.ws_url("/agents/mcp-tools/zed")).await;
    assert_eq!(other.mcp["servers"], json!({}));
    drop(other);

    // Hostile input gets clear errors and leaves the agent working.
    // A tool the server lacks is the server's error, as MCP reports it.
    let nope = ada
        .call("callTool", json!(["every__nope", {}]))
        .await
        .unwrap();
    assert_eq!(nope["isError"], true, "{nope}");
    let err = ada
        .call("callTool", json!(["nobody__echo", {}]))
        .await
        .unwrap_err();
    assert!(err.contains("nobody"), "{err}");
    let err = ada
        .call("addServer", json!(["bad id", peer.url]))
        .await
        .unwrap_err();
    assert!(!err.is_empty());
    let err = ada
        .call("addServer", json!(["x", "not a url"]))
        .await
        .unwrap_err();
    assert!(!err.is_empty());
    let err = ada
        .call("callTool", json!(["every__echo"]))
        .await
        .unwrap_err();
    assert!(err.contains("invalid arguments"), "{err}");
    let echo = ada
        .call("callTool", json!(["every__echo", {"message": "again"}]))
        .await
        .unwrap();
    assert!(text_of(&echo).contains("again"), "{echo}");

    // Removed: its tools are gone.
    ada.call("removeServer", json!(["every"])).await.unwrap();
    ada.until("the server gone", |c| c.mcp["servers"]["every"].is_null())
        .await;
    assert_eq!(ada.call("listTools", json!([])).await.unwrap(), json!([]));

    ada.ws.close(None).await.unwrap();
    close_code(&mut ada.ws).await;
    assert!(server.stop().success());
    peer.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn examples_answer_their_help() {
    for name in ["chat-room", "user-agent", "approval", "mcp-tools"] {
        let out = Command::new(example_binary(name))
            .arg("--help")
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{name}: {help}");
        assert!(help.contains("serve"), "{name}: {help}");
    }
}

/// A web server that holds its one answer until the test releases it: a slow site, under the
/// test's control. Says when the request has arrived.
async fn slow_site() -> (
    String,
    tokio::sync::oneshot::Receiver<()>,
    tokio::sync::oneshot::Sender<()>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/page", listener.local_addr().unwrap());
    let (arrived_tx, arrived) = tokio::sync::oneshot::channel();
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 4096];
        let mut read = 0;
        while !buf[..read].windows(4).any(|w| w == b"\r\n\r\n") {
            read += conn.read(&mut buf[read..]).await.unwrap();
        }
        let _ = arrived_tx.send(());
        let _ = released.await;
        conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello")
            .await
            .unwrap();
    });
    (url, arrived, release)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_agent_serves_its_clients_while_a_lookup_waits_on_the_network() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = serve("user-agent", dir.path(), &[]);
    let mut ada = AgentClient::connect(&server.ws_url("/agents/user-agent/ada")).await;
    assert_eq!(
        ada.state,
        json!({"notes": [], "lookups": 0, "lastLookup": null})
    );

    // The lookup starts and answers at once; the site has the request and holds its answer.
    let (url, arrived, release) = slow_site().await;
    assert_eq!(ada.call("lookup", json!([url])).await.unwrap(), "started");
    arrived.await.unwrap();
    // Meanwhile another client of the same user is served: its call, and its state change
    // reaching the first client, all before the site answers.
    let mut phone = AgentClient::connect(&server.ws_url("/agents/user-agent/ada")).await;
    let added = tokio::time::timeout(WAIT, phone.call("addNote", json!(["buy milk"])))
        .await
        .expect("the agent answers while its lookup waits");
    assert_eq!(added.unwrap(), 1);
    ada.until("the phone's note", |c| {
        c.state["notes"] == json!(["buy milk"])
    })
    .await;
    assert_eq!(ada.state["lookups"], 0, "the lookup is still waiting");
    // The site answers: the result comes back to the agent as an event, into the state.
    release.send(()).unwrap();
    ada.until("the lookup's result", |c| c.state["lookups"] == 1)
        .await;
    assert_eq!(
        ada.state["lastLookup"],
        json!({"url": url, "status": 200, "bytes": 5})
    );
    assert_eq!(ada.state["notes"], json!(["buy milk"]), "nothing lost");

    // `status` answers the caller when the site does; the agent serves the phone meanwhile.
    let (url, arrived, release) = slow_site().await;
    let frame = json!({"type": "rpc", "id": "s", "method": "status", "args": [url]});
    send_text(&mut ada.ws, &frame.to_string()).await;
    arrived.await.unwrap();
    assert_eq!(phone.call("addNote", json!(["call bob"])).await.unwrap(), 2);
    release.send(()).unwrap();
    loop {
        let reply = ada.frame().await;
        if reply["type"] == "rpc" && reply["id"] == "s" {
            assert_eq!(
                reply["result"],
                json!({"url": url, "status": 200, "bytes": 5})
            );
            break;
        }
    }

    // A site that is not there: the failure lands in the state, the agent goes on.
    ada.call("lookup", json!(["http://127.0.0.1:9/"]))
        .await
        .unwrap();
    ada.until("the failed lookup", |c| c.state["lookups"] == 2)
        .await;
    assert!(
        ada.state["lastLookup"]["error"].is_string(),
        "{}",
        ada.state
    );

    // Hostile input: clear errors, nothing changed.
    for (method, args) in [
        ("lookup", json!(["file:///etc/passwd"])),
        ("status", json!(["ftp://example.com/"])),
        ("addNote", json!([""])),
        ("addNote", json!(["x".repeat(5000)])),
        ("remindIn", json!([-1, "never"])),
        ("remindIn", json!([1e12, "much later"])),
        ("addNote", json!([42])),
    ] {
        let err = ada.call(method, args.clone()).await.unwrap_err();
        assert!(!err.is_empty(), "{method} {args}");
    }
    assert_eq!(ada.call("addNote", json!(["still here"])).await.unwrap(), 3);

    // The JS client of the example: a note, a reminder on the schedule, seen as state.
    let js = tempfile::tempdir().unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::copy(
        repo.join("examples/user-agent.mjs"),
        js.path().join("client.mjs"),
    )
    .unwrap();
    std::os::unix::fs::symlink(
        repo.join("tests/js/node_modules"),
        js.path().join("node_modules"),
    )
    .unwrap();
    let out = tokio::process::Command::new("node")
        .arg(js.path().join("client.mjs"))
        .args([server.addr.as_str(), "grace"])
        .output()
        .await
        .expect("node must be installed (Node 20 or newer) to run the JS client tests");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(
        lines[0], r#"state {"lastLookup":null,"lookups":0,"notes":[]}"#,
        "{printed}"
    );
    assert!(lines.contains(&"addNote -> 1"), "{printed}");
    assert!(lines.contains(&"remindIn -> scheduled"), "{printed}");
    assert!(
        lines.contains(
            &r#"state {"lastLookup":null,"lookups":0,"notes":["buy milk","reminder: stand up"]}"#
        ),
        "{printed}"
    );

    drop(phone);
    ada.ws.close(None).await.unwrap();
    close_code(&mut ada.ws).await;
    assert!(server.stop().success());
}
