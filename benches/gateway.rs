//! Gateway benchmarks over real sockets on 127.0.0.1. The server runs in a child process (this
//! binary, re-run in server mode), so its memory is measured apart from the clients'.
//!
//! `cargo bench --bench gateway` (all) or `cargo bench --bench gateway -- echo` (names matching).
// A benchmark prints its figures; a panic is how it fails.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

mod support;

#[path = "../examples/apps/chat.rs"]
mod chat;
#[path = "../examples/apps/counter.rs"]
mod counter;

use support::{SERVER_ENV, Server, median, percentile, wanted};

use std::time::{Duration, Instant};

use denizen::app::{App, Config};
use denizen::{
    Ctx, DurableObject, Frame, IdlePoll, Request, Response, Result, Upgrade, WebSocket, http_util,
};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader as TokioBufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// Echoes every frame back to its sender.
#[derive(Default)]
struct Echo;

impl DurableObject for Echo {
    async fn fetch(&mut self, ctx: &mut Ctx<Self>, req: Request) -> Result<Response> {
        if req.extensions().get::<Upgrade>().is_some() {
            ctx.accept_websocket(&req, &[])?;
            return Ok(http_util::switching_protocols());
        }
        Ok(http_util::text(denizen::http::StatusCode::OK, "echo\n"))
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

/// Server mode: the example counter and chat room plus `echo`, on the `App` an application
/// serves with, idle timeout from the environment, idle polling for `idle_poll` (`serve` polls
/// for `IdlePoll::DEFAULT_WINDOW`).
fn serve(idle_poll: Duration) {
    let idle_ms: u64 = std::env::var("DENIZEN_BENCH_IDLE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: support::server_data_dir(),
        idle_timeout: Duration::from_millis(idle_ms),
        idle_poll,
        ..Config::default()
    };
    App::new("bench")
        .object::<counter::Counter>("counter")
        .object::<chat::ChatRoom>("chat")
        .object::<Echo>("echo")
        .serve(config)
        .expect("serve");
}

/// Server mode `tcp-echo`: echoes bytes on plain TCP, with nothing of Denizen or WebSocket in
/// the way. Its round trip is the floor under the WebSocket echo on this machine: two processes
/// on loopback, each waking up once per message.
const TCP_ECHO: &str = "tcp-echo";

/// Server mode: as `denizen serve --idle-poll 0s`.
const NO_IDLE_POLL: &str = "no-idle-poll";

fn serve_tcp_echo() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio");
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        println!("{}", listener.local_addr().expect("addr"));
        loop {
            let (mut tcp, _) = listener.accept().await.expect("accept");
            tcp.set_nodelay(true).expect("nodelay");
            tokio::spawn(async move {
                let mut buf = [0u8; 256];
                while let Ok(n @ 1..) = tcp.read(&mut buf).await {
                    if tcp.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
}

/// Round trips of `count` small messages, one at a time, after 1,000 to warm up.
async fn ping_pong(count: usize, mut round_trip: impl AsyncFnMut(usize)) -> Vec<Duration> {
    let mut samples = Vec::with_capacity(count);
    for i in 0..count + 1_000 {
        let start = Instant::now();
        round_trip(i).await;
        if i >= 1_000 {
            samples.push(start.elapsed());
        }
    }
    samples.sort();
    samples
}

/// A minimal keep-alive HTTP/1.1 client: the client must cost little next to the server.
struct Http {
    reader: TokioBufReader<TcpStream>,
    host: String,
}

impl Http {
    async fn connect(addr: &str) -> Http {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.set_nodelay(true).expect("nodelay");
        Http {
            reader: TokioBufReader::new(tcp),
            host: addr.to_string(),
        }
    }

    async fn request(&mut self, method: &str, path: &str) -> (u16, String) {
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\n\r\n",
            self.host
        );
        self.reader
            .get_mut()
            .write_all(req.as_bytes())
            .await
            .expect("write");
        let mut status_line = String::new();
        self.reader
            .read_line(&mut status_line)
            .await
            .expect("status");
        let status = status_line
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).await.expect("header");
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; length];
        self.reader.read_exact(&mut body).await.expect("body");
        (status, String::from_utf8_lossy(&body).into_owned())
    }
}

/// Requests/s from `connections` keep-alive connections, each request a path from `path(i)`.
async fn http_rate(
    server: &Server,
    connections: usize,
    total: usize,
    path: impl Fn(usize) -> String + Clone + Send + 'static,
) -> f64 {
    let per = total / connections;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..connections {
        let addr = server.addr.clone();
        let path = path.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = Http::connect(&addr).await;
            for i in 0..per {
                let (status, _) = conn.request("POST", &path(c * per + i)).await;
                assert_eq!(status, 200);
            }
        }));
    }
    for t in tasks {
        t.await.expect("join");
    }
    (per * connections) as f64 / start.elapsed().as_secs_f64()
}

async fn ws(
    addr: &str,
    path: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>> {
    tokio_tungstenite::connect_async(format!("ws://{addr}{path}"))
        .await
        .expect("websocket")
        .0
}

async fn next_text(
    ws: &mut tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
) -> String {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return t.to_string(),
            Some(Ok(_)) => continue,
            other => panic!("socket ended: {other:?}"),
        }
    }
}

