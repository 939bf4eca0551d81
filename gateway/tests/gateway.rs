//! The gateway on 127.0.0.1:0 in front of a tiny echo object, driven by real clients.
#![allow(clippy::unwrap_used)] // a panic is how a test fails

use std::net::SocketAddr;
use std::time::Duration;

use denizen_gateway::{ADMIN_TOKEN_FILE, Gateway, Options, Rejection};
use denizen_runtime::http::StatusCode;
use denizen_runtime::{
    Ctx, DurableObject, Frame, Request, Response, Result, Runtime, Upgrade, WebSocket, http_util,
};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Echoes HTTP requests and socket messages. Sockets: `?tag=x` tags them, `?auto` sets the
/// ping → pong auto-response, `?refuse` answers 403 instead of accepting. Messages:
/// `all:<text>` broadcasts, `close` closes with 4000 "bye", `flood:<count>:<bytes>` sends that
/// many messages of that size, anything else is echoed.
#[derive(Default)]
struct Echo {
    last_close: Option<String>,
}

impl DurableObject for Echo {
    async fn fetch(&mut self, ctx: &mut Ctx<Self>, req: Request) -> Result<Response> {
        let query = req.uri().query().unwrap_or("").to_string();
        if req.extensions().get::<Upgrade>().is_some() {
            if query.contains("refuse") {
                return Ok(http_util::text(StatusCode::FORBIDDEN, "no sockets here\n"));
            }
            let tag = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("tag="))
                .unwrap_or("echo")
                .to_string();
            ctx.accept_websocket(&req, &[tag.as_str()])?;
            if query.contains("auto") {
                ctx.set_auto_response(Some(("ping", "pong")))?;
            }
            return Ok(http_util::switching_protocols());
        }
        let body = match req.uri().path() {
            "/hang" => std::future::pending().await,
            "/write" => {
                ctx.storage().exec("CREATE TABLE IF NOT EXISTS t (x)", [])?;
                "written".to_string()
            }
            "/sockets" => ctx.get_websockets(None).len().to_string(),
            "/last-close" => self.last_close.clone().unwrap_or_default(),
            _ => format!(
                "{} {} {} {}",
                req.method(),
                req.uri(),
                ctx.id().name().unwrap_or("-"),
                String::from_utf8_lossy(req.body())
            ),
        };
        Ok(http_util::text(StatusCode::OK, &body))
    }

    async fn websocket_message(
        &mut self,
        ctx: &mut Ctx<Self>,
        ws: WebSocket,
        frame: Frame,
    ) -> Result<()> {
        match frame.as_text() {
            Some("close") => ctx.close(ws, 4000, "bye"),
            Some("tags") => {
                let tags = ctx.tags(ws).join(",");
                ctx.send(ws, tags);
            }
            Some(t) if t.starts_with("flood:") => {
                // flood:<count>:<bytes>
                let mut parts = t["flood:".len()..].split(':');
                let count: usize = parts.next().and_then(|n| n.parse().ok()).unwrap_or(0);
                let size: usize = parts.next().and_then(|n| n.parse().ok()).unwrap_or(0);
                for _ in 0..count {
                    ctx.send(ws, "f".repeat(size));
                }
            }
            Some(t) if t.starts_with("all:") => {
                let text = t["all:".len()..].to_string();
                ctx.broadcast(None, text, None);
            }
            _ => ctx.send(ws, frame),
        }
        Ok(())
    }

    async fn websocket_close(
        &mut self,
        _ctx: &mut Ctx<Self>,
        _ws: WebSocket,
        code: u16,
        reason: String,
        was_clean: bool,
    ) -> Result<()> {
        self.last_close = Some(format!("{code} {reason} {was_clean}"));
        Ok(())
    }
}

struct Server {
    addr: SocketAddr,
    runtime: Runtime,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<()>,
    /// The admin token in force (configured, or generated into the data directory).
    token: String,
    /// Notified when a request reaches `/never`, a handler that never returns.
    entered: std::sync::Arc<tokio::sync::Notify>,
    dir: tempfile::TempDir,
}

#[derive(Default)]
struct Setup {
    config: Options,
    auth: bool,
    idle_timeout: Option<Duration>,
    event_timeout: Option<Duration>,
    query_limits: Option<denizen_runtime::storage::QueryLimits>,
}

