//! Chat agent benchmarks over real sockets on 127.0.0.1, with the frames the `useAgentChat` hook
//! sends (chat-protocol.md §3–§5). The model is the scripted OpenAI-compatible server, run in this
//! process; the Denizen server runs in a child process (this binary, re-run in server mode, the
//! model's URL in its environment), so its memory and CPU are measured apart from the clients'.
//!
//! `cargo bench --bench chat` (all) or `cargo bench --bench chat -- ttft` (names matching:
//! `ttft`, `fanout`, `memory`).
// A benchmark prints its figures; a panic is how it fails.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

mod support;

use support::{SERVER_ENV, Server, median, percentile, wanted};

use std::time::{Duration, Instant};

use denizen::Result;
use denizen::agent::chat::agent::{Chat, ChatRun, ChatTurn};
use denizen::agent::chat::model::{ModelClient, ModelConfig};
use denizen::agent::{Agent, Context};
use denizen::app::{App, Config};
use denizen_test_util::openai::{Reply, ScriptedModel};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// In the server's environment: the model's base URL (`http://127.0.0.1:<port>/v1`).
const MODEL_ENV: &str = "DENIZEN_BENCH_MODEL_URL";
const RESPONSE: &str = "cf_agent_use_chat_response";

/// The bench's chat agent: every turn is one plain call of the model, no system prompt, no tools.
struct Assistant {
    chat: Chat<Self>,
    model: ModelClient,
}

impl Assistant {
    async fn reply(&mut self, _cx: &mut Context<Self>, _turn: ChatTurn) -> Result<ChatRun> {
        Ok(ChatRun::new(self.model.clone()).with_max_steps(1))
    }
}

impl Agent for Assistant {
    type State = ();

    fn initial_state(&self) {}

    fn chat(&mut self) -> Option<&mut Chat<Self>> {
        Some(&mut self.chat)
    }
}

/// Server mode: the assistant on the `App` an application serves with, its model from
/// [`MODEL_ENV`], idle timeout from the environment.
fn serve() {
    let idle_ms: u64 = std::env::var("DENIZEN_BENCH_IDLE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let url = std::env::var(MODEL_ENV).expect("the model's URL in DENIZEN_BENCH_MODEL_URL");
    // One client for every activation: its connection pool outlives the agents.
    let model = ModelClient::new(ModelConfig::new(url, "bench")).expect("model client");
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: support::server_data_dir(),
        idle_timeout: Duration::from_millis(idle_ms),
        max_open_objects: 2_000,
        ..Config::default()
    };
    App::new("bench")
        .agent_with("assistant", move || Assistant {
            chat: Chat::new(|a: &mut Assistant, cx, turn| Box::pin(a.reply(cx, turn))),
            model: model.clone(),
        })
        .serve(config)
        .expect("serve");
}

fn start_server(model: &ScriptedModel, idle_ms: u64) -> Server {
    Server::start_with(idle_ms, "1", &[(MODEL_ENV, model.base_url().as_str())])
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

/// Connects like the JS client and reads the connect handshake, up to its last frame.
async fn connect(addr: &str, agent: &str, tab: usize) -> Ws {
    let url = format!("ws://{addr}/agents/assistant/{agent}?_pk=tab-{tab}");
    // Nagle off, as a browser has it: otherwise a small frame waits for the last one's ACK.
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true)
        .await
        .expect("websocket");
    while !next_text(&mut ws).await.contains("cf_agent_mcp_servers") {}
    ws
}

fn user(id: &str, text: &str) -> Value {
    json!({"id": id, "role": "user", "parts": [{"type": "text", "text": text}]})
}

/// `sendMessage`: the request frame for turn `id`, with the new user message only.
fn chat_request(id: &str, text: &str) -> Message {
    let body = json!({"messages": [user(&format!("u-{id}"), text)], "trigger": "submit-message"});
    let frame = json!({"id": id, "init": {"method": "POST", "body": body.to_string()},
                       "type": "cf_agent_use_chat_request"});
    Message::Text(frame.to_string().into())
}

/// A streaming request straight to the model: the time until the first content delta arrives.
async fn direct_first_token(http: &reqwest::Client, url: &str) -> Duration {
    let body = json!({"model": "bench", "stream": true,
                      "messages": [{"role": "user", "content": "hi"}]});
    let start = Instant::now();
    let resp = http
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("the model's answer");
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let mut seen = Vec::new();
    let mut first = None;
    let needle = b"\"content\":\"";
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("the model's stream");
        if first.is_none() {
            seen.extend_from_slice(&chunk);
            if seen.windows(needle.len()).any(|w| w == needle) {
                first = Some(start.elapsed());
            }
        }
    }
    first.expect("a content delta in the model's stream")
}

