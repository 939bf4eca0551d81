//! The gateway on 127.0.0.1:0 in front of a tiny echo object.

use std::time::Duration;

use denizen_gateway::{Config, Gateway, Rejection};
use denizen_runtime::http::StatusCode;
use denizen_runtime::{
    Ctx, DurableObject, Frame, Request, Response, Result, Runtime, Upgrade, WebSocket, http_util,
};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

#[derive(Default)]
struct Echo;

impl DurableObject for Echo {
    async fn fetch(&mut self, ctx: &mut Ctx<Self>, req: Request) -> Result<Response> {
        if req.extensions().get::<Upgrade>().is_some() {
            ctx.accept_websocket(&req, &["echo"])?;
            return Ok(http_util::switching_protocols());
        }
        let body = format!(
            "{} {} {} {}",
            req.method(),
            req.uri(),
            ctx.id().name().unwrap_or("-"),
            String::from_utf8_lossy(req.body())
        );
        Ok(http_util::text(StatusCode::OK, &body))
    }

    async fn websocket_message(
        &mut self,
        ctx: &mut Ctx<Self>,
        ws: WebSocket,
        frame: Frame,
    ) -> Result<()> {
        ctx.send(ws, frame);
        Ok(())
    }
}

struct Server {
    addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

async fn start(config: Config, auth: bool) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let runtime = Runtime::builder()
        .data_dir(dir.path())
        .object::<Echo>("echo")
        .build()
        .unwrap();
    let mut gateway = Gateway::new(runtime, config);
    if auth {
        gateway = gateway.with_auth(|parts| {
            match parts.headers.get("x-key").and_then(|v| v.to_str().ok()) {
                Some("open-sesame") => Ok(()),
                Some(_) => Err(Rejection::forbidden("wrong key")),
                None => Err(Rejection::unauthorized("send x-key")),
            }
        });
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let done = tokio::spawn(async move {
        gateway
            .serve(listener, async move {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    Server {
        addr,
        stop: Some(tx),
        done,
        _dir: dir,
    }
}

/// A bare HTTP/1.1 exchange: returns (status, body).
async fn http(addr: std::net::SocketAddr, head: &str, body: &str) -> (u16, String) {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{head}\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn routes_requests_with_their_own_path() {
    let server = start(Config::default(), false).await;
    let (status, body) = http(
        server.addr,
        "POST /objects/echo/ada%20l/a/b?x=1 HTTP/1.1",
        "hi",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body, "POST /a/b?x=1 ada l hi");
    let (status, body) = http(server.addr, "GET /objects/echo/bob HTTP/1.1", "").await;
    assert_eq!((status, body.as_str()), (200, "GET / bob "));
    let (status, body) = http(server.addr, "GET /objects/nope/bob HTTP/1.1", "").await;
    assert_eq!(status, 404);
    assert!(body.contains("nope"));
    let (status, _) = http(server.addr, "GET /objects/echo HTTP/1.1", "").await;
    assert_eq!(status, 404);
    let (status, body) = http(server.addr, "GET /healthz HTTP/1.1", "").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
}

#[tokio::test]
async fn auth_hook_sees_requests_and_upgrades_first() {
    let server = start(Config::default(), true).await;
    let (status, body) = http(server.addr, "GET /objects/echo/a HTTP/1.1", "").await;
    assert_eq!(status, 401);
    assert!(body.contains("send x-key"));
    let (status, _) = http(
        server.addr,
        "GET /objects/echo/a HTTP/1.1\r\nx-key: nope",
        "",
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = http(
        server.addr,
        "GET /objects/echo/a HTTP/1.1\r\nx-key: open-sesame",
        "",
    )
    .await;
    assert_eq!(status, 200);
    // A socket is refused before the upgrade.
    let err = tokio_tungstenite::connect_async(format!("ws://{}/objects/echo/a", server.addr))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("ws://{}/objects/echo/a", server.addr),
    )
    .unwrap();
    req.headers_mut()
        .insert("x-key", "open-sesame".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    ws.send(Message::Text("hello".into())).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::Text("hello".into())
    );
}

#[tokio::test]
async fn metrics_need_the_admin_token() {
    let config = Config {
        admin_token: Some("s3cret".into()),
        ..Config::default()
    };
    let server = start(config, false).await;
    let (status, _) = http(server.addr, "GET /metrics HTTP/1.1", "").await;
    assert_eq!(status, 401);
    let (status, _) = http(
        server.addr,
        "GET /metrics HTTP/1.1\r\nAuthorization: Bearer wrong",
        "",
    )
    .await;
    assert_eq!(status, 401);
    let (status, body) = http(
        server.addr,
        "GET /metrics HTTP/1.1\r\nAuthorization: Bearer s3cret",
        "",
    )
    .await;
    assert_eq!(status, 200);
    assert!(body.contains("denizen_live_objects"));
    assert!(body.contains("denizen_gateway_websocket_connections"));
}

#[tokio::test]
async fn shutdown_closes_sockets_with_1001() {
    let mut server = start(Config::default(), false).await;
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/objects/echo/s", server.addr))
            .await
            .unwrap();
    ws.send(Message::Binary(vec![1, 2].into())).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::Binary(vec![1, 2].into())
    );
    server.stop.take().unwrap().send(()).unwrap();
    let close = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(close, Some(1001));
    tokio::time::timeout(Duration::from_secs(10), server.done)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn silent_peers_are_dropped_by_the_heartbeat() {
    let config = Config {
        heartbeat_interval: Some(Duration::from_millis(100)),
        ..Config::default()
    };
    let server = start(config, false).await;
    // A raw socket that never reads, so it never answers pings.
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(
        b"GET /objects/echo/h HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let metric = |addr| async move {
        let (_, body) = http(addr, "GET /metrics HTTP/1.1", "").await;
        body.lines()
            .find_map(|l| l.strip_prefix("denizen_websockets "))
            .unwrap()
            .trim()
            .parse::<i64>()
            .unwrap()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while metric(server.addr).await != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "socket never registered"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    while metric(server.addr).await != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "dead peer never dropped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(tcp);
}