async fn start(options: Setup) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let mut builder = Runtime::builder()
        .data_dir(dir.path())
        .object::<Echo>("echo");
    if let Some(limits) = options.query_limits {
        builder = builder
            .options(denizen_runtime::Options {
                operator_query_limits: limits,
                ..denizen_runtime::Options::default()
            })
            .data_dir(dir.path());
    }
    if let Some(t) = options.idle_timeout {
        builder = builder.idle_timeout(t);
    }
    if let Some(t) = options.event_timeout {
        builder = builder.event_timeout(Some(t));
    }

    let runtime = builder.build().unwrap();
    let mut gateway = Gateway::new(runtime.clone(), options.config);
    let token = gateway.admin_token().expect("an admin token").to_string();
    if options.auth {
        gateway = gateway.with_auth(|parts| {
            match parts.headers.get("x-key").and_then(|v| v.to_str().ok()) {
                Some("open-sesame") => Ok(()),
                Some(_) => Err(Rejection::forbidden("wrong key")),
                None => Err(Rejection::unauthorized("send x-key")),
            }
        });
    }
    // An application route next to the gateway's, under /admin: guarded by the admin token.
    // And a route of its own that forwards to an object, URI unchanged.
    let forwarder = gateway.clone();
    let entered = std::sync::Arc::new(tokio::sync::Notify::new());
    let notify = entered.clone();
    let app = gateway
        .router()
        .route(
            "/never",
            axum::routing::get(move || async move {
                notify.notify_one();
                std::future::pending::<()>().await
            }),
        )
        .route("/admin/ping", axum::routing::get(|| async { "pong\n" }))
        .route(
            "/rooms/{name}",
            axum::routing::any(
                move |axum::extract::Path(name): axum::extract::Path<String>,
                      req: axum::extract::Request| async move {
                    forwarder.forward("echo", &name, req).await
                },
            ),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let done = tokio::spawn(async move {
        gateway
            .serve_router(listener, app, async move {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    Server {
        addr,
        runtime,
        stop: Some(tx),
        done,
        token,
        entered,
        dir,
    }
}

/// A bare HTTP/1.1 exchange: returns (status, body).
async fn http(addr: SocketAddr, head: &str, body: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
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

async fn connect(addr: SocketAddr, path: &str) -> Client {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}{path}"))
        .await
        .unwrap();
    ws
}

/// The next data or close message (pongs and pings skipped), within 10 s.
async fn next(ws: &mut Client) -> Message {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(m)) => return m,
                other => panic!("socket ended: {other:?}"),
            }
        }
    })
    .await
    .expect("no message within 10 s")
}

/// The close code the server sent, reading until it arrives; then reads on, which makes
/// tungstenite send the close reply and completes the handshake.
async fn close_code(ws: &mut Client) -> (u16, String) {
    let close = match next(ws).await {
        Message::Close(Some(f)) => (u16::from(f.code), f.reason.to_string()),
        other => panic!("expected a close frame, got {other:?}"),
    };
    let end = tokio::time::timeout(Duration::from_secs(10), ws.next()).await;
    assert!(
        matches!(end, Ok(None)),
        "the connection should end after the handshake: {end:?}"
    );
    close
}

/// Polls `cond` until it holds, failing after 10 s.
async fn until<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn get_text(addr: SocketAddr, path: &str) -> String {
    let (status, body) = http(addr, &format!("GET {path} HTTP/1.1"), "").await;
    assert_eq!(status, 200, "{path}: {body}");
    body
}

