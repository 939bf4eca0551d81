use crate::support::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Opens a WebSocket by hand so the test can send frames no client library would.
async fn raw_socket(server: &Server, path: &str) -> TcpStream {
    let mut tcp = TcpStream::connect(&server.addr).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        server.addr
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        tcp.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    assert!(String::from_utf8_lossy(&head).starts_with("HTTP/1.1 101"));
    tcp
}

/// Reads frames until a close frame and returns its code.
async fn raw_close_code(tcp: &mut TcpStream) -> u16 {
    loop {
        let mut h = [0u8; 2];
        tokio::time::timeout(std::time::Duration::from_secs(10), tcp.read_exact(&mut h))
            .await
            .expect("timed out waiting for close")
            .unwrap();
        let mut len = u64::from(h[1] & 0x7f);
        if len == 126 {
            let mut b = [0u8; 2];
            tcp.read_exact(&mut b).await.unwrap();
            len = u64::from(u16::from_be_bytes(b));
        } else if len == 127 {
            let mut b = [0u8; 8];
            tcp.read_exact(&mut b).await.unwrap();
            len = u64::from_be_bytes(b);
        }
        let mut payload = vec![0u8; len as usize];
        tcp.read_exact(&mut payload).await.unwrap();
        if h[0] & 0x0f == 0x8 {
            return u16::from_be_bytes([payload[0], payload[1]]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_close_only_the_offending_socket() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--max-message-size", "1024"]);

    let mut bystander = server.ws("/objects/chat/room?user=bystander").await;
    next_text(&mut bystander).await; // history

    // An unmasked client frame is a protocol error: 1002.
    let mut raw = raw_socket(&server, "/objects/chat/room?user=raw").await;
    raw.write_all(&[0x81, 0x02, b'h', b'i']).await.unwrap();
    assert_eq!(raw_close_code(&mut raw).await, 1002);

    // A reserved opcode, masked: also 1002.
    let mut raw = raw_socket(&server, "/objects/chat/room?user=raw2").await;
    raw.write_all(&[0x83, 0x80, 1, 2, 3, 4]).await.unwrap();
    assert_eq!(raw_close_code(&mut raw).await, 1002);

    // Too big: 1009.
    let mut big = server.ws("/objects/chat/room?user=big").await;
    next_text(&mut big).await;
    send_text(&mut big, &"x".repeat(4096)).await;
    assert_eq!(close_code(&mut big).await, Some(1009));

    // Binary frames are not chat messages: the room closes with 1003.
    let mut bin = server.ws("/objects/chat/room?user=bin").await;
    next_text(&mut bin).await;
    futures_util::SinkExt::send(
        &mut bin,
        tokio_tungstenite::tungstenite::Message::Binary(vec![1, 2, 3].into()),
    )
    .await
    .unwrap();
    assert_eq!(close_code(&mut bin).await, Some(1003));

    // The bystander and the server are fine.
    send_text(&mut bystander, "still here").await;
    let msg: Value = serde_json::from_str(&next_text(&mut bystander).await).unwrap();
    assert_eq!(msg["text"], "still here");
    let resp = reqwest::get(server.url("/objects/counter/ok"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn unknown_namespace_is_404_and_overload_is_503() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--mailbox-capacity", "1"]);
    let client = reqwest::Client::new();

    let resp = client
        .get(server.url("/objects/nope/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert!(resp.text().await.unwrap().contains("nope"));

    // 200 concurrent increments against a mailbox of one: some are refused, none is lost.
    let mut calls = Vec::new();
    for _ in 0..200 {
        let client = client.clone();
        let url = server.url("/objects/counter/hot/increment");
        calls.push(tokio::spawn(async move {
            let resp = client.post(url).send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.text().await.unwrap())
        }));
    }
    let mut ok = Vec::new();
    let mut refused = 0;
    for c in calls {
        let (status, body) = c.await.unwrap();
        match status {
            200 => ok.push(
                serde_json::from_str::<Value>(&body).unwrap()["count"]
                    .as_i64()
                    .unwrap(),
            ),
            503 => {
                assert!(body.contains("overloaded"), "{body}");
                refused += 1;
            }
            other => panic!("unexpected status {other}: {body}"),
        }
    }
    assert!(
        refused > 0,
        "a mailbox of one must refuse some of 200 concurrent calls"
    );
    ok.sort();
    assert_eq!(ok, (1..=ok.len() as i64).collect::<Vec<_>>());
    let v: Value = client
        .get(server.url("/objects/counter/hot"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["count"].as_i64().unwrap(), ok.len() as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_names_are_percent_decoded_as_object_names_are() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut ws = server.ws("/agents/counter-agent/caf%C3%A9").await;
    next_text(&mut ws).await;
    send_text(&mut ws, r#"{"type":"cf_agent_state","state":{"count":7}}"#).await;
    // The same agent through /objects, which decodes the name to `café`.
    let client = reqwest::Client::new();
    wait_until(
        "the state set through /agents to show through /objects",
        std::time::Duration::from_secs(10),
        || {
            let client = &client;
            let url = server.url("/objects/counter-agent/caf%C3%A9");
            async move {
                let v: Value = client.get(url).send().await.unwrap().json().await.unwrap();
                v["count"] == 7
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_frame_on_agents_closes_with_1009() {
    // Far over the limit (32 MiB by default): the server stops reading mid-frame. Unless it
    // keeps draining what the client still sends, the kernel answers the unread bytes with a
    // reset and the client never sees the close frame (1006 instead of 1009).
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut big = server.ws("/agents/counter-agent/big").await;
    next_text(&mut big).await; // the agent's first frame: the socket is open
    send_text(&mut big, &"x".repeat(33 << 20)).await;
    assert_eq!(close_code(&mut big).await, Some(1009));
    // The agent is fine: a new socket is served.
    let mut again = server.ws("/agents/counter-agent/big").await;
    next_text(&mut again).await;
}

#[test]
fn http_limits_are_validated() {
    let dir = tempfile::tempdir().unwrap();
    let serve = |config: &std::path::Path, args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_denizen"))
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(args)
            .env("DENIZEN_CONFIG", config)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    };
    let none = std::path::Path::new("/nonexistent/denizen.toml");
    let zero = serve(none, &["--max-connections", "0"]);
    assert!(!zero.status.success());
    let err = String::from_utf8_lossy(&zero.stderr);
    assert!(err.contains("max_connections"), "{err}");
    let file = dir.path().join("denizen.toml");
    std::fs::write(&file, "header_read_timeout = \"soon\"\n").unwrap();
    let bad = serve(&file, &[]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("header_read_timeout"), "{err}");
}