/// One chat turn through the agent: the time from sending the request to the first live
/// `text-delta` frame; returns once the turn's `done` frame is in.
async fn chat_first_token(ws: &mut Ws, id: &str) -> Duration {
    let start = Instant::now();
    ws.send(chat_request(id, "hi")).await.expect("send");
    let mut first = None;
    loop {
        let text = next_text(ws).await;
        if !text.contains(RESPONSE) {
            continue;
        }
        assert!(!text.contains("\"error\":true"), "{text}");
        if first.is_none() && text.contains("text-delta") {
            first = Some(start.elapsed());
        }
        if text.contains("\"done\":true") {
            return first.expect("a text-delta before done");
        }
    }
}

/// What one tab saw of a turn: when its first response frame and its `done` came, and how many
/// live chunk frames (text deltas among them) it got.
struct Seen {
    first: Instant,
    done: Instant,
    frames: usize,
    deltas: usize,
}

async fn read_turn(ws: &mut Ws) -> Seen {
    let mut first = None;
    let (mut frames, mut deltas) = (0, 0);
    loop {
        let text = next_text(ws).await;
        if !text.contains(RESPONSE) {
            continue;
        }
        let now = Instant::now();
        first.get_or_insert(now);
        assert!(!text.contains("\"error\":true"), "{text}");
        if text.contains("\"done\":true") {
            return Seen {
                first: first.unwrap(),
                done: now,
                frames,
                deltas,
            };
        }
        frames += 1;
        if text.contains("text-delta") {
            deltas += 1;
        }
    }
}

/// The server's CPU time so far (user + system), from `/proc` (clock ticks of 10 ms).
fn cpu_time(server: &Server) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", server.pid())).unwrap();
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

/// Streams `pieces` text deltas from the model to `tabs` connected tabs of agent `agent`, `runs`
/// times; prints the median rates and the server's CPU per chunk.
async fn fanout(server: &Server, model: &ScriptedModel, agent: &str, tabs: usize, pieces: usize) {
    let words: Vec<String> = (0..pieces).map(|i| format!("w{i} ")).collect();
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let mut sockets = Vec::with_capacity(tabs);
    for t in 0..tabs {
        sockets.push(connect(&server.addr, agent, t).await);
    }
    let runs = 3;
    let (mut frame_rates, mut chunk_rates, mut cpu_per_chunk) =
        (Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        model.push(Reply::text(&words));
        let cpu = cpu_time(server);
        // Every tab reads in a task of its own; the first tab sends the request once the others
        // are listening.
        let mut tasks = Vec::with_capacity(tabs);
        let others = sockets.split_off(1);
        let mut sender = sockets.pop().unwrap();
        for mut ws in others {
            tasks.push(tokio::spawn(async move {
                let seen = read_turn(&mut ws).await;
                (ws, seen)
            }));
        }
        let id = format!("{agent}-{run}");
        tasks.insert(
            0,
            tokio::spawn(async move {
                sender.send(chat_request(&id, "go")).await.expect("send");
                let seen = read_turn(&mut sender).await;
                (sender, seen)
            }),
        );
        let mut seen = Vec::with_capacity(tabs);
        for task in tasks {
            let (ws, s) = task.await.unwrap();
            sockets.push(ws);
            seen.push(s);
        }
        let cpu = cpu_time(server) - cpu;
        let start = seen.iter().map(|s| s.first).min().unwrap();
        let end = seen.iter().map(|s| s.done).max().unwrap();
        let secs = (end - start).as_secs_f64();
        for s in &seen {
            assert_eq!(s.deltas, pieces, "every tab gets every text delta");
        }
        let frames: usize = seen.iter().map(|s| s.frames).sum();
        frame_rates.push(frames as f64 / secs);
        chunk_rates.push(seen[0].frames as f64 / secs);
        cpu_per_chunk.push(cpu.as_secs_f64() * 1e6 / seen[0].frames as f64);
    }
    let frames = median(frame_rates);
    let chunks = median(chunk_rates);
    let cpu = median(cpu_per_chunk);
    println!(
        "chat stream relayed to {tabs} tab(s) of one agent ({pieces} text deltas, median of {runs}): {frames:.0} chunk frames/s delivered (chunks × tabs), {chunks:.0} chunks/s ({:.1} µs a chunk); server CPU {cpu:.0} µs a chunk ({:.1} µs a frame)",
        1e6 / chunks,
        cpu / tabs as f64
    );
}

/// A conversation of `n` messages, users and assistant alternating, as `setMessages` sends it.
fn history(n: usize) -> Message {
    let messages: Vec<Value> = (0..n)
        .map(|i| {
            if i % 2 == 0 {
                user(&format!("m{i}"), &format!("Question {i}: what happens next?"))
            } else {
                json!({"id": format!("m{i}"), "role": "assistant",
                       "parts": [{"type": "text", "text": format!("Answer {i}: the story goes on a little.")}]})
            }
        })
        .collect();
    let frame = json!({"messages": messages, "type": "cf_agent_chat_messages"});
    Message::Text(frame.to_string().into())
}