#[tokio::test]
async fn routes_requests_with_their_own_path() {
    let server = start(Setup::default()).await;
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
    let (status, body) = http(server.addr, "PUT /objects/echo/bob?q HTTP/1.1", "x").await;
    assert_eq!((status, body.as_str()), (200, "PUT /?q bob x"));
    let (status, body) = http(server.addr, "GET /objects/nope/bob HTTP/1.1", "").await;
    assert_eq!(status, 404);
    assert!(body.contains("nope") && body.ends_with('\n'), "{body}");
    let (status, _) = http(server.addr, "GET /objects/echo HTTP/1.1", "").await;
    assert_eq!(status, 404);
    let (status, body) = http(server.addr, "GET /healthz HTTP/1.1", "").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, body) = http(server.addr, "GET /rooms/kitchen?x=2 HTTP/1.1", "").await;
    assert_eq!(
        (status, body.as_str()),
        (200, "GET /rooms/kitchen?x=2 kitchen ")
    );
    // Admin routes are closed even when no admin token was configured: one was generated.
    let (status, _) = http(server.addr, "GET /admin/ping HTTP/1.1", "").await;
    assert_eq!(status, 401);
    let kept = std::fs::read_to_string(server.dir.path().join(ADMIN_TOKEN_FILE)).unwrap();
    assert_eq!(kept.trim(), server.token);
    let (status, body) = http(
        server.addr,
        &format!(
            "GET /admin/ping HTTP/1.1\r\nAuthorization: Bearer {}",
            server.token
        ),
        "",
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "pong\n"));
    // /metrics stays open unless a token was configured.
    let (status, _) = http(server.addr, "GET /metrics HTTP/1.1", "").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn the_generated_admin_token_is_private_and_kept() {
    let server = start(Setup::default()).await;
    let path = server.dir.path().join(ADMIN_TOKEN_FILE);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // A second gateway on the same directory uses the same token.
    let again = Gateway::new(server.runtime.clone(), Options::default());
    assert_eq!(again.admin_token(), Some(server.token.as_str()));
    // One that others may read is refused: serving does not start.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let exposed = Gateway::new(server.runtime.clone(), Options::default());
        assert_eq!(exposed.admin_token(), None);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let err = exposed
            .serve(listener, std::future::pending())
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("readable by other users"), "{err}");
    }
}

#[tokio::test]
async fn admin_routes_refuse_cross_site_requests() {
    let server = start(Setup::default()).await;
    let auth = format!("Authorization: Bearer {}", server.token);
    let sql = "POST /admin/sql/echo/a HTTP/1.1";
    let query = r#"{"query": "SELECT 1 AS one"}"#;
    // A text/plain body (what a form or a no-cors fetch may send) is refused.
    let (status, body) = http(
        server.addr,
        &format!("{sql}\r\n{auth}\r\nContent-Type: text/plain"),
        "SELECT 1",
    )
    .await;
    assert_eq!(status, 415, "{body}");
    assert!(body.contains("application/json"), "{body}");
    // So is one without a content type.
    let (status, _) = http(server.addr, &format!("{sql}\r\n{auth}"), query).await;
    assert_eq!(status, 415);
    // Another site's page.
    let (status, body) = http(
        server.addr,
        &format!(
            "{sql}\r\n{auth}\r\nContent-Type: application/json\r\nOrigin: http://evil.example"
        ),
        query,
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("cross-site"), "{body}");
    // This server's own origin, JSON: past the guard, to the route (the object was never
    // written, so it does not exist).
    let (status, body) = http(
        server.addr,
        &format!("{sql}\r\n{auth}\r\nContent-Type: application/json\r\nOrigin: http://x"),
        query,
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("no object named `a`"), "{body}");
    // JSON, but not the shape the route takes.
    let (status, body) = http(
        server.addr,
        &format!("{sql}\r\n{auth}\r\nContent-Type: application/json"),
        r#""SELECT 1""#,
    )
    .await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test]
async fn oversized_bodies_are_refused() {
    let server = start(Setup {
        config: Options {
            max_body_size: 16,
            ..Options::default()
        },
        ..Setup::default()
    })
    .await;
    let (status, body) = http(
        server.addr,
        "POST /objects/echo/a HTTP/1.1",
        &"x".repeat(17),
    )
    .await;
    assert_eq!(status, 413, "{body}");
    let (status, _) = http(
        server.addr,
        "POST /objects/echo/a HTTP/1.1",
        &"x".repeat(16),
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn auth_hook_sees_requests_and_upgrades_first() {
    let server = start(Setup {
        auth: true,
        ..Setup::default()
    })
    .await;
    let (status, body) = http(server.addr, "GET /objects/echo/a HTTP/1.1", "").await;
    assert_eq!(status, 401);
    assert_eq!(body, "send x-key\n");
    // Refused before the namespace is even looked up.
    let (status, _) = http(server.addr, "GET /objects/nope/a HTTP/1.1", "").await;
    assert_eq!(status, 401);
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
    // A socket is refused before the upgrade: the handshake gets a plain 401.
    let err = tokio_tungstenite::connect_async(format!("ws://{}/objects/echo/a", server.addr))
        .await
        .unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => assert_eq!(resp.status(), 401),
        other => panic!("expected an HTTP 401, got {other}"),
    }
    assert_eq!(server.runtime.live_objects(), 1, "only the allowed GET ran");
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("ws://{}/objects/echo/a", server.addr),
    )
    .unwrap();
    req.headers_mut()
        .insert("x-key", "open-sesame".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    ws.send(Message::Text("hello".into())).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::Text("hello".into()));
}

