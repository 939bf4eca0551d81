//! How much memory an idle WebSocket costs the gateway while its object hibernates.
//!
//! Ignored by default (it opens thousands of sockets and prints a figure; it asserts nothing on
//! time). Run with:
//! `cargo test -p denizen-gateway --release --test idle_memory -- --ignored --nocapture`
//! (`DENIZEN_IDLE_SOCKETS=9000` to change the count; each socket needs two file descriptors).
#![allow(clippy::unwrap_used, clippy::print_stdout)] // a panic fails the test; the report goes to stdout

use std::io::{Read, Write};
use std::time::Duration;

use denizen_gateway::{Gateway, Options};
use denizen_runtime::{Ctx, DurableObject, Request, Response, Result, Runtime, http_util};

#[derive(Default)]
struct Sleeper;

impl DurableObject for Sleeper {
    async fn fetch(&mut self, ctx: &mut Ctx<Self>, req: Request) -> Result<Response> {
        ctx.accept_websocket(&req, &["idle"])?;
        Ok(http_util::switching_protocols())
    }
}

/// Resident set size of this process, in bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Blocking clients: a std `TcpStream` holds no user-space buffers, so the process's growth is
/// the server's.
fn open(addr: std::net::SocketAddr, count: usize, objects: usize) -> Vec<std::net::TcpStream> {
    (0..count)
        .map(|i| {
            let mut tcp = std::net::TcpStream::connect(addr).unwrap();
            write!(
                tcp,
                "GET /objects/sleep/o{} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                 Sec-WebSocket-Version: 13\r\n\r\n",
                i % objects
            )
            .unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                tcp.read_exact(&mut byte).unwrap();
                head.push(byte[0]);
            }
            assert!(head.starts_with(b"HTTP/1.1 101"));
            tcp
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "prints a memory figure; run by hand"]
async fn idle_hibernated_socket_memory() {
    let count: usize = std::env::var("DENIZEN_IDLE_SOCKETS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let objects = 100;
    let dir = tempfile::tempdir().unwrap();
    let runtime = Runtime::builder()
        .data_dir(dir.path())
        .idle_timeout(Duration::from_millis(200))
        .object::<Sleeper>("sleep")
        .build()
        .unwrap();
    let gateway = Gateway::new(runtime.clone(), Options::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        gateway
            .serve(listener, async move {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });

    let wait_hibernated = || async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while runtime.live_objects() > 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "objects never slept"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    // Warm up: every object activated once, allocator pools and runtime tables grown.
    let warm = tokio::task::spawn_blocking(move || open(addr, objects * 2, objects))
        .await
        .unwrap();
    wait_hibernated().await;
    let before = rss();
    let clients = tokio::task::spawn_blocking(move || open(addr, count, objects))
        .await
        .unwrap();
    wait_hibernated().await;
    let after = rss();
    let per_socket = (after.saturating_sub(before)) as f64 / count as f64;
    println!(
        "{count} idle sockets on {objects} hibernated objects: RSS +{:.1} MiB, {:.0} bytes per socket",
        (after - before) as f64 / (1 << 20) as f64,
        per_socket
    );
    drop(clients);
    drop(warm);
    let _ = stop.send(());
    let _ = server.await;
}