fn main() {
    match std::env::var(SERVER_ENV).as_deref() {
        Ok(TCP_ECHO) => return serve_tcp_echo(),
        Ok(NO_IDLE_POLL) => return serve(Duration::ZERO),
        Ok(_) => return serve(IdlePoll::DEFAULT_WINDOW),
        Err(_) => {}
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio");
    rt.block_on(async {
        if wanted("http") {
            let mut v = Vec::new();
            for round in 0..5 {
                let server = Server::start(60_000);
                let name = format!("/objects/counter/hot-{round}/increment");
                v.push(http_rate(&server, 16, 40_000, move |_| name.clone()).await);
            }
            println!("HTTP requests/s into one object (one SQLite write each, 16 connections): {:.0} (median of 5)", median(v));
        }
        if wanted("first-touch") {
            let mut v = Vec::new();
            for _ in 0..3 {
                let server = Server::start(60_000);
                v.push(http_rate(&server, 16, 10_000, |i| format!("/objects/counter/obj-{i}/increment")).await);
            }
            println!("first touch of 10,000 distinct objects over HTTP: {:.0}/s (median of 3)", median(v));
        }
        if wanted("echo") {
            let echo = async |mode| {
                let server = Server::start_mode(60_000, mode);
                let mut socket = ws(&server.addr, "/objects/echo/e").await;
                ping_pong(20_000, async |i| {
                    socket.send(Message::Text(format!("m{i}").into())).await.expect("send");
                    next_text(&mut socket).await;
                })
                .await
            };
            let samples = echo("1").await;
            let unpolled = echo(NO_IDLE_POLL).await;
            let floor = Server::start_mode(0, TCP_ECHO);
            let mut tcp = TcpStream::connect(&floor.addr).await.expect("connect");
            tcp.set_nodelay(true).expect("nodelay");
            let floor_samples = ping_pong(20_000, async |i| {
                let message = format!("m{i:07}");
                tcp.write_all(message.as_bytes()).await.expect("write");
                let mut back = [0u8; 8];
                tcp.read_exact(&mut back).await.expect("read");
            })
            .await;
            let ms = |s: &[Duration], p| percentile(s, p).as_secs_f64() * 1e3;
            println!(
                "WebSocket echo round trip: p50 {:.3} ms, p99 {:.3} ms (20,000 sequential messages; idle CPUs poll for {} µs as in `denizen serve`; with --idle-poll 0s: p50 {:.3} ms, p99 {:.3} ms; plain TCP to a tokio echo process, no polling: p50 {:.3} ms, p99 {:.3} ms)",
                ms(&samples, 0.5),
                ms(&samples, 0.99),
                IdlePoll::DEFAULT_WINDOW.as_micros(),
                ms(&unpolled, 0.5),
                ms(&unpolled, 0.99),
                ms(&floor_samples, 0.5),
                ms(&floor_samples, 0.99)
            );
        }
        if wanted("wake") {
            let server = Server::start(200);
            let rooms = 300;
            let mut sockets = Vec::new();
            for r in 0..rooms {
                let mut s = ws(&server.addr, &format!("/objects/chat/room-{r}?user=u")).await;
                next_text(&mut s).await; // history
                // A room exists once written to: the wake below then opens its file, as a room
                // with history does, instead of creating it.
                s.send(Message::Text("hello".into())).await.expect("send");
                next_text(&mut s).await;
                sockets.push(s);
            }
            server.wait_metric("denizen_live_objects", 0.0).await;
            let mut samples = Vec::new();
            for s in sockets.iter_mut() {
                let start = Instant::now();
                s.send(Message::Text("wake up".into())).await.expect("send");
                next_text(s).await;
                samples.push(start.elapsed());
            }
            samples.sort();
            println!(
                "first message to a hibernated chat room answered: p50 {:.3} ms, p99 {:.3} ms ({rooms} rooms)",
                percentile(&samples, 0.5).as_secs_f64() * 1e3,
                percentile(&samples, 0.99).as_secs_f64() * 1e3
            );
        }
        if wanted("memory") {
            let server = Server::start(200);
            let count = 10_000;
            // Warm up allocator and runtime with a few sockets first.
            let mut sockets = Vec::with_capacity(count);
            for r in 0..100 {
                sockets.push(ws(&server.addr, &format!("/objects/echo/warm-{r}")).await);
            }
            server.wait_metric("denizen_live_objects", 0.0).await;
            let before = server.rss_kib();
            for r in 0..count {
                sockets.push(ws(&server.addr, &format!("/objects/echo/room-{}", r % 100)).await);
            }
            server.wait_metric("denizen_live_objects", 0.0).await;
            let after = server.rss_kib();
            println!(
                "memory per idle hibernated WebSocket, {count} open: {:.2} KiB (server RSS {} → {} KiB)",
                (after.saturating_sub(before)) as f64 / count as f64,
                before,
                after
            );
        }
    });
}