#[tokio::test]
async fn metrics_and_admin_routes_need_the_admin_token() {
    let server = start(Setup {
        config: Options {
            admin_token: Some("s3cret-s3cret-s3cret".into()),
            ..Options::default()
        },
        ..Setup::default()
    })
    .await;
    let (status, _) = http(server.addr, "GET /metrics HTTP/1.1", "").await;
    assert_eq!(status, 401);
    let (status, _) = http(
        server.addr,
        "GET /metrics HTTP/1.1\r\nAuthorization: Bearer wrong",
        "",
    )
    .await;
    assert_eq!(status, 401);
    let (status, _) = http(server.addr, "GET /admin/ping HTTP/1.1", "").await;
    assert_eq!(status, 401);
    let (status, _) = http(
        server.addr,
        "GET /admin/ping HTTP/1.1\r\nAuthorization: Bearer s3cret",
        "",
    )
    .await;
    assert_eq!(status, 401, "a prefix of the token is not the token");
    let (status, body) = http(
        server.addr,
        "GET /admin/ping HTTP/1.1\r\nAuthorization: Bearer s3cret-s3cret-s3cret",
        "",
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "pong\n"));
    // Object routes are not admin routes.
    let (status, _) = http(server.addr, "GET /objects/echo/m HTTP/1.1", "").await;
    assert_eq!(status, 200);
    let (status, body) = http(
        server.addr,
        "GET /metrics HTTP/1.1\r\nAuthorization: Bearer s3cret-s3cret-s3cret",
        "",
    )
    .await;
    assert_eq!(status, 200);
    assert!(body.contains("denizen_live_objects"), "{body}");
    assert!(
        body.contains("denizen_gateway_websocket_connections 0"),
        "{body}"
    );
    assert!(
        body.contains("denizen_gateway_http_requests_total{class=\"2xx\"} 1"),
        "{body}"
    );
}

#[tokio::test]
async fn websockets_echo_broadcast_and_close_both_ways() {
    let server = start(Setup::default()).await;
    let mut a = connect(server.addr, "/objects/echo/room?tag=red").await;
    let mut b = connect(server.addr, "/objects/echo/room?tag=blue").await;
    a.send(Message::Text("hi".into())).await.unwrap();
    assert_eq!(next(&mut a).await, Message::Text("hi".into()));
    b.send(Message::Binary(vec![0, 1, 2].into())).await.unwrap();
    assert_eq!(next(&mut b).await, Message::Binary(vec![0, 1, 2].into()));
    a.send(Message::Text("tags".into())).await.unwrap();
    assert_eq!(next(&mut a).await, Message::Text("red".into()));
    a.send(Message::Text("all:news".into())).await.unwrap();
    assert_eq!(next(&mut a).await, Message::Text("news".into()));
    assert_eq!(next(&mut b).await, Message::Text("news".into()));
    assert_eq!(
        get_text(server.addr, "/objects/echo/room/sockets").await,
        "2"
    );

    // The object closes a socket: the client sees its code, the registry drops it.
    a.send(Message::Text("close".into())).await.unwrap();
    assert_eq!(close_code(&mut a).await, (4000, "bye".into()));
    until("closed socket leaves the registry", || async {
        get_text(server.addr, "/objects/echo/room/sockets").await == "1"
    })
    .await;

    // The client closes: the object hears its code, cleanly.
    b.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "done".into(),
    }))
    .await
    .unwrap();
    // The server echoes the close frame (the handshake completes).
    assert_eq!(close_code(&mut b).await, (1000, "done".into()));
    until("the object hears the close", || async {
        get_text(server.addr, "/objects/echo/room/last-close").await == "1000 done true"
    })
    .await;
    assert_eq!(
        get_text(server.addr, "/objects/echo/room/sockets").await,
        "0"
    );
}