/// Gives agent `name` the history in `frame` (`n` messages) over a socket, checks it is stored,
/// and disconnects.
async fn fill(server: &Server, http: &reqwest::Client, name: &str, frame: &Message, n: usize) {
    let mut ws = connect(&server.addr, name, 0).await;
    ws.send(frame.clone()).await.expect("send");
    // The HTTP request may overtake the frame on its way to the agent: ask until it is in.
    let url = server.url(&format!("/agents/assistant/{name}/get-messages"));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stored: Value = http
            .get(&url)
            .send()
            .await
            .expect("get-messages")
            .json()
            .await
            .expect("a JSON transcript");
        if stored.as_array().map_or(0, Vec::len) == n {
            break;
        }
        assert!(Instant::now() < deadline, "{name} never stored its history");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    ws.close(None).await.expect("close");
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
        let model = ScriptedModel::start().await;
        if wanted("ttft") {
            let server = start_server(&model, 60_000);
            let mut ws = connect(&server.addr, "ttft", 0).await;
            let http = reqwest::Client::new();
            let url = format!("{}/chat/completions", model.base_url());
            let pieces = ["Hello", ",", " world", "!"];
            let clear = Message::Text(json!({"type": "cf_agent_chat_clear"}).to_string().into());
            let (warm, samples) = (30, 200);
            let (mut direct, mut through) = (Vec::new(), Vec::new());
            for i in 0..warm + samples {
                // Each turn on a cleared chat: the same one-message request to the model.
                ws.send(clear.clone()).await.expect("send");
                model.push(Reply::text(&pieces));
                let d = direct_first_token(&http, &url).await;
                model.push(Reply::text(&pieces));
                let t = chat_first_token(&mut ws, &format!("t{i}")).await;
                if i >= warm {
                    direct.push(d);
                    through.push(t);
                }
            }
            direct.sort();
            through.sort();
            let (d50, d90) = (percentile(&direct, 0.5), percentile(&direct, 0.9));
            let (t50, t90) = (percentile(&through, 0.5), percentile(&through, 0.9));
            println!(
                "time to first token, {samples} turns alternating: straight from the model p50 {d50:?} p90 {d90:?}; through a chat agent (WebSocket request → first text-delta frame) p50 {t50:?} p90 {t90:?}; added at p50 {:?} (goal ≤ 1 ms)",
                t50.saturating_sub(d50)
            );
        }
        if wanted("fanout") {
            let server = start_server(&model, 60_000);
            fanout(&server, &model, "solo", 1, 2_000).await;
            fanout(&server, &model, "fanout", 100, 2_000).await;
        }
        if wanted("memory") {
            let (agents, messages) = (200, 1_000);
            let server = start_server(&model, 300);
            let http = reqwest::Client::new();
            let frame = history(messages);
            // Warm the allocator and runtime a little first.
            for a in 0..10 {
                fill(&server, &http, &format!("warm-{a}"), &frame, messages).await;
            }
            server.wait_metric("denizen_live_objects", 0.0).await;
            let base = server.rss_kib();
            // Two rounds of distinct agents, each filled then hibernated: the second one's growth
            // is what a hibernated agent keeps, once the allocator has room from the first's.
            let mut rss = vec![base];
            for round in 0..2 {
                for a in 0..agents {
                    fill(&server, &http, &format!("agent-{round}-{a}"), &frame, messages).await;
                }
                server.wait_metric("denizen_live_objects", 0.0).await;
                rss.push(server.rss_kib());
            }
            // One tab back on each agent of the second round, then hibernation again.
            let mut sockets = Vec::with_capacity(agents);
            for a in 0..agents {
                sockets.push(connect(&server.addr, &format!("agent-1-{a}"), 1).await);
            }
            server.wait_metric("denizen_live_objects", 0.0).await;
            let connected = server.rss_kib();
            let first = rss[1].saturating_sub(rss[0]) as f64 * 1024.0 / agents as f64;
            let per_agent = rss[2].saturating_sub(rss[1]) as f64 * 1024.0 / agents as f64;
            let per_tab = connected.saturating_sub(rss[2]) as f64 * 1024.0 / agents as f64;
            println!(
                "{agents} chat agents × {messages} messages of history: server RSS {base} KiB idle, {} KiB after {agents} were filled and hibernated, {} KiB after {agents} more, {connected} KiB with one tab back on each of the second {agents} (hibernated again)",
                rss[1], rss[2]
            );
            println!(
                "memory per hibernated chat agent with {messages} messages: {per_agent:.0} bytes (second {agents}; the first {agents}, allocator warm-up included: {first:.0} bytes); with a tab connected: {per_tab:.0} bytes more"
            );
            drop(sockets);
        }
    });
}
