//! Agent benchmarks over real sockets on 127.0.0.1, with the protocol the JS client speaks. The
//! server runs in a child process (this binary, re-run in server mode), so its memory is measured
//! apart from the clients'.
//!
//! `cargo bench --bench agents` (all) or `cargo bench --bench agents -- rpc` (names matching).
// A benchmark prints its figures; a panic is how it fails.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

mod support;

#[path = "../examples/apps/counter_agent.rs"]
mod counter_agent;

use support::{SERVER_ENV, Server, median, wanted};

use std::time::{Duration, Instant};

use denizen::app::{App, Config};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// Server mode: the example `counter-agent` on the `App` an application serves with (idle polling
/// as `serve` has it by default), idle timeout from the environment.
fn serve() {
    let idle_ms: u64 = std::env::var("DENIZEN_BENCH_IDLE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: support::server_data_dir(),
        idle_timeout: Duration::from_millis(idle_ms),
        max_open_objects: 2_000,
        ..Config::default()
    };
    App::new("bench")
        .agent::<counter_agent::CounterAgent>("counter-agent")
        .serve(config)
        .expect("serve");
}

async fn next_text(ws: &mut Ws) -> String {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return t.to_string(),
            Some(Ok(_)) => continue,
            other => panic!("socket ended: {other:?}"),
        }
    }
}

/// Connects like the JS client and reads the connect handshake (identity, state, MCP servers).
async fn connect(addr: &str, agent: &str, client: usize) -> Ws {
    let url = format!("ws://{addr}/agents/counter-agent/{agent}?_pk=client-{client}");
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("websocket");
    for _ in 0..3 {
        next_text(&mut ws).await;
    }
    ws
}

/// Waits for the reply of RPC `id`, skipping state broadcasts.
async fn rpc_reply(ws: &mut Ws, id: &str) {
    let needle = format!("\"id\":\"{id}\"");
    loop {
        let text = next_text(ws).await;
        if text.contains(&needle) {
            assert!(text.contains("\"success\":true"), "{text}");
            return;
        }
    }
}

fn main() {
    if std::env::var(SERVER_ENV).is_ok() {
        serve();
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio");
    rt.block_on(async {
        if wanted("rpc") {
            let server = Server::start(60_000);
            let mut ws = connect(&server.addr, "hot", 0).await;
            let mut rates = Vec::new();
            let mut id = 0u64;
            for _ in 0..5 {
                let n = 5_000;
                let start = Instant::now();
                for _ in 0..n {
                    id += 1;
                    let frame = format!(
                        r#"{{"type":"rpc","id":"{id}","method":"increment","args":[1]}}"#
                    );
                    ws.send(Message::Text(frame.into())).await.expect("send");
                    // Each increment answers with the state broadcast, then the reply.
                    rpc_reply(&mut ws, &id.to_string()).await;
                }
                rates.push(n as f64 / start.elapsed().as_secs_f64());
            }
            println!(
                "RPC round trips/s to one agent over one WebSocket (increment: state write + broadcast + reply, sequential): {:.0} (median of 5 × 5,000)",
                median(rates)
            );
            let mut rates = Vec::new();
            for _ in 0..5 {
                let n = 5_000;
                let start = Instant::now();
                for _ in 0..n {
                    id += 1;
                    let frame =
                        format!(r#"{{"type":"rpc","id":"{id}","method":"ticks","args":[]}}"#);
                    ws.send(Message::Text(frame.into())).await.expect("send");
                    rpc_reply(&mut ws, &id.to_string()).await;
                }
                rates.push(n as f64 / start.elapsed().as_secs_f64());
            }
            println!(
                "RPC round trips/s to one agent over one WebSocket (read-only call, sequential): {:.0} (median of 5 × 5,000)",
                median(rates)
            );
        }
        if wanted("memory") {
            let agents = 1_000;
            let clients = 10;
            let server = Server::start(300);
            // Warm the allocator and runtime a little first.
            let mut warm = Vec::new();
            for a in 0..20 {
                warm.push(connect(&server.addr, &format!("warm-{a}"), 0).await);
            }
            server.wait_metric("denizen_live_objects", 0.0).await;
            let base = server.rss_kib();
            // Every agent wakes (creates its database, runs on_start), then hibernates. Two rounds
            // of distinct agents: the second one's growth is what a hibernated agent keeps, once
            // the allocator has room from the first round's activations.
            let http = reqwest::Client::new();
            let mut rss = vec![base];
            for round in 0..2 {
                for a in 0..agents {
                    let resp = http
                        .get(format!(
                            "http://{}/agents/counter-agent/agent-{round}-{a}",
                            server.addr
                        ))
                        .send()
                        .await
                        .expect("wake");
                    assert_eq!(resp.status(), 200);
                }
                server.wait_metric("denizen_live_objects", 0.0).await;
                rss.push(server.rss_kib());
            }
            let hibernated = rss[2];
            let mut sockets = Vec::with_capacity(agents * clients);
            for a in 0..agents {
                for c in 0..clients {
                    sockets.push(connect(&server.addr, &format!("agent-1-{a}"), c).await);
                }
            }
            let live = server.rss_kib();
            server.wait_metric("denizen_live_objects", 0.0).await;
            let connected = server.rss_kib();
            let first = rss[1].saturating_sub(rss[0]) as f64 * 1024.0 / agents as f64;
            let per_agent = rss[2].saturating_sub(rss[1]) as f64 * 1024.0 / agents as f64;
            let per_client = (connected.saturating_sub(hibernated)) as f64 * 1024.0
                / (agents * clients) as f64;
            println!(
                "{agents} agents × {clients} clients: server RSS {base} KiB idle, {} KiB after {agents} agents woke and hibernated, {hibernated} KiB after {agents} more, {live} KiB with {} clients connected to the second {agents} (awake), {connected} KiB once they hibernated again",
                rss[1],
                agents * clients
            );
            println!(
                "memory per hibernated agent: {per_agent:.0} bytes (second {agents}; the first {agents}, allocator warm-up included: {first:.0} bytes); per connected client (agent hibernated): {per_client:.0} bytes"
            );
            drop(sockets);
            drop(warm);
        }
    });
}