#[tokio::test]
async fn large_messages_arrive_whole() {
    let server = start(Setup::default()).await;
    let mut ws = connect(server.addr, "/objects/echo/big").await;
    let payload: Vec<u8> = (0..4 << 20).map(|i: u32| i as u8).collect();
    ws.send(Message::Binary(payload.clone().into()))
        .await
        .unwrap();
    assert_eq!(next(&mut ws).await, Message::Binary(payload.into()));
    // Through a route of the application's own, too.
    let mut ws = connect(server.addr, "/rooms/big").await;
    ws.send(Message::Text("via forward".into())).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::Text("via forward".into()));
}

#[tokio::test]
async fn an_object_may_refuse_a_socket() {
    let server = start(Setup::default()).await;
    let err =
        tokio_tungstenite::connect_async(format!("ws://{}/objects/echo/r?refuse", server.addr))
            .await
            .unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => assert_eq!(resp.status(), 403),
        other => panic!("expected an HTTP 403, got {other}"),
    }
    let err = tokio_tungstenite::connect_async(format!("ws://{}/objects/nope/r", server.addr))
        .await
        .unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => assert_eq!(resp.status(), 404),
        other => panic!("expected an HTTP 404, got {other}"),
    }
}

#[tokio::test]
async fn a_message_too_big_closes_only_its_socket() {
    let server = start(Setup {
        config: Options {
            max_message_size: 1024,
            ..Options::default()
        },
        ..Setup::default()
    })
    .await;
    let mut big = connect(server.addr, "/objects/echo/limits").await;
    let mut small = connect(server.addr, "/objects/echo/limits").await;
    big.send(Message::Text("x".repeat(1024).into()))
        .await
        .unwrap();
    assert_eq!(next(&mut big).await, Message::Text("x".repeat(1024).into()));
    big.send(Message::Binary(vec![7u8; 4096].into()))
        .await
        .unwrap();
    // The rest of the oversized frame is never read (that is the point of the limit), so the
    // stream cannot be parsed further: the server sends 1009 and drops the connection.
    match next(&mut big).await {
        Message::Close(Some(f)) => assert_eq!(u16::from(f.code), 1009),
        other => panic!("expected a close frame, got {other:?}"),
    }
    small
        .send(Message::Text("still here".into()))
        .await
        .unwrap();
    assert_eq!(next(&mut small).await, Message::Text("still here".into()));
    until("the closed socket leaves the registry", || async {
        get_text(server.addr, "/objects/echo/limits/sockets").await == "1"
    })
    .await;
    assert!(
        get_text(server.addr, "/objects/echo/limits/last-close")
            .await
            .starts_with("1009 ")
    );
}

#[tokio::test]
async fn a_client_that_falls_behind_is_closed_and_the_others_are_not() {
    let server = start(Setup {
        config: Options {
            max_send_backlog: 1 << 20,
            ..Options::default()
        },
        ..Setup::default()
    })
    .await;
    let mut reader = connect(server.addr, "/objects/echo/flood").await;
    let mut slow = connect(server.addr, "/objects/echo/flood").await;

    // Under the limit: every message arrives.
    reader
        .send(Message::Text("flood:50:16384".into()))
        .await
        .unwrap();
    for _ in 0..50 {
        assert_eq!(
            next(&mut reader).await,
            Message::Text("f".repeat(16384).into())
        );
    }

    // 32 MiB to a client that does not read: dropped past 1 MiB, the socket closed with 1008.
    slow.send(Message::Text("flood:2000:16384".into()))
        .await
        .unwrap();
    until("the object hears 1008", || async {
        get_text(server.addr, "/objects/echo/flood/last-close")
            .await
            .starts_with("1008 ")
    })
    .await;
    let metrics = get_text(server.addr, "/metrics").await;
    assert!(
        metrics.contains("denizen_gateway_backlog_overflows_total 1"),
        "{metrics}"
    );
    // What the slow client finally reads is cut short and ends with the close frame.
    let mut frames = 0;
    let code = loop {
        match tokio::time::timeout(Duration::from_secs(10), slow.next()).await {
            Ok(Some(Ok(Message::Text(_)))) => frames += 1,
            Ok(Some(Ok(Message::Close(f)))) => break f.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(_)) | None) => break None,
            Err(_) => panic!("the slow socket neither closed nor ended"),
        }
    };
    assert!(frames < 2000, "{frames} frames arrived");
    assert!(matches!(code, Some(1008) | None), "{code:?}");

    // The other client is served as before.
    reader
        .send(Message::Text("still here".into()))
        .await
        .unwrap();
    assert_eq!(next(&mut reader).await, Message::Text("still here".into()));
}

/// Opens a socket by hand, for frames no well-behaved client would send.
async fn raw_socket(addr: SocketAddr, path: &str) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(
        format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    // Read exactly the response head, byte by byte, so no frame bytes are swallowed.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        tcp.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{head:?}");
    tcp
}

#[tokio::test]
async fn protocol_errors_close_with_1002() {
    let server = start(Setup::default()).await;
    let mut tcp = raw_socket(server.addr, "/objects/echo/proto").await;
    // An unmasked text frame: clients must mask theirs.
    tcp.write_all(&[0x81, 0x02, b'h', b'i']).await.unwrap();
    let mut frame = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(10), tcp.read_exact(&mut frame))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(frame[0], 0x88, "a close frame");
    assert_eq!(u16::from_be_bytes([frame[2], frame[3]]), 1002);
}

#[tokio::test]
async fn auto_responses_and_pings_do_not_wake_a_hibernated_object() {
    let server = start(Setup {
        idle_timeout: Some(Duration::from_millis(100)),
        ..Setup::default()
    })
    .await;
    let mut ws = connect(server.addr, "/objects/echo/sleepy?auto").await;
    let runtime = server.runtime.clone();
    until("the object hibernates", || {
        let runtime = runtime.clone();
        async move { runtime.live_objects() == 0 }
    })
    .await;
    ws.send(Message::Text("ping".into())).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::Text("pong".into()));
    ws.send(Message::Ping(vec![9].into())).await.unwrap();
    let pong = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap();
    assert!(
        matches!(pong, Some(Ok(Message::Pong(ref p))) if p.as_ref() == [9]),
        "{pong:?}"
    );
    assert_eq!(server.runtime.live_objects(), 0, "still asleep");
    // Any other message wakes it.
    ws.send(Message::Text("wake".into())).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::Text("wake".into()));
}

#[tokio::test]
async fn shutdown_closes_sockets_with_1001() {
    let mut server = start(Setup::default()).await;
    let mut ws = connect(server.addr, "/objects/echo/s").await;
    ws.send(Message::Binary(vec![1, 2].into())).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::Binary(vec![1, 2].into()));
    server.stop.take().unwrap().send(()).unwrap();
    assert_eq!(close_code(&mut ws).await.0, 1001);
    tokio::time::timeout(Duration::from_secs(10), server.done)
        .await
        .unwrap()
        .unwrap();
    // Stopped: no more connections.
    assert!(TcpStream::connect(server.addr).await.is_err());
}

#[tokio::test]
async fn silent_peers_are_dropped_by_the_heartbeat() {
    let server = start(Setup {
        config: Options {
            heartbeat_interval: Some(Duration::from_millis(100)),
            ..Options::default()
        },
        ..Setup::default()
    })
    .await;
    // A raw socket that never reads, so it never answers pings.
    let tcp = raw_socket(server.addr, "/objects/echo/h").await;
    assert_eq!(get_text(server.addr, "/objects/echo/h/sockets").await, "1");
    until("the dead peer is dropped", || async {
        get_text(server.addr, "/objects/echo/h/sockets").await == "0"
    })
    .await;
    assert_eq!(
        get_text(server.addr, "/objects/echo/h/last-close").await,
        "1006 heartbeat timeout: the peer stopped answering pings false"
    );
    // A live client answers pings and stays.
    let mut ws = connect(server.addr, "/objects/echo/h2").await;
    for i in 0..3 {
        // Each round trip spans pings; tungstenite answers them while reading.
        let frames = tokio::time::timeout(Duration::from_secs(10), async {
            let mut pings = 0;
            while pings < 3 {
                if let Some(Ok(Message::Ping(_))) = ws.next().await {
                    pings += 1;
                }
            }
        });
        frames.await.unwrap();
        ws.send(Message::Text(format!("m{i}").into()))
            .await
            .unwrap();
        assert_eq!(next(&mut ws).await, Message::Text(format!("m{i}").into()));
    }
    drop(tcp);
}

#[tokio::test]
async fn a_handler_past_its_deadline_answers_504() {
    let server = start(Setup {
        event_timeout: Some(Duration::from_millis(200)),
        ..Setup::default()
    })
    .await;
    let (status, body) = http(server.addr, "GET /objects/echo/slow/hang HTTP/1.1", "").await;
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("deadline"), "{body}");
}

#[tokio::test]
async fn operator_queries_past_their_limits_are_the_operators_to_fix() {
    let server = start(Setup {
        query_limits: Some(denizen_runtime::storage::QueryLimits {
            time_budget: Duration::from_millis(100),
            max_rows: 3,
            max_bytes: 64,
        }),
        ..Setup::default()
    })
    .await;
    let (status, _) = http(server.addr, "POST /objects/echo/db/write HTTP/1.1", "").await;
    assert_eq!(status, 200);
    let sql = |query: &str| {
        let head = format!(
            "POST /admin/sql/echo/db HTTP/1.1\r\nAuthorization: Bearer {}\r\nContent-Type: application/json",
            server.token
        );
        let body = serde_json::json!({ "query": query }).to_string();
        async move { http(server.addr, &head, &body).await }
    };
    let count = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 10) SELECT x FROM c";
    let (status, body) = sql(count).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("more than 3 rows"), "{body}");
    let (status, body) = sql("SELECT zeroblob(1000)").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("larger than 64 bytes"), "{body}");
    let forever =
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c";
    let (status, body) = sql(forever).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("time budget"), "{body}");
}

/// Reads until the server closes the connection; what it sent before.
async fn until_eof(tcp: &mut TcpStream) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut out))
        .await
        .expect("the server did not close the connection")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn slow_headers_and_idle_connections_are_closed() {
    let server = start(Setup {
        config: Options {
            header_read_timeout: Duration::from_millis(200),
            ..Options::default()
        },
        ..Setup::default()
    })
    .await;
    // Half a request head, then nothing.
    let mut half = TcpStream::connect(server.addr).await.unwrap();
    half.write_all(b"GET /healthz HTTP/1.1\r\nHo")
        .await
        .unwrap();
    assert_eq!(until_eof(&mut half).await, "");
    // A keep-alive connection that asks nothing after its first answer.
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answered = until_eof(&mut idle).await;
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
}

/// Sends one keep-alive request on `tcp` and reads its answer's status line.
async fn ask(tcp: &mut TcpStream) -> String {
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tcp.read(&mut buf).await.unwrap();
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

#[tokio::test]
async fn connections_past_the_cap_wait_for_one_to_close() {
    let server = start(Setup {
        config: Options {
            max_connections: 2,
            ..Options::default()
        },
        ..Setup::default()
    })
    .await;
    let mut first = TcpStream::connect(server.addr).await.unwrap();
    let mut second = TcpStream::connect(server.addr).await.unwrap();
    assert_eq!(ask(&mut first).await, "HTTP/1.1 200 OK");
    assert_eq!(ask(&mut second).await, "HTTP/1.1 200 OK");
    // The third is queued by the kernel, not served, while both are open.
    let mut third = TcpStream::connect(server.addr).await.unwrap();
    third
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    assert!(
        tokio::time::timeout(Duration::from_millis(300), third.read(&mut buf))
            .await
            .is_err(),
        "a connection past the cap was served"
    );
    drop(first);
    let n = tokio::time::timeout(Duration::from_secs(10), third.read(&mut buf))
        .await
        .expect("the waiting connection was not served after one closed")
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
}

#[tokio::test]
async fn shutdown_does_not_wait_for_a_partial_request_or_a_hung_handler() {
    let mut server = start(Setup {
        config: Options {
            header_read_timeout: Duration::from_secs(3600),
            shutdown_timeout: Duration::from_millis(100),
            ..Options::default()
        },
        ..Setup::default()
    })
    .await;
    let mut partial = TcpStream::connect(server.addr).await.unwrap();
    partial
        .write_all(b"POST /objects/echo/p HTTP/1.1\r\nHost: x\r\nContent-Le")
        .await
        .unwrap();
    let mut hung = TcpStream::connect(server.addr).await.unwrap();
    hung.write_all(b"GET /never HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    server.entered.notified().await;
    server.stop.take().unwrap().send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server.done)
        .await
        .expect("shutdown waited for the slow clients")
        .unwrap();
    // Both were closed.
    until_eof(&mut partial).await;
    until_eof(&mut hung).await;
}
